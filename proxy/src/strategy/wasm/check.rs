//! `sluice plugin check`: load a module as the gateway would, then run sample picks and report
//! the distribution and the cost per pick.

use std::path::Path;
use std::time::Instant;

use super::{sample_pool, LoadError, WasmRuntime, WasmStrategy};
use crate::metrics::Metrics;
use crate::strategy::{PickRequest, Strategy};

/// What sample picks on one pool size showed.
#[derive(Debug, Clone)]
pub struct PickReport {
    /// Instances in the sample pool (weights 100, 50, 150, … in turn).
    pub instances: usize,
    pub picks: u64,
    pub ns_per_pick: f64,
    /// Picks per instance index.
    pub counts: Vec<u64>,
    /// Requests that fell back to native round-robin, by reason (zeros left out).
    pub fallbacks: Vec<(&'static str, u64)>,
}

/// Loads `path` with `config`, then runs `picks` sample picks on pools of each size in `sizes`.
pub fn check_file(
    path: &Path,
    config: serde_json::Value,
    sizes: &[usize],
    picks: u64,
) -> Result<Vec<PickReport>, LoadError> {
    let bytes = super::read_module(path)?;
    let runtime = WasmRuntime::global()?.clone();
    let mut reports = Vec::with_capacity(sizes.len());
    for &n in sizes {
        // A fresh strategy per size, so fallback counts are per size.
        let metrics = Metrics::new();
        let strategy = WasmStrategy::load(
            runtime.clone(),
            &metrics,
            "check",
            path.display().to_string(),
            &bytes,
            config.clone(),
            vec!["even".into()],
        )?;
        let pool = sample_pool(n);
        let mut counts = vec![0u64; n];
        // Warm the thread's instance before timing.
        let _ = strategy.pick(&pool, &PickRequest::default());
        let start = Instant::now();
        for i in 0..picks {
            let request = PickRequest {
                hash: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                exclude: &[],
                headers: None,
            };
            if let Some(index) = strategy.pick(&pool, &request) {
                counts[index] += 1;
            }
        }
        let elapsed = start.elapsed();
        reports.push(PickReport {
            instances: n,
            picks,
            ns_per_pick: elapsed.as_nanos() as f64 / picks.max(1) as f64,
            counts,
            fallbacks: strategy
                .info()
                .fallbacks
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .collect(),
        });
    }
    Ok(reports)
}
