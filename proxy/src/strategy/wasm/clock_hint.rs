//! A cheap test, before each plugin call, of whether the epoch clock needs reading at all: the
//! CPU's time-stamp counter says whether a fraction of a tick has passed since someone last read
//! it, for a third of what a `CLOCK_MONOTONIC` read costs.
//!
//! Reading `CLOCK_MONOTONIC` (vDSO, `rdtscp`-ordered) is ~16 ns on this kind of VM: 30 % of a
//! round-robin pick. The epoch needs counting only once per tick, so a call that finds less
//! than [`QUANTUM_DIVISOR`]th of a tick passed since the last read skips it, and the epoch lags
//! the clock by at most that fraction: a deadline of `k` ticks fires after `k - 1 - 1/8` to `k`
//! ticks instead of `k - 1` to `k`, which the deadline's one extension (`runtime::on_deadline`)
//! absorbs for any healthy call.
//!
//! The hint is only ever allowed to skip, never to count, so a wrong one costs precision and
//! never safety: a TSC that slows, stops or differs between CPUs makes calls skip longer, and
//! the watchdog, whose timer the last counting call set two ticks ahead, counts in their place.
//! A hint further ahead than one quantum is distrusted. It is used only where the kernel itself
//! keeps time with the TSC (`current_clocksource` is `tsc`: constant and synchronised across
//! CPUs), on x86_64; elsewhere every call reads the clock, as before.

use std::sync::atomic::{AtomicU64, Ordering};

/// The hint skips the clock for at most `tick / QUANTUM_DIVISOR`.
pub(crate) const QUANTUM_DIVISOR: u64 = 8;

/// How long the calibration spins against `CLOCK_MONOTONIC`, once per runtime.
const CALIBRATION_NS: u64 = 200_000;

/// The TSC value before which no call needs to read the clock.
pub(crate) struct ClockHint {
    /// TSC cycles in one quantum; 0 when the hint is off (every call reads the clock).
    quantum: u64,
    next_read: AtomicU64,
}

impl ClockHint {
    /// A hint for ticks of `tick_ns`, calibrated now when the TSC can be trusted.
    pub(crate) fn new(tick_ns: u64, monotonic_ns: impl Fn() -> u64) -> Self {
        let quantum = if tsc_keeps_the_kernels_time() {
            calibrate(tick_ns / QUANTUM_DIVISOR, monotonic_ns)
        } else {
            0
        };
        Self::with_quantum(quantum)
    }

    /// A hint that skips for `quantum` TSC cycles (0: never skips).
    pub(crate) fn with_quantum(quantum: u64) -> Self {
        Self {
            quantum,
            next_read: AtomicU64::new(0),
        }
    }

    /// Whether this call must read the clock; when it must, the calls of the next quantum
    /// need not.
    #[inline]
    pub(crate) fn clock_due(&self) -> bool {
        if self.quantum == 0 {
            return true;
        }
        let now = tsc();
        let next = self.next_read.load(Ordering::Relaxed);
        // Skip only while `now` is within one quantum before `next`: a hint further ahead
        // (another CPU's counter, a stale calibration) is not believed.
        if next.wrapping_sub(now).wrapping_sub(1) < self.quantum {
            return false;
        }
        self.next_read
            .store(now.wrapping_add(self.quantum), Ordering::Relaxed);
        true
    }

    /// Whether the hint is on (for tests and the docs' figures).
    #[cfg(test)]
    pub(crate) fn is_on(&self) -> bool {
        self.quantum != 0
    }
}

/// TSC cycles in `span_ns`, measured against `CLOCK_MONOTONIC` over [`CALIBRATION_NS`]; 0 when
/// the measured rate is implausible (outside 100 MHz to 20 GHz).
fn calibrate(span_ns: u64, monotonic_ns: impl Fn() -> u64) -> u64 {
    let (tsc_start, start) = (tsc(), monotonic_ns());
    let mut now = start;
    while now.saturating_sub(start) < CALIBRATION_NS {
        std::hint::spin_loop();
        now = monotonic_ns();
    }
    let cycles = tsc().wrapping_sub(tsc_start) as f64;
    let per_ns = cycles / now.saturating_sub(start).max(1) as f64;
    if !(0.1..20.0).contains(&per_ns) {
        return 0;
    }
    (per_ns * span_ns as f64) as u64
}

/// Whether the kernel keeps time with the TSC, which it does only when it found it constant
/// and synchronised across CPUs.
fn tsc_keeps_the_kernels_time() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|source| source.trim() == "tsc")
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86_64 CPU and only reads the counter; unordered on
    // purpose (a few cycles' skew cannot matter to a quantum of ~100 µs).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn tsc() -> u64 {
    // Never called: the hint is off (quantum 0) where there is no TSC.
    0
}

#[cfg(test)]
mod tests {
    use super::super::ticker::monotonic_ns;
    use super::*;

    #[test]
    fn skips_for_one_quantum_after_a_read_and_never_when_off() {
        let off = ClockHint::with_quantum(0);
        assert!((0..1000).all(|_| off.clock_due()));
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        // A quantum of 2^40 cycles (minutes): after the first read, every call skips.
        let hint = ClockHint::with_quantum(1 << 40);
        assert!(hint.clock_due(), "the first call reads the clock");
        assert!((0..1000).all(|_| !hint.clock_due()));
        // A hint far ahead of the counter (as from another CPU's) is not believed.
        hint.next_read
            .store(tsc().wrapping_add(1 << 42), Ordering::Relaxed);
        assert!(hint.clock_due());
        // And one behind it is due.
        hint.next_read
            .store(tsc().wrapping_sub(1), Ordering::Relaxed);
        assert!(hint.clock_due());
    }

    #[test]
    fn the_calibrated_quantum_is_about_an_eighth_of_a_tick() {
        let hint = ClockHint::new(1_000_000, monotonic_ns);
        if !hint.is_on() {
            return; // No trusted TSC on this machine: every call reads the clock.
        }
        let start = monotonic_ns();
        let mut reads = 0u32;
        while monotonic_ns() - start < 10_000_000 {
            reads += u32::from(hint.clock_due());
        }
        // 10 ms in quanta of 125 µs: ~80 reads (a descheduled spell only lowers it).
        assert!((20..=90).contains(&reads), "{reads} clock reads in 10 ms");
    }
}
