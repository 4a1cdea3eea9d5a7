//! A compiled, checked and probed plugin: `Module` + `InstancePre`, ready for per-thread
//! instances. Loading and probing run off the request path.

use std::sync::Arc;

use wasmtime::{InstancePre, Module};

use super::abi::{check_module, Abi, OptionalExports};
use super::instance::{Answer, CallError, Pick, ThreadInstance};
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
    pub(crate) abi: Abi,
    pub(crate) exports: OptionalExports,
    pub(crate) config_json: Vec<u8>,
    /// The strategy's `tags`: bit i of a record's tag bits is `tags[i]`.
    pub(crate) tags: Arc<[String]>,
    /// The tag names joined by `\n`, as `sluice_tags` receives them.
    pub(crate) tags_text: Vec<u8>,
    pub(crate) memory_limit: usize,
}

/// What the config hands a plugin: its `config` table and its `tags`.
#[derive(Debug, Clone, Copy)]
pub struct PluginSettings<'a> {
    pub config: &'a serde_json::Value,
    pub tags: &'a [String],
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

/// A synthetic pool of `n` instances (weights 100, 50, 150, …; every second one tagged
/// `even`) for probes and tests.
pub fn sample_pool(n: usize) -> Pool {
    sample_pool_tagged(n, &["even".to_string()])
}

/// A synthetic pool of `n` instances `sample-0` … : weights 100, 50, 150 in turn, instance
/// `i` carrying `tags[j]` when `i` is a multiple of `j + 2` (the first tag on every second
/// instance, the second on every third, …), nothing in flight.
pub fn sample_pool_tagged(n: usize, tags: &[String]) -> Pool {
    let members = (0..n)
        .filter_map(|i| {
            let id = format!("sample-{i}");
            let mut spec =
                decode_value(&id, format!("127.0.0.1:{}", 20_000 + i).as_bytes()).ok()?;
            spec.weight = [100, 50, 150][i % 3];
            spec.tags = tags
                .iter()
                .enumerate()
                .filter(|(j, _)| i % (j + 2) == 0)
                .map(|(_, t)| t.clone())
                .collect();
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
        settings: PluginSettings<'_>,
        generation: u64,
    ) -> Result<Self, LoadError> {
        let module = Module::new(runtime.engine(), bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let shape = check_module(&module)?;
        let pre = runtime
            .linker()
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let plugin = Self {
            name: name.into(),
            source,
            generation,
            pre,
            abi: shape.abi,
            exports: shape.exports,
            config_json: serde_json::to_vec(settings.config).unwrap_or_else(|_| b"{}".to_vec()),
            tags: settings.tags.into(),
            tags_text: settings.tags.join("\n").into_bytes(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
        };
        plugin.probe(runtime)?;
        Ok(plugin)
    }

    /// Runs sample picks on a fresh instance, first tries and retries: each must return an
    /// index in range or -1, without a trap, within the deadline.
    fn probe(&self, runtime: &Arc<WasmRuntime>) -> Result<(), LoadError> {
        let mut instance = ThreadInstance::new(runtime, self, 16)?;
        for n in [1usize, 2, 3, 16, 64] {
            let pool = sample_pool_tagged(n, &self.tags);
            // A retry after the first instance failed (offers the other n - 1).
            let tried = [pool.eligible(0).key];
            for round in 0..6u64 {
                let exclude: &[u64] = if round >= 4 { &tried } else { &[] };
                let pick = Pick {
                    hash: round * 7919,
                    random: fastrand::u64(..),
                    exclude,
                    headers: None,
                };
                let what = if exclude.is_empty() { "" } else { " (a retry)" };
                let answer = instance
                    .pick(&pool, pick, &self.tags)
                    .map_err(|e| match e {
                        CallError::Deadline => {
                            LoadError::Probe(format!("sluice_pick({n}){what} missed its deadline"))
                        }
                        CallError::Trap(t) => {
                            LoadError::Probe(format!("sluice_pick({n}){what} trapped: {t}"))
                        }
                        CallError::Buffer => {
                            LoadError::Probe("buffer outside linear memory".into())
                        }
                        e @ CallError::Prepare { .. } => LoadError::Probe(e.to_string()),
                    })?;
                if let Answer::OutOfRange { answer, offered } = answer {
                    return Err(LoadError::Probe(format!(
                        "sluice_pick({offered}){what} returned {answer}, outside [0, {offered}) and not -1"
                    )));
                }
            }
        }
        Ok(())
    }
}
