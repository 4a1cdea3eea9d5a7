//! Weighted least-in-flight as a Sluice WASM strategy: the lowest `in_flight / weight`, ties
//! broken at random (from the host's per-request random). It looks at every instance, so its
//! pick stays linear in the pool; ABI v2's `live` reads the in-flight counts in chunks, a host
//! call per [`CHUNK`] instances.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Live, Request, Strategy};

/// Instances whose live fields are read per host call.
const CHUNK: usize = 256;

/// The live fields of one chunk, kept between picks (zeroing 3 KiB per pick would cost more
/// than a small pool's scan).
pub struct LeastConn {
    live: [Live; CHUNK],
}

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
        let (mut best, mut best_load, mut best_weight) = (0, 0u64, 1u64);
        let mut ties = 0u64;
        for first in (0..n).step_by(CHUNK) {
            let chunk = &mut self.live[..CHUNK.min(n - first)];
            if !instances.live_into(first, chunk) {
                return None;
            }
            for (offset, fields) in chunk.iter().enumerate() {
                let i = first + offset;
                let load = u64::from(fields.in_flight);
                let weight = u64::from(instances.weight(i));
                // load / weight against the best's, without division (u32 x u32 fits u64).
                let (lhs, rhs) = (load * best_weight, best_load * weight);
                if ties == 0 || lhs < rhs {
                    (best, best_load, best_weight, ties) = (i, load, weight, 1);
                } else if lhs == rhs {
                    ties += 1;
                    // Keep the i-th tie with probability 1/i (reservoir sampling), by
                    // multiply-shift on 32 random bits: no 64-bit division per tie.
                    if ((next_random(&mut rng) >> 32) * ties) >> 32 == 0 {
                        (best, best_load, best_weight) = (i, load, weight);
                    }
                }
            }
        }
        Some(best)
    }
}

export_strategy!(
    LeastConn,
    LeastConn {
        live: [Live {
            in_flight: 0,
            ewma_us: 0,
            failures: 0,
        }; CHUNK],
    }
);
