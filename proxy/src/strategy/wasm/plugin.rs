//! A compiled, checked and probed plugin: `Module` + `InstancePre`, ready for per-thread
//! instances. Loading and probing run off the request path.

use std::sync::Arc;

use wasmtime::{InstancePre, Module};

use super::abi::check_module;
use super::instance::{CallError, ThreadInstance};
use super::runtime::{HostState, WasmRuntime, DEFAULT_MEMORY_LIMIT};
use super::LoadError;
use crate::pool::{instance_key, InstanceLive, Member, Pool};
use crate::registry::decode_value;

/// One version of one plugin.
pub struct LoadedPlugin {
    pub(crate) name: Arc<str>,
    /// Where it came from: `builtin:NAME` or a file path.
    pub source: String,
    /// Increases with every successful (re)load of the strategy.
    pub generation: u64,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) has_configure: bool,
    pub(crate) config_json: Vec<u8>,
    pub(crate) memory_limit: usize,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("generation", &self.generation)
            .finish()
    }
}

/// A synthetic pool of `n` instances (weights 100, 50, 150, …; some load) for probes and
/// `sluice plugin check`.
pub fn sample_pool(n: usize) -> Pool {
    let members = (0..n)
        .filter_map(|i| {
            let id = format!("sample-{i}");
            let mut spec =
                decode_value(&id, format!("127.0.0.1:{}", 20_000 + i).as_bytes()).ok()?;
            spec.weight = [100, 50, 150][i % 3];
            spec.tags = if i % 2 == 0 {
                vec!["even".into()]
            } else {
                vec![]
            };
            Some(Member {
                key: instance_key(&id),
                socket: spec.addr.parse().ok(),
                live: Arc::new(InstanceLive::new("sample".into(), id.as_str().into())),
                spec: Arc::new(spec),
            })
        })
        .collect();
    Pool::new("sample".into(), n as u64, members)
}

impl LoadedPlugin {
    /// Compiles `bytes` (binary or WAT), checks the ABI, and probes an instance with sample
    /// picks; any failure refuses the plugin.
    pub fn load(
        runtime: &Arc<WasmRuntime>,
        name: &str,
        source: String,
        bytes: &[u8],
        config: &serde_json::Value,
        generation: u64,
    ) -> Result<Self, LoadError> {
        let module = Module::new(runtime.engine(), bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let has_configure = check_module(&module)?;
        let pre = runtime
            .linker()
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let plugin = Self {
            name: name.into(),
            source,
            generation,
            pre,
            has_configure,
            config_json: serde_json::to_vec(config).unwrap_or_else(|_| b"{}".to_vec()),
            memory_limit: DEFAULT_MEMORY_LIMIT,
        };
        plugin.probe(runtime)?;
        Ok(plugin)
    }

    /// Runs sample picks on a fresh instance: each must return an index in range or -1,
    /// without a trap, within the deadline.
    fn probe(&self, runtime: &Arc<WasmRuntime>) -> Result<(), LoadError> {
        let mut instance = ThreadInstance::new(runtime, self, 16)?;
        for n in [1usize, 2, 3, 16, 64] {
            let pool = sample_pool(n);
            for round in 0..4u64 {
                let picked = instance
                    .pick(&pool, round * 7919, fastrand::u64(..), None, &[])
                    .map_err(|e| match e {
                        CallError::Deadline => {
                            LoadError::Probe(format!("sluice_pick({n}) missed its deadline"))
                        }
                        CallError::Trap(t) => {
                            LoadError::Probe(format!("sluice_pick({n}) trapped: {t}"))
                        }
                        CallError::Buffer => {
                            LoadError::Probe("buffer outside linear memory".into())
                        }
                    })?;
                if picked != -1 && !(0..n as i32).contains(&picked) {
                    return Err(LoadError::Probe(format!(
                        "sluice_pick({n}) returned {picked}, outside [0, {n}) and not -1"
                    )));
                }
            }
        }
        Ok(())
    }
}
