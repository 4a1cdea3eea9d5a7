//! The two host functions a plugin may import from module `sluice`.

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
