//! Smooth weighted round-robin without a materialized schedule: the pool's weights laid end to
//! end as slots (instance `i` owns `weight_i / gcd` consecutive slots), visited in bit-reversed
//! order (the van der Corput sequence), so an instance's slots come evenly spread through
//! every cycle. Building it is one pass of additions and a 4 096-bucket index (no heap, no
//! schedule of up to 65 536 entries), which keeps a pool change of a 10 000-instance service
//! cheap; a pick is one bit reversal, a bucket lookup and a search among the few instances
//! whose slots start in that bucket. The round-robin plugin (`plugins/round-robin`) walks the
//! same order.
//!
//! Over any `total` consecutive picks each instance gets exactly its reduced weight: every
//! `2^bits` consecutive steps visit each slot below `2^bits` once, and the steps that land at
//! or past `total` are skipped (never two in a row: an even step maps below `2^(bits-1)`).

/// Bits of a slot that index the buckets.
const BUCKET_BITS: u32 = 12;

/// The slots of one pool's eligible instances.
#[derive(Debug)]
pub(crate) struct WeightedCycle {
    /// `ends[i]`: the slots owned by instances `0..=i` (empty when every weight is equal: then
    /// slot `s` is instance `s`).
    ends: Box<[u64]>,
    /// `first[b]`: the instance owning the first slot of bucket `b`, then `n` (empty with
    /// `ends`).
    first: Box<[u32]>,
    /// `slot >> shift` is the slot's bucket.
    shift: u32,
    total: u64,
    /// Bits of a step that are reversed into a slot: `2^bits >= total`.
    bits: u32,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedCycle {
    /// The cycle of `weights` (0 counts as 1: the caller offers only eligible instances).
    pub(crate) fn new(weights: &[u32]) -> Self {
        let w = |x: u32| u64::from(x.max(1));
        let first = weights.first().map_or(1, |&x| w(x));
        let g = weights.iter().fold(0, |acc, &x| gcd(acc, w(x)));
        let (ends, total): (Box<[u64]>, u64) = if weights.iter().all(|&x| w(x) == first) {
            (Box::new([]), weights.len() as u64)
        } else {
            let mut sum = 0;
            let ends = weights
                .iter()
                .map(|&x| {
                    sum += w(x) / g;
                    sum
                })
                .collect();
            (ends, sum)
        };
        let bits = u64::BITS - total.saturating_sub(1).leading_zeros();
        let shift = bits.saturating_sub(BUCKET_BITS);
        let first: Box<[u32]> = if ends.is_empty() {
            Box::new([])
        } else {
            let mut owner = 0;
            (0..1u64 << BUCKET_BITS.min(bits))
                .map(|b| {
                    while ends.get(owner).is_some_and(|&end| end <= b << shift) {
                        owner += 1;
                    }
                    owner as u32
                })
                .chain(std::iter::once(ends.len() as u32))
                .collect()
        };
        Self {
            ends,
            first,
            shift,
            total,
            bits,
        }
    }

    /// Slots in one cycle (0 for an empty pool).
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The instance whose slot step `step` visits, or `None` when the step falls past the last
    /// slot (the caller takes the next step).
    pub(crate) fn at(&self, step: u64) -> Option<usize> {
        let slot = match self.bits {
            0 => 0,
            bits => step.reverse_bits() >> (u64::BITS - bits),
        };
        if slot >= self.total {
            return None;
        }
        if self.ends.is_empty() {
            return Some(slot as usize);
        }
        // The owner starts in the slot's bucket or is the next bucket's first (whose slots
        // may begin inside this bucket).
        let b = (slot >> self.shift) as usize;
        let from = self.first[b] as usize;
        let to = (self.first[b + 1] as usize + 1).min(self.ends.len());
        Some(from + self.ends[from..to].partition_point(|&end| end <= slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instances of `picks` consecutive picks from step `start`.
    fn walk(cycle: &WeightedCycle, start: u64, picks: usize) -> Vec<usize> {
        (start..).filter_map(|s| cycle.at(s)).take(picks).collect()
    }

    fn counts(order: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in order {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn every_cycle_follows_the_weights_exactly_from_any_start() {
        let cycle = WeightedCycle::new(&[500, 100, 100]);
        assert_eq!(cycle.total(), 7);
        assert_eq!(walk(&cycle, 0, 7), vec![0, 0, 0, 2, 0, 1, 0]);
        for start in [1, 5, 13, 1 << 40] {
            assert_eq!(counts(&walk(&cycle, start, 7), 3), vec![5, 1, 1], "{start}");
        }
        let cycle = WeightedCycle::new(&[100, 50, 150, 100]);
        assert_eq!(counts(&walk(&cycle, 3, 8), 4), vec![2, 1, 3, 2]);
    }

    #[test]
    fn slots_are_spread_through_the_cycle() {
        // One heavy instance among light ones: its slots never bunch up.
        let mut weights = vec![1u32; 63];
        weights.push(64);
        let cycle = WeightedCycle::new(&weights);
        let order = walk(&cycle, 0, 127 * 4);
        let longest_run = order
            .split(|&i| i != 63)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest_run <= 2, "{longest_run}");
        let longest_gap = order
            .split(|&i| i == 63)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest_gap <= 3, "{longest_gap}");
    }

    #[test]
    fn equal_weights_and_edge_cases() {
        let cycle = WeightedCycle::new(&[100; 5]);
        assert_eq!(cycle.total(), 5);
        assert_eq!(counts(&walk(&cycle, 9, 5), 5), vec![1; 5]);
        assert_eq!(WeightedCycle::new(&[]).total(), 0);
        assert_eq!(WeightedCycle::new(&[]).at(3), None);
        assert_eq!(walk(&WeightedCycle::new(&[7]), 0, 3), vec![0, 0, 0]);
        // Extreme weights need no cap: 10 000 instances of 1..=10 000.
        let weights: Vec<u32> = (1..=10_000).collect();
        let cycle = WeightedCycle::new(&weights);
        assert_eq!(cycle.total(), 10_000 * 10_001 / 2);
        assert!((0..64).all(|s| cycle.at(s).is_none_or(|i| i < 10_000)));
    }

    #[test]
    fn the_bucket_index_finds_the_owner_of_every_slot() {
        for weights in [
            vec![1u32, 10_000, 3, 3, 7],
            (1..=5_000).map(|i| 1 + i % 97).collect(),
            vec![10_000; 3].into_iter().chain(vec![1; 3_000]).collect(),
        ] {
            let cycle = WeightedCycle::new(&weights);
            for step in 0..(1u64 << cycle.bits).min(200_000) {
                let slot = match cycle.bits {
                    0 => 0,
                    bits => step.reverse_bits() >> (u64::BITS - bits),
                };
                let expected =
                    (slot < cycle.total).then(|| cycle.ends.partition_point(|&end| end <= slot));
                assert_eq!(cycle.at(step), expected, "step {step}");
            }
        }
    }

    #[test]
    fn an_even_step_is_never_skipped() {
        for total in [2u32, 3, 5, 9, 17, 33, 1025] {
            let cycle = WeightedCycle::new(&vec![1; total as usize]);
            assert!(
                (0..4096).step_by(2).all(|s| cycle.at(s).is_some()),
                "{total}"
            );
        }
    }

    #[test]
    fn skipped_steps_never_come_twice_in_a_row() {
        for total in [2u32, 3, 5, 9, 17, 33, 1025] {
            let cycle = WeightedCycle::new(&vec![1; total as usize]);
            let skipped: Vec<bool> = (0..4096).map(|s| cycle.at(s).is_none()).collect();
            assert!(!skipped.windows(2).any(|w| w[0] && w[1]), "{total}");
        }
    }
}
