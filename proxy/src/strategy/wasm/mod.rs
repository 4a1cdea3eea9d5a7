//! The WebAssembly strategy host (ABI v1, SPEC §6, and v2, docs/plugin-abi.md): one engine, one `Module` + `InstancePre`
//! per plugin version, one long-lived instance per worker thread, epoch deadlines, memory caps,
//! native round-robin when a plugin fails, hot reload.

mod abi;
mod builtin;
mod check;
mod clock_hint;
mod guest_memory;
mod instance;
mod plugin;
mod runtime;
mod strategy;
mod ticker;

pub use builtin::BUILTIN_PLUGINS;
pub use check::{check_file, CheckSettings, PickReport};
pub use plugin::{sample_pool, sample_pool_tagged, LoadedPlugin, PluginSettings};
pub use runtime::{WasmRuntime, DEFAULT_DEADLINE, DEFAULT_MEMORY_LIMIT};
pub use strategy::{FallbackReason, WasmStrategy, MAX_FAILURES_PER_MINUTE};

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a valid WebAssembly module: {0}")]
    Compile(String),
    #[error("import {module}.{name} is not allowed (only sluice.log, sluice.request_header and, in ABI v2, sluice.live, sluice.live_of and sluice.tried)")]
    ForbiddenImport { module: String, name: String },
    #[error("import {0} is part of ABI v2: export sluice_abi_v2 instead of sluice_abi_v1")]
    ImportNeedsV2(String),
    #[error("import {name} has signature {found}, expected {expected}")]
    ImportSignature {
        name: String,
        expected: String,
        found: String,
    },
    #[error("missing export {0}")]
    MissingExport(String),
    #[error("export {name} has signature {found}, expected {expected}")]
    ExportSignature {
        name: String,
        expected: String,
        found: String,
    },
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// `sluice_configure` refused the config, or `sluice_tags` the tag names.
    #[error("{export} rejected {what} (returned {code})")]
    Refused {
        export: &'static str,
        what: &'static str,
        code: i32,
    },
    #[error("probe failed: {0}")]
    Probe(String),
    #[error("WASM engine: {0}")]
    Engine(String),
}

/// The bytes of the module at `path`: the one read of a plugin file (config strategies,
/// reloads, `plugin check`), its error naming the path.
pub fn read_module(path: &std::path::Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })
}
