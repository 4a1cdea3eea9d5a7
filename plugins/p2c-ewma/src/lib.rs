//! Power of two choices over a peak-EWMA cost, as Linkerd's balancer: two distinct instances
//! drawn at random (weighted), and the one with the lower `latency EWMA x (in flight + 1) /
//! weight` wins. A slow instance's EWMA rises with its responses, and its queue with its
//! in-flight count, so it sheds load long before a request times out; the random pair keeps
//! a herd from piling on one "best" instance the way a global minimum would.
//!
//! ABI v2: the weighted draw is an alias table (Vose) built once per pool change, and a pick
//! reads the live fields of its two candidates only (one `sluice.live_of` call), so it costs
//! the same at any pool size.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Live, Request, Strategy};

/// Largest pool with a weighted draw; larger pools draw uniformly.
const MAX: usize = 16_384;

/// Vose's alias table: draw a column uniformly, keep it with probability `keep / 2^32`, else
/// take its alias. Empty (`len == 0`) when the weights are equal: the draw is uniform.
pub struct P2cEwma {
    keep: [u32; MAX],
    alias: [u16; MAX],
    len: usize,
    /// All the pool's weights are equal: a pick compares loads alone, and reads no record.
    equal: bool,
    /// Work lists of the build: columns under and over the mean.
    small: [u16; MAX],
    large: [u16; MAX],
    scaled: [f64; MAX],
}

impl P2cEwma {
    pub const fn new() -> Self {
        Self {
            keep: [0; MAX],
            alias: [0; MAX],
            len: 0,
            equal: false,
            small: [0; MAX],
            large: [0; MAX],
            scaled: [0.0; MAX],
        }
    }

    /// Builds the alias table of `n` weights (already in `scaled`, summing to `total` > 0).
    fn build(&mut self, n: usize, total: f64) {
        let (mut small, mut large) = (0, 0);
        for i in 0..n {
            self.scaled[i] *= n as f64 / total;
            if self.scaled[i] < 1.0 {
                self.small[small] = i as u16;
                small += 1;
            } else {
                self.large[large] = i as u16;
                large += 1;
            }
        }
        while small > 0 && large > 0 {
            small -= 1;
            let s = usize::from(self.small[small]);
            let l = usize::from(self.large[large - 1]);
            self.keep[s] = to_fraction(self.scaled[s]);
            self.alias[s] = l as u16;
            self.scaled[l] -= 1.0 - self.scaled[s];
            if self.scaled[l] < 1.0 {
                large -= 1;
                self.small[small] = l as u16;
                small += 1;
            }
        }
        // What is left is 1 up to rounding: always kept.
        for &i in self.large[..large].iter().chain(&self.small[..small]) {
            self.keep[usize::from(i)] = u32::MAX;
            self.alias[usize::from(i)] = i;
        }
        self.len = n;
    }

    /// An index of `0..n`, weighted when the table is built for `n`.
    fn draw(&self, n: usize, random: u64) -> usize {
        // The top 32 bits choose the column (multiply-shift, no division), the low 32 bits
        // decide between it and its alias.
        let column = (((random >> 32) * n as u64) >> 32) as usize;
        if self.len != n || (random as u32) < self.keep[column] {
            column
        } else {
            usize::from(self.alias[column])
        }
    }
}

impl Default for P2cEwma {
    fn default() -> Self {
        Self::new()
    }
}

/// `p` in [0, 1] as a fraction of 2^32.
fn to_fraction(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// Latency assumed for an instance with no EWMA yet (no response seen): 1 ms, so a new
/// instance is tried but not flooded while its first responses come in.
const DEFAULT_EWMA_US: f64 = 1_000.0;

/// splitmix64: a cheap, well-mixed stream of randoms from the request's seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `ewma x (in_flight + 1)`, the load of an instance before its weight.
fn load(live: Live) -> f64 {
    let ewma = match live.ewma_us {
        0 => DEFAULT_EWMA_US,
        us => f64::from(us),
    };
    ewma * (f64::from(live.in_flight) + 1.0)
}

/// Whether `a` costs no more than `b`, the cost being `load / weight`: compared by
/// cross-multiplying, in floating point (exact enough to compare two instances, cheaper in
/// WebAssembly than 128-bit integer products, and no division).
fn costs_no_more((a, weight_a): (Live, u32), (b, weight_b): (Live, u32)) -> bool {
    load(a) * f64::from(weight_b.max(1)) <= load(b) * f64::from(weight_a.max(1))
}

impl Strategy for P2cEwma {
    fn prepare(&mut self, instances: &Instances<'_>) -> bool {
        let n = instances.len();
        self.len = 0;
        // Until the weights are known to be equal, compare with them.
        self.equal = false;
        if !(2..=MAX).contains(&n) {
            return true;
        }
        let first = instances.weight(0);
        let mut equal = true;
        let mut total = 0.0;
        for i in 0..n {
            let w = instances.weight(i);
            equal &= w == first;
            self.scaled[i] = f64::from(w);
            total += f64::from(w);
        }
        self.equal = equal;
        if !equal && total > 0.0 {
            self.build(n, total);
        }
        true
    }

    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let n = instances.len();
        match n {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        let mut rng = request.random;
        let a = self.draw(n, next_random(&mut rng));
        let mut b = self.draw(n, next_random(&mut rng));
        if a == b {
            // A distinct second choice: the next instance over, uniformly far.
            b = (a + 1 + (next_random(&mut rng) % (n as u64 - 1)) as usize) % n;
        }
        let [live_a, live_b] = instances.live_of([a, b]);
        // Equal weights cancel out of the cost: no record to read.
        let weight = |i| if self.equal { 1 } else { instances.weight(i) };
        let cheaper = costs_no_more((live_a, weight(a)), (live_b, weight(b)));
        Some(if cheaper { a } else { b })
    }
}

export_strategy!(P2cEwma, P2cEwma::new());

#[cfg(test)]
mod tests {
    use super::*;

    /// A value on the heap, never on the stack (it is megabytes); all zeros is the empty
    /// strategy.
    fn zeroed<T>() -> Box<T> {
        // SAFETY: T is made of integer (and float) arrays and counters only: zero is valid.
        unsafe { Box::<T>::new_zeroed().assume_init() }
    }

    #[test]
    fn the_alias_table_draws_by_weight() {
        let mut p2c = zeroed::<P2cEwma>();
        let weights = [100.0, 50.0, 150.0, 0.0, 700.0];
        p2c.scaled[..5].copy_from_slice(&weights);
        p2c.build(5, weights.iter().sum());
        let mut counts = [0u32; 5];
        let mut rng = 7;
        let draws = 200_000;
        for _ in 0..draws {
            counts[p2c.draw(5, next_random(&mut rng))] += 1;
        }
        assert_eq!(counts[3], 0, "weight 0 is never drawn");
        for (c, w) in counts.iter().zip(weights) {
            let expected = draws as f64 * w / 1000.0;
            assert!(
                (f64::from(*c) - expected).abs() <= draws as f64 * 0.01,
                "{counts:?}"
            );
        }
    }
}
