//! Values with `${…}` variables (`headers`, `redirect`): parsed once at load into text and
//! variables, rendered per request from the request and what the chain has decided so far.
//! A value without variables is rendered once, at load.

use std::fmt::Write as _;

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
    pub(super) fn render_into(&self, cx: &Context<'_>, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
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

fn render_variable(variable: Variable, cx: &Context<'_>, out: &mut String) {
    let request = cx.request;
    match variable {
        Variable::ClientIp => {
            if let Some(ip) = request.client_ip() {
                push_ip(out, ip);
            }
        }
        Variable::RequestId => {
            if let Some(id) = cx.state.request_id.as_ref().and_then(|v| v.to_str().ok()) {
                out.push_str(id);
            }
        }
        Variable::Consumer => {
            if let Some(consumer) = &cx.state.consumer {
                out.push_str(consumer);
            }
        }
        Variable::Route => out.push_str(&cx.route.spec.name),
        Variable::Host => out.push_str(request.host()),
        Variable::Path => out.push_str(request.path()),
        Variable::Query => out.push_str(request.query().unwrap_or("")),
        Variable::Uri => {
            out.push_str(request.path());
            if let Some(query) = request.query() {
                out.push('?');
                out.push_str(query);
            }
        }
        Variable::Scheme => out.push_str(request.proto()),
        Variable::Method => out.push_str(request.method()),
        Variable::TraceId => {
            if let Some(trace_id) = cx.state.trace_id() {
                out.push_str(trace_id);
            }
        }
    }
}

/// Appends `ip` as text: IPv4 (every request's usual case) digit by digit, without the
/// formatting machinery; IPv6 by its `Display`.
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        // Writing to a String cannot fail.
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
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

    /// The header value for this request; `None` when what the variables gave cannot be one
    /// (it then is left out).
    pub(super) fn render(&self, cx: &Context<'_>) -> Option<HeaderValue> {
        if let Some(constant) = &self.constant {
            return Some(constant.clone());
        }
        // The rendered text becomes the value's own bytes: checked, not copied.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(self.template.render(cx))).ok()
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
            "2001:db8::7",
        ] {
            let mut out = String::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip);
        }
        for name in VARIABLES {
            assert!(Template::parse(&format!("${{{name}}}")).is_ok(), "{name}");
        }
    }
}
