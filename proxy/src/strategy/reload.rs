//! Hot reload of user strategies: each `[strategies.*]` file is polled; a changed file, once
//! stable for one poll, is compiled and probed off the request path and swapped in, or refused
//! while the running version keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::set::StrategySet;
use super::wasm::WasmStrategy;

const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The background service that watches strategy files.
pub struct StrategyWatch {
    strategies: Arc<StrategySet>,
}

impl StrategyWatch {
    pub fn new(strategies: Arc<StrategySet>) -> Self {
        Self { strategies }
    }
}

struct FileState {
    strategy: Arc<WasmStrategy>,
    path: PathBuf,
    config: serde_json::Value,
    applied: Option<Vec<u8>>,
    pending: Option<Vec<u8>>,
}

#[async_trait]
impl BackgroundService for StrategyWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut files: Vec<FileState> = self
            .strategies
            .watched()
            .iter()
            .map(|w| FileState {
                strategy: w.strategy.clone(),
                path: w.path.clone(),
                config: w.config.clone(),
                applied: std::fs::read(&w.path).ok(),
                pending: None,
            })
            .collect();
        if files.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            for file in &mut files {
                let Ok(content) = tokio::fs::read(&file.path).await else {
                    continue; // a missing file keeps the running version; logged on reload only
                };
                if file.applied.as_ref() == Some(&content) {
                    file.pending = None;
                    continue;
                }
                if file.pending.as_ref() != Some(&content) {
                    file.pending = Some(content); // wait one poll: the write may be in progress
                    continue;
                }
                let strategy = file.strategy.clone();
                let source = file.path.display().to_string();
                let config = file.config.clone();
                let bytes = content.clone();
                // Compiling is CPU work: keep it off the async threads.
                let result =
                    tokio::task::spawn_blocking(move || strategy.reload(source, &bytes, &config))
                        .await;
                if let Err(e) = result {
                    tracing::error!("strategy reload task failed: {e}");
                }
                // Applied or refused, this content has had its chance; wait for the next change.
                file.applied = Some(content);
                file.pending = None;
            }
        }
    }
}
