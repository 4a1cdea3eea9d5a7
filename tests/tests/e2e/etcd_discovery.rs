//! etcd discovery end to end: a real etcd started by the harness, the real gateway, real
//! upstreams. Registrations, leases, status changes, bad values, outages, compaction, churn.

use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use sluice_tests::{client, eventually, metric, Etcd, Gateway, Load, Relay, Upstream};

const ROUTE: &str =
    "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"least-conn\"\n";

fn value(up: &Upstream, extra: &str) -> String {
    format!("{{\"addr\":\"{}\"{extra}}}", up.addr)
}

async fn served_by(gw: &Gateway) -> Option<String> {
    let r = client().get(gw.url("/")).send().await.ok()?;
    (r.status() == 200).then(|| r.headers()["x-upstream-id"].to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_registration_is_routed_within_a_second_and_a_delete_removes_it() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", ROUTE).await;
    let mut c = etcd.client().await.unwrap();
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        503
    );

    let put_at = Instant::now();
    c.put(
        "/services/svc/a",
        value(&a, ",\"version\":\"1.4.2\",\"tags\":[\"canary\"]"),
        None,
    )
    .await
    .unwrap();
    eventually("a routed within 1 s", Duration::from_secs(1), || async {
        (served_by(&gw).await.as_deref() == Some("a")).then_some(())
    })
    .await;
    eprintln!("put -> first routed request: {:?}", put_at.elapsed());
    let view = gw.instance("svc", "a").await.unwrap();
    assert_eq!(view["version"], "1.4.2");
    assert_eq!(view["tags"][0], "canary");

    c.delete("/services/svc/a", None).await.unwrap();
    eventually("a removed", Duration::from_secs(2), || async {
        gw.instance("svc", "a").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        503
    );
    // Both moves are in the log, for the operator.
    let log = gw.log();
    let joined = log
        .lines()
        .any(|l| l.contains("instance joined") && l.contains("instance=a"));
    let left = log
        .lines()
        .any(|l| l.contains("instance left") && l.contains("instance=a"));
    assert!(joined && left, "{log}");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "sluice_registry_connected{source=\"etcd\"}"),
        Some(1.0)
    );
    assert!(
        metric(
            &metrics,
            "sluice_registry_events_total{kind=\"upsert\",source=\"etcd\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "sluice_registry_events_total{kind=\"remove\",source=\"etcd\"}"
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn lease_revoke_and_expiry_remove_instances() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", ROUTE).await;
    let mut c = etcd.client().await.unwrap();
    let long = c.lease_grant(60, None).await.unwrap().id();
    let short = c.lease_grant(2, None).await.unwrap().id();
    c.put(
        "/services/svc/a",
        value(&a, ""),
        Some(PutOptions::new().with_lease(long)),
    )
    .await
    .unwrap();
    c.put(
        "/services/svc/b",
        value(&b, ""),
        Some(PutOptions::new().with_lease(short)),
    )
    .await
    .unwrap();
    eventually("both registered", Duration::from_secs(2), || async {
        (gw.instance("svc", "a").await.is_some() && gw.instance("svc", "b").await.is_some())
            .then_some(())
    })
    .await;
    // b's lease is never kept alive: it expires.
    eventually("b expired", Duration::from_secs(10), || async {
        gw.instance("svc", "b").await.is_none().then_some(())
    })
    .await;
    c.lease_revoke(long).await.unwrap();
    eventually("a revoked", Duration::from_secs(2), || async {
        gw.instance("svc", "a").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn maintenance_stops_new_traffic_while_a_slow_request_finishes() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // Round-robin, not least-conn: least-conn alone would keep new requests off the busy
    // instance, and the test would pass whether or not MAINTENANCE did anything.
    let round_robin =
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"native-round-robin\"\n";
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", round_robin).await;
    let mut c = etcd.client().await.unwrap();
    c.put("/services/svc/a", value(&a, ""), None).await.unwrap();
    c.put("/services/svc/b", value(&b, ""), None).await.unwrap();
    eventually("both eligible", Duration::from_secs(2), || async {
        let svc = gw.services().await;
        (svc["services"][0]["eligible"] == 2).then_some(())
    })
    .await;
    let slow = tokio::spawn({
        let url = gw.url("/slow?sleep_ms=1500");
        async move {
            let r = client().get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers()["x-upstream-id"].to_str().unwrap().to_string(),
            )
        }
    });
    let busy = eventually("slow request in flight", Duration::from_secs(3), || async {
        for id in ["a", "b"] {
            if gw.instance("svc", id).await?["requests_in_flight"] == 1 {
                return Some(id.to_string());
            }
        }
        None
    })
    .await;
    let busy_up = if busy == "a" { &a } else { &b };
    c.put(
        format!("/services/svc/{busy}"),
        value(busy_up, ",\"status\":\"MAINTENANCE\""),
        None,
    )
    .await
    .unwrap();
    eventually("MAINTENANCE applied", Duration::from_secs(2), || async {
        (gw.instance("svc", &busy).await?["status"] == "MAINTENANCE").then_some(())
    })
    .await;
    let hits_before = busy_up.hits();
    for _ in 0..20 {
        let id = served_by(&gw).await.unwrap();
        assert_ne!(id, busy, "no new request to the instance in maintenance");
    }
    assert_eq!(busy_up.hits(), hits_before);
    let (status, id) = slow.await.unwrap();
    assert_eq!(
        (status, id.as_str()),
        (200, busy.as_str()),
        "the request in flight finished"
    );
}

#[tokio::test]
async fn a_malformed_value_is_skipped_and_counted() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", ROUTE).await;
    let mut c = etcd.client().await.unwrap();
    c.put("/services/svc/a", value(&a, ""), None).await.unwrap();
    c.put("/services/svc/broken", "{\"addr\":", None)
        .await
        .unwrap();
    c.put("/services/svc/noaddr", "{\"weight\":5}", None)
        .await
        .unwrap();
    eventually("bad values counted", Duration::from_secs(2), || async {
        let m = gw.metrics().await;
        (metric(&m, "sluice_registry_decode_errors_total{source=\"etcd\"}") == Some(2.0))
            .then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(served_by(&gw).await.as_deref(), Some("a"));
    }
    let svc = gw.services().await;
    assert_eq!(svc["services"][0]["instances"].as_array().unwrap().len(), 1);
    let log = gw.log();
    assert!(
        log.contains("/services/svc/broken"),
        "logged with its key:\n{log}"
    );
    assert_eq!(
        log.matches("registry value skipped").count(),
        2,
        "once per key:\n{log}"
    );
}

#[tokio::test]
async fn etcd_down_keeps_serving_and_the_watch_resumes_after_restart() {
    let mut etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", ROUTE).await;
    etcd.client()
        .await
        .unwrap()
        .put("/services/svc/a", value(&a, ""), None)
        .await
        .unwrap();
    eventually("a routed", Duration::from_secs(2), || async {
        (served_by(&gw).await.as_deref() == Some("a")).then_some(())
    })
    .await;

    etcd.kill();
    wait_disconnected(&gw).await;
    for _ in 0..20 {
        assert_eq!(
            served_by(&gw).await.as_deref(),
            Some("a"),
            "last known pool keeps serving"
        );
    }

    etcd.resume().await;
    etcd.client()
        .await
        .unwrap()
        .put("/services/svc/b", value(&b, ""), None)
        .await
        .unwrap();
    eventually(
        "watch resumed: b routed",
        Duration::from_secs(10),
        || async { gw.instance("svc", "b").await.map(|_| ()) },
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_registry_connected{source=\"etcd\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn compaction_while_disconnected_relists_and_converges() {
    let etcd = Etcd::start().await;
    let relay = Relay::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start_etcd(&relay.endpoint(), "", ROUTE).await;
    let mut c = etcd.client().await.unwrap();
    c.put("/services/svc/a", value(&a, ""), None).await.unwrap();
    eventually("a routed", Duration::from_secs(2), || async {
        (served_by(&gw).await.as_deref() == Some("a")).then_some(())
    })
    .await;

    relay.cut();
    wait_disconnected(&gw).await;
    // While the gateway cannot see etcd: a leaves, b joins, churn, then compact it all away.
    c.delete("/services/svc/a", None).await.unwrap();
    for i in 0..20 {
        c.put(format!("/services/svc/tmp-{i}"), value(&b, ""), None)
            .await
            .unwrap();
        c.delete(format!("/services/svc/tmp-{i}"), None)
            .await
            .unwrap();
    }
    let last = c.put("/services/svc/b", value(&b, ""), None).await.unwrap();
    let revision = last.header().unwrap().revision();
    c.compact(revision, None).await.unwrap();
    assert_eq!(
        served_by(&gw).await.as_deref(),
        Some("a"),
        "still the last known pool"
    );

    relay.restore();
    eventually("converged on b", Duration::from_secs(15), || async {
        let svc = gw.services().await;
        let ids: Vec<String> = svc["services"][0]["instances"]
            .as_array()?
            .iter()
            .map(|i| i["id"].as_str().unwrap_or("").to_string())
            .collect();
        (ids == ["b"]).then_some(())
    })
    .await;
    assert_eq!(served_by(&gw).await.as_deref(), Some("b"));
}

#[tokio::test]
async fn churn_under_load_costs_no_request() {
    let etcd = Etcd::start().await;
    let mut ups = Vec::new();
    for i in 0..4 {
        ups.push(Upstream::start(&format!("u{i}")).await);
    }
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", ROUTE).await;
    let mut c = etcd.client().await.unwrap();
    for u in &ups {
        c.put(format!("/services/svc/{}", u.id), value(u, ""), None)
            .await
            .unwrap();
    }
    eventually("all registered", Duration::from_secs(3), || async {
        (gw.services().await["services"][0]["eligible"] == 4).then_some(())
    })
    .await;

    let load = Load::start(gw.url("/churn"), 4, 100_000, Duration::from_secs(20));
    // u2 and u3 leave and rejoin every 100 ms for 3 s; u0 and u1 stay.
    let started = Instant::now();
    let mut flips = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for u in &ups[2..] {
            c.delete(format!("/services/svc/{}", u.id), None)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for u in &ups[2..] {
            c.put(format!("/services/svc/{}", u.id), value(u, ""), None)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        flips += 1;
    }
    let report = load.stop().await;
    let sent = report.sent;
    eprintln!("{sent} requests during {flips} leave/rejoin cycles");
    assert!(
        flips >= 10 && sent > 200,
        "churn and load ran: {flips} cycles, {sent} requests"
    );
    assert_eq!(report.failed, 0, "no request failed during churn");
    let swaps = metric(
        &gw.metrics().await,
        "sluice_pool_swaps_total{service=\"svc\"}",
    )
    .unwrap();
    assert!(swaps >= 20.0, "pools were swapped under load: {swaps}");
}

#[tokio::test]
async fn a_restart_while_etcd_is_down_serves_the_last_known_instances() {
    let mut etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/sluice-state.json");
    let extra = format!("state_file = \"{}\"", state.display());
    let gw = Gateway::start_etcd_in(dir, &etcd.endpoint(), &extra, ROUTE, true).await;
    etcd.client()
        .await
        .unwrap()
        .put("/services/svc/a", value(&a, ",\"weight\":7"), None)
        .await
        .unwrap();
    eventually(
        "state file written with a",
        Duration::from_secs(5),
        || async {
            let text = std::fs::read_to_string(&state).ok()?;
            text.contains(&a.addr.to_string()).then_some(())
        },
    )
    .await;

    // Stop etcd, then restart the gateway: it must serve a from the state file.
    etcd.kill();
    let dir = gw.into_dir();
    let gw = Gateway::start_etcd_in(dir, &etcd.endpoint(), &extra, ROUTE, false).await;
    eventually(
        "serving from the state file",
        Duration::from_secs(5),
        || async { (served_by(&gw).await.as_deref() == Some("a")).then_some(()) },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(served_by(&gw).await.as_deref(), Some("a"));
    }
    assert_eq!(gw.instance("svc", "a").await.unwrap()["weight"], 7);
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready until the first real sync");
    assert!(
        gw.log().contains("last known instances loaded"),
        "{}",
        gw.log()
    );

    // etcd comes back with a changed registry: the first sync replaces the saved state.
    let b = Upstream::start("b").await;
    etcd.resume().await;
    let mut c = etcd.client().await.unwrap();
    c.delete("/services/svc/a", None).await.unwrap();
    c.put("/services/svc/b", value(&b, ""), None).await.unwrap();
    eventually("synced: b replaces a", Duration::from_secs(15), || async {
        let ready = client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .ok()?
            .status()
            == 200;
        (ready
            && served_by(&gw).await.as_deref() == Some("b")
            && gw.instance("svc", "a").await.is_none())
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn etcd_over_tls_with_client_certificates() {
    let etcd = Etcd::start_tls().await;
    let tls = etcd.tls.clone().unwrap();
    let a = Upstream::start("a").await;
    let extra = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let gw = Gateway::start_etcd(&etcd.endpoint(), &extra, ROUTE).await;
    etcd.client()
        .await
        .unwrap()
        .put("/services/svc/a", value(&a, ""), None)
        .await
        .unwrap();
    eventually(
        "a routed over a TLS watch",
        Duration::from_secs(3),
        || async { (served_by(&gw).await.as_deref() == Some("a")).then_some(()) },
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_registry_connected{source=\"etcd\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn etcd_with_username_and_password() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let mut c = etcd.client().await.unwrap();
    c.put("/services/svc/a", value(&a, ""), None).await.unwrap();
    let _ = c.role_add("root").await; // may exist already
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    let gw = Gateway::start_etcd(
        &etcd.endpoint(),
        "username = \"root\"\npassword = \"rootpw\"",
        ROUTE,
    )
    .await;
    eventually(
        "a routed with credentials",
        Duration::from_secs(3),
        || async { (served_by(&gw).await.as_deref() == Some("a")).then_some(()) },
    )
    .await;
}

/// Waits until the gateway reports etcd as not connected (`sluice_registry_connected` 0).
async fn wait_disconnected(gw: &Gateway) {
    eventually("etcd disconnected", Duration::from_secs(10), || async {
        let m = gw.metrics().await;
        (metric(&m, "sluice_registry_connected{source=\"etcd\"}") == Some(0.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_request_to_a_fresh_process_waits_for_the_first_sync() {
    // What a just-started or upgraded process does with empty pools: a request waits (up to
    // 2 s) for the registry's first sync instead of getting a 503 at once.
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    etcd.client()
        .await
        .unwrap()
        .put("/services/svc/a", value(&a, ""), None)
        .await
        .unwrap();
    let relay = Relay::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    relay.cut();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_etcd_in(
        dir,
        &relay.endpoint(),
        "connect_timeout = \"200ms\"",
        ROUTE,
        false,
    )
    .await;
    let started = Instant::now();
    let request = tokio::spawn({
        let url = gw.url("/");
        async move {
            let r = client().get(url).send().await.unwrap();
            let id = r
                .headers()
                .get("x-upstream-id")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), id, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !request.is_finished(),
        "answered before the registry synced"
    );
    relay.restore();
    let (status, id, answered) = request.await.unwrap();
    assert_eq!(
        (status, id.as_deref()),
        (200, Some("a")),
        "served once synced"
    );
    let waited = answered - started;
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_millis(2500), "{waited:?}");
}

#[tokio::test]
async fn framework_layouts_under_their_own_key_prefixes() {
    let etcd = Etcd::start().await;
    let (gz, kr, gm) = (
        Upstream::start("go-zero").await,
        Upstream::start("kratos").await,
        Upstream::start("go-micro").await,
    );
    let rest = "[[routes]]\npath_prefix = \"/gz\"\nservice = \"user-rpc\"\n\
                [[routes]]\npath_prefix = \"/kr\"\nservice = \"orders\"\n\
                [[routes]]\npath_prefix = \"/gm\"\nservice = \"billing\"\n\
                [services.user-rpc]\nkey_prefix = \"user.rpc/\"\nformat = \"go-zero\"\n\
                [services.orders]\nkey_prefix = \"/microservices/orders/\"\nformat = \"kratos\"\n\
                [services.billing]\nkey_prefix = \"/micro/registry/billing/\"\nformat = \"go-micro\"\n";
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", rest).await;
    let mut c = etcd.client().await.unwrap();
    // go-zero: a bare host:port under <key>/<lease id>.
    c.put("user.rpc/7587870102335012871", gz.addr.to_string(), None)
        .await
        .unwrap();
    // kratos: its JSON, the HTTP endpoint with the query kratos writes.
    let kratos = format!(
        "{{\"id\":\"k1\",\"name\":\"orders\",\"version\":\"v1\",\"metadata\":null,\
         \"endpoints\":[\"grpc://127.0.0.1:1?isSecure=false\",\"http://{}?isSecure=false\"]}}",
        kr.addr
    );
    c.put("/microservices/orders/k1", kratos, None)
        .await
        .unwrap();
    // go-micro: a service record listing its nodes.
    let micro = format!(
        "{{\"name\":\"billing\",\"version\":\"latest\",\"metadata\":null,\"endpoints\":[],\
         \"nodes\":[{{\"id\":\"billing-1\",\"address\":\"{}\",\"metadata\":{{\"protocol\":\"http\"}}}}]}}",
        gm.addr
    );
    c.put("/micro/registry/billing/billing-1", micro, None)
        .await
        .unwrap();
    for (path, id) in [
        ("/gz/x", "go-zero"),
        ("/kr/x", "kratos"),
        ("/gm/x", "go-micro"),
    ] {
        eventually(
            &format!("{path} routed"),
            Duration::from_secs(5),
            || async {
                let r = client().get(gw.url(path)).send().await.ok()?;
                (r.status() == 200 && r.headers().get("x-upstream-id")? == id).then_some(())
            },
        )
        .await;
    }
    // The go-zero lease ends: the instance leaves.
    c.delete("user.rpc/7587870102335012871", None)
        .await
        .unwrap();
    eventually("go-zero instance gone", Duration::from_secs(5), || async {
        let r = client().get(gw.url("/gz/x")).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
}
