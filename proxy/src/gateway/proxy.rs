//! The pingora proxy: route, pick, forward, answer errors with a body that says why, record.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::access_log::{AccessLine, Via};
use super::context::{LocalAnswer, RequestCtx};
use super::failure::{self, no_instance_body, Failure};
use super::retry::{may_retry, Failed};
use super::{forward, Route, Router};
use crate::config::HashOn;
use crate::strategy::PickRequest;

/// The gateway's request handler; the router is swapped whole on reload.
#[derive(Clone)]
pub struct Gateway {
    pub(super) router: Arc<ArcSwap<Router>>,
    pub(super) limits: HeaderLimits,
    directory: Arc<crate::pool::Directory>,
    ejections: Option<crate::health::EjectionRequests>,
}

/// Header limits of the listener (`proxy.max_headers`, `proxy.max_header_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// Why a request is refused before routing, if it is. An HTTP/1 head is held to the fast
/// path's codec rules (one `Host`, one body length, no smuggling shapes): one rule for both
/// paths.
fn refuse(session: &Session, limits: HeaderLimits) -> Option<(u16, String)> {
    if let Some(h1) = session.as_downstream().as_http1() {
        if let Err(error) = sluice_http1::request::check_head(&h1.get_headers_raw_bytes()) {
            return Some((error.status(), format!("sluice: bad request: {error}\n")));
        }
    }
    let headers = &session.req_header().headers;
    if headers.len() > limits.max_headers {
        return Some((
            431,
            format!("sluice: more than {} header fields\n", limits.max_headers),
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > limits.max_header_bytes {
        return Some((
            431,
            format!(
                "sluice: headers larger than {} bytes\n",
                limits.max_header_bytes
            ),
        ));
    }
    None
}

/// Whether an HTTP/2 client reset its stream (`RST_STREAM` with `CANCEL` or `NO_ERROR`): it
/// gave up waiting, as an HTTP/1 client that closes its connection does (a 499, not an error).
/// pingora reports the reset it sees while the request waits only in its error's context
/// ("Client closed H2, reason: …", `HttpSession::read_body_or_idle`); elsewhere as an
/// `h2::Error` cause.
fn h2_stream_cancelled(error: &Error) -> bool {
    if error.etype() != &ErrorType::H2Error {
        return false;
    }
    // The reset may sit under contexts added later (the peer, by `error_while_proxy`).
    // A wrapped pingora error is a cause of type `Box<Error>` (it was boxed once more).
    let idle_reset = std::iter::successors(Some(error), |e| {
        let cause = e.cause.as_ref()?;
        cause
            .downcast_ref::<Box<Error>>()
            .map(|b| &**b)
            .or_else(|| cause.downcast_ref::<Error>())
    })
    .any(|e| {
        e.context
            .as_ref()
            .is_some_and(|c| c.as_str().starts_with("Client closed H2"))
    });
    idle_reset
        || error
            .root_cause()
            .downcast_ref::<h2::Error>()
            .and_then(h2::Error::reason)
            .is_some_and(|r| r == h2::Reason::CANCEL || r == h2::Reason::NO_ERROR)
}

/// Longest a request waits for the registry's first sync (a process just started or
/// upgraded, with empty pools) before it is answered 503.
pub(super) const FIRST_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Gateway {
    pub fn new(
        router: Arc<ArcSwap<Router>>,
        limits: HeaderLimits,
        directory: Arc<crate::pool::Directory>,
        ejections: Option<crate::health::EjectionRequests>,
    ) -> Self {
        Self {
            router,
            limits,
            directory,
            ejections,
        }
    }

    /// The metric families, for the recorders of both request paths.
    pub(super) fn metrics(&self) -> &crate::metrics::Metrics {
        self.directory.metrics()
    }

    /// Counts a failed attempt; past the route's `passive` threshold, asks for an ejection.
    fn attempt_failed(&self, ctx: &RequestCtx) {
        if let (Some(attempt), Some(route)) = (&ctx.attempt, &ctx.route) {
            self.attempt_failed_on(route, attempt);
        }
    }

    /// Counts a failed attempt of `route`; past its `passive` threshold, asks for an ejection.
    pub(super) fn attempt_failed_on(&self, route: &Route, attempt: &crate::pool::InFlightGuard) {
        let live = attempt.live();
        live.record_failure();
        if let (Some(threshold), Some(ejections)) = (route.eject_after, &self.ejections) {
            if live.failures() == threshold {
                ejections.request(route.slot.name_arc());
            }
        }
    }
}

/// The request's host without port: `Host` header, else the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> &str {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    sluice_http1::fields::host_without_port(raw)
}

fn request_hash(hash_on: &HashOn, session: &Session) -> u64 {
    let req = session.req_header();
    hash_request(
        hash_on,
        |name| req.headers.get(name).map(|v| v.as_bytes()),
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        req.uri.path(),
    )
}

/// The `request_hash` of a request: the same on the pingora path and the fast path.
pub(super) fn hash_request<'a>(
    hash_on: &HashOn,
    header: impl FnOnce(&http::HeaderName) -> Option<&'a [u8]>,
    client_ip: Option<std::net::IpAddr>,
    path: &str,
) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // A fixed-key hasher: the same input hashes the same in every process and thread.
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    match hash_on {
        HashOn::Header(name) => match header(name) {
            Some(v) => v.hash(&mut h),
            None => return 0,
        },
        HashOn::ClientIp => match client_ip {
            Some(ip) => ip.hash(&mut h),
            None => return 0,
        },
        HashOn::Path => path.hash(&mut h),
    }
    h.finish()
}

