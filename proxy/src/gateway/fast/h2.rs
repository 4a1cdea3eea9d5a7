//! The fast path's HTTP/2 driver. A client's HTTP/2 connection (`h2` by ALPN, or h2c by
//! prior knowledge) is read by pingora's HTTP/2 session (the `h2` crate: framing, HPACK, flow
//! control, its checks of each stream's head); each stream the fast path can serve goes
//! through the engine to a plain-`http` instance over the thread's kept HTTP/1.1 connections,
//! its response read by the codec. Any other stream — a body that is not declared small,
//! `Expect`, `CONNECT`, heads over the limits, a pool with no eligible instance yet or with
//! instances that are not plain `http` — is given whole to pingora's proxy before the engine
//! has seen it, as the HTTP/1.1 fast path hands a connection over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self as h2server, H2Accept, H2Options, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use sluice_http1::HandoffReason;
use tokio::io::AsyncReadExt;

use super::buffers::{RequestBuffers, READ_ROOM};
use super::handoff::Handoff;
use super::head::{self, H2Request, MAX_BUFFERED_BODY};
use super::{
    Answered, Asked, AttemptError, BodyState, FastPath, Peer, Tried, WatchTry, BODY_TIMEOUT,
};
use crate::gateway::access_log::Via;
use crate::gateway::engine::{Admission, RequestLine, RequestRecord};
use crate::gateway::failure::{self, Answer, Failure};
use crate::gateway::proxy::{answer_parts, fields_over_limits, SessionView};
use crate::gateway::{forward, Route};

/// A connection's budget of refused streams (pingora's own accept loop allows as many).
const MAX_REFUSED_STREAMS: usize = 32;

/// What serves the streams the fast path leaves: pingora's proxy.
pub trait StreamApp: Send + Sync + 'static {
    fn serve_stream(
        self: Arc<Self>,
        session: ServerSession,
        shutdown: ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// The HTTP/2 settings of its connections.
    fn h2_settings(&self) -> Option<H2Options>;
}

impl<A: HttpServerApp + Send + Sync + 'static> StreamApp for A {
    fn serve_stream(
        self: Arc<Self>,
        session: ServerSession,
        shutdown: ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            // An HTTP/2 stream is never reused: nothing comes back.
            let _ = self.process_new_http(session, &shutdown).await;
        })
    }

    fn h2_settings(&self) -> Option<H2Options> {
        self.h2_options()
    }
}

/// HTTP/2 connections served by the fast path, pingora's proxy taking the streams it leaves.
pub struct H2Service {
    fast: Arc<FastPath>,
    pingora: Arc<dyn StreamApp>,
}

/// A stream's pingora session, boxed from its accept on: it is large, and moves from the
/// accept loop into the stream's task and on into the futures that serve it.
type Session = Box<HttpSession>;

/// What became of a stream the fast path took.
enum StreamEnd {
    Done,
    /// Not the fast path's after all (its pool changed before the first try): pingora's.
    Handoff(Handoff, Session),
}

/// Who a connection's client is, read once per connection.
struct Client {
    peer: Peer,
    proto: &'static str,
}

/// A stream the fast path took: its connection's client and its declared body length
/// (`None`: no body).
struct StreamRequest {
    client: Arc<Client>,
    body_len: Option<u64>,
}

impl H2Service {
    pub fn new(fast: Arc<FastPath>, pingora: Arc<dyn StreamApp>) -> Self {
        Self { fast, pingora }
    }

