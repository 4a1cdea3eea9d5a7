//! The validated, internal configuration: what the gateway actually runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

/// Strategy names that resolve without a `[strategies.*]` table.
pub const BUILTIN_STRATEGIES: &[&str] = &[
    "round-robin",
    "least-conn",
    "consistent-hash",
    "p2c-ewma",
    "native-round-robin",
    "native-least-conn",
];

/// The strategies that ship with the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinStrategy {
    /// Smooth weighted round-robin, WASM plugin.
    RoundRobin,
    /// Weighted least-in-flight, WASM plugin.
    LeastConn,
    /// A hash ring (Ketama's) on the request hash, WASM plugin.
    ConsistentHash,
    /// Power of two choices over latency EWMA x in flight (Linkerd's peak EWMA), WASM plugin.
    P2cEwma,
    /// Smooth weighted round-robin in Rust (the fallback).
    NativeRoundRobin,
    /// Weighted least-in-flight in Rust.
    NativeLeastConn,
}

impl BuiltinStrategy {
    pub const ALL: [BuiltinStrategy; 6] = [
        BuiltinStrategy::RoundRobin,
        BuiltinStrategy::LeastConn,
        BuiltinStrategy::ConsistentHash,
        BuiltinStrategy::P2cEwma,
        BuiltinStrategy::NativeRoundRobin,
        BuiltinStrategy::NativeLeastConn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinStrategy::RoundRobin => "round-robin",
            BuiltinStrategy::LeastConn => "least-conn",
            BuiltinStrategy::ConsistentHash => "consistent-hash",
            BuiltinStrategy::P2cEwma => "p2c-ewma",
            BuiltinStrategy::NativeRoundRobin => "native-round-robin",
            BuiltinStrategy::NativeLeastConn => "native-least-conn",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// A complete, validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub source: PathBuf,
    pub proxy: ProxySettings,
    pub admin: AdminSettings,
    pub registry: RegistrySettings,
    pub log: LogSettings,
    /// User strategies by name (`[strategies.NAME]`).
    pub strategies: BTreeMap<String, StrategySpec>,
    /// Routes in file order; the router sorts them by specificity.
    pub routes: Vec<RouteSpec>,
    /// Per-service policy by service name.
    pub services: BTreeMap<String, ServicePolicy>,
    /// `[filters.NAME]` by name: a kind and its keys, built by `crate::filters`.
    pub filters: BTreeMap<String, FilterSpec>,
}

/// `[filters.NAME]`: a filter's kind and its table as written (the kind's module reads it,
/// so each kind's keys live beside its code).
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSpec {
    pub kind: String,
    /// The table without `kind`.
    pub table: toml::Table,
}

/// `[proxy]`: the data-plane listeners and runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    pub upstream_keepalive_pool_size: usize,
    /// Idle upstream connections are closed after this long (so connections to an instance
    /// that left the pool go away within it).
    pub upstream_idle_timeout: Duration,
    /// Requests with more header fields are answered 431.
    pub max_headers: usize,
    /// Requests whose header names and values add up to more bytes are answered 431.
    pub max_header_bytes: usize,
    pub work_stealing: bool,
    /// Plain HTTP/1.1 requests to plain-`http` instances take Sluice's own request path
    /// (`gateway::FastPath`); everything else, and everything when off, goes through pingora.
    pub fast_path: bool,
    /// A connection's first request header must be complete this long after the accept,
    /// or it is answered 408.
    pub header_timeout: Duration,
    /// `[proxy.tls]`: TLS listeners, if any.
    pub tls: Option<ListenerTls>,
    /// Filters every request runs before its route's own.
    pub filters: Vec<String>,
    /// Peers whose `X-Forwarded-For` names the client (the client IP filters, limits and
    /// `hash_on = "client_ip"` see).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[proxy.tls]`: TLS termination on its own listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub listen: Vec<SocketAddr>,
    /// Offer HTTP/2 by ALPN (else HTTP/1.1 only).
    pub h2: bool,
    /// Resume sessions from stateless tickets (TLS 1.2 tickets, TLS 1.3 PSK tickets) sealed
    /// with keys the process makes at start and rotates.
    pub session_tickets: bool,
    /// Sessions kept in memory for resumption by session id (TLS 1.2) and, without tickets,
    /// by TLS 1.3 PSK identity; 0 keeps none.
    pub session_cache: usize,
    /// The first is the default: served when the client sends no SNI or one no certificate
    /// covers.
    pub certificates: Vec<CertificateSpec>,
}

/// One certificate chain and key (PEM) and the names it is served for.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names (exact, or `*.example.com`) this certificate answers; empty: the DNS names of
    /// the certificate's subjectAltName.
    pub server_names: Vec<String>,
}

/// `upstream_tls = { ... }`: how `https` and `grpcs` instances of a service are verified.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsSpec {
    /// PEM file of the CAs that sign the instances' certificates; default: the system roots.
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified; default: the host of the instance's address.
    pub server_name: Option<String>,
    /// `false` skips certificate verification (testing only).
    pub verify: bool,
}

impl Default for UpstreamTlsSpec {
    fn default() -> Self {
        Self {
            ca: None,
            server_name: None,
            verify: true,
        }
    }
}

/// `[admin]`: the admin listener and its bearer token.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// Connections the admin listener serves at once; more are answered 503.
    pub max_connections: usize,
}

/// `[registry]`: where instances come from.
// Built once per config load and never copied on a hot path: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrySettings {
    /// A TOML file of instances, re-read when it changes.
    File { path: PathBuf },
    /// etcd, watched under `prefix` (and each service's `key_prefix`).
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        username: Option<String>,
        password: Option<String>,
        connect_timeout: Duration,
        /// Where the last known instances are kept for a cold start during an outage.
        state_file: Option<PathBuf>,
        /// TLS to etcd (`https://` endpoints).
        tls: Option<EtcdTls>,
    },
}

