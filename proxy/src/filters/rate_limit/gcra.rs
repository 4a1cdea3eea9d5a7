//! The generic cell rate algorithm on one key's "theoretical arrival time" (TAT): a request
//! at `now` is admitted when, after it, the TAT is at most `burst` emission intervals ahead
//! of `now`; each admitted request moves the TAT one interval on. It computes what a token
//! bucket of size `burst` refilled at `rate` per `per` would, in one number per key.

use std::time::Duration;

/// A budget's constants, in ticks of the clock the TATs are kept in (nanoseconds for the
/// local store, microseconds in Redis, whose scripts count in doubles).
#[derive(Debug, Clone, Copy)]
pub(super) struct Gcra {
    /// Time one request's token takes to come back: `per / rate`.
    interval: u64,
    /// How far ahead of now the TAT may run: `burst * interval`.
    tolerance: u64,
    /// Nanoseconds per tick.
    tick: u64,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decision {
    /// `None`: admitted; else how long until a request would be.
    pub(super) retry_after: Option<Duration>,
    /// Requests the key may still make at once.
    pub(super) remaining: u64,
    /// Time until the bucket is full again.
    pub(super) reset: Duration,
}

impl Gcra {
    /// A budget on a nanosecond clock.
    pub(super) fn new(rate: u64, per: Duration, burst: u64) -> Self {
        Self::with_tick(rate, per, burst, Duration::from_nanos(1))
    }

    /// A budget on a clock ticking every `tick`.
    pub(super) fn with_tick(rate: u64, per: Duration, burst: u64, tick: Duration) -> Self {
        let tick = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        let per = u64::try_from(per.as_nanos() / u128::from(tick)).unwrap_or(u64::MAX);
        let interval = (per / rate).max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(burst),
            tick,
        }
    }

    /// `(interval, tolerance)` in ticks: what a store that decides elsewhere (a Redis script)
    /// needs to apply the same rule.
    pub(super) fn constants(&self) -> (u64, u64) {
        (self.interval, self.tolerance)
    }

    fn duration(&self, ticks: u64) -> Duration {
        Duration::from_nanos(ticks.saturating_mul(self.tick))
    }

    /// The decision for a request at `now` on a key whose TAT is `tat`, and the new TAT
    /// (unchanged when refused).
    pub(super) fn decide(&self, tat: u64, now: u64) -> (Decision, u64) {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.tolerance {
            let decision = Decision {
                retry_after: Some(self.duration(ahead - self.tolerance)),
                remaining: 0,
                reset: self.duration(tat.saturating_sub(now)),
            };
            return (decision, tat);
        }
        let decision = Decision {
            retry_after: None,
            remaining: (self.tolerance - ahead) / self.interval,
            reset: self.duration(ahead),
        };
        (decision, next)
    }

    /// Whether a key whose TAT is `tat` is as good as unseen at `now` (its bucket is full).
    pub(super) fn is_idle(&self, tat: u64, now: u64) -> bool {
        tat <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_rate() {
        // 10 per second, bursts of 5.
        let gcra = Gcra::new(10, Duration::from_secs(1), 5);
        let mut tat = 0;
        let now = 100 * SECOND;
        for expected_remaining in [4, 3, 2, 1, 0] {
            let (decision, next) = gcra.decide(tat, now);
            assert_eq!(decision.retry_after, None);
            assert_eq!(decision.remaining, expected_remaining);
            tat = next;
        }
        let (refused, same) = gcra.decide(tat, now);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        assert_eq!(same, tat);
        assert_eq!(refused.reset, Duration::from_millis(500));
        // A tenth of a second later one token is back.
        let (later, _) = gcra.decide(tat, now + SECOND / 10);
        assert_eq!(later.retry_after, None);
        assert!(gcra.is_idle(tat, now + SECOND) && !gcra.is_idle(tat, now));
    }

    #[test]
    fn a_microsecond_clock_decides_the_same() {
        let nanos = Gcra::new(10, Duration::from_secs(1), 5);
        let micros = Gcra::with_tick(10, Duration::from_secs(1), 5, Duration::from_micros(1));
        assert_eq!(micros.constants(), (100_000, 500_000));
        let (a, _) = nanos.decide(100 * SECOND + SECOND / 2, 100 * SECOND);
        let (b, _) = micros.decide(100_500_000, 100_000_000);
        assert_eq!(a, b);
    }

    #[test]
    fn rates_coarser_than_the_clock() {
        // 1 per hour.
        let gcra = Gcra::new(1, Duration::from_secs(3600), 1);
        let (first, tat) = gcra.decide(0, SECOND);
        assert_eq!(first.retry_after, None);
        let (second, _) = gcra.decide(tat, 2 * SECOND);
        assert_eq!(second.retry_after, Some(Duration::from_secs(3599)));
    }
}
