//! ABI v2 constants: the sizes and offsets of the buffer the host writes (records when the
//! pool changed, the header before each pick).

/// The ABI version this SDK speaks.
pub const ABI_VERSION: u32 = 2;
/// Bytes of the request header at the start of the buffer.
pub const HEADER_SIZE: usize = 32;
/// Bytes of one instance record.
pub const RECORD_SIZE: usize = 32;
/// Bytes `sluice.live` writes per instance: in flight, EWMA, failures (u32 LE each).
pub const LIVE_SIZE: usize = 12;

const _: () = assert!(core::mem::size_of::<crate::Live>() == LIVE_SIZE);

pub(crate) mod header {
    pub(crate) const VERSION: usize = 0;
    pub(crate) const N: usize = 4;
    pub(crate) const RECORD_SIZE: usize = 8;
    pub(crate) const FLAGS: usize = 12;
    pub(crate) const REQUEST_HASH: usize = 16;
    pub(crate) const RANDOM: usize = 24;
}

pub(crate) mod record {
    pub(crate) const KEY: usize = 0;
    pub(crate) const WEIGHT: usize = 8;
    pub(crate) const TAGS: usize = 24;
}
