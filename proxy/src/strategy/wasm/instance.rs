//! One long-lived plugin instance on one worker thread: its store, typed exports and buffer,
//! and the per-pick write of header and records (full records only when the pool changed,
//! otherwise just the live fields).

use std::sync::Arc;

use wasmtime::{Memory, Store, TypedFunc};

use super::abi::{header, record, ABI_VERSION, HEADER_SIZE, RECORD_SIZE};
use super::plugin::LoadedPlugin;
use super::runtime::{on_deadline, DeadlineState, HeadersPtr, HostState, WasmRuntime};
use super::ticker::EpochTicker;
use super::LoadError;
use crate::pool::Pool;
use crate::strategy::RequestHeaders;

/// Why one call into the plugin failed.
#[derive(Debug)]
pub(crate) enum CallError {
    Trap(String),
    Deadline,
    /// The plugin's buffer does not fit in its memory, or it could not provide one.
    Buffer,
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
    /// Generation of the plugin this was instantiated from.
    pub(crate) generation: u64,
    store: Store<HostState>,
    memory: Memory,
    pick: TypedFunc<i32, i32>,
    buffer: TypedFunc<i32, i32>,
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
        store.set_epoch_deadline(runtime.deadline_ticks());
        let step = runtime.deadline_ticks() - 1;
        store.epoch_deadline_callback(move |mut ctx| {
            Ok(on_deadline(&mut ctx.data_mut().deadline, step))
        });
        ticker.call_starting();
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
        if plugin.has_configure {
            let alloc = instance
                .get_typed_func::<i32, i32>(&mut store, "sluice_alloc")
                .map_err(|_| export("sluice_alloc"))?;
            let configure = instance
                .get_typed_func::<(i32, i32), i32>(&mut store, "sluice_configure")
                .map_err(|_| export("sluice_configure"))?;
            let config = &plugin.config_json;
            let len = i32::try_from(config.len()).map_err(|_| LoadError::Configure(-1))?;
            ticker.call_starting();
            store.set_epoch_deadline(runtime.deadline_ticks());
            let ptr = alloc
                .call(&mut store, len)
                .map_err(|e| LoadError::Instantiate(format!("sluice_alloc: {e:#}")))?;
            let start = usize::try_from(ptr).map_err(|_| LoadError::Configure(-1))?;
            let mem = memory.data_mut(&mut store);
            let end = start.checked_add(config.len()).filter(|&e| e <= mem.len());
            let Some(end) = end else {
                return Err(LoadError::Instantiate(
                    "sluice_alloc returned memory out of bounds".into(),
                ));
            };
            mem[start..end].copy_from_slice(config);
            ticker.call_starting();
            store.set_epoch_deadline(runtime.deadline_ticks());
            let code = configure
                .call(&mut store, (ptr, len))
                .map_err(|e| LoadError::Instantiate(format!("sluice_configure: {e:#}")))?;
            if code != 0 {
                return Err(LoadError::Configure(code));
            }
        }
        let mut this = Self {
            generation: plugin.generation,
            store,
            memory,
            pick,
            buffer,
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
            CallError::Buffer => {
                LoadError::Instantiate("sluice_buffer returned memory out of bounds".into())
            }
        })?;
        Ok(this)
    }

    /// Asks the plugin for a buffer of at least `n` records.
    fn grow(&mut self, n: usize) -> Result<(), CallError> {
        let max = i32::try_from(n).map_err(|_| CallError::Buffer)?;
        self.store.data_mut().deadline = DeadlineState::default();
        self.ticker.call_starting();
        self.store.set_epoch_deadline(self.deadline_ticks);
        let ptr = self.buffer.call(&mut self.store, max)?;
        let start = usize::try_from(ptr).map_err(|_| CallError::Buffer)?;
        let end = start
            .checked_add(HEADER_SIZE + RECORD_SIZE * n)
            .ok_or(CallError::Buffer)?;
        if start == 0 || end > self.memory.data_size(&self.store) {
            return Err(CallError::Buffer);
        }
        self.buffer_ptr = start;
        self.capacity = n;
        self.written = None;
        Ok(())
    }

    /// Writes the request and the pool's eligible instances, then calls `sluice_pick`.
    pub(crate) fn pick(
        &mut self,
        pool: &Pool,
        hash: u64,
        random: u64,
        headers: Option<&dyn RequestHeaders>,
        tags: &[String],
    ) -> Result<i32, CallError> {
        let n = pool.eligible_len();
        if n > self.capacity {
            self.grow(n)?;
        }
        let base = self.buffer_ptr;
        let mem = self.memory.data_mut(&mut self.store);
        // The guest may have moved or shrunk nothing, but check: a hostile module can write
        // anywhere in its own memory, never outside it.
        let end = base + HEADER_SIZE + RECORD_SIZE * n;
        if end > mem.len() {
            return Err(CallError::Buffer);
        }
        let buf = &mut mem[base..end];
        put_u32(buf, header::VERSION, ABI_VERSION);
        put_u32(buf, header::N, n as u32);
        put_u32(buf, header::RECORD_SIZE, RECORD_SIZE as u32);
        put_u32(buf, header::FLAGS, 0);
        put_u64(buf, header::REQUEST_HASH, hash);
        put_u64(buf, header::RANDOM, random);
        let full = self.written != Some((pool.generation(), n));
        let records = buf[HEADER_SIZE..].chunks_exact_mut(RECORD_SIZE);
        for (r, member) in records.zip(pool.eligible_members()) {
            if full {
                put_u64(r, record::KEY, member.key);
                put_u32(r, record::WEIGHT, member.spec.weight);
                put_u32(r, record::TAGS, tag_bits(&member.spec.tags, tags));
                put_u32(r, record::RESERVED, 0);
            }
            // The three live fields are contiguous (in flight, EWMA, failures): one copy.
            const _: () = assert!(record::EWMA_US == record::IN_FLIGHT + 4);
            const _: () = assert!(record::FAILURES == record::EWMA_US + 4);
            let live = &member.live;
            let mut fields = [0u8; 12];
            fields[0..4].copy_from_slice(&live.in_flight().to_le_bytes());
            fields[4..8].copy_from_slice(&live.ewma_us().to_le_bytes());
            fields[8..12].copy_from_slice(&live.failures().to_le_bytes());
            r[record::IN_FLIGHT..record::FAILURES + 4].copy_from_slice(&fields);
        }
        // The guest could overwrite the records; rewrite them all after anything unusual.
        self.written = Some((pool.generation(), n));
        // The guest reads the request's headers during the call only: the guard clears the
        // pointer when it drops, after the call returns or while a panic unwinds through it.
        let mut store = LentHeaders::lend(&mut self.store, headers);
        // Each call starts with a fresh deadline: a CPU mark left by an earlier call that was
        // descheduled across a tick would make the next firing interrupt a healthy pick.
        store.data_mut().deadline = DeadlineState::default();
        self.ticker.call_starting();
        store.set_epoch_deadline(self.deadline_ticks);
        let result = self.pick.call(&mut *store, n as i32);
        drop(store);
        if result.is_err() {
            self.written = None;
        }
        Ok(result?)
    }
}

