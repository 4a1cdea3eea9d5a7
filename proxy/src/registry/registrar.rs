//! The service-side registrar: registers one instance in etcd under a lease, keeps the lease
//! alive, re-grants and re-puts when the lease is lost (expiry after a partition, etcd
//! restart), optionally polls a health URL and writes `UP`/`DOWN` at once, and deregisters
//! (delete + revoke) on request, bounded by a timeout. Used by `sluice register` and by Rust
//! services that register themselves in-process.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, PutOptions};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::Status;
use crate::health::http_status;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Health polling of the registered instance.
#[derive(Debug, Clone)]
pub struct HealthProbe {
    /// `http://HOST:PORT/PATH`; 2xx and 3xx are healthy.
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

/// What to register, and where.
#[derive(Debug, Clone)]
pub struct RegistrationSpec {
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    /// TLS to etcd (`https://` endpoints).
    pub tls: Option<super::EtcdTlsPem>,
    /// Key prefix, ending in `/`.
    pub prefix: String,
    pub service: String,
    pub id: String,
    pub addr: String,
    pub ttl: Duration,
    pub weight: Option<u32>,
    pub version: Option<String>,
    pub zone: Option<String>,
    pub tags: Vec<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub health: Option<HealthProbe>,
}

impl RegistrationSpec {
    /// `<prefix><service>/<id>`.
    pub fn key(&self) -> String {
        format!("{}{}/{}", self.prefix, self.service, self.id)
    }

    /// The canonical JSON value with `status`.
    pub fn value(&self, status: Status) -> String {
        #[derive(Serialize)]
        struct Value<'a> {
            addr: &'a str,
            status: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            weight: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            version: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            zone: Option<&'a str>,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            tags: &'a [String],
            #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
            metadata: &'a serde_json::Map<String, serde_json::Value>,
        }
        serde_json::to_string(&Value {
            addr: &self.addr,
            status: status.as_str(),
            weight: self.weight,
            version: self.version.as_deref(),
            zone: self.zone.as_deref(),
            tags: &self.tags,
            metadata: &self.metadata,
        })
        .unwrap_or_default()
    }
}

/// Why the registrar failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("deregistration did not finish within {0:?}; the lease expires on its own")]
    DeregisterTimeout(Duration),
    #[error("the registrar task stopped")]
    Stopped,
}

/// A live registration; [`Registration::deregister`] ends it.
pub struct Registration {
    key: String,
    status: watch::Receiver<Option<Status>>,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<Result<(), RegistrarError>>,
}

impl Registration {
    /// Starts registering in the background; returns at once. The first put happens as soon
    /// as etcd answers (retried with backoff while it does not).
    pub fn start(spec: RegistrationSpec) -> Self {
        let key = spec.key();
        let (status_tx, status) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(spec, status_tx, stop_rx));
        Self {
            key,
            status,
            stop: Some(stop_tx),
            task,
        }
    }

    /// The key this registration writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until the instance is registered and returns the status written.
    pub async fn registered(&mut self) -> Result<Status, RegistrarError> {
        let status = self
            .status
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RegistrarError::Stopped)?;
        status.ok_or(RegistrarError::Stopped)
    }

    /// Deletes the key and revokes the lease, giving up after `timeout`.
    pub async fn deregister(mut self, timeout: Duration) -> Result<(), RegistrarError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(timeout);
        }
        match tokio::time::timeout(timeout + Duration::from_millis(500), &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RegistrarError::Stopped),
            Err(_) => {
                self.task.abort();
                Err(RegistrarError::DeregisterTimeout(timeout))
            }
        }
    }
}

struct Session {
    client: Client,
    lease: i64,
}

async fn connect(spec: &RegistrationSpec) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    if let Some((user, password)) = &spec.user {
        options = options.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &spec.tls {
        options = options.with_tls(tls.options());
    }
    Client::connect(&spec.endpoints, Some(options)).await
}

