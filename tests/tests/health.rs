//! Active health checks through the real gateway: a sick instance leaves rotation within
//! interval × unhealthy_after + 1 s and comes back when healthy; `wait_first` holds a new
//! instance back until its first pass; checks are counted.

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sluice_tests::{client, eventually, Gateway, Upstream};

fn services(ups: &[&Upstream]) -> String {
    let list: Vec<String> = ups.iter().map(|u| u.instance()).collect();
    format!("[services.svc]\ninstances = [{}]\n", list.join(", "))
}

async fn served(gw: &Gateway, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let r = client().get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        seen.insert(r.headers()["x-upstream-id"].to_str().unwrap().to_string());
    }
    seen
}

const CHECKED: &str = r#"
[services.svc]
health_check = { path = "/health", interval = "200ms", timeout = "150ms", healthy_after = 2, unhealthy_after = 2 }

[[routes]]
path_prefix = "/"
service = "svc"
strategy = "native-round-robin"
"#;

#[tokio::test]
async fn a_sick_instance_leaves_rotation_in_time_and_comes_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(CHECKED, &services(&[&a, &b])).await;
    eventually("both checked healthy", Duration::from_secs(3), || async {
        let a_ok = gw.instance("svc", "a").await?["health"] == "healthy";
        let b_ok = gw.instance("svc", "b").await?["health"] == "healthy";
        (a_ok && b_ok).then_some(())
    })
    .await;
    assert_eq!(served(&gw, 10).await.len(), 2);

    let sick_at = Instant::now();
    a.set_healthy(false);
    // interval × unhealthy_after + 1 s
    eventually(
        "a out of rotation",
        Duration::from_millis(200 * 2 + 1000),
        || async { (gw.instance("svc", "a").await?["health"] == "unhealthy").then_some(()) },
    )
    .await;
    eprintln!("ejected after {:?}", sick_at.elapsed());
    let view = gw.instance("svc", "a").await.unwrap();
    assert_eq!(view["eligible"], false);
    let hits = a.hits();
    assert_eq!(served(&gw, 20).await, HashSet::from(["b".to_string()]));
    assert_eq!(a.hits(), hits, "no request reached the sick instance");

    a.set_healthy(true);
    eventually("a readmitted", Duration::from_secs(3), || async {
        (gw.instance("svc", "a").await?["eligible"] == true).then_some(())
    })
    .await;
    assert_eq!(served(&gw, 10).await.len(), 2);

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("sluice_health_checks_total{result=\"fail\",service=\"svc\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_health_checks_total{result=\"pass\",service=\"svc\"}"),
        "{metrics}"
    );
    assert!(
        !gw.log().contains("not enforced"),
        "no warning for an enforced health_check"
    );
}

#[tokio::test]
async fn wait_first_holds_a_new_instance_until_it_passes() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    b.set_healthy(false);
    let config = CHECKED.replace(
        "unhealthy_after = 2 }",
        "unhealthy_after = 2, wait_first = true }",
    );
    let gw = Gateway::start(&config, &services(&[&a])).await;
    eventually(
        "a admitted after its first pass",
        Duration::from_secs(3),
        || async { (gw.instance("svc", "a").await?["eligible"] == true).then_some(()) },
    )
    .await;
    gw.write_services(&services(&[&a, &b]));
    eventually("b listed as pending", Duration::from_secs(3), || async {
        (gw.instance("svc", "b").await?["health"] == "pending").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        served(&gw, 20).await,
        HashSet::from(["a".to_string()]),
        "b waits"
    );
    assert_eq!(b.hits(), 0);

    b.set_healthy(true);
    eventually("b admitted", Duration::from_secs(3), || async {
        (gw.instance("svc", "b").await?["eligible"] == true).then_some(())
    })
    .await;
    assert_eq!(served(&gw, 10).await.len(), 2);
}
