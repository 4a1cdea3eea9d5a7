//! The one table from a failure to the gateway's answer, for both request paths: status, the
//! body that says why, and the error name of the access log (pingora's error type names, so the
//! two paths log the same words).

use std::net::SocketAddr;

use pingora::ErrorType;

use super::Route;

/// What the gateway answers itself, and why.
#[derive(Debug)]
pub(crate) enum Failure<'a> {
    /// No eligible instance: 503 naming the service and route.
    NoInstance,
    /// The picked instance has no address (its host name did not resolve): 503.
    NoAddress,
    /// A try failed upstream with this error: 504 for a timeout, 502 otherwise.
    Upstream(&'a ErrorType),
}

/// The answer to a failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
    /// The access log's `error` field.
    pub(crate) error: &'static str,
}

/// Whether an upstream error is a timeout (answered 504).
pub(crate) fn is_timeout(error: &ErrorType) -> bool {
    matches!(
        error,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// The gateway's answer to `failure` on `route`, whose last try went to `upstream`.
pub(crate) fn answer(failure: Failure<'_>, route: &Route, upstream: Option<SocketAddr>) -> Answer {
    let service = route.spec.service.as_str();
    match failure {
        Failure::NoInstance => Answer {
            status: 503,
            body: no_instance_body(route),
            error: "HTTPStatus",
        },
        Failure::NoAddress => Answer {
            status: 503,
            body: status_body(503),
            error: "HTTPStatus",
        },
        Failure::Upstream(error) => {
            let addr = upstream.map(|a| a.to_string()).unwrap_or_default();
            if is_timeout(error) {
                Answer {
                    status: 504,
                    body: format!("sluice: upstream {addr} of service \"{service}\" timed out\n"),
                    error: error.as_str(),
                }
            } else {
                Answer {
                    status: 502,
                    body: format!(
                        "sluice: upstream {addr} of service \"{service}\" failed: {}\n",
                        error.as_str()
                    ),
                    error: error.as_str(),
                }
            }
        }
    }
}

/// The body of a status the gateway answers without more to say.
pub(crate) fn status_body(status: u16) -> String {
    format!("sluice: error {status}\n")
}

/// The 503 body when a route's service has no eligible instance.
pub(crate) fn no_instance_body(route: &Route) -> String {
    format!(
        "sluice: no eligible instance of service \"{}\" (route \"{}\")\n",
        route.spec.service, route.spec.name
    )
}
