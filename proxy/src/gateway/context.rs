//! Per-request state carried through pingora's filters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::Route;
use crate::pool::InFlightGuard;

/// Requests being handled by this process right now (from context creation to drop).
static ACTIVE_REQUESTS: AtomicUsize = AtomicUsize::new(0);

/// Requests being handled by this process right now.
pub fn active_requests() -> usize {
    ACTIVE_REQUESTS.load(Ordering::Acquire)
}

/// Counts as one request in flight while held: every request context holds one, and so does a
/// connection accepted just before the stop while its first request is on the way.
pub struct InFlightHold(());

impl InFlightHold {
    pub fn new() -> Self {
        ACTIVE_REQUESTS.fetch_add(1, Ordering::AcqRel);
        Self(())
    }
}

impl Default for InFlightHold {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InFlightHold {
    fn drop(&mut self) {
        ACTIVE_REQUESTS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most attempts one request makes (first try plus retries) that are remembered for exclusion.
const MAX_TRIED: usize = 8;

/// The instance keys a request has tried, for the strategy to exclude on retry.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TriedInstances {
    keys: [u64; MAX_TRIED],
    len: usize,
}

impl TriedInstances {
    pub(crate) fn as_slice(&self) -> &[u64] {
        &self.keys[..self.len]
    }

    /// Remembers `key`; past MAX_TRIED attempts the oldest ones are enough.
    pub(crate) fn remember(&mut self, key: u64) {
        if self.len < MAX_TRIED {
            self.keys[self.len] = key;
            self.len += 1;
        }
    }
}

/// Why the gateway itself answered instead of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalAnswer {
    NoRoute,
    NoInstance,
}

/// State of one request; dropping it ends the in-flight count of its current attempt.
pub struct RequestCtx {
    pub(crate) start: Instant,
    pub(crate) route: Option<Arc<Route>>,
    /// The attempt in flight; replaced on retry, dropped with the context on every path.
    pub(crate) attempt: Option<InFlightGuard>,
    pub(crate) upstream_addr: Option<SocketAddr>,
    pub(crate) upstream_start: Option<Instant>,
    pub(crate) upstream_elapsed: Option<std::time::Duration>,
    pub(crate) local_answer: Option<LocalAnswer>,
    pub(crate) request_hash: u64,
    tried: TriedInstances,
    pub(crate) attempts: u32,
    /// Request body bytes seen so far (for the route's body limit).
    pub(crate) body_bytes: u64,
    /// This request in `active_requests()` until the context drops.
    _active: InFlightHold,
}

impl RequestCtx {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            route: None,
            attempt: None,
            upstream_addr: None,
            upstream_start: None,
            upstream_elapsed: None,
            local_answer: None,
            request_hash: 0,
            tried: TriedInstances::default(),
            attempts: 0,
            body_bytes: 0,
            _active: InFlightHold::new(),
        }
    }

    /// Instance keys tried so far.
    pub(crate) fn tried(&self) -> &[u64] {
        self.tried.as_slice()
    }

    pub(crate) fn remember_tried(&mut self, key: u64) {
        self.tried.remember(key);
    }
}
