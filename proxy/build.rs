//! Builds the built-in strategy plugins from `plugins/` for `wasm32-unknown-unknown` so the
//! gateway embeds them (`include_bytes!`) and never runs a stale `.wasm`.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[(&str, &str)] = &[
    ("round-robin", "sluice_strategy_round_robin"),
    ("least-conn", "sluice_strategy_least_conn"),
    ("consistent-hash", "sluice_strategy_consistent_hash"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("proxy/ sits in the workspace root")
        .to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    for dir in ["sdk", "round-robin", "least-conn", "consistent-hash"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("plugins").join(dir).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );

    // A target dir of its own: the outer build holds the lock on the workspace's.
    let target_dir = out.join("plugins-target");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--profile",
            "wasm-plugin",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for (name, _) in PLUGINS {
        cmd.args(["-p", &format!("sluice-strategy-{name}")]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cargo}: {e}"));
    if !status.success() {
        panic!(
            "building the strategy plugins for wasm32-unknown-unknown failed; \
             is the target installed? (rustup target add wasm32-unknown-unknown)"
        );
    }
    let built = target_dir
        .join("wasm32-unknown-unknown")
        .join("wasm-plugin");
    for (name, file) in PLUGINS {
        let from = built.join(format!("{file}.wasm"));
        let to = out.join(format!("{name}.wasm"));
        copy(&from, &to);
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}