    /// Serves the HTTP/2 connection on `stream` (its preface unread) until it closes: each
    /// stream in a task of its own on this thread. At the stop the client is told (GOAWAY)
    /// and the streams in flight finish.
    pub async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let peer = Peer {
            ip: stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            tls: stream.get_ssl_digest().is_some(),
        };
        let client = Arc::new(Client {
            peer,
            proto: if peer.tls { "https" } else { "http" },
        });
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let mut conn = match h2server::handshake(stream, self.pingora.h2_settings()).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!("HTTP/2 handshake failed: {e}");
                return;
            }
        };
        let mut stop = shutdown.clone();
        let mut stopping = false;
        let mut refused = 0;
        loop {
            let accepted = if stopping {
                HttpSession::from_h2_conn(&mut conn, digest.clone()).await
            } else {
                tokio::select! {
                    biased;
                    _ = stop.changed() => {
                        conn.graceful_shutdown();
                        stopping = true;
                        continue;
                    }
                    accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
                }
            };
            match accepted {
                Err(e) => {
                    // Clients often just close the connection: not worth more than debug.
                    tracing::debug!("HTTP/2 connection ended: {e}");
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    refused += 1;
                    if refused >= MAX_REFUSED_STREAMS {
                        tracing::debug!("HTTP/2 connection closed after {refused} refused streams");
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(session))) => {
                    // Boxed once here: the stream's task, and every future the session moves
                    // into after, then carry a pointer, not the session (~0.6 KiB each move).
                    let session = Box::new(session);
                    tokio::spawn(
                        self.clone()
                            .stream(session, client.clone(), shutdown.clone()),
                    );
                }
            }
        }
    }

    /// One stream: the fast path's, or pingora's. (A function returning its future, not an
    /// `async fn`, so each argument is kept once in the task, not twice.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps each argument twice in its future: once captured, once bound"
    )]
    fn stream(
        self: Arc<Self>,
        session: Session,
        client: Arc<Client>,
        shutdown: ShutdownWatch,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let handoff = match self.fast.take_stream(&session) {
                Err(reason) => Some((reason, session)),
                Ok((route, body_len)) => {
                    let request = StreamRequest { client, body_len };
                    // Boxed: the stream's task (moved whole into its cell at the spawn) holds
                    // a pointer, not every state of the request's engine, tries and relay.
                    match Box::pin(self.fast.serve_stream(session, route, request)).await {
                        StreamEnd::Done => None,
                        StreamEnd::Handoff(reason, session) => Some((reason, session)),
                    }
                }
            };
            if let Some((reason, session)) = handoff {
                self.fast.handoffs.count(reason);
                tracing::debug!(
                    reason = reason.as_str(),
                    "fast path hands the HTTP/2 stream to pingora"
                );
                self.pingora
                    .clone()
                    .serve_stream(ServerSession::new_http2(*session), shutdown)
                    .await;
            }
        }
    }
}

/// An HTTP/2 stream's client: its reset of the stream is its giving up.
struct WatchStream<'s>(&'s mut Session);

impl WatchTry for WatchStream<'_> {
    type Head = super::stream_head::StreamHead;

    fn watch<'a>(
        &'a mut self,
        exchange: Pin<&'a mut (dyn Future<Output = Tried> + Send + 'a)>,
        due: tokio::time::Instant,
        _early: &'a mut Vec<u8>,
    ) -> impl Future<Output = Tried> + Send + 'a {
        let session = &mut *self.0;
        async move {
            tokio::select! {
                biased;
                exchanged = tokio::time::timeout_at(due, exchange) => {
                    exchanged.unwrap_or(Err(AttemptError::TimedOut))
                }
                // The client reset the stream: it gave up.
                _ = session.idle() => Err(AttemptError::ClientGone),
            }
        }
    }
}

/// The body length a stream's head declares (pingora refused conflicting ones).
fn declared_length(session: &HttpSession) -> Option<u64> {
    let mut length = None;
    for value in session
        .req_header()
        .headers
        .get_all(http::header::CONTENT_LENGTH)
    {
        length = sluice_http1::fields::fold_content_length(length, value.as_bytes()).ok();
    }
    length
}

