//! WebSocket upgrade passes through the gateway, and the tunnel survives a pool swap that
//! removes its instance. After the 101 the gateway only moves bytes, so the upstream here
//! answers the upgrade and then echoes whatever arrives.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::{eventually, Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that accepts `Upgrade: websocket` with 101 and echoes the tunnel's bytes.
async fn upgrade_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !text.contains("upgrade: websocket") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    )
                    .await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn roundtrip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut got = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
        .await
        .expect("echo within 5 s")
        .unwrap();
    got
}

#[tokio::test]
async fn websocket_tunnel_survives_a_pool_swap() {
    let ws = upgrade_echo().await;
    let other = Upstream::start("other").await;
    let services = format!("[services.svc]\ninstances = [ {{ id = \"ws\", addr = \"{ws}\" }} ]\n");
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await;

    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(roundtrip(&mut stream, b"ping-1").await, b"ping-1");
    // An open tunnel is a request in flight to its instance (least-conn sees it as load).
    let ws_view = gw.instance("svc", "ws").await.unwrap();
    assert_eq!(ws_view["requests_in_flight"], 1, "{ws_view}");

    // The instance leaves the pool; the open tunnel keeps working.
    gw.write_services(&format!(
        "[services.svc]\ninstances = [{}]\n",
        other.instance()
    ));
    eventually("ws out of the pool", Duration::from_secs(3), || async {
        gw.instance("svc", "ws").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        roundtrip(&mut stream, b"ping-2 after the swap").await,
        b"ping-2 after the swap"
    );
    assert_eq!(other.hits(), 0);
    // Closing the tunnel ends its count (the instance is gone from the pool: read the gauge).
    let gauge = r#"sluice_upstream_requests_in_flight{instance_id="ws",service="svc"} 1"#;
    assert!(
        gw.metrics().await.contains(gauge),
        "still counted while open"
    );
    drop(stream);
    eventually("tunnel count ended", Duration::from_secs(5), || async {
        let metrics = gw.metrics().await;
        (!metrics
            .contains(r#"sluice_upstream_requests_in_flight{instance_id="ws",service="svc"} 1"#))
        .then_some(())
    })
    .await;
}

/// An upstream that reads one request head and answers `answer`, then echoes the rest.
async fn answering(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream.write_all(answer).await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

const HANDSHAKE: &[u8] =
    b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Reads a response head, byte by byte (nothing past it).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte))
            .await
            .expect("a head within 5 s")
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn gateway_for(addr: SocketAddr) -> Gateway {
    let services =
        format!("[services.svc]\ninstances = [ {{ id = \"ws\", addr = \"{addr}\" }} ]\n");
    Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await
}

#[tokio::test]
async fn a_websocket_tunnel_on_the_fast_path_moves_bytes_both_ways_until_both_close() {
    let gw = gateway_for(upgrade_echo().await).await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    // A frame right behind the handshake, before the 101: it goes up once the switch is made.
    stream
        .write_all(&[HANDSHAKE, b"early frame"].concat())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    let lower = head.to_ascii_lowercase();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    for field in [
        "upgrade: websocket\r\n",
        "connection: upgrade\r\n",
        "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n",
    ] {
        assert!(lower.contains(field), "{field} missing: {head}");
    }
    let mut early = [0u8; 11];
    stream.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"early frame");

    // A megabyte each way at once: neither direction waits for the other.
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(&payload).await.unwrap();
        // Half-close: the upstream sees the end, the echo closes, and so does the tunnel.
        write.shutdown().await.unwrap();
    };
    let receive = async {
        let mut echoed = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut echoed))
            .await
            .expect("the echo and the close within 10 s")
            .unwrap();
        echoed
    };
    let ((), echoed) = tokio::join!(send, receive);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the echo differs");

    // The fast path served it (nothing handed to pingora) and logged it when it ended.
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("sluice_fast_path_handoffs_total{reason=\"upgrade\"} 1"),
        "{metrics}"
    );
    let line = sluice_tests::eventually(
        "the tunnel's access line",
        Duration::from_secs(5),
        || async {
            gw.log()
                .lines()
                .find(|l| l.contains("sluice::access") && l.contains("/chat"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(
        line.contains("via=\"fast\"") && line.contains("101"),
        "{line}"
    );
}

#[tokio::test]
async fn a_refused_handshake_is_an_ordinary_response_and_a_bad_switch_is_a_502() {
    let refusing = gateway_for(
        answering(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope")
            .await,
    )
    .await;
    let mut stream = TcpStream::connect(refusing.proxy).await.unwrap();
    stream.write_all(HANDSHAKE).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let mut body = [0u8; 4];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"nope");
    // Still an HTTP connection: the next request is answered on it.
    stream.write_all(HANDSHAKE).await.unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 403"));

    // A 101 that does not name websocket is not a tunnel the client asked for.
    let bad = gateway_for(
        answering(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        )
        .await,
    )
    .await;
    let mut stream = TcpStream::connect(bad.proxy).await.unwrap();
    stream.write_all(HANDSHAKE).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
}
