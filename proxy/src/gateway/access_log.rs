//! The access log's one writer: a line per request at target `sluice::access`, with the same
//! fields whichever request path served it (`via` says which).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Which request path served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Fast,
    Pingora,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Fast => "fast",
            Via::Pingora => "pingora",
        }
    }
}

/// One request as the access log tells it.
#[derive(Debug)]
pub(crate) struct AccessLine<'a> {
    pub(crate) method: &'a str,
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) route: &'a str,
    pub(crate) service: &'a str,
    pub(crate) instance: &'a str,
    pub(crate) via: Via,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) upstream_elapsed: Option<Duration>,
    pub(crate) total: Duration,
    pub(crate) bytes_sent: u64,
    pub(crate) attempts: u32,
    /// The error name (pingora's error types), or empty.
    pub(crate) error: &'a str,
    /// Who the request authenticated as (a filter's), or empty.
    pub(crate) consumer: &'a str,
    /// The `request-id` filter's id, or empty.
    pub(crate) request_id: &'a str,
    /// The `trace-context` filter's trace id, or empty.
    pub(crate) trace_id: &'a str,
}

/// An upstream address, or nothing: formatted in place, no string built per request.
struct Upstream(Option<SocketAddr>);

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => Ok(()),
        }
    }
}

impl AccessLine<'_> {
    /// Writes the line.
    pub(crate) fn write(&self) {
        tracing::info!(
            target: "sluice::access",
            method = self.method,
            host = self.host,
            path = self.path,
            status = self.status,
            route = self.route,
            service = self.service,
            instance = self.instance,
            via = self.via.as_str(),
            upstream = %Upstream(self.upstream),
            upstream_ms = self.upstream_elapsed.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            total_ms = self.total.as_secs_f64() * 1e3,
            bytes_sent = self.bytes_sent,
            attempts = self.attempts,
            error = self.error,
            consumer = self.consumer,
            request_id = self.request_id,
            trace_id = self.trace_id,
            "access"
        );
    }
}
