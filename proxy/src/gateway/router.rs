//! Routing: host (exact or `*.suffix`), the longest path prefix, and the method and header
//! conditions select a route (in `RouteSpec::precedence` order); each route holds its
//! service's slot and its strategy, resolved once when the router is built.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::engine::filters::FilterChain;
use super::peer::{CaError, UpstreamTls};
use super::route_metrics::RouteMetrics;
use crate::config::{Config, HashOn, RouteSpec};
use crate::filters::FilterSet;
use crate::pool::{Directory, ServiceSlot};
use crate::strategy::{RequestHeaders, Strategy, StrategySet};

/// Default time allowed to establish an upstream connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A service a route sends requests to: its slot, how its instances are reached, and the
/// route's metric handles for it. A route has its own service and, with a `traffic-split`
/// filter, the services the filter may choose.
pub struct Backend {
    pub slot: Arc<ServiceSlot>,
    pub connect_timeout: Duration,
    /// Consecutive failures that ask for an ejection (`passive`), if configured.
    pub eject_after: Option<u32>,
    /// How the service's `https`/`grpcs` instances are verified.
    pub upstream_tls: Arc<UpstreamTls>,
    pub(crate) metrics: RouteMetrics,
}

impl Backend {
    /// The service's name.
    pub fn service(&self) -> &str {
        self.slot.name()
    }
}

/// A route ready to serve: config, backends, strategy and metric handles.
pub struct Route {
    pub spec: RouteSpec,
    /// The route's own service first, then those its filters may send requests to.
    pub backends: Box<[Backend]>,
    pub strategy: Arc<dyn Strategy>,
    /// Idle upstream connections of this route are closed after this long.
    pub idle_timeout: Duration,
    /// `[log] access_log`: reloaded with the routes, on both request paths.
    pub access_log: bool,
    /// `[proxy] filters`, then the route's own, in order.
    pub(crate) filters: FilterChain,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("spec", &self.spec)
            .field("strategy", &self.strategy.name())
            .finish()
    }
}

impl Route {
    pub fn hash_on(&self) -> Option<&HashOn> {
        self.spec.hash_on.as_ref()
    }

    /// The route's own service.
    pub fn own(&self) -> &Backend {
        // Built with the own backend first, always (Router::build).
        &self.backends[0]
    }

    /// Backend number `index` (the own one for an index out of range).
    pub fn backend(&self, index: usize) -> &Backend {
        self.backends.get(index).unwrap_or_else(|| self.own())
    }

    /// The number of the backend for `service`, if the route has one.
    pub(crate) fn backend_index(&self, service: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.service() == service)
    }

    /// Whether the instances of every backend but the own one are plain `http` (the fast
    /// path serves only those; nothing to load for a route with one backend).
    pub(crate) fn others_plain_http(&self) -> bool {
        self.backends[1..]
            .iter()
            .all(|b| b.slot.load().all_plain_http())
    }

    /// Counts the answer of the chain's filter number `filter`.
    pub(crate) fn count_rejection(&self, filter: usize, status: u16) {
        if let Some(filter) = self.filters.filters().get(filter) {
            self.own().metrics.rejected(filter.name(), status);
        }
    }

    /// Whether the request's method and fields meet the route's conditions.
    fn matches_conditions(&self, method: &str, fields: &dyn RequestHeaders) -> bool {
        (self.spec.methods.is_empty() || self.spec.methods.iter().any(|m| m == method))
            && self
                .spec
                .headers
                .iter()
                .all(|(name, value)| fields.field(name.as_str()) == Some(value.as_bytes()))
    }

    fn matches_host(&self, host: &str) -> bool {
        self.spec.hosts.is_empty()
            || self
                .spec
                .hosts
                .iter()
                .any(|pattern| match pattern.strip_prefix('*') {
                    Some(suffix) => {
                        host.len() > suffix.len()
                            && host.as_bytes()[host.len() - suffix.len()..]
                                .eq_ignore_ascii_case(suffix.as_bytes())
                    }
                    None => pattern.eq_ignore_ascii_case(host),
                })
    }
}

