//! Runs the real `sluice` binary: config and services file in a temp dir, free ports, waits
//! until the admin listener says ready, kills the process on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::{client, eventually, free_port};

/// The `sluice` binary, built once per test process from the workspace (so never stale).
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(path) = std::env::var("SLUICE_BIN") {
            return PathBuf::from(path);
        }
        escargot::CargoBuild::new()
            .package("sluice")
            .bin("sluice")
            .current_release()
            .manifest_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .run()
            .expect("cargo build -p sluice")
            .path()
            .to_path_buf()
    })
    .clone()
}

/// How a gateway process is started, beyond its registry and routes.
struct Launch<'a> {
    /// Extra keys for the `[proxy]` table.
    proxy_extra: &'a str,
    /// Extra keys for the `[admin]` table.
    admin_extra: &'a str,
    /// The process log's format: `text` or `json`.
    log_format: &'a str,
    /// The admin path that says the gateway is ready.
    ready_path: &'a str,
    /// Environment variables for the process.
    env: &'a [(&'a str, &'a str)],
    /// Soft and hard open-files limit of the process (`prlimit`), when set.
    open_files: Option<u64>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Self {
            proxy_extra: "",
            admin_extra: "",
            log_format: "text",
            ready_path: "/readyz",
            env: &[],
            open_files: None,
        }
    }
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub services_path: PathBuf,
    log_path: PathBuf,
}

impl Gateway {
    /// Writes `services` (a services file) and a config whose `[proxy]`, `[admin]` and
    /// `[registry]` tables are generated, followed by `rest` (routes, strategies, …), then
    /// starts the gateway and waits until it is ready.
    pub async fn start(rest: &str, services: &str) -> Self {
        Self::start_with(rest, services, "").await
    }

    /// As [`Gateway::start`], with extra keys for the `[admin]` table (e.g. a token).
    pub async fn start_with(rest: &str, services: &str, admin_extra: &str) -> Self {
        Self::start_full(rest, services, admin_extra, "text").await
    }

    /// As [`Gateway::start_with`], with the process log in `log_format` (`text` or `json`).
    pub async fn start_full(
        rest: &str,
        services: &str,
        admin_extra: &str,
        log_format: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let services_path = dir.path().join("services.toml");
        std::fs::write(&services_path, services).expect("write services file");
        let registry = format!(
            "[registry]\nkind = \"file\"\npath = \"{}\"\n",
            services_path.display()
        );
        Self::launch(dir, &registry, rest, admin_extra, log_format).await
    }

    /// A gateway following etcd at `endpoint` under `/services/`; `registry_extra` adds keys
    /// to the `[registry]` table.
    pub async fn start_etcd(endpoint: &str, registry_extra: &str, rest: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = format!(
            "[registry]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/services/\"\n{registry_extra}\n"
        );
        Self::launch(dir, &registry, rest, "", "text").await
    }

    /// As [`Gateway::start_etcd`], in a given temp dir; with `wait_ready` false it waits only
    /// until the process is up (`/healthz`), not until the registry synced.
    pub async fn start_etcd_in(
        dir: TempDir,
        endpoint: &str,
        registry_extra: &str,
        rest: &str,
        wait_ready: bool,
    ) -> Self {
        let registry = format!(
            "[registry]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/services/\"\n{registry_extra}\n"
        );
        let ready_path = if wait_ready { "/readyz" } else { "/healthz" };
        Self::launch_with(dir, &registry, rest, "", "text", ready_path).await
    }

    async fn launch(
        dir: TempDir,
        registry: &str,
        rest: &str,
        admin_extra: &str,
        log_format: &str,
    ) -> Self {
        Self::launch_with(dir, registry, rest, admin_extra, log_format, "/readyz").await
    }

    async fn launch_with(
        dir: TempDir,
        registry: &str,
        rest: &str,
        admin_extra: &str,
        log_format: &str,
        ready_path: &str,
    ) -> Self {
        let options = Launch {
            admin_extra,
            log_format,
            ready_path,
            ..Launch::default()
        };
        Self::launch_full(dir, registry, rest, options).await
    }

    /// A file-registry gateway with extra keys for the `[proxy]` table.
    pub async fn start_with_proxy(proxy_extra: &str, rest: &str, services: &str) -> Self {
        let options = Launch {
            proxy_extra,
            ..Launch::default()
        };
        Self::launch_file_registry(rest, services, options).await
    }

    /// A file-registry gateway started with an open-files limit of `limit` (soft and hard).
    pub async fn start_with_open_files(limit: u64, rest: &str, services: &str) -> Self {
        let options = Launch {
            open_files: Some(limit),
            ..Launch::default()
        };
        Self::launch_file_registry(rest, services, options).await
    }

    /// A file-registry gateway with extra keys for both the `[proxy]` and `[admin]` tables.
    pub async fn start_with_tables(
        proxy_extra: &str,
        admin_extra: &str,
        rest: &str,
        services: &str,
    ) -> Self {
        let options = Launch {
            proxy_extra,
            admin_extra,
            ..Launch::default()
        };
        Self::launch_file_registry(rest, services, options).await
    }

    /// A file-registry gateway whose process also gets the environment variables `env`
    /// (e.g. `SSL_CERT_FILE` for the roots it trusts).
    pub async fn start_with_env(rest: &str, services: &str, env: &[(&str, &str)]) -> Self {
        let options = Launch {
            env,
            ..Launch::default()
        };
        Self::launch_file_registry(rest, services, options).await
    }

