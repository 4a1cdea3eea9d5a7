//! TLS end to end: termination with certificates chosen by SNI (exact, wildcard, default),
//! HTTP/2 and HTTP/1.1 by ALPN, certificates renewed by a reload, and upstream TLS for
//! `https` instances, verified against the service's CA.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::{free_port, metric, Ca, Gateway, Leaf, Upstream};

const ROUTES: &str = "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n";

/// `tls = { ... }` for `[proxy]`: a TLS listener on `port` serving `certs` (first: default).
fn tls_section(port: u16, certs: &[&Leaf], extra: &str) -> String {
    let certificates: Vec<String> = certs
        .iter()
        .map(|l| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                l.cert.display(),
                l.key.display()
            )
        })
        .collect();
    format!(
        "tls = {{ listen = [\"127.0.0.1:{port}\"], certificates = [{}]{extra} }}",
        certificates.join(", ")
    )
}

/// A gateway with one TLS listener on `port` serving `a` (`a.example`, signed by `ca`) in
/// front of one plain upstream (`services`); bind every field a test needs alive (the temp
/// dir, the upstream): fields a destructuring leaves out are dropped at once.
struct OneCertificate {
    dir: tempfile::TempDir,
    ca: Ca,
    a: Leaf,
    up: Upstream,
    port: u16,
    services: String,
    gw: Gateway,
}

impl OneCertificate {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let a = ca.server("a", &["a.example"]);
        let up = Upstream::start("u").await;
        let port = free_port();
        let services = format!("[services.svc]\ninstances = [{}]\n", up.instance());
        let gw = Gateway::start_with_proxy(&tls_section(port, &[&a], ""), ROUTES, &services).await;
        Self {
            dir,
            ca,
            a,
            up,
            port,
            services,
            gw,
        }
    }
}

/// A client that trusts `ca` and resolves every name to the gateway's TLS port.
fn client_for(ca: &Ca, port: u16, names: &[&str]) -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca.cert).unwrap()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(root)
        .tls_info(true)
        .timeout(Duration::from_secs(5));
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder
}

