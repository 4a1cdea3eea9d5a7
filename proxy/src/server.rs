//! Assembles a runnable gateway from a config: metrics, directory, registry source, router,
//! and the pingora services (proxy, admin, registry watch).

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents as ServiceTrait;
use tokio::sync::mpsc;

use crate::admin::AdminApp;
use crate::config::{Config, RegistrySettings};
use crate::gateway::{FastPath, Gateway, Router, RouterError};
use crate::listener::{
    CertError, CertIndex, ConnectionCap, Endpoint, HandshakeCounters, HeaderDeadline, ProxyShard,
    Resumption, ShardBalance, SniResolver, TlsListener, TlsServerError,
};
use crate::metrics::Metrics;
use crate::pool::Directory;
use crate::registry::{
    EtcdSettings, EtcdSource, EtcdTlsPem, FileSource, RegistrySource, UpdateSink, WatchedPrefix,
};
use crate::strategy::{StrategyError, StrategySet, StrategyWatch};

/// Why a gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Router {
        path: String,
        #[source]
        source: RouterError,
    },
    #[error("{0}")]
    ServicesFile(String),
    #[error("{path}: registry.tls: {reason}")]
    EtcdTls { path: String, reason: String },
    #[error("{path}: proxy.tls.certificates{}: {source}", source.index().map(|i| format!("[{i}]")).unwrap_or_default())]
    Tls {
        path: String,
        #[source]
        source: CertError,
    },
    #[error("{path}: proxy.tls: {source}")]
    TlsServer {
        path: String,
        #[source]
        source: TlsServerError,
    },
    #[error("{path}: {key}: cannot listen on {addr}: {source}")]
    Listen {
        path: String,
        key: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", strategy_lines(path, errors))]
    Strategies {
        path: String,
        errors: Vec<StrategyError>,
    },
}

