//! The guest-owned buffer and safe, zero-copy views of what the host wrote into it.

use crate::abi::{header, record, ABI_VERSION, HEADER_SIZE, RECORD_SIZE};

/// WebAssembly page size.
const PAGE: usize = 65_536;

/// Start and capacity (in records) of the buffer; grown, never shrunk.
static mut BUFFER: (usize, usize) = (0, 0);

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Returns a buffer for at least `max_instances` records, growing linear memory when needed;
/// `0` when memory cannot grow.
#[doc(hidden)]
pub fn buffer_for(max_instances: i32) -> i32 {
    let wanted = max_instances.max(1) as usize;
    // SAFETY: single-threaded module; no other reference to BUFFER is live.
    let (start, capacity) = unsafe { *core::ptr::addr_of!(BUFFER) };
    if start != 0 && capacity >= wanted {
        return start as i32;
    }
    let bytes = HEADER_SIZE + RECORD_SIZE * wanted;
    match grow(bytes.div_ceil(PAGE)) {
        Some(new_start) => {
            // SAFETY: as above.
            unsafe { *core::ptr::addr_of_mut!(BUFFER) = (new_start, wanted) };
            new_start as i32
        }
        None => 0,
    }
}

#[cfg(target_arch = "wasm32")]
fn grow(pages: usize) -> Option<usize> {
    let old = core::arch::wasm32::memory_grow(0, pages);
    (old != usize::MAX).then_some(old * PAGE)
}

#[cfg(not(target_arch = "wasm32"))]
fn grow(_pages: usize) -> Option<usize> {
    None
}

/// The buffer's header and records for a pick of `n` instances, if the header is sound.
#[doc(hidden)]
pub fn read_request(n: i32) -> Option<(Request, Instances<'static>)> {
    // SAFETY: single-threaded module; BUFFER was set by `buffer_for`.
    let (start, capacity) = unsafe { *core::ptr::addr_of!(BUFFER) };
    let n = usize::try_from(n).ok()?;
    if start == 0 || n > capacity {
        return None;
    }
    // SAFETY: `start` points at HEADER_SIZE + RECORD_SIZE * capacity bytes this module owns.
    let bytes: &'static [u8] =
        unsafe { core::slice::from_raw_parts(start as *const u8, HEADER_SIZE + RECORD_SIZE * n) };
    view(bytes, n)
}

/// Parses a header and `n` records from `bytes` (also usable on a host-side copy).
pub(crate) fn view(bytes: &[u8], n: usize) -> Option<(Request, Instances<'_>)> {
    if bytes.len() < HEADER_SIZE + RECORD_SIZE * n
        || u32_at(bytes, header::VERSION) != ABI_VERSION
        || u32_at(bytes, header::RECORD_SIZE) as usize != RECORD_SIZE
        || u32_at(bytes, header::N) as usize != n
    {
        return None;
    }
    let request = Request {
        hash: u64_at(bytes, header::REQUEST_HASH),
        random: u64_at(bytes, header::RANDOM),
        flags: u32_at(bytes, header::FLAGS),
    };
    let records = &bytes[HEADER_SIZE..HEADER_SIZE + RECORD_SIZE * n];
    Some((request, Instances { records }))
}

/// What the host knows of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// From the route's `hash_on`; 0 when unset.
    pub hash: u64,
    /// Fresh per request, for randomized strategies.
    pub random: u64,
    /// Header flags; see [`Request::is_retry`]. Other bits are reserved (0).
    pub flags: u32,
}

/// Header flag: the request is a retry; [`Instances::tried`] says which instances it tried.
pub const FLAG_RETRY: u32 = 1;

impl Request {
    /// Whether this pick is a retry after a failed try. The whole pool is offered; the
    /// instances this request already tried answer `true` to [`Instances::tried`], and at least
    /// one has not been tried (with every instance tried, a retry is offered as a first try).
    pub fn is_retry(&self) -> bool {
        self.flags & FLAG_RETRY != 0
    }
}

/// The names of the strategy's `tags`, in order: name `i` is tag bit `i`. Borrowed from the
/// host's bytes for the duration of [`crate::Strategy::tags`] only.
#[derive(Debug, Clone, Copy)]
pub struct TagNames<'a> {
    text: &'a [u8],
}

impl<'a> TagNames<'a> {
    /// The names from `sluice_tags`' bytes (joined by `\n`).
    pub fn new(text: &'a [u8]) -> Self {
        Self { text }
    }

    /// Every name in order (none when the strategy has no `tags`).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let text = self.text;
        text.split(|&b| b == b'\n')
            .filter(move |_| !text.is_empty())
    }

    /// The bit of tag `name`, if the strategy has it.
    pub fn bit(&self, name: &str) -> Option<u32> {
        self.iter()
            .position(|t| t == name.as_bytes())
            .and_then(|i| u32::try_from(i).ok())
            .filter(|&i| i < 32)
            .map(|i| 1 << i)
    }
}

/// One eligible instance as the host describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// Stable 64-bit hash of the instance id (FNV-1a).
    pub key: u64,
    pub weight: u32,
    /// Requests in flight to this instance, process-wide.
    pub in_flight: u32,
    /// Latency EWMA in microseconds, 0 when unknown.
    pub ewma_us: u32,
    /// Consecutive failures.
    pub failures: u32,
    /// Bit i set when the instance carries the i-th tag of the strategy's `tags`.
    pub tags: u32,
}

/// The live fields of one instance, read from the host when asked (`sluice.live`): they
/// change with every request, so the records do not carry them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// Requests in flight to this instance, process-wide.
    pub in_flight: u32,
    /// Latency EWMA in microseconds, 0 when unknown.
    pub ewma_us: u32,
    /// Consecutive failures.
    pub failures: u32,
}

