//! Shared set-up for the benchmarks: pools of N instances built through the real directory,
//! and the command line of the floor binaries in `src/bin`.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice::metrics::Metrics;
use sluice::pool::{Directory, ServiceSlot};
use sluice::registry::{decode_value, InstanceSpec, SourceEvent, Update};

/// An instance `i` on a distinct loopback port, weight varying between 50 and 150.
pub fn instance(i: usize) -> InstanceSpec {
    let port = 10_000 + (i % 50_000);
    let mut spec = decode_value(
        &format!("instance-{i:05}"),
        format!("127.0.0.{}:{port}", 1 + i / 50_000).as_bytes(),
    )
    .unwrap_or_else(|e| panic!("bench instance {i}: {e}"));
    spec.weight = 50 + (i % 3) as u32 * 50;
    spec
}

/// A directory holding one service `svc` with `n` instances, and its slot.
pub fn directory_with(n: usize) -> (Directory, Arc<ServiceSlot>) {
    let directory = Directory::new(Arc::new(Metrics::new()), &["bench"]);
    let slot = directory.slot("svc");
    let mut services = BTreeMap::new();
    services.insert("svc".to_string(), (0..n).map(instance).collect());
    directory.apply(SourceEvent {
        source: "bench".into(),
        revision: 1,
        update: Update::Reset { services },
    });
    (directory, slot)
}

/// The command line of the floor binaries: `NAME LISTEN THREADS UPSTREAM...`.
pub struct FloorArgs {
    pub listen: String,
    pub threads: usize,
    pub upstreams: Vec<std::net::SocketAddr>,
}

impl FloorArgs {
    /// Parses the process's arguments, or prints the usage of `name` and exits 1.
    pub fn from_env(name: &str) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let usage = || -> ! {
            eprintln!("usage: {name} LISTEN THREADS UPSTREAM...");
            std::process::exit(1)
        };
        let (Some(listen), Some(threads)) = (args.first(), args.get(1)) else {
            usage()
        };
        let upstreams: Vec<_> = args[2..].iter().filter_map(|a| a.parse().ok()).collect();
        if upstreams.is_empty() {
            usage()
        }
        Self {
            listen: listen.clone(),
            threads: threads.parse().unwrap_or(1),
            upstreams,
        }
    }
}
