//! `sluice check` and `sluice serve` refuse bad input with one line per problem naming the
//! file, the key and the reason; the shipped example configs parse.

use std::path::{Path, PathBuf};

use sluice_tests::gateway::Gateway;
use sluice_tests::{client, run_sluice, run_sluice_within};

/// A `serve` that must refuse its config does so at once; past this it hangs the suite no more.
const SERVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check(path: &Path) -> (bool, String, String) {
    let out = run_sluice(&["check", "--config", path.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HEAD: &str = "[registry]\nkind = \"file\"\npath = \"SERVICES\"\n";

fn config(dir: &Path, body: &str) -> PathBuf {
    let services = write(
        dir,
        "services.toml",
        "[services.svc]\ninstances = [ { id = \"a\", addr = \"127.0.0.1:1\" } ]\n",
    );
    let text = format!(
        "{}{body}",
        HEAD.replace("SERVICES", services.to_str().unwrap())
    );
    write(dir, "gw.toml", &text)
}

#[test]
fn a_good_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
    );
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrip_prefx = true\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("gw.toml:7: routes[0].strip_prefx"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `strip_prefx`"), "{stderr}");
}

#[test]
fn values_out_of_range_and_weak_public_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        r#"
[proxy]
threads = 100000
max_headers = 0
max_header_bytes = 10
upstream_keepalive_pool_size = 99999999

[admin]
listen = "0.0.0.0:9901"
token = "x"

[[routes]]
path_prefix = "/"
service = "svc"
retries = 1000000
"#,
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let expect = [
        "proxy.threads: 100000 is out of range: 1 to 1024",
        "proxy.max_headers: 0 is out of range: 1 to 10000",
        "proxy.max_header_bytes: 10 is out of range: 256 to 1048576",
        "proxy.upstream_keepalive_pool_size: 99999999 is out of range: 0 to 1000000",
        "admin.token: too short for a non-loopback admin.listen: at least 16 characters",
        "routes[0].retries: 1000000 is out of range: 0 to 100",
    ];
    for e in expect {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), expect.len(), "{stderr}");

    let spaces = config(
        dir.path(),
        "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"                    \"\n",
    );
    let (ok, _, stderr) = check(&spaces);
    assert!(!ok);
    assert!(
        stderr.contains("admin.token: must not contain whitespace"),
        "{stderr}"
    );
}

#[test]
fn every_semantic_problem_gets_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        r#"
[admin]
listen = "0.0.0.0:9901"

[[routes]]
path_prefix = "/a"
service = "svc"
strategy = "fastest"

[[routes]]
path_prefix = "/b"

[[routes]]
path_prefix = "/c"
service = "svc"
timeout = "soon"

[services.svc]
connect_timeout = "1 parsec"
"#,
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    let expect = [
        "admin.token: required because admin.listen 0.0.0.0:9901 is not a loopback address",
        "routes[0].strategy: unknown strategy \"fastest\"",
        "routes[1].service: required",
        "routes[2].timeout: bad duration \"soon\"",
        "services.svc.connect_timeout: bad duration \"1 parsec\"",
    ];
    for e in expect {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("gw.toml: ") && l.contains(e)),
            "missing line containing {e:?} in:\n{stderr}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "one line per problem:\n{stderr}");
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let (ok, _, stderr) = check(&missing);
    assert!(!ok);
    assert!(stderr.contains("nope.toml: cannot read"), "{stderr}");

    let path = write(
        dir.path(),
        "gw.toml",
        "[registry]\nkind = \"file\"\npath = \"/nonexistent/services.toml\"\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("registry.path: cannot read /nonexistent/services.toml"),
        "{stderr}"
    );
}

#[test]
fn a_bad_services_file_is_named_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let services = write(
        dir.path(),
        "services.toml",
        "[services.svc]\ninstances = [ { id = \"a\", addr = \"127.0.0.1:1\", weight = 20000 } ]\n",
    );
    let path = write(
        dir.path(),
        "gw.toml",
        &HEAD.replace("SERVICES", services.to_str().unwrap()),
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("services.toml: services.svc.instances[0]: weight 20000"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_bad_config_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[proxy]\nthreads = 0\nlisten = [\"localhost\"]\n",
    );
    let out = run_sluice_within(&["serve", "--config", path.to_str().unwrap()], SERVE_LIMIT);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("proxy.threads: 0 is out of range: 1 to 1024"),
        "{stderr}"
    );
    assert!(
        stderr.contains("proxy.listen[0]: bad listen address \"localhost\""),
        "{stderr}"
    );
}

