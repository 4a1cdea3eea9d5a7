//! A real HTTP/1.1 upstream on loopback that answers with its id, the path it saw and the
//! headers it got; `?sleep_ms=N` delays the answer, `?status=N` sets the status, and a path
//! ending in `/fail` drops the connection without answering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub id: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    forced_status: Arc<std::sync::atomic::AtomicU16>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}
impl std::error::Error for Dropped {}

fn query_param(query: &str, name: &str) -> Option<u64> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(
    id: Arc<str>,
    hits: Arc<AtomicUsize>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    forced: Arc<std::sync::atomic::AtomicU16>,
    delay: Arc<std::sync::atomic::AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    if req.uri().path() == "/health" {
        let status = if healthy.load(Ordering::Relaxed) {
            200
        } else {
            503
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health\n")))
            .expect("valid response"));
    }
    hits.fetch_add(1, Ordering::Relaxed);
    match delay.load(Ordering::Relaxed) {
        0 => {}
        ms => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(ms) = query_param(&query, "sleep_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req.uri().path().ends_with("/fail") {
        return Err(Dropped);
    }
    // Repeated fields as one list (RFC 9110 5.3), so a test sees each of them.
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("");
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(list)) => *list = format!("{list}, {v}"),
            _ => {
                headers.insert(k.to_string(), v.into());
            }
        }
    }
    let body = serde_json::json!({
        "id": &*id,
        "path": req.uri().path(),
        "query": query,
        "method": req.method().as_str(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let status = match forced.load(Ordering::Relaxed) {
        0 => query_param(&query, "status").unwrap_or(200) as u16,
        forced => forced,
    };
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream-id", &*id);
    // `respond_header=NAME:VALUE` (repeatable, `%20` for a space): fields the response
    // carries, for tests of what the gateway does to an upstream's response.
    for kv in query.split('&') {
        if let Some((name, value)) = kv
            .strip_prefix("respond_header=")
            .and_then(|nv| nv.split_once(':'))
        {
            response = response.header(name, value.replace("%20", " "));
        }
    }
    let response = response
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response");
    Ok(response)
}

impl Upstream {
    /// Starts an upstream with this id on a free loopback port.
    pub async fn start(id: &str) -> Self {
        Self::start_on(id, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts an upstream with this id on `addr`.
    pub async fn start_on(id: &str, addr: SocketAddr) -> Self {
        Self::start_with(id, addr, None).await
    }

    /// Starts an HTTPS upstream (HTTP/1.1 or HTTP/2 by ALPN) with this certificate.
    pub async fn start_tls(id: &str, leaf: &crate::Leaf) -> Self {
        Self::start_with(
            id,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(leaf.acceptor(&[b"h2", b"http/1.1"])),
        )
        .await
    }

    async fn start_with(
        id: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let name: Arc<str> = id.into();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let health = healthy.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let open_now = open.clone();
        let forced_status = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let forced = forced_status.clone();
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let name = name.clone();
                let hits = counter.clone();
                let health = health.clone();
                let forced = forced.clone();
                let delay = delay.clone();
                let open_now = open_now.clone();
                open_now.fetch_add(1, Ordering::Relaxed);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        handle(
                            name.clone(),
                            hits.clone(),
                            health.clone(),
                            forced.clone(),
                            delay.clone(),
                            req,
                        )
                    });
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                            }
                        }
                    }
                    open_now.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Self {
            id: id.to_string(),
            addr,
            hits,
            connections,
            open,
            healthy,
            forced_status,
            delay_ms,
            task,
        }
    }

    /// Requests this upstream has received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// What `GET /health` answers: 200 when healthy, 503 when not.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Answers every request (but `/health`) with `status`; 0 goes back to normal.
    pub fn force_status(&self, status: u16) {
        self.forced_status.store(status, Ordering::Relaxed);
    }

    /// Delays every answer (but `/health`) by `ms` before anything else.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// TCP connections open right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// TCP connections this upstream has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// The instance line for a services file.
    pub fn instance(&self) -> String {
        format!("{{ id = \"{}\", addr = \"{}\" }}", self.id, self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
