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
