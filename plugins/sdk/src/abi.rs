//! ABI v1 constants: the sizes and offsets of the buffer the host writes before each pick.

/// The ABI version this SDK speaks.
pub const ABI_VERSION: u32 = 1;
/// Bytes of the request header at the start of the buffer.
pub const HEADER_SIZE: usize = 32;
/// Bytes of one instance record.
pub const RECORD_SIZE: usize = 32;

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
    pub(crate) const IN_FLIGHT: usize = 12;
    pub(crate) const EWMA_US: usize = 16;
    pub(crate) const FAILURES: usize = 20;
    pub(crate) const TAGS: usize = 24;
}
