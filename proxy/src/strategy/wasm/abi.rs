//! ABI v1 (SPEC §6) and v2 (docs/plugin-abi.md): buffer layout constants and the check of a
//! module's imports and exports.

use wasmtime::{ExternType, FuncType, Module, ValType};

use super::LoadError;
use crate::pool::LiveCell;

/// The ABI a module speaks, from its marker export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abi {
    /// `sluice_abi_v1`: the live fields of every record are rewritten before each pick.
    V1,
    /// `sluice_abi_v2`: records change only with the pool; live fields are read on demand
    /// (`sluice.live`), retries offer the whole pool (`sluice.tried`), `sluice_prepare` runs
    /// when the records changed.
    V2,
}

impl Abi {
    /// The version number written in the header.
    pub(crate) fn version(self) -> u32 {
        match self {
            Abi::V1 => 1,
            Abi::V2 => 2,
        }
    }
}

/// Bytes `sluice.live` writes per instance: in flight, EWMA, failures (u32 each).
pub(crate) const LIVE_SIZE: usize = 12;
pub(crate) const HEADER_SIZE: usize = 32;
pub(crate) const RECORD_SIZE: usize = 32;

pub(crate) mod header {
    pub(crate) const VERSION: usize = 0;
    pub(crate) const N: usize = 4;
    pub(crate) const RECORD_SIZE: usize = 8;
    pub(crate) const FLAGS: usize = 12;
    pub(crate) const REQUEST_HASH: usize = 16;
    pub(crate) const RANDOM: usize = 24;
}

pub(crate) mod record {
    pub(crate) const KEY: usize = 0;
    pub(crate) const WEIGHT: usize = 8;
    pub(crate) const IN_FLIGHT: usize = 12;
    pub(crate) const EWMA_US: usize = 16;
    pub(crate) const FAILURES: usize = 20;
    pub(crate) const TAGS: usize = 24;
    pub(crate) const RESERVED: usize = 28;
}

/// The live fields of one instance as the ABI lays them out: in flight, latency EWMA (µs),
/// consecutive failures, u32 LE each. v1 copies them into each record (from
/// [`record::IN_FLIGHT`]), v2's `sluice.live` into the module's memory.
pub(crate) fn live_fields(live: &LiveCell) -> [u8; LIVE_SIZE] {
    const _: () = assert!(record::EWMA_US == record::IN_FLIGHT + 4);
    const _: () = assert!(record::FAILURES == record::EWMA_US + 4);
    let mut fields = [0u8; LIVE_SIZE];
    fields[0..4].copy_from_slice(&live.in_flight().to_le_bytes());
    fields[4..8].copy_from_slice(&live.ewma_us().to_le_bytes());
    fields[8..12].copy_from_slice(&live.failures().to_le_bytes());
    fields
}

/// The one import module a plugin may use.
pub(crate) const IMPORT_MODULE: &str = "sluice";

fn signature(params: &[ValType], results: &[ValType]) -> String {
    let list = |types: &[ValType]| {
        types
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

fn func_signature(ty: &FuncType) -> String {
    let params: Vec<ValType> = ty.params().collect();
    let results: Vec<ValType> = ty.results().collect();
    signature(&params, &results)
}

fn is_i32s(types: impl ExactSizeIterator<Item = ValType>, n: usize) -> bool {
    types.len() == n && types.into_iter().all(|t| t.is_i32())
}

fn has_signature(ty: &FuncType, params: usize, results: usize) -> bool {
    is_i32s(ty.params(), params) && is_i32s(ty.results(), results)
}

/// `(name, i32 params, i32 results, required)` of every export the host knows (besides the
/// version marker, of which a module has exactly one).
const EXPORTS: &[(&str, usize, usize, bool)] = &[
    ("sluice_buffer", 1, 1, true),
    ("sluice_pick", 1, 1, true),
    ("sluice_alloc", 1, 1, false),
    ("sluice_configure", 2, 1, false),
    ("sluice_tags", 2, 1, false),
    ("sluice_prepare", 1, 1, false),
];

/// The version markers, `() -> ()`, and the ABI each declares.
const MARKERS: &[(&str, Abi)] = &[("sluice_abi_v1", Abi::V1), ("sluice_abi_v2", Abi::V2)];

/// The optional exports a module has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OptionalExports {
    /// `sluice_configure` (with `sluice_alloc`): takes the strategy's `config` as JSON.
    pub(crate) configure: bool,
    /// `sluice_tags` (with `sluice_alloc`): takes the names of the strategy's `tags`.
    pub(crate) tags: bool,
    /// `sluice_prepare` (v2 only): told when the records changed, before the pick.
    pub(crate) prepare: bool,
}

/// What a module declares: its ABI and which optional exports it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModuleShape {
    pub(crate) abi: Abi,
    pub(crate) exports: OptionalExports,
}

