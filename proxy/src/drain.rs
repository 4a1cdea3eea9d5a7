//! Graceful stop: once shutdown begins (SIGTERM, or the end of a SIGQUIT upgrade) the
//! listeners stop accepting, and this service exits the process as soon as no request is in
//! flight and no client connection is open, instead of sleeping out the whole grace period as
//! pingora alone does. The grace period stays the upper bound.
//!
//! Connections, not only requests: a connection accepted just before the stop may not have
//! sent (or this process may not yet have read) its first request, and exiting then resets
//! it. Idle keep-alive connections close at the stop, a fresh one gets a moment for its first
//! request, so waiting for every connection costs only what is really in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::gateway::active_requests;
use crate::listener::ShardBalance;

const POLL: Duration = Duration::from_millis(20);

/// Resolves once the gateway begins to stop, or once its server (the watch's sender) is gone.
/// What every accept loop, idle connection and this drain wait on.
/// An `async move` block, not an `async fn`, so an idle connection's wait keeps `shutdown`
/// once.
// An async block keeps each argument once (see above): not an `async fn` on purpose.
#[allow(clippy::manual_async_fn)]
pub(crate) fn stopping(shutdown: &mut ShutdownWatch) -> impl Future<Output = ()> + Send + '_ {
    async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Exits the process once draining is done: no request in flight, no connection open on
/// the proxy's shards.
pub struct Drain {
    connections: Arc<ShardBalance>,
}

impl Drain {
    pub fn new(connections: Arc<ShardBalance>) -> Self {
        Self { connections }
    }

    fn drained(&self) -> bool {
        active_requests() == 0 && self.connections.open_connections() == 0
    }
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        stopping(&mut shutdown).await;
        if !*shutdown.borrow() {
            // The server is gone without a stop: nothing to drain.
            return;
        }
        let started = std::time::Instant::now();
        tracing::info!(
            in_flight = active_requests(),
            connections = self.connections.open_connections(),
            "stopped accepting; draining requests in flight and open connections"
        );
        // Two quiet reads in a row: a connection accepted as the stop began has been counted.
        let mut quiet = 0;
        loop {
            if self.drained() {
                quiet += 1;
                if quiet >= 2 {
                    tracing::info!(after = ?started.elapsed(), "drained: no request in flight, no connection open, exiting");
                    std::process::exit(0);
                }
            } else {
                quiet = 0;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
