//! Each thread's spare [`FilterState`]s: a request on a route with filters takes one and its
//! record gives it back cleared when the request ends, so the state and the room of its edit
//! lists are allocated once per thread rather than three times per request (and come back
//! warm in the cache).

use std::cell::RefCell;

use super::filters::FilterState;

/// Most spares a thread keeps; past it a state given back is freed.
const KEPT: usize = 32;

thread_local! {
    // Boxes, not states: a record holds its state boxed, and taking and giving back move the
    // box, never the state.
    #[allow(clippy::vec_box)]
    static SPARES: RefCell<Vec<Box<FilterState>>> = const { RefCell::new(Vec::new()) };
}

/// A cleared state: a spare of this thread's, or a new one.
pub(crate) fn take() -> Box<FilterState> {
    SPARES
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Clears `state` (what it held, a concurrency slot, is let go now) and keeps it for this
/// thread's next request, or frees it when the thread has enough spares or is exiting.
pub(crate) fn give_back(mut state: Box<FilterState>) {
    state.clear();
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < KEPT {
            spares.push(state);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::engine::filters::EditName;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn a_state_comes_back_cleared_with_its_room() {
        let mut state = take();
        let name = EditName::intern(&HeaderName::from_static("x-a"));
        state.upstream.set(name, &HeaderValue::from_static("1"));
        state.consumer = Some("alice".into());
        state.request_id.push_str("an-id");
        state.traceparent = Some([b'0'; 55]);
        state.path = Some("/x".into());
        state.held.push(Box::new(7u8));
        let room = state.upstream.room();
        let address = &*state as *const FilterState;
        give_back(state);

        let again = take();
        assert_eq!(
            &*again as *const FilterState, address,
            "the spare is reused"
        );
        assert!(again.upstream.is_empty() && again.response.is_empty());
        assert!(!again.upstream.replaces("x-a"));
        assert_eq!(again.upstream.room(), room);
        assert!(again.consumer.is_none() && again.path.is_none());
        assert!(again.request_id.is_empty() && again.traceparent.is_none());
        assert_eq!(format!("{:?}", again.held), "Held(0)");
    }

    #[test]
    fn no_more_than_kept_spares() {
        let states: Vec<_> = (0..KEPT + 5).map(|_| take()).collect();
        states.into_iter().for_each(give_back);
        assert_eq!(SPARES.with(|s| s.borrow().len()), KEPT);
    }
}
