//! `forward-auth`: each request is first put to an auth service — a `GET url` carrying the
//! request's `X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri` and `-For` and the fields of
//! `copy_request_headers` (default `Authorization` and `Cookie`). A 2xx lets the request
//! through with the auth response's `copy_response_headers` (those the client sent under
//! these names are dropped first, so a client cannot pose as authenticated); any other
//! answer goes back to the client as it came; no answer within `timeout` (default 5 s), or
//! none at all, is a 503. An `https://` service is verified against the system's roots (or
//! the CAs of `ca`), as the upstream TLS of a service is.

mod client;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use self::client::{AuthClient, AuthResponse, AuthTls, DEFAULT_TIMEOUT};
use super::{read, reject, FilterError};
use crate::gateway::engine::filters::{EditName, Filter, FilterState, HeaderEdits, Later, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::failure::Answer;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    ca: Option<std::path::PathBuf>,
    timeout: Option<String>,
    copy_request_headers: Option<Vec<String>>,
    copy_response_headers: Option<Vec<String>>,
}

/// One `forward-auth` filter.
#[derive(Debug)]
pub(super) struct ForwardAuth {
    name: Arc<str>,
    client: Arc<AuthClient>,
    /// The URL's path and query.
    target: String,
    timeout: Duration,
    copy_request: Vec<HeaderName>,
    copy_response: Arc<[EditName]>,
}

fn header_names(
    name: &str,
    key: &str,
    names: Option<Vec<String>>,
    default: &[&str],
) -> Result<Vec<HeaderName>, FilterError> {
    let names = names.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| {
                FilterError::new(
                    name,
                    format!("{key}[{i}]"),
                    format!("bad header name {n:?}"),
                )
            })
        })
        .collect()
}

impl ForwardAuth {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let uri: http::Uri = settings
            .url
            .parse()
            .map_err(|e| FilterError::new(name, "url", format!("{:?}: {e}", settings.url)))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(FilterError::new(
                    name,
                    "url",
                    format!("{:?}: expected an http:// or https:// URL", settings.url),
                ))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| FilterError::new(name, "url", "names no host"))?;
        let default_port = if https { 443 } else { 80 };
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(default_port));
        let tls = match (https, &settings.ca) {
            (false, Some(_)) => {
                return Err(FilterError::new(
                    name,
                    "ca",
                    "only used with an https:// url",
                ))
            }
            (false, None) => None,
            (true, ca) => {
                let spec = crate::config::UpstreamTlsSpec {
                    ca: ca.clone(),
                    ..Default::default()
                };
                let probe = crate::health::ProbeTls::new(&spec)
                    .map_err(|e| FilterError::new(name, "ca", e.to_string()))?;
                let bare = host.trim_matches(['[', ']']).to_string();
                let server_name = rustls_pki_types::ServerName::try_from(bare).map_err(|_| {
                    FilterError::new(name, "url", format!("{host:?} is not a TLS server name"))
                })?;
                Some(AuthTls {
                    config: probe.config(),
                    server_name,
                })
            }
        };
        let timeout = match settings.timeout.as_deref() {
            None => DEFAULT_TIMEOUT,
            Some(text) => super::duration(name, "timeout", text, Duration::from_secs(3600))?,
        };
        Ok(Self {
            name: name.into(),
            client: Arc::new(AuthClient::new(authority, tls)),
            target: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            timeout,
            copy_request: header_names(
                name,
                "copy_request_headers",
                settings.copy_request_headers,
                &["authorization", "cookie"],
            )?,
            copy_response: header_names(
                name,
                "copy_response_headers",
                settings.copy_response_headers,
                &[],
            )?
            .iter()
            .map(EditName::intern)
            .collect(),
        })
    }

    /// The auth request for `request`.
    fn auth_request(&self, request: &dyn RequestView) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"GET ");
        head.extend_from_slice(self.target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let put = sluice_http1::fields::put_field;
        put(&mut head, b"host", self.client.authority().as_bytes());
        put(
            &mut head,
            b"x-forwarded-method",
            request.method().as_bytes(),
        );
        put(&mut head, b"x-forwarded-proto", request.proto().as_bytes());
        put(&mut head, b"x-forwarded-host", request.host().as_bytes());
        let mut uri = request.path().to_string();
        if let Some(query) = request.query() {
            uri.push('?');
            uri.push_str(query);
        }
        put(&mut head, b"x-forwarded-uri", uri.as_bytes());
        if let Some(ip) = request.client_ip() {
            put(&mut head, b"x-forwarded-for", ip.to_string().as_bytes());
        }
        for name in &self.copy_request {
            if let Some(value) = request.field(name.as_str()) {
                put(&mut head, name.as_str().as_bytes(), value);
            }
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// Fields of a relayed answer the gateway frames itself.
fn is_framing(name: &HeaderName) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
    ]
    .contains(&name.as_str())
}

/// What the auth service's answer decides.
fn decide(response: AuthResponse, copy: &[EditName]) -> Later {
    if (200..300).contains(&response.status) {
        let mut upstream = HeaderEdits::default();
        for &name in copy {
            upstream.remove(name);
            for (n, value) in &response.headers {
                if n == name.header() {
                    upstream.add(name, value);
                }
            }
        }
        return Later {
            upstream,
            ..Later::default()
        };
    }
    let answer = Answer {
        status: response.status,
        body: response.body,
        headers: response
            .headers
            .into_iter()
            .filter(|(name, _)| !is_framing(name))
            .collect(),
        flagged: false,
        error: "FilterRejected",
    };
    Later::answer(answer)
}

impl Filter for ForwardAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        _state: &mut FilterState,
    ) -> Verdict {
        let auth_request = self.auth_request(request);
        let client = self.client.clone();
        let copy = self.copy_response.clone();
        let timeout = self.timeout;
        let name = self.name.clone();
        Verdict::Later(Box::pin(async move {
            let failure = match tokio::time::timeout(timeout, client.call(&auth_request)).await {
                Ok(Ok(response)) => return decide(response, &copy),
                Ok(Err(error)) => format!("could not be reached: {error}"),
                Err(_) => format!(
                    "did not answer within {}",
                    humantime::format_duration(timeout)
                ),
            };
            tracing::debug!(
                filter = &*name,
                "auth service {}: {failure}",
                client.authority()
            );
            Later::answer(reject(
                503,
                format!(
                    "sluice: the auth service {} of filter \"{name}\" {failure}\n",
                    client.authority()
                ),
            ))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> AuthResponse {
        AuthResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect(),
            body: bytes::Bytes::from_static(b"no"),
        }
    }

    #[test]
    fn a_2xx_copies_the_named_fields_and_anything_else_is_relayed() {
        let copy = [EditName::intern(&HeaderName::from_static("x-user"))];
        let passed = decide(response(204, &[("x-user", "u1"), ("x-other", "o")]), &copy);
        assert!(passed.answer.is_none());
        let edits: Vec<_> = passed.upstream.iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(edits.len(), 2, "{edits:?}");
        assert!(passed.upstream.replaces("x-user"));
        let refused = decide(
            response(
                302,
                &[
                    ("location", "/login"),
                    ("content-length", "2"),
                    ("connection", "close"),
                ],
            ),
            &copy,
        );
        let answer = refused.answer.unwrap();
        assert_eq!(answer.status, 302);
        assert!(!answer.flagged);
        assert_eq!(
            answer.headers.len(),
            1,
            "framing fields dropped: {:?}",
            answer.headers
        );
    }
}