async fn answer(session: &mut Session, status: u16, body: String) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    header.insert_header("x-sluice-error", "1")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    /// A client that went away (the 499s) is the client's business, counted in
    /// `sluice_requests_total{status="499"}`: not an error line per request in the log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        error.esource() == &ErrorSource::Downstream
            && (matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            ) || h2_stream_cancelled(error))
    }

    /// No downstream modules: pingora's default adds a (disabled) response-compression module
    /// that still costs a context allocation and a filter call per request and per body chunk.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        if let Some((status, body)) = refuse(session, self.limits) {
            answer(session, status, body).await?;
            return Ok(true);
        }
        let router = self.router.load();
        let (host, path) = {
            let req = session.req_header();
            (request_host(req), req.uri.path())
        };
        let Some(route) = router.find(host, path).cloned() else {
            let body = format!("sluice: no route for host \"{host}\" and path \"{path}\"\n");
            ctx.local_answer = Some(LocalAnswer::NoRoute);
            answer(session, 404, body).await?;
            return Ok(true);
        };
        if route.slot.load().eligible_len() == 0 && !self.directory.is_ready() {
            // A process just started or upgraded: give the registry its first sync.
            self.directory.wait_ready(FIRST_SYNC_WAIT).await;
        }
        if route.slot.load().eligible_len() == 0 {
            ctx.local_answer = Some(LocalAnswer::NoInstance);
            let body = no_instance_body(&route);
            ctx.route = Some(route);
            answer(session, 503, body).await?;
            return Ok(true);
        }
        if let Some(limit) = route.spec.max_body_bytes {
            let declared = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                ctx.route = Some(route);
                answer(
                    session,
                    413,
                    format!("sluice: request body larger than {limit} bytes\n"),
                )
                .await?;
                return Ok(true);
            }
        }
        if let Some(hash_on) = route.hash_on() {
            ctx.request_hash = request_hash(hash_on, session);
        }
        ctx.route = Some(route);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(limit) = ctx.route.as_ref().and_then(|r| r.spec.max_body_bytes) else {
            return Ok(());
        };
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > limit {
            // A chunked body that outgrew the limit: refuse it (before any response, a 413).
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body too large",
            ));
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        // What is left of the route's total timeout bounds this try.
        let remaining = route
            .spec
            .total_timeout
            .map(|total| total.saturating_sub(ctx.start.elapsed()));
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(Error::explain(ErrorType::ReadTimedout, "total timeout spent").into_up());
        }
        let pool = route.slot.load();
        let request = PickRequest {
            hash: ctx.request_hash,
            exclude: ctx.tried(),
            headers: Some(&session.req_header().headers),
        };
        let picked = route
            .strategy
            .pick(&pool, &request)
            .filter(|&i| i < pool.eligible_len());
        let Some(index) = picked else {
            ctx.local_answer = Some(LocalAnswer::NoInstance);
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no eligible instance",
            ));
        };
        let member = pool.eligible(index);
        let Some(socket) = member.socket else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "instance has no address",
            ));
        };
        // Replacing the previous attempt's guard ends its in-flight count.
        ctx.attempt = Some(member.live.start_request());
        ctx.remember_tried(member.key);
        ctx.attempts += 1;
        ctx.upstream_addr = Some(socket);
        ctx.upstream_start = Some(Instant::now());
        let mut peer = route.upstream_tls.peer(&member.spec, socket);
        let cap = |d: std::time::Duration| remaining.map_or(d, |r| d.min(r));
        peer.options.connection_timeout = Some(cap(route.connect_timeout));
        peer.options.read_timeout = Some(cap(route.spec.timeout));
        peer.options.write_timeout = Some(cap(route.spec.timeout));
        peer.options.idle_timeout = Some(route.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(route) = &ctx.route {
            forward::strip_prefix(&route.spec, upstream_request)?;
        }
        forward::hop_by_hop(upstream_request)?;
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // The downstream header and the upstream one are separate: borrow the host, no copy.
        let host = request_host(session.req_header());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let proto = if tls { "https" } else { "http" };
        forward::forwarded_headers(upstream_request, client_ip, host, proto)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(attempt), Some(start)) = (&ctx.attempt, ctx.upstream_start) {
            let elapsed = start.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            attempt.live().observe_latency(elapsed);
            if upstream_response.status.is_server_error() {
                self.attempt_failed(ctx);
            } else {
                attempt.live().record_success();
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.attempt_failed(ctx);
        let retries = ctx.route.as_ref().map_or(0, |r| r.spec.retries);
        e.set_retry(may_retry(
            Failed::BeforeSending,
            session.req_header().method.is_idempotent(),
            true,
            ctx.attempts,
            retries,
        ));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        self.attempt_failed(ctx);
        let mut e = e.more_context(format!("peer: {peer}"));
        let retries = ctx.route.as_ref().map_or(0, |r| r.spec.retries);
        let failed = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::InvalidHTTPHeader => {
                Failed::Final
            }
            _ if e.esource() == &ErrorSource::Downstream => Failed::Final,
            _ => Failed::AfterSending,
        };
        // The same rule as the fast path's, whether the connection was new or reused.
        e.set_retry(may_retry(
            failed,
            session.req_header().method.is_idempotent(),
            !session.as_ref().retry_buffer_truncated(),
            ctx.attempts,
            retries,
        ));
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (code, reason) = match e.etype() {
            ErrorType::HTTPStatus(503) if ctx.local_answer == Some(LocalAnswer::NoInstance) => {
                let body = ctx
                    .route
                    .as_deref()
                    .map(no_instance_body)
                    .unwrap_or_default();
                (503, body)
            }
            ErrorType::HTTPStatus(413) => (413, "sluice: request body too large\n".to_string()),
            ErrorType::HTTPStatus(code) => (*code, failure::status_body(*code)),
            _ => match (e.esource(), &ctx.route) {
                (ErrorSource::Upstream, Some(route)) => {
                    let answer =
                        failure::answer(Failure::Upstream(e.etype()), route, ctx.upstream_addr);
                    (answer.status, answer.body)
                }
                (ErrorSource::Upstream, None) => (502, failure::status_body(502)),
                (ErrorSource::Downstream, _) => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, String::new())
                    }
                    _ => (400, "sluice: bad request\n".to_string()),
                },
                (ErrorSource::Internal | ErrorSource::Unset, _) => {
                    (500, "sluice: internal error\n".to_string())
                }
            },
        };
        if code > 0 && session.response_written().is_none() {
            if let Err(write_error) = answer(session, code, reason).await {
                tracing::debug!("could not send the error response: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // End the in-flight count now rather than whenever the context is dropped.
        let attempt = ctx.attempt.take();
        let elapsed = ctx.start.elapsed();
        let status = match session.response_written() {
            Some(resp) => resp.status.as_u16(),
            // The client went away before any answer (nginx's 499).
            None if e.is_some() => 499,
            None => 0,
        };
        if let Some(route) = &ctx.route {
            route.metrics.record(status, elapsed);
        }
        let access_log = match &ctx.route {
            Some(route) => route.access_log,
            None => self.router.load().access_log,
        };
        if access_log {
            let req = session.req_header();
            AccessLine {
                method: req.method.as_str(),
                host: request_host(req),
                path: req.uri.path(),
                status,
                route: ctx.route.as_ref().map_or("", |r| r.spec.name.as_str()),
                service: ctx.route.as_ref().map_or("", |r| r.spec.service.as_str()),
                instance: attempt.as_ref().map_or("", |a| a.live().id()),
                via: Via::Pingora,
                upstream: ctx.upstream_addr,
                upstream_elapsed: ctx.upstream_elapsed,
                total: elapsed,
                bytes_sent: session.as_downstream().body_bytes_sent() as u64,
                attempts: ctx.attempts,
                error: e.map(|e| e.etype().as_str()).unwrap_or(""),
            }
            .write();
        }
        drop(attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_h2_client_reset_under_added_context_is_a_cancel() {
        let reset = Error::explain(
            ErrorType::H2Error,
            "Client closed H2, reason: stream no longer needed",
        );
        let wrapped = reset.more_context("peer: addr: 127.0.0.1:1");
        assert!(h2_stream_cancelled(&wrapped));
        let other = Error::explain(ErrorType::H2Error, "while accepting");
        assert!(!h2_stream_cancelled(&other));
    }
}
