//! One long-lived plugin instance on one worker thread: its store, typed exports and buffer,
//! and the per-pick write of header and records. v1: full records when the pool changed,
//! otherwise just the live fields of every record. v2: records only when the pool changed
//! (then `sluice_prepare`), otherwise the header alone; live fields are read on demand.

use std::sync::Arc;

use wasmtime::{Store, TypedFunc};

use super::abi::{header, live_fields, record, Abi, HEADER_SIZE, LIVE_SIZE, RECORD_SIZE};
use super::guest_memory::{self, GuestMemory};
use super::plugin::LoadedPlugin;
use super::runtime::{
    on_deadline, HeadersPtr, HostState, PoolPtr, WasmRuntime, PREPARE_DEADLINE_TICKS,
};
use super::ticker::EpochTicker;
use super::LoadError;
use crate::pool::{Member, Pool};
use crate::strategy::RequestHeaders;

/// Why one call into the plugin failed.
#[derive(Debug)]
pub(crate) enum CallError {
    Trap(String),
    Deadline,
    /// The plugin's buffer does not fit in its memory, or it could not provide one.
    Buffer,
    /// `sluice_prepare(n)` answered non-zero: the plugin cannot serve this pool.
    Prepare {
        n: usize,
        code: i32,
    },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Trap(t) => write!(f, "trapped: {t}"),
            CallError::Deadline => f.write_str("missed its deadline"),
            CallError::Buffer => f.write_str("buffer outside linear memory"),
            CallError::Prepare { n, code } => write!(f, "sluice_prepare({n}) returned {code}"),
        }
    }
}

impl From<wasmtime::Error> for CallError {
    fn from(e: wasmtime::Error) -> Self {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => CallError::Deadline,
            // The trap itself ("wasm `unreachable` instruction executed"), without the
            // multi-line backtrace, so it fits one log line.
            Some(trap) => CallError::Trap(trap.to_string()),
            None => CallError::Trap(e.to_string().lines().next().unwrap_or("trap").to_string()),
        }
    }
}

pub(crate) struct ThreadInstance {
    store: Store<HostState>,
    abi: Abi,
    pick: TypedFunc<i32, i32>,
    buffer: TypedFunc<i32, i32>,
    prepare: Option<TypedFunc<i32, i32>>,
    buffer_ptr: usize,
    capacity: usize,
    /// (pool generation, n) whose records are in the buffer.
    written: Option<(u64, usize)>,
    deadline_ticks: u64,
    ticker: Arc<EpochTicker>,
}

