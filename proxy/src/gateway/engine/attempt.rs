//! Steps 2 and 3 of a request: each try (pick, in-flight count, limits) and what its outcome
//! teaches the pool (latency, failures, ejection), with the one retry rule.

use std::net::SocketAddr;
use std::time::Instant;

use super::record::TryTimeouts;
use super::{Engine, RequestRecord};
use crate::gateway::retry::{may_retry, Failed};
use crate::pool::{Member, Pool};
use crate::strategy::{PickRequest, RequestHeaders};

/// The instance a try goes to.
pub(crate) struct Picked<'p> {
    pub(crate) member: &'p Member,
    pub(crate) addr: SocketAddr,
}

/// Why no try could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PickFailure {
    /// The route's `total_timeout` is spent (504).
    TotalTimeout,
    /// The strategy found no eligible instance (503).
    NoInstance,
    /// The picked instance's host name did not resolve (503).
    NoAddress,
}

impl Engine {
    /// Starts the next try of an admitted request on `pool` (the route's current snapshot):
    /// the strategy picks with the instances already tried left out, the instance counts
    /// one more in flight (the previous try's count ends), and the record holds the try's
    /// limits: the route's `connect_timeout` and `timeout`, capped by what is left of its
    /// `total_timeout`.
    pub(crate) fn next_try<'p>(
        &self,
        record: &mut RequestRecord,
        pool: &'p Pool,
        headers: &dyn RequestHeaders,
    ) -> Result<Picked<'p>, PickFailure> {
        let Some(route) = record.route.as_deref() else {
            return Err(PickFailure::NoInstance);
        };
        // The first try starts with the request: one clock read fewer.
        let now = if record.attempts == 0 {
            record.start
        } else {
            Instant::now()
        };
        let remaining = route
            .spec
            .total_timeout
            .map(|total| total.saturating_sub(now - record.start));
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(PickFailure::TotalTimeout);
        }
        let request = PickRequest {
            hash: record.hash,
            exclude: record.tried(),
            headers: Some(headers),
        };
        let index = route
            .strategy
            .pick(pool, &request)
            .filter(|&i| i < pool.eligible_len())
            .ok_or(PickFailure::NoInstance)?;
        let member = pool.eligible(index);
        let socket = member.socket.ok_or(PickFailure::NoAddress)?;
        let cap = |d: std::time::Duration| remaining.map_or(d, |r| d.min(r));
        record.timeouts = TryTimeouts {
            connect: cap(route.backend(record.backend).connect_timeout),
            io: cap(route.spec.timeout),
        };
        // The previous try's in-flight count ends before this one's starts.
        record.attempt = None;
        record.attempt = Some(member.live.start_request());
        record.remember_tried(member.key);
        record.attempts += 1;
        record.upstream = Some(socket);
        record.try_start = Some(now);
        Ok(Picked {
            member,
            addr: socket,
        })
    }

    /// The try's response head arrived with `status`: its latency feeds the instance's
    /// EWMA, a 5xx counts as a failure (toward passive ejection), anything else as a
    /// success.
    pub(crate) fn response_head(&self, record: &mut RequestRecord, status: u16) {
        if let (Some(attempt), Some(start)) = (&record.attempt, record.try_start) {
            let elapsed = start.elapsed();
            record.upstream_elapsed = Some(elapsed);
            attempt.live().observe_latency(elapsed);
            if status >= 500 {
                self.count_failure(record);
            } else {
                attempt.live().record_success();
            }
        }
        record.status = status;
    }

    /// The try failed as `failed`: counted against the instance (unless the client left),
    /// then whether another try may follow (`gateway::retry`). A timeout (of the response or
    /// of the connect) is a latency too: the time waited feeds the instance's EWMA, so a
    /// latency-aware strategy learns that an instance which never answers is slow, not
    /// unknown.
    pub(crate) fn try_failed(
        &self,
        record: &RequestRecord,
        failed: Failed,
        idempotent: bool,
        body_replayable: bool,
    ) -> bool {
        if failed == Failed::ClientLeft {
            return false;
        }
        if matches!(failed, Failed::TimedOut | Failed::ConnectTimedOut) {
            if let (Some(attempt), Some(start)) = (&record.attempt, record.try_start) {
                attempt.live().observe_latency(start.elapsed());
            }
        }
        self.count_failure(record);
        let retries = record.route.as_ref().map_or(0, |r| r.spec.retries);
        let retry = may_retry(
            failed,
            idempotent,
            body_replayable,
            record.attempts,
            retries,
        );
        if retry {
            if let Some((_, backend)) = record.target() {
                backend.metrics.retried();
            }
        }
        retry
    }

    /// One more consecutive failure of the try's instance; at the route's `passive`
    /// threshold, an ejection is asked for.
    fn count_failure(&self, record: &RequestRecord) {
        let (Some(attempt), Some((_, backend))) = (&record.attempt, record.target()) else {
            return;
        };
        let live = attempt.live();
        live.record_failure();
        if let (Some(threshold), Some(ejections)) = (backend.eject_after, &self.ejections) {
            if live.failures() == threshold {
                ejections.request(backend.slot.name_arc());
            }
        }
    }
}
