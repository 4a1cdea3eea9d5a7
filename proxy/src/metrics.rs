//! The Prometheus metric families (SPEC §7), registered once in a private registry and
//! passed down to whoever records into them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Request-duration buckets in seconds: a small fixed set from 0.5 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric family the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_requests_in_flight: IntGaugeVec,
    pub upstream_picks_total: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub pool_instances: IntGaugeVec,
    pub pool_swaps_total: IntCounterVec,
    pub registry_events_total: IntCounterVec,
    pub registry_decode_errors_total: IntCounterVec,
    pub registry_connected: IntGaugeVec,
    pub strategy_pick_duration_seconds: HistogramVec,
    pub strategy_fallbacks_total: IntCounterVec,
    pub strategy_reloads_total: IntCounterVec,
    pub health_checks_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    pub downstream_header_timeouts_total: IntCounter,
    pub fast_path_handoffs_total: IntCounterVec,
    pub filter_rejections_total: IntCounterVec,
    pub filter_store_errors_total: IntCounterVec,
    pub filter_mirrored_total: IntCounterVec,
    pub upstream_duration_seconds: HistogramVec,
    pub upstream_retries_total: IntCounterVec,
    pub request_bytes_total: IntCounterVec,
    pub response_bytes_total: IntCounterVec,
    pub outlier_ejections_total: IntCounterVec,
    pub downstream_connections_total: IntCounter,
    pub downstream_connections_open: IntGauge,
    pub config_last_reload_successful: IntGauge,
    pub tls_certificate_expiration_timestamp_seconds: IntGaugeVec,
    pub tls_handshakes_total: IntCounterVec,
    pub tls_sessions_resumed_total: IntCounter,
    pub config_last_reload_success_timestamp_seconds: IntGauge,
}

/// Pick-duration buckets in seconds: 50 ns to 1 ms.
const PICK_BUCKETS: &[f64] = &[
    5e-8, 1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3,
];

/// Registering a fixed, well-formed family into a fresh registry cannot fail; this is the one
/// place that turns the impossible error into a panic at start-up.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(c.clone()))
        .expect("metric families are registered once, with valid names");
    c
}

#[allow(clippy::expect_used)] // fixed, valid family names and labels: cannot fail
fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter family")
}

#[allow(clippy::expect_used)] // fixed, valid name: cannot fail
fn plain_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid counter")
}

#[allow(clippy::expect_used)] // fixed, valid name: cannot fail
fn plain_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid gauge")
}

