//! File model -> internal model: every value checked, every problem collected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::file::{
    FileConfig, HealthCheckSection, ListenerTlsSection, PassiveSection, PassiveSetting,
    RouteSection, UpstreamTlsSection,
};
use super::model::*;
use super::{ConfigError, ConfigIssue};

/// Bounds a value must be within: past them it is a typo, not a setting.
pub const MAX_THREADS: usize = 1024;
/// Connections the admin listener serves at once by default: scrapes, probes and operators
/// need a handful; the cap keeps idle or slow clients of the port from taking the process's
/// descriptors.
const DEFAULT_ADMIN_CONNECTIONS: usize = 64;
const MAX_ADMIN_CONNECTIONS: usize = 10_000;
const MAX_HEADER_FIELDS: usize = 10_000;
const MAX_HEADER_BYTES: usize = 1024 * 1024;
const MAX_KEEPALIVE_POOL: usize = 1_000_000;
const MAX_RETRIES: u32 = 100;
/// Shortest `admin.token` for an admin reachable beyond loopback.
const MIN_PUBLIC_TOKEN_CHARS: usize = 16;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigIssue::new(key, reason));
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.push(key, "duration must be greater than zero");
                    default
                }
                Err(e) => {
                    self.push(
                        key,
                        format!(
                            "bad duration {text:?}: {e} (write e.g. \"500ms\", \"2s\", \"1m\")"
                        ),
                    );
                    default
                }
            },
        }
    }

    fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.push(
                    key,
                    format!("bad listen address {text:?}: write IP:PORT, e.g. \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }
}

pub(super) fn validate(path: &Path, file: FileConfig) -> Result<Config, ConfigError> {
    let mut issues = Issues::default();

    let proxy = {
        let p = &file.proxy;
        let listen_text = p
            .listen
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
        if listen_text.is_empty() {
            issues.push("proxy.listen", "at least one listen address is required");
        }
        let listen = listen_text
            .iter()
            .enumerate()
            .filter_map(|(i, a)| issues.socket_addr(&format!("proxy.listen[{i}]"), a))
            .collect();
        let threads = p.threads.unwrap_or(2);
        if threads == 0 || threads > MAX_THREADS {
            issues.push(
                "proxy.threads",
                format!("{threads} is out of range: 1 to {MAX_THREADS}"),
            );
        }
        for (key, value, low, high) in [
            ("proxy.max_headers", p.max_headers, 1, MAX_HEADER_FIELDS),
            (
                "proxy.max_header_bytes",
                p.max_header_bytes,
                256,
                MAX_HEADER_BYTES,
            ),
            (
                "proxy.upstream_keepalive_pool_size",
                p.upstream_keepalive_pool_size,
                0,
                MAX_KEEPALIVE_POOL,
            ),
        ] {
            if let Some(v) = value.filter(|v| !(low..=high).contains(v)) {
                issues.push(key, format!("{v} is out of range: {low} to {high}"));
            }
        }
        ProxySettings {
            listen,
            threads: threads.max(1),
            grace_period: issues.duration(
                "proxy.grace_period",
                p.grace_period.as_deref(),
                DEFAULT_GRACE_PERIOD,
            ),
            upstream_keepalive_pool_size: p.upstream_keepalive_pool_size.unwrap_or(128),
            max_headers: p.max_headers.unwrap_or(100).max(1),
            max_header_bytes: p.max_header_bytes.unwrap_or(32 * 1024).max(1),
            upstream_idle_timeout: issues.duration(
                "proxy.upstream_idle_timeout",
                p.upstream_idle_timeout.as_deref(),
                Duration::from_secs(60),
            ),
            work_stealing: p.work_stealing.unwrap_or(false),
            fast_path: p.fast_path.unwrap_or(true),
            header_timeout: issues.duration(
                "proxy.header_timeout",
                p.header_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            tls: p
                .tls
                .as_ref()
                .and_then(|t| validate_listener_tls(&mut issues, t)),
            filters: filter_names(&mut issues, "proxy.filters", p.filters.as_deref(), &file),
            trusted_proxies: p
                .trusted_proxies
                .iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, text)| {
                    let parsed = parse_cidr(text);
                    if parsed.is_none() {
                        issues.push(
                            format!("proxy.trusted_proxies[{i}]"),
                            format!("{text:?} is not an IP address or CIDR block"),
                        );
                    }
                    parsed
                })
                .collect(),
        }
    };
    let filters = validate_filters(&mut issues, &file);

    let admin = {
        let listen_text = file.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN);
        let listen = issues
            .socket_addr("admin.listen", listen_text)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901)));
        let token = file.admin.token.clone().filter(|t| !t.is_empty());
        if let Some(t) = &token {
            if t.chars().any(char::is_whitespace) || t.chars().any(char::is_control) {
                issues.push(
                    "admin.token",
                    "must not contain whitespace or control characters",
                );
            }
        }
        if !listen.ip().is_loopback() {
            match &token {
                None => issues.push(
                    "admin.token",
                    format!("required because admin.listen {listen} is not a loopback address"),
                ),
                Some(t) if t.chars().count() < MIN_PUBLIC_TOKEN_CHARS => issues.push(
                    "admin.token",
                    format!(
                        "too short for a non-loopback admin.listen: at least {MIN_PUBLIC_TOKEN_CHARS} characters"
                    ),
                ),
                Some(_) => {}
            }
        }
        let max_connections = file
            .admin
            .max_connections
            .unwrap_or(DEFAULT_ADMIN_CONNECTIONS);
        if !(1..=MAX_ADMIN_CONNECTIONS).contains(&max_connections) {
            issues.push(
                "admin.max_connections",
                format!("{max_connections} is out of range: 1 to {MAX_ADMIN_CONNECTIONS}"),
            );
        }
        AdminSettings {
            listen,
            token,
            max_connections,
        }
    };

    let registry = match file.registry.kind.as_deref().unwrap_or("file") {
        "file" => {
            if file.registry.endpoints.is_some() {
                issues.push("registry.endpoints", "only used with kind = \"etcd\"");
            }
            match &file.registry.path {
                Some(p) if !p.is_empty() => RegistrySettings::File {
                    path: PathBuf::from(p),
                },
                _ => {
                    issues.push("registry.path", "required when kind = \"file\"");
                    RegistrySettings::File {
                        path: PathBuf::new(),
                    }
                }
            }
        }
        "etcd" => {
            let endpoints = file
                .registry
                .endpoints
                .clone()
                .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]);
            if endpoints.is_empty() {
                issues.push(
                    "registry.endpoints",
                    "at least one etcd endpoint is required",
                );
            }
            let prefix = file
                .registry
                .prefix
                .clone()
                .unwrap_or_else(|| "/services/".into());
            if !prefix.ends_with('/') {
                issues.push("registry.prefix", format!("{prefix:?} must end with '/'"));
            }
            let username = file.registry.username.clone();
            let password = file.registry.password.clone();
            if username.is_some() != password.is_some() {
                issues.push("registry.password", "username and password go together");
            }
            let connect_timeout = issues.duration(
                "registry.connect_timeout",
                file.registry.connect_timeout.as_deref(),
                Duration::from_secs(2),
            );
            RegistrySettings::Etcd {
                endpoints,
                prefix,
                username,
                password,
                connect_timeout,
                state_file: file.registry.state_file.as_deref().map(PathBuf::from),
                tls: file
                    .registry
                    .tls
                    .as_ref()
                    .and_then(|tls| validate_tls(&mut issues, tls)),
            }
        }
        other => {
            issues.push(
                "registry.kind",
                format!("unknown registry kind {other:?}: expected \"etcd\" or \"file\""),
            );
            RegistrySettings::File {
                path: PathBuf::new(),
            }
        }
    };

    let log = LogSettings {
        format: match file.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                issues.push(
                    "log.format",
                    format!("unknown log format {other:?}: expected \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        },
        level: file.log.level.clone().unwrap_or_else(|| "info".into()),
        access_log: file.log.access_log.unwrap_or(false),
    };
    if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
        issues.push("log.level", format!("bad log filter {:?}", log.level));
    }

    let mut strategies = std::collections::BTreeMap::new();
    for (name, section) in &file.strategies {
        let key = format!("strategies.{name}");
        if BUILTIN_STRATEGIES.contains(&name.as_str()) {
            issues.push(&key, format!("{name:?} is a built-in strategy name"));
            continue;
        }
        let Some(wasm) = section.wasm.as_deref() else {
            issues.push(
                format!("{key}.wasm"),
                "required: the path of the .wasm module",
            );
            continue;
        };
        let config = match &section.config {
            None => serde_json::Value::Object(Default::default()),
            Some(value) => match serde_json::to_value(value) {
                Ok(v) => v,
                Err(e) => {
                    issues.push(
                        format!("{key}.config"),
                        format!("not representable as JSON: {e}"),
                    );
                    continue;
                }
            },
        };
        let wasm = PathBuf::from(wasm);
        if let Err(e) = std::fs::metadata(&wasm) {
            issues.push(
                format!("{key}.wasm"),
                format!("cannot read {}: {e}", wasm.display()),
            );
        }
        if section.tags.len() > 32 {
            issues.push(format!("{key}.tags"), "at most 32 tags (one bit each)");
        }
        strategies.insert(
            name.clone(),
            StrategySpec {
                wasm,
                config,
                tags: section.tags.clone(),
            },
        );
    }

    let mut routes = Vec::with_capacity(file.routes.len());
    let mut indices = Vec::with_capacity(file.routes.len());
    for (i, section) in file.routes.iter().enumerate() {
        if let Some(route) = validate_route(&mut issues, i, section, &file) {
            routes.push(route);
            indices.push(i);
        }
    }
    unreachable_routes(&mut issues, &routes, &indices);

    let mut services = std::collections::BTreeMap::new();
    for (name, section) in &file.services {
        let key = format!("services.{name}");
        let policy = ServicePolicy {
            health_check: section
                .health_check
                .as_ref()
                .map(|hc| validate_health_check(&mut issues, &key, hc)),
            passive: match &section.passive {
                None | Some(PassiveSetting::Enabled(true)) => Some(PassiveSpec::DEFAULT),
                Some(PassiveSetting::Enabled(false)) => None,
                Some(PassiveSetting::Table(p)) => Some(validate_passive(&mut issues, &key, p)),
            },
            connect_timeout: section.connect_timeout.as_deref().map(|t| {
                issues.duration(
                    &format!("{key}.connect_timeout"),
                    Some(t),
                    Duration::from_secs(1),
                )
            }),
            format: match section.format.as_deref() {
                None => crate::registry::ValueFormat::Auto,
                Some(name) => crate::registry::ValueFormat::from_name(name).unwrap_or_else(|| {
                    issues.push(
                        format!("{key}.format"),
                        format!(
                            "unknown format {name:?}: expected one of \"auto\", \"json\", \"grpc-naming\", \"kratos\", \"go-zero\", \"go-micro\""
                        ),
                    );
                    crate::registry::ValueFormat::Auto
                }),
            },
            key_prefix: section.key_prefix.clone(),
            scheme: section.scheme.as_deref().and_then(|name| {
                let scheme = crate::registry::Scheme::from_name(name);
                if scheme.is_none() {
                    issues.push(
                        format!("{key}.scheme"),
                        format!(
                            "unknown scheme {name:?}: expected one of \"http\", \"https\", \"grpc\", \"grpcs\""
                        ),
                    );
                }
                scheme
            }),
            upstream_tls: section
                .upstream_tls
                .as_ref()
                .map(|t| validate_upstream_tls(&mut issues, &key, t))
                .unwrap_or_default(),
        };
        if let Some(prefix) = &policy.key_prefix {
            // Frameworks differ on a leading '/' (go-zero writes "user.rpc/<lease>"), but
            // every one ends its service part with one.
            if prefix.is_empty() || !prefix.ends_with('/') {
                issues.push(
                    format!("{key}.key_prefix"),
                    format!("{prefix:?} must end with '/'"),
                );
            }
        }
        services.insert(name.clone(), policy);
    }

    if issues.0.is_empty() {
        Ok(Config {
            source: path.to_path_buf(),
            proxy,
            admin,
            registry,
            log,
            strategies,
            routes,
            services,
            filters,
        })
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            issues: issues.0,
        })
    }
}

