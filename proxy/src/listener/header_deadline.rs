//! The request-header deadline: a connection whose first request header is not complete
//! within `proxy.header_timeout` of the accept is answered 408 and closed (slow-client
//! protection that pingora does not have; its own read timeouts restart on every byte).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::rewind::{OpenConnection, Rewind};
use super::shard::{pingora_stream, PlainConnection, ShardApp};
use crate::gateway::{
    local_answer, read_client, release_client, ClientIo, FastPath, H2Service, Peer, Served,
    StreamApp,
};

/// The HTTP/2 connection preface: a cleartext HTTP/2 client is handed on as soon as it is
/// seen (HTTP/2 has its own framing and flow control).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection accepted just before the stop may take to start its first request.
/// Its client connected while we were accepting and is sending; closing it would fail a
/// request that a graceful upgrade promised not to lose.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Wraps a server app (the pingora proxy): reads the first request header of each HTTP/1
/// connection under a deadline, then hands the connection, bytes and all, to `inner`.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
    /// Most bytes read while looking for the end of the header; past it, `inner` sees the
    /// request and answers its size (431).
    max_bytes: usize,
    timeouts: IntCounter,
    /// Serves plain HTTP/1.1 requests before anything reaches `inner`, when enabled.
    fast: Option<Arc<FastPath>>,
    /// Serves HTTP/2 connections with the fast path, `inner` taking the streams it leaves.
    h2: Option<Arc<H2Service>>,
    /// `sluice_downstream_connections_total` and `_open`, for the proxy's listeners.
    connections: Option<(IntCounter, IntGauge)>,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, timeout: Duration, max_bytes: usize, timeouts: IntCounter) -> Self {
        Self {
            inner: Arc::new(inner),
            timeout,
            max_bytes,
            timeouts,
            fast: None,
            h2: None,
            connections: None,
        }
    }

    /// Counts the connections accepted (`total`) and open now (`open`).
    pub fn with_connection_metrics(mut self, total: IntCounter, open: IntGauge) -> Self {
        self.connections = Some((total, open));
        self
    }

    /// Lets `fast` serve the connection's requests first; it hands over the first one it does
    /// not take, and `inner` serves the connection from then on. An HTTP/2 connection is the
    /// fast path's whole, `inner` serving the streams it leaves.
    pub fn with_fast_path(mut self, fast: FastPath) -> Self
    where
        A: HttpServerApp + Send + Sync + 'static,
    {
        let fast = Arc::new(fast);
        let pingora: Arc<dyn StreamApp> = self.inner.clone();
        self.h2 = Some(Arc::new(H2Service::new(fast.clone(), pingora)));
        self.fast = Some(fast);
        self
    }
}

/// What reading the start of a connection came to.
enum Start {
    /// The header is complete (or too large to wait for, or HTTP/2): these bytes go first.
    Ready(Vec<u8>),
    /// The client closed, or the read failed, before anything could be served.
    Closed,
    /// The deadline passed first.
    TimedOut,
}

/// Whether `buf` (read so far) holds the end of a request header, starting the search a few
/// bytes before `new_from` so a `\r\n\r\n` split across reads is found.
fn header_complete(buf: &[u8], new_from: usize) -> bool {
    let start = new_from.saturating_sub(3);
    buf[start..].windows(4).any(|w| w == b"\r\n\r\n")
        // HTTP/1.1 allows bare LF line ends; pingora's parser accepts them too.
        || buf[start..].windows(2).any(|w| w == b"\n\n")
}

async fn read_start(stream: &mut dyn ClientIo, max_bytes: usize) -> Start {
    // No buffer until the client's first bytes are there (read_client lends one then).
    let mut buf = Vec::new();
    loop {
        let before = buf.len();
        match read_client(stream, &mut buf).await {
            Ok(0) | Err(_) if before == 0 => return Start::Closed,
            // A client that closes mid-header gets what pingora makes of the part it sent.
            Ok(0) | Err(_) => return Start::Ready(buf),
            Ok(_) => {}
        }
        let h2 = H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]);
        if h2 && buf.len() >= H2_PREFACE.len() {
            return Start::Ready(buf);
        }
        if !h2 && (header_complete(&buf, before) || buf.len() > max_bytes) {
            return Start::Ready(buf);
        }
    }
}

async fn answer_timeout(stream: &mut dyn ClientIo, timeout: Duration) {
    let body = format!(
        "sluice: request header not received within {}\n",
        humantime::format_duration(timeout)
    );
    local_answer(stream, 408, &body).await;
    let _ = stream.shutdown().await;
}

