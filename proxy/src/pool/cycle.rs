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

/// Binary gcd (Stein's): shifts and subtractions, no division (a pool change of 10 000
/// instances took one `div` per step of Euclid's per weight: 40 % of its time).
fn gcd(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        return a | b;
    }
    let shift = (a | b).trailing_zeros();
    let (mut a, mut b) = (a >> a.trailing_zeros(), b);
    while b != 0 {
        b >>= b.trailing_zeros();
        if a > b {
            (a, b) = (b, a);
        }
        b -= a;
    }
    a << shift
}

/// What a run of weights contributes to the shape of its pool's cycle: their gcd (0 for
/// none) and whether they are all equal. Computed per chunk of the pool when the chunk is
/// built and joined per snapshot, so a pool change does not revisit every weight for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WeightShape {
    gcd: u64,
    same: Sameness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sameness {
    Empty,
    All(u64),
    Mixed,
}

impl WeightShape {
    pub(crate) const EMPTY: Self = Self {
        gcd: 0,
        same: Sameness::Empty,
    };

    /// The shape of `weights` (0 counts as 1, as in the cycle).
    pub(crate) fn of(weights: impl IntoIterator<Item = u32>) -> Self {
        weights
            .into_iter()
            .fold(Self::EMPTY, |shape, x| shape.join(Self::one(x)))
    }

    fn one(weight: u32) -> Self {
        let w = u64::from(weight.max(1));
        Self {
            gcd: w,
            same: Sameness::All(w),
        }
    }

    /// The shape of two runs laid end to end.
    pub(crate) fn join(self, other: Self) -> Self {
        let same = match (self.same, other.same) {
            (Sameness::Empty, s) | (s, Sameness::Empty) => s,
            (Sameness::All(a), Sameness::All(b)) if a == b => Sameness::All(a),
            _ => Sameness::Mixed,
        };
        let gcd = if self.gcd == 1 || other.gcd == 1 {
            1
        } else {
            gcd(self.gcd, other.gcd)
        };
        Self { gcd, same }
    }
}

impl WeightedCycle {
    /// The cycle of `weights` (0 counts as 1: the caller offers only eligible instances).
    #[cfg(test)]
    pub(crate) fn new(weights: &[u32]) -> Self {
        let shape = WeightShape::of(weights.iter().copied());
        Self::with_shape(weights.iter().copied(), weights.len(), shape)
    }

    /// The cycle of the `len` weights of `weights`, whose shape is `shape`
    /// ([`WeightShape::of`] them, or joined from the shapes of their runs).
    pub(crate) fn with_shape(
        weights: impl Iterator<Item = u32>,
        len: usize,
        shape: WeightShape,
    ) -> Self {
        let (ends, total): (Box<[u64]>, u64) = match shape.same {
            Sameness::Empty | Sameness::All(_) => (Box::new([]), len as u64),
            Sameness::Mixed => {
                let w = |x: u32| u64::from(x.max(1));
                let g = shape.gcd.max(1);
                let mut sum = 0;
                let mut ends = Vec::with_capacity(len);
                if g == 1 {
                    // No division per weight in the common case.
                    ends.extend(weights.map(|x| {
                        sum += w(x);
                        sum
                    }));
                } else {
                    ends.extend(weights.map(|x| {
                        sum += w(x) / g;
                        sum
                    }));
                }
                (ends.into_boxed_slice(), sum)
            }
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
    fn the_binary_gcd_agrees_with_euclid() {
        fn euclid(mut a: u64, mut b: u64) -> u64 {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        }
        let values = [
            0u64,
            1,
            2,
            3,
            6,
            12,
            25,
            100,
            150,
            200,
            1 << 20,
            3 << 31,
            u64::from(u32::MAX),
        ];
        for &a in &values {
            for &b in &values {
                assert_eq!(gcd(a, b), euclid(a, b), "gcd({a}, {b})");
            }
        }
    }

    #[test]
    fn shapes_joined_run_by_run_equal_the_shape_of_the_whole() {
        let weights = [100u32, 50, 150, 0, 100, 100, 300, 7, 100];
        for cut in 0..=weights.len() {
            let (a, b) = weights.split_at(cut);
            assert_eq!(
                WeightShape::of(a.iter().copied()).join(WeightShape::of(b.iter().copied())),
                WeightShape::of(weights),
                "cut at {cut}"
            );
        }
        assert_eq!(WeightShape::of([100, 50, 150]).gcd, 50);
        assert_eq!(WeightShape::of([100, 57, 150]).gcd, 1);
        assert_eq!(WeightShape::of([0, 1]).same, Sameness::All(1));
        assert_eq!(WeightShape::of([]), WeightShape::EMPTY);
        // Chunks of equal weights joined: still equal, so the cycle needs no prefix sums.
        let equal = WeightShape::of([100; 3]).join(WeightShape::of([100; 5]));
        let cycle = WeightedCycle::with_shape([100; 8].into_iter(), 8, equal);
        assert!(cycle.ends.is_empty());
        assert_eq!(cycle.total(), 8);
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
