//! ABI v2 from the outside, with hand-written WAT modules loaded by the real host: records
//! written once per pool, `sluice_prepare` run exactly when they changed, live fields through
//! `sluice.live` and `sluice.live_of`, retries with `sluice.tried`, and the refusals that keep
//! v1 and v2 apart.

use std::path::PathBuf;

use serde_json::json;
use sluice::metrics::Metrics;
use sluice::strategy::wasm::{sample_pool, WasmRuntime, WasmStrategy};
use sluice::strategy::{PickRequest, Strategy};

/// A v2 module. Buffer at 1024 (header, then 32-byte records), live fields read to 65536.
/// `sluice_prepare` counts its calls and refuses pools of 5. `sluice_pick` answers, by the
/// request hash: 1 → prepares so far - 1; 2 → the heaviest record; otherwise, on a retry, the
/// first untried instance, and on a first try the one with the most requests in flight.
const PROBE_V2: &str = r#"(module
  (import "sluice" "live" (func $live (param i32 i32 i32) (result i32)))
  (import "sluice" "tried" (func $tried (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $prepares (mut i32) (i32.const 0))
  (func (export "sluice_abi_v2"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_prepare") (param $n i32) (result i32)
    (global.set $prepares (i32.add (global.get $prepares) (i32.const 1)))
    (i32.eq (local.get $n) (i32.const 5)))
  (func $argmax (param $n i32) (param $base i32) (param $stride i32) (result i32)
    (local $i i32) (local $best i32) (local $best_value i32) (local $v i32)
    (local.set $best_value (i32.const -1))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $v (i32.load (i32.add (local.get $base)
        (i32.mul (local.get $i) (local.get $stride)))))
      (if (i32.gt_s (local.get $v) (local.get $best_value))
        (then (local.set $best (local.get $i)) (local.set $best_value (local.get $v))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $best))
  (func (export "sluice_pick") (param $n i32) (result i32)
    (local $i i32)
    (if (i32.eq (i32.load (i32.const 1040)) (i32.const 1))
      (then (return (i32.sub (global.get $prepares) (i32.const 1)))))
    (if (i32.eq (i32.load (i32.const 1040)) (i32.const 2))
      (then (return (call $argmax (local.get $n) (i32.const 1064) (i32.const 32)))))
    (if (i32.and (i32.load (i32.const 1036)) (i32.const 1))
      (then
        (block $done (loop $next
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (if (i32.eqz (call $tried (local.get $i))) (then (return (local.get $i))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $next)))
        (return (i32.const -1))))
    (if (i32.ne (call $live (i32.const 0) (local.get $n) (i32.const 65536)) (local.get $n))
      (then (return (i32.const -1))))
    (call $argmax (local.get $n) (i32.const 65536) (i32.const 12))))"#;

/// A v2 module that reads two instances' live fields in one `sluice.live_of` call. By the
/// request hash: 1 → asks for indices 0 and 99 (out of range) and answers 3 when refused;
/// 2 → asks with the output overlapping the indices and answers 3 when refused; otherwise asks
/// for 2 and 3 and answers the one with more requests in flight (-1 when the call failed).
const LIVE_OF_V2: &str = r#"(module
  (import "sluice" "live_of" (func $live_of (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "sluice_abi_v2"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_pick") (param $n i32) (result i32)
    (if (i32.eq (i32.load (i32.const 1040)) (i32.const 1))
      (then
        (i32.store (i32.const 2048) (i32.const 0))
        (i32.store (i32.const 2052) (i32.const 99))
        (return (select (i32.const 3) (i32.const 0)
          (i32.eq (call $live_of (i32.const 2048) (i32.const 2) (i32.const 4096))
            (i32.const -1))))))
    (if (i32.eq (i32.load (i32.const 1040)) (i32.const 2))
      (then
        (i32.store (i32.const 2048) (i32.const 0))
        (i32.store (i32.const 2052) (i32.const 1))
        (return (select (i32.const 3) (i32.const 0)
          (i32.eq (call $live_of (i32.const 2048) (i32.const 2) (i32.const 2052))
            (i32.const -1))))))
    (i32.store (i32.const 2048) (i32.const 2))
    (i32.store (i32.const 2052) (i32.const 3))
    (if (i32.ne (call $live_of (i32.const 2048) (i32.const 2) (i32.const 4096)) (i32.const 2))
      (then (return (i32.const -1))))
    (select (i32.const 2) (i32.const 3)
      (i32.gt_u (i32.load (i32.const 4096)) (i32.load (i32.const 4108))))))"#;

/// A v2 module whose memory keeps growing under the host: its buffer is in a page grown for
/// it, and every pick grows one more page, puts the indices 2 and 3 there, reads their live
/// fields into it with `sluice.live_of` and answers the busier one (-1 when the call failed).
/// With request hash 1 it asks for 300 pages more (past the 16 MiB cap) and answers 1 when
/// refused, 0 when not.
const GROWING_V2: &str = r#"(module
  (import "sluice" "live_of" (func $live_of (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "sluice_abi_v2"))
  (func (export "sluice_buffer") (param i32) (result i32)
    (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))
  (func (export "sluice_pick") (param $n i32) (result i32)
    (local $page i32)
    (if (i32.eq (i32.load (i32.const 65552)) (i32.const 1))
      (then (return (i32.eq (memory.grow (i32.const 300)) (i32.const -1)))))
    (local.set $page (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))
    (i32.store (local.get $page) (i32.const 2))
    (i32.store (i32.add (local.get $page) (i32.const 4)) (i32.const 3))
    (if (i32.ne (call $live_of (local.get $page) (i32.const 2)
          (i32.add (local.get $page) (i32.const 64)))
        (i32.const 2))
      (then (return (i32.const -1))))
    (select (i32.const 2) (i32.const 3)
      (i32.gt_u (i32.load (i32.add (local.get $page) (i32.const 64)))
        (i32.load (i32.add (local.get $page) (i32.const 76)))))))"#;

fn module(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(format!("{name}.wat"));
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &std::path::Path) -> Result<WasmStrategy, String> {
    let bytes = sluice::strategy::wasm::read_module(path).map_err(|e| e.to_string())?;
    WasmStrategy::load(
        WasmRuntime::global().unwrap().clone(),
        &Metrics::new(),
        "v2",
        path.display().to_string(),
        &bytes,
        json!({}),
        Vec::new(),
    )
    .map_err(|e| e.to_string())
}

fn hashed(hash: u64) -> PickRequest<'static> {
    PickRequest {
        hash,
        exclude: &[],
        headers: None,
    }
}

fn fallbacks(strategy: &WasmStrategy) -> u64 {
    strategy.info().fallbacks.iter().map(|(_, n)| n).sum()
}

#[test]
fn prepare_runs_once_per_pool_change_and_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = load(&module(&dir, "probe", PROBE_V2)).unwrap();
    let (three, four) = (sample_pool(3), sample_pool(4));
    // This thread's instance prepares for the first pool, then not again while it stays.
    for _ in 0..5 {
        assert_eq!(v2.pick(&three, &hashed(1)), Some(0));
    }
    // The records are there on picks after the one that wrote them: weights 100, 50, 150.
    for _ in 0..3 {
        assert_eq!(v2.pick(&three, &hashed(2)), Some(2));
    }
    // Another pool is prepared for, and so is the first one again after it.
    assert_eq!(v2.pick(&four, &hashed(1)), Some(1));
    assert_eq!(v2.pick(&four, &hashed(1)), Some(1));
    assert_eq!(v2.pick(&three, &hashed(1)), Some(2));
    assert_eq!(fallbacks(&v2), 0, "{:?}", v2.info().fallbacks);
}

#[test]
fn live_fields_are_read_on_demand_and_retries_see_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = load(&module(&dir, "probe", PROBE_V2)).unwrap();
    let pool = sample_pool(4);
    assert_eq!(v2.pick(&pool, &hashed(0)), Some(0), "nothing in flight");
    // Requests start after the records were written: only `sluice.live` can see them.
    let _busy: Vec<_> = [3, 3, 1]
        .iter()
        .map(|&i| pool.eligible(i).live.start_request())
        .collect();
    assert_eq!(v2.pick(&pool, &hashed(0)), Some(3));
    // A retry: the whole pool is offered, the tried ones marked.
    let tried = [pool.eligible(0).key, pool.eligible(1).key];
    let retry = PickRequest {
        hash: 0,
        exclude: &tried,
        headers: None,
    };
    assert_eq!(v2.pick(&pool, &retry), Some(2));
    // Everything tried: no retry flag, a first try again (the most loaded).
    let all: Vec<u64> = pool.eligible_members().map(|m| m.key).collect();
    let again = PickRequest {
        hash: 0,
        exclude: &all,
        headers: None,
    };
    assert_eq!(v2.pick(&pool, &again), Some(3));
    assert_eq!(fallbacks(&v2), 0, "{:?}", v2.info().fallbacks);
}

#[test]
fn live_of_reads_the_listed_instances_in_order_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = load(&module(&dir, "live_of", LIVE_OF_V2)).unwrap();
    let pool = sample_pool(4);
    let mut busy: Vec<_> = [2, 2, 3]
        .iter()
        .map(|&i| pool.eligible(i).live.start_request())
        .collect();
    assert_eq!(v2.pick(&pool, &hashed(0)), Some(2), "2 has more in flight");
    busy.extend(
        [3, 3]
            .iter()
            .map(|&i| pool.eligible(i).live.start_request()),
    );
    assert_eq!(v2.pick(&pool, &hashed(0)), Some(3), "now 3 has");
    assert_eq!(v2.pick(&pool, &hashed(1)), Some(3), "index 99 is refused");
    assert_eq!(
        v2.pick(&pool, &hashed(2)),
        Some(3),
        "overlapping output is refused"
    );
    assert_eq!(fallbacks(&v2), 0, "{:?}", v2.info().fallbacks);
}

