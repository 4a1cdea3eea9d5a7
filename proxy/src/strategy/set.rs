//! Every strategy a config can name, built once and shared by all routes: the built-in WASM
//! plugins, the native ones, and the user's `[strategies.*]` modules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::wasm::{LoadError, WasmRuntime, WasmStrategy, BUILTIN_PLUGINS};
use super::{LeastConn, RoundRobin, Strategy, StrategyInfo};
use crate::config::{BuiltinStrategy, Config, StrategyRef};
use crate::metrics::Metrics;

/// Why a strategy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error("strategies.{name}.wasm: {path}: {source}")]
    Load {
        name: String,
        path: String,
        #[source]
        source: LoadError,
    },
    #[error("built-in strategy {name}: {source}")]
    Builtin {
        name: &'static str,
        #[source]
        source: LoadError,
    },
}

/// A user strategy whose `.wasm` file is watched for changes.
pub struct Watched {
    pub strategy: Arc<WasmStrategy>,
    pub path: PathBuf,
    pub config: serde_json::Value,
    /// Hash of the bytes the strategy was loaded from: the watcher's starting point.
    pub loaded: u64,
}

/// A content hash for change detection (not for security).
pub(crate) fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Strategies by name.
pub struct StrategySet {
    by_name: BTreeMap<String, Arc<dyn Strategy>>,
    watched: Vec<Watched>,
}

impl StrategySet {
    /// Loads the built-ins and every `[strategies.*]` module; every failure is reported.
    pub fn build(config: &Config, metrics: &Metrics) -> Result<Self, Vec<StrategyError>> {
        let mut errors = Vec::new();
        let mut by_name: BTreeMap<String, Arc<dyn Strategy>> = BTreeMap::new();
        by_name.insert(
            BuiltinStrategy::NativeRoundRobin.name().into(),
            Arc::new(RoundRobin),
        );
        by_name.insert(
            BuiltinStrategy::NativeLeastConn.name().into(),
            Arc::new(LeastConn),
        );
        let runtime = match WasmRuntime::global() {
            Ok(r) => r.clone(),
            Err(source) => {
                return Err(vec![StrategyError::Builtin {
                    name: "(engine)",
                    source,
                }])
            }
        };
        for (name, bytes) in BUILTIN_PLUGINS {
            match WasmStrategy::load(
                runtime.clone(),
                metrics,
                name,
                format!("builtin:{name}"),
                bytes,
                serde_json::json!({}),
                Vec::new(),
            ) {
                Ok(s) => {
                    by_name.insert(name.to_string(), Arc::new(s));
                }
                Err(source) => errors.push(StrategyError::Builtin { name, source }),
            }
        }
        let mut watched = Vec::new();
        for (name, spec) in &config.strategies {
            let path = spec.wasm.display().to_string();
            let loaded = super::wasm::read_module(&spec.wasm).and_then(|bytes| {
                WasmStrategy::load(
                    runtime.clone(),
                    metrics,
                    name,
                    path.clone(),
                    &bytes,
                    spec.config.clone(),
                    spec.tags.clone(),
                )
                .map(|s| (s, content_hash(&bytes)))
            });
            match loaded {
                Ok((s, hash)) => {
                    let s = Arc::new(s);
                    by_name.insert(name.clone(), s.clone());
                    watched.push(Watched {
                        strategy: s,
                        path: spec.wasm.clone(),
                        config: spec.config.clone(),
                        loaded: hash,
                    });
                }
                Err(source) => errors.push(StrategyError::Load {
                    name: name.clone(),
                    path,
                    source,
                }),
            }
        }
        if errors.is_empty() {
            Ok(Self { by_name, watched })
        } else {
            Err(errors)
        }
    }

    /// The strategy a route refers to.
    pub fn get(&self, reference: &StrategyRef) -> Option<Arc<dyn Strategy>> {
        self.by_name.get(reference.name()).cloned()
    }

    /// Every strategy's admin view, by name.
    pub fn infos(&self) -> Vec<StrategyInfo> {
        self.by_name.values().map(|s| s.info()).collect()
    }

    /// The user strategies whose files are watched.
    pub fn watched(&self) -> &[Watched] {
        &self.watched
    }
}
