//! Signals: SIGTERM stops accepting, lets requests in flight finish, and exits as soon as
//! none is left (not after the whole grace period).

use std::time::{Duration, Instant};

use sluice_tests::{client, eventually, metric, Gateway, Upstream};

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

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut gw = Gateway::start(ROUTE, &services).await; // grace_period = 10s
    let mut kept = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let sent = Instant::now();
    gw.signal("TERM");
    // The idle connection is closed by the gateway, well inside the grace period.
    let n = tokio::time::timeout(Duration::from_secs(3), kept.read(&mut buf))
        .await
        .expect("closed within 3 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without another byte");
    assert_eq!(gw.wait_exit(Duration::from_secs(5)).await, Some(0));
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn sigint_stops_at_once_even_with_a_request_in_flight() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut gw = Gateway::start(ROUTE, &services).await;
    let slow = tokio::spawn({
        let url = gw.url("/slow?sleep_ms=8000");
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    eventually("slow request in flight", Duration::from_secs(3), || async {
        (gw.instance("svc", "a").await?["requests_in_flight"] == 1).then_some(())
    })
    .await;
    let sent = Instant::now();
    gw.signal("INT");
    assert!(
        gw.wait_exit(Duration::from_secs(3)).await.is_some(),
        "stopped"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    // The request in flight did not get its answer: an immediate stop does not drain.
    assert!(!matches!(slow.await.unwrap(), Ok(200)));
}

#[tokio::test]
async fn sighup_reloads_routes_and_strategies_and_refuses_a_broken_file() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let services = format!(
        "[services.svc]\ninstances = [{}]\n[services.other]\ninstances = [{}]\n",
        a.instance(),
        b.instance()
    );
    let gw = Gateway::start(ROUTE, &services).await;
    assert_eq!(
        client()
            .get(gw.url("/other/x"))
            .send()
            .await
            .unwrap()
            .headers()["x-upstream-id"],
        "a"
    );

    // A new route to another service, with another strategy.
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    let extended = format!(
        "{original}\n[[routes]]\npath_prefix = \"/other\"\nservice = \"other\"\nstrategy = \"least-conn\"\nstrip_prefix = true\n"
    );
    std::fs::write(&gw.config_path, &extended).unwrap();
    gw.signal("HUP");
    eventually("new route live", Duration::from_secs(5), || async {
        let r = client().get(gw.url("/other/x")).send().await.ok()?;
        (r.headers().get("x-upstream-id")? == "b").then_some(())
    })
    .await;
    let strategies = gw.admin_json("/admin/strategies").await;
    let lc = strategies["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "least-conn")
        .unwrap();
    assert_eq!(lc["routes"][0], "/other");

    // A broken file: refused, logged, and both routes keep serving.
    std::fs::write(&gw.config_path, format!("{extended}\n[[routes]]\npath_prefix = \"/x\"\nservice = \"svc\"\nstrategy = \"nope\"\n")).unwrap();
    gw.reload("error", 1.0).await;
    assert!(
        gw.log().contains("unknown strategy \"nope\""),
        "{}",
        gw.log()
    );
    assert_eq!(
        client()
            .get(gw.url("/other/x"))
            .send()
            .await
            .unwrap()
            .headers()["x-upstream-id"],
        "b"
    );
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().headers()["x-upstream-id"],
        "a"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn admin_reload_answers_with_the_outcome() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let gw = Gateway::start(ROUTE, &services).await;
    let http = client();
    let r = http
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "reloaded\n");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, format!("{original}\nbogus_key = 1\n")).unwrap();
    let r = http
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("bogus_key"), "{body}");
    assert_eq!(
        http.get(gw.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        http.get(gw.url("/")).send().await.unwrap().status(),
        200,
        "still serving"
    );
}