fn put_u32(mem: &mut [u8], at: usize, v: u32) {
    mem[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(mem: &mut [u8], at: usize, v: u64) {
    mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn tag_bits(spec_tags: &[String], strategy_tags: &[String]) -> u32 {
    strategy_tags
        .iter()
        .take(32)
        .enumerate()
        .filter(|(_, t)| spec_tags.contains(t))
        .fold(0u32, |bits, (i, _)| bits | (1 << i))
}

/// Hands bytes to a fresh instance: `sluice_alloc(len)`, the bytes written there, then the
/// receiving export called with `(ptr, len)`; a non-zero answer refuses the plugin.
struct Handover<'s> {
    store: &'s mut Store<HostState>,
    alloc: TypedFunc<i32, i32>,
    runtime: &'s WasmRuntime,
}

impl Handover<'_> {
    fn give(
        &mut self,
        (export, what): (&'static str, &'static str),
        receive: TypedFunc<(i32, i32), i32>,
        bytes: &[u8],
    ) -> Result<(), LoadError> {
        let refused = |code| LoadError::Refused { export, what, code };
        let len = i32::try_from(bytes.len()).map_err(|_| refused(-1))?;
        arm_deadline(
            self.store,
            self.runtime.ticker(),
            self.runtime.deadline_ticks(),
        );
        let ptr = self
            .alloc
            .call(&mut *self.store, len)
            .map_err(|e| LoadError::Instantiate(format!("sluice_alloc: {e:#}")))?;
        let mem = guest_memory::in_store(self.store).unwrap_or_default();
        let range = usize::try_from(ptr)
            .ok()
            .and_then(|start| Some(start..start.checked_add(bytes.len())?))
            .filter(|r| r.end <= mem.len());
        let Some(range) = range else {
            return Err(LoadError::Instantiate(
                "sluice_alloc returned memory out of bounds".into(),
            ));
        };
        mem[range].copy_from_slice(bytes);
        arm_deadline(
            self.store,
            self.runtime.ticker(),
            self.runtime.deadline_ticks(),
        );
        let code = receive
            .call(&mut *self.store, (ptr, len))
            .map_err(|e| LoadError::Instantiate(format!("{export}: {e:#}")))?;
        if code != 0 {
            return Err(refused(code));
        }
        Ok(())
    }
}

impl ThreadInstance {
    /// Instantiates `plugin`, hands it its config, and asks for a buffer of `initial` records.
    pub(crate) fn new(
        runtime: &Arc<WasmRuntime>,
        plugin: &LoadedPlugin,
        initial: usize,
    ) -> Result<Self, LoadError> {
        let ticker = runtime.ticker().clone();
        ticker.ensure_started();
        let mut store = Store::new(
            runtime.engine(),
            HostState::new(plugin.name.clone(), plugin.memory_limit),
        );
        store.limiter(|state| &mut state.limits);
        let step = runtime.deadline_ticks() - 1;
        store.epoch_deadline_callback(move |mut ctx| {
            Ok(on_deadline(&mut ctx.data_mut().deadline, step))
        });
        arm_deadline(&mut store, &ticker, runtime.deadline_ticks());
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let export = |name: &str| LoadError::MissingExport(name.to_string());
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| export("memory"))?;
        let pick = instance
            .get_typed_func::<i32, i32>(&mut store, "sluice_pick")
            .map_err(|_| export("sluice_pick"))?;
        let buffer = instance
            .get_typed_func::<i32, i32>(&mut store, "sluice_buffer")
            .map_err(|_| export("sluice_buffer"))?;
        let prepare = if plugin.exports.prepare {
            Some(
                instance
                    .get_typed_func::<i32, i32>(&mut store, "sluice_prepare")
                    .map_err(|_| export("sluice_prepare"))?,
            )
        } else {
            None
        };
        let guest = GuestMemory::new(memory, &mut store);
        store.data_mut().guest = Some(guest);
        if plugin.exports.tags || plugin.exports.configure {
            let alloc = instance
                .get_typed_func::<i32, i32>(&mut store, "sluice_alloc")
                .map_err(|_| export("sluice_alloc"))?;
            let mut hand = Handover {
                store: &mut store,
                alloc,
                runtime,
            };
            // Tags first, so `configure` may refer to them by name.
            if plugin.exports.tags {
                let tags = instance
                    .get_typed_func::<(i32, i32), i32>(&mut *hand.store, "sluice_tags")
                    .map_err(|_| export("sluice_tags"))?;
                hand.give(("sluice_tags", "the tag names"), tags, &plugin.tags_text)?;
            }
            if plugin.exports.configure {
                let configure = instance
                    .get_typed_func::<(i32, i32), i32>(&mut *hand.store, "sluice_configure")
                    .map_err(|_| export("sluice_configure"))?;
                hand.give(
                    ("sluice_configure", "the config"),
                    configure,
                    &plugin.config_json,
                )?;
            }
        }
        let mut this = Self {
            store,
            abi: plugin.abi,
            pick,
            buffer,
            prepare,
            buffer_ptr: 0,
            capacity: 0,
            written: None,
            deadline_ticks: runtime.deadline_ticks(),
            ticker,
        };
        this.grow(initial.max(16)).map_err(|e| match e {
            CallError::Trap(t) => LoadError::Instantiate(format!("sluice_buffer: {t}")),
            CallError::Deadline => {
                LoadError::Instantiate("sluice_buffer missed its deadline".into())
            }
            CallError::Buffer | CallError::Prepare { .. } => {
                LoadError::Instantiate("sluice_buffer returned memory out of bounds".into())
            }
        })?;
        Ok(this)
    }

    /// Asks the plugin for a buffer of at least `n` records.
    fn grow(&mut self, n: usize) -> Result<(), CallError> {
        let max = i32::try_from(n).map_err(|_| CallError::Buffer)?;
        arm_deadline(&mut self.store, &self.ticker, self.deadline_ticks);
        let ptr = self.buffer.call(&mut self.store, max)?;
        let start = usize::try_from(ptr).map_err(|_| CallError::Buffer)?;
        let end = start
            .checked_add(HEADER_SIZE + RECORD_SIZE * n)
            .ok_or(CallError::Buffer)?;
        let size = guest_memory::in_store(&mut self.store).map_or(0, |m| m.len());
        if start == 0 || end > size {
            return Err(CallError::Buffer);
        }
        self.buffer_ptr = start;
        self.capacity = n;
        self.written = None;
        Ok(())
    }

    /// Asks the plugin for the instance of one request, as its ABI says.
    pub(crate) fn pick(
        &mut self,
        pool: &Pool,
        request: Pick<'_>,
        tags: &[String],
    ) -> Result<Answer, CallError> {
        match self.abi {
            Abi::V1 => self.pick_v1(pool, request, tags),
            Abi::V2 => self.pick_v2(pool, request, tags),
        }
    }

    /// v2: the header, and the records only when the pool differs from the one the buffer
    /// holds (then `sluice_prepare`); `sluice_pick` reads live fields through `sluice.live`.
    /// A retry offers the whole pool with the retry flag set (`sluice.tried` says which were
    /// tried); the answer is an index of the pool.
    fn pick_v2(
        &mut self,
        pool: &Pool,
        request: Pick<'_>,
        tags: &[String],
    ) -> Result<Answer, CallError> {
        let n = pool.eligible_len();
        if n > self.capacity {
            self.grow(n)?;
        }
        let fresh = self.written != Some((pool.generation(), n));
        let base = self.buffer_ptr;
        let mem = guest_memory::in_store(&mut self.store).ok_or(CallError::Buffer)?;
        let end = base + HEADER_SIZE + if fresh { RECORD_SIZE * n } else { 0 };
        if end > mem.len() {
            return Err(CallError::Buffer);
        }
        let buf = &mut mem[base..end];
        let retry = is_retry(pool, request.exclude);
        write_header(buf, Abi::V2, n, retry, &request);
        if fresh {
            for (r, member) in buf[HEADER_SIZE..]
                .chunks_exact_mut(RECORD_SIZE)
                .zip(pool.eligible_members())
            {
                write_record_fields(r, member, tags);
                // Live fields are read through `sluice.live` in v2.
                r[record::IN_FLIGHT..record::IN_FLIGHT + LIVE_SIZE].fill(0);
            }
        }
        // Until the prepare and the pick succeed, the next pick starts from fresh records.
        self.written = None;
        let mut store = LentRequest::lend(&mut self.store, request.headers, pool, request.exclude);
        if let Some(prepare) = self.prepare.as_ref().filter(|_| fresh) {
            arm_deadline(&mut store, &self.ticker, PREPARE_DEADLINE_TICKS);
            let code = prepare.call(&mut *store, n as i32)?;
            if code != 0 {
                return Err(CallError::Prepare { n, code });
            }
        }
        arm_deadline(&mut store, &self.ticker, self.deadline_ticks);
        let answer = self.pick.call(&mut *store, n as i32)?;
        drop(store);
        self.written = Some((pool.generation(), n));
        Ok(match usize::try_from(answer) {
            Ok(i) if i < n => Answer::Index(i),
            _ if answer == -1 => Answer::NoOpinion,
            _ => Answer::OutOfRange { answer, offered: n },
        })
    }

    /// v1: writes the request and the pool's eligible instances, then calls `sluice_pick`. On
    /// a retry (`exclude` names instances this request already tried) the records are the
    /// eligible instances less those, the header's retry flag is set, and the answer is
    /// mapped back to an index of the whole pool.
    fn pick_v1(
        &mut self,
        pool: &Pool,
        request: Pick<'_>,
        tags: &[String],
    ) -> Result<Answer, CallError> {
        let n = pool.eligible_len();
        let offered = Offered::of(pool, request.exclude);
        let count = offered.count(pool);
        if count > self.capacity {
            self.grow(count)?;
        }
        let base = self.buffer_ptr;
        let mem = guest_memory::in_store(&mut self.store).ok_or(CallError::Buffer)?;
        // The guest may have moved or shrunk nothing, but check: a hostile module can write
        // anywhere in its own memory, never outside it.
        let end = base + HEADER_SIZE + RECORD_SIZE * count;
        if end > mem.len() {
            return Err(CallError::Buffer);
        }
        let buf = &mut mem[base..end];
        write_header(buf, Abi::V1, count, offered.is_retry(), &request);
        // A retry's subset is written whole and leaves the buffer to be rewritten whole.
        let full = offered.is_retry() || self.written != Some((pool.generation(), n));
        let write = |r: &mut [u8], member: &Member| {
            if full {
                write_record_fields(r, member, tags);
            }
            // The three live fields are contiguous (in flight, EWMA, failures): one copy.
            r[record::IN_FLIGHT..record::IN_FLIGHT + LIVE_SIZE]
                .copy_from_slice(&live_fields(member.live.cell()));
        };
        let records = buf[HEADER_SIZE..].chunks_exact_mut(RECORD_SIZE);
        // A first try walks the eligible members as they are: no filter per record.
        match offered {
            Offered::All => {
                for (r, member) in records.zip(pool.eligible_members()) {
                    write(r, member);
                }
            }
            Offered::Untried { .. } => {
                for (r, (_, member)) in records.zip(offered.members(pool)) {
                    write(r, member);
                }
            }
        }
        // The guest could overwrite the records; rewrite them all after anything unusual.
        self.written = (!offered.is_retry()).then_some((pool.generation(), n));
        // The guest reads the request's headers during the call only: the guard clears the
        // pointer when it drops, after the call returns or while a panic unwinds through it.
        let mut store = LentRequest::lend_headers(&mut self.store, request.headers);
        arm_deadline(&mut store, &self.ticker, self.deadline_ticks);
        let result = self.pick.call(&mut *store, count as i32);
        drop(store);
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                self.written = None;
                return Err(e.into());
            }
        };
        Ok(match usize::try_from(answer) {
            Ok(i) if i < count => Answer::Index(offered.pool_index(pool, i)),
            _ if answer == -1 => Answer::NoOpinion,
            _ => Answer::OutOfRange {
                answer,
                offered: count,
            },
        })
    }
}

