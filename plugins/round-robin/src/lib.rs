//! Weighted round-robin as a Sluice WASM strategy (ABI v2): a smooth schedule built once per
//! pool change (stride scheduling, as the host's native round-robin), walked by a cursor, so a
//! pick costs the same at 10 000 instances as at 10.
//!
//! Equal weights need no schedule: the cursor walks the pool itself. Otherwise the weights are
//! divided by their gcd and, when they sum past [`MAX_SCHEDULE`], scaled down to it (each
//! instance keeps at least one slot). Each worker thread's instance keeps its own cursor.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Request, Strategy};

/// Largest pool this strategy tracks; larger pools get "no opinion" (host round-robin).
const MAX: usize = 16_384;
/// Longest schedule: slots of one round, before every instance's extra slot for rounding.
const MAX_SCHEDULE: usize = 65_536;

/// Pass values in fixed point: an instance of weight `w` advances `SCALE / w` per slot.
const SCALE: u64 = 1 << 32;

pub struct WeightedRoundRobin {
    /// The schedule of one round (instance indices); empty when the weights are equal.
    schedule: [u16; MAX_SCHEDULE + MAX],
    len: usize,
    cursor: usize,
    /// Stride scheduling's min-heap of (pass, index), used while building the schedule.
    heap: [(u64, u16); MAX],
    weights: [u32; MAX],
}

impl WeightedRoundRobin {
    pub const fn new() -> Self {
        Self {
            schedule: [0; MAX_SCHEDULE + MAX],
            len: 0,
            cursor: 0,
            heap: [(0, 0); MAX],
            weights: [0; MAX],
        }
    }

    /// Fills `schedule` with one smooth round of `weights` (reduced), as stride scheduling:
    /// the instance with the lowest pass takes the next slot and advances by its stride.
    fn build(&mut self, n: usize) {
        let weights = &mut self.weights[..n];
        let g = weights.iter().fold(0u64, |acc, &w| gcd(acc, u64::from(w)));
        let mut total = 0u64;
        for w in weights.iter_mut() {
            *w = (u64::from(*w) / g.max(1)) as u32;
            total += u64::from(*w);
        }
        if total > MAX_SCHEDULE as u64 {
            let scaled = total;
            total = 0;
            for w in weights.iter_mut() {
                *w = ((u64::from(*w) * MAX_SCHEDULE as u64 / scaled) as u32).max(1);
                total += u64::from(*w);
            }
        }
        let heap = &mut self.heap[..n];
        for (i, slot) in heap.iter_mut().enumerate() {
            *slot = (SCALE / u64::from(weights[i]) / 2, i as u16);
        }
        // The initial passes are heap-ordered once sifted down from the middle.
        for i in (0..n / 2).rev() {
            sift_down(heap, i);
        }
        for slot in self.schedule[..total as usize].iter_mut() {
            let (pass, i) = heap[0];
            *slot = i;
            heap[0] = (pass + SCALE / u64::from(weights[usize::from(i)]), i);
            sift_down(heap, 0);
        }
        self.len = total as usize;
    }
}

impl Default for WeightedRoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Restores the min-heap order below `i` (ties by index, so the schedule is deterministic).
fn sift_down(heap: &mut [(u64, u16)], mut i: usize) {
    loop {
        let (left, right) = (2 * i + 1, 2 * i + 2);
        let mut least = i;
        if left < heap.len() && heap[left] < heap[least] {
            least = left;
        }
        if right < heap.len() && heap[right] < heap[least] {
            least = right;
        }
        if least == i {
            return;
        }
        heap.swap(i, least);
        i = least;
    }
}

impl Strategy for WeightedRoundRobin {
    fn prepare(&mut self, instances: &Instances<'_>) -> bool {
        let n = instances.len();
        self.len = 0;
        if n == 0 || n > MAX {
            return true;
        }
        let first = instances.weight(0).max(1);
        let mut equal = true;
        for i in 0..n {
            let w = instances.weight(i).max(1);
            self.weights[i] = w;
            equal &= w == first;
        }
        if !equal {
            self.build(n);
        }
        true
    }

    fn pick(&mut self, _request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let n = instances.len();
        if n == 0 || n > MAX {
            return None;
        }
        let rounds = if self.len == 0 { n } else { self.len };
        self.cursor = (self.cursor + 1) % rounds;
        Some(if self.len == 0 {
            self.cursor
        } else {
            usize::from(self.schedule[self.cursor])
        })
    }
}

export_strategy!(WeightedRoundRobin, WeightedRoundRobin::new());

#[cfg(test)]
mod tests {
    use super::*;

    /// A value on the heap, never on the stack (it is megabytes); all zeros is the empty
    /// strategy.
    fn zeroed<T>() -> Box<T> {
        // SAFETY: T is made of integer (and float) arrays and counters only: zero is valid.
        unsafe { Box::<T>::new_zeroed().assume_init() }
    }

    fn counts(rr: &WeightedRoundRobin, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in &rr.schedule[..rr.len] {
            c[usize::from(i)] += 1;
        }
        c
    }

    #[test]
    fn the_schedule_follows_the_weights_smoothly() {
        let mut rr = zeroed::<WeightedRoundRobin>();
        rr.weights[..3].copy_from_slice(&[500, 100, 100]);
        rr.build(3);
        assert_eq!(&rr.schedule[..rr.len], &[0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(counts(&rr, 3), vec![5, 1, 1]);
    }

    #[test]
    fn a_long_schedule_is_capped_and_keeps_everyone() {
        let mut rr = zeroed::<WeightedRoundRobin>();
        let n = 10_000;
        for i in 0..n {
            rr.weights[i] = 1 + (i as u32 % 10_000);
        }
        rr.build(n);
        assert!(rr.len <= MAX_SCHEDULE + n, "{}", rr.len);
        assert!(counts(&rr, n).iter().all(|&c| c >= 1));
    }
}
