//! Signals: SIGTERM stops accepting, lets requests in flight finish, and exits as soon as
//! none is left (not after the whole grace period).

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

use std::time::{Duration, Instant};

use sluice_tests::{client, eventually, Gateway, Upstream};

const ROUTE: &str = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n";

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_at_once() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut gw = Gateway::start(ROUTE, &services).await; // grace_period = 10s
    let slow = tokio::spawn({
        let url = gw.url("/slow?sleep_ms=1500");
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), Instant::now())
        }
    });
    eventually("slow request in flight", Duration::from_secs(3), || async {
        (gw.instance("svc", "a").await?["requests_in_flight"] == 1).then_some(())
    })
    .await;
    gw.signal("TERM");
    // New connections are refused once the listeners stop.
    let proxy = gw.proxy;
    eventually("listener closed", Duration::from_secs(3), || async move {
        tokio::net::TcpStream::connect(proxy)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (status, finished_at) = slow.await.unwrap();
    assert_eq!(status, 200, "the request in flight finished");
    let code = gw.wait_exit(Duration::from_secs(5)).await;
    let exited_after = finished_at.elapsed();
    assert_eq!(code, Some(0), "exited cleanly");
    assert!(
        exited_after < Duration::from_secs(2),
        "exited {exited_after:?} after the last request, not after the 10 s grace period"
    );
    assert!(
        gw.log().contains("drained: no request in flight"),
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn an_idle_gateway_exits_promptly_on_sigterm() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut gw = Gateway::start(ROUTE, &services).await;
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200
    );
    let sent = Instant::now();
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(5)).await, Some(0));
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
}
