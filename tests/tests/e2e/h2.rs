//! HTTP/2 clients (h2c by prior knowledge, and h2 by ALPN over TLS) in front of HTTP/1.1
//! instances, through the fast path's HTTP/2 driver: many streams at once on one connection
//! each get their own answer; request bodies arrive whole with their length; a chunked
//! response arrives decoded; a large response crosses HTTP/2 flow control; `Cookie` fields
//! are joined for HTTP/1.1; filters edit heads as on HTTP/1.1; failures get the gateway's
//! answers; and the streams the driver does not take (a large or undeclared body) are
//! served by pingora on the same connection. The suite holds on both request paths
//! (`SLUICE_TEST_FAST_PATH=false`) but for the test that names the path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sluice_tests::{free_port, Ca, Gateway};
use tokio::net::TcpListener;

const ROUTES: &str = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n";
const BIG: usize = 300_000;

/// An HTTP/1.1 upstream (hyper) that shows what it was sent: `/echo` answers the request
/// body with `x-seen-*` fields (method, length, host, cookie, version); `/chunked?n=N`
/// answers N pieces with no length (chunked); `/big` a large body with a length.
struct BodyUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BodyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn seen(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let response = Response::builder().header("x-upstream", "body");
    let response = match path.as_str() {
        "/chunked" => {
            let n: usize = query
                .strip_prefix("n=")
                .and_then(|n| n.parse().ok())
                .unwrap_or(3);
            let pieces = (0..n)
                .map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("piece-{i}\n")))));
            response.body(StreamBody::new(futures_util::stream::iter(pieces)).boxed())
        }
        "/big" => response.body(Full::new(Bytes::from(vec![b'x'; BIG])).boxed()),
        _ => {
            let response = response
                .header("x-seen-method", req.method().as_str())
                .header("x-seen-length", seen(&req, "content-length"))
                .header("x-seen-host", seen(&req, "host"))
                .header("x-seen-cookie", seen(&req, "cookie"))
                .header("x-seen-version", format!("{:?}", req.version()))
                .header("x-seen-path", format!("{path}?{query}"));
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            response.body(Full::new(body.unwrap_or_default()).boxed())
        }
    };
    Ok(response.expect("valid response"))
}

impl BodyUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(handle))
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    fn services(&self) -> String {
        format!(
            "[services.svc]\ninstances = [{{ id = \"body\", addr = \"{}\" }}]\n",
            self.addr
        )
    }
}

fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn fast_path_on() -> bool {
    std::env::var("SLUICE_TEST_FAST_PATH").map_or(true, |v| v != "false")
}

#[tokio::test]
async fn many_streams_at_once_on_one_connection_each_get_their_own_answer() {
    let up = BodyUpstream::start().await;
    let gw = Gateway::start(ROUTES, &up.services()).await;
    let client = h2c();
    let calls = (0..64).map(|i| {
        let (client, url) = (client.clone(), gw.url(&format!("/s/{i}?q={i}")));
        async move {
            let body = format!("body of stream {i}");
            let resp = client.post(url).body(body.clone()).send().await.unwrap();
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            let h = resp.headers().clone();
            assert_eq!(h["x-seen-path"], format!("/s/{i}?q={i}"));
            assert_eq!(h["x-seen-method"], "POST");
            assert_eq!(h["x-seen-version"], "HTTP/1.1");
            assert_eq!(h["x-seen-length"], body.len().to_string());
            assert_eq!(resp.text().await.unwrap(), body);
        }
    });
    futures_util::future::join_all(calls).await;
}

#[tokio::test]
async fn the_authority_is_the_host_and_cookies_are_joined_for_http1() {
    let up = BodyUpstream::start().await;
    let gw = Gateway::start(ROUTES, &up.services()).await;
    // Two `cookie` fields, as HTTP/2 clients split them (RFC 9113 8.2.3).
    let mut headers = reqwest::header::HeaderMap::new();
    headers.append("cookie", "a=1".parse().unwrap());
    headers.append("cookie", "b=2".parse().unwrap());
    let resp = h2c()
        .get(gw.url("/echo"))
        .headers(headers)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-seen-cookie"], "a=1; b=2");
    assert_eq!(h["x-seen-host"], gw.proxy.to_string());
    // No body, none declared.
    assert_eq!(h["x-seen-length"], "");
}