/// The fields of a record that change only with the pool: key, weight, tag bits, reserved.
fn write_record_fields(r: &mut [u8], member: &Member, tags: &[String]) {
    put_u64(r, record::KEY, member.key);
    put_u32(r, record::WEIGHT, member.spec.weight);
    put_u32(r, record::TAGS, tag_bits(&member.spec.tags, tags));
    put_u32(r, record::RESERVED, 0);
}

/// Gives the next call a fresh deadline of `ticks` epoch ticks. A CPU mark left by an earlier
/// call that was descheduled across a tick would make the next firing interrupt a healthy
/// call, so each call starts from a clean deadline state. The deadline is the epoch plus
/// `ticks`: while the epoch has not moved since the last call's and that one did not fire,
/// the store already holds this very deadline, and setting it again is skipped.
fn arm_deadline(store: &mut Store<HostState>, ticker: &EpochTicker, ticks: u64) {
    let epoch = ticker.call_starting();
    if store.data_mut().deadline.start(epoch, ticks) {
        store.set_epoch_deadline(ticks);
    }
}

/// The 32-byte header: version, count, record size, flags, request hash, random.
fn write_header(buf: &mut [u8], abi: Abi, n: usize, retry: bool, request: &Pick<'_>) {
    put_u32(buf, header::VERSION, abi.version());
    put_u32(buf, header::N, n as u32);
    put_u32(buf, header::RECORD_SIZE, RECORD_SIZE as u32);
    put_u32(buf, header::FLAGS, if retry { flags::RETRY } else { 0 });
    put_u64(buf, header::REQUEST_HASH, request.hash);
    put_u64(buf, header::RANDOM, request.random);
}

