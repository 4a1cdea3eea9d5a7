//! Builds every plugin of `plugins/` (built-ins and the hostile `chaos`) for the suites that
//! load `.wasm` files from disk (`SLUICE_TEST_PLUGINS` names the folder), and the gRPC test
//! service from `proto/echo.proto`.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ sits in the workspace root");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let built = sluice_plugin_build::build_plugins(
        root,
        &[
            "sluice-strategy-round-robin",
            "sluice-strategy-least-conn",
            "sluice-strategy-consistent-hash",
            "sluice-strategy-p2c-ewma",
            "sluice-strategy-chaos",
        ],
        &out.join("plugins-target"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("cargo:rustc-env=SLUICE_TEST_PLUGINS={}", built.display());
    // The gRPC test service (needs protoc).
    tonic_prost_build::compile_protos(manifest_dir.join("proto/echo.proto"))
        .unwrap_or_else(|e| panic!("compiling tests/proto/echo.proto: {e}"));
}