/// TLS settings for etcd: the CA that signed the servers, and a client certificate for mTLS.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    /// Client certificate and key (PEM), for servers that require client certificates.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name to verify the server certificate against (default: the endpoint's host).
    pub server_name: Option<String>,
}

/// Output format of the process log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`: process log format and level, and the access log switch.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `sluice=debug,info`.
    pub level: String,
    pub access_log: bool,
}

/// `[strategies.NAME]`: a user strategy loaded from a WASM module.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategySpec {
    pub wasm: PathBuf,
    /// Handed to the plugin as JSON at load.
    pub config: serde_json::Value,
    /// Tag names whose positions become the tag bits of each instance record.
    pub tags: Vec<String>,
}

/// Which strategy a route uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StrategyRef {
    Builtin(BuiltinStrategy),
    /// A `[strategies.NAME]` table.
    Custom(String),
}

impl StrategyRef {
    /// The name as written in config.
    pub fn name(&self) -> &str {
        match self {
            StrategyRef::Builtin(b) => b.name(),
            StrategyRef::Custom(name) => name,
        }
    }
}

/// What feeds the strategy's `request_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    ClientIp,
    Path,
}

/// `[[routes]]`: one route, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// Label used in metrics and logs: `name`, or the hosts and prefix.
    pub name: String,
    pub path_prefix: String,
    /// Lower-case host names without port; empty matches any host. `*.example.com` matches
    /// any subdomain.
    pub hosts: Vec<String>,
    pub service: String,
    pub strategy: StrategyRef,
    pub hash_on: Option<HashOn>,
    pub strip_prefix: bool,
    /// Longest wait for the upstream's response header or next body chunk.
    pub timeout: Duration,
    /// Extra attempts on another instance after a connection failure.
    pub retries: u32,
    /// Bound on the whole request across tries; each try's connect and read timeouts are
    /// cut to what is left. `None`: only the per-try `timeout`.
    pub total_timeout: Option<Duration>,
    /// Larger request bodies are answered 413; `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// The route's filters, after `[proxy] filters`.
    pub filters: Vec<String>,
    /// Methods the route takes (upper case); empty: any.
    pub methods: Vec<String>,
    /// Fields the request must carry, with exactly these values.
    pub headers: Vec<(HeaderName, String)>,
}

impl RouteSpec {
    /// The order routes are tried in, first to last: the longest `path_prefix`, then routes
    /// that name hosts before those for any host, then those with more conditions (`methods`
    /// counts one, each `headers` field one); config order among equals (a stable sort).
    pub fn precedence(&self) -> (std::cmp::Reverse<usize>, bool, std::cmp::Reverse<usize>) {
        (
            std::cmp::Reverse(self.path_prefix.len()),
            self.hosts.is_empty(),
            std::cmp::Reverse(self.conditions()),
        )
    }

    /// How many method and header conditions the route adds to host and prefix.
    pub fn conditions(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len()
    }

    /// Whether this route matches every request `other` matches: then, tried first, it
    /// leaves `other` nothing.
    pub fn covers(&self, other: &RouteSpec) -> bool {
        let hosts = self.hosts.is_empty()
            || (!other.hosts.is_empty()
                && other
                    .hosts
                    .iter()
                    .all(|h| self.hosts.iter().any(|p| host_pattern_covers(p, h))));
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other.methods.iter().all(|m| self.methods.contains(m)));
        let headers = self.headers.iter().all(|h| other.headers.contains(h));
        self.path_prefix == other.path_prefix && hosts && methods && headers
    }
}

/// Whether the host pattern `pattern` (`name` or `*.suffix`) matches every host `other`
/// (itself a pattern) matches.
fn host_pattern_covers(pattern: &str, other: &str) -> bool {
    match pattern.strip_prefix('*') {
        None => pattern == other,
        Some(suffix) => {
            let other_tail = other.strip_prefix('*').unwrap_or(other);
            other_tail.len() > suffix.len() && other_tail.ends_with(suffix)
                || other_tail == suffix && other.starts_with('*')
        }
    }
}

/// Active health check settings (`health_check = { ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    pub wait_first: bool,
}

/// Passive outlier ejection settings (`passive = { ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveSpec {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
}

impl PassiveSpec {
    /// What every service gets unless its `passive` says otherwise: an instance that fails
    /// five times in a row is ejected for 30 s (nginx ejects on failure by default too).
    pub const DEFAULT: Self = Self {
        consecutive_failures: 5,
        eject_for: Duration::from_secs(30),
    };
}

/// `[services.NAME]`: per-service policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    pub health_check: Option<HealthCheckSpec>,
    pub passive: Option<PassiveSpec>,
    pub connect_timeout: Option<Duration>,
    /// How this service's registry values are written (`auto` when unset).
    pub format: crate::registry::ValueFormat,
    /// Where this service's instances live when not under `<prefix><service>/`.
    pub key_prefix: Option<String>,
    /// How `https`/`grpcs` instances are verified.
    pub upstream_tls: UpstreamTlsSpec,
    /// The scheme of instances whose registry value names none (go-zero's bare `host:port`).
    pub scheme: Option<crate::registry::Scheme>,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        Self {
            health_check: None,
            passive: Some(PassiveSpec::DEFAULT),
            connect_timeout: None,
            format: crate::registry::ValueFormat::default(),
            key_prefix: None,
            upstream_tls: UpstreamTlsSpec::default(),
            scheme: None,
        }
    }
}

impl Config {
    /// The policy of `service`, or the defaults.
    pub fn service_policy(&self, service: &str) -> ServicePolicy {
        self.services.get(service).cloned().unwrap_or_default()
    }
}
