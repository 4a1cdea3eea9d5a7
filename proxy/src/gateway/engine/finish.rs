//! Step 4 of a request: the metrics and the access line — one writer
//! for both paths.

use std::time::Instant;

use super::{Engine, RequestRecord};
use crate::gateway::access_log::{AccessLine, Via};
use crate::gateway::route_metrics::Bytes;

/// The request as the access log names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLine<'a> {
    pub(crate) method: &'a str,
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
}

impl Engine {
    /// Records the request that ended at `now` with the record's status, error and bytes:
    /// its route's metrics, the access line; the last try's in-flight
    /// count ends here.
    pub(crate) fn finish(
        &self,
        record: &mut RequestRecord,
        line: RequestLine<'_>,
        via: Via,
        now: Instant,
    ) {
        let elapsed = now.saturating_duration_since(record.start);
        let access_log = match record.target() {
            Some((route, backend)) => {
                backend.metrics.record(
                    record.status,
                    elapsed,
                    record.upstream_elapsed,
                    Bytes {
                        received: record.bytes_received,
                        sent: record.bytes_sent,
                    },
                );
                route.access_log
            }
            None => self.router.load().access_log,
        };
        if access_log {
            let route = record.route.as_deref();
            AccessLine {
                method: line.method,
                host: line.host,
                path: line.path,
                status: record.status,
                route: route.map_or("", |r| r.spec.name.as_str()),
                service: record.target().map_or("", |(_, b)| b.service()),
                instance: record.instance_id(),
                via,
                upstream: record.upstream,
                upstream_elapsed: record.upstream_elapsed,
                total: elapsed,
                bytes_sent: record.bytes_sent,
                attempts: record.attempts,
                error: record.error,
                consumer: record
                    .filters
                    .as_ref()
                    .and_then(|s| s.consumer.as_deref())
                    .unwrap_or(""),
                request_id: record
                    .filters
                    .as_ref()
                    .map_or("", |s| s.request_id.as_str()),
                trace_id: record
                    .filters
                    .as_ref()
                    .and_then(|s| s.trace_id())
                    .unwrap_or(""),
            }
            .write();
        }
        record.attempt = None;
    }
}