/// A path that must exist, or an issue under `key`.
fn readable_file(issues: &mut Issues, key: &str, path: &str) -> Option<PathBuf> {
    match std::fs::metadata(path) {
        Ok(_) => Some(PathBuf::from(path)),
        Err(e) => {
            issues.push(key, format!("cannot read {path}: {e}"));
            None
        }
    }
}

/// Sessions kept for resumption by id when `session_cache` is not set (about 20 MB at most:
/// rustls keeps ~1 KiB per session).
const DEFAULT_TLS_SESSION_CACHE: usize = 20_000;
/// The most sessions `proxy.tls.session_cache` may keep.
const MAX_TLS_SESSION_CACHE: usize = 1_000_000;

fn validate_listener_tls(issues: &mut Issues, tls: &ListenerTlsSection) -> Option<ListenerTls> {
    let listen_text = tls.listen.clone().unwrap_or_default();
    if listen_text.is_empty() {
        issues.push(
            "proxy.tls.listen",
            "at least one listen address is required, e.g. [\"0.0.0.0:8443\"]",
        );
    }
    let listen = listen_text
        .iter()
        .enumerate()
        .filter_map(|(i, a)| issues.socket_addr(&format!("proxy.tls.listen[{i}]"), a))
        .collect();
    if tls.certificates.is_empty() {
        issues.push(
            "proxy.tls.certificates",
            "at least one certificate is required: [{ cert = \"server.pem\", key = \"server.key\" }]",
        );
    }
    let mut certificates = Vec::new();
    for (i, c) in tls.certificates.iter().enumerate() {
        let key = format!("proxy.tls.certificates[{i}]");
        let (Some(cert), Some(private_key)) = (&c.cert, &c.key) else {
            issues.push(key, "both cert and key (PEM files) are required");
            continue;
        };
        let cert = readable_file(issues, &format!("{key}.cert"), cert);
        let private_key = readable_file(issues, &format!("{key}.key"), private_key);
        let server_names: Vec<String> = c
            .server_names
            .iter()
            .flatten()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        for (j, name) in server_names.iter().enumerate() {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            if bare.is_empty() || bare.contains('*') || bare.contains(':') {
                issues.push(
                    format!("{key}.server_names[{j}]"),
                    format!("bad name {name:?}: write a host name or *.example.com"),
                );
            }
        }
        if let (Some(cert), Some(key)) = (cert, private_key) {
            certificates.push(CertificateSpec {
                cert,
                key,
                server_names,
            });
        }
    }
    let session_cache = tls.session_cache.unwrap_or(DEFAULT_TLS_SESSION_CACHE);
    if session_cache > MAX_TLS_SESSION_CACHE {
        issues.push(
            "proxy.tls.session_cache",
            format!("{session_cache} is out of range: 0 to {MAX_TLS_SESSION_CACHE}"),
        );
    }
    Some(ListenerTls {
        listen,
        h2: tls.h2.unwrap_or(true),
        session_tickets: tls.session_tickets.unwrap_or(true),
        session_cache,
        certificates,
    })
}

