//! The immutable pool snapshot of one service: its members, which of them are eligible, and
//! the smooth weighted round-robin cycle over the eligible ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::cycle::WeightedCycle;
use super::InstanceLive;
use crate::registry::{InstanceSpec, Status};

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
        self.is_eligible_at(super::live::clock_ms())
    }

    /// [`Member::is_eligible`] at `now_ms` ([`super::clock_ms`]), for a pass over many.
    pub fn is_eligible_at(&self, now_ms: u64) -> bool {
        self.spec.status == Status::Up
            && self.spec.weight > 0
            && self.socket.is_some()
            && self.live.health().admits()
            && !self.live.is_ejected(now_ms)
    }
}

/// One service's pool at one moment. Immutable but for the round-robin cursor.
#[derive(Debug)]
pub struct Pool {
    service: Arc<str>,
    generation: u64,
    members: Box<[Member]>,
    eligible: Box<[u32]>,
    cycle: WeightedCycle,
    cursor: AtomicU64,
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
        let now_ms = super::live::clock_ms();
        let eligible: Box<[u32]> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_eligible_at(now_ms))
            .map(|(i, _)| i as u32)
            .collect();
        let weights: Vec<u32> = eligible
            .iter()
            .map(|&i| members[i as usize].spec.weight)
            .collect();
        let cycle = WeightedCycle::new(&weights);
        // A random start keeps pools (and gateways) from walking in step.
        let start = fastrand::u64(..);
        let all_plain_http = members
            .iter()
            .all(|m| m.spec.scheme == crate::registry::Scheme::Http);
        Self {
            all_plain_http,
            service,
            generation,
            members: members.into_boxed_slice(),
            eligible,
            cycle,
            cursor: AtomicU64::new(start),
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

    /// Next index in smooth weighted round-robin order (an index of `eligible`): one atomic
    /// add, two when the step falls past the cycle's last slot.
    pub fn next_round_robin(&self) -> Option<usize> {
        if self.cycle.total() == 0 {
            return None;
        }
        // A step is skipped only when odd, and this thread's next step is usually the next
        // one; should other threads keep taking the even ones, an odd step's even neighbour
        // is always inside the cycle.
        let mut step = 0;
        for _ in 0..4 {
            step = self.cursor.fetch_add(1, Ordering::Relaxed);
            if let Some(i) = self.cycle.at(step) {
                return Some(i);
            }
        }
        self.cycle.at(step & !1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_fnv1a() {
        assert_eq!(instance_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(instance_key("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
