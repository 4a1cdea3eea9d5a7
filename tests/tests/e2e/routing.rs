//! Routing, forwarding and balancing through the real gateway to real upstreams.

use std::collections::HashMap;

use serde_json::Value;
use sluice_tests::{client, Gateway, Upstream};

async fn get_json(url: &str, host: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn routes_by_longest_prefix_and_host_and_strips_prefix() {
    let users = Upstream::start("users-1").await;
    let admin = Upstream::start("admin-1").await;
    let api = Upstream::start("api-1").await;
    let root = Upstream::start("root-1").await;
    let services = format!(
        "[services.users]\ninstances = [{}]\n[services.admin]\ninstances = [{}]\n\
         [services.api]\ninstances = [{}]\n[services.root]\ninstances = [{}]\n",
        users.instance(),
        admin.instance(),
        api.instance(),
        root.instance()
    );
    let routes = r#"
[[routes]]
path_prefix = "/"
service = "root"

[[routes]]
path_prefix = "/users"
service = "users"
strip_prefix = true

[[routes]]
path_prefix = "/users/admin"
service = "admin"

[[routes]]
path_prefix = "/users"
hosts = ["api.example.com"]
service = "api"
"#;
    let gw = Gateway::start(routes, &services).await;

    let (status, body) = get_json(&gw.url("/users/42?x=1"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "users-1");
    assert_eq!(body["path"], "/42", "prefix stripped");
    assert_eq!(body["query"], "x=1", "query kept");

    let (_, body) = get_json(&gw.url("/users/admin/7"), None).await;
    assert_eq!(body["id"], "admin-1");
    assert_eq!(body["path"], "/users/admin/7", "no strip unless asked");

    let (_, body) = get_json(&gw.url("/users/42"), Some("api.example.com")).await;
    assert_eq!(body["id"], "api-1", "host-specific route wins");

    let (_, body) = get_json(&gw.url("/elsewhere"), None).await;
    assert_eq!(body["id"], "root-1");

    // X-Forwarded-* set, Host kept.
    let (_, body) = get_json(&gw.url("/elsewhere"), Some("shop.example.com:8080")).await;
    let headers = &body["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.example.com");
    assert_eq!(headers["host"], "shop.example.com:8080");
}

#[tokio::test]
async fn unknown_route_is_404_and_empty_service_is_503_naming_it() {
    let up = Upstream::start("a").await;
    let services = format!("[services.present]\ninstances = [{}]\n", up.instance());
    let routes = r#"
[[routes]]
path_prefix = "/present"
service = "present"

[[routes]]
path_prefix = "/ghost"
service = "ghost-svc"
"#;
    let gw = Gateway::start(routes, &services).await;
    let resp = client().get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers()["x-sluice-error"],
        "1",
        "the gateway's own answer"
    );
    assert!(resp.text().await.unwrap().contains("no route"));

    let resp = client().get(gw.url("/ghost/1")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["x-sluice-error"],
        "1",
        "the gateway's own answer"
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("ghost-svc"),
        "503 body names the service: {body}"
    );

    // Counted when the request ends, just after the client got its answer.
    sluice_tests::eventually("503 counted", std::time::Duration::from_secs(3), || async {
        let metrics = gw.metrics().await;
        metrics
            .contains(r#"sluice_requests_total{route="/ghost",service="ghost-svc",status="503"} 1"#)
            .then_some(())
    })
    .await;
}

async fn spread(strategy: &str) -> (HashMap<String, usize>, usize) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let zero = Upstream::start("zero").await;
    let down = Upstream::start("down").await;
    let drain = Upstream::start("drain").await;
    let services = format!(
        "[services.svc]\ninstances = [\n  {{ id = \"a\", addr = \"{}\", weight = 300 }},\n  \
         {{ id = \"b\", addr = \"{}\" }},\n  {{ id = \"zero\", addr = \"{}\", weight = 0 }},\n  \
         {{ id = \"down\", addr = \"{}\", status = \"DOWN\" }},\n  \
         {{ id = \"drain\", addr = \"{}\", status = \"DRAINING\" }},\n]\n",
        a.addr, b.addr, zero.addr, down.addr, drain.addr
    );
    let routes =
        format!("[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"{strategy}\"\n");
    let gw = Gateway::start(&routes, &services).await;
    let http = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let resp = http.get(gw.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-upstream-id"]
            .to_str()
            .unwrap()
            .to_string();
        *counts.entry(id).or_default() += 1;
    }
    let view = gw.instance("svc", "zero").await.unwrap();
    assert_eq!(view["eligible"], false);
    let view = gw.instance("svc", "drain").await.unwrap();
    assert_eq!(view["status"], "DRAINING");
    (counts, zero.hits() + down.hits() + drain.hits())
}

#[tokio::test]
async fn native_round_robin_spreads_exactly_by_weight_and_honours_weight_zero_and_status() {
    let (counts, ineligible_hits) = spread("native-round-robin").await;
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
    assert_eq!(ineligible_hits, 0, "{counts:?}");
}

#[tokio::test]
async fn wasm_round_robin_spreads_by_weight_and_honours_weight_zero_and_status() {
    // The plugin keeps its smooth state per worker thread: each thread is exact per cycle of 4,
    // so two threads together are off by at most one cycle position each.
    let (counts, ineligible_hits) = spread("round-robin").await;
    let a = counts.get("a").copied().unwrap_or(0);
    assert!((297..=303).contains(&a), "{counts:?}");
    assert_eq!(a + counts.get("b").copied().unwrap_or(0), 400, "{counts:?}");
    assert_eq!(ineligible_hits, 0, "{counts:?}");
}

#[tokio::test]
async fn least_conn_sends_new_requests_to_the_idle_instance() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let services = format!(
        "[services.svc]\ninstances = [{}, {}]\n",
        a.instance(),
        b.instance()
    );
    let routes = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"least-conn\"\n";
    let gw = Gateway::start(routes, &services).await;
    // Hold one slow request on whichever instance gets it.
    let slow = tokio::spawn({
        let url = gw.url("/slow?sleep_ms=1500");
        async move {
            client().get(url).send().await.unwrap().headers()["x-upstream-id"]
                .to_str()
                .unwrap()
                .to_string()
        }
    });
    let busy = sluice_tests::eventually(
        "a request in flight",
        std::time::Duration::from_secs(5),
        || async {
            for id in ["a", "b"] {
                if gw.instance("svc", id).await?["requests_in_flight"] == 1 {
                    return Some(id.to_string());
                }
            }
            None
        },
    )
    .await;
    let http = client();
    for _ in 0..20 {
        let resp = http.get(gw.url("/")).send().await.unwrap();
        let id = resp.headers()["x-upstream-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_ne!(id, busy, "least-conn avoids the busy instance");
    }
    assert_eq!(slow.await.unwrap(), busy);
}

#[tokio::test]
async fn h2c_downstream_is_served() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/over-h2")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["path"], "/over-h2");
}

