//! The pingora driver of the request engine: pingora's `ProxyHttp` callbacks call the
//! engine's steps (admit, try, feedback, finish) and carry the bytes; every decision is the
//! engine's (`gateway::engine`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::access_log::Via;
use super::engine::{Admission, Engine, PickFailure, RequestLine, RequestRecord, RequestView};
use super::failure::{self, Answer, Failure};
use super::retry::Failed;
use super::{forward, head_edit, Router};
use crate::strategy::RequestHeaders;

/// The gateway's request handler on pingora's path; the router is swapped whole on reload.
#[derive(Clone)]
pub struct Gateway {
    engine: Arc<Engine>,
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
    fields_over_limits(&session.req_header().headers, limits)
}

/// Why a request's fields are refused (431), if they are over the listener's limits.
pub(super) fn fields_over_limits(
    headers: &http::HeaderMap,
    limits: HeaderLimits,
) -> Option<(u16, String)> {
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

impl Gateway {
    pub fn new(
        router: Arc<ArcSwap<Router>>,
        limits: HeaderLimits,
        directory: Arc<crate::pool::Directory>,
        ejections: Option<crate::health::EjectionRequests>,
    ) -> Self {
        Self {
            engine: Arc::new(Engine::new(router, limits, directory, ejections)),
        }
    }

    /// The engine this driver steps, shared with the fast path.
    pub(super) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// The request's host without port: `Host` header, else the URI authority (HTTP/2).
pub(super) fn request_host(req: &RequestHeader) -> &str {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| without_userinfo(a.as_str())))
        .unwrap_or("");
    sluice_http1::fields::host_without_port(raw)
}

/// A URI authority (the `http` crate validated it) without its `userinfo@`: what
/// `Uri::host` gives before its port split, at a byte search's cost (`Uri::host` parses
/// the authority again, ~400 instructions an HTTP/2 stream, twice per stream).
fn without_userinfo(authority: &str) -> &str {
    match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    }
}

/// The peer's IP address.
fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// `https` when the client connection is TLS, else `http`.
fn proto(session: &Session) -> &'static str {
    if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    }
}

/// A request on pingora's path, or an HTTP/2 stream's on the fast path, as the engine reads
/// it.
pub(super) struct SessionView<'a> {
    req: &'a RequestHeader,
    client_ip: Option<IpAddr>,
    proto: &'static str,
}

impl<'a> SessionView<'a> {
    fn new(session: &'a Session, engine: &Engine) -> Self {
        Self::of(
            session.req_header(),
            client_ip(session),
            proto(session),
            engine,
        )
    }

    /// The view of `req` from the peer at `peer_ip`, over `proto`: the client's IP as the
    /// engine trusts `X-Forwarded-For`.
    pub(super) fn of(
        req: &'a RequestHeader,
        peer_ip: Option<IpAddr>,
        proto: &'static str,
        engine: &Engine,
    ) -> Self {
        let forwarded_for = || {
            req.headers
                .get(forward::X_FORWARDED_FOR.header())
                .map(|v| v.as_bytes())
        };
        Self {
            req,
            client_ip: engine.client_ip(peer_ip, forwarded_for),
            proto,
        }
    }
}

impl RequestHeaders for SessionView<'_> {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.req.headers.get(name).map(|v| v.as_bytes())
    }
}

impl RequestView for SessionView<'_> {
    fn method(&self) -> &str {
        self.req.method.as_str()
    }

    fn host(&self) -> &str {
        request_host(self.req)
    }

    fn path(&self) -> &str {
        self.req.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.req.uri.query()
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    fn declared_body_len(&self) -> Option<u64> {
        self.req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    fn proto(&self) -> &'static str {
        self.proto
    }

    fn each_field(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        for value in self.req.headers.get_all(name) {
            visit(value.as_bytes());
        }
    }

    fn each_field_of_all(&self, visit: &mut dyn FnMut(&str, &[u8])) {
        for (name, value) in &self.req.headers {
            visit(name.as_str(), value.as_bytes());
        }
    }
}