fn strategy_lines(path: &str, errors: &[StrategyError]) -> String {
    errors
        .iter()
        .map(|e| format!("{path}: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn load_strategies(config: &Config, metrics: &Metrics) -> Result<StrategySet, BuildError> {
    StrategySet::build(config, metrics).map_err(|errors| BuildError::Strategies {
        path: config.source.display().to_string(),
        errors,
    })
}

/// Everything a gateway needs besides the pingora server itself.
pub struct Parts {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub directory: Arc<Directory>,
    pub router: Arc<ArcSwap<Router>>,
    pub strategies: Arc<ArcSwap<StrategySet>>,
    pub source: Arc<dyn RegistrySource>,
    /// The certificates of `[proxy.tls]`, if configured.
    pub tls: Option<Arc<SniResolver>>,
    /// The TLS side of every `[proxy.tls]` address (its rustls configuration with those
    /// certificates, session resumption and handshake counters).
    tls_listener: Option<Arc<TlsListener>>,
}

/// One log line per certificate (the names it serves, the first is the default, and when it
/// expires), and its expiry in `sluice_tls_certificate_expiration_timestamp_seconds`; the
/// certificates of an earlier load leave the family.
pub fn publish_certificates(index: &CertIndex, metrics: &Metrics) {
    let family = &metrics.tls_certificate_expiration_timestamp_seconds;
    family.reset();
    for (i, cert) in index.loaded().iter().enumerate() {
        let names = cert.names.join(",");
        tracing::info!(
            certificate = i,
            default = i == 0,
            file = %cert.path.display(),
            names = %cert.names.join(", "),
            not_after = cert.not_after.unwrap_or_default(),
            "TLS certificate loaded"
        );
        if let Some(not_after) = cert.not_after {
            family
                .with_label_values(&[&cert.path.display().to_string(), &names])
                .set(not_after);
        }
    }
}

/// Loads the certificates of `[proxy.tls]`.
pub fn load_certificates(config: &Config) -> Result<Option<CertIndex>, BuildError> {
    let Some(tls) = &config.proxy.tls else {
        return Ok(None);
    };
    CertIndex::load(&tls.certificates)
        .map(Some)
        .map_err(|source| BuildError::Tls {
            path: config.source.display().to_string(),
            source,
        })
}

/// The registry source the config names.
pub fn source_for(config: &Config) -> Result<Arc<dyn RegistrySource>, BuildError> {
    match &config.registry {
        RegistrySettings::File { path } => Ok(Arc::new(FileSource::new(path.clone()))),
        RegistrySettings::Etcd {
            endpoints,
            prefix,
            username,
            password,
            connect_timeout,
            tls,
            ..
        } => {
            let tls = match tls {
                Some(tls) => Some(EtcdTlsPem::read(tls).map_err(|reason| BuildError::EtcdTls {
                    path: config.source.display().to_string(),
                    reason,
                })?),
                None => None,
            };
            let mut prefixes = vec![WatchedPrefix {
                prefix: prefix.clone(),
                service: None,
            }];
            let mut formats = std::collections::HashMap::new();
            for (name, policy) in &config.services {
                formats.insert(name.clone(), policy.format);
                if let Some(key_prefix) = &policy.key_prefix {
                    prefixes.push(WatchedPrefix {
                        prefix: key_prefix.clone(),
                        service: Some(name.clone()),
                    });
                }
            }
            Ok(Arc::new(EtcdSource::new(EtcdSettings {
                endpoints: endpoints.clone(),
                user: username.clone().zip(password.clone()),
                connect_timeout: *connect_timeout,
                prefixes,
                formats,
                tls,
            })))
        }
    }
}

/// Checks what `serve` would load besides the config itself: the services file and strategies.
pub fn check(config: &Config) -> Result<(), BuildError> {
    source_for(config)?;
    load_certificates(config)?;
    if let RegistrySettings::File { path } = &config.registry {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BuildError::ServicesFile(format!(
                "{}: registry.path: cannot read {}: {e}",
                config.source.display(),
                path.display()
            ))
        })?;
        crate::registry::parse_services_file(path, &text).map_err(BuildError::ServicesFile)?;
    }
    let metrics = Arc::new(Metrics::new());
    let strategies = load_strategies(config, &metrics)?;
    let directory = Directory::new(metrics, &[]);
    Router::build(config, &directory, &strategies, None).map_err(|source| BuildError::Router {
        path: config.source.display().to_string(),
        source,
    })?;
    Ok(())
}

