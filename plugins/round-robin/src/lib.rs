//! Smooth weighted round-robin as a Sluice WASM strategy (ABI v2), the same order as the host's
//! native round-robin: the weights, reduced by their gcd, laid end to end as slots (instance
//! `i` owns `weight_i / gcd` consecutive ones) and visited in bit-reversed order (van der
//! Corput), so every `total` consecutive picks give each instance exactly its share, spread
//! through the cycle.
//!
//! `prepare` (once per pool change) is one pass of additions, and for a cycle of up to 65 536
//! slots a table of the order, read in sequence by the picks; a longer cycle is walked by
//! reversing the step's bits and searching the prefix sums. Either way a pick costs the same
//! at 10 000 instances as at 10.
//! Equal weights need no prefix sums: slot `s` is instance `s`. Each worker thread's instance
//! keeps its own cursor.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Request, Strategy};

/// Largest pool this strategy tracks; larger pools get "no opinion" (host round-robin).
const MAX: usize = 16_384;
/// Bits of a slot that index `first`: 4 096 buckets, so a pick searches a handful of
/// instances, not the whole pool.
const BUCKET_BITS: u32 = 12;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// Longest visiting order kept as a table (read in sequence by the picks); a longer cycle is
/// walked through the index instead.
const ORDER_MAX: usize = 1 << 16;
/// Steps a retry looks ahead for an untried instance.
const RETRY_LOOKAHEAD: u64 = 256;

pub struct WeightedRoundRobin {
    /// `ends[i]`: slots owned by instances `0..=i`; unused when `uniform`.
    ends: [u64; MAX],
    /// `first[b]`: the instance owning the first slot of bucket `b` (`first[BUCKETS]` = n).
    first: [u32; BUCKETS + 1],
    /// Slot bits below the bucket's: `slot >> shift` is its bucket.
    shift: u32,
    uniform: bool,
    /// Slots in one cycle (0: nothing prepared).
    total: u64,
    /// `2^bits >= total`.
    bits: u32,
    step: u64,
    /// The visiting order of one cycle, materialized when it fits: `order[k]` is the instance
    /// of the `k`-th slot visited; `order_len` is 0 when the order is not kept.
    order: [u16; ORDER_MAX],
    order_len: usize,
}

impl WeightedRoundRobin {
    pub const fn new() -> Self {
        Self {
            ends: [0; MAX],
            first: [0; BUCKETS + 1],
            shift: 0,
            uniform: true,
            total: 0,
            bits: 0,
            step: 0,
            order: [0; ORDER_MAX],
            order_len: 0,
        }
    }

    /// Lays out the slots of `weights(0..n)` (0 counts as 1).
    fn build(&mut self, n: usize, weights: impl Fn(usize) -> u32) {
        let w = |i: usize| u64::from(weights(i).max(1));
        let first = w(0);
        let mut g = 0;
        self.uniform = true;
        for i in 0..n {
            g = gcd(g, w(i));
            self.uniform &= w(i) == first;
        }
        self.total = if self.uniform {
            n as u64
        } else {
            let mut sum = 0;
            for i in 0..n {
                sum += w(i) / g;
                self.ends[i] = sum;
            }
            sum
        };
        self.bits = u64::BITS - self.total.saturating_sub(1).leading_zeros();
        if !self.uniform {
            self.shift = self.bits.saturating_sub(BUCKET_BITS);
            let mut owner = 0;
            for b in 0..BUCKETS {
                let slot = (b as u64) << self.shift;
                while owner < n && self.ends[owner] <= slot {
                    owner += 1;
                }
                self.first[b] = owner as u32;
            }
            self.first[BUCKETS] = n as u32;
        }
        // One cycle's order in a table, so that picks read it in sequence instead of jumping
        // through the prefix sums (cache misses in a large pool).
        self.order_len = 0;
        if !self.uniform && self.total <= ORDER_MAX as u64 {
            let mut len = 0;
            for step in 0..1u64 << self.bits {
                if let Some(i) = self.at(n, step) {
                    self.order[len] = i as u16;
                    len += 1;
                }
            }
            self.order_len = len;
        }
    }

