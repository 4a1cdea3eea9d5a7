//! Pick cost, native vs WASM, by pool size: `cargo bench -p sluice-benches --bench wasm_pick`.
//! The WASM picks go through the real host: header and live fields written into guest memory,
//! epoch deadline set, typed call, answer checked.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice::metrics::Metrics;
use sluice::strategy::wasm::{WasmRuntime, WasmStrategy, BUILTIN_PLUGINS};
use sluice::strategy::{PickRequest, RoundRobin, Strategy};
use sluice_benches::directory_with;

/// The gateway's allocator (`proxy/src/main.rs`): where the pool's members and their live
/// counters land decides how many pages a pick of a large pool touches (glibc's malloc spreads
/// them; jemalloc keeps same-sized objects together), so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn builtin(metrics: &Metrics, name: &str) -> WasmStrategy {
    let (_, bytes) = BUILTIN_PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no built-in {name}"));
    let runtime = WasmRuntime::global()
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    WasmStrategy::load(
        runtime,
        metrics,
        name,
        format!("builtin:{name}"),
        bytes,
        serde_json::json!({}),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Pool sizes: `SLUICE_BENCH_SIZES=16,1000` to choose; the three by default.
fn pool_sizes() -> Vec<usize> {
    std::env::var("SLUICE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 1_000, 10_000])
}

fn picks(c: &mut Criterion) {
    let metrics = Metrics::new();
    let strategies: Vec<(&str, Arc<dyn Strategy>)> = vec![
        ("native-rr", Arc::new(RoundRobin)),
        ("wasm-rr", Arc::new(builtin(&metrics, "round-robin"))),
        ("wasm-lc", Arc::new(builtin(&metrics, "least-conn"))),
        ("wasm-ch", Arc::new(builtin(&metrics, "consistent-hash"))),
        ("wasm-p2c", Arc::new(builtin(&metrics, "p2c-ewma"))),
    ];
    let mut group = c.benchmark_group("pick");
    for n in pool_sizes() {
        let (_directory, slot) = directory_with(n);
        let pool = slot.load_full();
        let _guards: Vec<_> = (0..n)
            .step_by(3)
            .map(|i| pool.eligible(i).live.start_request())
            .collect();
        for (name, strategy) in &strategies {
            let mut hash = 0u64;
            group.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let request = PickRequest {
                        hash,
                        exclude: &[],
                        headers: None,
                    };
                    strategy.pick(black_box(&pool), black_box(&request))
                })
            });
        }
    }
    group.finish();
    // No fallback may hide in these numbers.
    for (name, strategy) in &strategies {
        let fell_back: u64 = strategy.info().fallbacks.iter().map(|(_, n)| n).sum();
        assert_eq!(
            fell_back,
            0,
            "{name} fell back {fell_back} times: {:?}",
            strategy.info().fallbacks
        );
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