impl Parts {
    /// Builds the shared state of a gateway fed by `source`.
    pub fn new(config: Config, source: Arc<dyn RegistrySource>) -> Result<Self, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let directory = Arc::new(Directory::new(metrics.clone(), &[source.name()]));
        let strategies = load_strategies(&config, &metrics)?;
        let tls = load_certificates(&config)?.map(|index| {
            publish_certificates(&index, &metrics);
            Arc::new(SniResolver::new(index))
        });
        let tls_listener = match (&config.proxy.tls, &tls) {
            (Some(settings), Some(resolver)) => Some(Arc::new(
                tls_listener(settings, resolver.clone(), &metrics).map_err(|source| {
                    BuildError::TlsServer {
                        path: config.source.display().to_string(),
                        source,
                    }
                })?,
            )),
            _ => None,
        };
        let router = Router::build(&config, &directory, &strategies, None).map_err(|source| {
            BuildError::Router {
                path: config.source.display().to_string(),
                source,
            }
        })?;
        Ok(Self {
            config,
            metrics,
            directory,
            router: Arc::new(ArcSwap::from_pointee(router)),
            strategies: Arc::new(ArcSwap::from_pointee(strategies)),
            source,
            tls,
            tls_listener,
        })
    }

    /// Binds every configured address once and lets go, so a port in use (or not ours to bind)
    /// stops `serve` with the config key that names it, instead of a listener that never comes
    /// up. Skipped for a graceful upgrade, whose sockets come from the running gateway.
    pub fn check_listeners(&self) -> Result<(), BuildError> {
        let cfg = &self.config;
        let proxy = cfg.proxy.listen.iter().map(|a| ("proxy.listen", *a));
        let tls = cfg
            .proxy
            .tls
            .iter()
            .flat_map(|t| t.listen.iter().map(|a| ("proxy.tls.listen", *a)));
        let admin = std::iter::once(("admin.listen", cfg.admin.listen));
        for (key, addr) in proxy.chain(tls).chain(admin) {
            std::net::TcpListener::bind(addr).map_err(|source| BuildError::Listen {
                path: cfg.source.display().to_string(),
                key,
                addr,
                source,
            })?;
        }
        Ok(())
    }

    /// The cleartext and TLS listening addresses of `[proxy]`, shared by every shard (one TLS
    /// acceptor for every address, so one ticket key and one session cache whichever address
    /// and shard accepts).
    fn endpoints(&self) -> Arc<[Endpoint]> {
        let cfg = &self.config;
        let mut endpoints: Vec<Endpoint> = cfg
            .proxy
            .listen
            .iter()
            .map(|addr| Endpoint::plain(addr.to_string()))
            .collect();
        if let (Some(tls), Some(listener)) = (&cfg.proxy.tls, &self.tls_listener) {
            for addr in &tls.listen {
                endpoints.push(Endpoint::tls(addr.to_string(), listener.clone()));
            }
        }
        endpoints.into()
    }

    /// The pingora server with the proxy, admin and registry services added. With `upgrade`,
    /// the listening sockets are taken over from a running gateway (which is sent SIGQUIT).
    pub fn into_server(self, extra: Vec<Box<dyn ServiceTrait>>, upgrade: bool) -> Server {
        let cfg = &self.config;
        let mut conf = ServerConf {
            threads: cfg.proxy.threads,
            work_stealing: cfg.proxy.work_stealing,
            upstream_keepalive_pool_size: cfg.proxy.upstream_keepalive_pool_size,
            grace_period_seconds: Some(cfg.proxy.grace_period.as_secs()),
            graceful_shutdown_timeout_seconds: Some(5),
            ..ServerConf::default()
        };
        // One upgrade socket per admin port, so several gateways can run on one host and a
        // graceful upgrade (SIGQUIT) finds its predecessor.
        let runtime_dir = std::env::temp_dir();
        conf.upgrade_sock = runtime_dir
            .join(format!("sluice-{}-upgrade.sock", cfg.admin.listen.port()))
            .display()
            .to_string();
        conf.pid_file = runtime_dir
            .join(format!("sluice-{}.pid", cfg.admin.listen.port()))
            .display()
            .to_string();
        let opt = pingora::server::configuration::Opt {
            upgrade,
            ..Default::default()
        };
        let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
        server.bootstrap();

        let mut options = HttpServerOptions::default();
        options.h2c = true;
        // Passive ejection is on for every service unless its `passive = false`.
        let listed: Vec<_> = cfg
            .services
            .iter()
            .map(|(name, policy)| (self.directory.slot(name), policy.passive.clone()))
            .collect();
        let (ejector, requests) = crate::health::Ejector::new(
            self.directory.clone(),
            listed,
            crate::config::ServicePolicy::default().passive,
        );
        server.add_service(background_service("outlier ejection", ejector));
        server.add_service(background_service(
            "latency decay",
            crate::pool::LatencyDecay::new(self.directory.clone()),
        ));
        let ejections = Some(requests);
        let gateway = Gateway::new(
            self.router.clone(),
            crate::gateway::HeaderLimits {
                max_headers: cfg.proxy.max_headers,
                max_header_bytes: cfg.proxy.max_header_bytes,
            },
            self.directory.clone(),
            ejections,
        );
        // Without work stealing, one single-threaded shard per proxy thread (see
        // listener::ProxyShard); with it, one service on a work-stealing runtime.
        let shards = if cfg.proxy.work_stealing {
            1
        } else {
            cfg.proxy.threads
        };
        let mut proxies: Vec<Box<dyn ServiceTrait>> = Vec::with_capacity(shards);
        // Room for the request line beside the header fields.
        let max_head_bytes = cfg.proxy.max_header_bytes + 16 * 1024;
        let endpoints = self.endpoints();
        let balance = ShardBalance::new(shards);
        for index in 0..shards {
            let mut http = pingora::proxy::http_proxy(&server.configuration, gateway.clone());
            http.server_options = Some(options.clone());
            let mut app = HeaderDeadline::new(
                http,
                cfg.proxy.header_timeout,
                max_head_bytes,
                self.metrics.downstream_header_timeouts_total.clone(),
            )
            .with_connection_metrics(
                self.metrics.downstream_connections_total.clone(),
                self.metrics.downstream_connections_open.clone(),
            );
            // The fast path keeps its upstream connections per thread: shards only.
            if cfg.proxy.fast_path && !cfg.proxy.work_stealing {
                app = app.with_fast_path(FastPath::new(
                    gateway.clone(),
                    cfg.proxy.upstream_keepalive_pool_size,
                    max_head_bytes,
                ));
            }
            let (name, threads) = if shards == 1 {
                ("sluice proxy".to_string(), cfg.proxy.threads)
            } else {
                (format!("sluice proxy {index}"), 1)
            };
            proxies.push(Box::new(ProxyShard::new(
                index,
                name,
                threads,
                app,
                endpoints.clone(),
                balance.clone(),
            )));
        }

        let reloader = Arc::new(
            crate::reload::Reloader::new(
                cfg.clone(),
                self.directory.clone(),
                self.router.clone(),
                self.strategies.clone(),
            )
            .with_tls(self.tls.clone()),
        );
        // The admin port gets the proxy's header deadline and a cap of its own: a
        // half-sent request is answered 408, past `admin.max_connections` a 503.
        let admin_app = HeaderDeadline::new(
            AdminApp::new(
                self.directory.clone(),
                self.router.clone(),
                self.strategies.clone(),
                cfg.admin.token.clone(),
                Some(reloader.clone()),
            ),
            cfg.proxy.header_timeout,
            max_head_bytes,
            self.metrics.downstream_header_timeouts_total.clone(),
        );
        let mut admin = Service::new(
            "sluice admin".to_string(),
            ConnectionCap::new(admin_app, cfg.admin.max_connections),
        );
        server.add_service(background_service(
            "config reload",
            crate::reload::ReloadOnSignal::new(reloader),
        ));
        admin.threads = Some(1);
        admin.add_tcp(&cfg.admin.listen.to_string());

        let state_file = match &cfg.registry {
            RegistrySettings::Etcd { state_file, .. } => state_file.clone(),
            RegistrySettings::File { .. } => None,
        };
        let watch = background_service(
            "registry",
            RegistryWatch {
                source: self.source.clone(),
                directory: self.directory.clone(),
                state_file,
            },
        );

        server.add_service(watch);
        server.add_service(background_service(
            "drain",
            crate::drain::Drain::new(balance),
        ));
        let checked: Vec<_> = cfg
            .services
            .iter()
            .filter_map(|(name, policy)| {
                let spec = policy.health_check.clone()?;
                let tls = match crate::health::ProbeTls::new(&policy.upstream_tls) {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        tracing::error!(
                            service = %name,
                            "https instances will not be health-checked: {e}"
                        );
                        None
                    }
                };
                Some(crate::health::CheckedService {
                    slot: self.directory.slot(name),
                    spec,
                    tls,
                    server_name: policy.upstream_tls.server_name.clone(),
                })
            })
            .collect();
        self.directory.set_default_schemes(default_schemes(cfg));
        self.directory.set_wait_first(
            cfg.services
                .iter()
                .filter(|(_, p)| p.health_check.as_ref().is_some_and(|h| h.wait_first))
                .map(|(name, _)| name.clone()),
        );
        if !checked.is_empty() {
            server.add_service(background_service(
                "health checks",
                crate::health::HealthChecks::new(self.directory.clone(), checked),
            ));
        }
        server.add_service(background_service(
            "strategy files",
            StrategyWatch::new(self.strategies.clone()),
        ));
        for proxy in proxies {
            server.add_boxed_service(proxy);
        }
        server.add_service(admin);
        for service in extra {
            server.add_boxed_service(service);
        }
        server
    }
}

