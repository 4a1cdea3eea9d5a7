//! A cap on the connections one listener serves at once (the admin's): past it a new
//! connection is answered `503` and closed at once, so idle or slow clients of that port
//! can hold no more than their share of the process's descriptors and tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::gateway::local_answer;

/// Wraps a server app: at most `max` connections inside it at once.
pub struct ConnectionCap<A> {
    inner: Arc<A>,
    max: usize,
    open: Arc<AtomicUsize>,
}

impl<A> ConnectionCap<A> {
    pub fn new(inner: A, max: usize) -> Self {
        Self {
            inner: Arc::new(inner),
            max,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// One connection counted while it is served.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long the refusal may take to write before the connection is dropped anyway.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionCap<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            let body = format!(
                "sluice: too many connections to this port (at most {}); try again\n",
                self.max
            );
            let _ =
                tokio::time::timeout(REFUSAL_WRITE, local_answer(&mut stream, 503, &body)).await;
            return None;
        }
        let _counted = Counted(self.open.clone());
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
