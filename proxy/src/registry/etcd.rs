//! The etcd source: a consistent range read of every watched prefix at one revision, then
//! watches from that revision + 1. On a compaction or a broken stream: reconnect with capped
//! exponential backoff, read again, and send the whole state as one reset (the directory
//! applies only the difference). While etcd is unreachable nothing is sent, so every pool
//! keeps its last known instances.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions, WatchStream};
use tokio::sync::watch;

use super::formats::{decode, ValueFormat};
use super::{InstanceSpec, RegistrySource, Update, UpdateSink};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One prefix to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedPrefix {
    pub prefix: String,
    /// `None`: the service is the first path segment under the prefix (`<prefix><service>/<id>`).
    /// `Some(name)`: every key under the prefix is an instance of `name` (a `key_prefix`).
    pub service: Option<String>,
}

/// Connection settings and what to watch.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    pub connect_timeout: Duration,
    pub prefixes: Vec<WatchedPrefix>,
    /// Per-service value format; `auto` for the others.
    pub formats: HashMap<String, ValueFormat>,
    /// TLS to etcd.
    pub tls: Option<EtcdTlsPem>,
}

/// TLS material for etcd, read into memory (PEM).
#[derive(Debug, Clone)]
pub struct EtcdTlsPem {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    pub server_name: Option<String>,
}

impl EtcdTlsPem {
    /// Reads the PEM files of `tls`; an error names the file.
    pub fn read(tls: &crate::config::EtcdTls) -> Result<Self, String> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(Self {
            ca: read(&tls.ca)?,
            identity: match &tls.identity {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
            server_name: tls.server_name.clone(),
        })
    }

    /// The client TLS options.
    pub fn options(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        tls
    }
}

/// Watches etcd.
pub struct EtcdSource {
    settings: EtcdSettings,
}

impl EtcdSource {
    pub fn new(settings: EtcdSettings) -> Self {
        Self { settings }
    }
}

/// Why one session with etcd ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("watch from revision {watched} was compacted (compact revision {compacted})")]
    Compacted { watched: i64, compacted: i64 },
    #[error("watch canceled by the server: {0}")]
    Canceled(String),
    #[error("watch stream ended")]
    StreamEnded,
}

/// What the source knows, by key, so an event can be turned into upserts and removes.
#[derive(Default)]
struct KeyState {
    /// key -> (mod revision, service, instances it contributed)
    keys: HashMap<String, (i64, String, Vec<InstanceSpec>)>,
    /// keys whose current value failed to decode (logged once per key)
    bad: HashSet<String>,
}

impl EtcdSource {
    /// Service and instance id of `key` under `watched`, if it is an instance key.
    fn locate(watched: &WatchedPrefix, key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix(watched.prefix.as_str())?;
        if rest.is_empty() {
            return None;
        }
        match &watched.service {
            Some(service) => Some((service.clone(), rest.trim_matches('/').to_string())),
            None => match rest.split_once('/') {
                Some((service, id)) if !service.is_empty() && !id.is_empty() => {
                    Some((service.to_string(), id.to_string()))
                }
                Some(_) => None,
                // A key directly under the prefix: one instance whose id is the key.
                None => Some((rest.to_string(), key.to_string())),
            },
        }
    }

    fn format_of(&self, service: &str) -> ValueFormat {
        self.settings
            .formats
            .get(service)
            .copied()
            .unwrap_or_default()
    }

    /// Decodes one value; a failure is logged once for its key, counted, and yields nothing.
    fn decode_key(
        &self,
        state: &mut KeyState,
        sink: &UpdateSink,
        key: &str,
        service: &str,
        id: &str,
        value: &[u8],
    ) -> Vec<InstanceSpec> {
        match decode(self.format_of(service), id, value) {
            Ok(instances) => {
                state.bad.remove(key);
                instances
            }
            Err(e) => {
                sink.decode_error();
                if state.bad.insert(key.to_string()) {
                    tracing::warn!(source = sink.source(), key, "registry value skipped: {e}");
                }
                Vec::new()
            }
        }
    }

