//! A hostile strategy for the test suites, built from source like the real ones. Its config
//! chooses what goes wrong and when, so it passes the load probe and misbehaves on live pools
//! (an out-of-range index cannot come from the SDK, which turns it into "no opinion"):
//!
//! `{"mode": "trap" | "loop" | "grow" | "no_opinion" | "header" | "reject", "when_n": N}`
//!
//! `header` is the well-behaved one: it picks the index written in the request's `x-chaos-pick`
//! header (through the host's `sluice.request_header`), or has no opinion without it.
//!
//! With `when_n` set, it misbehaves only for pools of exactly N instances (the probe uses 1, 2,
//! 3, 16 and 64) and picks the first instance otherwise. `reject` refuses its config.
#![cfg_attr(target_arch = "wasm32", no_std)]

use sluice_plugin::{export_strategy, Instances, Request, Strategy};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Behave,
    Trap,
    Loop,
    Grow,
    NoOpinion,
    Header,
}

pub struct Chaos {
    mode: Mode,
    when_n: usize,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The number after `"when_n":` (spaces allowed), if any.
fn when_n(config: &[u8]) -> usize {
    let Some(at) = find(config, b"\"when_n\"") else {
        return 0;
    };
    config[at + 8..]
        .iter()
        .skip_while(|c| **c == b':' || **c == b' ')
        .take_while(|c| c.is_ascii_digit())
        .fold(0usize, |n, c| n * 10 + usize::from(c - b'0'))
}

impl Strategy for Chaos {
    fn configure(&mut self, config: &[u8]) -> bool {
        for (name, mode) in [
            (&b"\"trap\""[..], Mode::Trap),
            (b"\"loop\"", Mode::Loop),
            (b"\"grow\"", Mode::Grow),
            (b"\"no_opinion\"", Mode::NoOpinion),
            (b"\"header\"", Mode::Header),
        ] {
            if find(config, name).is_some() {
                self.mode = mode;
            }
        }
        self.when_n = when_n(config);
        find(config, b"\"reject\"").is_none()
    }

    fn pick(&mut self, _request: &Request, instances: &Instances<'_>) -> Option<usize> {
        let n = instances.len();
        if self.when_n != 0 && n != self.when_n {
            return Some(0);
        }
        match self.mode {
            Mode::Behave => Some(0),
            Mode::Trap => panic!("chaos: trap"),
            #[allow(clippy::empty_loop)]
            Mode::Loop => loop {
                core::hint::spin_loop();
            },
            Mode::Grow => {
                // Grow until the host's memory cap says no, then keep asking.
                #[cfg(target_arch = "wasm32")]
                loop {
                    core::arch::wasm32::memory_grow(0, 16);
                }
                #[cfg(not(target_arch = "wasm32"))]
                None
            }
            Mode::NoOpinion => None,
            Mode::Header => {
                let mut value = [0u8; 8];
                let len = sluice_plugin::request_header("x-chaos-pick", &mut value)?;
                let digits = &value[..len.min(value.len())];
                let index = digits
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .fold(0usize, |n, c| n * 10 + usize::from(c - b'0'));
                Some(index)
            }
        }
    }
}

export_strategy!(
    Chaos,
    Chaos {
        mode: Mode::Behave,
        when_n: 0
    }
);
