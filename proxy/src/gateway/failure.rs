//! The one table from a failure to the gateway's answer, for both request paths: status, the
//! body that says why, and the error name of the access log (pingora's error type names, so the
//! two paths log the same words). Every answer the gateway makes itself carries
//! `x-sluice-error: 1` (written by the drivers, with these headers).

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};
use pingora::ErrorType;

use super::engine::filters::HeaderEdits;
use super::engine::PickFailure;
use super::{Backend, Route};

/// What the gateway answers itself, and why.
#[derive(Debug)]
pub(crate) enum Failure<'a> {
    /// No route for the host and path: 404.
    NoRoute { host: &'a str, path: &'a str },
    /// The declared body is over the route's `max_body_bytes`: 413.
    BodyTooLarge(u64),
    /// No eligible instance: 503 naming the service and route.
    NoInstance,
    /// The picked instance has no address (its host name did not resolve): 503.
    NoAddress,
    /// The service's instances turned to TLS or h2c while the fast path admitted the request
    /// (its filters had run, so pingora's path cannot take it): 503, to be tried again.
    PoolChanged,
    /// A try failed upstream with this error: 504 for a timeout, 502 otherwise.
    Upstream(&'a ErrorType),
}

impl From<PickFailure> for Failure<'static> {
    fn from(failure: PickFailure) -> Self {
        match failure {
            PickFailure::TotalTimeout => Failure::Upstream(&ErrorType::ReadTimedout),
            PickFailure::NoInstance => Failure::NoInstance,
            PickFailure::NoAddress => Failure::NoAddress,
        }
    }
}

/// An answer the gateway makes itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Plain text saying why (or a relayed answer's body).
    pub(crate) body: bytes::Bytes,
    /// Fields beside `content-length` and `x-sluice-error` (a filter's `WWW-Authenticate`,
    /// `Retry-After`, …); `content-type` is plain text unless one is here.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// `x-sluice-error: 1` goes with it: the gateway refused or failed the request. Not for
    /// another server's answer passed on as it was (`forward-auth`), a redirect or a CORS
    /// preflight.
    pub(crate) flagged: bool,
    /// The access log's `error` field.
    pub(crate) error: &'static str,
}

impl Answer {
    /// A plain-text answer with no more fields.
    pub(crate) fn plain(status: u16, body: String, error: &'static str) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
            flagged: true,
            error,
        }
    }

    /// An answer the gateway gives by design, not as an error (a redirect, a CORS
    /// preflight): no `x-sluice-error`, nothing in the access log's `error`.
    pub(crate) fn reply(
        status: u16,
        body: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        Self {
            status,
            body: body.into(),
            headers,
            flagged: false,
            error: "",
        }
    }

    /// Whether the answer is framed with `content-length` (and a `content-type`): not a 204
    /// or 304, which have no body (RFC 9110 8.6).
    pub(crate) fn has_body(&self) -> bool {
        !matches!(self.status, 204 | 304)
    }

    /// The answer with the chain's response edits (`state.response`) added: a field the
    /// answer has itself is its own (a rejecting filter's `Retry-After` wins over an earlier
    /// filter's), every other one the edits add goes with it (CORS, the request id).
    pub(crate) fn with_edits(mut self, edits: &HeaderEdits) -> Self {
        if edits.is_empty() {
            return self;
        }
        let own = self.headers.len();
        for (name, value) in edits.added() {
            let name = name.header();
            if self.headers[..own].iter().any(|(n, _)| n == name) {
                continue;
            }
            // The edits accept only what `HeaderValue` accepts.
            if let Ok(value) = HeaderValue::from_bytes(value) {
                self.headers.push((name.clone(), value));
            }
        }
        self
    }
}

