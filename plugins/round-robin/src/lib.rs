//! Smooth weighted round-robin (nginx's algorithm) as a Sluice WASM strategy.
//!
//! Each worker thread's instance keeps a current weight per position; a position whose
//! instance key changes (the pool changed) starts again from zero.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Request, Strategy};

/// Largest pool this strategy tracks; larger pools get "no opinion" (host round-robin).
const MAX: usize = 16_384;

pub struct SmoothRoundRobin {
    keys: [u64; MAX],
    current: [i64; MAX],
}

impl SmoothRoundRobin {
    pub const fn new() -> Self {
        Self {
            keys: [0; MAX],
            current: [0; MAX],
        }
    }
}

impl Default for SmoothRoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

impl Strategy for SmoothRoundRobin {
    fn pick(&mut self, _request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let n = instances.len();
        if n == 0 || n > MAX {
            return None;
        }
        let mut total: i64 = 0;
        let mut best = 0;
        let mut best_current = i64::MIN;
        for i in 0..n {
            let key = instances.key(i);
            if self.keys[i] != key {
                self.keys[i] = key;
                self.current[i] = 0;
            }
            let weight = i64::from(instances.weight(i));
            total += weight;
            self.current[i] += weight;
            if self.current[i] > best_current {
                best_current = self.current[i];
                best = i;
            }
        }
        self.current[best] -= total;
        Some(best)
    }
}

export_strategy!(SmoothRoundRobin, SmoothRoundRobin::new());
