//! Live per-instance state — requests in flight, latency EWMA, failures, picks — shared by
//! every snapshot that holds the instance and by every request in flight to it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::live_cells::{self, LiveCell};

/// What active health checks know of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check configured, or none has run yet.
    Unchecked = 0,
    Healthy = 1,
    Unhealthy = 2,
    /// `wait_first`: no traffic until the first check passes.
    Pending = 3,
}

impl Health {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            3 => Health::Pending,
            _ => Health::Unchecked,
        }
    }

    /// The label shown in `/admin/services`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unchecked => "unchecked",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Pending => "pending",
        }
    }

    /// Whether this state lets the instance receive traffic.
    pub fn admits(self) -> bool {
        matches!(self, Health::Unchecked | Health::Healthy)
    }
}

/// Live counters of one instance, keyed by (service, instance id) in the [`super::Directory`].
///
/// The three a strategy reads (in flight, EWMA, failures) are in a [`LiveCell`] of the dense
/// process-wide table (`live_cells`), so a pick of a large pool touches few pages; the rest
/// are here, on lines of this instance's own (`align(64)`), so two shards updating two
/// instances never write the same line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct InstanceLive {
    cell: &'static LiveCell,
    /// A latency was observed since the last decay tick ([`Self::decay_idle_latency`]).
    sampled: AtomicBool,
    service: Arc<str>,
    id: Arc<str>,
    picks: AtomicU64,
    /// Picks already exported to the Prometheus counter.
    exported_picks: AtomicU64,
    health: AtomicU8,
    /// Consecutive check results disagreeing with `health`.
    health_streak: AtomicU32,
    /// Passive ejection: ejected while the process clock (ms) is below this; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections so far (each one lasts twice as long as the previous, up to 16×).
    ejections: AtomicU32,
}

impl Drop for InstanceLive {
    fn drop(&mut self) {
        live_cells::give_back(self.cell);
    }
}

/// How often idle instances' latency EWMAs decay ([`InstanceLive::decay_idle_latency`]).
pub const LATENCY_DECAY_PERIOD: Duration = Duration::from_secs(1);

