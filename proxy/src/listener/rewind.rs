//! A downstream stream as pingora gets it: bytes already read from it put back in front, and
//! small writes held until a flush, so a response pingora writes in pieces (a head, then the
//! body) leaves in one segment, as it did through pingora's own 1460-byte write buffer — but
//! held only while it has bytes: an idle connection keeps no write buffer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner` with `prefix` read first: what the header deadline read is handed on to pingora,
/// which parses the request as if nothing had been read.
#[derive(Debug)]
pub(super) struct Rewind {
    prefix: Vec<u8>,
    consumed: usize,
    inner: Stream,
    /// Writes not yet passed on (empty, and unallocated, after each flush).
    unsent: Vec<u8>,
    /// The connection counted open while the stream lives (pingora keeps it across the
    /// connection's requests and drops it when the connection ends).
    open: Option<OpenConnection>,
}

/// One client connection in `sluice_downstream_connections_open` while held.
#[derive(Debug)]
pub(super) struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    pub(super) fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Rewind {
    pub(super) fn new(prefix: Vec<u8>, inner: Stream) -> Self {
        Self {
            prefix,
            consumed: 0,
            inner,
            unsent: Vec::new(),
            open: None,
        }
    }

    /// The stream, counted open until it drops.
    pub(super) fn counted(mut self, open: Option<OpenConnection>) -> Self {
        self.open = open;
        self
    }

    /// The stream for a connection's next request: `fresh` (accepted) connections get a
    /// Rewind of their own; a stream pingora gave back after a keep-alive request is already
    /// one, and gets `prefix` put before whatever it still holds instead of another wrapper
    /// (a wrapper per request would put every read and write of a long keep-alive connection
    /// behind one more layer each time: thousands deep after a few seconds of load). `None`
    /// only if a stream that said it was a Rewind turns out not to be one (then it is closed).
    pub(super) fn around(
        stream: Stream,
        prefix: Vec<u8>,
        open: Option<OpenConnection>,
    ) -> Option<Stream> {
        if !stream.as_any().is::<Rewind>() {
            return Some(Box::new(Rewind::new(prefix, stream).counted(open)));
        }
        let mut rewind = stream.into_any().downcast::<Rewind>().ok()?;
        rewind.put_back(prefix);
        Some(rewind)
    }

    /// Makes `prefix` the next bytes read, before what was not read yet.
    fn put_back(&mut self, mut prefix: Vec<u8>) {
        if !self.pending().is_empty() {
            prefix.extend_from_slice(self.pending());
        }
        self.prefix = prefix;
        self.consumed = 0;
    }

    fn pending(&self) -> &[u8] {
        &self.prefix[self.consumed..]
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let pending = self.pending();
        if pending.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.consumed += n;
        if self.consumed == self.prefix.len() {
            // Replayed in full: give the buffer back.
            self.prefix = Vec::new();
            self.consumed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes smaller than this are held for the next flush (pingora's L4 write buffer size: a
/// typical MSS).
const COALESCE_BELOW: usize = 1460;

impl Rewind {
    /// Passes on what `unsent` holds, then lets its allocation go.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.unsent.is_empty() {
            match std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.unsent))? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => {
                    self.unsent.drain(..n);
                }
            }
        }
        self.unsent = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.unsent.len() + buf.len() > COALESCE_BELOW {
            std::task::ready!(this.poll_send_unsent(cx))?;
        }
        if buf.len() >= COALESCE_BELOW {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.unsent.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Rewind {
    async fn shutdown(&mut self) {
        // What is held goes first; a failed write changes nothing about closing.
        let _ = tokio::io::AsyncWriteExt::flush(self).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for Rewind {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewind {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Rewind {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Rewind {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Rewind {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Rewind {
    /// Peeks the replayed bytes while any are left (a short peek, like a socket's), else the
    /// stream itself.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let pending = self.pending();
        if pending.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pingora stream over a loopback connection, and its peer.
    async fn connected() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(
            accepted.unwrap().0,
        ));
        (stream, client.unwrap())
    }

    fn depth(stream: &Stream) -> usize {
        let mut depth = 0;
        let mut any = stream.as_any();
        while let Some(rewind) = any.downcast_ref::<Rewind>() {
            depth += 1;
            any = rewind.inner.as_any();
        }
        depth
    }

    #[tokio::test]
    async fn a_returned_stream_is_rewound_again_not_wrapped_again() {
        let (stream, mut peer) = connected().await;
        let mut stream = Rewind::around(stream, b"first ".to_vec(), None).unwrap();
        let mut got = [0u8; 3];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"fir");
        // The next request: its prefix comes before what the first one left unread.
        for round in 0..100 {
            stream = Rewind::around(stream, format!("{round}:").into_bytes(), None).unwrap();
        }
        assert_eq!(depth(&stream), 1, "one wrapper however many requests");
        peer.write_all(b"wire").await.unwrap();
        let expected: String =
            (0..100).rev().map(|r| format!("{r}:")).collect::<String>() + "st wire";
        let mut all = vec![0u8; expected.len()];
        stream.read_exact(&mut all).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&all), expected);
    }
}