/// Why a router could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("routes[{index}].strategy: no strategy named {name:?} is loaded")]
    Strategy { index: usize, name: String },
    #[error(transparent)]
    Filter(#[from] crate::filters::FilterError),
    #[error("services.{service}.upstream_tls.ca: {source}")]
    UpstreamTls {
        service: String,
        #[source]
        source: CaError,
    },
}

/// All routes, most specific first.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    /// `[log] access_log`, for requests no route matched.
    pub access_log: bool,
    /// `[proxy] trusted_proxies`.
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// The built filters, kept for the next build to take over their state.
    filters: FilterSet,
}

impl Router {
    /// Builds the routes of `config`, creating service slots in `directory` as needed; the
    /// filters of `previous` (the router it replaces) that keep state and did not change are
    /// taken over.
    pub fn build(
        config: &Config,
        directory: &Directory,
        strategies: &StrategySet,
        previous: Option<&Router>,
    ) -> Result<Self, RouterError> {
        let filters = FilterSet::build(config, directory, previous.map(|p| &p.filters))?;
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut upstream_tls: HashMap<String, Arc<UpstreamTls>> = HashMap::new();
        for (index, spec) in config.routes.iter().enumerate() {
            let strategy = strategies
                .get(&spec.strategy)
                .ok_or_else(|| RouterError::Strategy {
                    index,
                    name: spec.strategy.name().to_string(),
                })?;
            let chain = filters.chain(config.proxy.filters.iter().chain(&spec.filters));
            let mut services: Vec<&str> = vec![spec.service.as_str()];
            for service in chain.filters().iter().flat_map(|f| f.services()) {
                if !services.contains(&service.as_str()) {
                    services.push(service);
                }
            }
            let mut backends = Vec::with_capacity(services.len());
            for service in services {
                let policy = config.service_policy(service);
                let tls = match upstream_tls.get(service) {
                    Some(tls) => tls.clone(),
                    None => {
                        let tls = Arc::new(UpstreamTls::load(&policy.upstream_tls).map_err(
                            |source| RouterError::UpstreamTls {
                                service: service.to_string(),
                                source,
                            },
                        )?);
                        upstream_tls.insert(service.to_string(), tls.clone());
                        tls
                    }
                };
                backends.push(Backend {
                    slot: directory.slot(service),
                    connect_timeout: policy.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                    eject_after: policy.passive.as_ref().map(|p| p.consecutive_failures),
                    upstream_tls: tls,
                    metrics: RouteMetrics::new(directory.metrics(), &spec.name, service),
                });
            }
            routes.push(Arc::new(Route {
                backends: backends.into_boxed_slice(),
                strategy,
                idle_timeout: config.proxy.upstream_idle_timeout,
                access_log: config.log.access_log,
                filters: chain,
                spec: spec.clone(),
            }));
        }
        routes.sort_by_key(|r| r.spec.precedence());
        Ok(Self {
            routes,
            access_log: config.log.access_log,
            trusted_proxies: config.proxy.trusted_proxies.clone(),
            filters,
        })
    }

