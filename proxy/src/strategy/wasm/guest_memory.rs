//! A plugin instance's linear memory as the host reads and writes it on every pick and in
//! every host function: its base and size kept in the store's data, so reaching it is one
//! load and a bounds check instead of wasmtime's lookup through the store's instance table
//! (eight dependent loads: half of what `sluice.live_of` cost at 16 instances).
//!
//! The view stays right because a linear memory changes its mapping only when it grows (it
//! never shrinks, and it moves, if the engine lets it, only while growing), and every growth
//! asks the store's limiter first: [`GuestLimits`] notes it, and the next access re-reads base
//! and size from wasmtime before it touches a byte.

use std::ptr::NonNull;

use wasmtime::{AsContextMut, Caller, Memory, ResourceLimiter, Store, StoreLimits};

use super::runtime::HostState;

/// The store's resource limits, and whether the memory may have grown since the view of it
/// was last read.
pub(crate) struct GuestLimits {
    limits: StoreLimits,
    grew: bool,
}

impl GuestLimits {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            grew: false,
        }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        // Noted before the growth happens: if it then fails, the next access merely re-reads
        // an unchanged size.
        self.grew |= allowed;
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Where an instance's memory is: valid while no growth has happened since it was read.
pub(crate) struct GuestMemory {
    memory: Memory,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the pointer is to the linear memory of the store this value lives in (it is part of
// the store's data); it moves between threads with the store and is used only through it.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// The view of `memory`, an instance's memory in the store `ctx`, whose limiter must be
    /// that store's [`GuestLimits`] (so that a growth is seen).
    pub(crate) fn new(memory: Memory, mut ctx: impl AsContextMut) -> Self {
        let bytes = memory.data_mut(&mut ctx);
        Self {
            len: bytes.len(),
            base: NonNull::new(bytes.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            memory,
        }
    }
}

/// The guest's memory, from the host (between calls).
#[inline]
pub(crate) fn in_store(store: &mut Store<HostState>) -> Option<&mut [u8]> {
    refresh(&mut *store);
    bytes(store.data_mut())
}

/// The guest's memory, from a host function (during a call).
#[inline]
pub(crate) fn in_call<'a>(caller: &'a mut Caller<'_, HostState>) -> Option<&'a mut [u8]> {
    refresh(&mut *caller);
    bytes(caller.data_mut())
}

/// Re-reads the view if the memory may have grown since it was read: one flag otherwise.
#[inline]
fn refresh(mut ctx: impl AsContextMut<Data = HostState>) {
    let mut ctx = ctx.as_context_mut();
    let state = ctx.data_mut();
    if !state.limits.grew {
        return;
    }
    state.limits.grew = false;
    let Some(memory) = state.guest.as_ref().map(|g| g.memory) else {
        return;
    };
    let fresh = GuestMemory::new(memory, &mut ctx);
    ctx.data_mut().guest = Some(fresh);
}

/// The guest's memory as of the last [`refresh`]; `None` before the instance has one.
#[inline]
fn bytes(state: &mut HostState) -> Option<&mut [u8]> {
    let guest = state.guest.as_ref()?;
    // SAFETY: `base..base + len` is the memory as wasmtime last gave it out (`GuestMemory::new`), and its
    // mapping has not changed since: memories never shrink, and a growth (the only time a
    // memory can move) sets `grew`, after which `refresh` re-reads the view before this is
    // called. The slice borrows the store's data mutably, so nothing else in the host touches
    // the memory while it lives, and the guest is not running while the host holds it.
    Some(unsafe { std::slice::from_raw_parts_mut(guest.base.as_ptr(), guest.len) })
}