#[test]
fn memory_grown_during_a_pick_is_read_and_written_by_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = load(&module(&dir, "growing", GROWING_V2)).unwrap();
    let pool = sample_pool(4);
    let _busy: Vec<_> = [3, 3]
        .iter()
        .map(|&i| pool.eligible(i).live.start_request())
        .collect();
    // Each pick's indices and output are in a page that did not exist when it started.
    for pick in 0..20 {
        assert_eq!(v2.pick(&pool, &hashed(0)), Some(3), "pick {pick}");
    }
    // The store's limits still hold: growing past the cap is refused (memory.grow is -1).
    assert_eq!(v2.pick(&pool, &hashed(1)), Some(1));
    assert_eq!(
        v2.pick(&pool, &hashed(0)),
        Some(3),
        "and the next pick is served"
    );
    assert_eq!(fallbacks(&v2), 0, "{:?}", v2.info().fallbacks);
}

#[test]
fn a_refused_prepare_falls_back_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = load(&module(&dir, "probe", PROBE_V2)).unwrap();
    let five = sample_pool(5);
    for _ in 0..3 {
        assert!(
            v2.pick(&five, &hashed(0)).is_some(),
            "served by round-robin"
        );
    }
    let counted: std::collections::HashMap<_, _> = v2.info().fallbacks.into_iter().collect();
    assert_eq!(counted["trap"], 3, "{counted:?}");
    // Other pools still get the plugin's answer.
    assert_eq!(v2.pick(&sample_pool(3), &hashed(2)), Some(2));
}