    /// The route for a request to `host` (any case, without port) and `path`, with `method`
    /// and header `fields`.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &str,
        fields: &dyn RequestHeaders,
    ) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            path.starts_with(r.spec.path_prefix.as_str())
                && r.matches_host(host)
                && r.matches_conditions(method, fields)
        })
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::path::Path;

    fn router(text: &str) -> Router {
        let config = crate::config::parse(Path::new("t.toml"), text).unwrap();
        let metrics = Arc::new(Metrics::new());
        let strategies = StrategySet::build(&config, &metrics).unwrap();
        let dir = Directory::new(metrics, &[]);
        Router::build(&config, &dir, &strategies, None).unwrap()
    }

    #[test]
    fn longest_prefix_and_hosts() {
        let r = router(
            r#"
registry = { kind = "file", path = "s.toml" }
[[routes]]
path_prefix = "/"
service = "root"
[[routes]]
path_prefix = "/users"
service = "users"
[[routes]]
path_prefix = "/users/admin"
service = "admin"
[[routes]]
path_prefix = "/users"
hosts = ["api.example.com", "*.corp.example"]
service = "api-users"
"#,
        );
        let none = http::HeaderMap::new();
        let svc = |host: &str, path: &str| {
            r.find(host, path, "GET", &none)
                .map(|r| r.spec.service.clone())
        };
        assert_eq!(svc("x", "/"), Some("root".into()));
        assert_eq!(svc("x", "/users/1"), Some("users".into()));
        assert_eq!(svc("x", "/users/admin/1"), Some("admin".into()));
        assert_eq!(svc("API.example.com", "/users/1"), Some("api-users".into()));
        assert_eq!(svc("a.corp.example", "/users"), Some("api-users".into()));
        assert_eq!(svc("corp.example", "/users"), Some("users".into()));
        assert_eq!(svc("api.example.com", "/other"), Some("root".into()));
    }

    #[test]
    fn no_route_matches() {
        let r = router(
            "registry = { kind = \"file\", path = \"s.toml\" }\n[[routes]]\npath_prefix = \"/a\"\nservice = \"a\"\n",
        );
        assert!(r.find("h", "/b", "GET", &http::HeaderMap::new()).is_none());
    }

    #[test]
    fn methods_and_headers_select_among_equal_prefixes() {
        let r = router(
            r#"
registry = { kind = "file", path = "s.toml" }
[[routes]]
path_prefix = "/api"
service = "any"
[[routes]]
path_prefix = "/api"
methods = ["post", "PUT"]
service = "writes"
[[routes]]
path_prefix = "/api"
methods = ["POST"]
headers = { "X-Tenant" = "acme" }
service = "acme-writes"
[[routes]]
path_prefix = "/api/v2"
service = "v2"
"#,
        );
        let svc = |method: &str, tenant: Option<&str>, path: &str| {
            let mut fields = http::HeaderMap::new();
            if let Some(t) = tenant {
                fields.insert("x-tenant", http::HeaderValue::from_str(t).unwrap());
            }
            r.find("h", path, method, &fields)
                .map(|r| r.spec.service.clone())
        };
        assert_eq!(svc("GET", None, "/api/x").as_deref(), Some("any"));
        assert_eq!(svc("POST", None, "/api/x").as_deref(), Some("writes"));
        assert_eq!(
            svc("PUT", Some("acme"), "/api/x").as_deref(),
            Some("writes")
        );
        assert_eq!(
            svc("POST", Some("acme"), "/api/x").as_deref(),
            Some("acme-writes")
        );
        assert_eq!(
            svc("POST", Some("ACME"), "/api/x").as_deref(),
            Some("writes"),
            "values are exact"
        );
        // A longer prefix still wins over more conditions.
        assert_eq!(
            svc("POST", Some("acme"), "/api/v2/x").as_deref(),
            Some("v2")
        );
    }

    #[test]
    fn a_route_left_nothing_is_named_by_check() {
        let text = r#"
registry = { kind = "file", path = "s.toml" }
[[routes]]
path_prefix = "/api"
service = "a"
[[routes]]
path_prefix = "/api"
methods = ["GET"]
service = "b"
[[routes]]
path_prefix = "/api"
service = "c"
[[routes]]
path_prefix = "/api"
hosts = ["*.example.com"]
service = "d"
[[routes]]
path_prefix = "/api"
hosts = ["x.example.com"]
headers = { "x-a" = "1" }
service = "e"
"#;
        let error = crate::config::parse(Path::new("t.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("routes[2]: can never match: routes[0] is tried first"),
            "{error}"
        );
        assert!(
            !error.contains("routes[1]") && !error.contains("routes[4]"),
            "{error}"
        );
        assert!(!error.contains("routes[3]"), "{error}");
    }
}