#[tokio::test]
async fn sigquit_hands_the_listeners_over_with_no_refused_connection() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut old = Gateway::start(ROUTE, &services).await;

    // Load on fresh connections (no keep-alive), so every request needs accept().
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), old.url("/"));
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && sent.fetch_add(1, Ordering::Relaxed) < 50_000
            {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    other => {
                        eprintln!("failed: {:?}", other.map(|r| r.status()));
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // The load is running before the upgrade starts.
    eventually("load running", Duration::from_secs(5), || async {
        (sent.load(Ordering::Relaxed) > 20).then_some(())
    })
    .await;

    // The new process waits for the sockets; SIGQUIT makes the old one hand them over.
    let sockets_before = listening_sockets(old.proxy.port());
    assert!(!sockets_before.is_empty(), "the old process listens");
    let config = old.config_path.clone();
    let mut new = upgrade_to(&mut old, &config).await;
    // Each shard's socket went on to the new process: one left behind would have lived in
    // the old process alone, and its exit reset the connections queued on it.
    assert_eq!(
        listening_sockets(old.proxy.port()),
        sockets_before,
        "the new process listens on the very sockets the old one did"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // load keeps going, on the new one
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let still_up = new.try_wait().unwrap().is_none();
    let ok = client()
        .get(old.url("/"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    let _ = new.kill();
    let _ = new.wait();
    eprintln!("{sent} requests across the upgrade, {failed} failed");
    assert!(still_up, "the new process is serving");
    assert_eq!(ok, 200, "the new process answers on the same address");
    assert!(sent > 100, "load ran: {sent}");
    assert_eq!(
        failed, 0,
        "no connection refused or request failed across the upgrade"
    );
}

#[tokio::test]
async fn a_connection_accepted_just_before_sigterm_gets_a_moment_for_its_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut gw = Gateway::start(ROUTE, &services).await;
    // Connected, its request only begun when the stop comes.
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"GET /late HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The kernel completes the handshake at once; the gateway's accept follows within
    // microseconds (if it had not, the stop would reset this connection and the test fail).
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.signal("TERM");
    // Within the 1 s grace the rest of the request arrives, and it is served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(b"\r\n").await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(a.hits(), 1);
    assert_eq!(gw.wait_exit(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test]
async fn grace_period_cuts_a_request_that_outlasts_it() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut gw = Gateway::start_with_proxy("grace_period = \"1s\"", ROUTE, &services).await;
    let slow = tokio::spawn({
        let url = gw.url("/slow?sleep_ms=8000");
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    eventually("slow request in flight", Duration::from_secs(3), || async {
        (gw.instance("svc", "a").await?["requests_in_flight"] == 1).then_some(())
    })
    .await;
    let stopped = Instant::now();
    gw.signal("TERM");
    let code = gw.wait_exit(Duration::from_secs(15)).await;
    let took = stopped.elapsed();
    assert!(code.is_some(), "the gateway exited");
    // 1 s of grace (and at most pingora's 5 s for the runtimes to stop): well before the
    // 8 s request would have ended.
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        took >= Duration::from_secs(1),
        "the grace period was not waited: {took:?}"
    );
    let outcome = slow.await.unwrap();
    assert!(
        !matches!(outcome, Ok(200)),
        "the request was cut, not answered: {outcome:?}"
    );
}

/// The inodes of the IPv4 sockets listening on `port` (from `/proc/net/tcp`).
fn listening_sockets(port: u16) -> std::collections::BTreeSet<u64> {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            let listening = cols.get(3) == Some(&LISTEN)
                && u16::from_str_radix(local_port, 16).ok() == Some(port);
            listening.then(|| cols.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// Starts `sluice serve --upgrade` with `config`, once it waits for the listeners SIGQUITs
/// `old`, and waits for `old` to drain and exit.
async fn upgrade_to(old: &mut Gateway, config: &std::path::Path) -> std::process::Child {
    let upgrade_sock =
        std::env::temp_dir().join(format!("sluice-{}-upgrade.sock", old.admin.port()));
    let _ = std::fs::remove_file(&upgrade_sock);
    let log = std::fs::File::create(old.dir.path().join("new.log")).unwrap();
    let new = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["serve", "--upgrade", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    eventually(
        "the new process waiting",
        Duration::from_secs(10),
        || async { upgrade_sock.exists().then_some(()) },
    )
    .await;
    old.signal("QUIT");
    let code = old.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "the old process drained and exited");
    new
}

/// An upgrade to a process with fewer threads: its shard 0 accepts on the sockets of the
/// shards it does not run (the kernel keeps giving them connections), so no socket is left
/// behind and every fresh connection is answered.
#[tokio::test]
async fn an_upgrade_to_fewer_threads_keeps_every_socket_served() {
    let a = Upstream::start("a").await;
    let services = format!("[services.svc]\ninstances = [{}]\n", a.instance());
    let mut old = Gateway::start(ROUTE, &services).await; // threads = 2
    let before = listening_sockets(old.proxy.port());
    assert_eq!(before.len(), 2, "one socket per shard");
    let config = std::fs::read_to_string(&old.config_path).unwrap();
    assert!(config.contains("threads = 2\n"));
    let one = old.dir.path().join("one-thread.toml");
    std::fs::write(&one, config.replace("threads = 2\n", "threads = 1\n")).unwrap();
    let mut new = upgrade_to(&mut old, &one).await;
    assert_eq!(
        listening_sockets(old.proxy.port()),
        before,
        "the one-thread process listens on both inherited sockets"
    );
    // Fresh connections land on either socket (by their ports' hash): all are answered.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    for i in 0..64 {
        let status = http.get(old.url("/")).send().await.map(|r| r.status());
        assert_eq!(status.ok().map(|s| s.as_u16()), Some(200), "connection {i}");
    }
    let _ = new.kill();
    let _ = new.wait();
}
