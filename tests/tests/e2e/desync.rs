//! Request smuggling and response desync, tried from outside as an attacker or a broken
//! upstream would: raw bytes to the gateway, a recording upstream that writes exact (and
//! hostile) bytes, on both request paths. What must hold: an ambiguous request is refused
//! and never reaches the upstream; bytes an upstream leaves after a response never reach
//! another request; a malformed response is never relayed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_tests::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response that looks like the answer to another request: the poison.
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";

/// An upstream that records every byte it receives and answers by path with exact bytes.
struct Recorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    /// Late writes (bytes sent a moment after a complete response) done so far.
    late: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bytes the upstream writes for a request, and what it does after.
fn script(method: &str, path: &str) -> (Vec<u8>, Option<&'static [u8]>) {
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let raw = |bytes: &[u8]| bytes.to_vec();
    match path {
        // A complete response, then a second one a moment later.
        "/late" => (ok("late"), Some(POISON)),
        // Both in one write.
        "/late-same-write" => ([ok("late"), POISON.to_vec()].concat(), None),
        "/head-body" if method == "HEAD" => (raw(POISON), None),
        "/204-body" => (
            [b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), POISON.to_vec()].concat(),
            None,
        ),
        "/304-body" => (
            [
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\n".to_vec(),
                POISON.to_vec(),
            ]
            .concat(),
            None,
        ),
        "/chunked-bare-lf" => (
            raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            None,
        ),
        "/chunked-size-junk" => (
            raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 garbage\r\nhello\r\n0\r\n\r\n"),
            None,
        ),
        "/chunked-cr-junk" => (
            raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\rX\nhello\r\n0\r\n\r\n"),
            None,
        ),
        // A good first chunk, then a malformed one later (after the head went out).
        "/chunked-late-junk" => (
            raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            Some(b"5\nworld\r\n0\r\n\r\n"),
        ),
        "/length-and-chunked" => (
            raw(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            None,
        ),
        "/conflicting-lengths" => (
            raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
            None,
        ),
        "/equal-lengths" => (
            raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
            None,
        ),
        "/obs-fold" => (
            raw(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok"),
            None,
        ),
        "/space-before-colon" => (
            raw(b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"),
            None,
        ),
        _ => (ok(&format!("{method} {path}")), None),
    }
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let late = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (log, late_writes) = (received.clone(), late.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone(), late_writes.clone()));
            }
        });
        Self {
            addr,
            received,
            late,
            task,
        }
    }

    fn services(&self) -> String {
        format!(
            "[services.svc]\ninstances = [{{ id = \"rec\", addr = \"{}\" }}]\n",
            self.addr
        )
    }

    /// Everything received so far, as text.
    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<u8>>>,
    late: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        buf.drain(..head_end + length);
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("").to_string();
        let path = words.next().unwrap_or("").to_string();
        let (first, later) = script(&method, &path);
        if stream.write_all(&first).await.is_err() {
            return;
        }
        if let Some(later) = later {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if stream.write_all(later).await.is_err() {
                return;
            }
            late.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn gateway_made(&self) -> bool {
        self.head.to_ascii_lowercase().contains("x-sluice-error: 1")
    }
}

