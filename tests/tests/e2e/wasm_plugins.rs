//! The strategy plugins built from `plugins/`, loaded by the real WASM host in process:
//! distributions, ABI refusals, and the failure policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use sluice::metrics::Metrics;
use sluice::pool::{Pool, ServiceSlot};
use sluice::strategy::wasm::{
    sample_pool, FallbackReason, LoadError, WasmRuntime, WasmStrategy, MAX_FAILURES_PER_MINUTE,
};
use sluice::strategy::{PickRequest, Strategy};
use sluice_tests::{plugin, wat};

fn load(path: &Path, config: serde_json::Value) -> Result<WasmStrategy, LoadError> {
    let bytes = sluice::strategy::wasm::read_module(path)?;
    WasmStrategy::load(
        WasmRuntime::global().unwrap().clone(),
        &Metrics::new(),
        "test",
        path.display().to_string(),
        &bytes,
        config,
        vec!["even".into()],
    )
}

fn counts(strategy: &WasmStrategy, pool: &Pool, picks: u64, hash: impl Fn(u64) -> u64) -> Vec<u64> {
    let mut counts = vec![0u64; pool.eligible_len()];
    for i in 0..picks {
        let request = PickRequest {
            hash: hash(i),
            exclude: &[],
            headers: None,
        };
        counts[strategy.pick(pool, &request).unwrap()] += 1;
    }
    counts
}

fn fallbacks(strategy: &WasmStrategy) -> HashMap<&'static str, u64> {
    strategy.info().fallbacks.into_iter().collect()
}

#[test]
fn round_robin_follows_weights_within_two_percent() {
    let rr = load(&plugin("round-robin"), json!({})).unwrap();
    let pool = sample_pool(16); // weights 100, 50, 150, ...
    let counts = counts(&rr, &pool, 10_000, |_| 0);
    let total_weight: u64 = pool
        .eligible_members()
        .map(|m| u64::from(m.spec.weight))
        .sum();
    for (i, member) in pool.eligible_members().enumerate() {
        let expected = 10_000.0 * f64::from(member.spec.weight) / total_weight as f64;
        let got = counts[i] as f64;
        assert!(
            (got - expected).abs() <= expected * 0.02 + 1.0,
            "instance {i}: {got} vs {expected}"
        );
    }
    assert!(fallbacks(&rr).values().all(|&n| n == 0));
}

#[test]
fn least_conn_prefers_the_least_loaded() {
    let lc = load(&plugin("least-conn"), json!({})).unwrap();
    let pool = sample_pool(8);
    // Every instance but 3 and 6 carries load.
    let _guards: Vec<_> = (0..8)
        .filter(|i| *i != 3 && *i != 6)
        .map(|i| pool.eligible(i).live.start_request())
        .collect();
    let counts = counts(&lc, &pool, 2_000, |_| 0);
    assert_eq!(counts[3] + counts[6], 2_000, "{counts:?}");
    assert!(
        counts[3] > 800 && counts[6] > 800,
        "ties broken at random: {counts:?}"
    );
}

#[test]
fn least_conn_weighs_load_by_weight() {
    let lc = load(&plugin("least-conn"), json!({})).unwrap();
    let pool = sample_pool(3); // weights 100, 50, 150
    let _a = pool.eligible(0).live.start_request();
    let _b = pool.eligible(1).live.start_request();
    let _c = pool.eligible(2).live.start_request();
    // Equal load: the heaviest instance has the lowest load per weight.
    assert_eq!(counts(&lc, &pool, 100, |_| 0), vec![0, 0, 100]);
}

#[test]
fn p2c_ewma_steers_away_from_a_slow_instance() {
    let p2c = load(&plugin("p2c-ewma"), json!({})).unwrap();
    let pool = sample_pool(4); // weights 100, 50, 150, 100
    for i in 0..4 {
        pool.eligible(i)
            .live
            .observe_latency(std::time::Duration::from_millis(1));
    }
    // Instance 3 answers in ~200 ms: its EWMA climbs over a few responses.
    for _ in 0..40 {
        pool.eligible(3)
            .live
            .observe_latency(std::time::Duration::from_millis(200));
    }
    let counts = counts(&p2c, &pool, 4_000, |_| 0);
    // It only wins when it is drawn twice, which never happens: the pair is distinct.
    assert_eq!(counts[3], 0, "{counts:?}");
    // Among equals the heavier of each pair wins (same cost, more weight).
    assert!(counts[2] > counts[0] && counts[0] > counts[1], "{counts:?}");
    assert!(fallbacks(&p2c).values().all(|&n| n == 0));
}

