//! Config reload (SIGHUP, `POST /admin/reload`): the file is read and validated, strategies
//! loaded and probed, a new router built, and routes and strategies swapped atomically. A file
//! that fails any step is refused, its errors logged, and the running config keeps serving.
//! Listeners, the registry source and health-check settings need a restart; a reload that
//! changes them says so and applies the rest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, Config};
use crate::gateway::Router;
use crate::listener::SniResolver;
use crate::pool::Directory;
use crate::strategy::StrategySet;

/// Re-reads the config file and swaps what can be swapped.
pub struct Reloader {
    path: PathBuf,
    current: Mutex<Config>,
    directory: Arc<Directory>,
    router: Arc<ArcSwap<Router>>,
    strategies: Arc<ArcSwap<StrategySet>>,
    reloads: prometheus::IntCounterVec,
    /// The TLS listeners' certificates, re-read on every reload.
    tls: Option<Arc<SniResolver>>,
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Reloader {
    pub fn new(
        config: Config,
        directory: Arc<Directory>,
        router: Arc<ArcSwap<Router>>,
        strategies: Arc<ArcSwap<StrategySet>>,
    ) -> Self {
        let metrics = directory.metrics();
        let reloads = metrics.config_reloads_total.clone();
        // Present from the start, at zero; the config just loaded is the last success.
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        metrics.config_last_reload_successful.set(1);
        metrics
            .config_last_reload_success_timestamp_seconds
            .set(unix_now());
        Self {
            path: config.source.clone(),
            current: Mutex::new(config),
            directory,
            router,
            strategies,
            reloads,
            tls: None,
        }
    }

    /// Re-reads the certificates of `[proxy.tls]` into `resolver` on every reload.
    pub fn with_tls(mut self, resolver: Option<Arc<SniResolver>>) -> Self {
        self.tls = resolver;
        self
    }

    /// Reloads; on refusal, one line per problem.
    pub fn reload(&self) -> Result<(), Vec<String>> {
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                self.reloads.with_label_values(&["ok"]).inc();
                let metrics = self.directory.metrics();
                metrics.config_last_reload_successful.set(1);
                metrics
                    .config_last_reload_success_timestamp_seconds
                    .set(unix_now());
                tracing::info!(path = %self.path.display(), "config reloaded");
            }
            Err(lines) => {
                self.reloads.with_label_values(&["error"]).inc();
                self.directory
                    .metrics()
                    .config_last_reload_successful
                    .set(0);
                for line in lines {
                    tracing::error!(
                        "config reload refused, the running config keeps serving: {line}"
                    );
                }
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), Vec<String>> {
        let new = config::load(&self.path).map_err(|e| e.lines())?;
        let metrics = self.directory.metrics();
        let strategies = StrategySet::build(&new, metrics).map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {e}", self.path.display()))
                .collect::<Vec<_>>()
        })?;
        let router = Router::build(
            &new,
            &self.directory,
            &strategies,
            Some(&self.router.load()),
        )
        .map_err(|e| vec![format!("{}: {e}", self.path.display())])?;
        let certificates =
            crate::server::load_certificates(&new).map_err(|e| vec![e.to_string()])?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        for key in restart_only_changes(&current, &new) {
            tracing::warn!(
                key,
                "config reload: {key} changed; the running value stays until the next restart"
            );
        }
        self.strategies.store(Arc::new(strategies));
        self.router.store(Arc::new(router));
        self.directory
            .set_default_schemes(crate::server::default_schemes(&new));
        if let (Some(resolver), Some(index)) = (&self.tls, certificates) {
            // Renewed certificates are served from the next handshake on.
            crate::server::publish_certificates(&index, self.directory.metrics());
            resolver.replace(index);
        }
        *current = new;
        Ok(())
    }
}

