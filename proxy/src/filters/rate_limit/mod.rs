//! `rate-limit`: `rate` requests per `per` for each key (the client IP, a header, the
//! consumer, or the route), with bursts of up to `burst` (the bucket's size; it refills at
//! `rate` per `per`). Over the budget a request is answered 429 with `Retry-After`; every
//! answer carries `RateLimit-Limit` (the bucket's size), `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the bucket is full again).
//!
//! The budget is a GCRA (the generic cell rate algorithm, what a token bucket computes, kept
//! as one "theoretical arrival time" per key): `store = "local"` keeps it per process, one
//! budget across every thread (`local`); `store = "redis"` keeps it in Redis, one budget
//! across every gateway using it (`redis`).

mod gcra;
mod local;
mod redis;

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use self::gcra::{Decision, Gcra};
use self::local::LocalStore;
use self::redis::{OnError, RedisStore};
use super::{read, reject, FilterError};
use crate::gateway::engine::filters::{
    edit_name, EditName, Filter, FilterState, HeaderEdits, Later, Verdict,
};
use crate::gateway::engine::RequestView;
use crate::gateway::failure::Answer;
use crate::gateway::Route;
use crate::metrics::Metrics;

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

/// What one request is limited under.
#[derive(Debug, Clone, Copy, Hash)]
enum KeyOf<'a> {
    Ip(Option<IpAddr>),
    Header(&'a [u8]),
    Consumer(&'a str),
    Route(&'a str),
}

/// Where the budgets are kept.
#[derive(Debug)]
enum Store {
    Local(LocalStore),
    Redis(Arc<RedisStore>),
}

/// One `rate-limit` filter.
#[derive(Debug)]
pub(super) struct RateLimit {
    name: String,
    key: KeyOn,
    gcra: Gcra,
    store: Store,
    limit_value: HeaderValue,
}

const LIMIT: EditName = edit_name!("ratelimit-limit");
const REMAINING: EditName = edit_name!("ratelimit-remaining");
const RESET: EditName = edit_name!("ratelimit-reset");

impl RateLimit {
    pub(super) fn build(
        name: &str,
        table: &toml::Table,
        metrics: &Metrics,
    ) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        if settings.rate == 0 {
            return Err(FilterError::new(name, "rate", "must be at least 1"));
        }
        let per = super::duration(
            name,
            "per",
            &settings.per,
            Duration::from_secs(366 * 24 * 3600),
        )?;
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
        let (store, gcra) = match settings.store.as_deref().unwrap_or("local") {
            "local" => {
                if settings.redis.is_some() {
                    return Err(FilterError::new(
                        name,
                        "redis",
                        "only used with store = \"redis\"",
                    ));
                }
                let gcra = Gcra::new(settings.rate, per, burst);
                (Store::Local(LocalStore::new(gcra)), gcra)
            }
            "redis" => {
                let table = settings.redis.ok_or_else(|| {
                    FilterError::new(
                        name,
                        "redis",
                        "required with store = \"redis\": { url = \"redis://…\" }",
                    )
                })?;
                let errors = metrics.filter_store_errors_total.with_label_values(&[name]);
                let store = RedisStore::build(name, &table, errors)?;
                let gcra = Gcra::with_tick(settings.rate, per, burst, redis::TICK);
                (Store::Redis(store), gcra)
            }
            other => {
                return Err(FilterError::new(
                    name,
                    "store",
                    format!("{other:?}: expected \"local\" or \"redis\""),
                ))
            }
        };
        Ok(Self {
            name: name.to_string(),
            key,
            store,
            gcra,
            limit_value: HeaderValue::from(burst),
        })
    }

    /// What the request is limited under. A request without the header (or consumer) it is
    /// keyed on is limited under its client IP.
    fn key_of<'a>(
        &self,
        route: &'a Route,
        request: &'a dyn RequestView,
        state: &'a FilterState,
    ) -> KeyOf<'a> {
        let by_ip = KeyOf::Ip(request.client_ip());
        match &self.key {
            KeyOn::ClientIp => by_ip,
            KeyOn::Header(name) => request.field(name.as_str()).map_or(by_ip, KeyOf::Header),
            KeyOn::Consumer => state.consumer.as_deref().map_or(by_ip, KeyOf::Consumer),
            KeyOn::Route => KeyOf::Route(&route.spec.name),
        }
    }
}

