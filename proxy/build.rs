//! Builds the built-in strategy plugins from `plugins/` for `wasm32-unknown-unknown` so the
//! gateway embeds them (`include_bytes!`) and never runs a stale `.wasm`.

use std::path::PathBuf;

const PLUGINS: &[(&str, &str)] = &[
    ("round-robin", "sluice-strategy-round-robin"),
    ("least-conn", "sluice-strategy-least-conn"),
    ("consistent-hash", "sluice-strategy-consistent-hash"),
    ("p2c-ewma", "sluice-strategy-p2c-ewma"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("proxy/ sits in the workspace root");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let packages: Vec<&str> = PLUGINS.iter().map(|(_, p)| *p).collect();
    let built = sluice_plugin_build::build_plugins(root, &packages, &out.join("plugins-target"))
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, package) in PLUGINS {
        let from = built.join(sluice_plugin_build::wasm_file(package));
        let to = out.join(format!("{name}.wasm"));
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    }
}
