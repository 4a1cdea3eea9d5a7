//! A strategy backed by a plugin: per-thread instances, the failure policy (fall back to native
//! round-robin, count why, re-create the instance, disable after repeated failures) and reload.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};
use thread_local::ThreadLocal;

use super::instance::{Answer, CallError, Pick, ThreadInstance};
use super::plugin::{LoadedPlugin, PluginSettings};
use super::runtime::WasmRuntime;
use super::LoadError;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::strategy::{PickRequest, RoundRobin, Strategy, StrategyInfo};

/// Failures (traps, missed deadlines, out-of-range answers) in one minute that disable a
/// plugin until it is reloaded.
pub const MAX_FAILURES_PER_MINUTE: u32 = 100;

/// One pick in this many per thread is timed for `sluice_strategy_pick_duration_seconds`.
const TIMING_SAMPLE: u32 = 64;

/// Why a request did not get the plugin's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    Trap,
    Deadline,
    OutOfRange,
    NoOpinion,
    Disabled,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 5] = [
        FallbackReason::Trap,
        FallbackReason::Deadline,
        FallbackReason::OutOfRange,
        FallbackReason::NoOpinion,
        FallbackReason::Disabled,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Trap => "trap",
            FallbackReason::Deadline => "deadline",
            FallbackReason::OutOfRange => "out_of_range",
            FallbackReason::NoOpinion => "no_opinion",
            FallbackReason::Disabled => "disabled",
        }
    }
}

#[derive(Default)]
struct ThreadSlot {
    /// The plugin version this thread's instance runs (kept here so a pick reads one atomic,
    /// `WasmStrategy::generation`, instead of loading the `ArcSwap`).
    instance: Option<(Arc<LoadedPlugin>, ThreadInstance)>,
    picks: u32,
    /// The picks' randoms: the slot is this thread's already, so no second thread-local
    /// lookup (fastrand's) per pick.
    rng: fastrand::Rng,
}

/// A WASM strategy, shared by every route that names it.
pub struct WasmStrategy {
    name: Arc<str>,
    runtime: Arc<WasmRuntime>,
    current: ArcSwap<LoadedPlugin>,
    /// `current`'s generation, stored after it.
    generation: AtomicU64,
    threads: ThreadLocal<RefCell<ThreadSlot>>,
    /// Generation that was disabled (`u64::MAX`: none).
    disabled_generation: AtomicU64,
    epoch: Instant,
    window_start_s: AtomicU64,
    window_failures: AtomicU32,
    fallbacks: [IntCounter; 5],
    pick_duration: Histogram,
    reloads_ok: IntCounter,
    reloads_error: IntCounter,
}

impl std::fmt::Debug for WasmStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmStrategy")
            .field("name", &self.name)
            .field("plugin", &*self.current.load())
            .finish()
    }
}

impl WasmStrategy {
    /// Loads and probes the first version of the plugin.
    pub fn load(
        runtime: Arc<WasmRuntime>,
        metrics: &Metrics,
        name: &str,
        source: String,
        bytes: &[u8],
        config: serde_json::Value,
        tags: Vec<String>,
    ) -> Result<Self, LoadError> {
        let settings = PluginSettings {
            config: &config,
            tags: &tags,
        };
        let plugin = LoadedPlugin::load(&runtime, name, source, bytes, settings, 1)?;
        let reloads = |result: &str| {
            metrics
                .strategy_reloads_total
                .with_label_values(&[name, result])
        };
        Ok(Self {
            name: name.into(),
            generation: AtomicU64::new(plugin.generation),
            current: ArcSwap::from_pointee(plugin),
            runtime,
            threads: ThreadLocal::new(),
            disabled_generation: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            window_start_s: AtomicU64::new(0),
            window_failures: AtomicU32::new(0),
            fallbacks: FallbackReason::ALL.map(|r| {
                metrics
                    .strategy_fallbacks_total
                    .with_label_values(&[name, r.as_str()])
            }),
            pick_duration: metrics
                .strategy_pick_duration_seconds
                .with_label_values(&[name]),
            reloads_ok: reloads("ok"),
            reloads_error: reloads("error"),
        })
    }

    /// Compiles and probes a new version off the request path and swaps it in; on failure the
    /// running version keeps serving. The config and tags stay as loaded.
    pub fn reload(
        &self,
        source: String,
        bytes: &[u8],
        config: &serde_json::Value,
    ) -> Result<u64, LoadError> {
        let current = self.current.load_full();
        let settings = PluginSettings {
            config,
            tags: &current.tags,
        };
        let generation = current.generation + 1;
        match LoadedPlugin::load(
            &self.runtime,
            &self.name,
            source,
            bytes,
            settings,
            generation,
        ) {
            Ok(plugin) => {
                self.current.store(Arc::new(plugin));
                self.generation.store(generation, Ordering::Release);
                self.reloads_ok.inc();
                tracing::info!(strategy = %self.name, generation, "strategy reloaded");
                Ok(generation)
            }
            Err(e) => {
                self.reloads_error.inc();
                tracing::error!(strategy = %self.name, "reload refused, the running version keeps serving: {e}");
                Err(e)
            }
        }
    }

