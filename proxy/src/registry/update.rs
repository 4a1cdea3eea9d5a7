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
    /// Monotonic per source (etcd mod revision; a counter for the others).
    pub revision: i64,
    pub update: Update,
}

/// Where a source sends its updates.
#[derive(Debug, Clone)]
pub struct UpdateSink {
    source: Arc<str>,
    tx: mpsc::Sender<SourceEvent>,
}

impl UpdateSink {
    pub fn new(source: &str, tx: mpsc::Sender<SourceEvent>) -> Self {
        Self {
            source: source.into(),
            tx,
        }
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