fn validate_upstream_tls(
    issues: &mut Issues,
    service_key: &str,
    tls: &UpstreamTlsSection,
) -> UpstreamTlsSpec {
    UpstreamTlsSpec {
        ca: tls
            .ca
            .as_deref()
            .and_then(|ca| readable_file(issues, &format!("{service_key}.upstream_tls.ca"), ca)),
        server_name: tls.server_name.clone(),
        verify: tls.verify.unwrap_or(true),
    }
}

fn validate_tls(issues: &mut Issues, tls: &super::file::TlsSection) -> Option<EtcdTls> {
    let readable = |issues: &mut Issues, key: &str, path: &Option<String>| -> Option<PathBuf> {
        readable_file(issues, &format!("registry.tls.{key}"), path.as_deref()?)
    };
    let Some(ca) = readable(issues, "ca", &tls.ca) else {
        if tls.ca.is_none() {
            issues.push(
                "registry.tls.ca",
                "required: the PEM file of the CA that signed etcd's certificates",
            );
        }
        return None;
    };
    let identity = match (&tls.cert, &tls.key) {
        (None, None) => None,
        (Some(_), Some(_)) => Some((
            readable(issues, "cert", &tls.cert)?,
            readable(issues, "key", &tls.key)?,
        )),
        _ => {
            issues.push("registry.tls.key", "cert and key go together");
            return None;
        }
    };
    Some(EtcdTls {
        ca,
        identity,
        server_name: tls.server_name.clone(),
    })
}