/// Whether a v2 pick is a retry: the request tried some instance and at least one eligible
/// instance is still untried (with everything tried, a retry may go anywhere, as a first try).
/// Fewer tried keys than instances leave one untried for sure, so the pool is walked only
/// when the request tried at least as many instances as it has.
fn is_retry(pool: &Pool, tried: &[u64]) -> bool {
    !tried.is_empty()
        && (tried.len() < pool.eligible_len()
            || pool.eligible_members().any(|m| !tried.contains(&m.key)))
}

/// Header flag bits (offset 12).
pub(crate) mod flags {
    /// The request is a retry: the records leave out the instances it already tried.
    pub(crate) const RETRY: u32 = 1;
}

/// What the host knows of the request for one pick.
#[derive(Clone, Copy)]
pub(crate) struct Pick<'a> {
    pub(crate) hash: u64,
    pub(crate) random: u64,
    /// Instance keys this request already tried (empty on a first try).
    pub(crate) exclude: &'a [u64],
    pub(crate) headers: Option<&'a dyn RequestHeaders>,
}

/// The plugin's answer, as an index of the pool's eligible instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Index(usize),
    /// `-1`: the host chooses (round-robin).
    NoOpinion,
    /// Not in `[0, offered)` and not -1.
    OutOfRange {
        answer: i32,
        offered: usize,
    },
}

/// Which eligible instances a pick offers the plugin.
#[derive(Clone, Copy)]
enum Offered<'a> {
    /// Every eligible instance (a first try, or a retry with nothing left untried).
    All,
    /// A retry: the `count` eligible instances whose keys are not in `tried`.
    Untried { tried: &'a [u64], count: usize },
}

