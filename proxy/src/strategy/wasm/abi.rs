//! ABI v1 (SPEC §6): buffer layout constants and the check of a module's imports and exports.

use wasmtime::{ExternType, FuncType, Module, ValType};

use super::LoadError;

pub(crate) const ABI_VERSION: u32 = 1;
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

/// `(name, i32 params, i32 results, required)` of every export the host knows.
const EXPORTS: &[(&str, usize, usize, bool)] = &[
    ("sluice_abi_v1", 0, 0, true),
    ("sluice_buffer", 1, 1, true),
    ("sluice_pick", 1, 1, true),
    ("sluice_alloc", 1, 1, false),
    ("sluice_configure", 2, 1, false),
    ("sluice_tags", 2, 1, false),
];

/// The optional exports a module has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OptionalExports {
    /// `sluice_configure` (with `sluice_alloc`): takes the strategy's `config` as JSON.
    pub(crate) configure: bool,
    /// `sluice_tags` (with `sluice_alloc`): takes the names of the strategy's `tags`.
    pub(crate) tags: bool,
}

/// `(name, i32 params, i32 results)` of every import the host provides.
const IMPORTS: &[(&str, usize, usize)] = &[("log", 3, 0), ("request_header", 4, 1)];

fn expected(params: usize, results: usize) -> String {
    signature(&vec![ValType::I32; params], &vec![ValType::I32; results])
}

/// Checks imports (only `sluice.log` and `sluice.request_header`) and exports (names and
/// signatures); returns which optional exports exist (`sluice_alloc` exactly when
/// `sluice_configure` or `sluice_tags` does).
pub(crate) fn check_module(module: &Module) -> Result<OptionalExports, LoadError> {
    for import in module.imports() {
        let allowed = IMPORTS
            .iter()
            .find(|(name, _, _)| import.module() == IMPORT_MODULE && import.name() == *name);
        match (allowed, import.ty()) {
            (Some((name, params, results)), ExternType::Func(ty)) => {
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
    };
    let wants_alloc = optional.configure || optional.tags;
    match (has("sluice_alloc"), wants_alloc) {
        (true, true) | (false, false) => Ok(optional),
        (false, true) => Err(LoadError::MissingExport(
            "sluice_alloc (sluice_configure and sluice_tags receive their bytes in memory it returns)"
                .into(),
        )),
        (true, false) => Err(LoadError::MissingExport(
            "sluice_configure or sluice_tags (sluice_alloc alone is never called)".into(),
        )),
    }
}
