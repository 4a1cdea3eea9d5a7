//! The data plane: the router (host + longest path prefix -> route), the pingora
//! [`ProxyHttp`](pingora::proxy::ProxyHttp) implementation that picks an instance per request,
//! rewrites and forwards it (over HTTP/1.1, TLS or h2c by the instance's scheme), the fast
//! path that serves plain HTTP/1.1 requests without pingora's HTTP machinery, and the metrics
//! and access log both record.

mod access_log;
mod context;
mod failure;
pub use context::{active_requests, InFlightHold, RequestCtx};
mod fast;
mod forward;
mod peer;
mod proxy;
mod retry;
mod route_metrics;
mod router;

pub use fast::{answer as local_answer, FastPath, Served};
pub use peer::{CaError, UpstreamTls};
pub use proxy::{Gateway, HeaderLimits};
pub use router::{Route, Router, RouterError, DEFAULT_CONNECT_TIMEOUT};