/// Runs the registry source and applies what it sends to the directory.
struct RegistryWatch {
    source: Arc<dyn RegistrySource>,
    directory: Arc<Directory>,
    state_file: Option<std::path::PathBuf>,
}

/// Most registry updates applied in one batch.
const MAX_BATCH: usize = 4096;

/// How often the state file is rewritten at most (only when the pools changed).
const STATE_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[async_trait]
impl BackgroundService for RegistryWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::channel(1024);
        let name = self.source.name().to_string();
        if let Some(path) = &self.state_file {
            match crate::registry::load_state(path, &name) {
                Ok(services) => {
                    tracing::info!(path = %path.display(), services = services.len(), "last known instances loaded; the first sync replaces them");
                    self.directory.seed(&name, services);
                }
                Err(e) => tracing::info!("no state loaded: {e}"),
            }
        }
        let mut state_tick = tokio::time::interval(STATE_WRITE_INTERVAL);
        let mut written_generation = None;
        let source = self.source.clone();
        let source_shutdown = shutdown.clone();
        let sink = UpdateSink::new(&name, tx, self.directory.metrics());
        let runner = tokio::spawn(async move { source.run(sink, source_shutdown).await });
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = state_tick.tick(), if self.state_file.is_some() => {
                    let generation = self.directory.generation();
                    // Only a synced view is worth keeping, and only when it changed.
                    if self.directory.is_synced(&name) && written_generation != Some(generation) {
                        if let Some(path) = &self.state_file {
                            match crate::registry::save_state(path, &name, self.directory.instances()) {
                                Ok(()) => written_generation = Some(generation),
                                Err(e) => tracing::warn!("state file not written: {e}"),
                            }
                        }
                    }
                }
                event = rx.recv() => match event {
                    Some(event) => {
                        // Whatever else is already queued goes in the same batch: one swap per
                        // touched service for a burst, no added delay for a single update.
                        let mut batch = vec![event];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(next) => batch.push(next),
                                Err(_) => break,
                            }
                        }
                        self.directory.apply_all_resolving(batch).await;
                    }
                    None => {
                        if !*shutdown.borrow() {
                            tracing::error!(source = %name, "registry source stopped; last known pools keep serving");
                        }
                        break;
                    }
                },
            }
        }
        runner.abort();
    }
}

/// Listener TLS settings that take every certificate from `resolver` (chosen by SNI).
/// The TLS side of `[proxy.tls]`, counted in the `sluice_tls_*` families.
fn tls_listener(
    settings: &crate::config::ListenerTls,
    resolver: Arc<SniResolver>,
    metrics: &Metrics,
) -> Result<TlsListener, TlsServerError> {
    let handshakes = &metrics.tls_handshakes_total;
    let counters = HandshakeCounters {
        completed: handshakes.with_label_values(&["completed"]),
        failed: handshakes.with_label_values(&["failed"]),
        resumed: metrics.tls_sessions_resumed_total.clone(),
    };
    let resumption = Resumption {
        tickets: settings.session_tickets,
        cache: settings.session_cache,
    };
    TlsListener::new(resolver, settings.h2, resumption, counters)
}

/// `[services.NAME] scheme`, by service: for instances whose registry value names none.
pub(crate) fn default_schemes(
    cfg: &Config,
) -> std::collections::HashMap<String, crate::registry::Scheme> {
    cfg.services
        .iter()
        .filter_map(|(name, policy)| policy.scheme.map(|s| (name.clone(), s)))
        .collect()
}
