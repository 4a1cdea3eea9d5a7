//! Running out of file descriptors: with every descriptor taken by idle clients, accepts fail
//! (EMFILE) and the gateway backs off instead of spinning on them, then serves again as soon
//! as descriptors are free.

use std::time::Duration;

use sluice_tests::{client, Gateway, Upstream};
use tokio::net::TcpStream;

/// User + system CPU seconds of process `pid` so far (`/proc/PID/stat`, 100 ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[tokio::test]
async fn out_of_descriptors_the_gateway_backs_off_and_recovers() {
    let up = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", up.instance());
    let gw = Gateway::start_with_open_files(
        160,
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        &services,
    )
    .await;
    let http = client();
    assert_eq!(
        http.get(gw.url("/before")).send().await.unwrap().status(),
        200
    );

    // Idle clients past the limit: the kernel queues them, the gateway cannot accept them all.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let connect = TcpStream::connect(gw.proxy);
        match tokio::time::timeout(Duration::from_millis(500), connect).await {
            Ok(Ok(stream)) => idle.push(stream),
            _ => break,
        }
    }
    assert!(idle.len() >= 200, "only {} connections queued", idle.len());
    sluice_tests::eventually(
        "accepts failing for lack of descriptors",
        Duration::from_secs(5),
        || async { gw.log().contains("Too many open files").then_some(()) },
    )
    .await;

    // Saturated: a busy accept loop would burn a core (~3 s of CPU in 3 s).
    let before = cpu_seconds(gw.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let burned = cpu_seconds(gw.pid()) - before;
    assert!(
        burned < 1.0,
        "{burned:.2} s of CPU in 3 s while out of descriptors"
    );

    // Descriptors free again: the gateway serves, the admin port too.
    drop(idle);
    sluice_tests::eventually("serving again", Duration::from_secs(10), || async {
        let resp = http.get(gw.url("/after")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    let health = http.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
