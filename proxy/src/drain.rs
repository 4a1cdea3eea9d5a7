//! Graceful stop: once shutdown begins (SIGTERM, or the end of a SIGQUIT upgrade) the
//! listeners stop accepting, and this service exits the process as soon as no request is in
//! flight, instead of sleeping out the whole grace period as pingora alone does. The grace
//! period stays the upper bound.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::gateway::active_requests;

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

/// Exits the process once draining is done.
pub struct Drain;

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
            "stopped accepting; draining requests in flight"
        );
        // Two quiet reads in a row: a request accepted just before the stop has had its chance
        // to register.
        let mut quiet = 0;
        loop {
            if active_requests() == 0 {
                quiet += 1;
                if quiet >= 2 {
                    tracing::info!(after = ?started.elapsed(), "drained: no request in flight, exiting");
                    std::process::exit(0);
                }
            } else {
                quiet = 0;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
