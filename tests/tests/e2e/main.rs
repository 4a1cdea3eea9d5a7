//! End-to-end suites: the real `sluice` binary against real upstreams, a real `etcd` and
//! plugins built from `plugins/`. One test binary for all of them (each suite is a module), so
//! pingora and wasmtime are linked once rather than once per suite.
//! Run one suite with `cargo test -p sluice-tests --test e2e -- limits::`.

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

mod c_plugin;
mod config_check;
mod dashboard;
mod demo;
mod descriptors;
mod desync;
mod etcd_discovery;
mod failover;
mod fast_path;
mod file_registry;
mod filters;
mod grpc;
mod h2;
mod health;
mod in_flight;
mod limits;
mod registrar;
mod routing;
mod signals;
mod tls;
mod wasm_abi_v2;
mod wasm_gateway;
mod wasm_plugins;
mod websocket;
