//! The Grafana dashboard in `docs/grafana-dashboard.json`: a real Prometheus (Debian
//! `prometheus`) scrapes a real gateway serving traffic that touches every family (a TLS
//! listener, health checks, an ejected instance, retries, 5xx answers, filter rejections,
//! request bodies), and every query of every panel and template variable must return data.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::prometheus::Prometheus;
use sluice_tests::{client, free_port, Ca, Gateway, Upstream};

/// What Grafana would put in for the dashboard's variables.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$service", ".*")
        .replace("$job", ".*")
}

/// `label_values(METRIC, LABEL)` (a Grafana variable query) as PromQL.
fn label_values_query(query: &str) -> String {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {query}"));
    let (metric, label) = inner.split_once(',').unwrap();
    format!("count by ({}) ({})", label.trim(), metric.trim())
}

/// Whether a query result holds at least one series with a number (not NaN).
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut queries = 0;
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {panel}"
        );
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                !expr.contains("instance=~") && !expr.contains("instance=\""),
                "{expr}"
            );
            queries += 1;
        }
    }
    assert!(queries >= 25, "{queries} queries");
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let leaf = ca.server("gw", &["gw.example"]);
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let (dead, also_dead) = (free_port(), free_port());
    let services = format!(
        "[services.svc]\ninstances = [{}, {}]\n\n\
         [services.flaky]\ninstances = [{}, {{ id = \"dead\", addr = \"127.0.0.1:{dead}\" }}]\n\n\
         [services.down]\ninstances = [{{ id = \"gone\", addr = \"127.0.0.1:{also_dead}\" }}]\n",
        a.instance(),
        b.instance(),
        c.instance()
    );
    let tls_port = free_port();
    let tls = format!(
        "tls = {{ listen = [\"127.0.0.1:{tls_port}\"], certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
        leaf.cert.display(),
        leaf.key.display()
    );
    let rest = "[filters.keys]\nkind = \"key-auth\"\nconsumers = [{ name = \"alice\", key = \"alice-secret-key\" }]\n\n\
        [services.svc]\nhealth_check = { path = \"/health\", interval = \"200ms\", timeout = \"150ms\" }\n\n\
        [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nservice = \"svc\"\n\n\
        [[routes]]\nname = \"secure\"\npath_prefix = \"/secure\"\nservice = \"svc\"\nfilters = [\"keys\"]\n\n\
        [[routes]]\nname = \"flaky\"\npath_prefix = \"/flaky\"\nservice = \"flaky\"\nretries = 1\n\n\
        [[routes]]\nname = \"broken\"\npath_prefix = \"/broken\"\nservice = \"down\"\nretries = 0\n";
    let gw = Gateway::start_with_proxy(&tls, rest, &services).await;
    let prometheus = Prometheus::scraping(gw.admin).await;

    // Traffic over several scrapes: every family gets samples that move.
    let http = client();
    let until = Instant::now() + Duration::from_secs(6);
    let mut sent = 0;
    while Instant::now() < until && sent < 3_000 {
        let api = http.get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(api.status(), 200);
        let posted = http.post(gw.url("/api/p")).body("some body").send().await;
        assert_eq!(posted.unwrap().status(), 200);
        assert_eq!(
            http.get(gw.url("/flaky/x")).send().await.unwrap().status(),
            200
        );
        assert_eq!(
            http.get(gw.url("/secure/x")).send().await.unwrap().status(),
            401
        );
        assert_eq!(
            http.get(gw.url("/broken/x")).send().await.unwrap().status(),
            502
        );
        sent += 5;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Picks are timed one in 64 per thread: go on until Prometheus saw timed picks move.
    sluice_tests::eventually("timed picks scraped", Duration::from_secs(20), || async {
        for _ in 0..20 {
            let _ = http.get(gw.url("/api/more")).send().await;
        }
        let moved = prometheus
            .query("sum(increase(sluice_strategy_pick_duration_seconds_count[30s])) > 0")
            .await
            .ok()?;
        (!moved.is_empty()).then_some(())
    })
    .await;
    sluice_tests::eventually("eight scrapes in all", Duration::from_secs(10), || async {
        (prometheus.scrapes().await >= 8).then_some(())
    })
    .await;

    let mut failures = Vec::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = as_grafana_sends(target["expr"].as_str().unwrap());
            checked += 1;
            match prometheus.query(&expr).await {
                Ok(result) if has_data(&result) => {}
                Ok(result) => {
                    failures.push(format!("{}: {expr}: no data {result:?}", panel["title"]))
                }
                Err(e) => failures.push(format!("{}: {expr}: {e}", panel["title"])),
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let expr = label_values_query(variable["query"]["query"].as_str().unwrap());
        checked += 1;
        match prometheus.query(&expr).await {
            Ok(result) if !result.is_empty() => {}
            other => failures.push(format!("variable {}: {expr}: {other:?}", variable["name"])),
        }
    }
    if !failures.is_empty() {
        let metrics = gw.metrics().await;
        let shown: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("pick_duration_seconds_count") || l.contains("ejection"))
            .collect();
        let log = gw.log();
        let ejections: Vec<&str> = log.lines().filter(|l| l.contains("eject")).collect();
        panic!(
            "{} of {checked} queries returned nothing:\n{}\n\nthe gateway's metrics now:\n{}\n{}\n\nprometheus log:\n{}",
            failures.len(),
            failures.join("\n"),
            shown.join("\n"),
            ejections.join("\n"),
            prometheus.log()
        );
    }
    assert!(checked >= 27, "{checked}");
}
