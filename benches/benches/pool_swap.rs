//! Snapshot rebuild + atomic swap when one instance of an N-instance service changes:
//! `cargo bench -p sluice-benches --bench pool_swap`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice::registry::{SourceEvent, Update};
use sluice_benches::{directory_with, instance};

fn swap(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_rebuild_swap");
    group.sample_size(20);
    for n in [10usize, 1_000, 10_000] {
        let (directory, slot) = directory_with(n);
        let mut revision = 1i64;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                revision += 1;
                let mut changed = instance(n / 2);
                changed.weight = 1 + (revision % 200) as u32;
                directory.apply(SourceEvent {
                    source: "bench".into(),
                    revision,
                    update: Update::Upsert {
                        service: "svc".into(),
                        instance: changed,
                    },
                });
            })
        });
        assert_eq!(slot.load().members().len(), n);
    }
    group.finish();
}

criterion_group!(benches, swap);
criterion_main!(benches);