/// Reads one response (Content-Length, chunked or until close) from `stream`; `None` when the
/// connection closed or stalled before a complete response.
async fn read_answer(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_request: bool,
) -> Option<Answer> {
    let read = async {
        let head_end = loop {
            if let Some(i) = find(pending, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            pending.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).to_string();
        pending.drain(..head_end);
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let lower = head.to_ascii_lowercase();
        let length = lower.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let no_body = head_request || status == 204 || status == 304 || status < 200;
        let end = if no_body {
            Some(0)
        } else if lower.contains("transfer-encoding: chunked") {
            // Read until the last chunk's blank line.
            loop {
                if let Some(i) = find(pending, b"0\r\n\r\n") {
                    break Some(i + 5);
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&chunk[..n]);
            }
        } else {
            length
        };
        let body = match end {
            Some(end) => {
                while pending.len() < end {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    pending.extend_from_slice(&chunk[..n]);
                }
                pending.drain(..end).collect()
            }
            None => {
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.ok()?;
                pending.extend_from_slice(&rest);
                std::mem::take(pending)
            }
        };
        Some(Answer { status, head, body })
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// Sends `raw` on a new connection and reads one answer.
async fn exchange(gw: &Gateway, raw: &[u8]) -> (TcpStream, Option<Answer>) {
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let head_request = raw.starts_with(b"HEAD ");
    let mut pending = Vec::new();
    let answer = read_answer(&mut stream, &mut pending, head_request).await;
    (stream, answer)
}

async fn get(gw: &Gateway, method: &str, path: &str) -> Option<Answer> {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    exchange(gw, raw.as_bytes()).await.1
}

/// A gateway in front of a recorder, on the fast path or on pingora's; one shard, so every
/// request shares one upstream connection pool.
async fn gateway(fast_path: bool) -> (Gateway, Recorder) {
    let up = Recorder::start().await;
    let proxy = format!("threads = 1\nfast_path = {fast_path}");
    let routes = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nretries = 0\n";
    let gw = Gateway::start_with_proxy(&proxy, routes, &up.services()).await;
    (gw, up)
}

/// Requests whose framing or routing could be read two ways: each must be answered by the
/// gateway (4xx or 501) and nothing of it may reach the upstream.
const AMBIGUOUS_REQUESTS: &[&[u8]] = &[
    b"GET /a HTTP/1.1\r\nHost: \xff\xfe\r\nHost: x\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: user@x\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 30\r\n\r\nx",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 30\r\n\r\nx",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\nx",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx",
    b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length : 1\r\n\r\nx",
    b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\nx",
    b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
];

async fn ambiguous_requests_are_refused_and_never_forwarded(fast_path: bool) {
    let (gw, up) = gateway(fast_path).await;
    for raw in AMBIGUOUS_REQUESTS {
        let shown = String::from_utf8_lossy(raw);
        let (_, answer) = exchange(&gw, raw).await;
        if let Some(answer) = &answer {
            assert!(
                (400..500).contains(&answer.status) || answer.status == 501,
                "{shown}: answered {answer:?}"
            );
        }
        // Whatever the answer (or a close), the upstream saw nothing.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(up.received(), "", "{shown} reached the upstream");
    }
    // The gateway still serves.
    let ok = get(&gw, "GET", "/after").await.expect("an answer");
    assert_eq!((ok.status, ok.body()), (200, "GET /after".to_string()));
}

#[tokio::test]
async fn ambiguous_requests_are_refused_and_never_forwarded_fast_path() {
    ambiguous_requests_are_refused_and_never_forwarded(true).await;
}

#[tokio::test]
async fn ambiguous_requests_are_refused_and_never_forwarded_pingora() {
    ambiguous_requests_are_refused_and_never_forwarded(false).await;
}

#[tokio::test]
async fn the_fast_path_answers_ambiguous_requests_itself() {
    let (gw, _up) = gateway(true).await;
    for raw in AMBIGUOUS_REQUESTS {
        let (mut stream, answer) = exchange(&gw, raw).await;
        let answer =
            answer.unwrap_or_else(|| panic!("{}: no answer", String::from_utf8_lossy(raw)));
        assert!(answer.gateway_made(), "{answer:?}");
        assert!(
            answer.body().starts_with("sluice: bad request"),
            "{answer:?}"
        );
        // And the connection closes: what follows the head cannot be framed.
        let mut rest = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(raw));
    }
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("sluice_requests_total{route=\"\""),
        "{metrics}"
    );
}

async fn forwarded_requests_are_normalised(fast_path: bool) {
    let (gw, up) = gateway(fast_path).await;
    let raw = b"POST /n HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: 5\r\nConnection: close\r\n\r\nok";
    let (_, answer) = exchange(&gw, raw).await;
    let upstream_saw = up.received().to_ascii_lowercase();
    match answer {
        // Both paths may either collapse the equal lengths or refuse them (RFC 9110 8.6).
        Some(a) if a.status == 200 => {
            assert_eq!(
                upstream_saw.matches("content-length").count(),
                1,
                "{upstream_saw}"
            );
            assert!(!upstream_saw.contains("x-hop"), "{upstream_saw}");
            assert!(!upstream_saw.contains("keep-alive: 5"), "{upstream_saw}");
            assert!(upstream_saw.ends_with("\r\n\r\nok"), "{upstream_saw}");
        }
        Some(a) => {
            assert_eq!(a.status, 400, "{a:?}");
            assert_eq!(upstream_saw, "");
        }
        None => panic!("no answer"),
    }
}

#[tokio::test]
async fn forwarded_requests_are_normalised_fast_path() {
    forwarded_requests_are_normalised(true).await;
    // The fast path collapses: it must have forwarded.
    let (gw, up) = gateway(true).await;
    let raw = b"POST /n HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    let (_, answer) = exchange(&gw, raw).await;
    assert_eq!(answer.map(|a| a.status), Some(200));
    assert!(up.received().contains("content-length: 2\r\n"));
}

#[tokio::test]
async fn forwarded_requests_are_normalised_pingora() {
    forwarded_requests_are_normalised(false).await;
}

/// Upstream paths that leave bytes over after a complete response.
const LEAVE_BYTES_OVER: &[(&str, &str)] = &[
    ("GET", "/late"),
    ("GET", "/late-same-write"),
    ("HEAD", "/head-body"),
    ("GET", "/204-body"),
    ("GET", "/304-body"),
];

async fn leftover_bytes_never_reach_the_next_client(fast_path: bool) {
    let (gw, up) = gateway(fast_path).await;
    for round in 0..3 {
        for (method, path) in LEAVE_BYTES_OVER {
            let late_before = up.late.load(std::sync::atomic::Ordering::SeqCst);
            let first = get(&gw, method, path).await.expect("an answer");
            assert!(
                !first.body().contains("POISON"),
                "{method} {path}: {first:?}"
            );
            // The late bytes are on the pooled connection before the next request.
            if *path == "/late" {
                sluice_tests::eventually("the late write", Duration::from_secs(5), || async {
                    (up.late.load(std::sync::atomic::Ordering::SeqCst) > late_before).then_some(())
                })
                .await;
            }
            for method in ["GET", "HEAD"] {
                let next_path = format!("/next/{round}");
                let next = get(&gw, method, &next_path).await.expect("an answer");
                assert_eq!(next.status, 200, "after {path}: {next:?}");
                if method == "GET" {
                    assert_eq!(next.body(), format!("GET {next_path}"), "after {path}");
                } else {
                    assert!(next.body.is_empty(), "after {path}: {next:?}");
                }
            }
        }
    }
}

#[tokio::test]
async fn leftover_bytes_never_reach_the_next_client_fast_path() {
    leftover_bytes_never_reach_the_next_client(true).await;
}

#[tokio::test]
async fn leftover_bytes_never_reach_the_next_client_pingora() {
    leftover_bytes_never_reach_the_next_client(false).await;
}

async fn malformed_responses_are_not_relayed(fast_path: bool) {
    let (gw, _up) = gateway(fast_path).await;
    for path in [
        "/chunked-bare-lf",
        "/chunked-size-junk",
        "/chunked-cr-junk",
        "/conflicting-lengths",
    ] {
        // Either a 502 of the gateway's own, or a connection that ends without a complete
        // response: never the upstream's malformed bytes as a response.
        if let Some(answer) = get(&gw, "GET", path).await {
            assert_eq!(answer.status, 502, "{path}: {answer:?}");
            assert!(!answer.body().contains("hello"), "{path}: {answer:?}");
        }
        let next = get(&gw, "GET", "/next").await.expect("an answer");
        assert_eq!((next.status, next.body()), (200, "GET /next".to_string()));
    }
    // RFC 9112 5.2: a folded response field is refused (502) or unfolded with spaces, never
    // relayed folded.
    if let Some(answer) = get(&gw, "GET", "/obs-fold").await {
        assert!(
            answer.status == 502 || answer.head.contains("X-A: 1 folded\r\n"),
            "{answer:?}"
        );
    }
    // RFC 9112 5.1: whitespace before a response field's colon is refused (502) or removed.
    if let Some(answer) = get(&gw, "GET", "/space-before-colon").await {
        assert!(
            answer.status == 502 || answer.head.contains("\r\nContent-Length: 2\r\n"),
            "{answer:?}"
        );
    }
    // Content-Length with Transfer-Encoding: chunked wins (RFC 9112 6.3) and the length is
    // not forwarded; or the gateway refuses the response.
    if let Some(answer) = get(&gw, "GET", "/length-and-chunked").await {
        let head = answer.head.to_ascii_lowercase();
        assert!(
            answer.status == 502 || !head.contains("content-length"),
            "{answer:?}"
        );
    }
    // A malformed chunk after the head went out: the body is cut, never completed.
    let raw = b"GET /chunked-late-junk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(!text.contains("world"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
}

#[tokio::test]
async fn malformed_responses_are_not_relayed_fast_path() {
    malformed_responses_are_not_relayed(true).await;
}

#[tokio::test]
async fn malformed_responses_are_not_relayed_pingora() {
    malformed_responses_are_not_relayed(false).await;
}

#[tokio::test]
async fn equal_duplicate_response_lengths_reach_the_client_as_one() {
    let (gw, _up) = gateway(true).await;
    let answer = get(&gw, "GET", "/equal-lengths").await.expect("an answer");
    assert_eq!((answer.status, answer.body()), (200, "ok".to_string()));
    assert_eq!(
        answer
            .head
            .to_ascii_lowercase()
            .matches("content-length")
            .count(),
        1,
        "{}",
        answer.head
    );
}