/// `(name, i32 params, i32 results, first ABI with it)` of every import the host provides.
const IMPORTS: &[(&str, usize, usize, Abi)] = &[
    ("log", 3, 0, Abi::V1),
    ("request_header", 4, 1, Abi::V1),
    ("live", 3, 1, Abi::V2),
    ("live_of", 3, 1, Abi::V2),
    ("tried", 1, 1, Abi::V2),
];

fn expected(params: usize, results: usize) -> String {
    signature(&vec![ValType::I32; params], &vec![ValType::I32; results])
}

/// The ABI a module declares by its marker export: exactly one of `sluice_abi_v1` and
/// `sluice_abi_v2`, a function `() -> ()`.
fn declared_abi(module: &Module) -> Result<Abi, LoadError> {
    let mut found = None;
    for (name, abi) in MARKERS {
        match module.get_export(name) {
            None => continue,
            Some(ExternType::Func(ty)) if has_signature(&ty, 0, 0) => {}
            Some(ExternType::Func(ty)) => {
                return Err(LoadError::ExportSignature {
                    name: name.to_string(),
                    expected: expected(0, 0),
                    found: func_signature(&ty),
                })
            }
            Some(_) => {
                return Err(LoadError::ExportSignature {
                    name: name.to_string(),
                    expected: expected(0, 0),
                    found: "not a function".into(),
                })
            }
        }
        if found.replace(*abi).is_some() {
            return Err(LoadError::MissingExport(
                "exactly one version marker (sluice_abi_v1 and sluice_abi_v2 both exported)".into(),
            ));
        }
    }
    found.ok_or_else(|| LoadError::MissingExport("sluice_abi_v1 or sluice_abi_v2".into()))
}

/// Checks the version marker, imports (only those of module `sluice` the module's ABI has)
/// and exports (names and signatures); returns the ABI and which optional exports exist
/// (`sluice_alloc` exactly when `sluice_configure` or `sluice_tags` does; `sluice_prepare`
/// only in v2).
pub(crate) fn check_module(module: &Module) -> Result<ModuleShape, LoadError> {
    let abi = declared_abi(module)?;
    for import in module.imports() {
        let known = IMPORTS
            .iter()
            .find(|(name, ..)| import.module() == IMPORT_MODULE && import.name() == *name);
        if let Some((name, _, _, Abi::V2)) = known {
            if abi == Abi::V1 {
                return Err(LoadError::ImportNeedsV2(format!("{IMPORT_MODULE}.{name}")));
            }
        }
        match (known, import.ty()) {
            (Some((name, params, results, _)), ExternType::Func(ty)) => {
                if !has_signature(&ty, *params, *results) {
                    return Err(LoadError::ImportSignature {
                        name: format!("{IMPORT_MODULE}.{name}"),
                        expected: expected(*params, *results),
                        found: func_signature(&ty),
                    });
                }
            }
            _ => {
                return Err(LoadError::ForbiddenImport {
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                })
            }
        }
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        _ => return Err(LoadError::MissingExport("memory (a linear memory)".into())),
    }
    let has = |name: &str| matches!(module.get_export(name), Some(ExternType::Func(_)));
    for (name, params, results, required) in EXPORTS {
        match module.get_export(name) {
            Some(ExternType::Func(ty)) if !has_signature(&ty, *params, *results) => {
                return Err(LoadError::ExportSignature {
                    name: name.to_string(),
                    expected: expected(*params, *results),
                    found: func_signature(&ty),
                });
            }
            Some(ExternType::Func(_)) => {}
            Some(_) => {
                return Err(LoadError::ExportSignature {
                    name: name.to_string(),
                    expected: expected(*params, *results),
                    found: "not a function".into(),
                })
            }
            None if *required => return Err(LoadError::MissingExport(name.to_string())),
            None => {}
        }
    }
    let optional = OptionalExports {
        configure: has("sluice_configure"),
        tags: has("sluice_tags"),
        prepare: has("sluice_prepare"),
    };
    if optional.prepare && abi == Abi::V1 {
        return Err(LoadError::MissingExport(
            "sluice_abi_v2 (sluice_prepare is part of ABI v2; a v1 module is never prepared)"
                .into(),
        ));
    }
    let shape = ModuleShape {
        abi,
        exports: optional,
    };
    let wants_alloc = optional.configure || optional.tags;
    match (has("sluice_alloc"), wants_alloc) {
        (true, true) | (false, false) => Ok(shape),
        (false, true) => Err(LoadError::MissingExport(
            "sluice_alloc (sluice_configure and sluice_tags receive their bytes in memory it returns)"
                .into(),
        )),
        (true, false) => Err(LoadError::MissingExport(
            "sluice_configure or sluice_tags (sluice_alloc alone is never called)".into(),
        )),
    }
}
