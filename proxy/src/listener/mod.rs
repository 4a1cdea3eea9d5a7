//! What sits between an accepted connection and the proxy: the request-header deadline, the
//! admin's connection cap, and
//! downstream TLS (certificates chosen by SNI, sessions resumed), and the per-thread proxy shards that accept.

mod balance;
mod connection_cap;
mod header_deadline;
mod rewind;
mod shard;
mod tls;
mod tls_server;

pub use balance::ShardBalance;
pub use connection_cap::ConnectionCap;
pub use header_deadline::HeaderDeadline;
pub use shard::{pingora_stream, Endpoint, PlainConnection, ProxyShard, ShardApp};
pub use tls::{CertError, CertIndex, LoadedCertificate, SniResolver};
pub use tls_server::{HandshakeCounters, Resumption, TlsListener, TlsServerError};