#[allow(clippy::expect_used)] // fixed, valid family names and labels: cannot fail
fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge family")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        #[allow(clippy::expect_used)] // fixed, valid family: cannot fail
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_request_duration_seconds",
                "Time from request start to the end of the response, by route and service.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "service"],
        )
        .expect("valid histogram family");
        #[allow(clippy::expect_used)] // fixed, valid family: cannot fail
        let pick_duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_strategy_pick_duration_seconds",
                "Time of one strategy pick, sampled (one pick in 64 per worker thread).",
            )
            .buckets(PICK_BUCKETS.to_vec()),
            &["strategy"],
        )
        .expect("valid histogram family");
        Self {
            requests_total: register(
                &registry,
                counter(
                    "sluice_requests_total",
                    "Requests answered, by route, service and status code.",
                    &["route", "service", "status"],
                ),
            ),
            request_duration_seconds: register(&registry, request_duration_seconds),
            upstream_requests_in_flight: register(
                &registry,
                gauge(
                    "sluice_upstream_requests_in_flight",
                    "Requests in flight to each upstream instance.",
                    &["service", "instance_id"],
                ),
            ),
            upstream_picks_total: register(
                &registry,
                counter(
                    "sluice_upstream_picks_total",
                    "Times each instance was picked by the strategy.",
                    &["service", "instance_id"],
                ),
            ),
            upstream_healthy: register(
                &registry,
                gauge(
                    "sluice_upstream_healthy",
                    "1 while neither active health checks nor passive ejection hold the instance out of rotation, else 0.",
                    &["service", "instance_id"],
                ),
            ),
            pool_instances: register(
                &registry,
                gauge(
                    "sluice_pool_instances",
                    "Instances in each service's pool, by eligibility.",
                    &["service", "state"],
                ),
            ),
            pool_swaps_total: register(
                &registry,
                counter(
                    "sluice_pool_swaps_total",
                    "Pool snapshots swapped in, by service.",
                    &["service"],
                ),
            ),
            registry_events_total: register(
                &registry,
                counter(
                    "sluice_registry_events_total",
                    "Registry updates applied, by source and kind (reset, upsert, remove).",
                    &["source", "kind"],
                ),
            ),
            registry_decode_errors_total: register(
                &registry,
                counter(
                    "sluice_registry_decode_errors_total",
                    "Registry values skipped because they could not be decoded.",
                    &["source"],
                ),
            ),
            registry_connected: register(
                &registry,
                gauge(
                    "sluice_registry_connected",
                    "1 while the registry source is connected and synced, else 0.",
                    &["source"],
                ),
            ),
            strategy_pick_duration_seconds: register(&registry, pick_duration),
            strategy_fallbacks_total: register(
                &registry,
                counter(
                    "sluice_strategy_fallbacks_total",
                    "Requests served by native round-robin instead of the strategy, by reason.",
                    &["strategy", "reason"],
                ),
            ),
            health_checks_total: register(
                &registry,
                counter(
                    "sluice_health_checks_total",
                    "Active health checks, by service and result (pass, fail).",
                    &["service", "result"],
                ),
            ),
            config_reloads_total: register(
                &registry,
                counter(
                    "sluice_config_reloads_total",
                    "Config reloads (SIGHUP, POST /admin/reload), by result (ok, error).",
                    &["result"],
                ),
            ),
            downstream_header_timeouts_total: register(
                &registry,
                #[allow(clippy::expect_used)] // fixed, valid name: cannot fail
                IntCounter::new(
                    "sluice_downstream_header_timeouts_total",
                    "Connections answered 408: the request header was not complete within proxy.header_timeout.",
                )
                .expect("valid counter"),
            ),
            fast_path_handoffs_total: register(
                &registry,
                counter(
                    "sluice_fast_path_handoffs_total",
                    "Requests the fast path left to pingora's proxy, by reason.",
                    &["reason"],
                ),
            ),
            filter_rejections_total: register(
                &registry,
                counter(
                    "sluice_filter_rejections_total",
                    "Requests a filter answered itself, by route, filter and status.",
                    &["route", "filter", "status"],
                ),
            ),
            filter_store_errors_total: register(
                &registry,
                counter(
                    "sluice_filter_store_errors_total",
                    "Requests whose filter store (a rate limit's Redis) failed, timed out or was down; on_error decided them.",
                    &["filter"],
                ),
            ),
            upstream_duration_seconds: register(
                &registry,
                #[allow(clippy::expect_used)] // fixed, valid family: cannot fail
                HistogramVec::new(
                    HistogramOpts::new(
                        "sluice_upstream_duration_seconds",
                        "From the last try's start to the upstream's response head, by route and service.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["route", "service"],
                )
                .expect("valid histogram family"),
            ),
            upstream_retries_total: register(
                &registry,
                counter(
                    "sluice_upstream_retries_total",
                    "Tries after a failed one (another instance, or a fresh connection to the same), by route and service.",
                    &["route", "service"],
                ),
            ),
            request_bytes_total: register(
                &registry,
                counter(
                    "sluice_request_bytes_total",
                    "Request body bytes received from clients, by route and service.",
                    &["route", "service"],
                ),
            ),
            response_bytes_total: register(
                &registry,
                counter(
                    "sluice_response_bytes_total",
                    "Response body bytes sent to clients, by route and service.",
                    &["route", "service"],
                ),
            ),
            outlier_ejections_total: register(
                &registry,
                counter(
                    "sluice_outlier_ejections_total",
                    "Instances taken out of rotation by passive outlier ejection, by service.",
                    &["service"],
                ),
            ),
            downstream_connections_total: register(
                &registry,
                plain_counter(
                    "sluice_downstream_connections_total",
                    "Client connections accepted by the proxy listeners.",
                ),
            ),
            downstream_connections_open: register(
                &registry,
                plain_gauge(
                    "sluice_downstream_connections_open",
                    "Client connections of the proxy listeners open now.",
                ),
            ),
            tls_certificate_expiration_timestamp_seconds: register(
                &registry,
                gauge(
                    "sluice_tls_certificate_expiration_timestamp_seconds",
                    "The notAfter of each [proxy.tls] certificate as Unix time, by file and the names it serves.",
                    &["file", "names"],
                ),
            ),
            tls_handshakes_total: register(
                &registry,
                counter(
                    "sluice_tls_handshakes_total",
                    "TLS handshakes of the proxy's TLS listeners, by outcome: completed (full or resumed) or failed (including timed out).",
                    &["outcome"],
                ),
            ),
            tls_sessions_resumed_total: register(
                &registry,
                plain_counter(
                    "sluice_tls_sessions_resumed_total",
                    "TLS handshakes that resumed a session (a valid ticket, or a session id still cached) instead of a full handshake.",
                ),
            ),
            config_last_reload_successful: register(
                &registry,
                plain_gauge(
                    "sluice_config_last_reload_successful",
                    "1 when the last config load or reload succeeded, 0 when it was refused (the previous config keeps serving).",
                ),
            ),
            config_last_reload_success_timestamp_seconds: register(
                &registry,
                plain_gauge(
                    "sluice_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config load or reload.",
                ),
            ),
            filter_mirrored_total: register(
                &registry,
                counter(
                    "sluice_filter_mirrored_total",
                    "Request copies of a mirror filter, by how they went: sent (answered), failed (connect, I/O or timeout), skipped (in-flight cap, body too large or chunked, no plain-http instance).",
                    &["filter", "result"],
                ),
            ),
            strategy_reloads_total: register(
                &registry,
                counter(
                    "sluice_strategy_reloads_total",
                    "Strategy module reloads, by result (ok, error).",
                    &["strategy", "result"],
                ),
            ),
            registry,
        }
        .with_process_and_build_info()
    }

    /// `sluice_build_info{version} 1` and the standard `process_*` families (CPU seconds,
    /// open and max fds, resident memory, start time), read from `/proc` on each scrape.
    fn with_process_and_build_info(self) -> Self {
        #[allow(clippy::expect_used)] // fixed, valid name and label: cannot fail
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "sluice_build_info",
                "1, labelled with the running build's version.",
            ),
            &["version"],
        )
        .expect("valid gauge family");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        register(&self.registry, build_info);
        let process = prometheus::process_collector::ProcessCollector::for_self();
        #[allow(clippy::expect_used)] // registered once into a fresh registry: cannot fail
        self.registry
            .register(Box::new(process))
            .expect("the process collector is registered once");
        self
    }

    /// The registry, for collectors added elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a family-level error would be a bug.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }
}
