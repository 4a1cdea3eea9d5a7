//! Per-route metric handles resolved once, so recording a request costs atomics, not label
//! look-ups.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec};

use crate::metrics::Metrics;

/// Status codes with a cached counter; anything above goes through the family.
const CACHED_STATUSES: usize = 600;

/// The metric handles of one route and one of its services: requests by status, durations
/// (whole and upstream), retries and body bytes each way.
pub(crate) struct RouteMetrics {
    route: String,
    service: String,
    requests: IntCounterVec,
    rejections: IntCounterVec,
    by_status: Box<[OnceLock<IntCounter>]>,
    duration: Histogram,
    upstream_duration: Histogram,
    retries: IntCounter,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
}

/// The body bytes of one request, each way.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bytes {
    /// Request body bytes received from the client.
    pub(crate) received: u64,
    /// Response body bytes sent to the client.
    pub(crate) sent: u64,
}

impl RouteMetrics {
    pub(crate) fn new(metrics: &Metrics, route: &str, service: &str) -> Self {
        Self {
            route: route.to_string(),
            service: service.to_string(),
            requests: metrics.requests_total.clone(),
            rejections: metrics.filter_rejections_total.clone(),
            by_status: (0..CACHED_STATUSES).map(|_| OnceLock::new()).collect(),
            duration: metrics
                .request_duration_seconds
                .with_label_values(&[route, service]),
            upstream_duration: metrics
                .upstream_duration_seconds
                .with_label_values(&[route, service]),
            retries: metrics
                .upstream_retries_total
                .with_label_values(&[route, service]),
            request_bytes: metrics
                .request_bytes_total
                .with_label_values(&[route, service]),
            response_bytes: metrics
                .response_bytes_total
                .with_label_values(&[route, service]),
        }
    }

    /// Counts a try after a failed one.
    pub(crate) fn retried(&self) {
        self.retries.inc();
    }

    /// Counts one answered request: its status, duration, the upstream's part of it (when a
    /// try got a response head) and the body bytes each way.
    pub(crate) fn record(
        &self,
        status: u16,
        elapsed: Duration,
        upstream: Option<Duration>,
        bytes: Bytes,
    ) {
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream_duration.observe(upstream.as_secs_f64());
        }
        if bytes.received > 0 {
            self.request_bytes.inc_by(bytes.received);
        }
        if bytes.sent > 0 {
            self.response_bytes.inc_by(bytes.sent);
        }
        let code = usize::from(status);
        let counter = match self.by_status.get(code) {
            Some(cell) => cell.get_or_init(|| self.counter(status)),
            None => &self.counter(status),
        };
        counter.inc();
    }

    /// Counts a request the filter `filter` answered with `status`.
    pub(crate) fn rejected(&self, filter: &str, status: u16) {
        self.rejections
            .with_label_values(&[&self.route, filter, &status.to_string()])
            .inc();
    }

    fn counter(&self, status: u16) -> IntCounter {
        self.requests
            .with_label_values(&[&self.route, &self.service, &status.to_string()])
    }
}
