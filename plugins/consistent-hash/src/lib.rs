//! Consistent hashing on a ring (Ketama's) as a Sluice WASM strategy (ABI v2): each instance
//! owns points on a 48-bit ring, a number proportional to its weight (160 at the default weight
//! 100), and a request goes to the owner of the first point at or after its hash. When an
//! instance leaves, only the requests on its points move; an instance's points depend on its
//! key and weight alone, so nobody else's move. Without a request hash (the route sets no
//! `hash_on`) the per-request random is used: weighted random.
//!
//! The ring is built once per pool change (`prepare`): points bucketed by their top 16 bits,
//! which is also the lookup index, so a pick hashes once and scans a bucket of ~4 points,
//! whatever the pool's size. When the points of a huge pool would pass [`MAX_POINTS`], every
//! instance keeps the first half of its points (halving again as needed): only the requests
//! on the dropped points move. On a retry the ring is walked on to the next untried owner.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Request, Strategy};

/// Largest pool on the ring; larger pools get "no opinion" (host round-robin).
const MAX: usize = 16_384;
/// Points on the ring at most (2 MiB of them).
const MAX_POINTS: usize = 1 << 18;
/// Bits of a point's position used by the lookup index.
const INDEX_BITS: u32 = 16;
const BUCKETS: usize = 1 << INDEX_BITS;
/// Points of an instance of the default weight (Ketama's 160).
const POINTS_PER_100: u64 = 160;
/// Ring points walked on a retry before leaving it to the SDK's next-untried rule.
const RETRY_WALK: usize = 256;

pub struct ConsistentHash {
    /// The ring: `position (48 bits) << 16 | owner index`, sorted by position.
    points: [u64; MAX_POINTS],
    len: usize,
    /// `start[b]`: the first point whose position's top bits are `b` (`start[BUCKETS]` = len).
    start: [u32; BUCKETS + 1],
    /// Points per instance, computed in the first pass of the build.
    counts: [u32; MAX],
}