/// The certificate the server presented on this response.
fn presented(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_h2_is_offered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let a = ca.server("a", &["a.example"]);
    let b = ca.server("b", &["b.example", "*.b.example"]);
    let up = Upstream::start("u").await;
    let port = free_port();
    let services = format!("[services.svc]\ninstances = [{}]\n", up.instance());
    let gw = Gateway::start_with_proxy(&tls_section(port, &[&a, &b], ""), ROUTES, &services).await;

    let client = client_for(&ca, port, &["a.example", "b.example", "x.b.example"])
        .build()
        .unwrap();
    for (name, leaf) in [("a.example", &a), ("b.example", &b), ("x.b.example", &b)] {
        let response = client
            .get(format!("https://{name}:{port}/hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(
            presented(&response),
            leaf.der(),
            "{name} got the wrong certificate"
        );
        // ALPN chose HTTP/2 with a client that offers it.
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "{name}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["id"], "u");
        assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    }

    // A name no certificate covers gets the default (first) one.
    let lenient = client_for(&ca, port, &["other.example"])
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let response = lenient
        .get(format!("https://other.example:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(presented(&response), a.der());

    // HTTP/1.1 clients are served too.
    let h1 = client_for(&ca, port, &["a.example"])
        .http1_only()
        .build()
        .unwrap();
    let response = h1
        .get(format!("https://a.example:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    // The cleartext listener still serves.
    let plain = reqwest::get(gw.url("/")).await.unwrap();
    assert_eq!(plain.status(), 200);
    // What each certificate serves is in the log.
    let log = gw.log();
    assert!(
        log.contains("TLS certificate loaded") && log.contains("b.example, *.b.example"),
        "{log}"
    );
}

/// A certificate's notAfter as Unix time, as OpenSSL reads it.
fn openssl_not_after(cert: &std::path::Path) -> i64 {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text.trim().strip_prefix("notAfter=").unwrap().to_string();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &date, "+%s"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `sluice_tls_certificate_expiration_timestamp_seconds` of the certificate file `cert`.
async fn exported_not_after(gw: &Gateway, cert: &std::path::Path, names: &str) -> Option<i64> {
    let prefix = format!(
        "sluice_tls_certificate_expiration_timestamp_seconds{{file=\"{}\",names=\"{names}\"}} ",
        cert.display()
    );
    let metrics = gw.metrics().await;
    let line = metrics.lines().find(|l| l.starts_with(&prefix))?;
    line[prefix.len()..].parse().ok()
}

#[tokio::test]
async fn a_reload_serves_renewed_certificates_and_refuses_broken_ones() {
    let OneCertificate {
        dir: _dir,
        ca,
        a,
        up: _up,
        port,
        gw,
        ..
    } = OneCertificate::start().await;
    let fetch = || async {
        // A new client per request: a new handshake.
        let client = client_for(&ca, port, &["a.example"]).build().unwrap();
        client
            .get(format!("https://a.example:{port}/"))
            .send()
            .await
            .map(|r| presented(&r))
    };
    assert_eq!(fetch().await.unwrap(), a.der());
    assert_eq!(
        exported_not_after(&gw, &a.cert, "a.example").await,
        Some(openssl_not_after(&a.cert))
    );

    // Renewed in place, as certbot or cert-manager do; then SIGHUP.
    std::thread::sleep(Duration::from_millis(1100)); // a later notAfter, to the second
    let renewed = ca.server("a-renewed", &["a.example"]);
    std::fs::copy(&renewed.cert, &a.cert).unwrap();
    std::fs::copy(&renewed.key, &a.key).unwrap();
    gw.signal("HUP");
    sluice_tests::eventually(
        "the renewed certificate served",
        Duration::from_secs(5),
        || async { fetch().await.ok().filter(|der| *der == renewed.der()) },
    )
    .await;
    let renewed_not_after = openssl_not_after(&renewed.cert);
    assert_eq!(
        exported_not_after(&gw, &a.cert, "a.example").await,
        Some(renewed_not_after),
        "the gauge follows the renewed certificate"
    );

    // A broken certificate is refused and the renewed one keeps serving.
    std::fs::write(&a.cert, "not a certificate").unwrap();
    gw.signal("HUP");
    sluice_tests::eventually("the refusal logged", Duration::from_secs(5), || async {
        gw.log().contains("proxy.tls.certificates[0]").then_some(())
    })
    .await;
    assert_eq!(fetch().await.unwrap(), renewed.der());
}

#[tokio::test]
async fn https_instances_are_verified_against_the_service_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let leaf = ca.server("upstream", &["svc.internal"]);
    let secure = Upstream::start_tls("secure", &leaf).await;
    let line = |service: &str| {
        format!(
            "[services.{service}]\ninstances = [{{ id = \"secure\", addr = \"{}\", scheme = \"https\" }}]\n",
            secure.addr
        )
    };
    let services = [line("trusted"), line("untrusted"), line("unverified")].concat();
    let rest = format!(
        r#"
[[routes]]
path_prefix = "/trusted"
service = "trusted"
[[routes]]
path_prefix = "/untrusted"
service = "untrusted"
retries = 0
[[routes]]
path_prefix = "/unverified"
service = "unverified"

[services.trusted]
upstream_tls = {{ ca = "{}" }}
[services.unverified]
upstream_tls = {{ verify = false }}
"#,
        ca.cert.display()
    );
    let gw = Gateway::start_with_proxy("", &rest, &services).await;

    // Verified: the instance's certificate names 127.0.0.1, its registered address.
    let response = reqwest::get(gw.url("/trusted/x")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], "secure");
    assert_eq!(
        body["version"], "HTTP/1.1",
        "https instances are spoken to in HTTP/1.1"
    );

    // The system roots do not know the test CA: the handshake fails, and that is a 502. (The
    // trusted route's pooled connection to the same address must not be reused for it.)
    let response = reqwest::get(gw.url("/untrusted/x")).await.unwrap();
    assert_eq!(response.status(), 502);

    let response = reqwest::get(gw.url("/unverified/x")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(secure.hits(), 2);
}

#[tokio::test]
async fn check_names_a_certificate_that_does_not_match_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let a = ca.server("a", &["a.example"]);
    let b = ca.server("b", &["b.example"]);
    let mixed = Leaf {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{}\"]\n{}\n[registry]\nkind = \"file\"\npath = \"{}\"\n",
            free_port(),
            tls_section(free_port(), &[&a, &mixed], ""),
            dir.path().join("services.toml").display(),
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("services.toml"), "").unwrap();
    let output = sluice_tests::run_sluice(&["check", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("proxy.tls.certificates[1]") && stderr.contains("does not belong"),
        "{stderr}"
    );
}

/// One connection by OpenSSL's `s_client` (an independent TLS client) with `args`, one
/// request answered; the summary line it prints: `New, TLSv1.3, …` or `Reused, …`.
fn s_client(port: u16, args: &[&str]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "a.example", "-ign_eof"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_client (Debian: openssl)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("HTTP/1.1 200"), "{stdout}\n{stderr}");
    stdout
        .lines()
        .find(|l| l.starts_with("New,") || l.starts_with("Reused,"))
        .unwrap_or_else(|| panic!("no session line: {stdout}"))
        .to_string()
}

/// Whether a second connection offering the first one's session (`-sess_in`) resumes it
/// (false too when the server gave the first one nothing to resume: no ticket, no id).
fn resumes(port: u16, dir: &std::path::Path, args: &[&str]) -> bool {
    let path = dir.join("session.pem");
    let _ = std::fs::remove_file(&path);
    let session = path.to_str().unwrap();
    let first = s_client(port, &[args, &["-sess_out", session]].concat());
    assert!(first.starts_with("New,"), "{first}");
    if !path.exists() {
        return false;
    }
    let second = s_client(port, &[args, &["-sess_in", session]].concat());
    second.starts_with("Reused,")
}

// s_client blocks a thread: the test upstream answers on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_by_ticket_and_by_id_and_are_counted() {
    let OneCertificate {
        dir,
        a,
        up: _up,
        port,
        services,
        gw,
        ..
    } = OneCertificate::start().await;

    // TLS 1.3 PSK from a ticket; TLS 1.2 from a session ticket; TLS 1.2 from the session
    // cache, for a client that takes no tickets.
    assert!(resumes(port, dir.path(), &[]), "TLS 1.3 ticket");
    assert!(resumes(port, dir.path(), &["-tls1_2"]), "TLS 1.2 ticket");
    assert!(
        resumes(port, dir.path(), &["-tls1_2", "-no_ticket"]),
        "TLS 1.2 session id"
    );
    let metrics = gw.metrics().await;
    let completed = metric(
        &metrics,
        "sluice_tls_handshakes_total{outcome=\"completed\"}",
    );
    assert_eq!(completed, Some(6.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "sluice_tls_sessions_resumed_total"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "sluice_tls_handshakes_total{outcome=\"failed\"}"),
        Some(0.0),
        "{metrics}"
    );

    // Ticket keys are the process's own: another gateway's ticket opens nothing here, and
    // costs the client one full handshake, not a failed one.
    let session = dir.path().join("session.pem");
    let session = session.to_str().unwrap();
    s_client(port, &["-sess_out", session]);
    let other_port = free_port();
    let other =
        Gateway::start_with_proxy(&tls_section(other_port, &[&a], ""), ROUTES, &services).await;
    let offered = s_client(other_port, &["-sess_in", session]);
    assert!(offered.starts_with("New,"), "{offered}");
    let metrics = other.metrics().await;
    assert_eq!(
        metric(&metrics, "sluice_tls_sessions_resumed_total"),
        Some(0.0),
        "{metrics}"
    );
}

// s_client blocks a thread: the test upstream answers on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_and_the_cache_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let a = ca.server("a", &["a.example"]);
    let up = Upstream::start("u").await;
    let port = free_port();
    let services = format!("[services.svc]\ninstances = [{}]\n", up.instance());

    // Tickets off: TLS 1.2 and 1.3 still resume from the cache.
    let tls = tls_section(port, &[&a], ", session_tickets = false");
    let gw = Gateway::start_with_proxy(&tls, ROUTES, &services).await;
    assert!(resumes(port, dir.path(), &[]), "TLS 1.3 from the cache");
    assert!(
        resumes(port, dir.path(), &["-tls1_2"]),
        "TLS 1.2 from the cache"
    );
    drop(gw);

    // Both off: every handshake is a full one.
    let port = free_port();
    let tls = tls_section(port, &[&a], ", session_tickets = false, session_cache = 0");
    let gw = Gateway::start_with_proxy(&tls, ROUTES, &services).await;
    assert!(!resumes(port, dir.path(), &[]), "TLS 1.3");
    assert!(!resumes(port, dir.path(), &["-tls1_2"]), "TLS 1.2");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "sluice_tls_sessions_resumed_total"),
        Some(0.0),
        "{metrics}"
    );
}

