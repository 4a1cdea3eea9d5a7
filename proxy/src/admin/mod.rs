//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/admin/services`,
//! `/admin/strategies`, behind an optional bearer token (all but `/healthz`).

mod app;
mod views;

pub use app::AdminApp;