#[test]
fn p2c_ewma_weighs_latency_by_requests_in_flight() {
    let p2c = load(&plugin("p2c-ewma"), json!({})).unwrap();
    let pool = sample_pool(2); // weights 100, 50
    for i in 0..2 {
        pool.eligible(i)
            .live
            .observe_latency(std::time::Duration::from_millis(10));
    }
    // Same latency and weight ratio 2:1, but instance 0 has 4 requests in flight (cost 5x).
    let _busy: Vec<_> = (0..4)
        .map(|_| pool.eligible(0).live.start_request())
        .collect();
    assert_eq!(counts(&p2c, &pool, 100, |_| 0), vec![0, 100]);
    drop(_busy);
    // Idle again: the heavier instance wins every pair (equal cost per weight favours it).
    assert_eq!(counts(&p2c, &pool, 100, |_| 0), vec![100, 0]);
}

#[test]
fn consistent_hash_is_stable_and_moves_only_the_leaving_share() {
    let ch = load(&plugin("consistent-hash"), json!({})).unwrap();
    let n = 10;
    let full = sample_pool(n);
    let keys: Vec<u64> = (0..10_000u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        .collect();
    let pick = |pool: &Pool, key: u64| {
        let i = ch
            .pick(
                pool,
                &PickRequest {
                    hash: key,
                    exclude: &[],
                    headers: None,
                },
            )
            .unwrap();
        pool.eligible(i).spec.id.clone()
    };
    let before: Vec<String> = keys.iter().map(|&k| pick(&full, k)).collect();
    // Stable: the same key lands on the same instance again.
    for (k, owner) in keys.iter().zip(&before).take(500) {
        assert_eq!(&pick(&full, *k), owner);
    }
    // One instance leaves: only its keys move.
    let leaving = full.eligible(4).spec.id.clone();
    let slot = ServiceSlotHelper::without(&full, &leaving);
    let after: Vec<String> = keys.iter().map(|&k| pick(&slot, k)).collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let owned = before.iter().filter(|b| **b == leaving).count();
    assert_eq!(
        fallbacks(&ch).values().sum::<u64>(),
        0,
        "{:?}",
        fallbacks(&ch)
    );
    assert_eq!(moved, owned, "only the leaving instance's keys move");
    assert!(
        (moved as f64) <= keys.len() as f64 * (1.0 / n as f64 + 0.03),
        "moved {moved}"
    );
}

/// Builds a pool like `pool` without one instance, keeping ids, weights and live state.
struct ServiceSlotHelper;
impl ServiceSlotHelper {
    fn without(pool: &Pool, id: &str) -> Pool {
        let directory = sluice::pool::Directory::new(Arc::new(Metrics::new()), &["t"]);
        let slot: Arc<ServiceSlot> = directory.slot("sample");
        let instances = pool
            .members()
            .filter(|m| m.spec.id != id)
            .map(|m| (*m.spec).clone())
            .collect();
        directory.apply(sluice::registry::SourceEvent {
            source: "t".into(),
            revision: 1,
            update: sluice::registry::Update::Reset {
                services: [("sample".to_string(), instances)].into(),
            },
        });
        Arc::try_unwrap(slot.load_full()).unwrap_or_else(|arc| {
            // Still shared by the slot: rebuild an owned copy from it.
            Pool::new(
                arc.service_arc().clone(),
                arc.generation(),
                arc.members()
                    .map(|m| sluice::pool::Member {
                        spec: m.spec.clone(),
                        key: m.key,
                        socket: m.socket,
                        live: m.live.clone(),
                    })
                    .collect(),
            )
        })
    }
}

#[test]
fn modules_with_a_bad_shape_are_refused_with_the_reason() {
    let cases = [
        (
            "forbidden_import",
            "import wasi_snapshot_preview1.fd_write is not allowed",
        ),
        (
            "wrong_signature",
            "export sluice_pick has signature (i64) -> (i32), expected (i32) -> (i32)",
        ),
        (
            "bad_import_signature",
            "import sluice.log has signature (i32) -> (), expected (i32, i32, i32) -> ()",
        ),
        ("missing_pick", "missing export sluice_pick"),
        ("huge_memory", "instantiation failed"),
    ];
    for (name, expected) in cases {
        let err = load(&wat(name), json!({})).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
    let err = load(Path::new("/nonexistent.wasm"), json!({}))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read /nonexistent.wasm: "), "{err}");
}

#[test]
fn plugins_that_misbehave_at_load_are_refused() {
    let cases = [
        (json!({"mode": "trap"}), "trapped"),
        (json!({"mode": "loop"}), "missed its deadline"),
        (json!({"mode": "grow"}), "missed its deadline"),
        (
            json!({"mode": "reject"}),
            "sluice_configure rejected the config",
        ),
    ];
    for (config, expected) in cases {
        let err = match load(&plugin("chaos"), config.clone()) {
            Ok(_) => panic!("{config} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{config}: {err}");
    }
}

#[test]
fn runtime_failures_fall_back_to_round_robin_and_are_counted() {
    let pool = sample_pool(4);
    for (mode, reason) in [
        ("trap", "trap"),
        ("loop", "deadline"),
        ("grow", "deadline"),
        ("out_of_range", "out_of_range"),
        ("no_opinion", "no_opinion"),
    ] {
        let chaos = if mode == "out_of_range" {
            load(&wat("out_of_range"), json!({})).unwrap()
        } else {
            load(&plugin("chaos"), json!({"mode": mode, "when_n": 4})).unwrap()
        };
        // Another pool size behaves: instance 0.
        assert_eq!(
            chaos.pick(&sample_pool(3), &PickRequest::default()),
            Some(0)
        );
        let counts = counts(&chaos, &pool, 8, |_| 0);
        assert_eq!(
            counts.iter().sum::<u64>(),
            8,
            "{mode}: every request still gets an instance"
        );
        // Weighted round-robin over weights 100, 50, 150, 100: one whole cycle in 8 picks.
        assert_eq!(counts, vec![2, 1, 3, 2], "{mode}: round-robin fallback");
        assert_eq!(fallbacks(&chaos)[reason], 8, "{mode}");
        // The instance was re-created after each failure and still works for other pools.
        assert_eq!(
            chaos.pick(&sample_pool(3), &PickRequest::default()),
            Some(0),
            "{mode}"
        );
    }
}

/// Runs a pick the chaos plugin loops on (a pool of 4) on a thread of its own, and waits for it
/// to be interrupted: what it picked instead.
fn looping_pick_returns(chaos: &Arc<WasmStrategy>) -> Option<usize> {
    let (tx, rx) = std::sync::mpsc::channel();
    let picker = chaos.clone();
    std::thread::spawn(move || {
        let _ = tx.send(picker.pick(&sample_pool(4), &PickRequest::default()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the looping pick was interrupted")
}

#[test]
fn a_looping_pick_after_an_idle_spell_is_still_interrupted() {
    // The epoch watchdog turns its timer off ~100 ms after the last call; the first call after
    // that must set it again.
    let chaos =
        std::sync::Arc::new(load(&plugin("chaos"), json!({"mode": "loop", "when_n": 4})).unwrap());
    assert_eq!(
        chaos.pick(&sample_pool(3), &PickRequest::default()),
        Some(0)
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    let picked = looping_pick_returns(&chaos);
    assert!(picked.is_some(), "the fallback picked an instance");
    assert_eq!(fallbacks(&chaos)["deadline"], 1);
}

#[test]
fn a_looping_pick_is_interrupted_while_other_threads_keep_calling() {
    // Busy callers advance the epoch themselves and keep the watchdog asleep: the epoch must
    // still move for the call that is stuck.
    let chaos =
        std::sync::Arc::new(load(&plugin("chaos"), json!({"mode": "loop", "when_n": 4})).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (chaos, stop) = (chaos.clone(), stop.clone());
        std::thread::spawn(move || {
            let pool = sample_pool(3);
            let mut picks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(chaos.pick(&pool, &PickRequest::default()).is_some());
                picks += 1;
            }
            picks
        })
    };
    let picked = looping_pick_returns(&chaos);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(busy.join().unwrap() > 0, "the other thread kept calling");
    assert!(picked.is_some(), "the fallback picked an instance");
    assert_eq!(fallbacks(&chaos)["deadline"], 1);
}

#[test]
fn a_looping_pick_after_quick_ones_on_the_same_thread_is_interrupted() {
    // Quick picks within one tick leave the store's deadline as set (it is the same one): the
    // looping pick that follows on the same instance must still have a live deadline.
    let chaos = load(&plugin("chaos"), json!({"mode": "loop", "when_n": 4})).unwrap();
    let (three, four) = (sample_pool(3), sample_pool(4));
    for _ in 0..10_000 {
        assert_eq!(chaos.pick(&three, &PickRequest::default()), Some(0));
    }
    assert!(chaos.pick(&four, &PickRequest::default()).is_some());
    assert_eq!(fallbacks(&chaos)["deadline"], 1);
    // And the re-created instance serves quick picks again without a false deadline.
    for _ in 0..10_000 {
        assert_eq!(chaos.pick(&three, &PickRequest::default()), Some(0));
    }
    assert_eq!(fallbacks(&chaos)["deadline"], 1);
}

#[test]
fn a_plugin_failing_repeatedly_is_disabled_until_reloaded() {
    let chaos_path = plugin("chaos");
    let chaos = load(&chaos_path, json!({"mode": "trap", "when_n": 4})).unwrap();
    let pool = sample_pool(4);
    for _ in 0..MAX_FAILURES_PER_MINUTE + 20 {
        assert!(chaos.pick(&pool, &PickRequest::default()).is_some());
    }
    let info = chaos.info();
    assert_eq!(info.state, "disabled");
    let f = fallbacks(&chaos);
    assert_eq!(f["trap"], u64::from(MAX_FAILURES_PER_MINUTE));
    assert_eq!(f["disabled"], 20);
    assert_eq!(FallbackReason::Disabled.as_str(), "disabled");

    // A reload (here with a config that behaves) brings it back.
    let bytes = std::fs::read(&chaos_path).unwrap();
    let generation = chaos
        .reload(
            "reloaded".into(),
            &bytes,
            &json!({"mode": "no_opinion", "when_n": 99}),
        )
        .unwrap();
    assert_eq!(generation, 2);
    assert_eq!(chaos.info().state, "active");
    assert_eq!(
        chaos.pick(&pool, &PickRequest::default()).map(|_| ()),
        Some(())
    );
}

#[test]
fn a_bad_reload_is_refused_and_the_running_version_keeps_serving() {
    let strategy = load(&plugin("round-robin"), json!({})).unwrap();
    let bad = std::fs::read(wat("forbidden_import")).unwrap();
    assert!(strategy.reload("bad".into(), &bad, &json!({})).is_err());
    assert_eq!(strategy.current().generation, 1);
    let pool = sample_pool(3);
    assert_eq!(counts(&strategy, &pool, 6, |_| 0).iter().sum::<u64>(), 6);
    assert!(fallbacks(&strategy).values().all(|&n| n == 0));
}

#[test]
fn request_headers_reach_the_plugin() {
    let chaos = load(&plugin("chaos"), json!({"mode": "header", "when_n": 5})).unwrap();
    let pool = sample_pool(5);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-chaos-pick", "3".parse().unwrap());
    for _ in 0..10 {
        let request = PickRequest {
            hash: 0,
            exclude: &[],
            headers: Some(&headers),
        };
        assert_eq!(chaos.pick(&pool, &request), Some(3));
    }
    // Without the header the plugin has no opinion.
    chaos.pick(&pool, &PickRequest::default()).unwrap();
    assert_eq!(fallbacks(&chaos)["no_opinion"], 1);
}

#[test]
fn the_documented_wat_example_works() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples/heaviest.wat");
    let heaviest = load(&path, json!({})).unwrap();
    let pool = sample_pool(6); // weights 100, 50, 150, 100, 50, 150
    assert_eq!(counts(&heaviest, &pool, 10, |_| 0), vec![0, 0, 10, 0, 0, 0]);
}

#[test]
fn retries_go_through_the_plugin_without_the_tried_instances() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples/heaviest.wat");
    let heaviest = load(&path, json!({})).unwrap();
    let pool = sample_pool(6); // weights 100, 50, 150, 100, 50, 150
                               // Both 150s tried: the plugin is offered the other four and picks the first 100.
    let tried = [pool.eligible(2).key, pool.eligible(5).key];
    for _ in 0..20 {
        let request = PickRequest {
            hash: 0,
            exclude: &tried,
            headers: None,
        };
        assert_eq!(heaviest.pick(&pool, &request), Some(0));
    }
    // Everything tried: the whole pool is offered again, as on a first try.
    let all: Vec<u64> = pool.eligible_members().map(|m| m.key).collect();
    let request = PickRequest {
        hash: 0,
        exclude: &all,
        headers: None,
    };
    assert_eq!(heaviest.pick(&pool, &request), Some(2));
    // A first try after a retry sees the whole pool again (the buffer is rewritten whole).
    assert_eq!(counts(&heaviest, &pool, 5, |_| 0), vec![0, 0, 5, 0, 0, 0]);
    assert!(fallbacks(&heaviest).values().all(|&n| n == 0));
}

#[test]
fn the_retry_flag_is_set_on_retries_only() {
    // Answers its header's flags word (0 on a first try, 1 on a retry) when n >= 2, else 0.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.wat");
    std::fs::write(
        &path,
        r#"(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_pick") (param $n i32) (result i32)
    (select (i32.load (i32.const 1036)) (i32.const 0)
      (i32.ge_u (local.get $n) (i32.const 2)))))"#,
    )
    .unwrap();
    let flags = load(&path, json!({})).unwrap();
    let pool = sample_pool(3);
    assert_eq!(flags.pick(&pool, &PickRequest::default()), Some(0));
    // Instance 0 tried: offered [1, 2]; answer 1 is the second of those, pool index 2.
    let tried = [pool.eligible(0).key];
    let request = PickRequest {
        hash: 0,
        exclude: &tried,
        headers: None,
    };
    assert_eq!(flags.pick(&pool, &request), Some(2));
    assert!(fallbacks(&flags).values().all(|&n| n == 0));
}
