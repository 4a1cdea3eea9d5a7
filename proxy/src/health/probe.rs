//! One HTTP/1.1 GET with a deadline, over plain TCP or TLS, reduced to its status code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::UpstreamTlsSpec;

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
    #[error("{0:?} is not a valid TLS server name")]
    BadServerName(String),
    #[error("TLS setup: {0}")]
    Tls(String),
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
    let exchange = async {
        let stream = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        get_status(stream, host, path).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

/// GETs `path` from the instance at `socket`, over TLS when `tls` is given (verified as
/// `server_name`), and returns the response status.
pub async fn instance_status(
    socket: SocketAddr,
    server_name: &str,
    path: &str,
    tls: Option<&ProbeTls>,
    timeout: Duration,
) -> Result<u16, ProbeError> {
    let exchange = async {
        let stream = TcpStream::connect(socket).await?;
        match tls {
            None => get_status(stream, server_name, path).await,
            Some(tls) => {
                let name = ServerName::try_from(server_name.to_string())
                    .map_err(|_| ProbeError::BadServerName(server_name.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(name, stream)
                    .await?;
                get_status(stream, server_name, path).await
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

/// One `GET` on `stream`, reduced to the status code of the answer.
async fn get_status<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
) -> Result<u16, ProbeError> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
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
}

/// How `https` instances of a service are probed: its `upstream_tls` trust settings.
#[derive(Clone, Debug)]
pub struct ProbeTls {
    config: Arc<rustls::ClientConfig>,
}

impl ProbeTls {
    /// A TLS client that trusts what the service's `upstream_tls` trusts.
    pub fn new(spec: &UpstreamTlsSpec) -> Result<Self, ProbeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let mut config = if spec.verify {
            let mut roots = rustls::RootCertStore::empty();
            match &spec.ca {
                Some(path) => {
                    let tls_error = |e: String| ProbeError::Tls(format!("{}: {e}", path.display()));
                    for cert in crate::pem::certificates(path).map_err(tls_error)? {
                        roots.add(cert).map_err(|e| tls_error(e.to_string()))?;
                    }
                }
                None => pingora::tls::load_platform_certs_incl_env_into_store(&mut roots)
                    .map_err(|e| ProbeError::Tls(e.to_string()))?,
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The client configuration (HTTP/1.1 by ALPN), for other HTTP/1.1 clients of the
    /// gateway (forward-auth's).
    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}

/// `upstream_tls.verify = false`: any certificate is accepted (signatures still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
