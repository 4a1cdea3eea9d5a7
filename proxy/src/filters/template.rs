//! Values with `${…}` variables (`headers`, `redirect`): parsed once at load into text and
//! variables, rendered per request from the request and what the chain has decided so far.
//! A value without variables is rendered once, at load.

use std::fmt::{self, Write as _};

use http::HeaderValue;

use crate::gateway::engine::filters::FilterState;
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

/// The variables a value may use, as they are written.
pub(super) const VARIABLES: [&str; 11] = [
    "client_ip",
    "request_id",
    "consumer",
    "route",
    "host",
    "path",
    "query",
    "uri",
    "scheme",
    "method",
    "trace_id",
];

/// One variable: what the request or the chain knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variable {
    /// The client's IP (the peer's, or `X-Forwarded-For`'s from a trusted proxy).
    ClientIp,
    /// The `request-id` filter's id (empty before it ran).
    RequestId,
    /// Who an authentication filter let the request through as (empty before one did).
    Consumer,
    /// The route's name.
    Route,
    /// The host the client asked for, without its port.
    Host,
    /// The path as the client sent it, without the query.
    Path,
    /// The query without its `?` (empty when none).
    Query,
    /// The path and, when there is one, `?` and the query.
    Uri,
    /// `https` or `http`: how the client reached the gateway.
    Scheme,
    /// The request's method.
    Method,
    /// The `trace-context` filter's trace id (empty before it ran).
    TraceId,
}

impl Variable {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "client_ip" => Self::ClientIp,
            "request_id" => Self::RequestId,
            "consumer" => Self::Consumer,
            "route" => Self::Route,
            "host" => Self::Host,
            "path" => Self::Path,
            "query" => Self::Query,
            "uri" => Self::Uri,
            "scheme" => Self::Scheme,
            "method" => Self::Method,
            "trace_id" => Self::TraceId,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Variable(Variable),
}

/// A parsed value: `$${` is a literal `${`, `$$` a literal `$`, and a `$` before anything
/// but `{` or `$` stands for itself.
#[derive(Debug, Clone)]
pub(super) struct Template {
    parts: Vec<Part>,
    /// The value itself when it has no variables.
    constant: Option<String>,
}

/// Why a value cannot be a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TemplateError {
    #[error("unknown variable ${{{0}}} (known: {known})", known = VARIABLES.join(", "))]
    Unknown(String),
    #[error("`${{` without its closing `}}`")]
    Unclosed,
}

/// What a value is rendered from.
pub(super) struct Context<'a> {
    pub(super) route: &'a Route,
    pub(super) request: &'a dyn RequestView,
    pub(super) state: &'a FilterState,
}

impl Template {
    pub(super) fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(escaped) = after.strip_prefix('$') {
                literal.push('$');
                rest = escaped;
            } else if let Some(open) = after.strip_prefix('{') {
                let end = open.find('}').ok_or(TemplateError::Unclosed)?;
                let name = open[..end].trim();
                let variable =
                    Variable::named(name).ok_or_else(|| TemplateError::Unknown(name.into()))?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Variable(variable));
                rest = &open[end + 1..];
            } else {
                literal.push('$');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let constant = match parts.as_slice() {
            [] => Some(String::new()),
            [Part::Text(text)] => Some(text.clone()),
            _ => None,
        };
        Ok(Self { parts, constant })
    }

    /// The value when it uses no variable.
    pub(super) fn constant(&self) -> Option<&str> {
        self.constant.as_deref()
    }

    /// Appends the value for this request to `out`.
    pub(super) fn render_into(&self, cx: &Context<'_>, out: &mut impl Sink) {
        for part in &self.parts {
            match part {
                Part::Text(text) => out.put(text),
                Part::Variable(variable) => render_variable(*variable, cx, out),
            }
        }
    }

    /// The value for this request.
    pub(super) fn render(&self, cx: &Context<'_>) -> String {
        if let Some(constant) = &self.constant {
            return constant.clone();
        }
        let mut out = String::with_capacity(64);
        self.render_into(cx, &mut out);
        out
    }
}

/// Where a rendered value goes: text (a redirect's `Location`) or the bytes of a header edit
/// (written in place).
pub(super) trait Sink {
    fn put(&mut self, text: &str);
    /// One ASCII byte.
    fn put_ascii(&mut self, byte: u8);
}

