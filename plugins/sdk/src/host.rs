//! The host functions a plugin may import from module `sluice`: `log` and `request_header`
//! (since v1), `live`, `live_of` and `tried` (v2; wrapped by [`crate::Instances`]).

/// Log levels understood by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum LogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "sluice")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: i32, len: i32);
    #[link_name = "request_header"]
    fn host_request_header(name_ptr: i32, name_len: i32, out_ptr: i32, out_cap: i32) -> i32;
    #[link_name = "live"]
    fn host_live(first: i32, count: i32, out_ptr: i32) -> i32;
    #[link_name = "live_of"]
    fn host_live_of(indices_ptr: i32, count: i32, out_ptr: i32) -> i32;
    #[link_name = "tried"]
    fn host_tried(index: i32) -> i32;
}

/// Writes a line to the gateway's log, attributed to the strategy.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `len` bytes at `ptr` from this module's memory and keeps nothing.
    unsafe {
        host_log(level as i32, message.as_ptr() as i32, message.len() as i32)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Copies the value of request header `name` into `out`; returns the value's full length
/// (which may exceed `out.len()`, in which case `out` holds a prefix), or `None` when absent.
pub fn request_header(name: &str, out: &mut [u8]) -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the host writes at most `out.len()` bytes at `out`'s address.
        let n = unsafe {
            host_request_header(
                name.as_ptr() as i32,
                name.len() as i32,
                out.as_mut_ptr() as i32,
                out.len() as i32,
            )
        };
        usize::try_from(n).ok()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (name, out);
        None
    }
}

/// Fills `out` with the live fields of records `first..first + out.len()`; `false` (and `out`
/// untouched) when the range is outside the pool or the call is outside a pick or prepare.
pub(crate) fn live(first: usize, out: &mut [crate::Live]) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: `Live` is `repr(C)`, three u32 (12 bytes, the host's LIVE_SIZE), and wasm32
        // is little-endian as the host writes them; the host writes at most `out.len()` of them
        // at `out`'s address.
        let n = unsafe { host_live(first as i32, out.len() as i32, out.as_mut_ptr() as i32) };
        n >= 0
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (first, out);
        false
    }
}

/// Fills `out` with the live fields of the records at `indices` (as many as `out` holds), in
/// one host call; `false` (and `out` untouched) when an index is outside the pool or the call
/// is outside a pick or prepare.
pub(crate) fn live_of(indices: &[u32], out: &mut [crate::Live]) -> bool {
    let count = indices.len().min(out.len());
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: as in `live`; the host reads `count` u32 at `indices` and writes `count`
        // `Live` at `out`, two distinct borrows, so they never overlap.
        let n = unsafe {
            host_live_of(
                indices.as_ptr() as i32,
                count as i32,
                out.as_mut_ptr() as i32,
            )
        };
        n >= 0
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (count, indices, out);
        false
    }
}

/// Whether this request already tried record `index` (false outside a retry).
pub(crate) fn tried(index: usize) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: a pure query; the host reads no memory.
        unsafe { host_tried(index as i32) == 1 }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = index;
        false
    }
}
