//! The background task that lets idle instances' latency EWMAs decay, once a
//! [`LATENCY_DECAY_PERIOD`]: a latency-aware strategy tries an instance again once its
//! slow past has faded, instead of starving it for good.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Directory, LATENCY_DECAY_PERIOD};

/// Ticks [`Directory::decay_idle_latencies`] until shutdown.
pub struct LatencyDecay {
    directory: Arc<Directory>,
}

impl LatencyDecay {
    pub fn new(directory: Arc<Directory>) -> Self {
        Self { directory }
    }
}

#[async_trait]
impl BackgroundService for LatencyDecay {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(LATENCY_DECAY_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once: skip it, so samples get a whole period.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.directory.decay_idle_latencies(),
            }
        }
    }
}
