//! Active health checks: per service with a `health_check`, every member of the current pool
//! is probed each interval (so checks follow instances as they come and go); results fold
//! into each instance's live state (which survives swaps), and a change of eligibility
//! rebuilds the pool.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;

use super::{instance_status, ProbeTls};
use crate::config::HealthCheckSpec;
use crate::metrics::Metrics;
use crate::pool::{Directory, Health, ServiceSlot};
use crate::registry::Scheme;

/// The background service running every configured health check.
pub struct HealthChecks {
    directory: Arc<Directory>,
    services: Vec<CheckedService>,
}

/// One service under active checks.
#[derive(Clone)]
pub struct CheckedService {
    pub slot: Arc<ServiceSlot>,
    pub spec: HealthCheckSpec,
    /// How its `https` instances are probed (its `upstream_tls`); `None`: they are not.
    pub tls: Option<ProbeTls>,
    /// The name `https` instances are verified as (`upstream_tls.server_name`), else each
    /// instance's host.
    pub server_name: Option<String>,
}

impl HealthChecks {
    pub fn new(directory: Arc<Directory>, services: Vec<CheckedService>) -> Self {
        Self {
            directory,
            services,
        }
    }
}

struct Counters {
    pass: IntCounter,
    fail: IntCounter,
}

impl Counters {
    fn new(metrics: &Metrics, service: &str) -> Self {
        let c = |result: &str| {
            metrics
                .health_checks_total
                .with_label_values(&[service, result])
        };
        Self {
            pass: c("pass"),
            fail: c("fail"),
        }
    }
}

async fn check_service(
    directory: Arc<Directory>,
    service: CheckedService,
    mut shutdown: ShutdownWatch,
) {
    let CheckedService {
        slot,
        spec,
        tls,
        server_name,
    } = service;
    let counters = Counters::new(directory.metrics(), slot.name());
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let pool = slot.load_full();
        let probes = pool
            .members()
            // HTTP/1.1 GETs, over TLS for `https` instances. gRPC servers commonly refuse
            // HTTP/1.1 (and answer any path 200 with the status in trailers): `grpc` and
            // `grpcs` instances are left to passive ejection rather than marked down by a
            // wrong probe.
            .filter(|m| match m.spec.scheme {
                Scheme::Http => true,
                Scheme::Https => tls.is_some(),
                Scheme::Grpc | Scheme::Grpcs => false,
            })
            .filter_map(|m| m.socket.map(|socket| (m, socket)))
            .map(|(member, socket)| {
                let live = member.live.clone();
                let timeout = spec.timeout;
                let path = spec.path.as_str();
                let (host, tls) = match member.spec.scheme {
                    Scheme::Https => (
                        server_name
                            .clone()
                            .unwrap_or_else(|| member.spec.host().to_string()),
                        tls.as_ref(),
                    ),
                    _ => (socket.to_string(), None),
                };
                async move {
                    let status = instance_status(socket, &host, path, tls, timeout).await;
                    let passed = matches!(status, Ok(code) if (200..400).contains(&code));
                    (live, passed)
                }
            });
        let results = join_all(probes).await;
        let mut changed = false;
        for (live, passed) in results {
            if passed {
                &counters.pass
            } else {
                &counters.fail
            }
            .inc();
            if let Some(now) = live.observe_check(passed, spec.healthy_after, spec.unhealthy_after)
            {
                changed = true;
                let level_ok = now == Health::Healthy;
                if level_ok {
                    tracing::info!(
                        service = slot.name(),
                        instance = live.id(),
                        "health check passing: back in rotation"
                    );
                } else {
                    tracing::warn!(
                        service = slot.name(),
                        instance = live.id(),
                        "health check failing: out of rotation"
                    );
                }
            }
        }
        if changed {
            directory.refresh(slot.name());
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        let tasks: Vec<_> = self
            .services
            .iter()
            .map(|service| {
                tokio::spawn(check_service(
                    self.directory.clone(),
                    service.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
