//! The one wasmtime `Engine`, its linker of host functions (`sluice.log`,
//! `sluice.request_header`, and v2's `sluice.live`, `sluice.live_of` and `sluice.tried`) and
//! the per-call deadline policy (the epoch clock and its watchdog are in `ticker`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{Caller, Config, Engine, Linker, OptLevel};

use super::abi::{live_fields, LIVE_SIZE};
use super::guest_memory::{self, GuestLimits, GuestMemory};
use super::ticker::EpochTicker;
use super::LoadError;
use crate::pool::Pool;
use crate::strategy::RequestHeaders;

/// Default cap on a plugin instance's linear memory.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;
/// Default deadline of one call into a plugin.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(1);

/// Log lines one plugin instance may write per second; the rest are dropped and counted.
const LOG_LINES_PER_SECOND: u32 = 20;

/// The request headers of the pick in progress, for `sluice.request_header`.
#[derive(Clone, Copy)]
pub(crate) struct HeadersPtr(pub(crate) Option<*const (dyn RequestHeaders + 'static)>);

// SAFETY: the pointer is set only for the duration of one synchronous call on the thread that
// owns the store, and cleared before the call returns; it is never dereferenced elsewhere.
unsafe impl Send for HeadersPtr {}

/// The pool and the keys already tried of the v2 pick (or prepare) in progress, for
/// `sluice.live` and `sluice.tried`.
#[derive(Clone, Copy)]
pub(crate) struct PoolPtr(pub(crate) Option<(*const Pool, *const [u64])>);

// SAFETY: as HeadersPtr: set for one synchronous call on the store's thread, cleared before it
// returns, read only by host functions during that call.
unsafe impl Send for PoolPtr {}

/// CPU time a call must burn after its first deadline for the second one to interrupt it.
const CPU_AFTER_DEADLINE: Duration = Duration::from_micros(500);
/// Deadline extensions granted to a call that keeps being descheduled, before it is stopped.
const MAX_EXTENSIONS: u32 = 20;

/// Epoch ticks a call may run before its deadline fires (see `deadline_ticks`).
const DEADLINE_TICKS: u64 = 2;

/// Epoch ticks `sluice_prepare` may run: it builds per-pool tables (a schedule, a ring) once
/// per pool change per thread, so it gets 50 ms where a pick gets 1–2.
pub(crate) const PREPARE_DEADLINE_TICKS: u64 = 50;

/// The longest a call can run, in epoch ticks: its deadline, then every extension of one step.
pub(crate) const MAX_CALL_TICKS: u64 =
    DEADLINE_TICKS + (MAX_EXTENSIONS as u64 + 1) * (DEADLINE_TICKS - 1);

/// Where the current call stands with its deadline.
#[derive(Default, Clone, Copy)]
pub(crate) struct DeadlineState {
    /// The thread's CPU time when the deadline first fired.
    cpu_at_first: Option<Duration>,
    extensions: u32,
    /// The epoch (ticks counted) when the deadline was set, and its length in ticks.
    set_at: Option<(u64, u64)>,
}

impl DeadlineState {
    /// Starts a call whose deadline is `ticks` past `epoch`. Returns whether the store's
    /// deadline must be set: not when the last call's was set at the same epoch for as many
    /// ticks and never fired (a firing moves it on), for then the store holds this very one.
    pub(crate) fn start(&mut self, epoch: u64, ticks: u64) -> bool {
        if self.extensions == 0 && self.set_at == Some((epoch, ticks)) {
            return false;
        }
        *self = DeadlineState {
            set_at: Some((epoch, ticks)),
            ..DeadlineState::default()
        };
        true
    }
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`); only read when a deadline fires.
fn thread_cpu_time() -> Duration {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The time on `clock` (a vDSO read for the monotonic clock: no system call); zero if the
/// clock cannot be read.
#[inline]
pub(super) fn read_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Decides, when a call's epoch deadline fires, whether it really overran. The epoch is wall
/// time, and a worker thread descheduled by the OS for a millisecond would otherwise be
/// "interrupted" the moment it resumes. So the first firing grants one more step, and the
/// call is stopped only if it burned [`CPU_AFTER_DEADLINE`] of CPU before the next firing.
/// A call descheduled again and again is stopped after [`MAX_EXTENSIONS`].
pub(crate) fn on_deadline(state: &mut DeadlineState, step: u64) -> wasmtime::UpdateDeadline {
    let now = thread_cpu_time();
    state.extensions += 1;
    match state.cpu_at_first {
        None => {
            state.cpu_at_first = Some(now);
            wasmtime::UpdateDeadline::Continue(step)
        }
        Some(first)
            if now.saturating_sub(first) >= CPU_AFTER_DEADLINE
                || state.extensions > MAX_EXTENSIONS =>
        {
            wasmtime::UpdateDeadline::Interrupt
        }
        Some(_) => wasmtime::UpdateDeadline::Continue(step),
    }
}

/// What host functions can reach of the store.
pub(crate) struct HostState {
    /// The store's limits; they also see the memory grow (for `guest`).
    pub(crate) limits: GuestLimits,
    pub(crate) headers: HeadersPtr,
    pub(crate) pool: PoolPtr,
    /// The instance's exported memory, once instantiated: read on every pick and by every
    /// host function, so kept where one load reaches it.
    pub(crate) guest: Option<GuestMemory>,
    pub(crate) strategy: Arc<str>,
    pub(crate) deadline: DeadlineState,
    log_window: Instant,
    log_lines: u32,
}

impl HostState {
    pub(crate) fn new(strategy: Arc<str>, memory_limit: usize) -> Self {
        Self {
            limits: GuestLimits::new(
                wasmtime::StoreLimitsBuilder::new()
                    .memory_size(memory_limit)
                    .instances(1)
                    .tables(4)
                    .memories(1)
                    .build(),
            ),
            headers: HeadersPtr(None),
            pool: PoolPtr(None),
            guest: None,
            strategy,
            deadline: DeadlineState::default(),
            log_window: Instant::now(),
            log_lines: 0,
        }
    }
}

/// Engine, linker, and the epoch clock (one tick = the deadline).
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Arc<EpochTicker>,
}

fn slice(memory: &[u8], ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= memory.len()).then_some(start..end)
}

/// The pool a v2 pick (or prepare) lent to the guest, and the guest's memory beside it.
fn lent_pool<'a>(caller: &'a mut Caller<'_, HostState>) -> Option<(&'a mut [u8], &'a Pool)> {
    let (pool, _) = caller.data().pool.0?;
    // SAFETY: set by the pick on this thread for the duration of this call (see PoolPtr); the
    // pool outlives the call.
    let pool = unsafe { &*pool };
    Some((guest_memory::in_call(caller)?, pool))
}

/// The guest range of `count` entries of `size` bytes at `ptr`, if it is inside `mem`.
fn array(mem: &[u8], ptr: i32, count: usize, size: usize) -> Option<std::ops::Range<usize>> {
    let len = i32::try_from(count.checked_mul(size)?).ok()?;
    slice(mem, ptr, len)
}

/// `sluice.live(first, count, out_ptr) -> i32`: the live fields (in flight, EWMA, failures;
/// u32 LE each) of records `first..first + count`, [`LIVE_SIZE`] bytes each at `out_ptr`.
/// Returns `count`, or -1 for a range outside the pool, memory outside the module's, or a call
/// outside a pick or prepare.
fn host_live(mut caller: Caller<'_, HostState>, first: i32, count: i32, out_ptr: i32) -> i32 {
    let Some((mem, pool)) = lent_pool(&mut caller) else {
        return -1;
    };
    let (Ok(first), Ok(count_usize)) = (usize::try_from(first), usize::try_from(count)) else {
        return -1;
    };
    let Some(end) = first
        .checked_add(count_usize)
        .filter(|&end| end <= pool.eligible_len())
    else {
        return -1;
    };
    let Some(out) = array(mem, out_ptr, count_usize, LIVE_SIZE) else {
        return -1;
    };
    for (fields, i) in mem[out].chunks_exact_mut(LIVE_SIZE).zip(first..end) {
        fields.copy_from_slice(&live_fields(pool.eligible_live(i)));
    }
    count
}

/// `sluice.live_of(indices_ptr, count, out_ptr) -> i32`: the live fields of the `count`
/// records whose indices (u32 LE) are at `indices_ptr`, [`LIVE_SIZE`] bytes each at `out_ptr`,
/// in one call: what a strategy that samples a few instances (two choices, or d) needs, with
/// one host call instead of one per instance, and the instances' cache misses overlapping.
/// Returns `count`, or -1 (nothing written) for an index outside the pool, memory outside the
/// module's, output overlapping the indices, or a call outside a pick or prepare.
fn host_live_of(
    mut caller: Caller<'_, HostState>,
    indices_ptr: i32,
    count: i32,
    out_ptr: i32,
) -> i32 {
    let Some((mem, pool)) = lent_pool(&mut caller) else {
        return -1;
    };
    let Ok(count_usize) = usize::try_from(count) else {
        return -1;
    };
    let (Some(indices), Some(out)) = (
        array(mem, indices_ptr, count_usize, 4),
        array(mem, out_ptr, count_usize, LIVE_SIZE),
    ) else {
        return -1;
    };
    if indices.start < out.end && out.start < indices.end {
        return -1;
    }
    let n = pool.eligible_len();
    // Four bytes each (`array` checked the range): one load per index.
    let index_at = |mem: &[u8], j: usize| {
        let at = indices.start + 4 * j;
        let bytes: [u8; 4] = mem[at..at + 4].try_into().unwrap_or([0xff; 4]);
        u32::from_le_bytes(bytes) as usize
    };
    if (0..count_usize).any(|j| index_at(mem, j) >= n) {
        return -1;
    }
    for j in 0..count_usize {
        let fields = live_fields(pool.eligible_live(index_at(mem, j)));
        let at = out.start + LIVE_SIZE * j;
        mem[at..at + LIVE_SIZE].copy_from_slice(&fields);
    }
    count
}

/// `sluice.tried(index) -> i32`: 1 when this request already tried record `index`, 0 when
/// not, -1 for an index outside the pool or a call outside a pick or prepare.
fn host_tried(caller: Caller<'_, HostState>, index: i32) -> i32 {
    let Some((pool, tried)) = caller.data().pool.0 else {
        return -1;
    };
    // SAFETY: as in lent_pool; `tried` is the request's slice, alive for the call.
    let (pool, tried) = unsafe { (&*pool, &*tried) };
    match usize::try_from(index) {
        Ok(i) if i < pool.eligible_len() => i32::from(tried.contains(&pool.eligible(i).key)),
        _ => -1,
    }
}

impl WasmRuntime {
    /// The process-wide runtime, created on first use.
    pub fn global() -> Result<&'static Arc<WasmRuntime>, LoadError> {
        static RUNTIME: OnceLock<Result<Arc<WasmRuntime>, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                WasmRuntime::new(DEFAULT_DEADLINE)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| LoadError::Engine(e.clone()))
    }

    fn new(deadline: Duration) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.max_wasm_stack(256 << 10);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        linker
            .func_wrap(
                "sluice",
                "log",
                |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
                    let state = caller.data_mut();
                    if state.log_window.elapsed() >= Duration::from_secs(1) {
                        state.log_window = Instant::now();
                        state.log_lines = 0;
                    }
                    state.log_lines += 1;
                    if state.log_lines > LOG_LINES_PER_SECOND {
                        return;
                    }
                    let strategy = state.strategy.clone();
                    let Some(memory) = guest_memory::in_call(&mut caller) else {
                        return;
                    };
                    let Some(range) = slice(memory, ptr, len.min(4096)) else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&memory[range]);
                    let strategy = &*strategy;
                    match level {
                        1 => tracing::error!(target: "sluice::plugin", strategy, "{text}"),
                        2 => tracing::warn!(target: "sluice::plugin", strategy, "{text}"),
                        3 => tracing::info!(target: "sluice::plugin", strategy, "{text}"),
                        _ => tracing::debug!(target: "sluice::plugin", strategy, "{text}"),
                    }
                },
            )
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        linker
            .func_wrap(
                "sluice",
                "request_header",
                |mut caller: Caller<'_, HostState>,
                 name_ptr: i32,
                 name_len: i32,
                 out_ptr: i32,
                 out_cap: i32|
                 -> i32 {
                    let Some(headers) = caller.data().headers.0 else {
                        return -1;
                    };
                    let Some(memory) = guest_memory::in_call(&mut caller) else {
                        return -1;
                    };
                    let Some(name_range) = slice(memory, name_ptr, name_len) else {
                        return -1;
                    };
                    // SAFETY: set by the pick on this thread for the duration of this call
                    // (see HeadersPtr); the map outlives the call.
                    let headers = unsafe { &*headers };
                    let Ok(name) = std::str::from_utf8(&memory[name_range]) else {
                        return -1;
                    };
                    let Some(value) = headers.field(name) else {
                        return -1;
                    };
                    let Some(out) = slice(memory, out_ptr, out_cap) else {
                        return -1;
                    };
                    let n = value.len().min(out.len());
                    memory[out.start..out.start + n].copy_from_slice(&value[..n]);
                    i32::try_from(value.len()).unwrap_or(i32::MAX)
                },
            )
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        linker
            .func_wrap("sluice", "live", host_live)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        linker
            .func_wrap("sluice", "live_of", host_live_of)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        linker
            .func_wrap("sluice", "tried", host_tried)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(Self {
            ticker: Arc::new(EpochTicker::new(engine.clone(), deadline)),
            engine,
            linker,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// Epoch ticks a call may run: between 1 and 2 ticks, i.e. the deadline to twice it, so a
    /// tick landing just after a call starts never cuts a healthy call short.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        DEADLINE_TICKS
    }

    /// The clock that advances the epoch; its watchdog is started by the first instance.
    pub(crate) fn ticker(&self) -> &Arc<EpochTicker> {
        &self.ticker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_set_again_only_when_the_epoch_moved_or_it_fired() {
        let mut deadline = DeadlineState::default();
        assert!(deadline.start(7, 2), "the first call sets it");
        assert!(
            !deadline.start(7, 2),
            "same epoch, same length: the store holds it"
        );
        assert!(deadline.start(7, PREPARE_DEADLINE_TICKS), "another length");
        assert!(deadline.start(7, 2), "and back");
        assert!(deadline.start(8, 2), "the epoch moved");
        // A firing moves the store's deadline on (and marks the CPU time): set afresh.
        assert!(matches!(
            on_deadline(&mut deadline, 1),
            wasmtime::UpdateDeadline::Continue(1)
        ));
        assert!(deadline.start(8, 2), "it fired");
        assert!(deadline.cpu_at_first.is_none() && deadline.extensions == 0);
        assert!(!deadline.start(8, 2));
    }
}
