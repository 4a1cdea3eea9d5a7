//! An in-process registry: for `sluice demo`, embedding, and tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use super::{InstanceSpec, RegistrySource, Update, UpdateSink};

/// A registry held in memory; clones share the same state.
#[derive(Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    changes: broadcast::Sender<(i64, Update)>,
}

#[derive(Default)]
struct State {
    revision: i64,
    services: BTreeMap<String, BTreeMap<String, InstanceSpec>>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changes,
            }),
        }
    }

    fn change(&self, apply: impl FnOnce(&mut State) -> Update) {
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state.revision += 1;
        let update = apply(&mut state);
        // No subscriber yet is fine: `run` starts with a full reset.
        let _ = self.inner.changes.send((state.revision, update));
    }

    /// Adds or replaces an instance.
    pub fn upsert(&self, service: &str, instance: InstanceSpec) {
        self.change(|state| {
            state
                .services
                .entry(service.to_string())
                .or_default()
                .insert(instance.id.clone(), instance.clone());
            Update::Upsert {
                service: service.to_string(),
                instance,
            }
        });
    }

    /// Removes an instance.
    pub fn remove(&self, service: &str, id: &str) {
        self.change(|state| {
            if let Some(instances) = state.services.get_mut(service) {
                instances.remove(id);
            }
            Update::Remove {
                service: service.to_string(),
                id: id.to_string(),
            }
        });
    }

    fn snapshot(&self) -> (i64, Update) {
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let services = state
            .services
            .iter()
            .map(|(name, instances)| (name.clone(), instances.values().cloned().collect()))
            .collect();
        (state.revision, Update::Reset { services })
    }
}

#[async_trait]
impl RegistrySource for MemoryRegistry {
    fn name(&self) -> &str {
        "memory"
    }

    async fn run(&self, sink: UpdateSink, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.inner.changes.subscribe();
        let (mut last, reset) = self.snapshot();
        if !sink.send(last, reset).await {
            return;
        }
        sink.set_connected(true);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                change = changes.recv() => match change {
                    Ok((revision, update)) if revision > last => {
                        last = revision;
                        if !sink.send(revision, update).await { return; }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (revision, reset) = self.snapshot();
                        last = revision;
                        if !sink.send(revision, reset).await { return; }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
