//! Health: a minimal HTTP/1.1 probe (the registrar's `--health-url`) and the gateway's active
//! health checks.

mod checker;
mod ejector;
mod probe;

pub use checker::{CheckedService, HealthChecks};
pub use ejector::{EjectionRequests, Ejector};
pub use probe::{http_status, instance_status, ProbeError, ProbeTls};
