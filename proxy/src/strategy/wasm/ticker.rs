//! The epoch clock that enforces per-call deadlines: advanced by the calling threads while
//! plugins are being called, by a watchdog thread only when no call comes to do it.
//!
//! A call's deadline is a number of epoch ticks, so the engine's epoch must count ticks (the
//! deadline, 1 ms by default) while a call can be running. A thread that sleeps and wakes
//! every tick costs ~16 µs of CPU per wake-up on this kind of VM: 1.6 % of a core, and 4–5 %
//! of a saturated gateway's throughput. But nobody needs to see the epoch move while no call
//! runs, so it is advanced lazily: `last_tick` is the tick boundary the epoch has counted up
//! to, and whoever finds whole ticks elapsed since then adds them — a call as it starts, or
//! the watchdog. A call that ticks also sets the watchdog's one-shot timer (a `timerfd`) to
//! two ticks past the new boundary, so the watchdog wakes only when calls leave a whole tick
//! pass without starting (the gateway went quiet, its worker was descheduled, or a call is
//! stuck). It then counts the elapsed ticks and keeps ticking once a tick, as a plain ticker
//! would, until calls come back, or until [`IDLE_TICKS`] ticks have passed without a call and
//! it leaves the timer off. Under steady load the watchdog never wakes: the cost is a clock
//! read per call (skipped while the TSC says an eighth of a tick has not passed since the last
//! one: `clock_hint`) and one `timerfd_settime` per tick.
//!
//! The epoch never runs ahead of the clock (it counts tick boundaries that have passed), and a
//! call starts with every boundary before it counted (it counts them itself), but for those of
//! the last eighth of a tick where the clock hint let it skip the clock; from the second
//! boundary after its start the watchdog counts each one on time if the call is stuck. So a
//! deadline of `k >= 2` ticks fires after `k - 1 - 1/8` to `k` ticks, as with a plain ticker
//! give or take that eighth.
//!
//! The hand-over when the watchdog turns the timer off is Dekker's: a call stores the current
//! tick in `last_call` (at most once a tick per thread; only that store is sequentially
//! consistent) and then reads `armed`; the watchdog stores `armed = false` and then reads
//! `last_call`. One of the two sees the other, so either the watchdog keeps the timer or the
//! call sets it: no call runs while nothing would advance the epoch.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::Engine;

use super::clock_hint::ClockHint;
use super::runtime::read_clock;

/// Ticks without a call before the watchdog disarms (100 ms at the default 1 ms deadline).
const IDLE_TICKS: u64 = 100;

// A call is interrupted within MAX_CALL_TICKS of its start as long as the epoch advances, so
// the watchdog, which disarms only IDLE_TICKS after the last call started, never leaves one
// running with the epoch standing still.
const _: () = assert!(super::runtime::MAX_CALL_TICKS < IDLE_TICKS);

/// More ticks than any call's deadline: a catch-up larger than this (after an idle spell)
/// restarts the count at the current time instead of at a boundary.
const MAX_CATCH_UP: u64 = IDLE_TICKS;

/// Advances an engine's epoch about every `tick` while plugins are being called.
pub(crate) struct EpochTicker {
    engine: Engine,
    tick_ns: u64,
    /// `CLOCK_MONOTONIC` time of the last tick boundary the epoch has counted, in ns.
    last_tick: AtomicU64,
    /// Ticks so far (the engine's epoch is not readable, so we count beside it; this count is
    /// raised first, so it is never behind the epoch).
    ticks: AtomicU64,
    /// The value of `ticks` when a call last started.
    last_call: AtomicU64,
    /// Whether the watchdog's timer is set to fire if calls stop ticking.
    armed: AtomicBool,
    timer: OnceLock<OwnedFd>,
    started: AtomicBool,
    /// Whether a call needs to read the clock (at most once per eighth of a tick).
    hint: ClockHint,
}

impl EpochTicker {
    pub(crate) fn new(engine: Engine, tick: Duration) -> Self {
        let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self {
            engine,
            tick_ns,
            last_tick: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            last_call: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            timer: OnceLock::new(),
            started: AtomicBool::new(false),
            hint: ClockHint::new(tick_ns, monotonic_ns),
        }
    }

