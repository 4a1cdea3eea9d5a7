//! The auth service's client: one GET per request over HTTP/1.1, plain or TLS, on kept-alive
//! connections (a lock-free queue of idle ones), its response read with the gateway's strict
//! codec.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{HeaderName, HeaderValue};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use sluice_http1::response::parse_response;
use sluice_http1::{ChunkedTracker, Framing, ParsedResponse};

/// Largest auth response (head and body) read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Idle connections kept to the auth service.
const KEPT: usize = 64;

/// Why the auth service gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed the connection before answering")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("response larger than {MAX_RESPONSE} bytes")]
    TooLarge,
}

/// The auth service's answer.
#[derive(Debug)]
pub(super) struct AuthResponse {
    pub(super) status: u16,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) body: Bytes,
}

/// How the auth service is spoken to over TLS: the client configuration and the name its
/// certificate must carry (sent as SNI).
#[derive(Clone)]
pub(super) struct AuthTls {
    pub(super) config: Arc<rustls::ClientConfig>,
    pub(super) server_name: ServerName<'static>,
}

impl std::fmt::Debug for AuthTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthTls({:?})", self.server_name)
    }
}

/// A connection to the auth service.
enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections to one auth service.
pub(super) struct AuthClient {
    /// `host:port`, resolved on every new connection.
    authority: String,
    tls: Option<AuthTls>,
    idle: ArrayQueue<Connection>,
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("authority", &self.authority)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl AuthClient {
    pub(super) fn new(authority: String, tls: Option<AuthTls>) -> Self {
        Self {
            authority,
            tls,
            idle: ArrayQueue::new(KEPT),
        }
    }

    pub(super) fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends `request` (a whole request head) and reads the answer. A kept connection that
    /// turns out closed is replaced by a new one, once (the request is a GET).
    pub(super) async fn call(&self, request: &[u8]) -> Result<AuthResponse, CallError> {
        if let Some(mut kept) = self.idle.pop() {
            match kept.exchange(request).await {
                Ok((response, reusable)) => {
                    self.keep(kept, reusable);
                    return Ok(response);
                }
                Err(CallError::Closed | CallError::Io(_)) => {}
                Err(other) => return Err(other),
            }
        }
        let mut connection = self.connect().await?;
        let (response, reusable) = connection.exchange(request).await?;
        self.keep(connection, reusable);
        Ok(response)
    }

    async fn connect(&self) -> Result<Connection, CallError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(CallError::Connect)?;
        // Small requests: no waiting for more to send.
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => Ok(Connection::Plain(stream)),
            Some(tls) => {
                let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(CallError::Handshake)?;
                Ok(Connection::Tls(Box::new(stream)))
            }
        }
    }

    fn keep(&self, connection: Connection, reusable: bool) {
        if reusable {
            // A full queue drops (closes) the connection.
            let _ = self.idle.push(connection);
        }
    }
}

impl Connection {
    async fn exchange(&mut self, request: &[u8]) -> Result<(AuthResponse, bool), CallError> {
        match self {
            Self::Plain(stream) => exchange(stream, request).await,
            Self::Tls(stream) => exchange(stream.as_mut(), request).await,
        }
    }
}

/// One request and its response on `stream`; whether the connection may serve another.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<(AuthResponse, bool), CallError> {
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(4096);
    let mut head_out = Vec::new();
    let head = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(CallError::Closed);
        }
        match parse_response(&buf, false, false, &mut head_out) {
            Err(e) => return Err(CallError::Malformed(e.to_string())),
            Ok(ParsedResponse::Final(head)) => break head,
            Ok(ParsedResponse::Interim(len)) => {
                buf.drain(..len);
            }
            Ok(ParsedResponse::Partial) if buf.len() > MAX_RESPONSE => {
                return Err(CallError::TooLarge)
            }
            Ok(ParsedResponse::Partial) => head_out.clear(),
        }
    };
    let headers = fields(&buf[..head.head_len]);
    let mut reusable = head.upstream_keepalive;
    let body = match head.framing {
        Framing::Empty => Bytes::new(),
        Framing::Length(n) => {
            let end = head.head_len + usize::try_from(n).map_err(|_| CallError::TooLarge)?;
            if end > MAX_RESPONSE {
                return Err(CallError::TooLarge);
            }
            while buf.len() < end {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(CallError::Closed);
                }
            }
            reusable &= buf.len() == end;
            Bytes::copy_from_slice(&buf[head.head_len..end])
        }
        Framing::Chunked => {
            let mut tracker = ChunkedTracker::default();
            let mut at = head.head_len;
            loop {
                let taken = tracker
                    .feed(&buf[at..])
                    .map_err(|e| CallError::Malformed(e.to_string()))?;
                at += taken;
                if tracker.is_done() {
                    break;
                }
                if buf.len() > MAX_RESPONSE {
                    return Err(CallError::TooLarge);
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(CallError::Closed);
                }
            }
            reusable &= buf.len() == at;
            Bytes::from(dechunk(&buf[head.head_len..at]))
        }
        Framing::UntilClose => {
            while stream.read_buf(&mut buf).await? > 0 {
                if buf.len() > MAX_RESPONSE {
                    return Err(CallError::TooLarge);
                }
            }
            reusable = false;
            Bytes::copy_from_slice(&buf[head.head_len..])
        }
    };
    let response = AuthResponse {
        status: head.status,
        headers,
        body,
    };
    Ok((response, reusable))
}

/// The fields of a response head the codec accepted.
fn fields(head: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    sluice_http1::read_head(head, |_, fields| {
        fields
            .iter()
            .filter_map(|f| {
                Some((
                    HeaderName::from_bytes(f.name.as_bytes()).ok()?,
                    HeaderValue::from_bytes(f.value).ok()?,
                ))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The data of a chunked body the codec's tracker found well-formed.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = rest[..line_end]
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|t| usize::from_str_radix(t.trim(), 16).ok())
            .unwrap_or(0);
        rest = &rest[line_end + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    out
}

/// How long the auth service is given by default.
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"0\r\n\r\n"), b"");
    }
}
