//! The seam where a route's filter chain runs, once per request whichever path serves it,
//! before the pick: a filter lets the request through, perhaps with header changes for the
//! upstream request and the response (made as each head is written), answers it itself, or
//! waits for an outbound call first. What a filter holds until the request ends (a
//! concurrency slot) is dropped with the request's record. A route without filters has an
//! empty chain: one branch, nothing allocated.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) use super::header_edits::{edit_name, EditName, EditRef, FieldValue, HeaderEdits};
use super::RequestView;
use crate::gateway::failure::Answer;
use crate::gateway::Route;

/// One policy of the chain.
pub(crate) trait Filter: Send + Sync + fmt::Debug {
    /// The filter's name (`[filters.NAME]`): the metric label and the log's word for it.
    fn name(&self) -> &str;

    /// Before the pick: let the request to `route` through or answer it.
    fn on_request(
        &self,
        route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict;

    /// The services this filter may send a request to instead of the route's own: the
    /// route gets a backend for each.
    fn services(&self) -> &[String] {
        &[]
    }
}

/// A filter's decision on a request.
pub(crate) enum Verdict {
    /// The next filter runs (the upstream request carries `state`'s changes).
    Continue,
    /// The gateway answers this itself; the rest of the chain does not run.
    Answer(Answer),
    /// Decided by an outbound call (an auth service, a shared store): the request waits for
    /// it, then this verdict counts (never `Later` again).
    Later(Pin<Box<dyn Future<Output = Later> + Send>>),
}

/// What an outbound call decided.
#[derive(Default)]
pub(crate) struct Later {
    /// `Some`: the gateway answers with this; `None`: the next filter runs.
    pub(crate) answer: Option<Answer>,
    /// Header changes for the upstream request.
    pub(crate) upstream: HeaderEdits,
    /// Header changes for the response to the client.
    pub(crate) response: HeaderEdits,
    /// Who the call authenticated the request as, if it did.
    pub(crate) consumer: Option<Arc<str>>,
}

impl Later {
    /// The call decided to answer the request with `answer`.
    pub(crate) fn answer(answer: Answer) -> Self {
        Self {
            answer: Some(answer),
            ..Self::default()
        }
    }
}

/// What the chain keeps of a request between its phases.
#[derive(Debug, Default)]
pub(crate) struct FilterState {
    /// Changes to the request as sent upstream.
    pub(crate) upstream: HeaderEdits,
    /// Changes to the response head as sent to the client.
    pub(crate) response: HeaderEdits,
    /// Who the request authenticated as (the access log's `consumer`).
    pub(crate) consumer: Option<Arc<str>>,
    /// The request's id (`request-id`; empty: none): the access log's `request_id`.
    pub(crate) request_id: String,
    /// The `traceparent` sent upstream (`trace-context`): the access log's `trace_id`.
    pub(crate) traceparent: Option<Traceparent>,
    /// The path as forwarded, when a filter rewrote it (the route's prefix strip then does
    /// not apply).
    pub(crate) path: Option<String>,
    /// The query as forwarded, when a filter changed it (`Some("")`: none).
    pub(crate) query: Option<String>,
    /// The service a filter chose for the request (`traffic-split`): one of the route's
    /// backends.
    pub(crate) service: Option<Arc<str>>,
    /// A copy of the request for a shadow service (`mirror`), sent once its body is in.
    pub(crate) mirror: Option<Box<crate::filters::PendingMirror>>,
    /// What the request holds until it ends (a concurrency slot): dropped with the record,
    /// however the request ends.
    pub(crate) held: Held,
}

impl FilterState {
    /// Back to a new request's state, the edit lists' room kept.
    pub(crate) fn clear(&mut self) {
        // Every field by name: a new one is not forgotten here.
        let Self {
            upstream,
            response,
            consumer,
            request_id,
            traceparent,
            path,
            query,
            service,
            mirror,
            held,
        } = self;
        upstream.clear();
        response.clear();
        *consumer = None;
        request_id.clear();
        *traceparent = None;
        *path = None;
        *query = None;
        *service = None;
        *mirror = None;
        held.0.clear();
    }

    /// The trace id of the request's `traceparent` (`00-TRACE-SPAN-FLAGS`), if a
    /// `trace-context` filter gave it one.
    pub(crate) fn trace_id(&self) -> Option<&str> {
        std::str::from_utf8(self.traceparent.as_ref()?.get(3..35)?).ok()
    }
}

/// A `traceparent` of version 00 (`00-TRACE-SPAN-FLAGS`), as the gateway sends it: ASCII.
pub(crate) type Traceparent = [u8; 55];

/// Values held for the life of a request.
#[derive(Default)]
pub(crate) struct Held(Vec<Box<dyn Send + Sync>>);

impl Held {
    pub(crate) fn push(&mut self, value: Box<dyn Send + Sync>) {
        self.0.push(value);
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Held({})", self.0.len())
    }
}

/// A route's filters in the order they run (`[proxy] filters` first, then the route's).
#[derive(Debug, Default, Clone)]
pub(crate) struct FilterChain {
    filters: Arc<[Arc<dyn Filter>]>,
}

/// A chain's answer to a request, and which filter gave it.
pub(crate) struct Rejection {
    pub(crate) filter: usize,
    pub(crate) answer: Answer,
}

impl FilterChain {
    pub(crate) fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        Self {
            filters: filters.into(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub(crate) fn filters(&self) -> &[Arc<dyn Filter>] {
        &self.filters
    }

    /// The request phase: each filter in order until one answers.
    pub(crate) async fn on_request(
        &self,
        route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Option<Rejection> {
        for (index, filter) in self.filters.iter().enumerate() {
            let answer = match filter.on_request(route, request, state) {
                Verdict::Continue => continue,
                Verdict::Answer(answer) => answer,
                Verdict::Later(call) => {
                    let later = call.await;
                    state.upstream.extend(later.upstream);
                    state.response.extend(later.response);
                    if later.consumer.is_some() {
                        state.consumer = later.consumer;
                    }
                    match later.answer {
                        None => continue,
                        Some(answer) => answer,
                    }
                }
            };
            return Some(Rejection {
                filter: index,
                answer,
            });
        }
        None
    }
}