#[test]
fn v1_and_v2_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let v1_importing_live = PROBE_V2.replace("sluice_abi_v2", "sluice_abi_v1").replace(
        r#"(func (export "sluice_prepare")"#,
        r#"(func $unused_prepare"#,
    );
    let v1_with_prepare = r#"(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_prepare") (param i32) (result i32) (i32.const 0))
  (func (export "sluice_pick") (param i32) (result i32) (i32.const 0)))"#;
    let both_markers = r#"(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_abi_v2"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_pick") (param i32) (result i32) (i32.const 0)))"#;
    let no_marker = r#"(module
  (memory (export "memory") 1)
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_pick") (param i32) (result i32) (i32.const 0)))"#;
    let v1_importing_live_of = LIVE_OF_V2.replace("sluice_abi_v2", "sluice_abi_v1");
    for (name, text, expected) in [
        (
            "v1_importing_live_of",
            v1_importing_live_of.as_str(),
            "import sluice.live_of is part of ABI v2",
        ),
        (
            "v1_importing_live",
            v1_importing_live.as_str(),
            "import sluice.live is part of ABI v2",
        ),
        (
            "v1_with_prepare",
            v1_with_prepare,
            "sluice_prepare is part of ABI v2",
        ),
        ("both_markers", both_markers, "exactly one version marker"),
        ("no_marker", no_marker, "sluice_abi_v1 or sluice_abi_v2"),
    ] {
        let err = load(&module(&dir, name, text)).err().unwrap_or_default();
        assert!(err.contains(expected), "{name}: {err:?}");
    }
}