/// The eligible instances of this pick, in the host's order: the records (key, weight, tags)
/// the host wrote when the pool changed, and the live fields on demand.
#[derive(Debug, Clone, Copy)]
pub struct Instances<'a> {
    records: &'a [u8],
}

impl<'a> Instances<'a> {
    /// Number of instances.
    pub fn len(&self) -> usize {
        self.records.len() / RECORD_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The `i`-th instance, its live fields read from the host (one `sluice.live` call).
    /// Panics (traps) when `i >= len()`.
    pub fn get(&self, i: usize) -> Instance {
        let r = &self.records[i * RECORD_SIZE..(i + 1) * RECORD_SIZE];
        let live = self.live(i);
        Instance {
            key: u64_at(r, record::KEY),
            weight: u32_at(r, record::WEIGHT),
            in_flight: live.in_flight,
            ewma_us: live.ewma_us,
            failures: live.failures,
            tags: u32_at(r, record::TAGS),
        }
    }

    /// The weight of the `i`-th instance.
    pub fn weight(&self, i: usize) -> u32 {
        u32_at(&self.records[i * RECORD_SIZE..], record::WEIGHT)
    }

    /// The key of the `i`-th instance.
    pub fn key(&self, i: usize) -> u64 {
        u64_at(&self.records[i * RECORD_SIZE..], record::KEY)
    }

    /// The tag bits of the `i`-th instance.
    pub fn tags(&self, i: usize) -> u32 {
        u32_at(&self.records[i * RECORD_SIZE..], record::TAGS)
    }

    /// The live fields of the `i`-th instance (zeros when `i` is out of range).
    pub fn live(&self, i: usize) -> Live {
        let mut one = [Live::default()];
        crate::host::live(i, &mut one);
        one[0]
    }

    /// The live fields of the instances at `indices`, in one host call (`sluice.live_of`): a
    /// strategy that samples a few instances (two choices, or d) pays one host call and
    /// overlapping cache misses instead of one call each. All zeros when an index is out of
    /// range, as [`Instances::live`].
    pub fn live_of<const K: usize>(&self, indices: [usize; K]) -> [Live; K] {
        let mut out = [Live::default(); K];
        if indices.iter().any(|&i| i >= self.len()) {
            return out;
        }
        // Below `len()`, which the host's i32 count bounds: each fits a u32.
        let at = indices.map(|i| i as u32);
        crate::host::live_of(&at, &mut out);
        out
    }

    /// The requests in flight to the `i`-th instance.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.live(i).in_flight
    }

    /// The live fields of instances `first..first + out.len()` in one host call (a strategy
    /// that scans the pool reads it in chunks); `false` when the range is outside the pool.
    pub fn live_into(&self, first: usize, out: &mut [Live]) -> bool {
        first
            .checked_add(out.len())
            .is_some_and(|end| end <= self.len())
            && crate::host::live(first, out)
    }

    /// Whether this request already tried the `i`-th instance (only ever on a retry).
    pub fn tried(&self, i: usize) -> bool {
        crate::host::tried(i)
    }

    /// Every instance in order (one host call each for the live fields).
    pub fn iter(&self) -> impl Iterator<Item = Instance> + 'a {
        let this = *self;
        (0..this.len()).map(move |i| this.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_read_the_documented_layout() {
        let mut bytes = [0u8; HEADER_SIZE + 2 * RECORD_SIZE];
        bytes[0..4].copy_from_slice(&ABI_VERSION.to_le_bytes());
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        bytes[8..12].copy_from_slice(&32u32.to_le_bytes());
        bytes[16..24].copy_from_slice(&0xabcdu64.to_le_bytes());
        bytes[24..32].copy_from_slice(&7u64.to_le_bytes());
        let r1 = HEADER_SIZE + RECORD_SIZE;
        bytes[r1..r1 + 8].copy_from_slice(&99u64.to_le_bytes());
        bytes[r1 + 8..r1 + 12].copy_from_slice(&50u32.to_le_bytes());
        bytes[r1 + 24..r1 + 28].copy_from_slice(&0b101u32.to_le_bytes());
        let (req, inst) = view(&bytes, 2).unwrap();
        assert_eq!((req.hash, req.random), (0xabcd, 7));
        assert_eq!(inst.len(), 2);
        let second = inst.get(1);
        assert_eq!((second.key, second.weight, second.tags), (99, 50, 0b101));
        assert_eq!(inst.tags(1), 0b101);
        assert_eq!(
            second.in_flight, 0,
            "live fields come from the host, absent off wasm"
        );
        assert!(
            !inst.live_into(1, &mut [Live::default(); 2]),
            "past the end"
        );
        bytes[0..4].copy_from_slice(&1u32.to_le_bytes());
        assert!(view(&bytes, 2).is_none(), "a v1 header is not read as v2");
        bytes[0..4].copy_from_slice(&ABI_VERSION.to_le_bytes());
        assert!(view(&bytes, 3).is_none(), "n must match the header");
        assert!(!req.is_retry());
        bytes[12..16].copy_from_slice(&FLAG_RETRY.to_le_bytes());
        assert!(view(&bytes, 2).unwrap().0.is_retry());
    }

    #[test]
    fn tag_names_give_their_bits() {
        let names = TagNames::new(b"canary\ngpu");
        assert_eq!(names.iter().count(), 2);
        assert_eq!(names.bit("canary"), Some(1));
        assert_eq!(names.bit("gpu"), Some(2));
        assert_eq!(names.bit("zone-a"), None);
        assert_eq!(TagNames::new(b"").iter().count(), 0);
    }
}
