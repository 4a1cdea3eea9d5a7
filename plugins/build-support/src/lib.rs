//! Builds strategy plugins of this workspace for `wasm32-unknown-unknown` from a build script
//! (the gateway embeds the built-ins; the tests load the rest), so nothing runs a stale `.wasm`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` with the `wasm-plugin` profile into `target_dir` and returns the folder
/// holding the `.wasm` files. Prints the `rerun-if-changed` lines for `plugins/`.
pub fn build_plugins(
    workspace_root: &Path,
    packages: &[&str],
    target_dir: &Path,
) -> Result<PathBuf, String> {
    println!(
        "cargo:rerun-if-changed={}",
        workspace_root.join("plugins").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace_root.join("Cargo.toml").display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // A target dir of its own: the outer build holds the lock on the workspace's.
    cmd.current_dir(workspace_root)
        .args([
            "build",
            "--quiet",
            "--profile",
            "wasm-plugin",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        cmd.args(["-p", package]);
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
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| format!("running {cargo}: {e}"))?;
    if !status.success() {
        return Err(
            "building the strategy plugins for wasm32-unknown-unknown failed; \
                    is the target installed? (rustup target add wasm32-unknown-unknown)"
                .into(),
        );
    }
    Ok(target_dir
        .join("wasm32-unknown-unknown")
        .join("wasm-plugin"))
}

/// The file name cargo gives a plugin package's module: `sluice-strategy-x` -> `sluice_strategy_x.wasm`.
pub fn wasm_file(package: &str) -> String {
    format!("{}.wasm", package.replace('-', "_"))
}
