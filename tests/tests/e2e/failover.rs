//! Losing an instance abruptly: a `kill -9`ed upstream process under GET load costs no failed
//! request — requests in flight on it and new connections to it are retried on another
//! instance, and passive ejection takes it out of rotation. A try that times out teaches the
//! instance's latency EWMA, which decays while the instance answers nothing.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_tests::{free_port, Gateway, Load, Upstream};

#[tokio::test]
async fn an_instance_killed_under_load_costs_no_failed_request() {
    let survivor = Upstream::start("survivor").await;
    let port = free_port();
    let mut victim = Command::new(env!("CARGO_BIN_EXE_sluice-test-upstream"))
        .args(["victim", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(victim.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    let services = format!(
        "[services.svc]\ninstances = [{}, {{ id = \"victim\", addr = \"127.0.0.1:{port}\" }}]\n",
        survivor.instance()
    );
    let rest = r#"
[[routes]]
path_prefix = "/"
service = "svc"
retries = 2

[services.svc]
passive = { consecutive_failures = 3, eject_for = "30s" }
connect_timeout = "500ms"
"#;
    let gw = Gateway::start(rest, &services).await;
    // Each request takes a little while, so some are in flight on the victim when it dies.
    let load = Load::start(
        gw.url("/work?sleep_ms=5"),
        8,
        20_000,
        Duration::from_secs(20),
    );
    sluice_tests::eventually("load on the victim", Duration::from_secs(10), || async {
        let victim_hits = gw.instance("svc", "victim").await?["picks"].as_u64()?;
        (victim_hits > 200).then_some(())
    })
    .await;
    let before = load.sent();
    Command::new("kill")
        .args(["-9", &victim.id().to_string()])
        .status()
        .unwrap();
    let _ = victim.wait();
    // Keep the load going well past the kill.
    sluice_tests::eventually("load after the kill", Duration::from_secs(15), || async {
        (load.sent() > before + 2_000).then_some(())
    })
    .await;
    let report = load.stop().await;
    let log = gw.log();
    let failed: Vec<_> = log
        .lines()
        .filter(|l| l.contains("sluice::access") && !l.contains("status=200"))
        .collect();
    assert_eq!(report.failed, 0, "{report:?}\n{}", failed.join("\n"));
    assert!(report.sent > before + 2_000, "{report:?}");
    println!(
        "{before} requests before the kill, {} in all, 0 failed",
        report.sent
    );
    let victim = gw.instance("svc", "victim").await.unwrap();
    assert_eq!(victim["ejected"], true, "{victim}");
}

/// Without a `passive` block an instance that keeps failing is ejected all the same (five
/// failures, 30 s), as nginx does; `passive = false` keeps it in rotation.
#[tokio::test]
async fn passive_ejection_is_on_by_default_and_can_be_turned_off() {
    let survivor = Upstream::start("survivor").await;
    let dead_port = sluice_tests::free_port();
    let services = format!(
        "[services.svc]\ninstances = [{}, {{ id = \"dead\", addr = \"127.0.0.1:{dead_port}\" }}]\n",
        survivor.instance()
    );
    let route = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nretries = 1\n";
    for (extra, ejected) in [("", true), ("\n[services.svc]\npassive = false\n", false)] {
        let gw = Gateway::start(&format!("{route}{extra}"), &services).await;
        let http = sluice_tests::client();
        for _ in 0..40 {
            let resp = http.get(gw.url("/x")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "retried on the survivor");
        }
        let dead = sluice_tests::eventually(
            "the dead instance's state",
            Duration::from_secs(5),
            || async {
                let dead = gw.instance("svc", "dead").await?;
                (dead["ejected"].as_bool()? == ejected).then_some(dead)
            },
        )
        .await;
        assert_eq!(dead["ejected"], ejected, "{extra:?}: {dead}");
        let m = gw.metrics().await;
        let ejections = sluice_tests::metric(&m, "sluice_outlier_ejections_total{service=\"svc\"}");
        // Present from the start, at zero.
        assert_eq!(ejections, Some(if ejected { 1.0 } else { 0.0 }), "{m}");
        let healthy = |id: &str| {
            let prefix = format!("sluice_upstream_healthy{{instance_id=\"{id}\",service=\"svc\"}}");
            sluice_tests::metric(&m, &prefix)
        };
        assert_eq!(
            healthy("dead"),
            Some(if ejected { 0.0 } else { 1.0 }),
            "{m}"
        );
        assert_eq!(healthy("survivor"), Some(1.0), "{m}");
        let retries = sluice_tests::metric(
            &m,
            "sluice_upstream_retries_total{route=\"/\",service=\"svc\"}",
        )
        .unwrap_or(0.0);
        assert!(
            retries >= 5.0,
            "every try on the dead instance was retried: {m}"
        );
    }
}

/// A timed-out try is a latency sample of the time waited (a latency-aware strategy learns
/// that an instance which never answers is slow, not unknown), and an instance that answers
/// nothing has its EWMA cut once a second, so it is tried again once that has faded.
#[tokio::test]
async fn a_timeout_feeds_the_latency_ewma_which_decays_while_the_instance_is_idle() {
    let slow = Upstream::start("slow").await;
    slow.set_delay_ms(2_000);
    let services = format!("[services.svc]\ninstances = [{}]\n", slow.instance());
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\ntimeout = \"300ms\"\nretries = 0\n\n\
         [services.svc]\npassive = false\n",
        &services,
    )
    .await;
    let resp = sluice_tests::client()
        .get(gw.url("/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let ewma = || async {
        gw.instance("svc", "slow").await.unwrap()["latency_ewma_us"]
            .as_u64()
            .unwrap()
    };
    let learned = ewma().await;
    assert!(
        (300_000..1_000_000).contains(&learned),
        "the 300 ms timeout is the sample: {learned} µs"
    );
    // Two idle ticks later (the first only clears the sample's mark): 7/8 of 7/8 or less.
    let decayed = sluice_tests::eventually(
        "the idle instance's EWMA decays",
        Duration::from_secs(6),
        || async {
            let now = ewma().await;
            (now <= learned * 49 / 64 + 1).then_some(now)
        },
    )
    .await;
    assert!(decayed > 0, "{decayed}");
}

/// A connect that times out is a latency sample too: the time waited, not nothing.
#[tokio::test]
async fn a_connect_timeout_feeds_the_latency_ewma() {
    // A listener that never accepts, with its accept queue full: a connect to it hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    while queued.len() < 8 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(300), connect).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }
    let hangs = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .is_err();
    assert!(
        hangs,
        "the accept queue is full after {} connects",
        queued.len()
    );
    let services =
        format!("[services.svc]\ninstances = [{{ id = \"stuck\", addr = \"{addr}\" }}]\n");
    let gw = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nretries = 0\n\n\
         [services.svc]\nconnect_timeout = \"250ms\"\npassive = false\n",
        &services,
    )
    .await;
    let resp = sluice_tests::client()
        .get(gw.url("/x"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let instance = gw.instance("svc", "stuck").await.unwrap();
    let learned = instance["latency_ewma_us"].as_u64().unwrap();
    assert!(
        (250_000..1_000_000).contains(&learned),
        "the 250 ms connect timeout is the sample: {instance}"
    );
    drop(listener);
}
