//! `trace-context`: W3C Trace Context (https://www.w3.org/TR/trace-context/). A valid
//! incoming `traceparent` is continued — same trace id and flags, the gateway's own span id
//! as the upstream's parent — with its `tracestate` passed on; without one, or with one
//! that does not parse (or several), a new trace is started and any `tracestate` dropped
//! (the specification: no `tracestate` without a `traceparent` it belongs to). The trace id
//! is the access log's `trace_id` and the template variable `${trace_id}`.

use serde::Deserialize;

use super::hex_digits::lower_hex;
use super::{read, FilterError};
use crate::gateway::engine::filters::{
    edit_name, EditName, FieldValue, Filter, FilterState, Traceparent, Verdict,
};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

const TRACEPARENT: EditName = edit_name!("traceparent");
const TRACESTATE: EditName = edit_name!("tracestate");

/// Longest `tracestate` passed on: 32 members of at most 256 + 1 + 256 bytes would be more,
/// but the specification asks that 512 bytes be kept and lets longer ones be dropped.
const MAX_TRACESTATE_BYTES: usize = 8192;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The sampled flag of the traces the gateway starts.
    sampled: Option<bool>,
    /// Whether the response carries the `traceparent` sent upstream (for a client that
    /// wants to quote its trace).
    response: Option<bool>,
}

/// One `trace-context` filter.
#[derive(Debug)]
pub(super) struct TraceContext {
    name: String,
    sampled: bool,
    response: bool,
}

impl TraceContext {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        Ok(Self {
            name: name.to_string(),
            sampled: settings.sampled.unwrap_or(true),
            response: settings.response.unwrap_or(false),
        })
    }
}

/// A parsed `traceparent`: what a continued trace keeps of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parent<'a> {
    trace_id: &'a [u8],
    flags: u8,
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == b'0')
}

/// Parses a `traceparent` (§3.2 and §4.3 of the specification): lower-case hex
/// `version-traceid-parentid-flags`; version `ff` is invalid, version `00` is exactly 55
/// bytes, a later version may go on after a `-`; an all-zero trace or parent id is invalid.
fn parse(value: &[u8]) -> Option<Parent<'_>> {
    if value.len() < 55 {
        return None;
    }
    let version = &value[0..2];
    if !is_lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" && value.len() != 55 {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !is_lower_hex(trace_id) || !is_lower_hex(parent_id) || !is_lower_hex(flags) {
        return None;
    }
    if all_zero(trace_id) || all_zero(parent_id) {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    Some(Parent { trace_id, flags })
}

/// A random trace id as two halves of 16 lower-case hex digits, never all zeros.
fn random_trace_id() -> [[u8; 16]; 2] {
    loop {
        let (high, low) = (fastrand::u64(..), fastrand::u64(..));
        if high | low != 0 {
            return [lower_hex(high), lower_hex(low)];
        }
    }
}

/// A random span id: 16 lower-case hex digits, never all zeros.
fn random_span_id() -> [u8; 16] {
    lower_hex(fastrand::u64(1..))
}

/// A `tracestate` worth passing on: visible ASCII, spaces and tabs, within the length cap.
fn usable_tracestate(value: &[u8]) -> bool {
    value.len() <= MAX_TRACESTATE_BYTES
        && value
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

/// The fields named `name` as one list (RFC 9110 5.3: joined with commas).
fn joined(request: &dyn RequestView, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    request.each_field(name, &mut |value| {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(value);
    });
    out
}

impl TraceContext {
    /// The `traceparent` for the upstream: the client's trace continued, or a new one.
    fn traceparent(&self, incoming: Option<Parent<'_>>) -> Traceparent {
        // version 00, a 32-digit trace id, the gateway's 16-digit span id, the flags.
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        match incoming {
            Some(parent) => {
                text[3..35].copy_from_slice(parent.trace_id);
                // Only the sampled bit is defined for version 00; the rest are not passed on.
                let flags = parent.flags & 0x01;
                text[53] = b'0';
                text[54] = if flags == 1 { b'1' } else { b'0' };
            }
            None => {
                let [high, low] = random_trace_id();
                text[3..19].copy_from_slice(&high);
                text[19..35].copy_from_slice(&low);
                text[54] = if self.sampled { b'1' } else { b'0' };
            }
        }
        text[36..52].copy_from_slice(&random_span_id());
        text
    }
}

impl Filter for TraceContext {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        // Several `traceparent` fields are as good as a malformed one: restart.
        let mut count = 0;
        request.each_field(TRACEPARENT.as_str(), &mut |_| count += 1);
        let incoming = match count {
            1 => request.field(TRACEPARENT.as_str()).and_then(parse),
            _ => None,
        };
        let traceparent = self.traceparent(incoming);
        // Hex digits and hyphens: checked once for both edits.
        let Some(value) = FieldValue::new(&traceparent) else {
            return Verdict::Continue;
        };
        state.upstream.set(TRACEPARENT, value);
        let tracestate = incoming
            .map(|_| joined(request, TRACESTATE.as_str()))
            .filter(|v| !v.is_empty() && usable_tracestate(v));
        let forwarded = tracestate.is_some_and(|value| state.upstream.set_text(TRACESTATE, &value));
        // One the client sent goes with its trace or not at all.
        if !forwarded && request.field(TRACESTATE.as_str()).is_some() {
            state.upstream.remove(TRACESTATE);
        }
        if self.response {
            state.response.set(TRACEPARENT, value);
        }
        state.traceparent = Some(traceparent);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_rules() {
        let parent = parse(VALID).unwrap();
        assert_eq!(parent.trace_id, b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.flags, 1);
        let bad: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for value in bad {
            assert_eq!(parse(value), None, "{}", String::from_utf8_lossy(value));
        }
        // A later version is read as version 00 and may carry more after a `-`.
        let later = parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes");
        assert_eq!(later.unwrap().flags, 9);
    }

    #[test]
    fn continued_or_started() {
        let filter = TraceContext::build("t", &toml::Table::new()).unwrap();
        let continued = filter.traceparent(parse(VALID));
        let text = std::str::from_utf8(&continued).unwrap();
        assert_eq!(&text[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
        assert_ne!(&text[36..52], "00f067aa0ba902b7");
        assert!(text.ends_with("-01"));
        assert!(parse(text.as_bytes()).is_some());
        let started = filter.traceparent(None);
        let text = std::str::from_utf8(&started).unwrap();
        assert!(parse(text.as_bytes()).is_some(), "{text}");
        assert!(text.ends_with("-01"));
        assert_ne!(filter.traceparent(None), started);
        assert!(usable_tracestate(
            b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        ));
        assert!(!usable_tracestate(b"a=\x01"));
    }
}
