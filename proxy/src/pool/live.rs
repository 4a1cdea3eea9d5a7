//! Live per-instance state — requests in flight, latency EWMA, failures, picks — shared by
//! every snapshot that holds the instance and by every request in flight to it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Live counters of one instance, keyed by (service, instance id) in the [`super::Directory`].
#[derive(Debug)]
pub struct InstanceLive {
    service: Arc<str>,
    id: Arc<str>,
    in_flight: AtomicU32,
    ewma_us: AtomicU32,
    failures: AtomicU32,
    picks: AtomicU64,
    /// Picks already exported to the Prometheus counter.
    exported_picks: AtomicU64,
}

impl InstanceLive {
    pub(crate) fn new(service: Arc<str>, id: Arc<str>) -> Self {
        Self {
            service,
            id,
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU32::new(0),
            failures: AtomicU32::new(0),
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

    /// Requests in flight to this instance, process-wide.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Latency EWMA in microseconds; 0 when unknown.
    pub fn ewma_us(&self) -> u32 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// Consecutive failed attempts.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Times the strategy picked this instance.
    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Records a pick and starts a request: the returned guard ends it exactly once, on drop.
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.picks.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            live: Arc::clone(self),
        }
    }

    /// Folds one response latency into the EWMA (weight 1/8 for the new sample).
    pub fn observe_latency(&self, latency: Duration) {
        let sample = u32::try_from(latency.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            ((u64::from(old) * 7 + u64::from(sample)) / 8) as u32
        };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    /// Records a successful attempt.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed attempt.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
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
        self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ewma_moves_toward_samples() {
        let live = InstanceLive::new("s".into(), "a".into());
        live.observe_latency(Duration::from_micros(800));
        assert_eq!(live.ewma_us(), 800);
        live.observe_latency(Duration::from_micros(0));
        assert_eq!(live.ewma_us(), 700);
    }
}
