//! Hot reload of user strategies: each `[strategies.*]` file is polled; a changed file, once
//! stable for one poll, is compiled and probed off the request path and swapped in, or refused
//! while the running version keeps serving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use arc_swap::ArcSwap;

use super::set::StrategySet;
use super::wasm::WasmStrategy;

const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The background service that watches strategy files.
pub struct StrategyWatch {
    strategies: Arc<ArcSwap<StrategySet>>,
}

impl StrategyWatch {
    pub fn new(strategies: Arc<ArcSwap<StrategySet>>) -> Self {
        Self { strategies }
    }
}

/// Content hashes: what was last applied, and what the previous poll saw.
struct FileState {
    applied: u64,
    pending: Option<u64>,
}

#[async_trait]
impl BackgroundService for StrategyWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Per file: the content last applied, and the content seen on the previous poll.
        let mut files: HashMap<PathBuf, FileState> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            // The set serving now: a config reload may have replaced it.
            let set = self.strategies.load_full();
            for watched in set.watched() {
                let Ok(content) = tokio::fs::read(&watched.path).await else {
                    continue; // a missing file keeps the running version
                };
                let hash = super::set::content_hash(&content);
                // Starting point: the bytes the strategy was loaded from (not the first poll,
                // which may already see a newer file).
                let file = files
                    .entry(watched.path.clone())
                    .or_insert_with(|| FileState {
                        applied: watched.loaded,
                        pending: None,
                    });
                if file.applied == hash {
                    file.pending = None;
                    continue;
                }
                if file.pending != Some(hash) {
                    file.pending = Some(hash); // wait one poll: the write may be in progress
                    continue;
                }
                let strategy: Arc<WasmStrategy> = watched.strategy.clone();
                let source = watched.path.display().to_string();
                let config = watched.config.clone();
                let bytes = content.clone();
                // Compiling is CPU work: keep it off the async threads.
                let result =
                    tokio::task::spawn_blocking(move || strategy.reload(source, &bytes, &config))
                        .await;
                if let Err(e) = result {
                    tracing::error!("strategy reload task failed: {e}");
                }
                // Applied or refused, this content has had its chance; wait for the next change.
                file.applied = hash;
                file.pending = None;
            }
        }
    }
}
