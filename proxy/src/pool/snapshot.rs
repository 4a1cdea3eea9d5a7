//! The immutable pool snapshot of one service: its members, which of them are eligible, and
//! a precomputed smooth weighted round-robin schedule over the eligible ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::InstanceLive;
use crate::registry::{InstanceSpec, Status};

/// Longest weighted round-robin schedule kept per pool (entries are `u32`).
const MAX_SCHEDULE: u64 = 1 << 16;

/// Stable 64-bit key of an instance id (FNV-1a), as the WASM ABI's `instance key`.
pub fn instance_key(id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One instance in a snapshot.
#[derive(Debug)]
pub struct Member {
    pub spec: Arc<InstanceSpec>,
    /// [`instance_key`] of the id.
    pub key: u64,
    /// The resolved address; `None` when it could not be resolved (never eligible).
    pub socket: Option<SocketAddr>,
    pub live: Arc<InstanceLive>,
}

impl Member {
    /// Whether the strategy may be offered this instance.
    pub fn is_eligible(&self) -> bool {
        self.spec.status == Status::Up
            && self.spec.weight > 0
            && self.socket.is_some()
            && self.live.health().admits()
            && !self.live.is_ejected(super::live::clock_ms())
    }
}

/// One service's pool at one moment. Immutable but for the round-robin cursor.
#[derive(Debug)]
pub struct Pool {
    service: Arc<str>,
    generation: u64,
    members: Box<[Member]>,
    eligible: Box<[u32]>,
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    /// Every member is a plain `http` instance (what the fast path serves).
    all_plain_http: bool,
}

impl Pool {
    /// An empty pool for a service the registry has not (yet) listed.
    pub fn empty(service: Arc<str>) -> Self {
        Self::new(service, 0, Vec::new())
    }

    /// Builds a snapshot; members keep their order (sorted by id by the directory).
    pub fn new(service: Arc<str>, generation: u64, members: Vec<Member>) -> Self {
        let eligible: Box<[u32]> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_eligible())
            .map(|(i, _)| i as u32)
            .collect();
        let weights: Vec<u32> = eligible
            .iter()
            .map(|&i| members[i as usize].spec.weight)
            .collect();
        let schedule = weighted_schedule(&weights);
        let start = if schedule.is_empty() {
            0
        } else {
            fastrand::usize(..schedule.len())
        };
        let all_plain_http = members
            .iter()
            .all(|m| m.spec.scheme == crate::registry::Scheme::Http);
        Self {
            all_plain_http,
            service,
            generation,
            members: members.into_boxed_slice(),
            eligible,
            schedule,
            cursor: AtomicUsize::new(start),
        }
    }

    /// Whether every member is a plain `http` instance.
    pub fn all_plain_http(&self) -> bool {
        self.all_plain_http
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn service_arc(&self) -> &Arc<str> {
        &self.service
    }

    /// Increases with every snapshot of the service.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every instance the registry lists, eligible or not.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Number of eligible instances.
    pub fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    /// The `i`-th eligible instance.
    pub fn eligible(&self, i: usize) -> &Member {
        &self.members[self.eligible[i] as usize]
    }

    /// Iterates over the eligible instances in order.
    pub fn eligible_members(&self) -> impl ExactSizeIterator<Item = &Member> + '_ {
        self.eligible.iter().map(|&i| &self.members[i as usize])
    }

    /// Next index in smooth weighted round-robin order (an index of `eligible`).
    pub fn next_round_robin(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        Some(self.schedule[n % self.schedule.len()] as usize)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A smooth weighted order of indices: stride scheduling (each pick advances the picked
/// index's pass by `1/weight`), so weights 5:1:1 give `a a a b c a a` rather than `a a a a a b c`.
/// Weights are reduced by their gcd and scaled down when the schedule would exceed
/// [`MAX_SCHEDULE`]; every index appears at least once.
fn weighted_schedule(weights: &[u32]) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::new([]);
    }
    let g = weights
        .iter()
        .fold(0u64, |acc, &w| gcd(acc, u64::from(w.max(1))));
    let mut reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1)) / g).collect();
    let total: u64 = reduced.iter().sum();
    let limit = MAX_SCHEDULE.max(weights.len() as u64);
    if total > limit {
        for w in &mut reduced {
            *w = (*w * limit / total).max(1);
        }
    }
    let total: u64 = reduced.iter().sum();
    // Pass values in fixed point: stride = SCALE / weight.
    const SCALE: u64 = 1 << 32;
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = reduced
        .iter()
        .enumerate()
        .map(|(i, &w)| Reverse((SCALE / w / 2, i as u32)))
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while out.len() < total as usize {
        let Some(Reverse((pass, i))) = heap.pop() else {
            break;
        };
        out.push(i);
        heap.push(Reverse((pass + SCALE / reduced[i as usize], i)));
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in schedule {
            c[i as usize] += 1;
        }
        c
    }

    #[test]
    fn schedule_follows_weights_smoothly() {
        let s = weighted_schedule(&[500, 100, 100]);
        assert_eq!(counts(&s, 3), vec![5, 1, 1]);
        // Smooth: the heavy one never runs more than 3 in a row here.
        let runs = s.windows(4).filter(|w| w.iter().all(|&x| x == 0)).count();
        assert_eq!(runs, 0, "{s:?}");
        assert_eq!(&*s, &[0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(weighted_schedule(&[100, 100]).len(), 2);
    }

    #[test]
    fn schedule_is_capped_and_keeps_everyone() {
        let weights: Vec<u32> = (1..=10_000).collect();
        let s = weighted_schedule(&weights);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 10_000);
        assert!(counts(&s, 10_000).iter().all(|&c| c >= 1));
    }

    #[test]
    fn key_is_stable_fnv1a() {
        assert_eq!(instance_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(instance_key("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