/// A 64-bit finalizer (murmur3 fmix64) over the pair.
fn mix(key: u64, salt: u64) -> u64 {
    let mut z = key ^ salt.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// The ring position (top 48 bits of a u64) of point `j` of the instance with `key`.
fn point_position(key: u64, j: u32) -> u64 {
    mix(key, u64::from(j)) >> 16
}

/// The ring position of a request hash.
fn request_position(hash: u64) -> u64 {
    mix(hash, 0x5bd1_e995) >> 16
}

fn bucket(position: u64) -> usize {
    (position >> (48 - INDEX_BITS)) as usize
}

impl ConsistentHash {
    pub const fn new() -> Self {
        Self {
            points: [0; MAX_POINTS],
            len: 0,
            start: [0; BUCKETS + 1],
            counts: [0; MAX],
        }
    }

    /// Builds the ring: counts per instance (halved while they pass `MAX_POINTS`), points
    /// counted per bucket, placed bucket by bucket, then each bucket sorted.
    fn build(&mut self, keys: impl Fn(usize) -> u64, weights: impl Fn(usize) -> u32, n: usize) {
        let mut total: u64 = 0;
        for i in 0..n {
            let points = (u64::from(weights(i)) * POINTS_PER_100 / 100).max(1);
            self.counts[i] = points.min(u64::from(u32::MAX)) as u32;
            total += points;
        }
        let mut shift = 0;
        while total > MAX_POINTS as u64 {
            shift += 1;
            total = (0..n)
                .map(|i| u64::from((self.counts[i] >> shift).max(1)))
                .sum();
        }
        for count in &mut self.counts[..n] {
            *count = (*count >> shift).max(1);
        }
        self.start.fill(0);
        for i in 0..n {
            let key = keys(i);
            for j in 0..self.counts[i] {
                self.start[bucket(point_position(key, j)) + 1] += 1;
            }
        }
        for b in 0..BUCKETS {
            self.start[b + 1] += self.start[b];
        }
        // `start[b]` is now where bucket b begins: use it as the bucket's fill cursor (it ends
        // where bucket b + 1 begins), then shift the array back by one.
        for i in 0..n {
            let key = keys(i);
            for j in 0..self.counts[i] {
                let position = point_position(key, j);
                let b = bucket(position);
                let at = self.start[b] as usize;
                self.points[at] = (position << 16) | i as u64;
                self.start[b] += 1;
            }
        }
        for b in (1..=BUCKETS).rev() {
            self.start[b] = self.start[b - 1];
        }
        self.start[0] = 0;
        for b in 0..BUCKETS {
            let bucket = &mut self.points[self.start[b] as usize..self.start[b + 1] as usize];
            insertion_sort(bucket);
        }
        self.len = total as usize;
    }

    /// The ring index of the first point at or after `position` (wrapping to 0).
    fn lookup(&self, position: u64) -> usize {
        let b = bucket(position);
        let (mut at, end) = (self.start[b] as usize, self.start[b + 1] as usize);
        while at < end && self.points[at] >> 16 < position {
            at += 1;
        }
        if at == self.len {
            0
        } else {
            at
        }
    }

    fn owner(&self, at: usize) -> usize {
        (self.points[at] & 0xffff) as usize
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

/// Sorts a bucket (a handful of points) in place.
fn insertion_sort(points: &mut [u64]) {
    for i in 1..points.len() {
        let mut j = i;
        while j > 0 && points[j - 1] > points[j] {
            points.swap(j - 1, j);
            j -= 1;
        }
    }
}

impl Strategy for ConsistentHash {
    fn prepare(&mut self, instances: &Instances<'_>) -> bool {
        let n = instances.len();
        self.len = 0;
        if n == 0 || n > MAX {
            return true;
        }
        self.build(|i| instances.key(i), |i| instances.weight(i), n);
        true
    }

    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let hash = if request.hash != 0 {
            request.hash
        } else {
            request.random
        };
        let mut at = self.lookup(request_position(hash));
        if request.is_retry() {
            for _ in 0..RETRY_WALK.min(self.len) {
                if !instances.tried(self.owner(at)) {
                    break;
                }
                at = (at + 1) % self.len;
            }
        }
        Some(self.owner(at))
    }
}

export_strategy!(ConsistentHash, ConsistentHash::new());

#[cfg(test)]
mod tests {
    use super::*;

    /// A value on the heap, never on the stack (it is megabytes); all zeros is the empty
    /// strategy.
    fn zeroed<T>() -> Box<T> {
        // SAFETY: T is made of integer (and float) arrays and counters only: zero is valid.
        unsafe { Box::<T>::new_zeroed().assume_init() }
    }

    fn ring(keys: &[u64], weights: &[u32]) -> Box<ConsistentHash> {
        let mut ch = zeroed::<ConsistentHash>();
        ch.build(|i| keys[i], |i| weights[i], keys.len());
        ch
    }

    #[test]
    fn the_ring_is_sorted_and_indexed() {
        let keys: Vec<u64> = (1..=50).collect();
        let ch = ring(&keys, &[100; 50]);
        assert_eq!(ch.len, 50 * 160);
        assert!(ch.points[..ch.len].windows(2).all(|w| w[0] <= w[1]));
        for position in [0, 1 << 20, (1 << 48) - 1, ch.points[17] >> 16] {
            let at = ch.lookup(position);
            let first = ch.points[..ch.len]
                .iter()
                .position(|p| p >> 16 >= position)
                .unwrap_or(0);
            assert_eq!(at, first);
        }
    }

    #[test]
    fn shares_follow_weights_and_a_huge_pool_is_halved() {
        let ch = ring(&[1, 2], &[100, 300]);
        let mut owned = [0usize; 2];
        for i in 0..100_000u64 {
            owned[ch.owner(ch.lookup(request_position(i)))] += 1;
        }
        let share = owned[1] as f64 / 100_000.0;
        assert!((0.68..0.82).contains(&share), "{owned:?}");
        let keys: Vec<u64> = (1..=10_000).collect();
        let big = ring(&keys, &[100; 10_000]);
        assert!(
            big.len <= MAX_POINTS && big.len >= MAX_POINTS / 2,
            "{}",
            big.len
        );
    }
}
