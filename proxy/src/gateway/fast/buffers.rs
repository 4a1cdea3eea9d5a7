//! Upstream read buffers, lent per request from a per-thread free list: a buffer belongs to a
//! request in flight, not to a connection, so an idle keep-alive connection holds none and a
//! request allocates none once the shard is warm.

use std::cell::RefCell;

/// Room a lent buffer has for reading.
pub(super) const READ_ROOM: usize = 16 * 1024;
/// Buffers a thread keeps for the next requests (more in flight at once are allocated and
/// freed as needed).
const KEPT: usize = 256;
/// A buffer that grew past this (a large response head) is freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 4 * READ_ROOM;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least READ_ROOM bytes.
pub(super) fn lend() -> Vec<u8> {
    FREE.with_borrow_mut(|free| free.pop())
        .unwrap_or_else(|| Vec::with_capacity(READ_ROOM))
}

/// Takes a buffer back for the next request.
pub(super) fn give_back(mut buffer: Vec<u8>) {
    if buffer.capacity() < READ_ROOM || buffer.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    buffer.clear();
    FREE.with_borrow_mut(|free| {
        if free.len() < KEPT {
            free.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_lent_again_and_odd_ones_are_dropped() {
        let mut first = lend();
        assert!(first.capacity() >= READ_ROOM);
        first.extend_from_slice(b"left over");
        let address = first.as_ptr();
        give_back(first);
        let again = lend();
        assert_eq!(again.as_ptr(), address, "the same allocation");
        assert!(again.is_empty());
        give_back(Vec::new());
        give_back(Vec::with_capacity(MAX_KEPT_CAPACITY + 1));
        let fresh = lend();
        assert!(fresh.capacity() >= READ_ROOM && fresh.capacity() <= MAX_KEPT_CAPACITY);
    }
}