impl<'a> Offered<'a> {
    fn of(pool: &Pool, tried: &'a [u64]) -> Self {
        if tried.is_empty() {
            return Offered::All;
        }
        let count = pool
            .eligible_members()
            .filter(|m| !tried.contains(&m.key))
            .count();
        // Everything tried: a retry may still go anywhere (as native round-robin does).
        if count == 0 || count == pool.eligible_len() {
            Offered::All
        } else {
            Offered::Untried { tried, count }
        }
    }

    fn is_retry(self) -> bool {
        matches!(self, Offered::Untried { .. })
    }

    fn count(self, pool: &Pool) -> usize {
        match self {
            Offered::All => pool.eligible_len(),
            Offered::Untried { count, .. } => count,
        }
    }

    /// The offered instances, in pool order.
    fn members<'p>(self, pool: &'p Pool) -> impl Iterator<Item = (usize, &'p Member)> + 'p
    where
        'a: 'p,
    {
        let tried: &'p [u64] = match self {
            Offered::All => &[],
            Offered::Untried { tried, .. } => tried,
        };
        pool.eligible_members()
            .enumerate()
            .filter(move |(_, m)| !tried.contains(&m.key))
    }

    /// The pool index of the `i`-th offered instance.
    fn pool_index(self, pool: &Pool, i: usize) -> usize {
        match self {
            Offered::All => i,
            Offered::Untried { .. } => self.members(pool).nth(i).map_or(i, |(index, _)| index),
        }
    }
}

/// The store while a request is lent to the guest: `HostState::headers` (and in v2
/// `HostState::pool`) point at it with their lifetimes erased, and are cleared when this guard
/// drops, so no path (a return, an error, a panic) leaves a pointer to a request that is gone.
struct LentRequest<'s> {
    store: &'s mut Store<HostState>,
}

impl<'s> LentRequest<'s> {
    /// Lends the headers alone (v1).
    fn lend_headers(store: &'s mut Store<HostState>, headers: Option<&dyn RequestHeaders>) -> Self {
        store.data_mut().headers = HeadersPtr(headers.map(|h| {
            let h: *const (dyn RequestHeaders + '_) = h;
            // SAFETY: only the lifetime is erased. The guard that clears the pointer lives
            // shorter than `h`'s borrow (it is dropped in `pick` before that returns), and
            // the pointer is read only during the call (see HeadersPtr).
            unsafe {
                std::mem::transmute::<
                    *const (dyn RequestHeaders + '_),
                    *const (dyn RequestHeaders + 'static),
                >(h)
            }
        }));
        Self { store }
    }

    /// Lends the headers, the pool and the keys already tried (v2).
    fn lend(
        store: &'s mut Store<HostState>,
        headers: Option<&dyn RequestHeaders>,
        pool: &Pool,
        tried: &[u64],
    ) -> Self {
        // Raw pointers carry no lifetime: the guard clears them before the borrows end, as
        // for the headers.
        store.data_mut().pool = PoolPtr(Some((pool as *const Pool, tried as *const [u64])));
        Self::lend_headers(store, headers)
    }
}

impl Drop for LentRequest<'_> {
    fn drop(&mut self) {
        let state = self.store.data_mut();
        state.headers = HeadersPtr(None);
        state.pool = PoolPtr(None);
    }
}

impl std::ops::Deref for LentRequest<'_> {
    type Target = Store<HostState>;
    fn deref(&self) -> &Self::Target {
        self.store
    }
}

impl std::ops::DerefMut for LentRequest<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lent_headers_are_taken_back_even_when_the_call_panics() {
        let engine = wasmtime::Engine::default();
        let mut store = Store::new(&engine, HostState::new("t".into(), 1 << 20));
        let headers = http::HeaderMap::new();
        {
            let pool = crate::strategy::wasm::sample_pool(2);
            let lent = LentRequest::lend(&mut store, Some(&headers), &pool, &[]);
            assert!(lent.data().headers.0.is_some());
            assert!(lent.data().pool.0.is_some());
        }
        assert!(
            store.data().headers.0.is_none() && store.data().pool.0.is_none(),
            "cleared after a normal return"
        );
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _lent = LentRequest::lend_headers(&mut store, Some(&headers));
            panic!("a host function panicked");
        }));
        assert!(unwound.is_err());
        assert!(store.data().headers.0.is_none(), "cleared while unwinding");
    }
}
