//! Passive outlier ejection: the request path counts consecutive failures (connect errors,
//! 5xx) and, past a service's threshold, asks this task to eject the instance. The task
//! ejects for `eject_for`, doubling on repeats (up to 16×), never more than half of a pool,
//! readmits when the time is up, and rebuilds the pool on every change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::config::PassiveSpec;
use crate::pool::{clock_ms, Directory, ServiceSlot};

/// The request path's handle: asks for a service's pool to be looked at.
#[derive(Clone, Debug)]
pub struct EjectionRequests {
    tx: mpsc::UnboundedSender<Arc<str>>,
}

impl EjectionRequests {
    /// Called when an instance of `service` crossed its failure threshold.
    pub fn request(&self, service: &Arc<str>) {
        // The task is gone only when shutting down.
        let _ = self.tx.send(service.clone());
    }
}

/// The services the ejector looks after: each slot and its `passive` (`None`: off).
type Watched = HashMap<Arc<str>, (Arc<ServiceSlot>, Option<PassiveSpec>)>;

/// The background service that ejects and readmits.
pub struct Ejector {
    directory: Arc<Directory>,
    /// Only this task touches it (the lock is never contended): services are added as the
    /// first ejection request for one arrives.
    services: std::sync::Mutex<Watched>,
    /// The `passive` of a service the config does not list.
    default: Option<PassiveSpec>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Arc<str>>>>,
}

impl Ejector {
    /// The ejector for the `listed` services (with their `passive`, `None` for off), every
    /// other service getting `default`, and the handle the gateway uses to reach it.
    pub fn new(
        directory: Arc<Directory>,
        listed: Vec<(Arc<ServiceSlot>, Option<PassiveSpec>)>,
        default: Option<PassiveSpec>,
    ) -> (Self, EjectionRequests) {
        let (tx, rx) = mpsc::unbounded_channel();
        let services = listed
            .into_iter()
            .map(|(slot, spec)| (Arc::<str>::from(slot.name()), (slot, spec)))
            .collect();
        (
            Self {
                directory,
                services: std::sync::Mutex::new(services),
                default,
                rx: std::sync::Mutex::new(Some(rx)),
            },
            EjectionRequests { tx },
        )
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ejects the instances of `service` past the threshold, within the half-pool cap.
    fn consider(&self, service: &Arc<str>) -> bool {
        let mut watched = self.watched();
        let (slot, spec) = watched
            .entry(service.clone())
            .or_insert_with(|| (self.directory.slot(service), self.default.clone()));
        let Some(spec) = spec.as_ref() else {
            return false;
        };
        let service: &str = service;
        let pool = slot.load_full();
        let now = clock_ms();
        let total = pool.members().len();
        let mut ejected = pool.members().filter(|m| m.live.is_ejected(now)).count();
        let mut changed = false;
        for member in pool.members() {
            if member.live.is_ejected(now) || member.live.failures() < spec.consecutive_failures {
                continue;
            }
            if (ejected + 1) * 2 > total {
                tracing::warn!(
                    service,
                    instance = member.live.id(),
                    "not ejected: half of the pool is out already"
                );
                continue;
            }
            let duration = member.live.eject(now, spec.eject_for);
            self.directory
                .metrics()
                .outlier_ejections_total
                .with_label_values(&[service])
                .inc();
            ejected += 1;
            changed = true;
            tracing::warn!(
                service,
                instance = member.live.id(),
                failures = member.live.failures(),
                ejected_for = ?duration,
                "outlier ejected"
            );
        }
        changed
    }

    /// Readmits instances whose ejection ended; returns the soonest end still pending.
    fn readmit_due(&self) -> Option<u64> {
        let now = clock_ms();
        let mut next: Option<u64> = None;
        let watched = self.watched();
        for (name, (slot, _)) in watched.iter() {
            let pool = slot.load_full();
            let mut changed = false;
            for member in pool.members() {
                let until = member.live.ejected_until_ms();
                if until == 0 {
                    continue;
                }
                if until <= now {
                    member.live.readmit();
                    changed = true;
                    tracing::info!(service = %name, instance = member.live.id(), "ejection over: back in rotation");
                } else {
                    next = Some(next.map_or(until, |n: u64| n.min(until)));
                }
            }
            if changed {
                self.directory.refresh(name);
            }
        }
        next
    }
}

#[async_trait]
impl BackgroundService for Ejector {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut rx) = rx else { return };
        loop {
            let next = self.readmit_due();
            let wait = next.map_or(Duration::from_secs(3600), |until| {
                Duration::from_millis(until.saturating_sub(clock_ms()).max(1))
            });
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                service = rx.recv() => {
                    let Some(service) = service else { return };
                    if self.consider(&service) {
                        self.directory.refresh(&service);
                    }
                }
            }
        }
    }
}
