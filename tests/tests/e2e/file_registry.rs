//! The file registry: edits are applied without a restart and without a failed request; a
//! broken edit is refused and the last good instances keep serving.

use std::time::Duration;

use sluice_tests::{client, eventually, Gateway, Load, Upstream};

const ROUTE: &str = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n";

fn services(ups: &[&Upstream]) -> String {
    let list: Vec<String> = ups.iter().map(|u| u.instance()).collect();
    format!("[services.svc]\ninstances = [{}]\n", list.join(", "))
}

#[tokio::test]
async fn edits_apply_without_restart_or_failed_requests() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(ROUTE, &services(&[&a])).await;

    // Steady load while the file changes under it; bounded in count and time.
    let load = Load::start(gw.url("/load"), 4, 50_000, Duration::from_secs(20));

    // Add b: it starts receiving traffic within a second.
    gw.write_services(&services(&[&a, &b]));
    eventually("b receives traffic", Duration::from_secs(2), || async {
        (b.hits() > 0).then_some(())
    })
    .await;
    // Remove a: it stops receiving traffic.
    gw.write_services(&services(&[&b]));
    eventually("a out of the pool", Duration::from_secs(2), || async {
        gw.instance("svc", "a").await.is_none().then_some(())
    })
    .await;
    // While the load goes on and b takes 50 more requests, a gets none.
    let (a_hits, b_hits) = (a.hits(), b.hits());
    eventually("b serving the load", Duration::from_secs(5), || async {
        (b.hits() >= b_hits + 50).then_some(())
    })
    .await;
    assert_eq!(a.hits(), a_hits, "a receives nothing after removal");

    let report = load.stop().await;
    assert!(report.sent > 50, "load actually ran: {report:?}");
    assert_eq!(report.failed, 0, "no request failed during the edits");
}

#[tokio::test]
async fn broken_edit_is_refused_and_last_good_keeps_serving() {
    let a = Upstream::start("a").await;
    let gw = Gateway::start(ROUTE, &services(&[&a])).await;
    gw.write_services(
        "[services.svc]\ninstances = [ { id = \"x\", addr = \"not-an-address\" } ]\n",
    );
    eventually("refusal logged", Duration::from_secs(3), || async {
        gw.log().contains("services file refused").then_some(())
    })
    .await;
    let log = gw.log();
    assert!(
        log.contains("services.svc.instances[0]"),
        "names the key:\n{log}"
    );
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "last good pool keeps serving");
    assert_eq!(resp.headers()["x-upstream-id"], "a");

    // Deleting the file is refused the same way.
    std::fs::remove_file(&gw.services_path).unwrap();
    // Noticed (logged), and only then is the serving pool checked.
    eventually("deletion noticed", Duration::from_secs(3), || async {
        gw.log()
            .contains("services file unreadable, last good instances keep serving")
            .then_some(())
    })
    .await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream-id"], "a");

    // A good edit after that is applied.
    let b = Upstream::start("b").await;
    gw.write_services(&services(&[&b]));
    eventually("b serves", Duration::from_secs(3), || async {
        let r = client().get(gw.url("/")).send().await.ok()?;
        (r.headers()["x-upstream-id"] == "b").then_some(())
    })
    .await;
}

#[tokio::test]
async fn status_change_in_file_takes_instance_out() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(ROUTE, &services(&[&a, &b])).await;
    gw.write_services(&format!(
        "[services.svc]\ninstances = [{}, {{ id = \"b\", addr = \"{}\", status = \"MAINTENANCE\" }}]\n",
        a.instance(),
        b.addr
    ));
    eventually("b marked MAINTENANCE", Duration::from_secs(3), || async {
        (gw.instance("svc", "b").await?["status"] == "MAINTENANCE").then_some(())
    })
    .await;
    let before = b.hits();
    for _ in 0..20 {
        assert_eq!(
            client().get(gw.url("/")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(b.hits(), before);
}

#[tokio::test]
async fn idle_connections_to_an_instance_that_left_are_closed() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let routes =
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"native-round-robin\"\n";
    let gw = Gateway::start_with_proxy(
        "upstream_idle_timeout = \"700ms\"",
        routes,
        &services(&[&a, &b]),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(
            client().get(gw.url("/")).send().await.unwrap().status(),
            200
        );
    }
    assert!(
        a.open_connections() >= 1,
        "a keeps an idle keep-alive connection"
    );
    gw.write_services(&services(&[&b]));
    eventually("a out of the pool", Duration::from_secs(3), || async {
        gw.instance("svc", "a").await.is_none().then_some(())
    })
    .await;
    eventually(
        "a's idle connection closed",
        Duration::from_secs(3),
        || async { (a.open_connections() == 0).then_some(()) },
    )
    .await;
}
