//! The filter chain (shared/SPEC.md §9) through the real gateway: authentication, IP rules,
//! limits and request ids, each on whichever request path the harness switch selects.

mod cors;
mod jwt;
mod redis_limit;
mod rules;
mod split;

use std::time::Duration;

use serde_json::Value;
use sluice_tests::{client, eventually, metric, Gateway, Upstream};

/// One route `/` to `svc` with `filters`, and the filter tables.
pub(super) fn config(filters: &str, tables: &str) -> String {
    format!("[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nfilters = [{filters}]\n\n{tables}")
}

pub(super) fn services(up: &Upstream) -> String {
    format!("[services.svc]\ninstances = [{}]\n", up.instance())
}

/// Status, headers and the echo upstream's JSON (or the text) of a GET.
pub(super) async fn get(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    // Redirects are answers to look at, not to follow.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let mut req = no_redirects.get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(super) async fn access_lines(gw: &Gateway, n: usize) -> Vec<String> {
    eventually("access lines", Duration::from_secs(5), || async {
        let lines: Vec<String> = gw
            .log()
            .lines()
            .filter(|l| l.contains("sluice::access"))
            .map(str::to_string)
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

const KEYS: &str = r#"
[filters.keys]
kind = "key-auth"
consumers = [
  { name = "alice", key = "alice-secret-key" },
  # sha256("bob-secret-key")
  { name = "bob", key_sha256 = "KEY_SHA" },
]
"#;

fn keys_table() -> String {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(b"bob-secret-key"));
    KEYS.replace("KEY_SHA", &digest)
}

#[tokio::test]
async fn key_auth_names_the_consumer_and_hides_the_key() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config("\"keys\"", &keys_table()), &services(&up)).await;

    let (status, headers, body) = get(&gw, "/x", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["x-sluice-error"], "1");
    assert!(
        body.as_str().unwrap().contains("X-Api-Key")
            || body.as_str().unwrap().contains("x-api-key"),
        "{body}"
    );
    let (status, headers, _) = get(&gw, "/x", &[("x-api-key", "wrong")]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["x-sluice-error"], "1");
    assert_eq!(up.hits(), 0, "rejected requests never reach the upstream");

    // A client's own x-consumer never passes.
    let (status, _, body) = get(
        &gw,
        "/x",
        &[("x-api-key", "alice-secret-key"), ("x-consumer", "root")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer"], "alice");
    assert!(body["headers"].get("x-api-key").is_none(), "{body}");
    let (status, _, body) = get(&gw, "/x", &[("X-Api-Key", "bob-secret-key")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer"], "bob");

    let lines = access_lines(&gw, 4).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("consumer=\"alice\"") || l.contains("consumer=alice")),
        "{lines:#?}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_filter_rejections_total{filter=\"keys\",route=\"/\",status=\"401\"}"
        ),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn key_auth_from_the_query_keeps_the_other_parameters() {
    let up = Upstream::start("a").await;
    let tables = "[filters.keys]\nkind = \"key-auth\"\nfrom = \"query:apikey\"\nconsumers = [{ name = \"carol\", key = \"k-carol\" }]\n";
    let gw = Gateway::start(&config("\"keys\"", tables), &services(&up)).await;
    let (status, _, body) = get(&gw, "/p?a=1&apikey=k-carol&b=2", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["query"], "a=1&b=2");
    assert_eq!(body["headers"]["x-consumer"], "carol");
    let (status, _, _) = get(&gw, "/p?apikey=nope", &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_consumers_file_is_read_again_on_reload_and_a_bad_filter_is_refused() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("consumers.toml");
    std::fs::write(
        &file,
        "consumers = [{ name = \"dave\", key = \"k-dave-1\" }]\n",
    )
    .unwrap();
    let tables = format!(
        "[filters.keys]\nkind = \"key-auth\"\nconsumers_file = \"{}\"\n",
        file.display()
    );
    let gw = Gateway::start(&config("\"keys\"", &tables), &services(&up)).await;
    assert_eq!(get(&gw, "/", &[("x-api-key", "k-dave-1")]).await.0, 200);

    std::fs::write(
        &file,
        "consumers = [{ name = \"dave\", key = \"k-dave-2\" }]\n",
    )
    .unwrap();
    gw.signal("HUP");
    eventually("new key live", Duration::from_secs(5), || async {
        (get(&gw, "/", &[("x-api-key", "k-dave-2")]).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(get(&gw, "/", &[("x-api-key", "k-dave-1")]).await.0, 401);

    // A broken consumers file: the reload is refused, naming the key; the old keys serve.
    std::fs::write(&file, "consumers = [{ name = \"dave\" }]\n").unwrap();
    gw.reload("error", 1.0).await;
    assert!(
        gw.log().contains("filters.keys.consumers_file"),
        "{}",
        gw.log()
    );
    assert_eq!(get(&gw, "/", &[("x-api-key", "k-dave-2")]).await.0, 200);
}

#[tokio::test]
async fn ip_rules_see_the_client_behind_trusted_proxies() {
    let up = Upstream::start("a").await;
    let tables =
        "[filters.office]\nkind = \"ip-allow\"\ncidrs = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n\
                  [filters.blocked]\nkind = \"ip-deny\"\ncidrs = [\"10.6.6.0/24\"]\n";
    // Without trusted proxies the peer (127.0.0.1) is the client: not in the office.
    let gw = Gateway::start(&config("\"office\", \"blocked\"", tables), &services(&up)).await;
    let (status, headers, body) = get(&gw, "/", &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["x-sluice-error"], "1");
    drop(gw);

    let gw = Gateway::start_with_proxy(
        "trusted_proxies = [\"127.0.0.1\"]",
        &config("\"office\", \"blocked\"", tables),
        &services(&up),
    )
    .await;
    let (status, _, body) = get(&gw, "/", &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(status, 200, "{body}");
    // The upstream still learns the whole chain.
    assert_eq!(body["headers"]["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(
        get(&gw, "/", &[("x-forwarded-for", "10.6.6.6")]).await.0,
        403
    );
    assert_eq!(
        get(&gw, "/", &[("x-forwarded-for", "2001:db8::7")]).await.0,
        200
    );
    assert_eq!(
        get(&gw, "/", &[("x-forwarded-for", "192.0.2.1")]).await.0,
        403
    );
    assert_eq!(
        get(&gw, "/", &[]).await.0,
        403,
        "the proxy itself is no office client"
    );
}

#[tokio::test]
async fn a_concurrency_limit_answers_503_and_frees_its_slots() {
    let up = Upstream::start("a").await;
    up.set_delay_ms(400);
    let tables = "[filters.one]\nkind = \"concurrency-limit\"\nmax = 1\n";
    let gw = Gateway::start(&config("\"one\"", tables), &services(&up)).await;
    let url = gw.url("/");
    let first =
        tokio::spawn(async move { client().get(url).send().await.unwrap().status().as_u16() });
    // The first is in flight once the upstream has it.
    eventually("first request upstream", Duration::from_secs(5), || async {
        (up.open_connections() > 0).then_some(())
    })
    .await;
    let (status, headers, body) = get(&gw, "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-sluice-error"], "1");
    assert_eq!(first.await.unwrap(), 200);
    up.set_delay_ms(0);
    assert_eq!(get(&gw, "/", &[]).await.0, 200, "the slot came back");
}

#[tokio::test]
async fn a_rate_limit_is_one_budget_per_key_across_threads_and_reloads() {
    let up = Upstream::start("a").await;
    let tables = "[filters.per-user]\nkind = \"rate-limit\"\nrate = 3\nper = \"1h\"\nkey = \"header:x-user\"\n";
    let gw = Gateway::start(&config("\"per-user\"", tables), &services(&up)).await;
    // Each on its own connection: two shards share the budget.
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let (status, headers, _) = get(&gw, "/", &[("x-user", "u1")]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-limit"], "3");
        remaining.push(headers["ratelimit-remaining"].to_str().unwrap().to_string());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let (status, headers, body) = get(&gw, "/", &[("x-user", "u1")]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["x-sluice-error"], "1");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1100..=1200).contains(&retry),
        "one request's worth of an hour at 3/h: {retry}"
    );
    assert_eq!(headers["ratelimit-remaining"], "0");
    // Another key has its own budget.
    assert_eq!(get(&gw, "/", &[("x-user", "u2")]).await.0, 200);

    // A reload that leaves the filter as it was keeps its budget.
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        format!("{original}\n[[routes]]\npath_prefix = \"/other\"\nservice = \"svc\"\n"),
    )
    .unwrap();
    gw.reload("ok", 1.0).await;
    assert_eq!(get(&gw, "/", &[("x-user", "u1")]).await.0, 429);
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_logged() {
    let up = Upstream::start("a").await;
    let tables = "[filters.rid]\nkind = \"request-id\"\n";
    let gw =
        Gateway::start_with_proxy("filters = [\"rid\"]", &config("", tables), &services(&up)).await;
    let (status, headers, body) = get(&gw, "/", &[("x-request-id", "abc-123")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(body["headers"]["x-request-id"], "abc-123");
    // A missing or unusable id is replaced by a UUIDv7, the same upstream and back.
    let (_, headers, body) = get(&gw, "/", &[("x-request-id", "has space")]).await;
    let made = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "{made}");
    assert_eq!(&made[14..15], "7", "{made}");
    assert_eq!(body["headers"]["x-request-id"], made.as_str());
    let lines = access_lines(&gw, 2).await;
    assert!(lines.iter().any(|l| l.contains(&made)), "{lines:#?}");
}

/// `sluice check` on a config in `dir` with one route listing `filters`, then `tables`:
/// whether it passed, and what it printed on stderr.
pub(super) fn check(
    dir: &std::path::Path,
    services: &std::path::Path,
    filters: &str,
    tables: &str,
) -> (bool, String) {
    let path = dir.join("sluice.toml");
    let text = format!(
        "[registry]\nkind = \"file\"\npath = \"{}\"\n[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nfilters = [{filters}]\n{tables}",
        services.display()
    );
    std::fs::write(&path, text).unwrap();
    let out = sluice_tests::run_sluice_within(
        &["check", "--config", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_names_the_file_and_key_of_a_bad_filter() {
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services.toml");
    std::fs::write(&services, "").unwrap();
    for (tables, expected) in [
        (
            "[filters.f]\nkind = \"nope\"\n",
            "filters.f.kind: unknown filter kind \"nope\"",
        ),
        (
            "[filters.f]\nkind = \"rate-limit\"\nrate = 0\nper = \"1s\"\n",
            "filters.f.rate: must be at least 1",
        ),
        (
            "[filters.f]\nkind = \"rate-limit\"\nrate = 1\nper = \"soon\"\n",
            "filters.f.per",
        ),
        (
            "[filters.f]\nkind = \"ip-deny\"\ncidrs = [\"300.1.1.1\"]\n",
            "filters.f.cidrs[0]",
        ),
        (
            "[filters.f]\nkind = \"key-auth\"\nconsumers = []\nbogus = 1\n",
            "filters.f",
        ),
        ("[filters.f]\nkind = \"concurrency-limit\"\n", "filters.f"),
    ] {
        let (accepted, stderr) = check(dir.path(), &services, "\"f\"", tables);
        assert!(!accepted, "{tables}: accepted");
        assert!(stderr.contains("sluice.toml"), "{stderr}");
        assert!(stderr.contains(expected), "{tables}: {stderr}");
    }
    let (_, stderr) = check(dir.path(), &services, "\"missing\"", "");
    assert!(
        stderr.contains("routes[0].filters[0]: no filter named \"missing\""),
        "{stderr}"
    );
}

/// An auth service on loopback: `Bearer good` passes (with `x-user: u1`), `Bearer moved`
/// is sent to a login page, `Bearer slow` answers after 3 s, anything else is a 401. It
/// keeps the last request's `x-forwarded-uri`.
struct AuthService {
    addr: std::net::SocketAddr,
    seen_uri: std::sync::Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthService {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Serving https with `tls`.
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        use http_body_util::Full;
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen_uri = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let seen = seen_uri.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            *seen.lock().unwrap() = header("x-forwarded-uri");
                            let builder = hyper::Response::builder();
                            let response = match header("authorization").as_str() {
                                "Bearer good" => builder.status(200).header("x-user", "u1"),
                                "Bearer moved" => builder.status(302).header("location", "/login"),
                                "Bearer forbidden" => builder.status(403),
                                "Bearer slow" => {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                    builder.status(200)
                                }
                                _ => builder
                                    .status(401)
                                    .header("www-authenticate", "Bearer realm=\"test\"")
                                    .header("content-type", "application/json"),
                            };
                            Ok::<_, std::convert::Infallible>(
                                response
                                    .body(Full::new(bytes::Bytes::from_static(
                                        b"{\"auth\":\"no\"}",
                                    )))
                                    .unwrap(),
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen_uri,
            task,
        }
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn forward_auth_passes_relays_and_times_out() {
    let up = Upstream::start("a").await;
    let auth = AuthService::start().await;
    let tables = format!(
        "[filters.auth]\nkind = \"forward-auth\"\nurl = \"http://{}/check\"\ntimeout = \"1s\"\ncopy_response_headers = [\"x-user\"]\n",
        auth.addr
    );
    let gw = Gateway::start(&config("\"auth\"", &tables), &services(&up)).await;

    // Passed: the auth service's x-user replaces the client's own.
    let (status, _, body) = get(
        &gw,
        "/orders/7?x=1",
        &[("authorization", "Bearer good"), ("x-user", "admin")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-user"], "u1");
    assert_eq!(*auth.seen_uri.lock().unwrap(), "/orders/7?x=1");
    // A client without the auth's header gets none through either.
    let (status, _, _) = get(&gw, "/", &[("authorization", "Bearer good")]).await;
    assert_eq!(status, 200);

    // Refused: the auth service's answer as it came (status, fields, body; no x-sluice-error).
    let (status, headers, body) = get(&gw, "/", &[("authorization", "Bearer nope")]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"test\"");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("x-sluice-error").is_none());
    assert_eq!(body["auth"], "no");
    let (status, headers, _) = get(&gw, "/", &[("authorization", "Bearer moved")]).await;
    assert_eq!(status, 302);
    assert_eq!(headers["location"], "/login");
    let (status, headers, body) = get(&gw, "/", &[("authorization", "Bearer forbidden")]).await;
    assert_eq!(status, 403);
    assert!(headers.get("x-sluice-error").is_none());
    assert_eq!(body["auth"], "no", "the auth service's body, as it came");
    let hits = up.hits();
    assert_eq!(hits, 2);

    // Too slow, then gone: 503 from the gateway.
    let (status, headers, body) = get(&gw, "/", &[("authorization", "Bearer slow")]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-sluice-error"], "1");
    assert!(
        body.as_str().unwrap().contains("did not answer within 1s"),
        "{body}"
    );
    drop(auth);
    let (status, _, body) = get(&gw, "/", &[("authorization", "Bearer good")]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(up.hits(), hits, "nothing reached the upstream unauthorised");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_filter_rejections_total{filter=\"auth\",route=\"/\",status=\"503\"}"
        ),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn forward_auth_over_https_verifies_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let ca = sluice_tests::Ca::new(dir.path());
    let leaf = ca.server("auth", &["localhost"]);
    let auth = AuthService::start_with(Some(leaf.acceptor(&[b"http/1.1"]))).await;
    let up = Upstream::start("a").await;
    let port = auth.addr.port();
    // Trusted through `ca`; a second filter trusting only the system roots refuses the
    // service's certificate (a 503, never a pass).
    let tables = format!(
        "[filters.auth]\nkind = \"forward-auth\"\nurl = \"https://localhost:{port}/check\"\n\
         ca = {:?}\ncopy_response_headers = [\"x-user\"]\n\n\
         [filters.untrusted]\nkind = \"forward-auth\"\nurl = \"https://127.0.0.1:{port}/check\"\n\n\
         [[routes]]\npath_prefix = \"/untrusted\"\nservice = \"svc\"\nfilters = [\"untrusted\"]\n",
        ca.cert
    );
    let gw = Gateway::start(&config("\"auth\"", &tables), &services(&up)).await;
    for _ in 0..3 {
        let (status, _, body) = get(&gw, "/x", &[("authorization", "Bearer good")]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["headers"]["x-user"], "u1");
    }
    let (status, _, body) = get(&gw, "/x", &[("authorization", "Bearer nope")]).await;
    assert_eq!((status, body["auth"].as_str()), (401, Some("no")));
    let (status, _, body) = get(&gw, "/untrusted", &[("authorization", "Bearer good")]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.as_str().unwrap().contains("TLS handshake failed"),
        "{body}"
    );
    assert_eq!(up.hits(), 3);
}

/// Runs Apache's `htpasswd` (apache2-utils) with `args`.
fn htpasswd(args: &[&str]) {
    let out = std::process::Command::new("htpasswd")
        .args(args)
        .output()
        .expect("htpasswd (Debian apache2-utils) is installed");
    assert!(
        out.status.success(),
        "htpasswd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_auth_reads_what_htpasswd_writes() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    let path = file.to_str().unwrap();
    htpasswd(&["-c", "-b", "-B", path, "ann", "bcrypt-pw"]);
    htpasswd(&["-b", "-5", path, "bob", "sha512-pw"]);
    htpasswd(&["-b", "-2", path, "cy", "sha256-pw"]);
    let tables = format!(
        "[filters.users]\nkind = \"basic-auth\"\nhtpasswd = \"{path}\"\nrealm = \"staff\"\n"
    );
    let gw = Gateway::start(&config("\"users\"", &tables), &services(&up)).await;

    for (user, password) in [
        ("ann", "bcrypt-pw"),
        ("bob", "sha512-pw"),
        ("cy", "sha256-pw"),
    ] {
        // Twice: the second is answered from the remembered check.
        for _ in 0..2 {
            let (status, _, body) =
                get(&gw, "/", &[("authorization", &basic(user, password))]).await;
            assert_eq!(status, 200, "{user}: {body}");
            assert_eq!(body["headers"]["x-consumer"], user);
            assert!(
                body["headers"].get("authorization").is_none(),
                "credentials not forwarded"
            );
        }
    }
    for auth in [
        basic("ann", "wrong"),
        basic("nobody", "x"),
        "Bearer ann".to_string(),
    ] {
        let (status, headers, _) = get(&gw, "/", &[("authorization", &auth)]).await;
        assert_eq!(status, 401, "{auth}");
        assert_eq!(headers["www-authenticate"], "Basic realm=\"staff\"");
        assert_eq!(headers["x-sluice-error"], "1");
    }
    let (status, _, _) = get(&gw, "/", &[]).await;
    assert_eq!(status, 401);
    let lines = access_lines(&gw, 10).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("consumer=\"bob\"") || l.contains("consumer=bob")),
        "{lines:#?}"
    );

    // A scheme that is not accepted (MD5, htpasswd's default) refuses the reload by its line.
    htpasswd(&["-b", "-m", path, "dee", "md5-pw"]);
    gw.reload("error", 1.0).await;
    assert!(
        gw.log().contains("users.htpasswd:4: user \"dee\": MD5"),
        "{}",
        gw.log()
    );
    assert_eq!(
        get(&gw, "/", &[("authorization", &basic("ann", "bcrypt-pw"))])
            .await
            .0,
        200
    );
}