#[tokio::test]
async fn admin_token_guards_everything_but_healthz() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start_with(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
        "token = \"s3cret\"",
    )
    .await;
    let http = client();
    assert_eq!(
        http.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in [
        "/metrics",
        "/readyz",
        "/admin/services",
        "/admin/strategies",
    ] {
        let resp = http.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} without token");
        let resp = http
            .get(gw.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} with a wrong token");
        let resp = http
            .get(gw.admin_url(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} with the token");
        // RFC 9110 11.1: the scheme is case-insensitive.
        let resp = http
            .get(gw.admin_url(path))
            .header("authorization", "bearer s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} with a lower-case scheme");
    }
}

#[tokio::test]
async fn metrics_families_are_exported() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start(
        "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await;
    for _ in 0..3 {
        client().get(gw.url("/")).send().await.unwrap();
    }
    let resp = client()
        .post(gw.url("/"))
        .body("eleven byte")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // pingora ends a request (and its in-flight count) just after the response reaches the
    // client: wait for that before reading the gauges.
    gw.wait_in_flight_zero("svc").await;
    let metrics = gw.metrics().await;
    for needle in [
        r#"sluice_requests_total{route="all",service="svc",status="200"} 4"#,
        r#"sluice_request_duration_seconds_count{route="all",service="svc"} 4"#,
        r#"sluice_upstream_requests_in_flight{instance_id="a",service="svc"} 0"#,
        r#"sluice_upstream_picks_total{instance_id="a",service="svc"} 4"#,
        r#"sluice_upstream_healthy{instance_id="a",service="svc"} 1"#,
        r#"sluice_request_bytes_total{route="all",service="svc"} 11"#,
        r#"sluice_pool_instances{service="svc",state="eligible"} 1"#,
        r#"sluice_pool_swaps_total{service="svc"} 1"#,
        r#"sluice_registry_events_total{kind="reset",source="file"} 1"#,
        concat!(
            r#"sluice_build_info{version=""#,
            env!("CARGO_PKG_VERSION"),
            r#""} 1"#
        ),
        r#"sluice_upstream_duration_seconds_count{route="all",service="svc"} 4"#,
        r#"sluice_upstream_retries_total{route="all",service="svc"} 0"#,
        r#"sluice_response_bytes_total{route="all",service="svc"} "#,
        "sluice_downstream_connections_total ",
        "sluice_downstream_connections_open ",
        r#"sluice_config_reloads_total{result="ok"} 0"#,
        r#"sluice_config_reloads_total{result="error"} 0"#,
        "sluice_config_last_reload_successful 1",
        "sluice_config_last_reload_success_timestamp_seconds ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_max_fds ",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // The gateway raised its open-files limit to the hard one it inherited from this test.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap();
    assert!(
        metrics.contains(&format!("process_max_fds {hard}")),
        "process_max_fds is not the hard limit {hard}:\n{metrics}"
    );
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await;
    let http = client();
    for _ in 0..50 {
        assert_eq!(http.get(gw.url("/k")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.hits(), 50);
    // Sequential requests over two worker threads: at most one connection per thread.
    assert!(
        a.connections() <= 2,
        "{} upstream connections for 50 requests",
        a.connections()
    );
}

#[tokio::test]
async fn access_log_as_json() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start_full(
        "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
        "",
        "json",
    )
    .await;
    client().get(gw.url("/logged?x=1")).send().await.unwrap();
    let line =
        sluice_tests::eventually("access line", std::time::Duration::from_secs(3), || async {
            gw.log()
                .lines()
                .find(|l| l.contains("sluice::access"))
                .map(str::to_string)
        })
        .await;
    let entry: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/logged");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "r");
    assert_eq!(entry["service"], "svc");
    assert_eq!(entry["instance"], "a");
    assert_eq!(entry["upstream"], a.addr.to_string());
    assert!(entry["total_ms"].as_f64().unwrap() > 0.0);
    assert!(entry["bytes_sent"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn work_stealing_serves_through_one_shared_runtime_on_pingoras_path() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let services = format!(
        "[services.svc]\ninstances = [{}, {}]\n",
        a.instance(),
        b.instance()
    );
    let gw = Gateway::start_with_proxy(
        "work_stealing = true",
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"native-round-robin\"\n",
        &services,
    )
    .await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(http.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (10, 10),
        "round-robin across the shared runtime"
    );
    // The fast path needs shards: every request went through pingora's proxy.
    let log = sluice_tests::eventually(
        "access lines",
        std::time::Duration::from_secs(5),
        || async {
            let log = gw.log();
            (log.matches("sluice::access").count() >= 20).then_some(log)
        },
    )
    .await;
    assert_eq!(log.matches("via=\"pingora\"").count(), 20, "{log}");
    gw.wait_in_flight_zero("svc").await;
}

#[tokio::test]
async fn routes_match_by_method_and_header_with_the_documented_precedence() {
    let reads = Upstream::start("reads").await;
    let writes = Upstream::start("writes").await;
    let acme = Upstream::start("acme").await;
    let services = format!(
        "[services.reads]\ninstances = [{}]\n[services.writes]\ninstances = [{}]\n\
         [services.acme]\ninstances = [{}]\n",
        reads.instance(),
        writes.instance(),
        acme.instance()
    );
    // File order is the opposite of precedence: more conditions win at equal prefix length.
    let rest = r#"
[[routes]]
path_prefix = "/api"
service = "reads"

[[routes]]
path_prefix = "/api"
service = "writes"
methods = ["post", "PUT"]

[[routes]]
path_prefix = "/api"
service = "acme"
methods = ["POST"]
headers = { "X-Tenant" = "acme" }

[[routes]]
path_prefix = "/api/admin"
service = "reads"
methods = ["DELETE"]
"#;
    let gw = Gateway::start(rest, &services).await;
    let http = client();
    let id = |resp: reqwest::Response| {
        let status = resp.status().as_u16();
        let id = resp
            .headers()
            .get("x-upstream-id")
            .map(|v| v.to_str().unwrap().to_string());
        (status, id)
    };
    let at = |path: &str| gw.url(path);
    let r = http.get(at("/api/x")).send().await.unwrap();
    assert_eq!(id(r), (200, Some("reads".into())));
    let r = http.post(at("/api/x")).send().await.unwrap();
    assert_eq!(id(r), (200, Some("writes".into())));
    let r = http.put(at("/api/x")).send().await.unwrap();
    assert_eq!(id(r), (200, Some("writes".into())));
    let r = http
        .post(at("/api/x"))
        .header("x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(id(r), (200, Some("acme".into())));
    // The header's value is exact: another tenant is an ordinary POST.
    let r = http
        .post(at("/api/x"))
        .header("x-tenant", "Acme")
        .send()
        .await
        .unwrap();
    assert_eq!(id(r), (200, Some("writes".into())));
    // The longer prefix wins first, but only for its method; anything else falls back.
    let r = http.delete(at("/api/admin/1")).send().await.unwrap();
    assert_eq!(id(r), (200, Some("reads".into())));
    let r = http.patch(at("/api/admin/1")).send().await.unwrap();
    assert_eq!(id(r), (200, Some("reads".into())), "the /api catch-all");
    assert_eq!(writes.hits(), 3);
    assert_eq!(acme.hits(), 1);
}
