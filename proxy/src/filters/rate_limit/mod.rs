//! `rate-limit`: `rate` requests per `per` for each key (the client IP, a header, the
//! consumer, or the route), with bursts of up to `burst` (the bucket's size; it refills at
//! `rate` per `per`). Over the budget a request is answered 429 with `Retry-After`; every
//! answer carries `RateLimit-Limit` (the bucket's size), `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the bucket is full again).
//!
//! The budget is a GCRA (the generic cell rate algorithm, what a token bucket computes, kept
//! as one "theoretical arrival time" per key): `store = "local"` keeps it per process, one
//! budget across every thread (`local`).

mod gcra;
mod local;

use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use self::gcra::{Decision, Gcra};
use self::local::LocalStore;
use super::{read, reject, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, HeaderEdit, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    rate: u64,
    per: String,
    burst: Option<u64>,
    key: Option<String>,
    store: Option<String>,
    redis: Option<toml::Table>,
}

/// What a request's budget is kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyOn {
    ClientIp,
    Header(HeaderName),
    Consumer,
    Route,
}

/// One `rate-limit` filter.
#[derive(Debug)]
pub(super) struct RateLimit {
    name: String,
    key: KeyOn,
    gcra: Gcra,
    store: LocalStore,
    limit_value: HeaderValue,
}

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl RateLimit {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        if settings.rate == 0 {
            return Err(FilterError::new(name, "rate", "must be at least 1"));
        }
        let per = humantime::parse_duration(settings.per.trim())
            .map_err(|e| FilterError::new(name, "per", format!("{:?}: {e}", settings.per)))?;
        if per.is_zero() || per > Duration::from_secs(366 * 24 * 3600) {
            return Err(FilterError::new(
                name,
                "per",
                "must be more than 0 and at most a year",
            ));
        }
        let burst = settings.burst.unwrap_or(settings.rate);
        if burst == 0 {
            return Err(FilterError::new(name, "burst", "must be at least 1"));
        }
        let key = match settings.key.as_deref().unwrap_or("client_ip") {
            "client_ip" => KeyOn::ClientIp,
            "consumer" => KeyOn::Consumer,
            "route" => KeyOn::Route,
            other => match other.strip_prefix("header:") {
                Some(h) => KeyOn::Header(HeaderName::from_bytes(h.trim().as_bytes()).map_err(
                    |_| FilterError::new(name, "key", format!("bad header name {h:?}")),
                )?),
                None => {
                    return Err(FilterError::new(
                        name,
                        "key",
                        format!("{other:?}: expected \"client_ip\", \"header:NAME\", \"consumer\" or \"route\""),
                    ))
                }
            },
        };
        match settings.store.as_deref().unwrap_or("local") {
            "local" => {
                if settings.redis.is_some() {
                    return Err(FilterError::new(
                        name,
                        "redis",
                        "only used with store = \"redis\"",
                    ));
                }
            }
            "redis" => {
                return Err(FilterError::new(
                    name,
                    "store",
                    "\"redis\" is not in this build yet: use store = \"local\"",
                ))
            }
            other => {
                return Err(FilterError::new(
                    name,
                    "store",
                    format!("{other:?}: expected \"local\" or \"redis\""),
                ))
            }
        }
        let gcra = Gcra::new(settings.rate, per, burst);
        Ok(Self {
            name: name.to_string(),
            key,
            store: LocalStore::new(gcra),
            gcra,
            limit_value: HeaderValue::from(burst),
        })
    }

    /// The key's hash: a fixed-key hasher, so no string is built per request. A request
    /// without the header (or consumer) it is keyed on is limited under its client IP.
    fn key_hash(&self, route: &Route, request: &dyn RequestView, state: &FilterState) -> u64 {
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
        let by_ip = |h: &mut std::collections::hash_map::DefaultHasher| {
            0u8.hash(h);
            request.client_ip().hash(h);
        };
        match &self.key {
            KeyOn::ClientIp => by_ip(&mut h),
            KeyOn::Header(name) => match request.field(name.as_str()) {
                Some(value) => {
                    1u8.hash(&mut h);
                    value.hash(&mut h);
                }
                None => by_ip(&mut h),
            },
            KeyOn::Consumer => match &state.consumer {
                Some(consumer) => {
                    2u8.hash(&mut h);
                    consumer.hash(&mut h);
                }
                None => by_ip(&mut h),
            },
            KeyOn::Route => {
                3u8.hash(&mut h);
                route.spec.name.hash(&mut h);
            }
        }
        h.finish()
    }

    fn headers(&self, decision: &Decision) -> [(HeaderName, HeaderValue); 3] {
        [
            (LIMIT, self.limit_value.clone()),
            (REMAINING, HeaderValue::from(decision.remaining)),
            (RESET, HeaderValue::from(ceil_secs(decision.reset))),
        ]
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Filter for RateLimit {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let key = self.key_hash(route, request, state);
        let decision = self.store.acquire(key, &self.gcra);
        let headers = self.headers(&decision);
        match decision.retry_after {
            None => {
                for (name, value) in headers {
                    state.response.push(HeaderEdit::Set(name, value));
                }
                Verdict::Continue
            }
            Some(wait) => {
                let mut answer = reject(
                    429,
                    format!(
                        "sluice: rate limit of filter \"{}\" exceeded; retry in {} s\n",
                        self.name,
                        ceil_secs(wait).max(1)
                    ),
                );
                answer.headers.push((
                    http::header::RETRY_AFTER,
                    HeaderValue::from(ceil_secs(wait).max(1)),
                ));
                answer.headers.extend(headers);
                Verdict::Answer(answer)
            }
        }
    }
}
