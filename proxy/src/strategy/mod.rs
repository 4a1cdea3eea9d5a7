//! Balancing strategies: the interface every strategy implements, the native ones (smooth
//! weighted round-robin, weighted least-in-flight: the fallback and the baseline), the WASM
//! host, and the [`StrategySet`] that resolves names for routes.

mod native;
mod reload;
mod set;
pub mod wasm;

pub use native::{LeastConn, RoundRobin};
pub use reload::StrategyWatch;
pub use set::{StrategyError, StrategySet};

use serde::Serialize;

use crate::pool::Pool;

/// What a strategy knows of the request besides the pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickRequest<'a> {
    /// From the route's `hash_on`; 0 when unset.
    pub hash: u64,
    /// Instance keys already tried by this request (retries go elsewhere when they can).
    pub exclude: &'a [u64],
    /// The request's headers, for plugins that read them (`sluice.request_header`).
    pub headers: Option<&'a dyn RequestHeaders>,
}

/// The header fields of a request, as a strategy reads them: pingora's parsed header on its
/// path, the raw parsed fields on the fast path (no map built per request).
pub trait RequestHeaders: Sync {
    /// The value of the first field named `name` (any case).
    fn field(&self, name: &str) -> Option<&[u8]>;
}

impl RequestHeaders for http::HeaderMap {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
}

/// The fast path's parsed request: strategies read its fields in place.
impl RequestHeaders for sluice_http1::RequestHead<'_, '_> {
    fn field(&self, name: &str) -> Option<&[u8]> {
        sluice_http1::RequestHead::field(self, name)
    }
}

impl std::fmt::Debug for dyn RequestHeaders + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestHeaders")
    }
}

/// What `/admin/strategies` shows of a strategy.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyInfo {
    pub name: String,
    /// `native` or `wasm`.
    pub kind: &'static str,
    /// `builtin` or the `.wasm` path.
    pub source: String,
    /// Increases with every successful reload.
    pub generation: u64,
    /// `active` or `disabled`.
    pub state: &'static str,
    /// Requests that fell back to native round-robin, by reason.
    #[serde(skip)]
    pub fallbacks: Vec<(&'static str, u64)>,
}

/// Chooses one eligible instance of a pool for a request.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// The name routes refer to.
    fn name(&self) -> &str;

    /// An index into the pool's eligible instances, or `None` when there is none.
    fn pick(&self, pool: &Pool, request: &PickRequest<'_>) -> Option<usize>;

    /// The admin view.
    fn info(&self) -> StrategyInfo {
        StrategyInfo {
            name: self.name().to_string(),
            kind: "native",
            source: "builtin".into(),
            generation: 1,
            state: "active",
            fallbacks: Vec::new(),
        }
    }
}
