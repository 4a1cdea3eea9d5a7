//! The counters a pick reads of an instance (requests in flight, latency EWMA, consecutive
//! failures), kept for the whole process in dense chunks of 16-byte cells that are never
//! freed: a pick of a 10 000-instance pool reads its candidates from 160 KiB (40 pages)
//! instead of one line each of 2 MB of instances. A chunk is handed out a line at a time, one
//! cell per line until every line has one, so the instances of a small pool (created together)
//! sit on lines of their own and two shards updating two of them never write the same line.
//! The free list's lock is taken when an instance is created (by the directory) and when it is
//! dropped (by its last holder: a replaced pool snapshot off the request path, or, for an
//! instance removed while a request to it was in flight, that request as it ends).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

/// Cells per cache line.
const PER_LINE: usize = 4;
/// Lines per chunk (16 KiB of cells).
const LINES: usize = 256;

/// One instance's pick-time counters.
#[derive(Debug, Default)]
#[repr(C, align(16))]
pub struct LiveCell {
    pub(super) in_flight: AtomicU32,
    pub(super) ewma_us: AtomicU32,
    pub(super) failures: AtomicU32,
}

impl LiveCell {
    /// Requests in flight to this instance, process-wide.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Latency EWMA in microseconds; 0 when unknown.
    #[inline]
    pub fn ewma_us(&self) -> u32 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// Consecutive failed attempts.
    #[inline]
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    fn reset(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
        self.ewma_us.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }
}

#[derive(Default)]
#[repr(C, align(64))]
struct Line([LiveCell; PER_LINE]);

/// Cells not in use, the next one last.
static FREE: Mutex<Vec<&'static LiveCell>> = Mutex::new(Vec::new());

/// A zeroed cell for a new instance (off the request path: the directory creates instances).
pub(super) fn take() -> &'static LiveCell {
    let mut free = FREE.lock().unwrap_or_else(PoisonError::into_inner);
    let cell = match free.pop() {
        Some(cell) => cell,
        None => {
            let chunk: &'static [Line] = Box::leak((0..LINES).map(|_| Line::default()).collect());
            // Popped from the end: slot 0 of every line, in line order, then slot 1, ...
            free.extend(
                (0..PER_LINE)
                    .rev()
                    .flat_map(|slot| chunk.iter().rev().map(move |line| &line.0[slot])),
            );
            // Just filled with LINES * PER_LINE cells.
            free.pop().unwrap_or(&chunk[0].0[0])
        }
    };
    cell.reset();
    cell
}

/// Returns the cell of an instance that is gone (nothing reads it any more).
pub(super) fn give_back(cell: &'static LiveCell) {
    FREE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(cell);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(cell: &LiveCell) -> usize {
        (cell as *const LiveCell as usize) / 64
    }

    #[test]
    fn cells_are_whole_inside_a_line_and_reused_clean() {
        assert_eq!(std::mem::size_of::<LiveCell>(), 16);
        assert_eq!(std::mem::size_of::<Line>(), 64);
        let cell = take();
        assert_eq!((cell as *const LiveCell as usize) % 16, 0);
        cell.in_flight.store(3, Ordering::Relaxed);
        cell.failures.store(2, Ordering::Relaxed);
        give_back(cell);
        // Other tests take cells concurrently: look for ours among a few.
        let taken: Vec<_> = (0..64).map(|_| take()).collect();
        assert!(taken
            .iter()
            .all(|c| c.in_flight() == 0 && c.failures() == 0 && c.ewma_us() == 0));
        taken.into_iter().for_each(give_back);
    }

    #[test]
    fn instances_created_together_get_lines_of_their_own() {
        // A fresh chunk's first LINES cells are one per line; a run taken from a partly used
        // chunk may wrap into a second round, so ask for a run well inside one round.
        let run: Vec<_> = (0..LINES / 4).map(|_| take()).collect();
        let mut lines: Vec<_> = run.iter().map(|c| line_of(c)).collect();
        lines.sort_unstable();
        lines.dedup();
        assert!(
            lines.len() * 2 >= run.len(),
            "{} cells on {} lines",
            run.len(),
            lines.len()
        );
        run.into_iter().for_each(give_back);
    }
}
