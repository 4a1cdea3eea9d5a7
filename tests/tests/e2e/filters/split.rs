//! Traffic split and mirroring through the real gateway: each service with its own
//! upstreams, counted by the upstream that answered.

use sluice_tests::{client, metric, Gateway, Upstream};

fn services(stable: &[&Upstream], canary: &[&Upstream]) -> String {
    let list = |ups: &[&Upstream]| {
        ups.iter()
            .map(|u| u.instance())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[services.stable]\ninstances = [{}]\n\n[services.canary]\ninstances = [{}]\n",
        list(stable),
        list(canary)
    )
}

const SPLIT: &str = r#"
[[routes]]
path_prefix = "/"
service = "stable"
filters = ["canary"]

[filters.canary]
kind = "traffic-split"
to = [
  { service = "canary", match = { header = { "x-canary" = "1" } } },
  { service = "canary", weight = 10 },
]
"#;

#[tokio::test]
async fn a_90_10_split_and_a_header_pinned_canary() {
    let (s1, s2) = (Upstream::start("s1").await, Upstream::start("s2").await);
    let c1 = Upstream::start("c1").await;
    let gw = Gateway::start(SPLIT, &services(&[&s1, &s2], &[&c1])).await;
    let http = client();
    const N: usize = 2000;
    for _ in 0..N {
        let resp = http.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let canary = c1.hits();
    assert_eq!(canary + s1.hits() + s2.hits(), N);
    // 10 % of 2000 is 200; ±3 points of the total is ±60.
    assert!(
        (140..=260).contains(&canary),
        "canary served {canary} of {N}"
    );
    // Each service is balanced over its own pool.
    assert!(
        s1.hits() > 600 && s2.hits() > 600,
        "{} {}",
        s1.hits(),
        s2.hits()
    );

    // Pinned by the header: every one goes to the canary.
    let before = c1.hits();
    for _ in 0..50 {
        let resp = http
            .get(gw.url("/x"))
            .header("x-canary", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-upstream-id"], "c1");
    }
    assert_eq!(c1.hits() - before, 50);

    let m = gw.metrics().await;
    let served = |service: &str| {
        metric(
            &m,
            &format!("sluice_requests_total{{route=\"/\",service=\"{service}\",status=\"200\"}}"),
        )
        .unwrap_or(0.0) as usize
    };
    assert_eq!(served("canary"), canary + 50, "{m}");
    assert_eq!(served("stable"), N - canary, "{m}");
}

#[tokio::test]
async fn a_split_service_without_instances_is_a_503_naming_it() {
    let s1 = Upstream::start("s1").await;
    let services = format!("[services.stable]\ninstances = [{}]\n", s1.instance());
    let gw = Gateway::start(SPLIT, &services).await;
    let resp = client()
        .get(gw.url("/x"))
        .header("x-canary", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("\"canary\""), "{body}");
}

fn mirror_config(extra: &str) -> String {
    format!(
        r#"
[[routes]]
path_prefix = "/"
service = "stable"
filters = ["shadow"]

[filters.shadow]
kind = "mirror"
service = "canary"
{extra}
"#
    )
}

async fn mirrored(gw: &Gateway, result: &str) -> f64 {
    let m = gw.metrics().await;
    metric(
        &m,
        &format!("sluice_filter_mirrored_total{{filter=\"shadow\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A shadow that keeps what it was sent: each connection's bytes, read to the end of the
/// body its `content-length` declares, then a `200`.
async fn recording_shadow() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + length {
                            break;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&got).to_string());
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn mirrored_copies_of_posts_reach_the_shadow() {
    let stable = Upstream::start("s1").await;
    let (shadow, mut copies) = recording_shadow().await;
    let services = format!(
        "[services.stable]\ninstances = [{}]\n\n[services.canary]\ninstances = [{{ id = \"rec\", addr = \"{shadow}\" }}]\n",
        stable.instance()
    );
    let gw = Gateway::start(&mirror_config(""), &services).await;
    let http = client();
    for i in 0..20 {
        let resp = http
            .post(gw.url(&format!("/orders?i={i}")))
            .header("x-tenant", "acme")
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-upstream-id"],
            "s1",
            "the client's answer is the route's"
        );
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        let copy = tokio::time::timeout(std::time::Duration::from_secs(10), copies.recv())
            .await
            .expect("a copy within 10 s")
            .unwrap();
        seen.push(copy);
    }
    for i in 0..20 {
        let copy = seen
            .iter()
            .find(|c| c.starts_with(&format!("POST /orders?i={i} HTTP/1.1\r\n")))
            .unwrap_or_else(|| panic!("no copy of request {i}: {seen:#?}"));
        assert!(copy.contains("x-tenant: acme\r\n"), "{copy}");
        assert!(copy.contains("x-sluice-mirror: 1\r\n"), "{copy}");
        assert!(copy.ends_with(&format!("\r\n\r\n{{\"n\":{i}}}")), "{copy}");
    }
    sluice_tests::eventually(
        "copies counted",
        std::time::Duration::from_secs(10),
        || async { (mirrored(&gw, "sent").await == 20.0).then_some(()) },
    )
    .await;
    assert_eq!(stable.hits(), 20);
}

#[tokio::test]
async fn a_slow_or_dead_shadow_costs_the_client_nothing() {
    let stable = Upstream::start("s1").await;
    let slow = Upstream::start("slow").await;
    slow.set_delay_ms(3_000);
    let gw = Gateway::start(
        &mirror_config("max_in_flight = 4\ntimeout = \"10s\""),
        &services(&[&stable], &[&slow]),
    )
    .await;
    let http = client();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let resp = http.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Waiting on the shadow would take at least the four copies in flight x 3 s (20 x 3 s
    // without the cap); the copies are not waited for. The bound leaves room for a loaded
    // machine.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        mirrored(&gw, "skipped").await,
        16.0,
        "4 in flight, the rest skipped"
    );

    // A shadow nothing listens on: every copy fails, every client request is served.
    let dead = format!(
        "[services.stable]\ninstances = [{}]\n\n[services.canary]\ninstances = [{{ id = \"dead\", addr = \"127.0.0.1:{}\" }}]\n",
        stable.instance(),
        sluice_tests::free_port()
    );
    let gw = Gateway::start(&mirror_config(""), &dead).await;
    for _ in 0..10 {
        let resp = http.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    sluice_tests::eventually(
        "copies failed",
        std::time::Duration::from_secs(10),
        || async { (mirrored(&gw, "failed").await == 10.0).then_some(()) },
    )
    .await;
}
