//! The in-flight count of an instance goes up once per attempt and down exactly once, on every
//! path: success, upstream error, timeout, client abort, retry on another instance.

use std::time::Duration;

use sluice_tests::{client, eventually, free_port, Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn one_instance(route_extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", up.instance());
    let routes = format!("[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n{route_extra}");
    let gw = Gateway::start(&routes, &services).await;
    (up, gw)
}

fn picks(svc: &serde_json::Value, id: &str) -> u64 {
    svc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .unwrap()["picks"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn success_path() {
    let (_up, gw) = one_instance("").await;
    let http = client();
    for _ in 0..5 {
        assert_eq!(http.get(gw.url("/ok")).send().await.unwrap().status(), 200);
    }
    let svc = gw.wait_in_flight_zero("svc").await;
    assert_eq!(picks(&svc, "a"), 5);
}

#[tokio::test]
async fn upstream_error_path_is_502() {
    let (_up, gw) = one_instance("retries = 0\n").await;
    let resp = client().get(gw.url("/x/fail")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-sluice-error"],
        "1",
        "the gateway's own answer"
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("svc"), "{body}");
    let svc = gw.wait_in_flight_zero("svc").await;
    assert_eq!(picks(&svc, "a"), 1);
    assert!(
        svc["instances"][0]["consecutive_failures"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn refused_connection_is_retried_on_another_instance() {
    let up = Upstream::start("alive").await;
    let dead_port = free_port();
    let services = format!(
        "[services.svc]\ninstances = [{}, {{ id = \"dead\", addr = \"127.0.0.1:{dead_port}\" }}]\n",
        up.instance()
    );
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nretries = 1\n",
        &services,
    )
    .await;
    let http = client();
    for _ in 0..10 {
        let resp = http
            .post(gw.url("/p"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "connect failures are retried elsewhere, even for POST"
        );
    }
    let svc = gw.wait_in_flight_zero("svc").await;
    assert_eq!(picks(&svc, "alive"), 10);
    assert!(
        picks(&svc, "dead") >= 1,
        "the dead one was tried and failed over"
    );
}

#[tokio::test]
async fn timeout_path_is_504() {
    let (_up, gw) = one_instance("timeout = \"300ms\"\nretries = 0\n").await;
    let resp = client()
        .get(gw.url("/slow?sleep_ms=2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.headers()["x-sluice-error"],
        "1",
        "the gateway's own answer"
    );
    assert!(resp.text().await.unwrap().contains("timed out"));
    gw.wait_in_flight_zero("svc").await;
}

#[tokio::test]
async fn connect_timeout_is_504_and_not_counted_in_the_route_timeout() {
    // A listener whose accept queue is full and never drained: the kernel drops further SYNs,
    // so a connect to it hangs until the gateway's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(1).unwrap();
    let mut queued = Vec::new();
    for _ in 0..3 {
        let stream = tokio::net::TcpSocket::new_v4().unwrap().connect(addr);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), stream).await {
            queued.push(s);
        }
    }
    let services =
        format!("[services.svc]\ninstances = [{{ id = \"full\", addr = \"{addr}\" }}]\n");
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nretries = 0\ntimeout = \"5s\"\n\n\
         [services.svc]\nconnect_timeout = \"300ms\"\n",
        &services,
    )
    .await;
    let started = std::time::Instant::now();
    let resp = client().get(gw.url("/c")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-sluice-error"], "1");
    assert!(resp.text().await.unwrap().contains("timed out"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "connect_timeout, not the 5 s route timeout: {took:?}"
    );
    drop((listener, queued));
}

#[tokio::test]
async fn client_abort_path() {
    let (_up, gw) = one_instance("").await;
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"GET /slow?sleep_ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("request in flight", Duration::from_secs(5), || async {
        (gw.instance("svc", "a").await?["requests_in_flight"] == 1).then_some(())
    })
    .await;
    drop(stream); // the client goes away mid-request; the upstream would answer only in 20 s
    gw.wait_in_flight_zero("svc").await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"status="499"} 1"#),
        "abort counted as 499:\n{metrics}"
    );
    // Counted, not logged as an error: a client leaving is not the gateway's failure (on
    // pingora's path, which logs "Fail to proxy" for real failures: SLUICE_TEST_FAST_PATH).
    let log = eventually("the access line", Duration::from_secs(5), || async {
        let log = gw.log();
        log.contains("status=499").then_some(log)
    })
    .await;
    assert!(!log.contains("Fail to proxy"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn an_http2_client_that_cancels_is_a_499_not_an_error() {
    let (_up, gw) = one_instance("").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // The client gives up after 300 ms: its stream is reset (RST_STREAM CANCEL).
    assert!(h2.get(gw.url("/slow?sleep_ms=3000")).send().await.is_err());
    gw.wait_in_flight_zero("svc").await;
    let log = eventually("the access line", Duration::from_secs(5), || async {
        let log = gw.log();
        log.contains("status=499").then_some(log)
    })
    .await;
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn pipelined_keepalive_requests_each_count_once() {
    let (_up, gw) = one_instance("").await;
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let svc = gw.wait_in_flight_zero("svc").await;
    assert_eq!(picks(&svc, "a"), 3);
}

#[tokio::test]
async fn total_timeout_bounds_the_request_below_the_per_try_timeout() {
    let (_up, gw) = one_instance("timeout = \"5s\"\ntotal_timeout = \"400ms\"\n").await;
    let started = std::time::Instant::now();
    let resp = client()
        .get(gw.url("/slow?sleep_ms=2000"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        took < Duration::from_millis(1500),
        "bounded by total_timeout, took {took:?}"
    );
    gw.wait_in_flight_zero("svc").await;
}