/// The `RateLimit-*` headers of a decision (for filter `name`, bucket size `limit`), and the
/// 429 answer when it refused.
/// An allowed request's headers go into `edits` (digits written in place: nothing
/// allocated).
fn outcome(
    name: &str,
    limit: &HeaderValue,
    decision: &Decision,
    edits: &mut HeaderEdits,
) -> Result<(), Answer> {
    let reset = ceil_secs(decision.reset);
    let Some(wait) = decision.retry_after else {
        let mut room = [0u8; 20];
        edits.set(LIMIT, limit);
        let digits = sluice_http1::fields::decimal(decision.remaining, &mut room);
        edits.set_text(REMAINING, digits);
        let digits = sluice_http1::fields::decimal(reset, &mut room);
        edits.set_text(RESET, digits);
        return Ok(());
    };
    let headers = [
        (LIMIT.header().clone(), limit.clone()),
        (
            REMAINING.header().clone(),
            HeaderValue::from(decision.remaining),
        ),
        (RESET.header().clone(), HeaderValue::from(reset)),
    ];
    let seconds = ceil_secs(wait).max(1);
    let mut answer = reject(
        429,
        format!("sluice: rate limit of filter \"{name}\" exceeded; retry in {seconds} s\n"),
    );
    answer
        .headers
        .push((http::header::RETRY_AFTER, HeaderValue::from(seconds)));
    answer.headers.extend(headers);
    Err(answer)
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A key as it is named in Redis: readable (`ip:10.0.0.7`, `consumer:alice`, `route:/api`,
/// `header:…`), with a header value that is long or not plain text given as its SHA-256.
fn redis_key(key: KeyOf<'_>) -> String {
    match key {
        KeyOf::Ip(Some(ip)) => format!("ip:{ip}"),
        KeyOf::Ip(None) => "ip:-".to_string(),
        KeyOf::Consumer(name) => format!("consumer:{name}"),
        KeyOf::Route(name) => format!("route:{name}"),
        KeyOf::Header(value) => match std::str::from_utf8(value) {
            Ok(text) if text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic()) => {
                format!("header:{text}")
            }
            _ => format!("header-sha256:{}", hex::encode(Sha256::digest(value))),
        },
    }
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
        let key = self.key_of(route, request, state);
        let store = match &self.store {
            Store::Local(local) => {
                let decision = local.acquire(local.key_hash(key), &self.gcra);
                return match outcome(
                    &self.name,
                    &self.limit_value,
                    &decision,
                    &mut state.response,
                ) {
                    Ok(()) => Verdict::Continue,
                    Err(answer) => Verdict::Answer(answer),
                };
            }
            Store::Redis(store) => store.clone(),
        };
        let redis_key = store.key(&self.name, &redis_key(key));
        let (gcra, name) = (self.gcra, self.name.clone());
        let limit = self.limit_value.clone();
        Verdict::Later(Box::pin(async move {
            match store.acquire(&redis_key, &gcra).await {
                Ok(decision) => {
                    let mut response = HeaderEdits::default();
                    match outcome(&name, &limit, &decision, &mut response) {
                        Ok(()) => Later {
                            response,
                            ..Later::default()
                        },
                        Err(answer) => Later::answer(answer),
                    }
                }
                Err(error) => match store.on_error {
                    OnError::Allow => Later::default(),
                    OnError::Deny => {
                        let mut answer = reject(
                            503,
                            format!(
                                "sluice: the rate limit of filter \"{name}\" cannot be checked: {error}\n"
                            ),
                        );
                        answer
                            .headers
                            .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
                        Later::answer(answer)
                    }
                },
            }
        }))
    }
}
