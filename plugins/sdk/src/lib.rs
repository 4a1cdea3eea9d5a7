//! `sluice-plugin`: write a Sluice load-balancing strategy in ~20 lines of Rust.
//!
//! A strategy is a `no_std` `cdylib` built for `wasm32-unknown-unknown`. Implement
//! [`Strategy`] and export it with [`export_strategy!`]; the macro provides every export of
//! ABI v2 (`memory`, `sluice_abi_v2`, `sluice_buffer`, `sluice_pick`, `sluice_prepare`, and
//! `sluice_alloc` / `sluice_tags` / `sluice_configure`), so the plugin holds only its logic.
//!
//! In v2 the host writes the records (key, weight, tags) only when the pool changed, and then
//! calls [`Strategy::prepare`], where a strategy builds its tables (a schedule, a ring) once;
//! a pick reads the live fields of just the instances it looks at ([`Instances::live`]), so
//! it costs the same in a pool of 10 000 as in one of 10.
//!
//! ```ignore
//! #![no_std]
//! use sluice_plugin::{export_strategy, Instances, Request, Strategy};
//!
//! struct Heaviest;
//!
//! impl Strategy for Heaviest {
//!     fn pick(&mut self, _request: &Request, instances: &Instances<'_>) -> Option<usize> {
//!         (0..instances.len()).max_by_key(|&i| instances.weight(i))
//!     }
//! }
//!
//! export_strategy!(Heaviest, Heaviest);
//! ```
//!
//! The buffer views ([`Request`], [`Instances`], [`Instance`]) read the little-endian layout
//! the host writes; nothing is allocated.
#![cfg_attr(not(test), no_std)]

mod abi;
mod buffer;
mod host;

pub use abi::{ABI_VERSION, HEADER_SIZE, LIVE_SIZE, RECORD_SIZE};
pub use buffer::{Instance, Instances, Live, Request, TagNames, FLAG_RETRY};
pub use host::{log, request_header, LogLevel};

#[doc(hidden)]
pub mod __private {
    pub use crate::buffer::{buffer_for, read_request};
}

/// A load-balancing strategy. One value lives per worker thread of the gateway, for as long as
/// the plugin is loaded, so `&mut self` state (cursors, tables) persists between picks.
pub trait Strategy {
    /// Called with the names of the strategy's `tags` (bit `i` of an instance's tag bits is
    /// name `i`), before [`Strategy::configure`]; `false` rejects the plugin. The names are
    /// borrowed for this call only. The default accepts any.
    fn tags(&mut self, _names: TagNames<'_>) -> bool {
        true
    }

    /// Called with the strategy's `config` as JSON bytes, after [`Strategy::tags`]; `false`
    /// rejects the plugin. Both run once per instance of the module: the host's probe at
    /// load and one instance per worker thread. The default accepts any config.
    fn configure(&mut self, _config: &[u8]) -> bool {
        true
    }

    /// Called when the pool's records changed (an instance came, went, or changed weight or
    /// tags), before the next pick, with up to 50 ms to build per-pool tables; `false` makes
    /// the host serve that pick by round-robin and count a failure. The live fields are
    /// readable here too. The default keeps nothing.
    fn prepare(&mut self, _instances: &Instances<'_>) -> bool {
        true
    }

    /// Picks an index in `0..instances.len()`, or `None` for "no opinion" (the host then uses
    /// round-robin). On a retry ([`Request::is_retry`]) the whole pool is offered and
    /// [`Instances::tried`] marks what this request already tried; an answer that was tried
    /// is moved to the next untried index.
    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize>;
}

/// The answer of a pick, a tried one on a retry moved to the next untried index.
#[doc(hidden)]
pub fn settle(request: &Request, instances: &Instances<'_>, answer: Option<usize>) -> i32 {
    let n = instances.len();
    match answer {
        Some(i) if i < n => {
            if request.is_retry() && instances.tried(i) {
                (1..n)
                    .map(|step| (i + step) % n)
                    .find(|&j| !instances.tried(j))
                    .map_or(i as i32, |j| j as i32)
            } else {
                i as i32
            }
        }
        _ => -1,
    }
}

/// Exports a [`Strategy`] as a Sluice ABI v2 module.
///
/// `export_strategy!(Type, init_expression)`: the expression builds the strategy value; it
/// must be usable in a `static` initializer (a `const` expression).
#[macro_export]
macro_rules! export_strategy {
    ($ty:ty, $init:expr) => {
        static mut __SLUICE_STRATEGY: $ty = $init;

        #[inline(always)]
        fn __sluice_strategy() -> &'static mut $ty {
            // SAFETY: a wasm32-unknown-unknown module is single-threaded and the host never
            // re-enters a call, so this is the only live reference.
            unsafe { &mut *core::ptr::addr_of_mut!(__SLUICE_STRATEGY) }
        }

        #[no_mangle]
        pub extern "C" fn sluice_abi_v2() {}

        #[no_mangle]
        pub extern "C" fn sluice_buffer(max_instances: i32) -> i32 {
            $crate::__private::buffer_for(max_instances)
        }

        #[no_mangle]
        pub extern "C" fn sluice_alloc(len: i32) -> i32 {
            $crate::__private::buffer_for((len.max(0) as usize).div_ceil($crate::RECORD_SIZE) as i32)
        }

        #[no_mangle]
        pub extern "C" fn sluice_configure(ptr: i32, len: i32) -> i32 {
            // SAFETY: the host wrote `len` bytes at `ptr`, inside a buffer this module returned.
            let config = unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len.max(0) as usize) };
            if <$ty as $crate::Strategy>::configure(__sluice_strategy(), config) {
                0
            } else {
                1
            }
        }

        #[no_mangle]
        pub extern "C" fn sluice_tags(ptr: i32, len: i32) -> i32 {
            // SAFETY: the host wrote `len` bytes at `ptr`, inside a buffer this module returned.
            let text = unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len.max(0) as usize) };
            if <$ty as $crate::Strategy>::tags(__sluice_strategy(), $crate::TagNames::new(text)) {
                0
            } else {
                1
            }
        }

        #[no_mangle]
        pub extern "C" fn sluice_prepare(n: i32) -> i32 {
            let Some((_, instances)) = $crate::__private::read_request(n) else {
                return 1;
            };
            if <$ty as $crate::Strategy>::prepare(__sluice_strategy(), &instances) {
                0
            } else {
                1
            }
        }

        #[no_mangle]
        pub extern "C" fn sluice_pick(n: i32) -> i32 {
            let Some((request, instances)) = $crate::__private::read_request(n) else {
                return -1;
            };
            let answer = <$ty as $crate::Strategy>::pick(__sluice_strategy(), &request, &instances);
            $crate::settle(&request, &instances, answer)
        }

        #[cfg(all(target_arch = "wasm32", not(test)))]
        #[panic_handler]
        fn __sluice_panic(_: &core::panic::PanicInfo<'_>) -> ! {
            core::arch::wasm32::unreachable()
        }
    };
}
