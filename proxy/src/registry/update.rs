//! The one shape every registry source speaks: updates stamped with the source's revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::InstanceSpec;

/// A change to the set of known instances.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Everything the source knows now, replacing all it said before (initial list, re-list).
    Reset {
        services: BTreeMap<String, Vec<InstanceSpec>>,
    },
    /// An instance appeared or changed.
    Upsert {
        service: String,
        instance: InstanceSpec,
    },
    /// An instance left.
    Remove { service: String, id: String },
}

impl Update {
    /// Label for `sluice_registry_events_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Update::Reset { .. } => "reset",
            Update::Upsert { .. } => "upsert",
            Update::Remove { .. } => "remove",
        }
    }
}

/// An update with where and when it came from.
#[derive(Debug, Clone)]
pub struct SourceEvent {
    /// The source's name, e.g. `file` or `etcd`.
    pub source: Arc<str>,
    /// Per source: the etcd revision (several events may share one), a counter for the others.
    /// Updates at or below the source's last reset are stale and ignored.
    pub revision: i64,
    pub update: Update,
}

/// Where a source sends its updates, and reports its health.
#[derive(Debug, Clone)]
pub struct UpdateSink {
    source: Arc<str>,
    tx: mpsc::Sender<SourceEvent>,
    connected: prometheus::IntGauge,
    decode_errors: prometheus::IntCounter,
}

impl UpdateSink {
    /// A sink for `source`, reporting into `sluice_registry_connected` and
    /// `sluice_registry_decode_errors_total`.
    pub fn new(
        source: &str,
        tx: mpsc::Sender<SourceEvent>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        Self {
            source: source.into(),
            tx,
            connected: metrics.registry_connected.with_label_values(&[source]),
            decode_errors: metrics
                .registry_decode_errors_total
                .with_label_values(&[source]),
        }
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Reports whether the source is connected and synced.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Whether the source last reported itself connected.
    pub fn is_connected(&self) -> bool {
        self.connected.get() == 1
    }

    /// Counts one registry value that could not be decoded.
    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    /// Sends one update; `false` when the receiver is gone (shutting down).
    pub async fn send(&self, revision: i64, update: Update) -> bool {
        self.tx
            .send(SourceEvent {
                source: self.source.clone(),
                revision,
                update,
            })
            .await
            .is_ok()
    }
}

/// A registry source: runs until shutdown, sending updates to the sink.
#[async_trait]
pub trait RegistrySource: Send + Sync {
    /// The source label used in metrics and logs.
    fn name(&self) -> &str;
    /// Watches the registry until `shutdown` turns true.
    async fn run(&self, sink: UpdateSink, shutdown: watch::Receiver<bool>);
}
