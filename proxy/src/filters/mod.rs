//! The gateway's filters (shared/SPEC.md §9), one module per kind, each reading its own
//! `[filters.NAME]` keys. They are built with the routes (a bad one refuses the whole config
//! or reload, the running one keeps serving) and run in the request engine's chain
//! (`gateway::engine::filters`), whichever path serves the request.

mod basic_auth;
mod concurrency;
mod cors;
mod credential;
mod forward_auth;
mod headers;
mod hex_digits;
mod ip;
mod jwt;
mod key_auth;
mod mirror;
mod rate_limit;
mod redirect;
mod request_id;
mod rewrite;
mod template;
mod trace_context;
mod traffic_split;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::config::{Config, FilterSpec};
use crate::gateway::engine::filters::{edit_name, EditName, Filter, FilterChain, HeaderEdits};
use crate::gateway::failure::Answer;
use crate::pool::Directory;

pub(crate) use mirror::PendingMirror;

/// The filter kinds this build knows.
pub const KINDS: [&str; 16] = [
    "key-auth",
    "basic-auth",
    "jwt",
    "forward-auth",
    "ip-allow",
    "ip-deny",
    "concurrency-limit",
    "rate-limit",
    "headers",
    "cors",
    "request-id",
    "trace-context",
    "redirect",
    "rewrite",
    "traffic-split",
    "mirror",
];

/// Why a filter could not be built: the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("filters.{name}{}: {reason}", key_suffix(key))]
pub struct FilterError {
    pub name: String,
    /// The key inside the filter's table, or empty for the table itself.
    pub key: String,
    pub reason: String,
}

fn key_suffix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!(".{key}")
    }
}

impl FilterError {
    fn new(name: &str, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The built filters of a config, by name.
#[derive(Debug, Default)]
pub struct FilterSet {
    built: BTreeMap<String, Built>,
}

#[derive(Debug)]
struct Built {
    spec: FilterSpec,
    filter: Arc<dyn Filter>,
}

impl FilterSet {
    /// Builds every `[filters.NAME]` of `config`. A filter whose kind keeps state between
    /// requests (budgets, counts) and whose table did not change is taken over from
    /// `previous` as it is, so a reload does not reset it; every other one is built anew
    /// (key files are read again).
    pub fn build(
        config: &Config,
        directory: &Directory,
        previous: Option<&FilterSet>,
    ) -> Result<Self, FilterError> {
        let mut built = BTreeMap::new();
        for (name, spec) in &config.filters {
            let kept = previous
                .and_then(|p| p.built.get(name))
                .filter(|old| old.spec == *spec && keeps_state(spec));
            let filter = match kept {
                Some(old) => old.filter.clone(),
                None => build_one(name, spec, directory)?,
            };
            built.insert(
                name.clone(),
                Built {
                    spec: spec.clone(),
                    filter,
                },
            );
        }
        Ok(Self { built })
    }

    /// The chain of `[proxy] filters` then `names`, in order; names were checked with the
    /// config (an unknown one is left out).
    pub(crate) fn chain<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> FilterChain {
        FilterChain::new(
            names
                .into_iter()
                .filter_map(|name| self.built.get(name).map(|b| b.filter.clone()))
                .collect(),
        )
    }
}

/// Whether filters of this spec carry state across requests: budgets, counts, and the keys
/// a JWKS URL served (a file is read again instead).
fn keeps_state(spec: &FilterSpec) -> bool {
    match spec.kind.as_str() {
        "rate-limit" | "concurrency-limit" => true,
        "jwt" => spec
            .table
            .get("jwks")
            .and_then(toml::Value::as_str)
            .is_some_and(|jwks| jwks.starts_with("https://")),
        _ => false,
    }
}

fn build_one(
    name: &str,
    spec: &FilterSpec,
    directory: &Directory,
) -> Result<Arc<dyn Filter>, FilterError> {
    let metrics = directory.metrics();
    let filter: Arc<dyn Filter> = match spec.kind.as_str() {
        "key-auth" => Arc::new(key_auth::KeyAuth::build(name, &spec.table)?),
        "basic-auth" => Arc::new(basic_auth::BasicAuth::build(name, &spec.table)?),
        "jwt" => Arc::new(jwt::Jwt::build(name, &spec.table)?),
        "forward-auth" => Arc::new(forward_auth::ForwardAuth::build(name, &spec.table)?),
        "ip-allow" => Arc::new(ip::IpRule::build(name, &spec.table, ip::Rule::Allow)?),
        "ip-deny" => Arc::new(ip::IpRule::build(name, &spec.table, ip::Rule::Deny)?),
        "concurrency-limit" => Arc::new(concurrency::ConcurrencyLimit::build(name, &spec.table)?),
        "rate-limit" => Arc::new(rate_limit::RateLimit::build(name, &spec.table, metrics)?),
        "request-id" => Arc::new(request_id::RequestId::build(name, &spec.table)?),
        "headers" => Arc::new(headers::Headers::build(name, &spec.table)?),
        "cors" => Arc::new(cors::Cors::build(name, &spec.table)?),
        "trace-context" => Arc::new(trace_context::TraceContext::build(name, &spec.table)?),
        "redirect" => Arc::new(redirect::Redirect::build(name, &spec.table)?),
        "rewrite" => Arc::new(rewrite::Rewrite::build(name, &spec.table)?),
        "traffic-split" => Arc::new(traffic_split::TrafficSplit::build(name, &spec.table)?),
        "mirror" => Arc::new(mirror::Mirror::build(
            name,
            &spec.table,
            directory.metrics(),
            |s| directory.slot(s),
        )?),
        other => {
            return Err(FilterError::new(
                name,
                "kind",
                format!("unknown filter kind {other:?}"),
            ))
        }
    };
    Ok(filter)
}

/// Reads a filter's table into its kind's settings; an unknown or mistyped key is named.
fn read<T: DeserializeOwned>(name: &str, table: &toml::Table) -> Result<T, FilterError> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        FilterError::new(name, key, e.into_inner().to_string().trim().to_string())
    })
}

