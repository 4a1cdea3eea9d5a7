//! Native pick cost by pool size: `cargo bench -p sluice-benches --bench pick`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice::strategy::{LeastConn, PickRequest, RoundRobin, Strategy};
use sluice_benches::directory_with;

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("native_pick");
    for n in [2usize, 16, 256] {
        let (_directory, slot) = directory_with(n);
        let pool = slot.load_full();
        // Some load so least-conn compares real numbers.
        let _guards: Vec<_> = (0..n)
            .step_by(3)
            .map(|i| pool.eligible(i).live.start_request())
            .collect();
        let request = PickRequest::default();
        group.bench_with_input(BenchmarkId::new("round-robin", n), &n, |b, _| {
            b.iter(|| RoundRobin.pick(black_box(&pool), black_box(&request)))
        });
        group.bench_with_input(BenchmarkId::new("least-conn", n), &n, |b, _| {
            b.iter(|| LeastConn.pick(black_box(&pool), black_box(&request)))
        });
        // What a request really does: load the snapshot, pick, start and end the attempt.
        group.bench_with_input(BenchmarkId::new("load+rr+guard", n), &n, |b, _| {
            b.iter(|| {
                let pool = slot.load();
                let i = RoundRobin.pick(&pool, &request).unwrap_or(0);
                drop(black_box(pool.eligible(i).live.start_request()));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