/// The gRPC form of a gateway answer to a gRPC call (`content-type: application/grpc…`): gRPC
/// clients read a call's outcome from `grpc-status`, not from the HTTP status, and take a
/// body for a gRPC message (a tonic client reports a plain-text 502 as `INTERNAL`,
/// "invalid compression flag"). So the answer is a trailers-only response: HTTP 200,
/// `grpc-status` by the gRPC project's HTTP-to-gRPC mapping (`401` UNAUTHENTICATED, `403`
/// PERMISSION_DENIED, `404` UNIMPLEMENTED, `429`/`502`/`503`/`504` UNAVAILABLE, `400`
/// INTERNAL, anything else UNKNOWN), `grpc-message` the text that said why, no body. The
/// filters' other fields (`Retry-After`, `WWW-Authenticate`) stay.
pub(crate) fn as_grpc(mut answer: Answer) -> Answer {
    let code: u16 = match answer.status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    };
    let text = String::from_utf8_lossy(&answer.body);
    let message = grpc_message(text.trim());
    answer
        .headers
        .retain(|(name, _)| name != http::header::CONTENT_TYPE);
    answer.headers.push((
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    ));
    answer.headers.push((
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(code),
    ));
    if let Ok(value) = HeaderValue::from_str(&message) {
        answer
            .headers
            .push((HeaderName::from_static("grpc-message"), value));
    }
    answer.status = 200;
    answer.body = bytes::Bytes::new();
    answer
}

/// Whether a request is a gRPC call.
pub(crate) fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|v| v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// `grpc-message`'s encoding: printable ASCII but `%` as is, every other byte `%XX`.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether an upstream error is a timeout (answered 504).
pub(crate) fn is_timeout(error: &ErrorType) -> bool {
    matches!(
        error,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// The gateway's answer to `failure` on `route`, whose last try went to `upstream`.
pub(crate) fn answer(
    failure: Failure<'_>,
    target: Option<(&Route, &Backend)>,
    upstream: Option<SocketAddr>,
) -> Answer {
    let service = target.map_or("", |(_, b)| b.service());
    match failure {
        Failure::NoRoute { host, path } => Answer::plain(
            404,
            format!("sluice: no route for host \"{host}\" and path \"{path}\"\n"),
            "",
        ),
        Failure::BodyTooLarge(limit) => Answer::plain(
            413,
            format!("sluice: request body larger than {limit} bytes\n"),
            "HTTPStatus",
        ),
        Failure::NoInstance => Answer::plain(
            503,
            target
                .map(|(route, backend)| no_instance_body(route, backend))
                .unwrap_or_else(|| status_body(503)),
            "HTTPStatus",
        ),
        Failure::NoAddress => Answer::plain(503, status_body(503), "HTTPStatus"),
        Failure::PoolChanged => {
            let mut answer = Answer::plain(
                503,
                format!(
                    "sluice: the instances of service \"{service}\" changed while the request \
                     was admitted; try again\n"
                ),
                "HTTPStatus",
            );
            answer
                .headers
                .push((http::header::RETRY_AFTER, HeaderValue::from_static("0")));
            answer
        }
        Failure::Upstream(error) => {
            let addr = upstream.map(|a| a.to_string()).unwrap_or_default();
            let body = if is_timeout(error) {
                format!("sluice: upstream {addr} of service \"{service}\" timed out\n")
            } else {
                format!(
                    "sluice: upstream {addr} of service \"{service}\" failed: {}\n",
                    error.as_str()
                )
            };
            let status = if is_timeout(error) { 504 } else { 502 };
            Answer::plain(status, body, error.as_str())
        }
    }
}

/// The body of a status the gateway answers without more to say.
pub(crate) fn status_body(status: u16) -> String {
    format!("sluice: error {status}\n")
}

/// The 503 body when a route's service has no eligible instance.
fn no_instance_body(route: &Route, backend: &Backend) -> String {
    format!(
        "sluice: no eligible instance of service \"{}\" (route \"{}\")\n",
        backend.service(),
        route.spec.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_get_trailers_only_answers() {
        let answer = as_grpc(Answer::plain(
            502,
            "sluice: upstream 127.0.0.1:1 of service \"échо\" failed: 100%\n".into(),
            "ReadError",
        ));
        assert_eq!(answer.status, 200);
        assert!(answer.body.is_empty());
        let field = |name: &str| {
            answer
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(field("grpc-status").as_deref(), Some("14"));
        assert_eq!(field("content-type").as_deref(), Some("application/grpc"));
        let message = field("grpc-message").unwrap();
        assert!(message.ends_with("failed: 100%25"), "{message}");
        assert!(message.contains("%C3%A9"), "{message}");
        assert_eq!(
            as_grpc(Answer::plain(401, String::new(), "")).headers[1].1,
            "16"
        );
        assert!(is_grpc(Some(b"application/grpc+proto")));
        assert!(!is_grpc(Some(b"application/json")) && !is_grpc(None));
    }
}
