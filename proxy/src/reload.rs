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

impl Reloader {
    pub fn new(
        config: Config,
        directory: Arc<Directory>,
        router: Arc<ArcSwap<Router>>,
        strategies: Arc<ArcSwap<StrategySet>>,
    ) -> Self {
        let reloads = directory.metrics().config_reloads_total.clone();
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
                tracing::info!(path = %self.path.display(), "config reloaded");
            }
            Err(lines) => {
                self.reloads.with_label_values(&["error"]).inc();
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
        let router = Router::build(&new, &self.directory, &strategies)
            .map_err(|e| vec![format!("{}: {e}", self.path.display())])?;
        let certificates =
            crate::server::load_certificates(&new).map_err(|e| vec![e.to_string()])?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        for (what, changed) in [
            (
                "proxy.listen / proxy.threads",
                current.proxy.listen != new.proxy.listen
                    || current.proxy.threads != new.proxy.threads,
            ),
            (
                "proxy.tls.listen / proxy.tls.h2",
                current.proxy.tls.as_ref().map(|t| (&t.listen, t.h2))
                    != new.proxy.tls.as_ref().map(|t| (&t.listen, t.h2)),
            ),
            (
                "proxy.header_timeout / max_headers / max_header_bytes",
                current.proxy.header_timeout != new.proxy.header_timeout
                    || current.proxy.max_headers != new.proxy.max_headers
                    || current.proxy.max_header_bytes != new.proxy.max_header_bytes,
            ),
            ("admin", current.admin != new.admin),
            ("registry", current.registry != new.registry),
            (
                "services.*.health_check / passive",
                current.services.iter().any(|(name, p)| {
                    new.services
                        .get(name)
                        .is_none_or(|n| n.health_check != p.health_check || n.passive != p.passive)
                }) || new.services.len() != current.services.len(),
            ),
        ] {
            if changed {
                tracing::warn!(
                    "config reload: {what} changed; that part takes effect at the next restart"
                );
            }
        }
        self.strategies.store(Arc::new(strategies));
        self.router.store(Arc::new(router));
        if let (Some(resolver), Some(index)) = (&self.tls, certificates) {
            // Renewed certificates are served from the next handshake on.
            crate::server::log_certificates(&index);
            resolver.replace(index);
        }
        *current = new;
        Ok(())
    }
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
