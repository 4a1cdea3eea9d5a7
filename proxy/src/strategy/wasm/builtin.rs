//! The built-in strategy plugins, built from `plugins/` by `build.rs` and embedded.

/// `(name, module bytes)` of every built-in WASM strategy.
pub const BUILTIN_PLUGINS: &[(&str, &[u8])] = &[
    (
        "round-robin",
        include_bytes!(concat!(env!("OUT_DIR"), "/round-robin.wasm")),
    ),
    (
        "least-conn",
        include_bytes!(concat!(env!("OUT_DIR"), "/least-conn.wasm")),
    ),
    (
        "consistent-hash",
        include_bytes!(concat!(env!("OUT_DIR"), "/consistent-hash.wasm")),
    ),
    (
        "p2c-ewma",
        include_bytes!(concat!(env!("OUT_DIR"), "/p2c-ewma.wasm")),
    ),
];