fn validate_route(
    issues: &mut Issues,
    i: usize,
    section: &RouteSection,
    file: &FileConfig,
) -> Option<RouteSpec> {
    let key = format!("routes[{i}]");
    let path_prefix = match section.path_prefix.as_deref() {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => {
            issues.push(
                format!("{key}.path_prefix"),
                format!("{p:?} must start with '/'"),
            );
            return None;
        }
        None => "/".to_string(),
    };
    let service = match section.service.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => {
            issues.push(
                format!("{key}.service"),
                "required: the service this route sends to",
            );
            return None;
        }
    };
    let strategy = match section.strategy.as_deref().unwrap_or("round-robin") {
        name if file.strategies.contains_key(name) => StrategyRef::Custom(name.to_string()),
        name if BuiltinStrategy::from_name(name).is_some() => BuiltinStrategy::from_name(name)
            .map_or(
                StrategyRef::Builtin(BuiltinStrategy::RoundRobin),
                StrategyRef::Builtin,
            ),
        name => {
            let mut known: Vec<&str> = BUILTIN_STRATEGIES.to_vec();
            known.extend(file.strategies.keys().map(String::as_str));
            issues.push(
                format!("{key}.strategy"),
                format!("unknown strategy {name:?}: known are {known:?}"),
            );
            StrategyRef::Builtin(BuiltinStrategy::RoundRobin)
        }
    };
    let hash_on = section.hash_on.as_deref().and_then(|h| match h {
        "client_ip" => Some(HashOn::ClientIp),
        "path" => Some(HashOn::Path),
        other => match other.strip_prefix("header:") {
            Some(name) => match HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(header) => Some(HashOn::Header(header)),
                Err(_) => {
                    issues.push(format!("{key}.hash_on"), format!("bad header name {name:?}"));
                    None
                }
            },
            None => {
                issues.push(
                    format!("{key}.hash_on"),
                    format!("unknown {other:?}: expected \"header:NAME\", \"client_ip\" or \"path\""),
                );
                None
            }
        },
    });
    let hosts: Vec<String> = section
        .hosts
        .iter()
        .flatten()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for (j, h) in hosts.iter().enumerate() {
        if h.is_empty() || h.contains('/') || h.contains(' ') {
            issues.push(format!("{key}.hosts[{j}]"), format!("bad host name {h:?}"));
        }
    }
    let timeout = issues.duration(
        &format!("{key}.timeout"),
        section.timeout.as_deref(),
        DEFAULT_ROUTE_TIMEOUT,
    );
    let name = section.name.clone().unwrap_or_else(|| {
        if hosts.is_empty() {
            path_prefix.clone()
        } else {
            format!("{}{}", hosts.join(","), path_prefix)
        }
    });
    Some(RouteSpec {
        name,
        path_prefix,
        hosts,
        service,
        strategy,
        hash_on,
        strip_prefix: section.strip_prefix.unwrap_or(false),
        timeout,
        retries: match section.retries.unwrap_or(1) {
            r if r > MAX_RETRIES => {
                issues.push(
                    format!("{key}.retries"),
                    format!("{r} is out of range: 0 to {MAX_RETRIES}"),
                );
                MAX_RETRIES
            }
            r => r,
        },
        total_timeout: section.total_timeout.as_deref().map(|t| {
            issues.duration(
                &format!("{key}.total_timeout"),
                Some(t),
                DEFAULT_ROUTE_TIMEOUT,
            )
        }),
        max_body_bytes: section.max_body_bytes,
        filters: filter_names(
            issues,
            &format!("{key}.filters"),
            section.filters.as_deref(),
            file,
        ),
        methods: route_methods(issues, &key, section.methods.as_deref()),
        headers: route_headers(issues, &key, section.headers.as_ref()),
    })
}

