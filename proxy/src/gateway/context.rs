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
    tried: [u64; MAX_TRIED],
    tried_len: usize,
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
            tried: [0; MAX_TRIED],
            tried_len: 0,
            attempts: 0,
            body_bytes: 0,
            _active: InFlightHold::new(),
        }
    }

    /// Instance keys tried so far.
    pub(crate) fn tried(&self) -> &[u64] {
        &self.tried[..self.tried_len]
    }

    pub(crate) fn remember_tried(&mut self, key: u64) {
        if self.tried_len < MAX_TRIED {
            self.tried[self.tried_len] = key;
            self.tried_len += 1;
        }
    }
}
