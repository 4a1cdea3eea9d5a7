//! Balancing strategies: the interface every strategy implements and the native ones
//! (smooth weighted round-robin, weighted least-in-flight). The WASM host plugs in here.

mod native;

pub use native::{LeastConn, RoundRobin};

use std::sync::Arc;

use crate::config::StrategyRef;
use crate::pool::Pool;

/// What a strategy knows of the request besides the pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickRequest<'a> {
    /// From the route's `hash_on`; 0 when unset.
    pub hash: u64,
    /// Instance keys already tried by this request (retries go elsewhere when they can).
    pub exclude: &'a [u64],
}

/// Chooses one eligible instance of a pool for a request.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// The name routes refer to.
    fn name(&self) -> &str;
    /// An index into the pool's eligible instances, or `None` when there is none.
    fn pick(&self, pool: &Pool, request: &PickRequest<'_>) -> Option<usize>;
}

/// Why a strategy could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error("strategy {0:?}: WASM strategies are not supported by this build yet")]
    WasmUnsupported(String),
}

/// Resolves a route's strategy reference to an implementation.
pub fn resolve(reference: &StrategyRef) -> Result<Arc<dyn Strategy>, StrategyError> {
    match reference {
        StrategyRef::RoundRobin => Ok(Arc::new(RoundRobin)),
        StrategyRef::LeastConn => Ok(Arc::new(LeastConn)),
        StrategyRef::Custom(name) => Err(StrategyError::WasmUnsupported(name.clone())),
    }
}