/// One of the gateway's own answers to `req` as the response header and body sent (in gRPC's
/// form to a gRPC call): on either path.
pub(super) fn answer_parts(
    req: &RequestHeader,
    answer: Answer,
) -> Result<(Box<ResponseHeader>, Bytes)> {
    let grpc_call = failure::is_grpc(
        req.headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    );
    let answer = if grpc_call {
        failure::as_grpc(answer)
    } else {
        answer
    };
    let mut header = ResponseHeader::build(answer.status, Some(3 + answer.headers.len()))?;
    let has_body = answer.has_body();
    if has_body {
        if !answer
            .headers
            .iter()
            .any(|(name, _)| name == http::header::CONTENT_TYPE)
        {
            header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        }
        header.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
    }
    if answer.flagged {
        header.insert_header("x-sluice-error", "1")?;
    }
    for (name, value) in answer.headers {
        header.append_header(name, value)?;
    }
    let body = if has_body { answer.body } else { Bytes::new() };
    Ok((Box::new(header), body))
}

/// Writes one of the gateway's own answers (in gRPC's form to a gRPC call).
async fn answer(session: &mut Session, answer: Answer) -> Result<()> {
    let (header, body) = answer_parts(session.req_header(), answer)?;
    session.write_response_header(header, false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestRecord;

    fn new_ctx(&self) -> Self::CTX {
        RequestRecord::new()
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
        if let Some((status, body)) = refuse(session, self.engine.limits) {
            ctx.error = "InvalidHTTPHeader";
            answer(session, Answer::plain(status, body, ctx.error)).await?;
            return Ok(true);
        }
        let admission = {
            let view = SessionView::new(session, &self.engine);
            let route = self
                .engine
                .route(view.host(), view.path(), view.method(), &view);
            self.engine.admit(ctx, route, &view).await
        };
        match admission {
            Admission::Forward => {
                let state = ctx.filters.as_mut();
                if let Some(mirror) = state.and_then(|s| s.mirror.take_if(|m| !m.awaits_body())) {
                    mirror.send(Some(b""));
                }
                Ok(false)
            }
            Admission::Answer(reply) => {
                let reply = ctx.dress(reply);
                ctx.error = reply.error;
                answer(session, reply).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(state) = ctx.filters.as_mut() {
            if let Some(mirror) = state.mirror.as_mut() {
                mirror.push_body(body.as_deref().unwrap_or_default());
                if end_of_stream {
                    if let Some(mirror) = state.mirror.take() {
                        mirror.send(None);
                    }
                }
            }
        }
        ctx.bytes_received += body.as_ref().map_or(0, |b| b.len() as u64);
        let Some(limit) = ctx.route.as_ref().and_then(|r| r.spec.max_body_bytes) else {
            return Ok(());
        };
        if ctx.bytes_received > limit {
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
        let backend = route.backend(ctx.backend);
        let pool = backend.slot.load();
        let view = SessionView::new(session, &self.engine);
        let picked = match self.engine.next_try(ctx, &pool, &view) {
            Ok(picked) => picked,
            Err(PickFailure::TotalTimeout) => {
                return Err(
                    Error::explain(ErrorType::ReadTimedout, "total timeout spent").into_up(),
                )
            }
            Err(failure) => {
                ctx.pick_failure = Some(failure);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no eligible instance",
                ));
            }
        };
        let mut peer = backend.upstream_tls.peer(&picked.member.spec, picked.addr);
        peer.options.connection_timeout = Some(ctx.timeouts.connect);
        peer.options.read_timeout = Some(ctx.timeouts.io);
        peer.options.write_timeout = Some(ctx.timeouts.io);
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
            let changed = forward::Changed::by(ctx.filters.as_deref());
            forward::rewrite_target(&route.spec, upstream_request, changed)?;
        }
        forward::hop_by_hop(upstream_request)?;
        forward::join_cookies(upstream_request)?;
        // The downstream header and the upstream one are separate: borrow the host, no copy.
        let host = request_host(session.req_header());
        let (client, proto) = (client_ip(session), proto(session));
        match &ctx.filters {
            Some(state) if !state.upstream.is_empty() => {
                let room = state.upstream.len() + forward::FORWARDED_FIELDS;
                head_edit::edit_request_map(upstream_request, room, |headers| {
                    head_edit::apply_edits(&state.upstream, headers)?;
                    forward::forwarded_headers(headers, client, host, proto)
                })
            }
            _ => forward::forwarded_headers(upstream_request, client, host, proto),
        }
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.engine
            .response_head(ctx, upstream_response.status.as_u16());
        match &ctx.filters {
            Some(state) if !state.response.is_empty() => {
                head_edit::edit_response_map(upstream_response, state.response.len(), |headers| {
                    head_edit::apply_edits(&state.response, headers)
                })
            }
            _ => Ok(()),
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent();
        let failed = if e.etype() == &ErrorType::ConnectTimedout {
            Failed::ConnectTimedOut
        } else {
            Failed::BeforeSending
        };
        e.set_retry(self.engine.try_failed(ctx, failed, idempotent, true));
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
        let mut e = e.more_context(format!("peer: {peer}"));
        let failed = match e.etype() {
            _ if e.esource() == &ErrorSource::Downstream => Failed::ClientLeft,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failed::TimedOut,
            ErrorType::InvalidHTTPHeader => Failed::Final,
            _ => Failed::AfterSending,
        };
        // The same rule as the fast path's, whether the connection was new or reused.
        let idempotent = session.req_header().method.is_idempotent();
        let replayable = !session.as_ref().retry_buffer_truncated();
        e.set_retry(self.engine.try_failed(ctx, failed, idempotent, replayable));
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let target = ctx.target();
        let reply = match e.etype() {
            ErrorType::HTTPStatus(503) if ctx.pick_failure.is_some() => {
                let failure = ctx.pick_failure.map_or(Failure::NoInstance, Failure::from);
                Some(failure::answer(failure, target, None))
            }
            ErrorType::HTTPStatus(413) => Some(Answer::plain(
                413,
                "sluice: request body too large\n".to_string(),
                "HTTPStatus",
            )),
            ErrorType::HTTPStatus(code) => Some(Answer::plain(
                *code,
                failure::status_body(*code),
                "HTTPStatus",
            )),
            _ => match e.esource() {
                ErrorSource::Upstream => Some(failure::answer(
                    Failure::Upstream(e.etype()),
                    target,
                    ctx.upstream,
                )),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Answer::plain(
                        400,
                        "sluice: bad request\n".to_string(),
                        "InvalidHTTPHeader",
                    )),
                },
                ErrorSource::Internal | ErrorSource::Unset => Some(Answer::plain(
                    500,
                    "sluice: internal error\n".to_string(),
                    "InternalError",
                )),
            },
        };
        let reply = reply.map(|r| ctx.dress(r));
        let code = reply.as_ref().map_or(0, |r| r.status);
        if let Some(reply) = reply {
            if session.response_written().is_none() {
                if let Err(write_error) = answer(session, reply).await {
                    tracing::debug!("could not send the error response: {write_error}");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.status = match session.response_written() {
            Some(resp) => resp.status.as_u16(),
            // The client went away before any answer (nginx's 499).
            None if e.is_some() => 499,
            None => 0,
        };
        if let Some(e) = e {
            ctx.error = e.etype().as_str();
        }
        ctx.bytes_sent = session.as_downstream().body_bytes_sent() as u64;
        let req = session.req_header();
        let line = RequestLine {
            method: req.method.as_str(),
            host: request_host(req),
            path: req.uri.path(),
        };
        self.engine.finish(ctx, line, Via::Pingora, Instant::now());
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

    #[test]
    fn the_host_of_an_authority_is_what_uri_host_gives_without_the_brackets() {
        for authority in [
            "ex.test",
            "ex.test:8080",
            "user@ex.test:8080",
            "user:pw@ex.test",
            "a@b@ex.test",
            "[::1]:443",
            "u@[2001:db8::1]",
            "127.0.0.1:9",
        ] {
            let mut req = RequestHeader::build("GET", b"/x", None).expect("valid");
            req.set_uri(format!("http://{authority}/x").parse().expect(authority));
            let via_uri = req.uri.host().expect(authority);
            let expected = via_uri.trim_start_matches('[').trim_end_matches(']');
            assert_eq!(request_host(&req), expected, "{authority}");
        }
    }
}