    /// A gateway on a services file holding `services`, in a new temp dir.
    async fn launch_file_registry(rest: &str, services: &str, options: Launch<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let services_path = dir.path().join("services.toml");
        std::fs::write(&services_path, services).expect("write services file");
        let registry = format!(
            "[registry]\nkind = \"file\"\npath = \"{}\"\n",
            services_path.display()
        );
        Self::launch_full(dir, &registry, rest, options).await
    }

    async fn launch_full(dir: TempDir, registry: &str, rest: &str, options: Launch<'_>) -> Self {
        let Launch {
            proxy_extra,
            admin_extra,
            log_format,
            ready_path,
            env,
            open_files,
        } = options;
        let services_path = dir.path().join("services.toml");
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // Two shards unless the test sets its own.
        let threads = if proxy_extra.contains("threads") {
            ""
        } else {
            "threads = 2\n"
        };
        let path = request_path_switch(proxy_extra);
        let grace = if proxy_extra.contains("grace_period") {
            ""
        } else {
            "grace_period = \"10s\"\n"
        };
        let config = format!(
            "[proxy]\nlisten = [\"{proxy}\"]\n{threads}{path}{grace}{proxy_extra}\n\n\
             [admin]\nlisten = \"{admin}\"\n{admin_extra}\n\n{registry}\n\
             [log]\nformat = \"{log_format}\"\nlevel = \"info\"\naccess_log = true\n\n{rest}"
        );
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("sluice.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        // prlimit sets the limit and execs sluice: the child's pid is sluice's.
        let mut command = match open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(sluice_bin());
                c
            }
            None => Command::new(sluice_bin()),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        let mut gateway = Self {
            child,
            proxy,
            admin,
            dir,
            config_path,
            services_path,
            log_path,
        };
        gateway.wait_ready(admin_extra, ready_path).await;
        gateway
    }

    /// Stops the process (SIGKILL) and hands back its temp dir, to start another in it.
    pub fn into_dir(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    async fn wait_ready(&mut self, admin_extra: &str, ready_path: &str) {
        let token = admin_extra
            .split('"')
            .nth(1)
            .filter(|_| admin_extra.contains("token"))
            .map(str::to_string);
        let url = format!("http://{}{ready_path}", self.admin);
        let http = client();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited with {status}; log:\n{}", self.log());
            }
            let mut req = http.get(&url);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            if let Ok(resp) = req.send().await {
                if resp.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sluice did not become ready; log:\n{}", self.log());
    }

    /// Sends `signal` (e.g. `"TERM"`) to the gateway process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `timeout` for the process to exit; its exit code, or `None` if it did not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://PROXY{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Replaces the services file (atomically, as editors and config management do).
    pub fn write_services(&self, services: &str) {
        let tmp = self.dir.path().join("services.toml.tmp");
        std::fs::write(&tmp, services).expect("write services");
        std::fs::rename(&tmp, &self.services_path).expect("rename services");
    }

    /// `GET {path}` on the admin listener, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        client()
            .get(self.admin_url(path))
            .send()
            .await
            .expect("admin reachable")
            .json()
            .await
            .expect("admin JSON")
    }

    /// `GET /admin/services` as JSON.
    pub async fn services(&self) -> serde_json::Value {
        self.admin_json("/admin/services").await
    }

    /// The instance `id` of `service` in `/admin/services`.
    pub async fn instance(&self, service: &str, id: &str) -> Option<serde_json::Value> {
        let services = self.services().await;
        services["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == service)?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
    }

    /// Sends SIGHUP and waits until `sluice_config_reloads_total{result}` reaches `count`
    /// (`result`: `ok` or `error`).
    pub async fn reload(&self, result: &str, count: f64) {
        self.signal("HUP");
        let series = format!("sluice_config_reloads_total{{result=\"{result}\"}}");
        eventually(
            &format!("reload {result} #{count}"),
            Duration::from_secs(5),
            || async {
                (crate::metric(&self.metrics().await, &series) == Some(count)).then_some(())
            },
        )
        .await;
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("admin reachable")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until every instance of `service` has no request in flight, in the admin API and
    /// in the metrics, and returns the admin view.
    pub async fn wait_in_flight_zero(&self, service: &str) -> serde_json::Value {
        eventually("in-flight back to 0", Duration::from_secs(10), || async {
            let services = self.services().await;
            let svc = services["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == service)?
                .clone();
            let all_zero = svc["instances"]
                .as_array()?
                .iter()
                .all(|i| i["requests_in_flight"] == 0);
            let metrics = self.metrics().await;
            let gauge_zero = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("sluice_upstream_requests_in_flight")
                        && l.contains(&format!("service=\"{service}\""))
                })
                .all(|l| l.ends_with(" 0"));
            (all_zero && gauge_zero).then_some(svc)
        })
        .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The harness switch for the request path: with `SLUICE_TEST_FAST_PATH=false` every gateway
/// a test starts serves through pingora's proxy (`proxy.fast_path = false`), unless the test
/// chose the path itself. `.ci/run` runs the path-sensitive suites once more that way.
fn request_path_switch(proxy_extra: &str) -> &'static str {
    let off = std::env::var("SLUICE_TEST_FAST_PATH").is_ok_and(|v| v == "false");
    if off && !proxy_extra.contains("fast_path") {
        "fast_path = false\n"
    } else {
        ""
    }
}

/// Runs `sluice ARGS…` to completion within `limit`; a run still going then is killed and
/// reported as a failure (a `serve` that should have refused its config must not hang a test).
pub fn run_sluice_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(sluice_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait for sluice").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("sluice output");
            panic!(
                "sluice {args:?} still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("sluice output")
}

/// Runs `sluice ARGS…` to completion.
pub fn run_sluice(args: &[&str]) -> Output {
    Command::new(sluice_bin())
        .args(args)
        .output()
        .expect("run sluice")
}