/// Who an authentication filter let a request through as: the access log's `consumer`, and
/// `x-consumer` on the upstream request (set, so a client's own never passes).
#[derive(Debug, Clone)]
struct Consumer {
    name: Arc<str>,
    value: http::HeaderValue,
}

const CONSUMER_HEADER: EditName = edit_name!("x-consumer");
/// `Authorization`, as an edit names it.
const AUTHORIZATION: EditName = edit_name!("authorization");

impl Consumer {
    /// `None` for an empty name or one that cannot be a header value.
    fn new(name: &str) -> Option<Self> {
        let value = http::HeaderValue::from_str(name).ok()?;
        (!name.is_empty()).then(|| Self {
            name: name.into(),
            value,
        })
    }

    /// The upstream request's `x-consumer`, into `edits`.
    fn set_header(&self, edits: &mut HeaderEdits) {
        edits.set(CONSUMER_HEADER, &self.value);
    }

    /// The request passes as this consumer: `x-consumer` upstream, the consumer recorded.
    fn admit(&self, state: &mut crate::gateway::engine::filters::FilterState) {
        self.set_header(&mut state.upstream);
        state.consumer = Some(self.name.clone());
    }
}

/// A duration key (`"2s"`, `"10m"`) of filter `name`, more than zero and at most `max`.
fn duration(
    name: &str,
    key: &str,
    text: &str,
    max: std::time::Duration,
) -> Result<std::time::Duration, FilterError> {
    use std::ops::Bound::{Excluded, Included};
    duration_in(
        name,
        key,
        text,
        (Excluded(std::time::Duration::ZERO), Included(max)),
    )
}

/// A duration key of filter `name` within `range`: the one reading of a filter's durations,
/// its error naming the key and the range.
fn duration_in(
    name: &str,
    key: &str,
    text: &str,
    range: (
        std::ops::Bound<std::time::Duration>,
        std::ops::Bound<std::time::Duration>,
    ),
) -> Result<std::time::Duration, FilterError> {
    use std::ops::{Bound, RangeBounds};
    let shown = |d: &std::time::Duration| humantime::format_duration(*d).to_string();
    let mut limits = Vec::new();
    match range.start_bound() {
        Bound::Included(min) if min.is_zero() => limits.push("0 or more".to_string()),
        Bound::Included(min) => limits.push(format!("at least {}", shown(min))),
        Bound::Excluded(min) if min.is_zero() => limits.push("more than 0".to_string()),
        Bound::Excluded(min) => limits.push(format!("more than {}", shown(min))),
        Bound::Unbounded => {}
    }
    match range.end_bound() {
        Bound::Included(max) => limits.push(format!("at most {}", shown(max))),
        Bound::Excluded(max) => limits.push(format!("less than {}", shown(max))),
        Bound::Unbounded => {}
    }
    humantime::parse_duration(text.trim())
        .ok()
        .filter(|d| range.contains(d))
        .ok_or_else(|| {
            FilterError::new(
                name,
                key,
                format!(
                    "{text:?}: expected a duration such as \"2s\", {}",
                    limits.join(" and ")
                ),
            )
        })
}

/// Whether a field frames the message or belongs to one connection (RFC 9110 7.6.1 and
/// the framing fields): the gateway writes those itself; no filter sets or copies them.
fn frames_or_hops(name: &str) -> bool {
    sluice_http1::hop::is_hop_by_hop(name)
        || ["content-length", "transfer-encoding", "trailer"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
}

/// A filter's answer: its status, and a plain-text body saying why.
fn reject(status: u16, body: String) -> Answer {
    Answer::plain(status, body, "FilterRejected")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn the_reference_config_shows_every_kind_and_its_filters_build() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/reference.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = crate::config::parse(&path, &text).unwrap();
        for kind in KINDS {
            assert!(
                text.contains(&format!("kind = \"{kind}\"")),
                "config/reference.toml shows no {kind} filter"
            );
        }
        let directory = Directory::new(Arc::new(Metrics::new()), &[]);
        for (name, spec) in &config.filters {
            // Those that read files or reach the network at build are left to the e2e suites.
            if ["jwt", "basic-auth"].contains(&spec.kind.as_str()) {
                continue;
            }
            if let Err(e) = build_one(name, spec, &directory) {
                panic!("config/reference.toml: {e}");
            }
        }
    }
}
