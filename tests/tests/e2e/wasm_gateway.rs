//! WASM strategies through the real gateway: hostile plugins cost no request, a strategy file
//! reloads under load with no failed request, `hash_on` feeds consistent hashing, and
//! `sluice plugin check` reports and refuses.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::{client, eventually, plugin, run_sluice, wat, Gateway, Load, Upstream};

async fn four_upstreams() -> (Vec<Upstream>, String) {
    let mut ups = Vec::new();
    for i in 0..4 {
        ups.push(Upstream::start(&format!("u{i}")).await);
    }
    let list: Vec<String> = ups.iter().map(|u| u.instance()).collect();
    let services = format!("[services.svc]\ninstances = [{}]\n", list.join(", "));
    (ups, services)
}

fn metric(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn strategies(gw: &Gateway) -> Value {
    gw.admin_json("/admin/strategies").await
}

#[tokio::test]
async fn hostile_plugins_cost_no_request() {
    let (_ups, services) = four_upstreams().await;
    let chaos = plugin("chaos");
    let out_of_range = wat("out_of_range");
    let mut config = String::new();
    for mode in ["trap", "loop", "grow"] {
        config += &format!(
            "[strategies.chaos-{mode}]\nwasm = \"{}\"\nconfig = {{ mode = \"{mode}\", when_n = 4 }}\n\n",
            chaos.display()
        );
    }
    config += &format!(
        "[strategies.chaos-out_of_range]\nwasm = \"{}\"\n\n",
        out_of_range.display()
    );
    for mode in ["trap", "loop", "grow", "out_of_range"] {
        config += &format!(
            "[[routes]]\npath_prefix = \"/{mode}\"\nservice = \"svc\"\nstrategy = \"chaos-{mode}\"\n\n"
        );
    }
    let gw = Gateway::start(&config, &services).await;
    let http = client();
    for (mode, reason) in [
        ("trap", "trap"),
        ("loop", "deadline"),
        ("grow", "deadline"),
        ("out_of_range", "out_of_range"),
    ] {
        for _ in 0..30 {
            let resp = http
                .get(gw.url(&format!("/{mode}/x")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                200,
                "{mode}: a hostile plugin never costs a request"
            );
        }
        let metrics = gw.metrics().await;
        let counted = metric(
            &metrics,
            &format!(
                "sluice_strategy_fallbacks_total{{reason=\"{reason}\",strategy=\"chaos-{mode}\"}}"
            ),
        );
        assert_eq!(
            counted, 30,
            "{mode}: every fallen-back request counted\n{metrics}"
        );
    }
    let view = strategies(&gw).await;
    let trap = view["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "chaos-trap")
        .unwrap();
    assert_eq!(trap["kind"], "wasm");
    assert_eq!(trap["state"], "active");
    assert_eq!(trap["fallbacks"]["trap"], 30);
    assert_eq!(trap["routes"][0], "/trap");
}

#[tokio::test]
async fn a_plugin_that_keeps_failing_is_disabled_end_to_end() {
    let (_ups, services) = four_upstreams().await;
    let config = format!(
        "[strategies.bad]\nwasm = \"{}\"\nconfig = {{ mode = \"trap\", when_n = 4 }}\n\n\
         [[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"bad\"\n",
        plugin("chaos").display()
    );
    let gw = Gateway::start(&config, &services).await;
    let http = client();
    for _ in 0..130 {
        assert_eq!(http.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    let view = strategies(&gw).await;
    let bad = view["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "bad")
        .unwrap()
        .clone();
    assert_eq!(bad["state"], "disabled", "{bad}");
    assert_eq!(bad["fallbacks"]["trap"], 100);
    assert_eq!(bad["fallbacks"]["disabled"], 30);
}

#[tokio::test]
async fn strategy_file_reloads_under_load_with_no_failed_request() {
    let (ups, services) = four_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("custom.wasm");
    std::fs::copy(plugin("round-robin"), &live).unwrap();
    let config = format!(
        "[strategies.custom]\nwasm = \"{}\"\n\n[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"custom\"\n",
        live.display()
    );
    let gw = Gateway::start(&config, &services).await;

    let load = Load::start(gw.url("/load"), 4, 100_000, Duration::from_secs(30));
    let generation = |gw: &Gateway| {
        let gw_admin = gw.admin_url("/admin/strategies");
        async move {
            let v: Value = client()
                .get(gw_admin)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["strategies"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "custom")?["generation"]
                .as_u64()
        }
    };
    assert_eq!(generation(&gw).await, Some(1));

    // A good new module (least-conn), written atomically: generation 2.
    let tmp = dir.path().join("custom.wasm.tmp");
    std::fs::copy(plugin("least-conn"), &tmp).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    eventually("reload to generation 2", Duration::from_secs(5), || async {
        (generation(&gw).await == Some(2)).then_some(())
    })
    .await;

    // A module that imports from WASI: refused, generation stays 2.
    std::fs::copy(wat("forbidden_import"), &tmp).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    eventually("refusal counted", Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        (metric(
            &m,
            "sluice_strategy_reloads_total{result=\"error\",strategy=\"custom\"}",
        ) == 1)
            .then_some(())
    })
    .await;
    assert!(
        gw.log()
            .contains("import wasi_snapshot_preview1.fd_write is not allowed"),
        "{}",
        gw.log()
    );
    // Garbage: refused too.
    std::fs::write(&tmp, b"not wasm at all").unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    eventually("second refusal counted", Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        (metric(
            &m,
            "sluice_strategy_reloads_total{result=\"error\",strategy=\"custom\"}",
        ) == 2)
            .then_some(())
    })
    .await;
    assert_eq!(generation(&gw).await, Some(2));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let report = load.stop().await;
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "sluice_strategy_reloads_total{result=\"ok\",strategy=\"custom\"}"
        ),
        1
    );
    assert!(report.sent > 100, "load ran: {report:?}");
    assert_eq!(report.failed, 0, "no request failed across reloads");
    assert!(ups.iter().all(|u| u.hits() > 0), "every instance served");
}

#[tokio::test]
async fn consistent_hash_on_a_header_is_sticky() {
    let (_ups, services) = four_upstreams().await;
    let config = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"consistent-hash\"\nhash_on = \"header:x-user\"\n";
    let gw = Gateway::start(config, &services).await;
    let http = client();
    let mut owners = HashSet::new();
    for user in 0..40 {
        let mut seen = HashSet::new();
        for _ in 0..5 {
            let r = http
                .get(gw.url("/"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            seen.insert(r.headers()["x-upstream-id"].to_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "user-{user} always lands on one instance");
        owners.extend(seen);
    }
    assert!(owners.len() >= 3, "users spread over instances: {owners:?}");
}

#[tokio::test]
async fn consistent_hash_on_the_path_and_on_the_client_ip() {
    let (_ups, services) = four_upstreams().await;
    let route = |hash_on: &str| {
        format!(
            "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n\
             strategy = \"consistent-hash\"\nhash_on = \"{hash_on}\"\n"
        )
    };
    let served_by =
        |r: reqwest::Response| r.headers()["x-upstream-id"].to_str().unwrap().to_string();

    // `path`: each path sticks to one instance; paths spread.
    let gw = Gateway::start(&route("path"), &services).await;
    let http = client();
    let mut owners = HashSet::new();
    for p in 0..40 {
        let mut seen = HashSet::new();
        for _ in 0..4 {
            let r = http
                .get(gw.url(&format!("/item/{p}")))
                .send()
                .await
                .unwrap();
            seen.insert(served_by(r));
        }
        assert_eq!(seen.len(), 1, "/item/{p} always lands on one instance");
        owners.extend(seen);
    }
    assert!(owners.len() >= 3, "paths spread over instances: {owners:?}");

    // `client_ip`: every request of this client (127.0.0.1), whatever its path, on one.
    let gw = Gateway::start(&route("client_ip"), &services).await;
    let mut seen = HashSet::new();
    for p in 0..40 {
        let r = http.get(gw.url(&format!("/any/{p}"))).send().await.unwrap();
        seen.insert(served_by(r));
    }
    assert_eq!(seen.len(), 1, "one client, one instance: {seen:?}");
}

#[tokio::test]
async fn p2c_ewma_on_a_route_keeps_traffic_off_a_slow_instance() {
    let (ups, services) = four_upstreams().await;
    ups[0].set_delay_ms(40);
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"p2c-ewma\"\n",
        &services,
    )
    .await;
    let http = client();
    for _ in 0..200 {
        assert_eq!(http.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    let slow = ups[0].hits();
    let fast: Vec<usize> = ups[1..].iter().map(Upstream::hits).collect();
    // Two random choices, the lower latency wins: the slow one only while its EWMA is young.
    assert!(
        slow < 20,
        "slow instance served {slow} of 200 (fast: {fast:?})"
    );
    assert!(
        fast.iter().all(|&n| n > 20),
        "fast instances share the rest: {fast:?}"
    );
}

#[tokio::test]
async fn wasm_least_conn_is_the_default_demo_strategy_and_listed() {
    let (_ups, services) = four_upstreams().await;
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"least-conn\"\n",
        &services,
    )
    .await;
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200
    );
    let view = strategies(&gw).await;
    let names: Vec<&str> = view["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for name in [
        "round-robin",
        "least-conn",
        "consistent-hash",
        "native-round-robin",
        "native-least-conn",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    let lc = view["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "least-conn")
        .unwrap();
    assert_eq!(
        (lc["kind"].as_str(), lc["source"].as_str()),
        (Some("wasm"), Some("builtin:least-conn"))
    );
}

#[test]
fn plugin_check_reports_and_refuses() {
    let out = run_sluice(&[
        "plugin",
        "check",
        plugin("round-robin").to_str().unwrap(),
        "--picks",
        "3000",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ABI v1 ok, probe ok"), "{stdout}");
    assert!(
        stdout.contains("n=16") && stdout.contains("ns/pick"),
        "{stdout}"
    );
    // weights 100, 50: exact 2:1 over 3000 picks.
    assert!(stdout.contains("[2000, 1000]"), "{stdout}");

    let out = run_sluice(&["plugin", "check", wat("forbidden_import").to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused: import wasi_snapshot_preview1.fd_write is not allowed"),
        "{stderr}"
    );

    let out = run_sluice(&[
        "plugin",
        "check",
        plugin("chaos").to_str().unwrap(),
        "--config",
        r#"{"mode":"loop"}"#,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missed its deadline"));
}