/// The store while a request's headers are lent to the guest: `HostState::headers` points at
/// them with its lifetime erased, and is cleared when this guard drops, so no path (a return,
/// an error, a panic) leaves a pointer to headers that are gone.
struct LentHeaders<'s> {
    store: &'s mut Store<HostState>,
}

impl<'s> LentHeaders<'s> {
    fn lend(store: &'s mut Store<HostState>, headers: Option<&dyn RequestHeaders>) -> Self {
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
}

impl Drop for LentHeaders<'_> {
    fn drop(&mut self) {
        self.store.data_mut().headers = HeadersPtr(None);
    }
}

impl std::ops::Deref for LentHeaders<'_> {
    type Target = Store<HostState>;
    fn deref(&self) -> &Self::Target {
        self.store
    }
}

impl std::ops::DerefMut for LentHeaders<'_> {
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
            let lent = LentHeaders::lend(&mut store, Some(&headers));
            assert!(lent.data().headers.0.is_some());
        }
        assert!(
            store.data().headers.0.is_none(),
            "cleared after a normal return"
        );
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _lent = LentHeaders::lend(&mut store, Some(&headers));
            panic!("a host function panicked");
        }));
        assert!(unwound.is_err());
        assert!(store.data().headers.0.is_none(), "cleared while unwinding");
    }
}
