//! `cors`: Cross-Origin Resource Sharing (the Fetch standard's CORS protocol) at the gateway.
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//! here — `204` with the allowed method and headers when the origin, the method and every
//! requested header are allowed, `403` otherwise — and never reaches the upstream. Any other
//! request goes on; its response gets `Access-Control-Allow-Origin` (and `-Credentials`,
//! `-Expose-Headers`) when its `Origin` is allowed, and loses any the upstream sent when it
//! is not. `Vary: Origin` is added whenever the answer depends on the origin.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{read, FilterError};
use crate::gateway::engine::filters::{
    edit_name, EditName, Filter, FilterState, HeaderEdits, Verdict,
};
use crate::gateway::engine::RequestView;
use crate::gateway::failure::Answer;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    allow_origins: Vec<String>,
    allow_methods: Option<Vec<String>>,
    allow_headers: Option<Vec<String>>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    max_age: Option<String>,
}

/// Which origins are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// `*`: any origin.
    Any,
    /// `https://app.example.com` (compared without regard to case).
    Exact(String),
    /// `https://*.example.com`: the scheme, then one or more labels, then this suffix
    /// (`.example.com`, with its port if it has one).
    Subdomains { scheme: String, suffix: String },
}

impl OriginRule {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Self::Any);
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?}: an origin is scheme://host[:port]"))?;
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "{text:?}: an origin is scheme://host[:port], no path"
            ));
        }
        let lower = |s: &str| s.to_ascii_lowercase();
        match rest.strip_prefix('*') {
            Some(suffix)
                if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
            {
                Ok(Self::Subdomains {
                    scheme: lower(scheme),
                    suffix: lower(suffix),
                })
            }
            Some(_) => Err(format!(
                "{text:?}: a wildcard is the first label only (https://*.example.com)"
            )),
            None if rest.contains('*') => Err(format!(
                "{text:?}: a wildcard is the first label only (https://*.example.com)"
            )),
            None => Ok(Self::Exact(lower(text))),
        }
    }

    /// Whether `origin` (as the field came: bytes) is allowed. Every rule is UTF-8 text, so
    /// bytes that match one are text too.
    fn allows(&self, origin: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => origin.eq_ignore_ascii_case(exact.as_bytes()),
            Self::Subdomains { scheme, suffix } => {
                let Some(at) = origin.windows(3).position(|w| w == b"://") else {
                    return false;
                };
                let (their_scheme, host) = (&origin[..at], &origin[at + 3..]);
                let Some(label_end) = host.len().checked_sub(suffix.len()).filter(|&n| n > 0)
                else {
                    return false;
                };
                their_scheme.eq_ignore_ascii_case(scheme.as_bytes())
                    && host[label_end..].eq_ignore_ascii_case(suffix.as_bytes())
                    && host[..label_end]
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        }
    }
}

/// The response fields of a request that is no preflight, as edits name them.
const EDIT_VARY: EditName = edit_name!("vary");
const EDIT_ALLOW_ORIGIN: EditName = edit_name!("access-control-allow-origin");
const EDIT_ALLOW_CREDENTIALS: EditName = edit_name!("access-control-allow-credentials");
const EDIT_EXPOSE_HEADERS: EditName = edit_name!("access-control-expose-headers");

/// A list of names, or `*`: whatever the preflight asks for.
#[derive(Debug)]
enum Allowed {
    Any,
    /// Upper-case methods, or lower-case header names.
    These(Vec<String>),
}