impl<A: ServerApp + Send + Sync + 'static> HeaderDeadline<A> {
    /// The connection counted as accepted and open (once: a stream pingora hands back for its
    /// next request is not fresh).
    fn count(&self, fresh: bool) -> Option<OpenConnection> {
        match &self.connections {
            Some((total, open)) if fresh => {
                total.inc();
                Some(OpenConnection::new(open))
            }
            _ => None,
        }
    }

    /// The first request header under the deadline, then the fast path, then `inner` with
    /// the stream `into_pingora` makes of `stream` (only if it is handed over). An `async move`
    /// block, not an `async fn`: the arguments are kept once in the connection's state, not
    /// once as arguments and again as the body's locals.
    // An async block keeps each argument once (see above): not an `async fn` on purpose.
    #[allow(clippy::manual_async_fn)]
    fn serve_from<S: ClientIo + 'static>(
        self: Arc<Self>,
        mut stream: S,
        peer: Peer,
        fresh: bool,
        shutdown: ShutdownWatch,
        into_pingora: impl FnOnce(S, Peer) -> Stream + Send + 'static,
    ) -> impl Future<Output = Option<Stream>> + Send + 'static {
        async move {
            let open = self.count(fresh);
            // Boxed: its timers and read live only until the first request is in, not in the
            // state the connection keeps while it is served and while it idles.
            let mut prefix = match Box::pin(async {
                let mut shutdown_seen = shutdown.clone();
                let read =
                    tokio::time::timeout(self.timeout, read_start(&mut stream, self.max_bytes));
                tokio::pin!(read);
                tokio::select! {
                    start = &mut read => start.unwrap_or(Start::TimedOut),
                    // Stopping (or stopped before this connection got here): an idle
                    // keep-alive connection is closed, as pingora does; a fresh one gets a
                    // moment to send its request (the drain waits for open connections).
                    () = crate::drain::stopping(&mut shutdown_seen) => {
                        if fresh {
                            let grace = FIRST_REQUEST_GRACE.min(self.timeout);
                            match tokio::time::timeout(grace, &mut read).await {
                                Ok(start) => start.unwrap_or(Start::TimedOut),
                                Err(_) => Start::Closed,
                            }
                        } else {
                            Start::Closed
                        }
                    }
                }
            })
            .await
            {
                // Matched as a temporary, so the connection's state keeps the bytes once.
                Start::Ready(prefix) => prefix,
                Start::Closed => return None,
                Start::TimedOut => {
                    self.timeouts.inc();
                    // Rare: boxed, so the connection's state stays small.
                    Box::pin(answer_timeout(&mut stream, self.timeout)).await;
                    return None;
                }
            };
            if let (Some(h2), true) = (&self.h2, prefix.starts_with(H2_PREFACE)) {
                // h2c by prior knowledge: the whole connection is served here. Boxed: the
                // HTTP/2 connection's state is allocated for it, not in the state of every
                // HTTP/1.1 connection (an idle one held it: 4.1 KiB per idle connection).
                let stream = Rewind::around(into_pingora(stream, peer), prefix, open)?;
                Box::pin(h2.serve(stream, &shutdown)).await;
                return None;
            }
            if let Some(fast) = &self.fast {
                if let Served::Closed = fast.serve(&mut stream, peer, &mut prefix, &shutdown).await
                {
                    // The read buffer goes back to the shard's free list: the next connection
                    // reads into it (a connection per request allocated one each).
                    release_client(prefix);
                    return None;
                }
            }
            let stream = Rewind::around(into_pingora(stream, peer), prefix, open)?;
            self.inner.process_new(stream, &shutdown).await
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A stream we handed to pingora before comes back for its next keep-alive request.
        let fresh = !stream.as_any().is::<Rewind>();
        // HTTP/2 negotiated by ALPN: nothing to wait for here (the whole connection is
        // served in this call).
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let open = self.count(fresh);
            let served = match &self.h2 {
                Some(h2) => {
                    h2.serve(stream, shutdown).await;
                    None
                }
                None => self.inner.process_new(stream, shutdown).await,
            };
            drop(open);
            return served;
        }
        let peer = Peer {
            ip: stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            tls: stream.get_ssl_digest().is_some(),
        };
        // Owned handles for the connection's state (two reference counts per call here, on
        // pingora's path, so a cleartext connection's box needs no wrapper).
        self.clone()
            .serve_from(stream, peer, fresh, shutdown.clone(), |stream, _| stream)
            .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

impl<A: ServerApp + Send + Sync + 'static> ShardApp for HeaderDeadline<A> {
    /// A cleartext connection is read and served on its bare socket; pingora's stream (its
    /// box and socket digest, ~800 bytes) is built only when the connection is handed over,
    /// so an idle keep-alive connection of the fast path holds neither.
    fn process_plain(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: ShutdownWatch,
    ) -> PlainConnection {
        let client = Peer {
            ip: Some(peer.ip()),
            tls: false,
        };
        // The port alone is kept for the hand-off (the address is 32 bytes, kept for the
        // connection's life); the client's IP is the one `Peer` holds.
        let port = peer.port();
        Box::pin(
            self.serve_from(tcp, client, true, shutdown, move |tcp, client| {
                pingora_stream(tcp, client.ip.map(|ip| SocketAddr::new(ip, port)))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never serves: the size of the state around it is what is measured.
    struct Nothing;

    #[async_trait]
    impl ServerApp for Nothing {
        async fn process_new(
            self: &Arc<Self>,
            _stream: Stream,
            _shutdown: &ShutdownWatch,
        ) -> Option<Stream> {
            None
        }
    }

    /// What an idle plain connection holds is this future's box, whatever its state: the
    /// fast path's, pingora's hand-off and h2c's included. Within jemalloc's 640-byte class
    /// it measured 1.9 KiB per idle connection; with h2c's state inline (sessions 19 to 22)
    /// the box was 2,992 bytes (this debug build) and an idle connection 4.1 KiB.
    #[tokio::test]
    async fn an_idle_plain_connection_keeps_a_small_state() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let tcp = TcpStream::from_std(accepted).unwrap();
        let counter = IntCounter::new("t", "t").unwrap();
        let app = Arc::new(HeaderDeadline::new(
            Nothing,
            Duration::from_secs(1),
            1024,
            counter,
        ));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let connection = app.process_plain(tcp, peer, shutdown);
        let size = std::mem::size_of_val(&*connection);
        assert!(size <= 640, "the connection's state is {size} bytes");
    }

    #[test]
    fn finds_the_end_of_a_header_split_across_reads() {
        let buf = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(header_complete(buf, 0));
        // The last read brought only the final "\n".
        assert!(header_complete(buf, buf.len() - 1));
        assert!(!header_complete(b"GET / HTTP/1.1\r\nhost: a\r\n", 0));
        assert!(header_complete(b"GET / HTTP/1.0\n\n", 15));
    }
}
