//! Weighted least-in-flight as a Sluice WASM strategy: the lowest `in_flight / weight`, ties
//! broken at random (from the host's per-request random).
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Request, Strategy};

pub struct LeastConn;

/// splitmix64: a cheap, well-mixed stream of randoms from the request's seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Strategy for LeastConn {
    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let n = instances.len();
        if n == 0 {
            return None;
        }
        let mut rng = request.random;
        let mut best = 0;
        let mut best_load = u64::from(instances.in_flight(0));
        let mut best_weight = u64::from(instances.weight(0));
        let mut ties = 1u64;
        for i in 1..n {
            let load = u64::from(instances.in_flight(i));
            let weight = u64::from(instances.weight(i));
            let (lhs, rhs) = (load * best_weight, best_load * weight);
            if lhs < rhs {
                (best, best_load, best_weight, ties) = (i, load, weight, 1);
            } else if lhs == rhs {
                ties += 1;
                if next_random(&mut rng).is_multiple_of(ties) {
                    (best, best_load, best_weight) = (i, load, weight);
                }
            }
        }
        Some(best)
    }
}

export_strategy!(LeastConn, LeastConn);
