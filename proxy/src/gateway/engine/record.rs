//! The one request record: what the engine knows of a request from its head to its access
//! line, the same whichever path serves it (pingora's `CTX`, the fast path's per-request state).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{Backend, Route};
use super::filters::FilterState;
use super::state_spares;
use super::PickFailure;
use crate::gateway::failure::Answer;
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

/// State of one request; dropping it ends the in-flight count of its current try.
pub struct RequestRecord {
    pub(crate) start: Instant,
    pub(crate) route: Option<Arc<Route>>,
    /// The try in flight; replaced on retry, dropped with the record on every path.
    pub(crate) attempt: Option<InFlightGuard>,
    /// Where the last try went.
    pub(crate) upstream: Option<SocketAddr>,
    /// When the last try started (its pick).
    pub(crate) try_start: Option<Instant>,
    /// From the last try's start to its response head.
    pub(crate) upstream_elapsed: Option<Duration>,
    /// The last try's connect and response limits (the route's, capped by what is left of
    /// its `total_timeout`).
    pub(crate) timeouts: TryTimeouts,
    /// Why the last pick found no instance to try (pingora's path answers it later).
    pub(crate) pick_failure: Option<PickFailure>,
    /// The route's `hash_on` value of this request (0 without one).
    pub(crate) hash: u64,
    tried: TriedInstances,
    /// Tries made so far.
    pub(crate) attempts: u32,
    /// Request body bytes received from the client so far (the route's body limit on
    /// pingora's path reads it as it grows; the metrics read the total).
    pub(crate) bytes_received: u64,
    /// The status sent to the client; 499 while none was (the client went away: nginx's).
    pub(crate) status: u16,
    /// The access log's error name (pingora's error type names), or empty.
    pub(crate) error: &'static str,
    /// Response body bytes sent to the client.
    pub(crate) bytes_sent: u64,
    /// What the route's filters keep between their phases; `None` on a route without
    /// filters (nothing allocated). Given back to the thread's spares when the record drops.
    pub(crate) filters: Option<Box<FilterState>>,
    /// Which of the route's backends serves the request (0: its own service; a
    /// `traffic-split` filter may choose another).
    pub(crate) backend: usize,
    /// This request in `active_requests()` until the record drops.
    _active: InFlightHold,
}

/// The limits of one try.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TryTimeouts {
    /// To establish a new connection (`connect_timeout`).
    pub(crate) connect: Duration,
    /// From sending the request to its response head, and between reads and writes after
    /// (the route's `timeout`).
    pub(crate) io: Duration,
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if let Some(state) = self.filters.take() {
            state_spares::give_back(state);
        }
    }
}

impl RequestRecord {
    /// One of the gateway's answers to this request, with the response edits its filters
    /// made before it (see [`Answer::with_edits`]).
    pub(crate) fn dress(&self, answer: Answer) -> Answer {
        match &self.filters {
            Some(state) => answer.with_edits(&state.response),
            None => answer,
        }
    }

    pub(crate) fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// The route and the backend serving the request, once it has a route.
    pub(crate) fn target(&self) -> Option<(&Route, &Backend)> {
        let route = self.route.as_deref()?;
        Some((route, route.backend(self.backend)))
    }

    /// A record of a request that began at `start` (a clock read the caller already has).
    pub(crate) fn starting_at(start: Instant) -> Self {
        Self {
            start,
            route: None,
            attempt: None,
            upstream: None,
            try_start: None,
            upstream_elapsed: None,
            timeouts: TryTimeouts::default(),
            pick_failure: None,
            hash: 0,
            tried: TriedInstances::default(),
            attempts: 0,
            bytes_received: 0,
            status: 499,
            error: "",
            bytes_sent: 0,
            filters: None,
            backend: 0,
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

    /// The instance id of the last try, or empty.
    pub(crate) fn instance_id(&self) -> &str {
        self.attempt.as_ref().map_or("", |a| a.live().id())
    }
}