    /// The version serving now.
    pub fn current(&self) -> Arc<LoadedPlugin> {
        self.current.load_full()
    }

    fn fallback(
        &self,
        reason: FallbackReason,
        pool: &Pool,
        request: &PickRequest<'_>,
    ) -> Option<usize> {
        self.fallbacks[reason as usize].inc();
        RoundRobin.pick(pool, request)
    }

    fn record_failure(&self, generation: u64, what: &dyn std::fmt::Display) {
        let now = self.epoch.elapsed().as_secs();
        let start = self.window_start_s.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= 60 {
            self.window_start_s.store(now, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
        }
        let failures = self.window_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == 1 {
            tracing::warn!(strategy = %self.name, generation, "plugin failed, request served by round-robin: {what}");
        }
        if failures == MAX_FAILURES_PER_MINUTE {
            self.disabled_generation
                .store(generation, Ordering::Relaxed);
            tracing::error!(
                strategy = %self.name,
                generation,
                "plugin failed {failures} times within a minute: disabled until reloaded; routes use round-robin"
            );
        }
    }

    fn is_disabled(&self, generation: u64) -> bool {
        self.disabled_generation.load(Ordering::Relaxed) == generation
    }

    fn fallback_counts(&self) -> Vec<(&'static str, u64)> {
        FallbackReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.fallbacks[*r as usize].get()))
            .collect()
    }
}

impl Strategy for WasmStrategy {
    fn name(&self) -> &str {
        &self.name
    }

    fn pick(&self, pool: &Pool, request: &PickRequest<'_>) -> Option<usize> {
        let n = pool.eligible_len();
        if n == 0 {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.is_disabled(generation) {
            return self.fallback(FallbackReason::Disabled, pool, request);
        }
        let cell = self.threads.get_or(|| RefCell::new(ThreadSlot::default()));
        // A pick never re-enters itself on one thread; if it ever did, do not block.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return RoundRobin.pick(pool, request);
        };
        if slot.instance.as_ref().map(|(p, _)| p.generation) != Some(generation) {
            slot.instance = None;
            let plugin = self.current.load_full();
            match ThreadInstance::new(&self.runtime, &plugin, n) {
                Ok(instance) => slot.instance = Some((plugin, instance)),
                Err(e) => {
                    self.record_failure(plugin.generation, &e);
                    return self.fallback(FallbackReason::Trap, pool, request);
                }
            }
        }
        slot.picks = slot.picks.wrapping_add(1);
        let timed = slot.picks.is_multiple_of(TIMING_SAMPLE).then(Instant::now);
        let random = slot.rng.u64(..);
        let Some((plugin, instance)) = slot.instance.as_mut() else {
            return self.fallback(FallbackReason::Trap, pool, request);
        };
        let pick = Pick {
            hash: request.hash,
            random,
            exclude: request.exclude,
            headers: request.headers,
        };
        let result = instance.pick(pool, pick, &plugin.tags);
        if let Some(start) = timed {
            self.pick_duration.observe(start.elapsed().as_secs_f64());
        }
        let reason = match result {
            Ok(Answer::Index(i)) => return Some(i),
            Ok(Answer::NoOpinion) => {
                drop(slot);
                return self.fallback(FallbackReason::NoOpinion, pool, request);
            }
            Ok(Answer::OutOfRange { answer, offered }) => {
                self.record_failure(
                    plugin.generation,
                    &format_args!("sluice_pick({offered}) returned {answer}"),
                );
                FallbackReason::OutOfRange
            }
            Err(CallError::Deadline) => {
                self.record_failure(plugin.generation, &"sluice_pick missed its deadline");
                FallbackReason::Deadline
            }
            Err(CallError::Trap(t)) => {
                self.record_failure(plugin.generation, &t);
                FallbackReason::Trap
            }
            Err(e @ (CallError::Buffer | CallError::Prepare { .. })) => {
                self.record_failure(plugin.generation, &e);
                FallbackReason::Trap
            }
        };
        // The instance may be in any state after a failure: start the next pick afresh.
        slot.instance = None;
        drop(slot);
        self.fallback(reason, pool, request)
    }

    fn info(&self) -> StrategyInfo {
        let plugin = self.current.load();
        StrategyInfo {
            name: self.name.to_string(),
            kind: "wasm",
            source: plugin.source.clone(),
            generation: plugin.generation,
            state: if self.is_disabled(plugin.generation) {
                "disabled"
            } else {
                "active"
            },
            fallbacks: self.fallback_counts(),
        }
    }
}