#[tokio::test]
async fn a_chunked_response_arrives_decoded_and_a_large_one_whole() {
    let up = BodyUpstream::start().await;
    let gw = Gateway::start(ROUTES, &up.services()).await;
    let client = h2c();
    let resp = client.get(gw.url("/chunked?n=50")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("transfer-encoding").is_none());
    let expected: String = (0..50).map(|i| format!("piece-{i}\n")).collect();
    assert_eq!(resp.text().await.unwrap(), expected);
    // Larger than HTTP/2's initial window: sent as the client's flow control allows.
    let resp = client.get(gw.url("/big")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], BIG.to_string());
    assert_eq!(resp.bytes().await.unwrap().len(), BIG);
    // A HEAD: the head alone.
    let resp = client.head(gw.url("/big")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_large_body_and_a_body_of_unknown_length_are_served_too() {
    let up = BodyUpstream::start().await;
    let gw = Gateway::start(ROUTES, &up.services()).await;
    let client = h2c();
    let big = vec![b'y'; BIG];
    let resp = client
        .post(gw.url("/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), BIG);
    // A streamed body: no content-length on the HTTP/2 request.
    let pieces =
        (0..10).map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("part-{i};")))));
    let resp = client
        .post(gw.url("/echo"))
        .body(reqwest::Body::wrap(StreamBody::new(
            futures_util::stream::iter(pieces),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected: String = (0..10).map(|i| format!("part-{i};")).collect();
    assert_eq!(resp.text().await.unwrap(), expected);
    if fast_path_on() {
        let metrics = gw.metrics().await;
        for needle in [
            "sluice_fast_path_handoffs_total{reason=\"large_body\"} 1",
            "sluice_fast_path_handoffs_total{reason=\"chunked_body\"} 1",
        ] {
            assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
        }
    }
}

#[tokio::test]
async fn filters_edit_the_heads_and_failures_get_the_gateways_answers() {
    let up = BodyUpstream::start().await;
    let routes = r#"
[[routes]]
path_prefix = "/"
service = "svc"
filters = ["hdrs"]

[[routes]]
path_prefix = "/down"
service = "down"

[filters.hdrs]
kind = "headers"
request = { set = { "x-from-filter" = "1" }, remove = ["cookie"] }
response = { set = { "x-edited" = "yes" }, remove = ["x-upstream"] }
"#;
    let services = format!(
        "{}[services.down]\ninstances = [{{ id = \"gone\", addr = \"127.0.0.1:{}\" }}]\n",
        up.services(),
        free_port()
    );
    let gw = Gateway::start(routes, &services).await;
    let client = h2c();
    let resp = client
        .get(gw.url("/echo"))
        .header("cookie", "secret=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-edited"], "yes");
    assert!(h.get("x-upstream").is_none(), "{h:?}");
    assert_eq!(h["x-seen-cookie"], "");
    let resp = client.get(gw.url("/down/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-sluice-error"], "1");
    assert!(resp.text().await.unwrap().starts_with("sluice:"));
}

#[tokio::test]
async fn h2_by_alpn_over_tls_is_served_by_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let leaf = ca.server("a", &["a.example"]);
    let up = BodyUpstream::start().await;
    let port = free_port();
    let tls = format!(
        "tls = {{ listen = [\"127.0.0.1:{port}\"], certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
        leaf.cert.display(),
        leaf.key.display()
    );
    let gw = Gateway::start_with_proxy(&tls, ROUTES, &up.services()).await;
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca.cert).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .resolve("a.example", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://a.example:{port}/echo");
    let resp = client.post(&url).body("over tls").send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "over tls");
    if fast_path_on() {
        let log = sluice_tests::eventually("the access line", Duration::from_secs(5), || async {
            gw.log()
                .lines()
                .find(|l| l.contains("sluice::access") && l.contains("/echo"))
                .map(str::to_string)
        })
        .await;
        assert!(log.contains("via=\"fast\""), "{log}");
    }
}
