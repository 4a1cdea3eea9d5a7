//! `concurrency-limit`: at most `max` requests in flight through this filter (across every
//! route that lists it and every thread); one more is answered 503. A slot is held from the
//! filter's pass to the end of the request, however it ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use super::{read, reject, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    max: usize,
}

/// One `concurrency-limit` filter.
#[derive(Debug)]
pub(super) struct ConcurrencyLimit {
    name: String,
    max: usize,
    in_flight: Arc<AtomicUsize>,
}

/// One request's slot.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        if settings.max == 0 {
            return Err(FilterError::new(name, "max", "must be at least 1"));
        }
        Ok(Self {
            name: name.to_string(),
            max: settings.max,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl Filter for ConcurrencyLimit {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        _request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.in_flight.clone());
        if before >= self.max {
            drop(slot);
            return Verdict::Answer(reject(
                503,
                format!(
                    "sluice: {} requests in flight through filter \"{}\" already\n",
                    self.max, self.name
                ),
            ));
        }
        state.held.push(Box::new(slot));
        Verdict::Continue
    }
}
