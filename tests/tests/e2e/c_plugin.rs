//! The C example plugin (`plugins/examples/canary.c`) built with clang as docs/plugin-abi.md
//! says, checked with `sluice plugin check` (its log lines shown, a wrong config refused), and
//! serving a route: tag names reach it, and retries come back through it with the tried
//! instance left out, so a retried stable request never lands on the canary.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_tests::{client, free_port, run_sluice, Gateway, Upstream};

/// Builds the example with the documented command into `dir`.
fn build_canary(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples/canary.c");
    let out = dir.join("canary.wasm");
    let built = Command::new("clang")
        .args(["--target=wasm32-unknown-unknown", "-O2", "-nostdlib"])
        .args(["-Wl,--no-entry", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .expect("clang (Debian packages clang and lld) is a test prerequisite");
    assert!(
        built.status.success(),
        "clang failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

#[test]
fn the_c_example_builds_with_clang_and_passes_plugin_check() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = build_canary(dir.path());
    let file = wasm.to_str().unwrap();
    let out = run_sluice(&[
        "plugin", "check", file, "--tags", "canary", "--picks", "400",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ABI v1 ok, probe ok"), "{stdout}");
    assert!(
        stdout.contains("tag bit 0 `canary` on every second instance"),
        "{stdout}"
    );
    // Without the header every pick goes to the untagged (odd) instances, in turn.
    assert!(
        stdout.contains("n=2 ") && stdout.contains("[0, 400]"),
        "{stdout}"
    );
    assert!(stdout.contains("n=4096"), "{stdout}");
    assert!(!stdout.contains("FELL BACK"), "{stdout}");
    // The plugin's own log line, once per instance of the module (probe and thread).
    assert!(stderr.contains("canary: configured"), "{stderr}");

    // Without the tag among the strategy's tags, its configure refuses, and says why.
    let out = run_sluice(&["plugin", "check", file, "--tags", "gpu"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sluice_configure rejected the config (returned 1)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("canary: the tag is not among the strategy's tags"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_fails_when_sample_picks_fall_back() {
    // A buffer of at most 100 records: `sluice_buffer` answers 0 ("cannot") for the sample
    // pools of 256 and 4 096, every pick there falls back, and the check fails.
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.wat");
    std::fs::write(
        &small,
        r#"(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_buffer") (param $max i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $max) (i32.const 100))
      (then (i32.const 0)) (else (i32.const 1024))))
  (func (export "sluice_pick") (param $n i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let out = run_sluice(&["plugin", "check", small.to_str().unwrap(), "--picks", "50"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FELL BACK to round-robin"), "{stdout}");
    assert!(stderr.contains("sample picks fell back"), "{stderr}");
}

#[tokio::test]
async fn retries_pick_through_the_plugin_and_stay_off_the_canary() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = build_canary(dir.path());
    let canary = Upstream::start("b-canary").await;
    let stable = Upstream::start("c-stable").await;
    // Sorted by id the dead instance comes first and the canary right after it: a retry in
    // plain round-robin order would land on the canary.
    let dead_port = free_port();
    let services = format!(
        "[services.svc]\ninstances = [\
         {{ id = \"a-dead\", addr = \"127.0.0.1:{dead_port}\" }}, \
         {{ id = \"b-canary\", addr = \"{}\", tags = [\"canary\"] }}, \
         {{ id = \"c-stable\", addr = \"{}\" }}]\n",
        canary.addr, stable.addr
    );
    let gw = Gateway::start(
        &format!(
            "[strategies.canary]\nwasm = \"{}\"\ntags = [\"gpu\", \"canary\"]\n\
             config = {{ header = \"x-canary\", tag = \"canary\" }}\n\n\
             [services.svc]\npassive = false\n\n\
             [[routes]]\npath_prefix = \"/\"\nservice = \"svc\"\nstrategy = \"canary\"\nretries = 1\n",
            wasm.display()
        ),
        &services,
    )
    .await;
    let http = client();
    for i in 0..40 {
        let resp = http.get(gw.url(&format!("/s{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "stable request {i}");
    }
    assert_eq!(
        canary.hits(),
        0,
        "a retried stable request reached the canary"
    );
    assert_eq!(stable.hits(), 40);
    for i in 0..10 {
        let resp = http
            .get(gw.url(&format!("/c{i}")))
            .header("x-canary", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "canary request {i}");
    }
    // Tag "canary" is bit 1 of this strategy's tags: the plugin found it by name.
    assert_eq!(canary.hits(), 10);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"sluice_upstream_retries_total{route=""#),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("sluice_strategy_fallbacks_total{") && !l.ends_with(" 0")),
        "the plugin answered every pick itself:\n{metrics}"
    );
}
