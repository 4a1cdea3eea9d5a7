//! Health probing: a minimal HTTP/1.1 GET used by the registrar's `--health-url` (and, next,
//! by the gateway's active health checks).

mod probe;

pub use probe::{http_status, ProbeError};
