//! One HTTP/1.1 GET with a deadline, reduced to its status code.

use std::time::Duration;

use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe got no status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("bad probe URL {0:?}: expected http://HOST:PORT/PATH")]
    BadUrl(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP response")]
    NotHttp,
}

/// GETs `url` (plain `http://` only) and returns the response status.
pub async fn http_status(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ProbeError::BadUrl(url.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(ProbeError::BadUrl(url.to_string()));
    }
    let host = uri
        .host()
        .ok_or_else(|| ProbeError::BadUrl(url.to_string()))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        let mut stream = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 64];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        // "HTTP/1.1 200 OK"
        let line = std::str::from_utf8(&head).map_err(|_| ProbeError::NotHttp)?;
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|c| c.parse::<u16>().ok()),
        ) {
            (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
            _ => Err(ProbeError::NotHttp),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}
