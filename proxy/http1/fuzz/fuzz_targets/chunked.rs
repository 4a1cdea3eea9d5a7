//! The chunked tracker: never panics, and the body's end does not depend on how the bytes are
//! split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_http1::ChunkedTracker;

fn end(body: &[u8], piece: usize) -> Option<(usize, bool)> {
    let mut tracker = ChunkedTracker::default();
    let mut total = 0;
    for part in body.chunks(piece.max(1)) {
        let n = tracker.feed(part).ok()?;
        assert!(n <= part.len());
        total += n;
        if n < part.len() {
            assert!(tracker.is_done());
            break;
        }
    }
    Some((total, tracker.is_done()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, body)) = data.split_first() else {
        return;
    };
    let whole = end(body, body.len());
    assert_eq!(end(body, usize::from(piece)), whole);
    if let Some((n, true)) = whole {
        // The body ends in the blank line of its trailer section.
        assert!(body[..n].ends_with(b"\r\n"));
    }
});