/// An HTTP/2 connection accepted before SIGTERM whose handshake ends after it: the stop has
/// already begun when pingora's h2 loop starts (it sends its GOAWAY when the stop watch
/// changes, and the connection's watch, cloned at accept, has not seen the change yet). The
/// gateway closes it gracefully and exits at once (the drain waits for open connections),
/// rather than holding it until the client leaves or the grace period ends.
#[tokio::test]
async fn an_h2_connection_whose_handshake_ends_after_sigterm_is_closed_and_the_gateway_exits() {
    use rustls_pki_types::pem::PemObject;
    use std::sync::Arc;
    // grace_period = 10s
    let OneCertificate {
        dir: _dir,
        ca,
        up: _up,
        port,
        mut gw,
        ..
    } = OneCertificate::start().await;

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // accepted, its handshake not begun
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await; // the stop has begun

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&ca.cert).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("a.example").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the handshake completes after the stop");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (_send, connection) = h2::client::handshake(tls).await.unwrap();
    // The client stays connected for as long as the gateway keeps the connection open.
    let held = tokio::spawn(async move {
        let _ = connection.await;
    });

    let started = std::time::Instant::now();
    let code = gw.wait_exit(Duration::from_secs(6)).await;
    assert_eq!(
        code,
        Some(0),
        "the gateway exited at once, not after the grace period ({:?})",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("the gateway closed the h2 connection")
        .unwrap();
}
