//! Losing an instance abruptly: a `kill -9`ed upstream process under GET load costs no failed
//! request — requests in flight on it and new connections to it are retried on another
//! instance, and passive ejection takes it out of rotation.

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
