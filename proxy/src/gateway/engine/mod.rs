//! The one request engine both request paths drive. A request goes through the same steps,
//! each implemented once here, whether pingora's proxy or the fast path carries its bytes:
//!
//! 1. **admit** ([`Engine::admit`]): the route (404 without one), the route's body limit
//!    (413), the filter chain's request phase (which may answer), the wait for the registry's
//!    first sync and the 503 when no instance is eligible, the `hash_on` value;
//! 2. **try** ([`Engine::next_try`]): what is left of `total_timeout`, the strategy's pick
//!    with the instances already tried left out, the in-flight count, the try's connect and
//!    response limits;
//! 3. **feedback**: a response head ([`Engine::response_head`]: latency to the EWMA, a 5xx as
//!    a failure) or a failed try ([`Engine::try_failed`]: the
//!    failure count and ejection, then the one retry rule of `gateway::retry`);
//! 4. **finish** ([`Engine::finish`]): the metrics, the access line (the filter state, and
//!    what it holds, goes with the record).
//!
//! A driver owns only its transport: pingora's `ProxyHttp` callbacks (`gateway::proxy`) and
//! the fast path's HTTP/1.1 loop (`gateway::fast`) call these steps in this order, so the
//! loop `try → feedback → (retry) try …` is the same on both, and so is every answer the
//! gateway makes itself (`gateway::failure`).

mod admit;
mod attempt;
pub(crate) mod filters;
mod finish;
mod header_edits;
mod record;
mod request;
mod state_spares;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub(crate) use admit::Admission;
pub(crate) use attempt::PickFailure;
pub(crate) use finish::RequestLine;
pub use record::{active_requests, InFlightHold, RequestRecord};
pub(crate) use request::{hash_request, RequestView};

use super::{HeaderLimits, Router};

/// What every request of a listener is served with: the routes (swapped whole on reload),
/// the listener's header limits, the instance directory and the ejection queue.
pub struct Engine {
    pub(crate) router: Arc<ArcSwap<Router>>,
    pub(crate) limits: HeaderLimits,
    directory: Arc<crate::pool::Directory>,
    ejections: Option<crate::health::EjectionRequests>,
}

impl Engine {
    pub fn new(
        router: Arc<ArcSwap<Router>>,
        limits: HeaderLimits,
        directory: Arc<crate::pool::Directory>,
        ejections: Option<crate::health::EjectionRequests>,
    ) -> Self {
        Self {
            router,
            limits,
            directory,
            ejections,
        }
    }

    /// The client's IP: the peer's, or the one its `X-Forwarded-For` names when the peer is
    /// one of `[proxy] trusted_proxies` (the header is only read then).
    pub(crate) fn client_ip<'h>(
        &self,
        peer: Option<std::net::IpAddr>,
        forwarded_for: impl FnOnce() -> Option<&'h [u8]>,
    ) -> Option<std::net::IpAddr> {
        let router = self.router.load();
        if router.trusted_proxies.is_empty() {
            return peer;
        }
        super::forward::client_ip(peer, forwarded_for(), &router.trusted_proxies)
    }

    /// The metric families, for the recorders of both request paths.
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        self.directory.metrics()
    }
}
