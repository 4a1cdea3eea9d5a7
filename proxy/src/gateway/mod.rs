//! The data plane: the router (host + longest path prefix -> route), the one request engine
//! (admit, try, feedback, finish: `engine`), and its two drivers — pingora's
//! [`ProxyHttp`](pingora::proxy::ProxyHttp) (HTTP/1.1, HTTP/2, TLS, h2c and TLS upstreams) and
//! the fast path that serves plain HTTP/1.1 requests without pingora's HTTP machinery.

mod access_log;
pub(crate) mod engine;
pub(crate) mod failure;
pub use engine::{active_requests, Engine, InFlightHold, RequestRecord};
mod fast;
mod forward;
mod head_edit;
mod peer;
mod proxy;
mod retry;
mod route_metrics;
mod router;

pub use fast::{answer as local_answer, ClientIo, FastPath, H2Service, Peer, Served, StreamApp};
pub(crate) use fast::{read_client, release_client};
pub use peer::{CaError, UpstreamTls};
pub use proxy::{Gateway, HeaderLimits};
pub use router::{Backend, Route, Router, RouterError, DEFAULT_CONNECT_TIMEOUT};