/// Milliseconds since the process's first call: the clock ejections are measured on.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl InstanceLive {
    pub(crate) fn new(service: Arc<str>, id: Arc<str>) -> Self {
        Self::with_health(service, id, Health::Unchecked)
    }

    pub(crate) fn with_health(service: Arc<str>, id: Arc<str>, health: Health) -> Self {
        Self {
            health: AtomicU8::new(health as u8),
            health_streak: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            service,
            id,
            cell: live_cells::take(),
            sampled: AtomicBool::new(false),
            picks: AtomicU64::new(0),
            exported_picks: AtomicU64::new(0),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The counters a pick reads.
    #[inline]
    pub fn cell(&self) -> &LiveCell {
        self.cell
    }

    /// The same, for a pool's flat list of them: valid for as long as this instance is (its
    /// cell is reused once it is dropped), which the pool holding the instance guarantees.
    #[inline]
    pub(super) fn table_cell(&self) -> &'static LiveCell {
        self.cell
    }

    /// Requests in flight to this instance, process-wide.
    pub fn in_flight(&self) -> u32 {
        self.cell.in_flight()
    }

    /// Latency EWMA in microseconds; 0 when unknown.
    pub fn ewma_us(&self) -> u32 {
        self.cell.ewma_us()
    }

    /// Consecutive failed attempts.
    pub fn failures(&self) -> u32 {
        self.cell.failures()
    }

    /// Times the strategy picked this instance.
    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Whether passive ejection holds this instance out of rotation at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// When the current ejection ends (process clock, ms); 0 when not ejected.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Times this instance was ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejects for `base` × 2^(previous ejections), at most 16 × `base`; returns the duration.
    pub fn eject(&self, now_ms: u64, base: Duration) -> Duration {
        let previous = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32 << previous.min(4);
        let duration = base * factor;
        self.ejected_until_ms
            .store(now_ms + duration.as_millis() as u64, Ordering::Relaxed);
        duration
    }

    /// Ends an ejection: back in rotation with a clean failure count.
    pub fn readmit(&self) {
        self.ejected_until_ms.store(0, Ordering::Relaxed);
        self.cell.failures.store(0, Ordering::Relaxed);
    }

    /// What active health checks say.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Folds one check result in; returns the new state when it changed (after
    /// `healthy_after` passes or `unhealthy_after` failures in a row).
    pub fn observe_check(
        &self,
        passed: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<Health> {
        let current = self.health();
        if current == Health::Unchecked && passed {
            // Already admitted: the first pass just makes it known healthy.
            self.health.store(Health::Healthy as u8, Ordering::Relaxed);
            self.health_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let admitted = matches!(current, Health::Unchecked | Health::Healthy);
        let agrees = if admitted { passed } else { !passed };
        if agrees {
            self.health_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.health_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if passed {
            healthy_after
        } else {
            unhealthy_after
        };
        if streak < needed.max(1) {
            return None;
        }
        let next = if passed {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        self.health.store(next as u8, Ordering::Relaxed);
        self.health_streak.store(0, Ordering::Relaxed);
        Some(next)
    }

    /// Records a pick and starts a request: the returned guard ends it exactly once, on drop.
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.picks.fetch_add(1, Ordering::Relaxed);
        self.cell.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            live: Arc::clone(self),
        }
    }

    /// Folds one response latency into the EWMA (weight 1/8 for the new sample).
    pub fn observe_latency(&self, latency: Duration) {
        let sample = u32::try_from(latency.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        let old = self.cell.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            ((u64::from(old) * 7 + u64::from(sample)) / 8) as u32
        };
        self.cell.ewma_us.store(new, Ordering::Relaxed);
        if !self.sampled.load(Ordering::Relaxed) {
            self.sampled.store(true, Ordering::Relaxed);
        }
    }

    /// Called once per [`LATENCY_DECAY_PERIOD`]: an instance that answered nothing since the
    /// last call has its EWMA cut by 1/8 (a half-life of about five periods). Without it an
    /// instance that was slow once, and is therefore never picked by a latency-aware strategy,
    /// would keep its old latency for ever and never be tried again; with it, it is tried
    /// again within a minute of its last slow answer (a 1 s timeout's EWMA is back near 1 ms
    /// after ~40 s), and a fresh sample sets it right. Instances with traffic are untouched.
    pub fn decay_idle_latency(&self) {
        if self.sampled.swap(false, Ordering::Relaxed) {
            return;
        }
        // A sample racing this update wins: it is fresher than any decay.
        let _ = self
            .cell
            .ewma_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |us| {
                (us != 0).then(|| (u64::from(us) * 7 / 8) as u32)
            });
    }

    /// Records a successful attempt.
    pub fn record_success(&self) {
        if self.cell.failures.load(Ordering::Relaxed) != 0 {
            self.cell.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed attempt.
    pub fn record_failure(&self) {
        self.cell.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Picks not yet exported, marking them exported.
    pub(crate) fn take_unexported_picks(&self) -> u64 {
        let picks = self.picks();
        let before = self.exported_picks.swap(picks, Ordering::Relaxed);
        picks.saturating_sub(before)
    }
}

/// One request in flight to one instance; dropping it ends the request. It is dropped exactly
/// once on every path — response, upstream error, timeout, client abort, retry elsewhere —
/// because it lives in the request's context.
#[derive(Debug)]
pub struct InFlightGuard {
    live: Arc<InstanceLive>,
}

impl InFlightGuard {
    pub fn live(&self) -> &Arc<InstanceLive> {
        &self.live
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.live.cell.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_has_lines_of_its_own_and_a_cell_that_outlives_no_one() {
        assert_eq!(std::mem::align_of::<InstanceLive>(), 64);
        let live = InstanceLive::new("s".into(), "a".into());
        let guard = Arc::new(live).start_request();
        assert_eq!(guard.live().cell().in_flight(), 1);
        let cell = guard.live().table_cell();
        drop(guard);
        // The instance is gone and its cell back in the table; it starts clean when reused.
        assert_eq!(cell.in_flight(), 0);
    }

    #[test]
    fn health_follows_thresholds() {
        let live = InstanceLive::new("s".into(), "a".into());
        assert_eq!(live.observe_check(true, 2, 2), None);
        assert_eq!(live.health(), Health::Healthy);
        assert_eq!(live.observe_check(false, 2, 2), None);
        assert_eq!(live.observe_check(false, 2, 2), Some(Health::Unhealthy));
        assert!(!live.health().admits());
        assert_eq!(live.observe_check(true, 2, 2), None);
        assert_eq!(live.observe_check(true, 2, 2), Some(Health::Healthy));
        let pending = InstanceLive::with_health("s".into(), "b".into(), Health::Pending);
        assert!(!pending.health().admits());
        assert_eq!(pending.observe_check(false, 1, 1), None, "still pending");
        assert_eq!(pending.observe_check(true, 1, 1), Some(Health::Healthy));
    }

    #[test]
    fn guard_counts_once() {
        let live = Arc::new(InstanceLive::new("s".into(), "a".into()));
        let g1 = live.start_request();
        let g2 = live.start_request();
        assert_eq!(live.in_flight(), 2);
        drop(g1);
        assert_eq!(live.in_flight(), 1);
        drop(g2);
        assert_eq!((live.in_flight(), live.picks()), (0, 2));
    }

    #[test]
    fn an_idle_instance_s_latency_decays_and_a_busy_one_s_does_not() {
        let live = InstanceLive::new("svc".into(), "a".into());
        live.observe_latency(Duration::from_millis(1000));
        live.decay_idle_latency();
        assert_eq!(
            live.ewma_us(),
            1_000_000,
            "sampled since the last tick: kept"
        );
        live.decay_idle_latency();
        assert_eq!(live.ewma_us(), 875_000);
        for _ in 0..40 {
            live.decay_idle_latency();
        }
        assert!(
            live.ewma_us() < 5_000,
            "{} µs after 41 idle ticks",
            live.ewma_us()
        );
        for _ in 0..200 {
            live.decay_idle_latency();
        }
        assert_eq!(live.ewma_us(), 0, "back to unknown");
        live.decay_idle_latency();
        assert_eq!(live.ewma_us(), 0);
        live.observe_latency(Duration::from_micros(300));
        assert_eq!(live.ewma_us(), 300);
    }

    #[test]
    fn ewma_moves_toward_samples() {
        let live = InstanceLive::new("s".into(), "a".into());
        live.observe_latency(Duration::from_micros(800));
        assert_eq!(live.ewma_us(), 800);
        live.observe_latency(Duration::from_micros(0));
        assert_eq!(live.ewma_us(), 700);
    }
}