/// One `cors` filter.
#[derive(Debug)]
pub(super) struct Cors {
    name: String,
    origins: Vec<OriginRule>,
    /// Any origin, answered `*` (no credentials): the answer does not vary by origin.
    wildcard: bool,
    methods: Allowed,
    /// `allow_methods` as the preflight answers it, when it is a list.
    methods_value: Option<HeaderValue>,
    headers: Allowed,
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// The methods a browser sends without a preflight; allowed whatever `allow_methods` says
/// (the Fetch standard's CORS-safelisted methods).
const SAFELISTED_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

fn list_value(name: &str, key: &str, items: &[String]) -> Result<HeaderValue, FilterError> {
    HeaderValue::from_str(&items.join(", "))
        .map_err(|_| FilterError::new(name, key, "not a list of header-safe names"))
}

impl Cors {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        if settings.allow_origins.is_empty() {
            return Err(FilterError::new(
                name,
                "allow_origins",
                "no origin: list the origins allowed (or \"*\")",
            ));
        }
        let origins = settings
            .allow_origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| FilterError::new(name, "allow_origins", reason))?;
        let any_origin = origins.contains(&OriginRule::Any);
        if any_origin && settings.allow_credentials {
            return Err(FilterError::new(
                name,
                "allow_credentials",
                "not with allow_origins = [\"*\"]: browsers refuse credentials for any \
                 origin; list the origins",
            ));
        }
        let (methods, methods_value) = match settings.allow_methods {
            None => (Allowed::Any, None),
            Some(list) if list.iter().any(|m| m == "*") => (Allowed::Any, None),
            Some(list) => {
                let upper: Vec<String> =
                    list.iter().map(|m| m.trim().to_ascii_uppercase()).collect();
                if let Some(bad) = upper
                    .iter()
                    .find(|m| http::Method::from_bytes(m.as_bytes()).is_err())
                {
                    return Err(FilterError::new(
                        name,
                        "allow_methods",
                        format!("{bad:?} is not a method"),
                    ));
                }
                let value = list_value(name, "allow_methods", &upper)?;
                (Allowed::These(upper), Some(value))
            }
        };
        let header_names = |key: &str, list: &[String]| -> Result<Vec<String>, FilterError> {
            list.iter()
                .map(|h| {
                    HeaderName::from_bytes(h.trim().as_bytes())
                        .map(|n| n.as_str().to_string())
                        .map_err(|_| FilterError::new(name, key, format!("bad header name {h:?}")))
                })
                .collect()
        };
        let (headers, headers_value) = match settings.allow_headers {
            None => (Allowed::Any, None),
            Some(list) if list.iter().any(|h| h == "*") => (Allowed::Any, None),
            Some(list) => {
                let names = header_names("allow_headers", &list)?;
                let value = list_value(name, "allow_headers", &names)?;
                (Allowed::These(names), Some(value))
            }
        };
        let expose = match settings.expose_headers.as_slice() {
            [] => None,
            list => Some(list_value(
                name,
                "expose_headers",
                &header_names("expose_headers", list)?,
            )?),
        };
        let max_age = match settings.max_age.as_deref() {
            None => None,
            Some(text) => {
                let day = std::time::Duration::from_secs(24 * 3600);
                let age = super::duration(name, "max_age", text, day)?;
                Some(HeaderValue::from(age.as_secs()))
            }
        };
        Ok(Self {
            name: name.to_string(),
            wildcard: any_origin,
            origins,
            methods,
            methods_value,
            headers,
            headers_value,
            expose,
            credentials: settings.allow_credentials,
            max_age,
        })
    }

    fn allows_origin(&self, origin: &[u8]) -> bool {
        self.origins.iter().any(|rule| rule.allows(origin))
    }

    /// `Access-Control-Allow-Origin` for an allowed origin: `*`, or the origin itself.
    fn allow_origin_text<'o>(&self, origin: &'o [u8]) -> &'o [u8] {
        if self.wildcard {
            b"*"
        } else {
            origin
        }
    }

    /// The preflight's answer: 204 with what is allowed, or 403 saying what is not.
    fn preflight(&self, request: &dyn RequestView, origin: &str, method: &[u8]) -> Answer {
        let refuse = |why: String| {
            Answer::plain(
                403,
                format!("sluice: CORS preflight refused: {why}\n"),
                "CorsRefused",
            )
        };
        if !self.allows_origin(origin.as_bytes()) {
            return refuse(format!("origin {origin:?} is not allowed"));
        }
        let method = String::from_utf8_lossy(method).trim().to_string();
        if let Allowed::These(list) = &self.methods {
            if !list.contains(&method) && !SAFELISTED_METHODS.contains(&method.as_str()) {
                return refuse(format!("method {method:?} is not allowed"));
            }
        }
        let mut requested = Vec::new();
        request.each_field(ACCESS_CONTROL_REQUEST_HEADERS.as_str(), &mut |value| {
            requested.extend(
                sluice_http1::fields::list(value)
                    .map(|h| String::from_utf8_lossy(h).to_ascii_lowercase()),
            );
        });
        if let Allowed::These(list) = &self.headers {
            if let Some(bad) = requested.iter().find(|h| !list.contains(h)) {
                return refuse(format!("header {bad:?} is not allowed"));
            }
        }
        let mut headers = Vec::with_capacity(7);
        if let Ok(value) = HeaderValue::from_bytes(self.allow_origin_text(origin.as_bytes())) {
            headers.push((ACCESS_CONTROL_ALLOW_ORIGIN, value));
        }
        let methods = match &self.methods_value {
            Some(list) => Some(list.clone()),
            None => HeaderValue::from_str(&method).ok(),
        };
        if let Some(methods) = methods {
            headers.push((ACCESS_CONTROL_ALLOW_METHODS, methods));
        }
        let allow_headers = match &self.headers_value {
            Some(list) => Some(list.clone()),
            None if requested.is_empty() => None,
            None => HeaderValue::from_str(&requested.join(", ")).ok(),
        };
        if let Some(allow_headers) = allow_headers {
            headers.push((ACCESS_CONTROL_ALLOW_HEADERS, allow_headers));
        }
        if self.credentials {
            headers.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(age) = &self.max_age {
            headers.push((ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        headers.push((
            VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ));
        Answer::reply(204, String::new(), headers)
    }

    /// The response edits for a request that is no preflight.
    fn on_actual(&self, origin: Option<&[u8]>, edits: &mut HeaderEdits) {
        if !self.wildcard {
            edits.add_text(EDIT_VARY, b"Origin");
        }
        let allowed = origin.filter(|o| self.allows_origin(o));
        // `*`, or the origin itself (checked as a field value by the edit).
        let value = allowed.map(|o| self.allow_origin_text(o));
        if value.is_some_and(|value| edits.set_text(EDIT_ALLOW_ORIGIN, value)) {
            if self.credentials {
                edits.set_text(EDIT_ALLOW_CREDENTIALS, b"true");
            }
            if let Some(expose) = &self.expose {
                edits.set(EDIT_EXPOSE_HEADERS, expose);
            }
        } else {
            // No CORS for this origin, whatever the upstream says.
            edits.remove(EDIT_ALLOW_ORIGIN);
            edits.remove(EDIT_ALLOW_CREDENTIALS);
            edits.remove(EDIT_EXPOSE_HEADERS);
        }
    }
}

impl Filter for Cors {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let origin = request.field(ORIGIN.as_str());
        let preflight_method = request.field(ACCESS_CONTROL_REQUEST_METHOD.as_str());
        if let (Some(origin), Some(method), "OPTIONS") =
            (origin, preflight_method, request.method())
        {
            let origin = String::from_utf8_lossy(origin);
            return Verdict::Answer(self.preflight(request, &origin, method));
        }
        self.on_actual(origin, &mut state.response);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<Cors, FilterError> {
        Cors::build("c", &toml::from_str(text).unwrap())
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let rule = OriginRule::parse("https://*.Example.com").unwrap();
        assert!(rule.allows(b"https://app.example.com"));
        assert!(rule.allows(b"https://a.b.example.com"));
        assert!(!rule.allows(b"https://example.com"));
        assert!(!rule.allows(b"http://app.example.com"));
        assert!(!rule.allows(b"https://app.example.com.evil.test"));
        assert!(!rule.allows(b"https://evil-example.com"));
        assert!(!rule.allows(b"https://x/y.example.com"));
        let port = OriginRule::parse("http://*.local.test:8080").unwrap();
        assert!(port.allows(b"http://a.local.test:8080"));
        assert!(!port.allows(b"http://a.local.test:8081"));
        let exact = OriginRule::parse("https://App.example.com").unwrap();
        assert!(exact.allows(b"https://app.example.com"));
        assert!(!exact.allows(b"https://app.example.com:8443"));
        for bad in [
            "app.example.com",
            "https://*",
            "https://a.*.example.com",
            "https://x/",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(build(r#"allow_origins = ["*"]"#).unwrap().wildcard);
        let e = build(
            r#"allow_origins = ["*"]
            allow_credentials = true"#,
        )
        .unwrap_err();
        assert_eq!(e.key, "allow_credentials");
        assert_eq!(
            build("allow_origins = []").unwrap_err().key,
            "allow_origins"
        );
        assert_eq!(
            build(r#"allow_origins = ["nope"]"#).unwrap_err().key,
            "allow_origins"
        );
        assert_eq!(
            build(
                r#"allow_origins = ["https://a.test"]
                allow_methods = ["GE T"]"#
            )
            .unwrap_err()
            .key,
            "allow_methods"
        );
        let c = build(
            r#"allow_origins = ["https://a.test"]
            allow_methods = ["get", "put"]
            allow_headers = ["X-Token"]
            expose_headers = ["x-request-id"]
            max_age = "10m""#,
        )
        .unwrap();
        assert_eq!(c.methods_value.unwrap(), "GET, PUT");
        assert_eq!(c.headers_value.unwrap(), "x-token");
        assert_eq!(c.max_age.unwrap(), "600");
    }

    #[test]
    fn simple_requests_get_headers_only_when_allowed() {
        let c = build(
            r#"allow_origins = ["https://a.test"]
            allow_credentials = true"#,
        )
        .unwrap();
        let mut edits = HeaderEdits::default();
        c.on_actual(Some(b"https://a.test"), &mut edits);
        let added: Vec<_> = edits.added().map(|(n, v)| (n.as_str(), v)).collect();
        assert_eq!(
            added,
            [
                ("vary", &b"Origin"[..]),
                ("access-control-allow-origin", b"https://a.test"),
                ("access-control-allow-credentials", b"true"),
            ]
        );
        let mut edits = HeaderEdits::default();
        c.on_actual(Some(b"https://evil.test"), &mut edits);
        assert!(edits.replaces("access-control-allow-origin"));
        assert_eq!(edits.added().count(), 1, "only Vary");
    }
}
