//! Why the fast path leaves a request to pingora: one name per reason, counted in
//! `sluice_fast_path_handoffs_total{reason}` (counters resolved once, not per hand-off).

use prometheus::IntCounter;

use crate::metrics::Metrics;

/// Why a request goes to pingora.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handoff {
    /// The codec's reasons: HTTP/2, HTTP/1.0, other target forms, upgrades other than
    /// WebSocket, `Expect`, chunked
    /// or large bodies, header limits (pingora answers 431).
    Request(sluice_http1::HandoffReason),
    /// The head is still incomplete past the header byte limit (pingora answers 431).
    HeadTooLarge,
    /// No eligible instance yet: pingora waits for the first sync, then answers 503.
    NoEligibleInstance,
    /// The pool has `https` or h2c instances.
    NotPlainHttp,
    /// The pool changed to one the fast path does not serve before the first try (of a
    /// request whose route has no filters: theirs run once).
    PoolChanged,
}

const GATEWAY_REASONS: [Handoff; 4] = [
    Handoff::HeadTooLarge,
    Handoff::NoEligibleInstance,
    Handoff::NotPlainHttp,
    Handoff::PoolChanged,
];

const COUNT: usize = sluice_http1::HandoffReason::ALL.len() + GATEWAY_REASONS.len();

impl Handoff {
    /// The reason's name in the metric and the log.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Handoff::Request(reason) => reason.as_str(),
            Handoff::HeadTooLarge => "head_too_large",
            Handoff::NoEligibleInstance => "no_eligible_instance",
            Handoff::NotPlainHttp => "not_plain_http",
            Handoff::PoolChanged => "pool_changed",
        }
    }

    fn all() -> impl Iterator<Item = Handoff> {
        sluice_http1::HandoffReason::ALL
            .into_iter()
            .map(Handoff::Request)
            .chain(GATEWAY_REASONS)
    }

    fn index(self) -> usize {
        // Every reason is in `all()`: found.
        Handoff::all().position(|h| h == self).unwrap_or(0)
    }
}

/// One counter per reason.
#[derive(Clone)]
pub(super) struct HandoffCounters {
    counters: [IntCounter; COUNT],
}

impl HandoffCounters {
    pub(super) fn new(metrics: &Metrics) -> Self {
        let mut all = Handoff::all();
        Self {
            counters: std::array::from_fn(|_| {
                let reason = all.next().map_or("", Handoff::as_str);
                metrics
                    .fast_path_handoffs_total
                    .with_label_values(&[reason])
            }),
        }
    }

    pub(super) fn count(&self, reason: Handoff) {
        self.counters[reason.index()].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_name_and_counter() {
        let names: std::collections::HashSet<_> = Handoff::all().map(Handoff::as_str).collect();
        assert_eq!(names.len(), COUNT);
        let metrics = Metrics::new();
        let counters = HandoffCounters::new(&metrics);
        counters.count(Handoff::NotPlainHttp);
        counters.count(Handoff::Request(sluice_http1::HandoffReason::Upgrade));
        counters.count(Handoff::NotPlainHttp);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("sluice_fast_path_handoffs_total{reason=\"not_plain_http\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_fast_path_handoffs_total{reason=\"upgrade\"} 1"),
            "{text}"
        );
    }
}
