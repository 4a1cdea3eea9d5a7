//! `sluice-plugin`: write a Sluice load-balancing strategy in ~20 lines of Rust.
//!
//! A strategy is a `no_std` `cdylib` built for `wasm32-unknown-unknown`. Implement
//! [`Strategy`] and export it with [`export_strategy!`]; the macro provides every export of
//! ABI v1 (`memory`, `sluice_abi_v1`, `sluice_buffer`, `sluice_pick`, and the optional
//! `sluice_alloc` / `sluice_tags` / `sluice_configure`), so the plugin holds only its logic.
//!
//! ```ignore
//! #![no_std]
//! use sluice_plugin::{export_strategy, Instances, Request, Strategy};
//!
//! struct Heaviest;
//!
//! impl Strategy for Heaviest {
//!     fn pick(&mut self, _request: &Request, instances: &Instances<'_>) -> Option<usize> {
//!         (0..instances.len()).max_by_key(|&i| instances.get(i).weight)
//!     }
//! }
//!
//! export_strategy!(Heaviest, Heaviest);
//! ```
//!
//! The buffer views ([`Request`], [`Instances`], [`Instance`]) read the little-endian layout
//! the host writes before each pick; nothing is allocated.
#![cfg_attr(not(test), no_std)]

mod abi;
mod buffer;
mod host;

pub use abi::{ABI_VERSION, HEADER_SIZE, RECORD_SIZE};
pub use buffer::{Instance, Instances, Request, TagNames, FLAG_RETRY};
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

    /// Picks an index in `0..instances.len()`, or `None` for "no opinion" (the host then uses
    /// round-robin).
    fn pick(&mut self, request: &Request, instances: &Instances<'_>) -> Option<usize>;
}

/// Exports a [`Strategy`] as a Sluice ABI v1 module.
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
        pub extern "C" fn sluice_abi_v1() {}

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
        pub extern "C" fn sluice_pick(n: i32) -> i32 {
            let Some((request, instances)) = $crate::__private::read_request(n) else {
                return -1;
            };
            match <$ty as $crate::Strategy>::pick(__sluice_strategy(), &request, &instances) {
                Some(i) if i < instances.len() => i as i32,
                _ => -1,
            }
        }

        #[cfg(all(target_arch = "wasm32", not(test)))]
        #[panic_handler]
        fn __sluice_panic(_: &core::panic::PanicInfo<'_>) -> ! {
            core::arch::wasm32::unreachable()
        }
    };
}
