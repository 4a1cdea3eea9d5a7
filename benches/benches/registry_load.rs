//! etcd discovery under load, against a real etcd and the real (release) gateway:
//! `cargo bench -p sluice-benches --bench registry_load`.
//!
//! 1. Propagation: time from the `put` of a new instance (and the `delete` of the old one) to
//!    the first request answered by the new instance, over TRIALS trials; p50 / p99.
//! 2. A 10 000-instance pool under 100 updates/s for 20 s: the gateway's CPU time.
//!
//! Bounded: TRIALS trials of at most 5 s each, then 20 s of updates.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use sluice_tests::{client, Etcd, Gateway, Upstream};

const TRIALS: usize = 100;
const BIG_POOL: usize = 10_000;
const UPDATES_PER_SECOND: u64 = 100;
const UPDATE_SECONDS: u64 = 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// utime + stime of a process, in clock ticks (100 Hz on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

async fn answered_by(gw: &Gateway, http: &reqwest::Client) -> Option<String> {
    let r = http.get(gw.url("/")).send().await.ok()?;
    r.headers()
        .get("x-upstream-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::main]
async fn main() {
    let etcd = Etcd::start().await;
    let ups = [
        Upstream::start("blue").await,
        Upstream::start("green").await,
    ];
    let route = "[[routes]]\npath_prefix = \"/\"\nservice = \"prop\"\nstrategy = \"native-round-robin\"\n\n\
                 [[routes]]\npath_prefix = \"/big\"\nservice = \"big\"\nstrategy = \"native-least-conn\"\n";
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", route).await;
    let mut c = etcd.client().await.expect("etcd client");
    let http = client();
    let value = |u: &Upstream| format!("{{\"addr\":\"{}\"}}", u.addr);
    c.put("/services/prop/blue", value(&ups[0]), None)
        .await
        .expect("put");
    while answered_by(&gw, &http).await.as_deref() != Some("blue") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 1. Propagation.
    let mut times = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        let (from, to) = if trial % 2 == 0 {
            (&ups[0], &ups[1])
        } else {
            (&ups[1], &ups[0])
        };
        let swap = Txn::new()
            .when([Compare::version(
                format!("/services/prop/{}", from.id),
                CompareOp::Greater,
                0,
            )])
            .and_then([
                TxnOp::put(format!("/services/prop/{}", to.id), value(to), None),
                TxnOp::delete(format!("/services/prop/{}", from.id), None),
            ]);
        let started = Instant::now();
        c.txn(swap).await.expect("txn");
        loop {
            if answered_by(&gw, &http).await.as_deref() == Some(to.id.as_str()) {
                times.push(started.elapsed());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "trial {trial} did not propagate"
            );
        }
    }
    times.sort();
    println!("propagation put -> first routed request, {TRIALS} trials:");
    println!(
        "  p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );

    // 2. A 10 000-instance pool under 100 updates/s.
    let started = Instant::now();
    for chunk in (0..BIG_POOL).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("/services/big/i-{i:05}"), value(&ups[i % 2]), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.expect("bulk put");
    }
    loop {
        let svc = gw.instance("big", &format!("i-{:05}", BIG_POOL - 1)).await;
        if svc.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "10 000 instances registered and pooled in {:?}",
        started.elapsed()
    );
    let pid = gw.pid();
    let cpu_before = cpu_ticks(pid);
    let wall = Instant::now();
    let interval = Duration::from_micros(1_000_000 / UPDATES_PER_SECOND);
    let mut next = Instant::now();
    let mut sent = 0u64;
    while wall.elapsed() < Duration::from_secs(UPDATE_SECONDS) {
        let i = fastrand_index(sent, BIG_POOL);
        let weight = 1 + sent % 200;
        let v = format!("{{\"addr\":\"{}\",\"weight\":{weight}}}", ups[i % 2].addr);
        c.put(format!("/services/big/i-{i:05}"), v, None)
            .await
            .expect("update");
        sent += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    let elapsed = wall.elapsed();
    let cpu = Duration::from_millis((cpu_ticks(pid) - cpu_before) * 10);
    println!(
        "{sent} updates in {elapsed:.1?} ({:.0}/s) on a {BIG_POOL}-instance pool: gateway CPU {cpu:?} = {:.1}% of one core",
        sent as f64 / elapsed.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    let ok = http
        .get(gw.url("/big/x"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    println!("a request to the big pool after the updates: {ok}");
}

/// A deterministic spread of indices (no RNG dependency needed here).
fn fastrand_index(n: u64, len: usize) -> usize {
    (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16) as usize % len
}
