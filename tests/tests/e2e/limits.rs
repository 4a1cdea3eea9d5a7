//! Request limits: header count and size (431), request body size (413), and requests carrying
//! both Content-Length and Transfer-Encoding (400). Raw bytes on a socket, so nothing between
//! the test and the gateway normalizes the request.

use std::time::Duration;

use sluice_tests::{Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/small"
service = "svc"
max_body_bytes = 100

[[routes]]
path_prefix = "/"
service = "svc"
"#;

async fn gateway() -> (Upstream, Gateway) {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start_with_proxy(
        "max_headers = 20\nmax_header_bytes = 4096",
        ROUTES,
        &services,
    )
    .await;
    (a, gw)
}

/// Sends raw bytes, returns the status code and the response text.
async fn raw(gw: &Gateway, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn within_limits_passes() {
    let (a, gw) = gateway().await;
    let (status, _) = raw(
        &gw,
        b"POST /small/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let (a, gw) = gateway().await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for i in 0..30 {
        many += &format!("x-h{i}: v\r\n");
    }
    many += "\r\n";
    let (status, text) = raw(&gw, many.as_bytes()).await;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains("more than 20 header fields"), "{text}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nx-big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    let (status, text) = raw(&gw, big.as_bytes()).await;
    assert_eq!(status, 431, "{text}");
    assert_eq!(a.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn bodies_over_the_route_limit_are_413() {
    let (a, gw) = gateway().await;
    let body = "x".repeat(150);
    let request = format!("POST /small/x HTTP/1.1\r\nHost: t\r\nContent-Length: 150\r\nConnection: close\r\n\r\n{body}");
    let (status, text) = raw(&gw, request.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("larger than 100 bytes"), "{text}");

    // Chunked: no length up front; refused once the body outgrows the limit.
    let chunk = "y".repeat(80);
    let request = format!(
        "POST /small/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n50\r\n{chunk}\r\n50\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (status, text) = raw(&gw, request.as_bytes()).await;
    assert_eq!(status, 413, "{text}");

    // Other routes have no limit.
    let (status, _) = raw(&gw, format!("POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 150\r\nConnection: close\r\n\r\n{body}").as_bytes()).await;
    assert_eq!(status, 200);
    // The declared-length refusal never reached the upstream; the chunked one had started
    // streaming to it before it outgrew the limit (the upstream saw a truncated request).
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let (a, gw) = gateway().await;
    // Content-Length says 5, the chunked body says otherwise, and a second request follows.
    let request = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let (status, text) = raw(&gw, request).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("both Content-Length and Transfer-Encoding"),
        "{text}"
    );
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one response only, the smuggled request is never read: {text}"
    );
    // Either order, any case.
    let request = b"POST / HTTP/1.1\r\nHost: t\r\ntransfer-encoding: chunked\r\ncontent-LENGTH: 5\r\n\r\n0\r\n\r\n";
    let (status, _) = raw(&gw, request).await;
    assert_eq!(status, 400);
    assert_eq!(a.hits(), 0, "nothing reached the upstream");

    // Transfer-Encoding alone is fine.
    let request = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (status, _) = raw(&gw, request).await;
    assert_eq!(status, 200);
}

/// A gateway with a short header deadline.
async fn gateway_with_header_timeout() -> (Upstream, Gateway) {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start_with_proxy("header_timeout = \"500ms\"", ROUTES, &services).await;
    (a, gw)
}

#[tokio::test]
async fn a_header_trickled_past_the_deadline_is_408() {
    let (a, gw) = gateway_with_header_timeout().await;
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let started = std::time::Instant::now();
    // Slowloris: a byte every 100 ms, each read well within any per-read timeout.
    let trickle = async {
        for byte in b"GET / HTTP/1.1\r\nHost: t\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("not received within 500ms"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(a.hits(), 0);
    sluice_tests::eventually("the timeout counted", Duration::from_secs(2), || async {
        sluice_tests::metric(
            &gw.metrics().await,
            "sluice_downstream_header_timeouts_total ",
        )
        .filter(|&n| n == 1.0)
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_gets_408_and_a_prompt_one_is_served() {
    let (a, gw) = gateway_with_header_timeout().await;
    // Opened and never written to.
    let mut idle = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    // Written in two parts well within the deadline, and kept alive for a second request.
    let mut prompt = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    prompt.write_all(b"GET /a HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    prompt.write_all(b"st: t\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = prompt.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    prompt
        .write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let n = prompt.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "keep-alive request after the deadline"
    );
    assert_eq!(a.hits(), 2);

    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut response)).await;
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 408 "));
}

/// Idle connections to the admin port hold no more than `admin.max_connections` slots, and
/// the header deadline clears them: the proxy serves throughout, the admin answers again.
#[tokio::test]
async fn idle_admin_connections_are_capped_and_timed_out() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start_with_tables(
        "header_timeout = \"1s\"",
        "max_connections = 4",
        ROUTES,
        &services,
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(tokio::net::TcpStream::connect(gw.admin).await.unwrap());
    }
    // The cap's refusals come at once, the deadline's 408s after a second.
    let mut answers = Vec::new();
    for mut stream in idle {
        let mut response = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
        answers.push(String::from_utf8_lossy(&response).to_string());
    }
    let refused = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503 "))
        .count();
    let timed_out = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 408 "))
        .count();
    // The harness's own admin connection (its readiness probe's keep-alive) may still hold
    // a slot when these arrive: then one more is refused.
    assert_eq!(refused + timed_out, 12, "{answers:#?}");
    assert!((8..=9).contains(&refused), "{answers:#?}");
    assert!((3..=4).contains(&timed_out), "{answers:#?}");
    assert!(
        answers.iter().any(|a| a.contains("at most 4")),
        "{answers:#?}"
    );
    // The proxy and the admin answer as before.
    let resp = sluice_tests::client()
        .get(gw.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = sluice_tests::client()
        .get(gw.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
