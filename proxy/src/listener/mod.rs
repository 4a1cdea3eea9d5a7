//! What sits between an accepted connection and the proxy: the request-header deadline and
//! downstream TLS (certificates chosen by SNI).

mod header_deadline;
mod rewind;
mod tls;

pub use header_deadline::HeaderDeadline;
pub use tls::{CertError, CertIndex, SniResolver};
