//! `sluice register` and the `Registration` library API against a real etcd: registration,
//! health-driven status, survival of etcd restarts and lost leases, and deregistration on
//! SIGTERM that never hangs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::registry::{Registration, RegistrationSpec, Status};
use sluice_tests::{client, eventually, sluice_bin, Etcd, Gateway, Upstream};

struct Registrar {
    child: Option<Child>,
}

impl Registrar {
    fn start(etcd: &Etcd, up: &Upstream, extra: &[&str]) -> Self {
        let child = Command::new(sluice_bin())
            .args([
                "register",
                "--etcd",
                &etcd.endpoint(),
                "--service",
                "svc",
                "--addr",
            ])
            .arg(up.addr.to_string())
            .args(["--id", &up.id])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child: Some(child) }
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    fn terminate(&mut self, within: Duration) -> i32 {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("registrar did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn value_of(etcd: &Etcd, key: &str) -> Option<(serde_json::Value, i64)> {
    let mut c = etcd.client().await.ok()?;
    let r = c.get(key, None).await.ok()?;
    let kv = r.kvs().first()?;
    Some((serde_json::from_slice(kv.value()).ok()?, kv.lease()))
}

const ROUTE: &str = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n";

#[tokio::test]
async fn registers_routes_and_deregisters_on_sigterm() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", ROUTE).await;
    let mut reg = Registrar::start(
        &etcd,
        &a,
        &[
            "--ttl",
            "5s",
            "--weight",
            "50",
            "--tag",
            "canary",
            "--version",
            "2.0",
        ],
    );
    eventually(
        "routed to the registered instance",
        Duration::from_secs(5),
        || async {
            let r = client().get(gw.url("/")).send().await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    let (value, lease) = value_of(&etcd, "/services/svc/a").await.unwrap();
    assert_ne!(lease, 0, "the key lives under a lease");
    assert_eq!(value["addr"], a.addr.to_string());
    assert_eq!(value["status"], "UP");
    assert_eq!(value["weight"], 50);
    assert_eq!(value["tags"][0], "canary");
    assert_eq!(value["version"], "2.0");

    assert_eq!(
        reg.terminate(Duration::from_secs(5)),
        0,
        "clean deregistration exits 0"
    );
    assert!(
        value_of(&etcd, "/services/svc/a").await.is_none(),
        "key deleted"
    );
    let ttl = etcd
        .client()
        .await
        .unwrap()
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .ttl();
    assert_eq!(ttl, -1, "lease revoked");
    eventually("gateway dropped it", Duration::from_secs(2), || async {
        gw.instance("svc", "a").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn health_url_flips_the_status_at_once() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let gw = Gateway::start_etcd(&etcd.endpoint(), "", ROUTE).await;
    let health = format!("http://{}/health", a.addr);
    let _reg = Registrar::start(
        &etcd,
        &a,
        &[
            "--health-url",
            &health,
            "--health-interval",
            "100ms",
            "--healthy-after",
            "1",
            "--unhealthy-after",
            "2",
        ],
    );
    eventually("UP", Duration::from_secs(5), || async {
        (gw.instance("svc", "a").await?["status"] == "UP").then_some(())
    })
    .await;
    a.set_healthy(false);
    eventually(
        "DOWN in etcd and in the gateway",
        Duration::from_secs(3),
        || async {
            let (v, _) = value_of(&etcd, "/services/svc/a").await?;
            (v["status"] == "DOWN" && gw.instance("svc", "a").await?["status"] == "DOWN")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        503,
        "DOWN gets no traffic"
    );
    a.set_healthy(true);
    eventually("UP again", Duration::from_secs(3), || async {
        (gw.instance("svc", "a").await?["status"] == "UP").then_some(())
    })
    .await;
}

#[tokio::test]
async fn keeps_the_registration_across_an_etcd_restart_and_a_lost_lease() {
    let mut etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let _reg = Registrar::start(&etcd, &a, &["--ttl", "3s"]);
    let first = eventually("registered", Duration::from_secs(5), || async {
        value_of(&etcd, "/services/svc/a")
            .await
            .map(|(_, lease)| lease)
    })
    .await;

    // The lease is revoked behind the registrar's back (what an expiry after a partition
    // looks like): it notices and registers again under a new lease.
    etcd.client()
        .await
        .unwrap()
        .lease_revoke(first)
        .await
        .unwrap();
    let second = eventually(
        "re-registered under a new lease",
        Duration::from_secs(8),
        || async {
            value_of(&etcd, "/services/svc/a")
                .await
                .map(|(_, l)| l)
                .filter(|l| *l != first)
        },
    )
    .await;

    etcd.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.resume().await;
    eventually(
        "registered after the restart",
        Duration::from_secs(10),
        || async { value_of(&etcd, "/services/svc/a").await.map(|_| ()) },
    )
    .await;
    // And it stays registered past several TTLs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(value_of(&etcd, "/services/svc/a").await.is_some());
    let _ = second;
}

#[tokio::test]
async fn deregistration_never_hangs_when_etcd_is_gone() {
    let mut etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let mut reg = Registrar::start(&etcd, &a, &["--deregister-timeout", "1s"]);
    eventually("registered", Duration::from_secs(5), || async {
        value_of(&etcd, "/services/svc/a").await.map(|_| ())
    })
    .await;
    etcd.kill();
    let started = Instant::now();
    assert_eq!(
        reg.terminate(Duration::from_secs(5)),
        2,
        "a failed deregistration exits 2"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_library_api_registers_in_process() {
    let etcd = Etcd::start().await;
    let spec = RegistrationSpec {
        endpoints: vec![etcd.endpoint()],
        user: None,
        tls: None,
        prefix: "/services/".into(),
        service: "lib-svc".into(),
        id: "in-process".into(),
        addr: "127.0.0.1:9".into(),
        ttl: std::time::Duration::from_secs(5),
        weight: None,
        version: Some("0.1.0".into()),
        zone: Some("local".into()),
        tags: vec![],
        metadata: [("team".to_string(), "pay".into())].into_iter().collect(),
        health: None,
    };
    let mut registration = Registration::start(spec);
    assert_eq!(registration.registered().await.unwrap(), Status::Up);
    let (value, _) = value_of(&etcd, "/services/lib-svc/in-process")
        .await
        .unwrap();
    assert_eq!(value["metadata"]["team"], "pay");
    assert_eq!(value["zone"], "local");
    registration
        .deregister(Duration::from_secs(3))
        .await
        .unwrap();
    assert!(value_of(&etcd, "/services/lib-svc/in-process")
        .await
        .is_none());
}

#[tokio::test]
async fn registers_over_tls_with_a_client_certificate() {
    let etcd = Etcd::start_tls().await;
    let tls = etcd.tls.clone().unwrap();
    let a = Upstream::start("a").await;
    let mut reg = Registrar::start(
        &etcd,
        &a,
        &[
            "--etcd-ca",
            tls.ca.to_str().unwrap(),
            "--etcd-cert",
            tls.client_cert.to_str().unwrap(),
            "--etcd-key",
            tls.client_key.to_str().unwrap(),
        ],
    );
    eventually("registered over TLS", Duration::from_secs(5), || async {
        value_of(&etcd, "/services/svc/a").await.map(|_| ())
    })
    .await;
    assert_eq!(reg.terminate(Duration::from_secs(5)), 0);
    assert!(value_of(&etcd, "/services/svc/a").await.is_none());
}