    fn watched_for<'a>(&'a self, key: &str) -> Option<&'a WatchedPrefix> {
        // The longest matching prefix: a service's key_prefix may sit under the main prefix.
        self.settings
            .prefixes
            .iter()
            .filter(|w| key.starts_with(w.prefix.as_str()))
            .max_by_key(|w| w.prefix.len())
    }

    async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.settings.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let Some((user, password)) = &self.settings.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.settings.tls {
            options = options.with_tls(tls.options());
        }
        Client::connect(&self.settings.endpoints, Some(options)).await
    }

    /// Reads every prefix at one revision; returns the revision, the state and the reset.
    async fn list(
        &self,
        client: &mut Client,
        sink: &UpdateSink,
    ) -> Result<(i64, KeyState, Update), SessionError> {
        let mut state = KeyState::default();
        let mut revision = 0i64;
        let mut services: BTreeMap<String, Vec<InstanceSpec>> = BTreeMap::new();
        for watched in &self.settings.prefixes {
            let mut options = GetOptions::new().with_prefix();
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = client.get(watched.prefix.as_str(), Some(options)).await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                let Ok(key) = kv.key_str() else { continue };
                // Keys of a nested key_prefix belong to that prefix, not to this one.
                if self.watched_for(key) != Some(watched) {
                    continue;
                }
                let Some((service, id)) = Self::locate(watched, key) else {
                    continue;
                };
                let instances = self.decode_key(&mut state, sink, key, &service, &id, kv.value());
                services
                    .entry(service.clone())
                    .or_default()
                    .extend(instances.iter().cloned());
                state
                    .keys
                    .insert(key.to_string(), (kv.mod_revision(), service, instances));
            }
        }
        // Services known only through their key_prefix still get listed (possibly empty).
        for watched in &self.settings.prefixes {
            if let Some(service) = &watched.service {
                services.entry(service.clone()).or_default();
            }
        }
        Ok((revision, state, Update::Reset { services }))
    }

    /// One session: connect, list, watch until something breaks.
    async fn session(
        &self,
        sink: &UpdateSink,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let mut client = self.connect().await?;
        let (revision, mut state, reset) = self.list(&mut client, sink).await?;
        if !sink.send(revision, reset).await {
            return Ok(());
        }
        sink.set_connected(true);
        tracing::info!(
            source = sink.source(),
            revision,
            keys = state.keys.len(),
            "etcd synced"
        );
        let mut streams: Vec<WatchStream> = Vec::with_capacity(self.settings.prefixes.len());
        for watched in &self.settings.prefixes {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            streams.push(client.watch(watched.prefix.as_str(), Some(options)).await?);
        }
        loop {
            let next = futures_select(&mut streams);
            let response = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                r = next => r,
            };
            let response = response?.ok_or(SessionError::StreamEnded)?;
            if response.compact_revision() > 0 {
                return Err(SessionError::Compacted {
                    watched: revision + 1,
                    compacted: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(SessionError::Canceled(response.cancel_reason().to_string()));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                let Some(watched) = self.watched_for(key) else {
                    continue;
                };
                let Some((service, id)) = Self::locate(watched, key) else {
                    continue;
                };
                let event_revision = kv.mod_revision();
                if let Some((seen, _, _)) = state.keys.get(key) {
                    if event_revision <= *seen {
                        continue; // already applied (a duplicate after a reconnect)
                    }
                }
                let new = match event.event_type() {
                    EventType::Put => {
                        self.decode_key(&mut state, sink, key, &service, &id, kv.value())
                    }
                    EventType::Delete => {
                        state.bad.remove(key);
                        Vec::new()
                    }
                };
                let old = state
                    .keys
                    .insert(
                        key.to_string(),
                        (event_revision, service.clone(), new.clone()),
                    )
                    .map(|(_, _, old)| old)
                    .unwrap_or_default();
                if matches!(event.event_type(), EventType::Delete) {
                    state.keys.remove(key);
                }
                for gone in old.iter().filter(|o| !new.iter().any(|n| n.id == o.id)) {
                    let update = Update::Remove {
                        service: service.clone(),
                        id: gone.id.clone(),
                    };
                    if !sink.send(event_revision, update).await {
                        return Ok(());
                    }
                }
                for instance in new {
                    let update = Update::Upsert {
                        service: service.clone(),
                        instance,
                    };
                    if !sink.send(event_revision, update).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The next message of whichever watch stream has one.
async fn futures_select(
    streams: &mut [WatchStream],
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    let futures = streams.iter_mut().map(|s| Box::pin(s.message()));
    let (result, _, _) = futures_util::future::select_all(futures).await;
    result
}

#[async_trait]
impl RegistrySource for EtcdSource {
    fn name(&self) -> &str {
        "etcd"
    }

    async fn run(&self, sink: UpdateSink, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_START;
        loop {
            let result = self.session(&sink, &mut shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            sink.set_connected(false);
            match result {
                Ok(()) => return, // shutdown, or the receiver is gone
                Err(e) => tracing::warn!(
                    source = sink.source(),
                    retry_in = ?backoff,
                    "etcd session ended, last known pools keep serving: {e}"
                ),
            }
            let jitter = Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64 / 4));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // A session that got as far as a sync resets the backoff.
            if sink.is_connected() {
                backoff = BACKOFF_START;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_service_and_id() {
        let main = WatchedPrefix {
            prefix: "/services/".into(),
            service: None,
        };
        assert_eq!(
            EtcdSource::locate(&main, "/services/user-svc/instance-001"),
            Some(("user-svc".into(), "instance-001".into()))
        );
        assert_eq!(
            EtcdSource::locate(&main, "/services/user"),
            Some(("user".into(), "/services/user".into()))
        );
        assert_eq!(EtcdSource::locate(&main, "/services/"), None);
        assert_eq!(EtcdSource::locate(&main, "/services/x/"), None);
        let own = WatchedPrefix {
            prefix: "/microservices/user-svc/".into(),
            service: Some("user-svc".into()),
        };
        assert_eq!(
            EtcdSource::locate(&own, "/microservices/user-svc/a1b2"),
            Some(("user-svc".into(), "a1b2".into()))
        );
    }
}
