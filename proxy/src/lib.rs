//! Sluice: a load-balancing reverse proxy and API gateway on pingora.
//!
//! A request's journey, module by module:
//!
//! - [`registry`]: sources (etcd, file, memory) watch where instances are registered and emit
//!   [`registry::Update`]s; decoders turn registry values into [`registry::InstanceSpec`]s;
//!   the registrar ([`registry::Registration`]) is the service side.
//! - [`pool`]: the [`pool::Directory`] applies updates and swaps one immutable
//!   [`pool::Pool`] per service into its [`pool::ServiceSlot`]; live per-instance state
//!   (in flight, latency, failures) survives every swap.
//! - [`strategy`]: picks an eligible instance per request: the WASM host and plugins, and the
//!   native round-robin and least-conn.
//! - [`gateway`]: the one request engine (admit, try, feedback, finish) and its two drivers:
//!   plain HTTP/1.1 on Sluice's own fast path, everything else through pingora.
//! - [`filters`]: the gateway's policies (authentication, IP rules, limits, request ids),
//!   built with the routes and run in the engine's chain.
//! - [`listener`]: what sits in front of the proxy: the request-header deadline (408) and the
//!   TLS certificates chosen by SNI.
//! - [`health`]: active health checks, passive outlier ejection, and the HTTP probe (also
//!   used by the registrar's `--health-url`).
//! - [`admin`] and [`metrics`]: the admin API and the Prometheus families.
//! - [`config`]: the TOML file, validated into the internal model; [`server`] wires it all;
//!   [`demo`] is the self-contained first run.

pub mod admin;
pub mod background;
pub mod config;
pub mod demo;
pub mod drain;
pub mod fd_limit;
pub mod filters;
pub mod gateway;
pub mod health;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pem;
pub mod pool;
pub mod registry;
pub mod reload;
pub mod server;
pub mod strategy;