/// The settings a reload does not apply (they shape listeners, threads, the registry watch or
/// the process log), one key each, when `new` changes them. Everything else applies: routes and
/// their services' `connect_timeout`, `upstream_tls` and `scheme`, strategies and plugins,
/// `proxy.upstream_idle_timeout` (for connections kept from then on), `log.access_log`, and
/// the TLS certificates.
pub(crate) fn restart_only_changes(current: &Config, new: &Config) -> Vec<String> {
    let (p, q) = (&current.proxy, &new.proxy);
    let mut changed: Vec<String> = [
        ("proxy.listen", p.listen != q.listen),
        ("proxy.threads", p.threads != q.threads),
        ("proxy.grace_period", p.grace_period != q.grace_period),
        (
            "proxy.upstream_keepalive_pool_size",
            p.upstream_keepalive_pool_size != q.upstream_keepalive_pool_size,
        ),
        ("proxy.max_headers", p.max_headers != q.max_headers),
        (
            "proxy.max_header_bytes",
            p.max_header_bytes != q.max_header_bytes,
        ),
        ("proxy.work_stealing", p.work_stealing != q.work_stealing),
        ("proxy.fast_path", p.fast_path != q.fast_path),
        ("proxy.header_timeout", p.header_timeout != q.header_timeout),
        (
            "proxy.tls.listen",
            p.tls.as_ref().map(|t| &t.listen) != q.tls.as_ref().map(|t| &t.listen),
        ),
        (
            "proxy.tls.h2",
            p.tls.as_ref().map(|t| t.h2) != q.tls.as_ref().map(|t| t.h2),
        ),
        (
            "proxy.tls.session_tickets",
            p.tls.as_ref().map(|t| t.session_tickets) != q.tls.as_ref().map(|t| t.session_tickets),
        ),
        (
            "proxy.tls.session_cache",
            p.tls.as_ref().map(|t| t.session_cache) != q.tls.as_ref().map(|t| t.session_cache),
        ),
        ("admin.listen", current.admin.listen != new.admin.listen),
        ("admin.token", current.admin.token != new.admin.token),
        (
            "admin.max_connections",
            current.admin.max_connections != new.admin.max_connections,
        ),
        ("registry", current.registry != new.registry),
        ("log.format", current.log.format != new.log.format),
        ("log.level", current.log.level != new.log.level),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_string())
    .collect();
    let names: std::collections::BTreeSet<&String> =
        current.services.keys().chain(new.services.keys()).collect();
    let default = crate::config::ServicePolicy::default();
    for name in names {
        let before = current.services.get(name).unwrap_or(&default);
        let after = new.services.get(name).unwrap_or(&default);
        for (field, differs) in [
            ("health_check", before.health_check != after.health_check),
            ("passive", before.passive != after.passive),
            ("format", before.format != after.format),
            ("key_prefix", before.key_prefix != after.key_prefix),
        ] {
            if differs {
                changed.push(format!("services.{name}.{field}"));
            }
        }
    }
    changed
}

/// Reloads on SIGHUP.
pub struct ReloadOnSignal {
    reloader: Arc<Reloader>,
}

impl ReloadOnSignal {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadOnSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    "cannot listen for SIGHUP, reload only via POST /admin/reload: {e}"
                );
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    let reloader = self.reloader.clone();
                    // Loading plugins compiles WASM: keep it off the async threads.
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(std::path::Path::new("sluice.toml"), text).unwrap()
    }

    #[test]
    fn each_restart_only_setting_a_reload_ignores_is_named() {
        let base = "[proxy]\nlisten = [\"127.0.0.1:8080\"]\n\n[registry]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n\n\
                    [[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\n";
        let same = config(base);
        assert!(restart_only_changes(&same, &config(base)).is_empty());
        let changed = config(
            "[proxy]\nlisten = [\"127.0.0.1:8081\"]\nthreads = 1\nmax_headers = 50\n\
             upstream_idle_timeout = \"5s\"\n\n[registry]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n\n\
             [log]\naccess_log = true\n\n[services.svc]\nformat = \"kratos\"\nscheme = \"grpc\"\n\n\
             [[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\ntimeout = \"1s\"\n",
        );
        assert_eq!(
            restart_only_changes(&same, &changed),
            [
                "proxy.listen",
                "proxy.threads",
                "proxy.max_headers",
                "services.svc.format"
            ]
        );
    }
}
