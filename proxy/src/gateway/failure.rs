//! The one table from a failure to the gateway's answer, for both request paths: status, the
//! body that says why, and the error name of the access log (pingora's error type names, so the
//! two paths log the same words). Every answer the gateway makes itself carries
//! `x-sluice-error: 1` (written by the drivers, with these headers).

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};
use pingora::ErrorType;

use super::engine::PickFailure;
use super::Route;

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
    /// Another server's answer passed on as it was (`forward-auth`): no `x-sluice-error`.
    pub(crate) relayed: bool,
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
            relayed: false,
            error,
        }
    }
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
    route: Option<&Route>,
    upstream: Option<SocketAddr>,
) -> Answer {
    let service = route.map_or("", |r| r.spec.service.as_str());
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
            route
                .map(no_instance_body)
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
fn no_instance_body(route: &Route) -> String {
    format!(
        "sluice: no eligible instance of service \"{}\" (route \"{}\")\n",
        route.spec.service, route.spec.name
    )
}