    /// Creates the watchdog's timer and starts its thread, once.
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let timer = match create_timer() {
            Ok(timer) => timer,
            Err(e) => {
                tracing::error!(
                    "cannot create the WASM deadline timer, deadlines are not enforced: {e}"
                );
                self.started.store(false, Ordering::Release);
                return;
            }
        };
        // First and only set: `started` lets one caller through.
        let _ = self.timer.set(timer);
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-wasm-epoch".into())
            .spawn(move || this.watch());
        if let Err(e) = spawned {
            tracing::error!(
                "cannot start the WASM epoch watchdog, deadlines are not enforced: {e}"
            );
        }
    }

    /// Called before every call into a plugin: counts the ticks elapsed, and makes sure the
    /// watchdog will tick if this call does not return. Returns the ticks counted so far: the
    /// engine's epoch, unless ticks are being counted this instant (then the epoch is still
    /// catching up with it).
    #[inline]
    pub(crate) fn call_starting(&self) -> u64 {
        if self.hint.clock_due() {
            let now = monotonic_ns();
            let last = self.last_tick.load(Ordering::Acquire);
            if now.saturating_sub(last) >= self.tick_ns {
                self.tick_for_caller(last, now);
            }
        }
        let ticks = self.ticks.load(Ordering::Acquire);
        if self.last_call.load(Ordering::Relaxed) != ticks {
            self.last_call.store(ticks, Ordering::SeqCst);
        }
        if !self.armed.load(Ordering::SeqCst) {
            self.arm();
        }
        ticks
    }

    #[cold]
    fn tick_for_caller(&self, last: u64, now: u64) {
        if let Some(boundary) = self.try_tick(last, now) {
            self.set_timer(boundary + 2 * self.tick_ns);
        }
    }

    /// Adds the whole ticks elapsed between `last` and `now`, unless someone else counted
    /// since `last`. Returns the new boundary if this call counted.
    fn try_tick(&self, last: u64, now: u64) -> Option<u64> {
        let elapsed = now.saturating_sub(last) / self.tick_ns;
        if elapsed == 0 {
            return None;
        }
        let (count, boundary) = if elapsed > MAX_CATCH_UP {
            (MAX_CATCH_UP, now)
        } else {
            (elapsed, last + elapsed * self.tick_ns)
        };
        self.last_tick
            .compare_exchange(last, boundary, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        // Counted before the engine's epoch moves (and not reordered after it): whoever reads
        // an unchanged count knows the epoch has not moved either (`call_starting`).
        self.ticks.fetch_add(count, Ordering::AcqRel);
        for _ in 0..count {
            self.engine.increment_epoch();
        }
        Some(boundary)
    }

    #[cold]
    fn arm(&self) {
        if self
            .armed
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let due = self.last_tick.load(Ordering::Acquire) + 2 * self.tick_ns;
            self.set_timer(due);
        }
    }

    /// Sets the watchdog's one-shot timer to `due` (`CLOCK_MONOTONIC` nanoseconds). A stale
    /// setting from a caller that was descheduled is always earlier than the right one, so at
    /// worst the watchdog wakes early, sees no tick due and sets it right.
    fn set_timer(&self, due: u64) {
        let Some(timer) = self.timer.get() else {
            return;
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (due / 1_000_000_000) as libc::time_t,
                // Below 10^9, so it fits every platform's c_long.
                tv_nsec: (due % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and a valid itimerspec; the old value is not asked for.
        let rc = unsafe {
            libc::timerfd_settime(
                timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            tracing::error!(
                "cannot set the WASM deadline timer: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// The watchdog thread: wakes when the timer fires, ticks in the calls' place, and keeps
    /// the timer set until calls have stopped for [`IDLE_TICKS`] ticks.
    fn watch(&self) {
        let Some(timer) = self.timer.get() else {
            return;
        };
        loop {
            if let Err(e) = wait_for(timer) {
                tracing::error!("the WASM deadline timer failed, deadlines are not enforced: {e}");
                return;
            }
            let now = monotonic_ns();
            let last = self.last_tick.load(Ordering::Acquire);
            let ticked = self.try_tick(last, now);
            let ticks = self.ticks.load(Ordering::Relaxed);
            let idle = ticks.saturating_sub(self.last_call.load(Ordering::Relaxed)) >= IDLE_TICKS;
            if idle && self.disarm(ticks) {
                // The timer is one-shot and has fired: it stays off until a call sets it.
                continue;
            }
            let due = match ticked {
                // No call came for a whole tick: tick on time until they come back.
                Some(boundary) => boundary + self.tick_ns,
                // Early (a stale setting) or a call ticked meanwhile.
                None => self.last_tick.load(Ordering::Acquire) + 2 * self.tick_ns,
            };
            self.set_timer(due);
        }
    }

    /// Marks the timer off after an idle spell, unless a call started meanwhile. Returns
    /// whether it is off.
    fn disarm(&self, ticks: u64) -> bool {
        self.armed.store(false, Ordering::SeqCst);
        // A call that stored `last_call` before our store is seen here; one after it sees
        // `armed == false` and sets the timer itself.
        if ticks.saturating_sub(self.last_call.load(Ordering::SeqCst)) >= IDLE_TICKS {
            return true;
        }
        // A call came: keep the timer going (if the call has set `armed` again itself, its
        // setting and ours agree).
        self.armed.store(true, Ordering::SeqCst);
        false
    }

    /// Whether the watchdog has left its timer off (for tests).
    #[cfg(test)]
    pub(crate) fn is_sleeping(&self) -> bool {
        !self.armed.load(Ordering::SeqCst)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (it always exists on Linux; u64 nanoseconds last 584
/// years of uptime).
#[inline]
pub(super) fn monotonic_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC).as_nanos() as u64
}

fn create_timer() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor is owned below.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until the timer fires (a disarmed timer blocks until it is set and fires).
fn wait_for(timer: &OwnedFd) -> io::Result<()> {
    let mut expirations = 0u64;
    loop {
        // SAFETY: reads 8 bytes into a valid u64.
        let n = unsafe {
            libc::read(
                timer.as_raw_fd(),
                (&mut expirations as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock_hint::QUANTUM_DIVISOR;
    use super::*;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn started(tick: Duration) -> Arc<EpochTicker> {
        let ticker = Arc::new(EpochTicker::new(Engine::default(), tick));
        ticker.ensure_started();
        ticker
    }

    #[test]
    fn disarms_when_idle_and_a_call_rearms_it() {
        let ticker = started(Duration::from_micros(200));
        ticker.call_starting();
        wait_until("the watchdog disarms", || ticker.is_sleeping());

        // One call and no more, as if it were stuck: the watchdog must tick in its place.
        ticker.call_starting();
        assert!(!ticker.is_sleeping());
        let after_call = ticker.ticks.load(Ordering::SeqCst);
        wait_until("the watchdog ticks for a silent caller", || {
            ticker.ticks.load(Ordering::SeqCst) > after_call + 2
        });
    }

    #[test]
    fn busy_callers_count_the_elapsed_ticks_without_the_watchdog() {
        // Not started: no watchdog, no timer. The calls alone must keep the epoch on time.
        let ticker = EpochTicker::new(Engine::default(), Duration::from_millis(1));
        ticker.call_starting();
        let start = ticker.last_tick.load(Ordering::SeqCst);
        let at_start = ticker.ticks.load(Ordering::SeqCst);
        let until = std::time::Instant::now() + Duration::from_millis(30);
        let mut before_last_call;
        loop {
            before_last_call = monotonic_ns();
            ticker.call_starting();
            if std::time::Instant::now() >= until {
                break;
            }
        }
        let after_last_call = monotonic_ns();
        let counted = ticker.ticks.load(Ordering::SeqCst) - at_start;
        // The clock hint may have let the last calls skip the clock for an eighth of a tick.
        let lag = ticker.tick_ns / QUANTUM_DIVISOR;
        let (low, high) = (
            (before_last_call - lag - start) / ticker.tick_ns,
            (after_last_call - start) / ticker.tick_ns,
        );
        assert!(
            (low..=high).contains(&counted) && counted >= 20,
            "{counted} ticks counted, {low} to {high} elapsed"
        );
    }

    #[test]
    fn ticks_are_a_tick_apart_whoever_makes_them_and_never_ahead_of_the_clock() {
        let tick = Duration::from_micros(300);
        let ticker = started(tick);
        ticker.call_starting();
        let (start, ticks_at_start) = (monotonic_ns(), ticker.ticks.load(Ordering::SeqCst));
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let ticker = ticker.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        ticker.call_starting();
                        let stamp = ticker.last_tick.load(Ordering::Acquire);
                        if seen.last() != Some(&stamp) {
                            seen.push(stamp);
                        }
                        // Pauses now and then, so the watchdog ticks some of the ticks too.
                        i += 1;
                        if i.is_multiple_of(50_000) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        stop.store(true, Ordering::Relaxed);
        let counted = ticker.ticks.load(Ordering::SeqCst) - ticks_at_start;
        let elapsed = (monotonic_ns() - start) / ticker.tick_ns;
        assert!(
            counted <= elapsed + 1,
            "{counted} ticks counted in {elapsed} ticks' time"
        );
        let mut stamps: Vec<u64> = callers
            .into_iter()
            .flat_map(|c| c.join().expect("caller thread"))
            .collect();
        stamps.sort_unstable();
        stamps.dedup();
        assert!(
            stamps.len() > 10,
            "the epoch advanced: {} ticks",
            stamps.len()
        );
        for pair in stamps.windows(2) {
            let apart = pair[1] - pair[0];
            assert!(
                apart >= ticker.tick_ns && apart.is_multiple_of(ticker.tick_ns),
                "two ticks {apart} ns apart"
            );
        }
    }
}
