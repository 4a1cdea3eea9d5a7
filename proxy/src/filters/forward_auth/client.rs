//! The auth service's client: one GET per request over HTTP/1.1, on kept-alive connections
//! (a lock-free queue of idle ones), its response read with the gateway's strict codec.

use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Connections to one auth service.
#[derive(Debug)]
pub(super) struct AuthClient {
    /// `host:port`, resolved on every new connection.
    authority: String,
    idle: ArrayQueue<TcpStream>,
}

impl AuthClient {
    pub(super) fn new(authority: String) -> Self {
        Self {
            authority,
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
            match exchange(&mut kept, request).await {
                Ok((response, reusable)) => {
                    self.keep(kept, reusable);
                    return Ok(response);
                }
                Err(CallError::Closed | CallError::Io(_)) => {}
                Err(other) => return Err(other),
            }
        }
        let mut stream = TcpStream::connect(&self.authority)
            .await
            .map_err(CallError::Connect)?;
        // Small requests: no waiting for more to send.
        let _ = stream.set_nodelay(true);
        let (response, reusable) = exchange(&mut stream, request).await?;
        self.keep(stream, reusable);
        Ok(response)
    }

    fn keep(&self, stream: TcpStream, reusable: bool) {
        if reusable {
            // A full queue drops (closes) the connection.
            let _ = self.idle.push(stream);
        }
    }
}

/// One request and its response on `stream`; whether the connection may serve another.
async fn exchange(
    stream: &mut TcpStream,
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
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut slots);
    if response.parse(head).is_err() {
        return Vec::new();
    }
    response
        .headers
        .iter()
        .filter_map(|f| {
            Some((
                HeaderName::from_bytes(f.name.as_bytes()).ok()?,
                HeaderValue::from_bytes(f.value).ok()?,
            ))
        })
        .collect()
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
