//! Test support for the end-to-end suites: real HTTP upstreams on loopback, the real `sluice`
//! binary started on free ports with a config written to a temp dir, and polling helpers.

pub mod browser;
pub mod certs;
pub mod etcd;
pub mod gateway;
pub mod grpc;
pub mod load;
pub mod prometheus;
pub mod pyjwt;
pub mod redis;
pub mod upstream;

pub use certs::{Ca, Leaf};
pub use etcd::{Etcd, Relay};
pub use gateway::{run_sluice, run_sluice_within, sluice_bin, Gateway};
pub use grpc::GrpcUpstream;
pub use load::{Load, LoadReport};
pub use pyjwt::{JwksServer, JwtKit};
pub use redis::Redis;
pub use upstream::Upstream;

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A plugin module built from `plugins/` for this test run, e.g. `plugin("chaos")`.
pub fn plugin(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("SLUICE_TEST_PLUGINS"))
        .join(format!("sluice_strategy_{}.wasm", name.replace('-', "_")))
}

/// A hand-written module under `tests/wasm/` (the malformed ones the SDK cannot produce).
pub fn wat(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("wasm")
        .join(format!("{name}.wat"))
}

/// The value of the first metric line starting with `prefix` (family and labels), if any.
pub fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A loopback port for a listener a test starts by address (the gateway's, etcd's), that no
/// other listener of the tests can get: it lies below the kernel's ephemeral range, so no
/// `bind(…:0)` (every test upstream's) and no client's source port is ever given it; this
/// process never hands it out twice (etcd restarted on its old port keeps it); and it was
/// free when handed out. Processes start at different offsets of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = reserved_ports();
    let span = u32::from(high - low);
    let offset = std::process::id().wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "every test port of {low}..{high} was handed out");
        // Below `high` (a u16): fits.
        let port = low + ((offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The ports below the ephemeral range (`net.ipv4.ip_local_port_range`), from 10000.
fn reserved_ports() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        ephemeral_low >= 12000,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for test ports"
    );
    (10000, ephemeral_low)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client without connection reuse surprises: a fresh pool, short timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}
