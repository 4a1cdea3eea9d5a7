//! Power of two choices over a peak-EWMA cost, as Linkerd's balancer: two distinct instances
//! drawn at random (weighted), and the one with the lower `latency EWMA x (in flight + 1) /
//! weight` wins. A slow instance's EWMA rises with its responses, and its queue with its
//! in-flight count, so it sheds load long before a request times out; the random pair keeps
//! a herd from piling on one "best" instance the way a global minimum would.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instance, Instances, Request, Strategy};

pub struct P2cEwma;

/// Latency assumed for an instance with no EWMA yet (no response seen): 1 ms, so a new
/// instance is tried but not flooded while its first responses come in.
const DEFAULT_EWMA_US: u64 = 1_000;

/// splitmix64: a cheap, well-mixed stream of randoms from the request's seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An index drawn with probability proportional to weight (`total` = sum of weights > 0).
fn weighted_index(instances: &Instances<'_>, total: u64, draw: u64) -> usize {
    let mut point = draw % total;
    for i in 0..instances.len() {
        let w = u64::from(instances.weight(i));
        if point < w {
            return i;
        }
        point -= w;
    }
    instances.len() - 1
}

/// `ewma x (in_flight + 1)`, compared across weights by cross-multiplying.
fn load(instance: &Instance) -> u64 {
    let ewma = match instance.ewma_us {
        0 => DEFAULT_EWMA_US,
        us => u64::from(us),
    };
    ewma * (u64::from(instance.in_flight) + 1)
}

impl Strategy for P2cEwma {
    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let n = instances.len();
        match n {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        let mut rng = request.random;
        let total: u64 = (0..n).map(|i| u64::from(instances.weight(i))).sum();
        let (a, mut b) = if total == 0 {
            let a = (next_random(&mut rng) % n as u64) as usize;
            (a, (next_random(&mut rng) % n as u64) as usize)
        } else {
            (
                weighted_index(instances, total, next_random(&mut rng)),
                weighted_index(instances, total, next_random(&mut rng)),
            )
        };
        if a == b {
            // A distinct second choice: the next instance over, uniformly far.
            b = (a + 1 + (next_random(&mut rng) % (n as u64 - 1)) as usize) % n;
        }
        let (ia, ib) = (instances.get(a), instances.get(b));
        // load_a / weight_a <= load_b / weight_b, without division.
        let cost_a = u128::from(load(&ia)) * u128::from(ib.weight.max(1));
        let cost_b = u128::from(load(&ib)) * u128::from(ia.weight.max(1));
        Some(if cost_a <= cost_b { a } else { b })
    }
}

export_strategy!(P2cEwma, P2cEwma);