/// `methods = [...]`: HTTP method tokens, upper-cased (every registered method is), each once.
fn route_methods(issues: &mut Issues, key: &str, methods: Option<&[String]>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (j, method) in methods.unwrap_or_default().iter().enumerate() {
        let method = method.trim().to_ascii_uppercase();
        if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
            issues.push(
                format!("{key}.methods[{j}]"),
                format!("{method:?} is not an HTTP method"),
            );
        } else if !out.contains(&method) {
            out.push(method);
        }
    }
    if methods.is_some_and(<[String]>::is_empty) {
        issues.push(
            format!("{key}.methods"),
            "must not be empty: leave it out to take any method",
        );
    }
    out
}

/// `headers = { NAME = "value" }`: fields the request must carry with exactly that value.
fn route_headers(
    issues: &mut Issues,
    key: &str,
    headers: Option<&BTreeMap<String, String>>,
) -> Vec<(HeaderName, String)> {
    let mut out = Vec::new();
    for (name, value) in headers.into_iter().flatten() {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(header) if http::HeaderValue::from_str(value).is_ok() => {
                out.push((header, value.clone()));
            }
            Ok(_) => issues.push(
                format!("{key}.headers.{name}"),
                format!("{value:?} cannot be a header value"),
            ),
            Err(_) => issues.push(
                format!("{key}.headers"),
                format!("bad header name {name:?}"),
            ),
        }
    }
    out
}

