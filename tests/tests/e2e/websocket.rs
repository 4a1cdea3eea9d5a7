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
