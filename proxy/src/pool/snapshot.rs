//! The immutable pool snapshot of one service: its members, which of them are eligible, and
//! the smooth weighted round-robin cycle over the eligible ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::cycle::{WeightShape, WeightedCycle};
use super::{InstanceLive, LiveCell};
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
#[derive(Debug, Clone)]
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

/// Members per chunk when a snapshot is built whole; a chunk that grows past twice this is
/// split. A change copies the chunks it touches and shares the rest with the previous snapshot.
pub(crate) const CHUNK: usize = 64;

/// What a chunk contributes to its pool's eligible list, computed once when the chunk is built:
/// the eligible members' offsets in the chunk and their weights.
type ChunkEligible = Arc<[(u8, u32)]>;

/// A run of consecutive members (in id order) shared between snapshots, with what it
/// contributes to the eligible list (as of the chunk's build: eligibility changes through a
/// whole rebuild, [`super::Directory::refresh`]).
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    /// Set once, in [`Chunk::new`].
    members: Arc<[Member]>,
    /// The live counters of the eligible members, in eligible order: what a pool copies into
    /// its `eligible_lives` without visiting the members.
    eligible_lives: Arc<[&'static LiveCell]>,
    eligible: ChunkEligible,
    /// The shape of the eligible members' weights (their gcd, whether all equal).
    shape: WeightShape,
    all_plain_http: bool,
}

impl Chunk {
    /// A chunk of `members` (at most 255), their eligibility judged at `now_ms`.
    pub(crate) fn new(members: Vec<Member>, now_ms: u64) -> Self {
        debug_assert!(members.len() <= usize::from(u8::MAX));
        let eligible: ChunkEligible = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_eligible_at(now_ms))
            .map(|(i, m)| (i as u8, m.spec.weight))
            .collect();
        let shape = WeightShape::of(eligible.iter().map(|&(_, weight)| weight));
        let all_plain_http = members
            .iter()
            .all(|m| m.spec.scheme == crate::registry::Scheme::Http);
        let members: Arc<[Member]> = members.into();
        let eligible_lives = eligible
            .iter()
            .map(|&(offset, _)| members[usize::from(offset)].live.table_cell())
            .collect();
        Self {
            eligible_lives,
            members,
            eligible,
            shape,
            all_plain_http,
        }
    }

    /// The chunk's members, in id order.
    pub(crate) fn members(&self) -> &Arc<[Member]> {
        &self.members
    }

    /// The id of the chunk's first member (chunks are never empty).
    pub(crate) fn first_id(&self) -> &str {
        self.members.first().map_or("", |m| m.spec.id.as_str())
    }
}

/// One service's pool at one moment. Immutable but for the round-robin cursor.
#[derive(Debug)]
pub struct Pool {
    service: Arc<str>,
    generation: u64,
    /// The members in id order, in shared chunks.
    chunks: Box<[Chunk]>,
    member_count: usize,
    /// The eligible members, as `chunk << 8 | offset`.
    eligible: Box<[u32]>,
    /// Their pick-time counters, in the same order: what a strategy reading a few random
    /// instances loads directly, one load into the dense cell table instead of four (index,
    /// chunk, member, its `Arc`).
    eligible_lives: Box<[&'static LiveCell]>,
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
        let mut chunks = Vec::with_capacity(members.len().div_ceil(CHUNK));
        let mut members = members.into_iter().peekable();
        while members.peek().is_some() {
            chunks.push(Chunk::new(members.by_ref().take(CHUNK).collect(), now_ms));
        }
        Self::from_chunks(service, generation, chunks)
    }

    /// A snapshot of `chunks` (none empty, in id order): the eligible list and the round-robin
    /// cycle are put together from what each chunk contributes, without visiting members.
    pub(crate) fn from_chunks(service: Arc<str>, generation: u64, chunks: Vec<Chunk>) -> Self {
        let eligible_count = chunks.iter().map(|c| c.eligible.len()).sum();
        let mut eligible = Vec::with_capacity(eligible_count);
        let mut lives = Vec::with_capacity(eligible_count);
        for (c, chunk) in chunks.iter().enumerate() {
            let c = (c as u32) << 8;
            eligible.extend(
                chunk
                    .eligible
                    .iter()
                    .map(|&(offset, _)| c | u32::from(offset)),
            );
            lives.extend_from_slice(&chunk.eligible_lives);
        }
        let shape = chunks
            .iter()
            .fold(WeightShape::EMPTY, |shape, c| shape.join(c.shape));
        let weights = chunks
            .iter()
            .flat_map(|c| c.eligible.iter().map(|&(_, weight)| weight));
        let cycle = WeightedCycle::with_shape(weights, eligible_count, shape);
        // A random start keeps pools (and gateways) from walking in step.
        let start = fastrand::u64(..);
        Self {
            all_plain_http: chunks.iter().all(|c| c.all_plain_http),
            member_count: chunks.iter().map(|c| c.members.len()).sum(),
            service,
            generation,
            chunks: chunks.into_boxed_slice(),
            eligible: eligible.into_boxed_slice(),
            eligible_lives: lives.into_boxed_slice(),
            cycle,
            cursor: AtomicU64::new(start),
        }
    }

    /// The shared chunks, for a change that copies only those it touches.
    pub(crate) fn chunks(&self) -> &[Chunk] {
        &self.chunks
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

    /// Every instance the registry lists, eligible or not, in id order.
    pub fn members(&self) -> impl ExactSizeIterator<Item = &Member> + Clone + '_ {
        ExactLen {
            inner: self.chunks.iter().flat_map(|c| c.members.iter()),
            left: self.member_count,
        }
    }

    /// Number of eligible instances.
    pub fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    /// The `i`-th eligible instance.
    pub fn eligible(&self, i: usize) -> &Member {
        self.at(self.eligible[i])
    }

    /// The pick-time counters of the `i`-th eligible instance (as `eligible(i).live.cell()`,
    /// three dependent loads fewer: what a strategy reading a few random instances pays for).
    #[inline]
    pub fn eligible_live(&self, i: usize) -> &LiveCell {
        self.eligible_lives[i]
    }

    fn at(&self, packed: u32) -> &Member {
        &self.chunks[(packed >> 8) as usize].members[(packed & 0xff) as usize]
    }

    /// Iterates over the eligible instances in order.
    pub fn eligible_members(&self) -> impl ExactSizeIterator<Item = &Member> + '_ {
        self.eligible.iter().map(|&packed| self.at(packed))
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

/// An iterator of known length (a flattening of chunks is not `ExactSizeIterator` by itself).
#[derive(Clone)]
struct ExactLen<I> {
    inner: I,
    left: usize,
}

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.left -= 1;
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_fnv1a() {
        assert_eq!(instance_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(instance_key("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
