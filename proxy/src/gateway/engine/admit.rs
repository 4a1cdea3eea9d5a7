//! Step 1 of a request: whether the gateway forwards it, and if not, its answer.

use std::sync::Arc;

use super::state_spares;
use super::{hash_request, Engine, RequestRecord, RequestView};
use crate::gateway::failure::{self, Answer, Failure};
use crate::gateway::Route;
use crate::strategy::RequestHeaders;

/// Longest a request waits for the registry's first sync (a process just started or
/// upgraded, with empty pools) before it is answered 503.
pub(crate) const FIRST_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What becomes of a request.
pub(crate) enum Admission {
    /// Forward it: the record holds its route and `hash_on` value.
    Forward,
    /// The gateway answers it.
    Answer(Answer),
}

impl Engine {
    /// The route of a request: a lookup by host (without port), path, method and fields and
    /// nothing more, so a driver may ask before it decides to serve the request at all.
    pub(crate) fn route(
        &self,
        host: &str,
        path: &str,
        method: &str,
        fields: &dyn RequestHeaders,
    ) -> Option<Arc<Route>> {
        self.router.load().find(host, path, method, fields).cloned()
    }

    /// Admits a request to `route` (found by [`Engine::route`]): 404 without one, 413 when it
    /// declares a body over the route's limit, the chain's answer when a filter gives one,
    /// 503 when no instance is eligible (after waiting for the registry's first sync in a
    /// process that has not had it).
    pub(crate) async fn admit(
        &self,
        record: &mut RequestRecord,
        route: Option<Arc<Route>>,
        request: &dyn RequestView,
    ) -> Admission {
        let Some(route) = route else {
            return Admission::Answer(failure::answer(
                Failure::NoRoute {
                    host: request.host(),
                    path: request.path(),
                },
                None,
                None,
            ));
        };
        let route = &**record.route.insert(route);
        if let Some(limit) = route.spec.max_body_bytes {
            if request.declared_body_len().is_some_and(|n| n > limit) {
                let answer = failure::answer(
                    Failure::BodyTooLarge(limit),
                    Some((route, route.own())),
                    None,
                );
                return Admission::Answer(answer);
            }
        }
        if !route.filters.is_empty() {
            let state = record.filters.insert(state_spares::take());
            if let Some(rejection) = route.filters.on_request(route, request, state).await {
                route.count_rejection(rejection.filter, rejection.answer.status);
                return Admission::Answer(rejection.answer);
            }
            if let Some(service) = &state.service {
                record.backend = route.backend_index(service).unwrap_or(0);
            }
        }
        let backend = route.backend(record.backend);
        if backend.slot.load().eligible_len() == 0 && !self.directory.is_ready() {
            self.directory.wait_ready(FIRST_SYNC_WAIT).await;
        }
        if backend.slot.load().eligible_len() == 0 {
            let answer = failure::answer(Failure::NoInstance, Some((route, backend)), None);
            return Admission::Answer(answer);
        }
        if let Some(hash_on) = route.hash_on() {
            record.hash = hash_request(hash_on, request);
        }
        Admission::Forward
    }
}
