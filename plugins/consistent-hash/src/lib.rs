//! Weighted rendezvous hashing as a Sluice WASM strategy: each instance scores
//! `-weight / ln(u)` with `u` a uniform hash of (instance key, request hash); the highest
//! score wins. When an instance leaves, only the requests it owned move. Without a request
//! hash (the route sets no `hash_on`) the per-request random is used: weighted random.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Request, Strategy};

pub struct ConsistentHash;

/// A 64-bit finalizer (murmur3 fmix64) over the pair.
fn mix(key: u64, hash: u64) -> u64 {
    let mut z = key ^ hash.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

impl Strategy for ConsistentHash {
    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let hash = if request.hash != 0 {
            request.hash
        } else {
            request.random
        };
        let mut best = None;
        let mut best_score = f64::NEG_INFINITY;
        for i in 0..instances.len() {
            let weight = f64::from(instances.weight(i));
            // u in (0, 1): 53 random bits, offset by half a step so it is never 0.
            let u = ((mix(instances.key(i), hash) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -weight / libm::log(u);
            if score > best_score {
                best_score = score;
                best = Some(i);
            }
        }
        best
    }
}

export_strategy!(ConsistentHash, ConsistentHash);
