//! The fast path (Sluice's own HTTP/1.1 request path) at the wire level, against a
//! hand-written upstream whose responses are exact bytes: chunked, close-delimited, 204, HEAD,
//! interim 1xx and large bodies pass through intact; pipelined and `Connection: close`
//! requests; a request it does not take is handed to pingora on the same connection; a kept
//! upstream connection the upstream closed is never a failed request; every request on a kept
//! client connection gets its own timeout; `fast_path = false`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_tests::{client, Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIG: usize = 300_000;

/// An HTTP/1.1 upstream written by hand: answers by path with exact bytes.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections this upstream has closed.
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the hand-written upstream behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    KeepAlive,
    /// Every connection is closed right after its first response, without saying so (an
    /// upstream whose idle timeout fires just then).
    CloseAfterEach,
    /// Every request is read, then the connection is closed without an answer (a process
    /// that dies with the request).
    DropRequests,
}

impl RawUpstream {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counted, closing) = (connections.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let closing = closing.clone();
                tokio::spawn(async move {
                    // `serve` owns the stream: it is closed when `serve` returns.
                    serve(stream, mode).await;
                    closing.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            connections,
            closed,
            task,
        }
    }

    fn services(&self) -> String {
        format!(
            "[services.svc]\ninstances = [{{ id = \"raw\", addr = \"{}\" }}]\n",
            self.addr
        )
    }
}

/// The Content-Length of a head (0 without one).
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve(mut stream: TcpStream, mode: Mode) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then its Content-Length body.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length = content_length(&head);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if mode == Mode::DropRequests {
            return;
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
        buf.drain(..head_end + length);
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("").to_string();
        let path = words.next().unwrap_or("").to_string();
        // `.../sleep/MS` answers after MS milliseconds.
        if let Some((_, ms)) = path.rsplit_once("/sleep/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        let response: Vec<u8> = match path.as_str() {
            "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
            "/big-chunked" => {
                let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..100 {
                    r.extend_from_slice(format!("{:x}\r\n", 3000).as_bytes());
                    r.extend_from_slice(&[b'c'; 3000]);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
                r
            }
            "/big" => {
                let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
                r.extend(std::iter::repeat_n(b'x', BIG));
                r
            }
            "/close" => b"HTTP/1.0 200 OK\r\n\r\nuntil the upstream closes".to_vec(),
            "/no-content" => b"HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n".to_vec(),
            "/interim" => {
                b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
            }
            _ => {
                // The request as seen, for the test to read.
                let echo = format!("{head}{body}");
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n",
                    echo.len()
                )
                .into_bytes();
                if method != "HEAD" {
                    r.extend_from_slice(echo.as_bytes());
                }
                r
            }
        };
        if stream.write_all(&response).await.is_err() {
            return;
        }
        if path == "/close" || mode == Mode::CloseAfterEach {
            return;
        }
    }
}

async fn gateway(up: &RawUpstream, route_extra: &str) -> Gateway {
    let routes = format!("[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n{route_extra}");
    Gateway::start(&routes, &up.services()).await
}

