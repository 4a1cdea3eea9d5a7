//! A load generator for TLS handshakes, full and resumed apart: `CONNS` loops, each opening a
//! TLS connection, sending one `Connection: close` request, reading the answer to its end,
//! and starting over, for `SECONDS`. With `full` no session is ever offered (every handshake
//! signs and exchanges keys); with `resumed` the client keeps the tickets the server sends
//! and offers one on every connection. Prints one line:
//! `RESULT connections=N resumed=R errors=E seconds=S`.
//!
//! `tls-handshakes ADDR CONNS SECONDS full|resumed`, e.g.
//! `tls-handshakes 127.0.0.1:8443 16 5 resumed`. The server's certificate is not verified:
//! this measures the server, not the trust chain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tls-handshakes ADDR CONNS SECONDS full|resumed";
    let (Some(addr), Some(conns), Some(seconds), Some(mode)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|c| c.parse::<usize>().ok()),
        args.get(3).and_then(|s| s.parse::<u64>().ok()),
        args.get(4).filter(|m| *m == "full" || *m == "resumed"),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCertificate))
    .with_no_client_auth();
    config.resumption = if mode == "full" {
        Resumption::disabled()
    } else {
        Resumption::in_memory_sessions(4096)
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    runtime.block_on(async {
        let until = started + Duration::from_secs(seconds);
        let loops: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(one_loop(addr, connector.clone(), until, counts.clone())))
            .collect();
        for l in loops {
            let _ = l.await;
        }
    });
    println!(
        "RESULT connections={} resumed={} errors={} seconds={:.3}",
        counts.connections.load(Ordering::Relaxed),
        counts.resumed.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

async fn one_loop(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    until: Instant,
    counts: Arc<Counts>,
) {
    let name = ServerName::try_from("localhost").expect("a valid DNS name");
    let mut answer = Vec::with_capacity(4096);
    while Instant::now() < until {
        match one_connection(addr, &connector, name.clone(), &mut answer).await {
            Ok(resumed) => {
                counts.connections.fetch_add(1, Ordering::Relaxed);
                if resumed {
                    counts.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One connection, one request; whether its handshake resumed a session.
async fn one_connection(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    answer: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    answer.clear();
    match tls.read_to_end(answer).await {
        // A server that closes without close_notify (after a complete answer) is fine here.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        other => {
            other?;
        }
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200"));
    }
    Ok(resumed)
}

/// Accepts any certificate: the load generator measures the server's handshake, not trust.
#[derive(Debug)]
struct AnyCertificate;

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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
