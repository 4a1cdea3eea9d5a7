//! Where an authentication filter finds the credential it checks (`from = "header:NAME"`,
//! `"query:NAME"` or `"cookie:NAME"`) and how it is taken out of the request before
//! forwarding, so the upstream never sees it.

use http::HeaderName;

use crate::gateway::engine::filters::{EditName, FilterState};
use crate::gateway::engine::RequestView;

/// Where the credential is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CredentialSource {
    /// Interned at load: removing it from a request costs no lookup.
    Header(EditName),
    Query(String),
    Cookie(String),
}

/// What `from` may be, for error messages.
pub(super) const FORMS: &str = "\"header:NAME\", \"query:NAME\" or \"cookie:NAME\"";

impl CredentialSource {
    /// Reads `header:NAME`, `query:NAME` or `cookie:NAME`.
    pub(super) fn parse(text: &str) -> Option<Self> {
        let (kind, name) = text.split_once(':')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        match kind.trim() {
            "header" => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(|header| Self::Header(EditName::intern(&header))),
            "query" => Some(Self::Query(name.to_string())),
            "cookie" => Some(Self::Cookie(name.to_string())),
            _ => None,
        }
    }

    /// The presented value, if any (not empty).
    pub(super) fn presented<'r>(&self, request: &'r dyn RequestView) -> Option<&'r [u8]> {
        match self {
            Self::Header(header) => request.field(header.as_str()),
            Self::Query(param) => request
                .query()
                .and_then(|q| pairs(q, '&').find(|(k, _)| k == param))
                .map(|(_, v)| v.as_bytes()),
            Self::Cookie(name) => request
                .field("cookie")
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| pairs(c, ';').find(|(k, _)| k == name))
                .map(|(_, v)| v.as_bytes()),
        }
        .filter(|v| !v.is_empty())
    }

    /// Takes the credential out of the request as forwarded: the header removed, the query
    /// parameter dropped from the query; a cookie is left where it is (the `Cookie` field
    /// carries the client's other cookies too).
    pub(super) fn remove(&self, request: &dyn RequestView, state: &mut FilterState) {
        match self {
            Self::Header(header) => state.upstream.remove(*header),
            Self::Query(param) => {
                let query = state.query.as_deref().or(request.query()).unwrap_or("");
                state.query = Some(without_param(query, param));
            }
            Self::Cookie(_) => {}
        }
    }

    /// How a missing credential is described to the client.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Header(h) => format!("header {}", h.as_str()),
            Self::Query(q) => format!("query parameter {q}"),
            Self::Cookie(c) => format!("cookie {c}"),
        }
    }
}

/// `k=v` pairs split by `separator` (a pair without `=` has an empty value), trimmed.
fn pairs(text: &str, separator: char) -> impl Iterator<Item = (&str, &str)> {
    text.split(separator).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k.trim(), v.trim())
    })
}

/// `query` without the parameters named `param`.
fn without_param(query: &str, param: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != param)
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_query_removal() {
        assert!(matches!(
            CredentialSource::parse("header:X-Key"),
            Some(CredentialSource::Header(_))
        ));
        assert_eq!(
            CredentialSource::parse("query:apikey"),
            Some(CredentialSource::Query("apikey".into()))
        );
        assert_eq!(
            CredentialSource::parse("cookie: session"),
            Some(CredentialSource::Cookie("session".into()))
        );
        assert!(CredentialSource::parse("body:x").is_none());
        assert!(CredentialSource::parse("query:").is_none());
        assert_eq!(without_param("a=1&apikey=s&b", "apikey"), "a=1&b");
        assert_eq!(without_param("apikey=s", "apikey"), "");
        let found: Vec<_> = pairs("a=1; token=xyz; b", ';').collect();
        assert_eq!(found, [("a", "1"), ("token", "xyz"), ("b", "")]);
    }
}