    /// The instance of step `step`: from the table when kept (never `None`), else [`Self::at`].
    fn nth(&self, n: usize, step: u64) -> Option<usize> {
        match self.order_len {
            0 => self.at(n, step),
            len => Some(usize::from(self.order[(step % len as u64) as usize])),
        }
    }

    /// The instance of slot step `step`, or `None` past the last slot (never for an even step:
    /// it maps below `2^(bits - 1) < total`).
    fn at(&self, n: usize, step: u64) -> Option<usize> {
        let slot = match self.bits {
            0 => 0,
            bits => step.reverse_bits() >> (u64::BITS - bits),
        };
        if slot >= self.total {
            return None;
        }
        Some(if self.uniform {
            slot as usize
        } else {
            // The owner is in the slot's bucket's range: from the bucket's first owner to the
            // next bucket's (inclusive, as that one may start inside this bucket).
            let b = (slot >> self.shift) as usize;
            let (from, to) = (
                self.first[b] as usize,
                (self.first[b + 1] as usize + 1).min(n),
            );
            from + self.ends[from..to].partition_point(|&end| end <= slot)
        })
    }
}

impl Default for WeightedRoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Strategy for WeightedRoundRobin {
    fn prepare(&mut self, instances: &Instances<'_>) -> bool {
        let n = instances.len();
        self.total = 0;
        if n > 0 && n <= MAX {
            self.build(n, |i| instances.weight(i));
        }
        true
    }

    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let n = instances.len();
        if self.total == 0 || n > MAX {
            return None;
        }
        if request.is_retry() {
            // The next untried instance in the order, without moving the cursor: retries do
            // not shift the rotation of first tries (else a failing instance would come first
            // for every request once its retries fall in step with it).
            let mut step = self.step;
            for _ in 0..RETRY_LOOKAHEAD.min(2 * self.total + 2) {
                step = step.wrapping_add(1);
                if let Some(i) = self.nth(n, step).filter(|&i| !instances.tried(i)) {
                    return Some(i);
                }
            }
            // Past the lookahead: the SDK moves a tried answer to the next untried index.
            return self.nth(n, self.step.wrapping_add(2) & !1);
        }
        self.step = self.step.wrapping_add(1);
        if let Some(i) = self.nth(n, self.step) {
            return Some(i);
        }
        self.step = self.step.wrapping_add(1);
        self.nth(n, self.step)
    }
}

export_strategy!(WeightedRoundRobin, WeightedRoundRobin::new());

#[cfg(test)]
mod tests {
    use super::*;

    /// A value on the heap, never on the stack (it is 256 KiB); all zeros is the empty
    /// strategy.
    fn zeroed<T>() -> Box<T> {
        // SAFETY: T is made of integer arrays, counters and a bool only: zero is valid.
        unsafe { Box::<T>::new_zeroed().assume_init() }
    }

    fn walk(rr: &WeightedRoundRobin, n: usize, start: u64, picks: usize) -> Vec<usize> {
        (start..).filter_map(|s| rr.at(n, s)).take(picks).collect()
    }

    fn counts(order: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in order {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn the_order_is_the_hosts() {
        let mut rr = zeroed::<WeightedRoundRobin>();
        let weights = [500, 100, 100];
        rr.build(3, |i| weights[i]);
        // As the native round-robin's test of `pool/cycle.rs`.
        assert_eq!(walk(&rr, 3, 0, 7), vec![0, 0, 0, 2, 0, 1, 0]);
        assert_eq!(counts(&walk(&rr, 3, 5, 7), 3), vec![5, 1, 1]);
        // The table holds the same order.
        assert_eq!(rr.order_len, 7);
        let table: Vec<usize> = (0..7).filter_map(|k| rr.nth(3, k)).collect();
        assert_eq!(table, walk(&rr, 3, 0, 7));
    }

    #[test]
    fn large_pools_and_equal_weights() {
        let mut rr = zeroed::<WeightedRoundRobin>();
        let n = 10_000;
        rr.build(n, |i| 1 + (i as u32 % 10_000));
        assert_eq!(rr.total, (n as u64) * (n as u64 + 1) / 2);
        assert!((0..1000).all(|s| rr.at(n, s).is_none_or(|i| i < n)));
        rr.build(4, |_| 100);
        assert!(rr.uniform);
        assert_eq!(counts(&walk(&rr, 4, 3, 8), 4), vec![2; 4]);
    }
}