#[test]
fn serve_names_the_key_of_a_port_in_use_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = free.local_addr().unwrap();
    drop(free);
    let path = config(
        dir.path(),
        &format!(
            "[proxy]\nlisten = [\"{taken_addr}\"]\n[admin]\nlisten = \"{admin_addr}\"\n\
             [[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n"
        ),
    );
    let out = run_sluice_within(&["serve", "--config", path.to_str().unwrap()], SERVE_LIMIT);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "gw.toml: proxy.listen: cannot listen on {taken_addr}: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

/// Each shard listens on its own socket in the port's reuseport group; a second gateway started
/// on a running one's port by mistake must still be refused, not join the group and take a
/// share of its connections.
#[tokio::test]
async fn a_second_gateway_on_a_running_gateways_port_is_refused() {
    let running = Gateway::start(
        "[[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n",
        "[services.svc]\ninstances = []\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = free.local_addr().unwrap();
    drop(free);
    let taken_addr = running.proxy;
    let path = config(
        dir.path(),
        &format!(
            "[proxy]\nlisten = [\"{taken_addr}\"]\nthreads = 2\n[admin]\nlisten = \"{admin_addr}\"\n\
             [[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n"
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        run_sluice_within(&["serve", "--config", path.to_str().unwrap()], SERVE_LIMIT)
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "gw.toml: proxy.listen: cannot listen on {taken_addr}: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    // The running gateway still answers on its port (an empty pool: 503 from the gateway).
    let response = client().get(running.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
}

#[test]
fn etcd_tls_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "gw.toml",
        "[registry]\nkind = \"etcd\"\nendpoints = [\"https://127.0.0.1:2379\"]\n\
         tls = { cert = \"/nonexistent/client.pem\", key = \"/nonexistent/client.key\" }\n\n\
         [services.svc]\nkey_prefix = \"user.rpc\"\nformat = \"yaml\"\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    for expected in [
        "registry.tls.ca: required",
        "services.svc.key_prefix: \"user.rpc\" must end with '/'",
        "services.svc.format: unknown format \"yaml\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn tls_session_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "gw.toml",
        "[proxy.tls]\nlisten = [\"127.0.0.1:8443\"]\nsession_cache = 2000000\n\
         session_tickets = \"yes\"\ncertificates = [{ cert = \"/nonexistent/a.pem\", key = \"/nonexistent/a.key\" }]\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("proxy.tls.session_tickets") && stderr.contains("expected a boolean"),
        "{stderr}"
    );
    let path = write(
        dir.path(),
        "gw.toml",
        "[proxy.tls]\nlisten = [\"127.0.0.1:8443\"]\nsession_cache = 2000000\n\
         certificates = [{ cert = \"/nonexistent/a.pem\", key = \"/nonexistent/a.key\" }]\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("proxy.tls.session_cache: 2000000 is out of range: 0 to 1000000"),
        "{stderr}"
    );
}

#[test]
fn version_is_printed() {
    let out = run_sluice(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sluice 0."));
}

#[test]
fn shipped_configs_check_or_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The quick start is checked from the repository root, as the README runs it.
    let out = std::process::Command::new(sluice_tests::sluice_bin())
        .current_dir(&root)
        .args(["check", "--config", "config/quickstart.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("[[routes]]") || text.contains("[proxy]") {
            sluice::config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        } else {
            sluice::registry::parse_services_file(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    assert!(seen >= 3, "example configs found: {seen}");
}

#[test]
fn a_route_that_can_never_match_is_named_with_the_route_that_takes_its_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[[routes]]\npath_prefix = \"/api\"\nservice = \"svc\"\n\n\
         [[routes]]\npath_prefix = \"/api\"\nservice = \"svc\"\nname = \"shadowed\"\n\n\
         [[routes]]\npath_prefix = \"/api\"\nservice = \"svc\"\nmethods = [\"GET\"]\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("routes[1]"), "{stderr}");
    assert!(stderr.contains("can never match"), "{stderr}");
    assert!(stderr.contains("routes[0]"), "{stderr}");
    assert!(
        !stderr.contains("routes[2]"),
        "a route with a method is reachable: {stderr}"
    );
}