impl Sink for String {
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }

    fn put_ascii(&mut self, byte: u8) {
        self.push(char::from(byte));
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }

    fn put_ascii(&mut self, byte: u8) {
        self.push(byte);
    }
}

fn render_variable(variable: Variable, cx: &Context<'_>, out: &mut impl Sink) {
    let request = cx.request;
    match variable {
        Variable::ClientIp => {
            if let Some(ip) = request.client_ip() {
                push_ip(out, ip);
            }
        }
        Variable::RequestId => {
            out.put(&cx.state.request_id);
        }
        Variable::Consumer => {
            if let Some(consumer) = &cx.state.consumer {
                out.put(consumer);
            }
        }
        Variable::Route => out.put(&cx.route.spec.name),
        Variable::Host => out.put(request.host()),
        Variable::Path => out.put(request.path()),
        Variable::Query => out.put(request.query().unwrap_or("")),
        Variable::Uri => {
            out.put(request.path());
            if let Some(query) = request.query() {
                out.put_ascii(b'?');
                out.put(query);
            }
        }
        Variable::Scheme => out.put(request.proto()),
        Variable::Method => out.put(request.method()),
        Variable::TraceId => {
            if let Some(trace_id) = cx.state.trace_id() {
                out.put(trace_id);
            }
        }
    }
}

/// Appends `ip` as text: IPv4 (every request's usual case) digit by digit, without the
/// formatting machinery; IPv6 by its `Display`.
fn push_ip(out: &mut impl Sink, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.put_ascii(b'.');
                }
                if octet >= 100 {
                    out.put_ascii(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.put_ascii(b'0' + octet / 10 % 10);
                }
                out.put_ascii(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let mut text = ShortText::default();
            // The longest IPv6 text (45 bytes) fits: the write cannot fail.
            let _ = write!(text, "{v6}");
            out.put(text.as_str());
        }
    }
}

/// Text of at most 64 bytes on the stack (an address's).
struct ShortText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for ShortText {
    fn default() -> Self {
        Self {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl ShortText {
    fn as_str(&self) -> &str {
        // Only whole `str`s are written (`write_str`).
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for ShortText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A header value template: a constant one is made a [`HeaderValue`] once, at load.
#[derive(Debug, Clone)]
pub(super) struct ValueTemplate {
    template: Template,
    constant: Option<HeaderValue>,
}

impl ValueTemplate {
    /// `None` in the error's place when the constant is no header value (a control byte).
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let template = Template::parse(text).map_err(|e| e.to_string())?;
        let constant = match template.constant() {
            Some(text) => Some(
                HeaderValue::from_str(text)
                    .map_err(|_| format!("{text:?} cannot be a header value"))?,
            ),
            None => None,
        };
        Ok(Self { template, constant })
    }

    /// The value when it uses no variable (made at load).
    pub(super) fn constant(&self) -> Option<&HeaderValue> {
        self.constant.as_ref()
    }

    /// Appends the value for this request to `out` (a header edit's bytes, which checks
    /// them).
    pub(super) fn render_into(&self, cx: &Context<'_>, out: &mut Vec<u8>) {
        self.template.render_into(cx, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_variables_and_escapes() {
        let t = Template::parse("https://${host}${path}?x=$$1&y=$5").unwrap();
        assert_eq!(
            t.parts,
            [
                Part::Text("https://".into()),
                Part::Variable(Variable::Host),
                Part::Variable(Variable::Path),
                Part::Text("?x=$1&y=$5".into()),
            ]
        );
        assert!(t.constant().is_none());
        assert_eq!(Template::parse("plain").unwrap().constant(), Some("plain"));
        assert_eq!(
            Template::parse("$${host}").unwrap().constant(),
            Some("${host}")
        );
        assert_eq!(
            Template::parse("${ nope }").unwrap_err(),
            TemplateError::Unknown("nope".into())
        );
        assert_eq!(
            Template::parse("a${host").unwrap_err(),
            TemplateError::Unclosed
        );
        assert!(ValueTemplate::parse("bad\nvalue").is_err());
        for ip in [
            "0.0.0.0",
            "10.20.3.255",
            "192.168.100.9",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:192.168.100.200",
            "2001:db8::7",
        ] {
            let mut out = String::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip);
            let mut bytes = Vec::new();
            push_ip(&mut bytes, ip.parse().unwrap());
            assert_eq!(bytes, ip.as_bytes());
        }
        for name in VARIABLES {
            assert!(Template::parse(&format!("${{{name}}}")).is_ok(), "{name}");
        }
    }
}
