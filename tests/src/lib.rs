//! Test support for the end-to-end suites: real HTTP upstreams on loopback, the real `sluice`
//! binary started on free ports with a config written to a temp dir, and polling helpers.

pub mod certs;
pub mod etcd;
pub mod gateway;
pub mod grpc;
pub mod load;
pub mod upstream;

pub use certs::{Ca, Leaf};
pub use etcd::{Etcd, Relay};
pub use gateway::{run_sluice, sluice_bin, Gateway};
pub use grpc::GrpcUpstream;
pub use load::{Load, LoadReport};
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

/// A port nobody listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
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
