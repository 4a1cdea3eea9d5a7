//! What sits between an accepted connection and the proxy: the request-header deadline and
//! downstream TLS (certificates chosen by SNI), and the per-thread proxy shards that accept.

mod header_deadline;
mod rewind;
mod shard;
mod tls;

pub use header_deadline::HeaderDeadline;
pub use shard::ProxyShard;
pub use tls::{CertError, CertIndex, SniResolver};
