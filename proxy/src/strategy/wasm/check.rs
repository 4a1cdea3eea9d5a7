//! `sluice plugin check`: load a module as the gateway would, then run sample picks (first
//! tries and retries) and report the distribution, the cost per pick and every fallback.

use std::path::Path;
use std::time::Instant;

use super::{sample_pool_tagged, LoadError, WasmRuntime, WasmStrategy};
use crate::metrics::Metrics;
use crate::strategy::{PickRequest, Strategy};

/// What sample picks on one pool size showed.
#[derive(Debug, Clone)]
pub struct PickReport {
    /// Instances in the sample pool (see [`super::sample_pool_tagged`]).
    pub instances: usize,
    /// First-try picks made (retries come on top: one per 16).
    pub picks: u64,
    pub ns_per_pick: f64,
    /// The first pick, untimed in `ns_per_pick`: it instantiates the thread's instance and,
    /// for an ABI v2 module, writes the records and runs `sluice_prepare`.
    pub first_pick_us: f64,
    /// First-try picks per instance index.
    pub counts: Vec<u64>,
    /// Retry picks made after the first tries (instance 0 tried already).
    pub retries: u64,
    /// Picks that fell back to native round-robin, by reason (zeros left out).
    pub fallbacks: Vec<(&'static str, u64)>,
}

impl PickReport {
    /// Whether every sample pick was the plugin's own answer.
    pub fn fell_back(&self) -> bool {
        !self.fallbacks.is_empty()
    }
}

/// What `plugin check` hands the plugin, as `[strategies.*]` would.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    pub config: serde_json::Value,
    pub tags: Vec<String>,
    /// Pool sizes to sample.
    pub sizes: Vec<usize>,
    /// First-try picks per pool size.
    pub picks: u64,
}

/// Loads `path` as `settings` say, then runs sample picks on pools of each size: first tries
/// (timed), then retries that exclude instance 0.
pub fn check_file(path: &Path, settings: &CheckSettings) -> Result<Vec<PickReport>, LoadError> {
    let bytes = super::read_module(path)?;
    let runtime = WasmRuntime::global()?.clone();
    let mut reports = Vec::with_capacity(settings.sizes.len());
    for &n in &settings.sizes {
        // A fresh strategy per size, so fallback counts are per size.
        let metrics = Metrics::new();
        let strategy = WasmStrategy::load(
            runtime.clone(),
            &metrics,
            "check",
            path.display().to_string(),
            &bytes,
            settings.config.clone(),
            settings.tags.clone(),
        )?;
        let pool = sample_pool_tagged(n, &settings.tags);
        let mut counts = vec![0u64; n];
        // Warm the thread's instance before timing, and time that apart.
        let first = Instant::now();
        let _ = strategy.pick(&pool, &PickRequest::default());
        let first_pick_us = first.elapsed().as_secs_f64() * 1e6;
        let start = Instant::now();
        for i in 0..settings.picks {
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
        let tried = [pool.eligible(0).key];
        let mut retries = 0;
        if n > 1 {
            for i in 0..settings.picks.div_ceil(16) {
                let request = PickRequest {
                    hash: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    exclude: &tried,
                    headers: None,
                };
                let _ = strategy.pick(&pool, &request);
                retries += 1;
            }
        }
        reports.push(PickReport {
            instances: n,
            picks: settings.picks,
            ns_per_pick: elapsed.as_nanos() as f64 / settings.picks.max(1) as f64,
            first_pick_us,
            counts,
            retries,
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
