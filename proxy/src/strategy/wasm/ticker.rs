//! The epoch ticker that enforces per-call deadlines, and that sleeps while no plugin runs.
//!
//! A call's deadline is a number of epoch ticks, so the engine's epoch must advance while a
//! call can be running. Ticking once per deadline costs about 2 % of a core on an idle
//! gateway (1 000 wake-ups a second for the default 1 ms), so the ticker parks after
//! [`IDLE_TICKS`] ticks without a call, and the first call after that wakes it.
//!
//! The hand-over is Dekker's: a call stores the current tick in `last_call` (at most once a
//! tick per thread; only the store is sequentially consistent) and then reads `sleeping`; the
//! ticker stores `sleeping` and then reads `last_call`. One of the two sees the other, so
//! either the ticker keeps ticking or the call unparks it: no call runs while the epoch stands
//! still. The cost on the pick path is two plain loads and a compare.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// Ticks without a call before the ticker parks (100 ms at the default 1 ms deadline).
const IDLE_TICKS: u64 = 100;

// A call is interrupted within MAX_CALL_TICKS of its start as long as the epoch advances, so
// the ticker, which parks only IDLE_TICKS after the last call started, never parks under one.
const _: () = assert!(super::runtime::MAX_CALL_TICKS < IDLE_TICKS);

/// How long a parked ticker sleeps before it looks again (a safety net; calls wake it).
const PARKED: Duration = Duration::from_secs(1);

/// Advances an engine's epoch every `tick` while plugins are being called.
pub(crate) struct EpochTicker {
    engine: Engine,
    tick: Duration,
    /// Ticks so far (the engine's epoch is not readable, so we count beside it).
    ticks: AtomicU64,
    /// The value of `ticks` when a call last started.
    last_call: AtomicU64,
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
    started: AtomicBool,
}

impl EpochTicker {
    pub(crate) fn new(engine: Engine, tick: Duration) -> Self {
        Self {
            engine,
            tick,
            ticks: AtomicU64::new(0),
            last_call: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
            started: AtomicBool::new(false),
        }
    }

    /// Starts the ticker thread once.
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-wasm-epoch".into())
            .spawn(move || this.run());
        match spawned {
            Ok(handle) => {
                // First and only set: `started` lets one caller through.
                let _ = self.thread.set(handle.thread().clone());
            }
            Err(e) => {
                tracing::error!(
                    "cannot start the WASM epoch ticker, deadlines are not enforced: {e}"
                );
                self.started.store(false, Ordering::Release);
            }
        }
    }

    /// Called before every call into a plugin: keeps the ticker awake, or wakes it.
    #[inline]
    pub(crate) fn call_starting(&self) {
        let now = self.ticks.load(Ordering::Relaxed);
        if self.last_call.load(Ordering::Relaxed) != now {
            self.last_call.store(now, Ordering::SeqCst);
        }
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    fn run(&self) {
        loop {
            std::thread::sleep(self.tick);
            self.engine.increment_epoch();
            let now = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
            if now.saturating_sub(self.last_call.load(Ordering::Relaxed)) < IDLE_TICKS {
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            // A call that stored `last_call` before our store is seen here; one after it sees
            // `sleeping` and unparks us (a pending unpark makes `park_timeout` return at once).
            if now.saturating_sub(self.last_call.load(Ordering::SeqCst)) >= IDLE_TICKS {
                std::thread::park_timeout(PARKED);
            }
            self.sleeping.store(false, Ordering::SeqCst);
        }
    }

    /// Whether the ticker is parked (for tests).
    #[cfg(test)]
    pub(crate) fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn parks_when_idle_and_a_call_wakes_it() {
        let ticker = Arc::new(EpochTicker::new(
            Engine::default(),
            Duration::from_micros(200),
        ));
        ticker.ensure_started();
        wait_until("the ticker parks", || ticker.is_sleeping());
        let parked_at = ticker.ticks.load(Ordering::SeqCst);

        ticker.call_starting();
        wait_until("the ticker ticks again", || {
            ticker.ticks.load(Ordering::SeqCst) > parked_at + 2
        });
    }
}