/// Each route that can never match: a route tried before it (RouteSpec::precedence, the
/// router's order) matches every request it would. `indices` are the routes' places in the
/// file.
fn unreachable_routes(issues: &mut Issues, routes: &[RouteSpec], indices: &[usize]) {
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&r| routes[r].precedence());
    for (place, &later) in order.iter().enumerate() {
        if let Some(&first) = order[..place]
            .iter()
            .find(|&&earlier| routes[earlier].covers(&routes[later]))
        {
            issues.push(
                format!("routes[{}]", indices[later]),
                format!(
                    "can never match: routes[{}] is tried first and matches every request it would (path_prefix {:?}; hosts, methods and headers the same or fewer)",
                    indices[first], routes[later].path_prefix
                ),
            );
        }
    }
}

/// An IP address (one host) or a CIDR block, IPv4 or IPv6.
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .ok()
        .map(|net| net.trunc())
        .or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        })
}

/// A list of filter names, each naming a `[filters.NAME]`.
fn filter_names(
    issues: &mut Issues,
    key: &str,
    names: Option<&[String]>,
    file: &FileConfig,
) -> Vec<String> {
    let names = names.unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        if !file.filters.contains_key(name) {
            issues.push(
                format!("{key}[{i}]"),
                format!("no filter named {name:?}: define it as [filters.{name}]"),
            );
        }
    }
    names.to_vec()
}

/// `[filters.NAME]`: a known `kind` each (their other keys are the kind's to read).
fn validate_filters(issues: &mut Issues, file: &FileConfig) -> BTreeMap<String, FilterSpec> {
    let mut filters = BTreeMap::new();
    for (name, table) in &file.filters {
        let key = format!("filters.{name}");
        let mut table = table.clone();
        let kind = match table.remove("kind") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                issues.push(
                    format!("{key}.kind"),
                    format!("expected a string, found {}", other.type_str()),
                );
                continue;
            }
            None => {
                issues.push(
                    format!("{key}.kind"),
                    format!("required: one of {:?}", crate::filters::KINDS),
                );
                continue;
            }
        };
        if !crate::filters::KINDS.contains(&kind.as_str()) {
            issues.push(
                format!("{key}.kind"),
                format!(
                    "unknown filter kind {kind:?}: known are {:?}",
                    crate::filters::KINDS
                ),
            );
            continue;
        }
        filters.insert(name.clone(), FilterSpec { kind, table });
    }
    filters
}

fn validate_health_check(
    issues: &mut Issues,
    key: &str,
    hc: &HealthCheckSection,
) -> HealthCheckSpec {
    let key = format!("{key}.health_check");
    let path = hc.path.clone().unwrap_or_else(|| "/health".into());
    if !path.starts_with('/') {
        issues.push(
            format!("{key}.path"),
            format!("{path:?} must start with '/'"),
        );
    }
    let spec = HealthCheckSpec {
        path,
        interval: issues.duration(
            &format!("{key}.interval"),
            hc.interval.as_deref(),
            Duration::from_secs(2),
        ),
        timeout: issues.duration(
            &format!("{key}.timeout"),
            hc.timeout.as_deref(),
            Duration::from_secs(1),
        ),
        healthy_after: hc.healthy_after.unwrap_or(2),
        unhealthy_after: hc.unhealthy_after.unwrap_or(2),
        wait_first: hc.wait_first.unwrap_or(false),
    };
    if spec.healthy_after == 0 {
        issues.push(format!("{key}.healthy_after"), "must be at least 1");
    }
    if spec.unhealthy_after == 0 {
        issues.push(format!("{key}.unhealthy_after"), "must be at least 1");
    }
    spec
}

fn validate_passive(issues: &mut Issues, key: &str, p: &PassiveSection) -> PassiveSpec {
    let key = format!("{key}.passive");
    let spec = PassiveSpec {
        consecutive_failures: p
            .consecutive_failures
            .unwrap_or(PassiveSpec::DEFAULT.consecutive_failures),
        eject_for: issues.duration(
            &format!("{key}.eject_for"),
            p.eject_for.as_deref(),
            PassiveSpec::DEFAULT.eject_for,
        ),
    };
    if spec.consecutive_failures == 0 {
        issues.push(format!("{key}.consecutive_failures"), "must be at least 1");
    }
    spec
}