/// The stream's authority: `:authority`, else `Host` (pingora refused a stream with neither
/// or with both disagreeing).
fn authority(req: &pingora::http::RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// The stream's host without port, as `request_host` reads it for both protocols: pingora
/// refused a stream whose `Host` and `:authority` disagree or carry userinfo, so the
/// authority (where HTTP/2 clients put it) is read first, without a lookup of a `Host` field
/// most streams do not have.
fn stream_host(req: &pingora::http::RequestHeader) -> &str {
    sluice_http1::fields::host_without_port(authority(req))
}

impl FastPath {
    /// Whether the fast path serves this stream (its route, `None` for none, and its body
    /// length), or why pingora does: decided before the engine sees it, so its filters run
    /// once, on one path.
    fn take_stream(
        &self,
        session: &HttpSession,
    ) -> Result<(Option<Arc<Route>>, Option<u64>), Handoff> {
        let ended = session.is_body_done();
        let declared = declared_length(session);
        let req = session.req_header();
        if req.method == http::Method::CONNECT {
            return Err(Handoff::Request(HandoffReason::TargetForm));
        }
        if req.headers.contains_key(http::header::EXPECT) {
            return Err(Handoff::Request(HandoffReason::Expect));
        }
        if fields_over_limits(&req.headers, self.engine.limits).is_some() {
            return Err(Handoff::Request(HandoffReason::HeaderLimits));
        }
        let body_len = match declared {
            // HEADERS with END_STREAM: no body (the h2 crate refuses a declared length that
            // the stream's DATA does not match).
            _ if ended => declared,
            Some(n) if n <= MAX_BUFFERED_BODY => Some(n),
            Some(_) => return Err(Handoff::Request(HandoffReason::LargeBody)),
            // A body of unknown length: streamed by pingora.
            None => return Err(Handoff::Request(HandoffReason::ChunkedBody)),
        };
        let route = self.route_of(
            stream_host(req),
            req.uri.path(),
            req.method.as_str(),
            &req.headers,
        )?;
        Ok((route, body_len))
    }

    /// Serves a stream the fast path took: the body read whole (it is small), admission,
    /// the tries and the relay, then the record.
    async fn serve_stream(
        &self,
        mut session: Session,
        route: Option<Arc<Route>>,
        request: StreamRequest,
    ) -> StreamEnd {
        let mut record = RequestRecord::new();
        let timeout = route.as_ref().map_or(BODY_TIMEOUT, |r| r.spec.timeout);
        let body = match request.body_len {
            Some(n) if n > 0 => match read_body(&mut session, n, timeout).await {
                Ok(body) => body,
                Err(error) => {
                    if error == "ReadTimedout" {
                        let text = super::body_timeout_text(timeout);
                        let reply = Answer::plain(408, text, error);
                        self.answer_stream(&mut session, &mut record, reply).await;
                    }
                    // Else the client reset the stream: a 499.
                    record.error = error;
                    return self.finished(&session, &mut record);
                }
            },
            _ => Bytes::new(),
        };
        record.bytes_received = body.len() as u64;
        let client = &request.client;
        let admission = {
            let req = session.req_header();
            let view = SessionView::of(req, client.peer.ip, client.proto, &self.engine);
            self.engine.admit(&mut record, route, &view).await
        };
        match admission {
            Admission::Answer(reply) => {
                self.answer_stream(&mut session, &mut record, reply).await;
                self.finished(&session, &mut record)
            }
            Admission::Forward => {
                if let Some(mirror) = record.filters.as_mut().and_then(|s| s.mirror.take()) {
                    mirror.send(Some(&body));
                }
                let mut bufs = RequestBuffers::lend();
                let end = self
                    .forward_stream(session, &request, &body, &mut bufs, &mut record)
                    .await;
                bufs.give_back();
                end
            }
        }
    }

    /// Picks, tries (and retries), and relays the response of an admitted stream; finishes
    /// its record unless it is handed over.
    async fn forward_stream(
        &self,
        mut session: Session,
        request: &StreamRequest,
        body: &[u8],
        bufs: &mut RequestBuffers,
        record: &mut RequestRecord,
    ) -> StreamEnd {
        let Some(route) = record.route.clone() else {
            self.fail_stream(&mut session, record, Failure::NoInstance)
                .await;
            return self.finished(&session, record);
        };
        let idempotent = session.req_header().method.is_idempotent();
        let head_request = session.req_header().method == http::Method::HEAD;
        {
            let req = session.req_header();
            let changed = forward::Changed::by(record.filters.as_deref());
            let stripped =
                forward::upstream_target(&route.spec, req.uri.path(), req.uri.query(), changed);
            let target = match &stripped {
                Some(target) => target.as_str(),
                None => req.uri.path_and_query().map_or("/", |p| p.as_str()),
            };
            let view = H2Request {
                head: req,
                authority: authority(req),
                body_len: request.body_len,
            };
            bufs.request.clear();
            head::write_upstream_request_h2(
                &mut bufs.request,
                &view,
                target,
                request.client.peer.ip,
                request.client.proto,
                record.filters.as_ref().map(|s| &s.upstream),
            );
            bufs.request.extend_from_slice(body);
        }
        let mut last_error = None;
        loop {
            let pool = route.backend(record.backend).slot.load();
            if !pool.all_plain_http() {
                // As on HTTP/1.1: a first try goes to pingora unless the filters ran or the
                // body was read; a retry ends with the error that asked for it.
                match last_error {
                    None if record.filters.is_none() && body.is_empty() => {
                        return StreamEnd::Handoff(Handoff::PoolChanged, session)
                    }
                    None => {
                        self.fail_stream(&mut session, record, Failure::PoolChanged)
                            .await
                    }
                    Some(e) => self.fail_stream_upstream(&mut session, record, e).await,
                }
                return self.finished(&session, record);
            }
            let picked = match self
                .engine
                .next_try(record, &pool, &session.req_header().headers)
            {
                Ok(picked) => picked,
                Err(failure) => {
                    self.fail_stream(&mut session, record, failure.into()).await;
                    return self.finished(&session, record);
                }
            };
            let addr = picked.addr;
            // Not held across the exchange's awaits: a guard takes one of arc-swap's few debt
            // slots per thread, and with more requests in flight on the shard than slots every
            // further load (of any `ArcSwap`) would take its slow path.
            drop(pool);
            let asked = Asked {
                head_request,
                websocket: false,
                client_close: false,
            };
            let exchanged = self
                .try_instance(
                    addr,
                    idempotent,
                    asked,
                    record,
                    bufs,
                    &mut WatchStream(&mut session),
                )
                .await;
            match exchanged {
                Ok((up, Answered::Response(response))) => {
                    self.engine.response_head(record, response.status);
                    self.relay_stream(&mut session, up, addr, &route, response, bufs, record)
                        .await;
                    return self.finished(&session, record);
                }
                Ok((_, Answered::Switched { .. })) => {
                    // Never asked for (no WebSocket over HTTP/2 here): the codec refuses it.
                    self.fail_stream_upstream(&mut session, record, AttemptError::BadResponse)
                        .await;
                    return self.finished(&session, record);
                }
                Err(e) => {
                    let retry = self.engine.try_failed(record, e.failed(), idempotent, true);
                    if let AttemptError::ClientGone = e {
                        record.error = "ConnectionClosed";
                        return self.finished(&session, record);
                    }
                    if !retry {
                        self.fail_stream_upstream(&mut session, record, e).await;
                        return self.finished(&session, record);
                    }
                    last_error = Some(e);
                }
            }
        }
    }

    /// Sends the response whose head the codec gave (in `bufs.stream_head`) and its body as DATA
    /// (a chunked body decoded); keeps the upstream connection when the response ended
    /// cleanly. A failure after the head resets the stream: the client sees it incomplete.
    #[allow(clippy::too_many_arguments)]
    async fn relay_stream(
        &self,
        session: &mut HttpSession,
        mut up: super::upstream::Upstream,
        addr: std::net::SocketAddr,
        route: &Route,
        response: sluice_http1::ResponseHead,
        bufs: &mut RequestBuffers,
        record: &mut RequestRecord,
    ) {
        let timeout = record.timeouts.io;
        let header = match bufs.stream_head.take_header() {
            Some(header) => header,
            None => {
                self.fail_stream_upstream(session, record, AttemptError::BadResponse)
                    .await;
                return;
            }
        };
        let mut body = BodyState::new(response.framing);
        let mut reusable = response.upstream_keepalive;
        // The set's body buffer: what h2 sent of the last response lent it is reclaimed, not
        // allocated again with a shared state of its own per response.
        let data = &mut bufs.stream_body;
        let first = &bufs.response[response.head_len..];
        let taken = match body.take_decoded(first, data) {
            Ok(n) => n,
            Err(_) => {
                // Nothing reached the client yet: it gets a 502, not a truncated response.
                self.fail_stream_upstream(session, record, AttemptError::BadResponse)
                    .await;
                return;
            }
        };
        reusable &= taken == first.len();
        session.set_write_timeout(Some(timeout));
        let ended = body.is_done() && data.is_empty();
        if session.write_response_header(header, ended).is_err() {
            record.error = "WriteError";
            return;
        }
        if !data.is_empty() && !send_data(session, record, data, body.is_done()).await {
            return;
        }
        while !body.is_done() {
            bufs.response.clear();
            bufs.response.reserve(READ_ROOM);
            let read = tokio::time::timeout(timeout, up.stream.read_buf(&mut bufs.response));
            let n = match read.await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return broken(session, record, "ReadError"),
                Err(_) => return broken(session, record, "ReadTimedout"),
            };
            if n == 0 {
                if body.ends_at_close() {
                    break;
                }
                return broken(session, record, "ConnectionClosed");
            }
            let taken = match body.take_decoded(&bufs.response, data) {
                Ok(n) => n,
                Err(_) => return broken(session, record, "InvalidHTTPHeader"),
            };
            reusable &= taken == bufs.response.len();
            if data.is_empty() && !body.is_done() {
                // Chunk framing alone: nothing to send yet.
                continue;
            }
            if !send_data(session, record, data, body.is_done()).await {
                return;
            }
        }
        if session.finish().is_err() {
            record.error = "WriteError";
            return;
        }
        if reusable && !body.ends_at_close() {
            let since = record.try_start.unwrap_or(record.start);
            super::upstream::put_idle(addr, up.stream, since, self.max_idle, route.idle_timeout);
        }
    }

    /// Answers a stream whose last try failed with `error`.
    async fn fail_stream_upstream(
        &self,
        session: &mut HttpSession,
        record: &mut RequestRecord,
        error: AttemptError,
    ) {
        let kind = error.kind();
        self.fail_stream(session, record, Failure::Upstream(&kind))
            .await
    }

    /// Answers a stream no instance could serve, as the other paths do.
    async fn fail_stream(
        &self,
        session: &mut HttpSession,
        record: &mut RequestRecord,
        failure: Failure<'_>,
    ) {
        let reply = failure::answer(failure, record.target(), record.upstream);
        self.answer_stream(session, record, reply).await
    }

    /// Sends one of the gateway's own answers on the stream.
    async fn answer_stream(
        &self,
        session: &mut HttpSession,
        record: &mut RequestRecord,
        reply: Answer,
    ) {
        let reply = record.dress(reply);
        record.status = reply.status;
        record.error = reply.error;
        let Ok((header, body)) = answer_parts(session.req_header(), reply) else {
            record.error = "InternalError";
            return;
        };
        let empty = body.is_empty();
        if session.write_response_header(header, empty).is_err() {
            return;
        }
        if !empty {
            record.bytes_sent += body.len() as u64;
            // A client gone meanwhile: nothing more to do for it.
            let _ = session.write_body(body, true).await;
        }
    }

    /// Finishes the record of a stream the fast path served.
    fn finished(&self, session: &HttpSession, record: &mut RequestRecord) -> StreamEnd {
        let line = line_of(session);
        self.engine.finish(record, line, Via::Fast, Instant::now());
        StreamEnd::Done
    }
}