/// Grants a lease and puts the key under it.
async fn register(spec: &RegistrationSpec, status: Status) -> Result<Session, etcd_client::Error> {
    let mut client = connect(spec).await?;
    let ttl = i64::try_from(spec.ttl.as_secs().max(1)).unwrap_or(30);
    let lease = client.lease_grant(ttl, None).await?.id();
    client
        .put(
            spec.key(),
            spec.value(status),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    tracing::info!(key = %spec.key(), lease, status = status.as_str(), "registered");
    Ok(Session { client, lease })
}

/// Health state machine: flips after `healthy_after` / `unhealthy_after` results in a row.
struct Health {
    status: Status,
    streak: u32,
}

impl Health {
    fn observe(&mut self, probe: &HealthProbe, healthy: bool) -> bool {
        let agrees = (self.status == Status::Up) == healthy;
        if agrees {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if healthy {
            probe.healthy_after
        } else {
            probe.unhealthy_after
        };
        if self.streak >= needed.max(1) {
            self.status = if healthy { Status::Up } else { Status::Down };
            self.streak = 0;
            return true;
        }
        false
    }
}

async fn probe_once(probe: &HealthProbe) -> bool {
    match http_status(&probe.url, probe.timeout).await {
        Ok(code) => (200..400).contains(&code),
        Err(e) => {
            tracing::debug!(url = %probe.url, "health probe failed: {e}");
            false
        }
    }
}

async fn run(
    spec: RegistrationSpec,
    status_tx: watch::Sender<Option<Status>>,
    mut stop: oneshot::Receiver<Duration>,
) -> Result<(), RegistrarError> {
    // The first status: the first probe's answer, or UP without a probe.
    let mut health = Health {
        status: match &spec.health {
            Some(p) if !probe_once(p).await => Status::Down,
            _ => Status::Up,
        },
        streak: 0,
    };
    let mut backoff = BACKOFF_START;
    let mut session: Option<Session> = None;
    // The lease of the last registration: if stopped between sessions, it still has to go.
    let mut last_lease: Option<i64> = None;
    let keepalive_every = (spec.ttl / 3).max(Duration::from_millis(500));
    let probe_every = spec
        .health
        .as_ref()
        .map_or(Duration::from_secs(3600), |p| p.interval);
    let mut probe_tick = tokio::time::interval(probe_every);
    probe_tick.tick().await;
    loop {
        let Some(current) = session.as_mut() else {
            // (Re)register: a lost lease, an etcd restart, or the first time.
            let attempt = tokio::select! {
                timeout = &mut stop => return deregister_between_sessions(&spec, last_lease, timeout).await,
                r = register(&spec, health.status) => r,
            };
            match attempt {
                Ok(s) => {
                    last_lease = Some(s.lease);
                    session = Some(s);
                    backoff = BACKOFF_START;
                    let _ = status_tx.send(Some(health.status));
                }
                Err(e) => {
                    tracing::warn!(key = %spec.key(), retry_in = ?backoff, "cannot register: {e}");
                    tokio::select! {
                        timeout = &mut stop => return deregister_between_sessions(&spec, last_lease, timeout).await,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };
        let (mut keeper, mut responses) = match current.client.lease_keep_alive(current.lease).await
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(key = %spec.key(), "keep-alive stream failed: {e}");
                session = None;
                continue;
            }
        };
        let mut keepalive_tick = tokio::time::interval(keepalive_every);
        // Serve this lease until it is lost or we are told to stop.
        let lost = loop {
            tokio::select! {
                timeout = &mut stop => {
                    return deregister(&spec, current, timeout).await;
                }
                _ = keepalive_tick.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        break format!("keep-alive: {e}");
                    }
                }
                response = responses.message() => match response {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => break "lease expired".to_string(),
                    Ok(None) => break "keep-alive stream ended".to_string(),
                    Err(e) => break format!("keep-alive: {e}"),
                },
                _ = probe_tick.tick(), if spec.health.is_some() => {
                    let Some(probe) = &spec.health else { continue };
                    let healthy = probe_once(probe).await;
                    if health.observe(probe, healthy) {
                        tracing::info!(key = %spec.key(), status = health.status.as_str(), "health changed");
                        let options = PutOptions::new().with_lease(current.lease);
                        match current.client.put(spec.key(), spec.value(health.status), Some(options)).await {
                            Ok(_) => { let _ = status_tx.send(Some(health.status)); }
                            Err(e) => break format!("writing status: {e}"),
                        }
                    }
                }
            }
        };
        tracing::warn!(key = %spec.key(), "registration lost ({lost}); registering again");
        session = None;
    }
}

/// Stopped while not connected: nothing to do if nothing was ever registered; otherwise
/// reconnect and remove the key and its lease within the timeout.
async fn deregister_between_sessions(
    spec: &RegistrationSpec,
    last_lease: Option<i64>,
    timeout: Result<Duration, oneshot::error::RecvError>,
) -> Result<(), RegistrarError> {
    let Some(lease) = last_lease else {
        tracing::info!("stopping before the first registration; nothing to remove");
        return Ok(());
    };
    let timeout = timeout.unwrap_or(Duration::from_secs(5));
    let work = async {
        let client = connect(spec).await?;
        let mut session = Session { client, lease };
        session.client.delete(spec.key(), None).await?;
        // The lease may be gone already (expired while we were away): that is fine.
        if let Err(e) = session.client.lease_revoke(session.lease).await {
            tracing::debug!("revoking lease {lease}: {e}");
        }
        Ok::<_, etcd_client::Error>(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => {
            tracing::info!(key = %spec.key(), "deregistered: key deleted");
            Ok(())
        }
        Ok(Err(e)) => Err(RegistrarError::Etcd(e)),
        Err(_) => Err(RegistrarError::DeregisterTimeout(timeout)),
    }
}

async fn deregister(
    spec: &RegistrationSpec,
    session: &mut Session,
    timeout: Result<Duration, oneshot::error::RecvError>,
) -> Result<(), RegistrarError> {
    let timeout = timeout.unwrap_or(Duration::from_secs(5));
    let key = spec.key();
    let work = async {
        session.client.delete(key.as_str(), None).await?;
        session.client.lease_revoke(session.lease).await?;
        Ok::<_, etcd_client::Error>(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => {
            tracing::info!(key = %key, "deregistered: key deleted, lease revoked");
            Ok(())
        }
        Ok(Err(e)) => Err(RegistrarError::Etcd(e)),
        Err(_) => Err(RegistrarError::DeregisterTimeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RegistrationSpec {
        RegistrationSpec {
            endpoints: vec![],
            user: None,
            tls: None,
            prefix: "/services/".into(),
            service: "user-svc".into(),
            id: "i-1".into(),
            addr: "10.0.0.5:8080".into(),
            ttl: Duration::from_secs(30),
            weight: Some(50),
            version: Some("1.4.2".into()),
            zone: None,
            tags: vec!["canary".into()],
            metadata: Default::default(),
            health: None,
        }
    }

    #[test]
    fn key_and_value_are_canonical() {
        let s = spec();
        assert_eq!(s.key(), "/services/user-svc/i-1");
        let value = s.value(Status::Down);
        let decoded = crate::registry::decode_value("i-1", value.as_bytes()).unwrap();
        assert_eq!(decoded.addr, "10.0.0.5:8080");
        assert_eq!(decoded.status, Status::Down);
        assert_eq!(decoded.weight, 50);
        assert_eq!(decoded.tags, vec!["canary"]);
    }

    #[test]
    fn health_flips_after_thresholds() {
        let probe = HealthProbe {
            url: String::new(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        };
        let mut h = Health {
            status: Status::Up,
            streak: 0,
        };
        assert!(!h.observe(&probe, false));
        assert!(!h.observe(&probe, false));
        assert!(!h.observe(&probe, true), "a success resets the streak");
        assert!(!h.observe(&probe, false));
        assert!(!h.observe(&probe, false));
        assert!(h.observe(&probe, false));
        assert_eq!(h.status, Status::Down);
        assert!(!h.observe(&probe, true));
        assert!(h.observe(&probe, true));
        assert_eq!(h.status, Status::Up);
    }
}