/// Reads one response (head and Content-Length body) from `stream`, keeping what follows.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(i) = find(pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..i + 4]).to_string();
            let length = content_length(&head);
            if pending.len() >= i + 4 + length {
                let body = String::from_utf8_lossy(&pending[i + 4..i + 4 + length]).to_string();
                pending.drain(..i + 4 + length);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response; got {pending:?}");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn every_response_framing_passes_through_intact() {
    let up = RawUpstream::start(Mode::KeepAlive).await;
    let gw = gateway(&up, "").await;
    let http = client();

    let chunked = http.get(gw.url("/chunked")).send().await.unwrap();
    assert_eq!(chunked.status(), 200);
    assert_eq!(chunked.text().await.unwrap(), "hello world");

    let big = http.get(gw.url("/big")).send().await.unwrap();
    assert_eq!(big.bytes().await.unwrap().len(), BIG);
    let big_chunked = http.get(gw.url("/big-chunked")).send().await.unwrap();
    assert_eq!(big_chunked.bytes().await.unwrap().len(), 300_000);

    let close = http.get(gw.url("/close")).send().await.unwrap();
    assert_eq!(close.status(), 200);
    assert_eq!(close.text().await.unwrap(), "until the upstream closes");

    let empty = http.get(gw.url("/no-content")).send().await.unwrap();
    assert_eq!(empty.status(), 204);
    assert_eq!(empty.headers()["x-n"], "1");

    let head = http.head(gw.url("/echo")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(
        head.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 0
    );

    let interim = http.get(gw.url("/interim")).send().await.unwrap();
    assert_eq!(interim.status(), 200);
    assert_eq!(interim.text().await.unwrap(), "ok");

    // After all of that, one raw connection: framing stayed in step, and the request upstream
    // carries the forwarding fields but no hop-by-hop ones.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let mut pending = Vec::new();
    for path in ["/chunked", "/echo?x=1"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: fast.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.9.8.7\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        if path == "/chunked" {
            // Not a Content-Length response: read up to the end of the last chunk.
            loop {
                if find(&pending, b"0\r\nx-trailer: t\r\n\r\n").is_some() {
                    let end = find(&pending, b"0\r\nx-trailer: t\r\n\r\n").unwrap() + 19;
                    pending.drain(..end);
                    break;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                pending.extend_from_slice(&chunk[..n]);
            }
            continue;
        }
        let (head, body) = read_response(&mut stream, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");
        let seen = body.to_ascii_lowercase();
        assert!(seen.starts_with("get /echo?x=1 http/1.1\r\n"), "{body}");
        assert!(
            seen.contains("x-forwarded-for: 10.9.8.7, 127.0.0.1\r\n"),
            "{body}"
        );
        assert!(seen.contains("x-forwarded-proto: http\r\n"), "{body}");
        assert!(seen.contains("x-forwarded-host: fast.test\r\n"), "{body}");
        assert!(
            !seen.contains("keep-alive"),
            "hop-by-hop field forwarded: {body}"
        );
    }
    // Upstream connections were kept and reused (the close-delimited one is not reusable).
    let opened = up.connections.load(Ordering::SeqCst);
    assert!(opened <= 6, "{opened} upstream connections for 9 requests");
}

#[tokio::test]
async fn pipelined_requests_then_connection_close() {
    let up = RawUpstream::start(Mode::KeepAlive).await;
    let gw = gateway(&up, "").await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let three: String = (1..=3)
        .map(|i| format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect();
    stream.write_all(three.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    for i in 1..=3 {
        let (head, body) = read_response(&mut stream, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.starts_with(&format!("GET /p{i} ")), "{body}");
    }
    stream
        .write_all(
            b"POST /last HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody",
        )
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream, &mut pending).await;
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(body.ends_with("\r\n\r\nbody"), "{body}");
    assert_closed(&mut stream, "the gateway closes after `Connection: close`").await;
}

#[tokio::test]
async fn a_request_it_does_not_take_goes_to_pingora_on_the_same_connection() {
    // The hyper upstream understands chunked request bodies; the raw one does not need to.
    let up = Upstream::start("h").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", up.instance());
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let mut pending = Vec::new();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A chunked request body: pingora's.
    stream
        .write_all(b"POST /second HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/second");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_never_fails_a_request() {
    // No retries: only the stale-connection handling can save these requests.
    let up = RawUpstream::start(Mode::CloseAfterEach).await;
    let gw = gateway(&up, "retries = 0\n").await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..6 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let request = format!("{method} /r{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut stream, &mut pending).await;
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "request {i}: {head}{body}"
        );
        assert!(body.starts_with(&format!("{method} /r{i} ")), "{body}");
        // The upstream has closed this connection before the next request goes out (on
        // loopback its FIN is at the gateway's socket then): the check before each reuse
        // must see it, and the POSTs, which may not be sent twice, depend on it.
        let closed = &up.closed;
        sluice_tests::eventually("the upstream's close", Duration::from_secs(5), || async {
            (closed.load(Ordering::SeqCst) > i).then_some(())
        })
        .await;
    }
    let metrics = gw.metrics().await;
    assert!(!metrics.contains("status=\"502\""), "{metrics}");
}

#[tokio::test]
async fn an_idempotent_request_the_upstream_dropped_is_retried_on_another_instance() {
    let dropper = RawUpstream::start(Mode::DropRequests).await;
    let good = RawUpstream::start(Mode::KeepAlive).await;
    let services = format!(
        "[services.svc]\ninstances = [{{ id = \"dropper\", addr = \"{}\" }}, {{ id = \"good\", addr = \"{}\" }}]\n",
        dropper.addr, good.addr
    );
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nretries = 1\n",
        &services,
    )
    .await;
    let http = client();
    for i in 0..8 {
        let get = http.get(gw.url(&format!("/g{i}"))).send().await.unwrap();
        assert_eq!(get.status(), 200, "GET is retried");
    }
    // Round-robin: every other POST lands on the dropper first, and is not repeated.
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..8 {
        let post = http.post(gw.url("/p")).body("x").send().await.unwrap();
        match post.status().as_u16() {
            200 => ok += 1,
            502 => bad += 1,
            other => panic!("POST answered {other}"),
        }
    }
    assert!(ok > 0 && bad > 0, "{ok} POSTs passed, {bad} answered 502");
}

#[tokio::test]
async fn with_the_fast_path_off_pingora_serves_everything() {
    let up = RawUpstream::start(Mode::KeepAlive).await;
    let gw = Gateway::start_with_proxy(
        "fast_path = false",
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &up.services(),
    )
    .await;
    let http = client();
    let echo = http.get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(echo.status(), 200);
    assert!(echo
        .text()
        .await
        .unwrap()
        .to_ascii_lowercase()
        .contains("x-forwarded-proto: http"));
    let chunked = http.get(gw.url("/chunked")).send().await.unwrap();
    assert_eq!(chunked.text().await.unwrap(), "hello world");
    // Both requests were pingora's: the access log says so, and nothing was handed off.
    let log = eventually_access_lines(&gw, 2).await;
    assert!(
        log.iter().all(|l| l.contains("via=\"pingora\"")),
        "{log:#?}"
    );
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("sluice_fast_path_handoffs_total{"),
        "{metrics}"
    );
}

/// The access lines once at least `n` are written.
async fn eventually_access_lines(gw: &Gateway, n: usize) -> Vec<String> {
    sluice_tests::eventually("access lines", Duration::from_secs(5), || async {
        let lines: Vec<String> = gw
            .log()
            .lines()
            .filter(|l| l.contains("sluice::access"))
            .map(str::to_string)
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn the_access_log_names_the_path_and_every_handoff_is_counted_by_reason() {
    let up = RawUpstream::start(Mode::KeepAlive).await;
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/api\"\nservice = \"svc\"\n",
        &up.services(),
    )
    .await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = get(&mut stream, &mut pending, "/api/fast").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // HTTP/1.0 goes to pingora; an unrouted path is the engine's 404, on the fast path.
    for (raw, status) in [
        (&b"GET /api/old HTTP/1.0\r\nHost: x\r\n\r\n"[..], "200"),
        (
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "404",
        ),
    ] {
        let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
    }
    let log = eventually_access_lines(&gw, 3).await;
    let via = |path: &str| {
        log.iter()
            .find(|l| {
                l.contains(&format!("path=\"{path}\"")) || l.contains(&format!("path={path}"))
            })
            .map(|l| l.contains("via=\"fast\""))
            .unwrap_or_else(|| panic!("no access line for {path}: {log:#?}"))
    };
    assert!(via("/api/fast"), "{log:#?}");
    assert!(!via("/api/old"), "{log:#?}");
    assert!(via("/nowhere"), "{log:#?}");
    let metrics = gw.metrics().await;
    for needle in [
        "sluice_fast_path_handoffs_total{reason=\"http10\"} 1",
        "sluice_fast_path_handoffs_total{reason=\"not_plain_http\"} 0",
        "sluice_fast_path_handoffs_total{reason=\"upgrade\"} 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_response_in_flight_when_the_gateway_stops_says_connection_close() {
    let up = Upstream::start("slow").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", up.instance());
    let mut gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"GET /slow?sleep_ms=800 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The stop comes while the upstream holds the request.
    sluice_tests::eventually("the request upstream", Duration::from_secs(5), || async {
        (up.hits() == 1).then_some(())
    })
    .await;
    gw.signal("TERM");
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut stream, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_closed(&mut stream, "closed after the response").await;
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await, Some(0));
}

/// Asserts that the gateway closes `stream` (within 5 s) without sending anything more.
async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "{what}");
}

/// Sends a GET for `path` on `stream` and reads its response head and body.
async fn get(stream: &mut TcpStream, pending: &mut Vec<u8>, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream, pending).await
}

#[tokio::test]
async fn each_request_on_a_kept_connection_gets_its_own_timeout() {
    // The connection's requests share one timer: it must move to each request's due time,
    // later (a request still running at an earlier one's due time) and earlier (a route with a
    // shorter timeout than the request before).
    let up = RawUpstream::start(Mode::KeepAlive).await;
    let routes = "[[routes]]\npath_prefix = \"/short\"\nservice = \"svc\"\ntimeout = \"300ms\"\n\
                  retries = 0\n\n[[routes]]\npath_prefix = \"/long\"\nservice = \"svc\"\n\
                  timeout = \"5s\"\nretries = 0\n\n[[routes]]\npath_prefix = \"/\"\n\
                  service = \"svc\"\ntimeout = \"1s\"\nretries = 0\n";
    let gw = Gateway::start(routes, &up.services()).await;

    // Requests at 0, 0.4 and 0.8 s; the last takes 0.5 s, past the first one's due time.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let mut pending = Vec::new();
    for path in ["/a", "/b"] {
        let (head, _) = get(&mut stream, &mut pending, path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (head, _) = get(&mut stream, &mut pending, "/c/sleep/500").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // After a request on a 5 s route, one on a 300 ms route: 504 at 300 ms, not at 5 s.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = get(&mut stream, &mut pending, "/long/a").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = std::time::Instant::now();
    let (head, body) = get(&mut stream, &mut pending, "/short/sleep/8000").await;
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(body.contains("timed out"), "{body}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "timed out after {took:?}"
    );
}