/// The stream's request line as the access log shows it.
fn line_of(session: &HttpSession) -> RequestLine<'_> {
    let req = session.req_header();
    RequestLine {
        method: req.method.as_str(),
        host: stream_host(req),
        path: req.uri.path(),
    }
}

/// Sends what `data` holds as DATA (END_STREAM when `end`), counted as sent; false (the
/// record says why) when the client is gone.
async fn send_data(
    session: &mut HttpSession,
    record: &mut RequestRecord,
    data: &mut BytesMut,
    end: bool,
) -> bool {
    record.bytes_sent += data.len() as u64;
    if session
        .write_body(data.split().freeze(), end)
        .await
        .is_err()
    {
        record.error = "WriteError";
        return false;
    }
    true
}

/// The upstream failed in the middle of a response: the stream is reset (when the session is
/// dropped unfinished), so the client sees it incomplete.
fn broken(session: &mut HttpSession, record: &mut RequestRecord, error: &'static str) {
    record.error = error;
    session.shutdown();
}

/// Reads a stream's whole body of `len` bytes within `timeout`; the error names why not.
async fn read_body(
    session: &mut HttpSession,
    len: u64,
    timeout: Duration,
) -> Result<Bytes, &'static str> {
    let mut body = BytesMut::with_capacity(len as usize);
    let read = async {
        while let Some(data) = session.read_body_bytes().await.map_err(|_| "ReadError")? {
            body.extend_from_slice(&data);
            if body.len() as u64 > len {
                return Err("InvalidHTTPHeader");
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok(body.freeze()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err("ReadTimedout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn stream(uri: &str, host: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("valid");
        req.set_uri(uri.parse().expect("valid"));
        if let Some(host) = host {
            req.insert_header("host", host).expect("valid");
        }
        req
    }

    #[test]
    fn a_stream_host_is_its_authority_else_its_host_field_without_port() {
        assert_eq!(
            stream_host(&stream("http://example.com:8443/a", None)),
            "example.com"
        );
        assert_eq!(stream_host(&stream("/a", Some("api.test:80"))), "api.test");
        assert_eq!(stream_host(&stream("http://[::1]:9/", None)), "::1");
        assert_eq!(stream_host(&stream("/a", None)), "");
        // What `request_host` reads for a stream pingora let through (the two agree).
        let both = stream("http://example.com:8443/a", Some("example.com:8443"));
        assert_eq!(
            stream_host(&both),
            crate::gateway::proxy::request_host(&both)
        );
    }
}
