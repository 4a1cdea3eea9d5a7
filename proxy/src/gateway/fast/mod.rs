//! The fast path: the HTTP/1.1 driver of the request engine for plain HTTP/1.1 requests to
//! plain-`http` instances, on the shard's thread (the strict codec of `sluice_http1`,
//! per-thread upstream keep-alive connections, one write per response in the common case).
//! A WebSocket handshake is served here too: after the upstream's `101` the connection is a
//! tunnel that holds no buffer while neither side sends. Everything else — HTTP/2, HTTP/1.0,
//! other upgrades, `Expect`, chunked or large request bodies, TLS or h2c instances, a pool
//! with no eligible instance yet, heads over the limits — is handed to pingora untouched,
//! before the engine has seen it.
//!
//! Every decision is the engine's (`gateway::engine`): admission, filters, picks, retries,
//! timeouts, failure answers, metrics and the access log. This module carries bytes.

mod buffers;
mod h2;
mod handoff;
mod head;
mod stream_head;
mod upstream;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use sluice_http1::response::{parse_response, parse_response_edited, parse_upgrade_response};
use sluice_http1::{
    ChunkedTracker, Framing, HeadEdit, HeadOut, ParsedResponse, RequestError, ResponseHead,
    Unedited, UpgradeResponse,
};

pub(crate) use self::buffers::{read_client, release_client};
use self::buffers::{RequestBuffers, READ_ROOM};
pub use self::h2::{H2Service, StreamApp};
use self::handoff::{Handoff, HandoffCounters};
use self::head::{ParsedRequest, RequestHead};
use self::stream_head::StreamHead;
use self::upstream::{ConnectError, Upstream};
use super::access_log::Via;
use super::engine::filters::HeaderEdits;
use super::engine::{Admission, Engine, RequestLine, RequestRecord, RequestView};
use super::failure::{self, Answer, Failure};
use super::proxy::Gateway;
use super::retry::Failed;
use super::{forward, Route};
use crate::strategy::RequestHeaders;

/// How long a client connection may sit idle between requests (pingora's default).
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Longest wait for the rest of a request body when no route sets a timeout for it.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A client connection as the fast path sees it: bytes both ways. A cleartext connection is
/// served on its bare socket (pingora's stream is built only if it is handed over); a TLS one
/// as pingora's stream.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> ClientIo for T {}

/// Who the client is: its address and whether it came over TLS (read once per connection).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: Option<IpAddr>,
    pub tls: bool,
}

/// The fast path of one proxy: the engine, and the upstream pool settings.
#[derive(Clone)]
pub struct FastPath {
    engine: Arc<Engine>,
    /// Idle upstream connections kept per address and thread.
    max_idle: usize,
    /// Most bytes a request head may take before it is left to pingora (which answers 431).
    max_head_bytes: usize,
    handoffs: HandoffCounters,
}

/// What became of a connection.
pub enum Served {
    /// The request at the start of the buffer is pingora's: hand the connection over.
    Handoff,
    /// The connection is done with.
    Closed,
}

/// A request on the fast path as the engine reads it: the codec's fields in place.
struct FastView<'r, 'h, 'b> {
    head: &'r RequestHead<'h, 'b>,
    client_ip: Option<IpAddr>,
    proto: &'static str,
}

/// A request head's fields, for the route lookup made before the view exists.
struct FieldsOf<'r, 'h, 'b>(&'r RequestHead<'h, 'b>);

impl RequestHeaders for FieldsOf<'_, '_, '_> {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.0.field(name)
    }
}

impl RequestHeaders for FastView<'_, '_, '_> {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.head.field(name)
    }
}

impl RequestView for FastView<'_, '_, '_> {
    fn method(&self) -> &str {
        self.head.method
    }

    fn host(&self) -> &str {
        self.head.host
    }

    fn path(&self) -> &str {
        self.head.path()
    }

    fn query(&self) -> Option<&str> {
        self.head.query()
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    fn declared_body_len(&self) -> Option<u64> {
        Some(self.head.body_len)
    }

    fn proto(&self) -> &'static str {
        self.proto
    }

    fn each_field(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        for field in self.head.fields {
            if field.name.eq_ignore_ascii_case(name) {
                visit(field.value);
            }
        }
    }

    fn each_field_of_all(&self, visit: &mut dyn FnMut(&str, &[u8])) {
        for field in self.head.fields {
            visit(field.name, field.value);
        }
    }
}

impl FastPath {
    pub fn new(gateway: Gateway, max_idle: usize, max_head_bytes: usize) -> Self {
        let engine = gateway.engine().clone();
        Self {
            handoffs: HandoffCounters::new(engine.metrics()),
            engine,
            max_idle,
            max_head_bytes,
        }
    }

    /// Leaves the request at the start of the buffer to pingora, counted by reason.
    fn hand_off(&self, reason: Handoff) -> Served {
        self.handoffs.count(reason);
        tracing::debug!(
            reason = reason.as_str(),
            "fast path hands the request to pingora"
        );
        Served::Handoff
    }

    /// Serves requests from `stream`, whose first bytes are in `buf`, until the connection
    /// closes or a request is not the fast path's (then `buf` holds it, unread by anyone).
    /// The connection's state is made before the `async move` block, which keeps it once (an
    /// `async fn` would keep its arguments beside it while the connection idles).
    pub fn serve<'a>(
        &'a self,
        stream: &'a mut dyn ClientIo,
        peer: Peer,
        buf: &'a mut Vec<u8>,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Served> + Send + 'a {
        let mut client = Client {
            ip: peer.ip,
            tls: peer.tls,
            stream,
            deadline: LazyDeadline::default(),
        };
        let mut idle = Idle::new(shutdown);
        async move {
            let mut lent = None;
            loop {
                // The step is matched as a temporary and the idle wait comes after the match,
                // so an idle connection's state does not keep the step.
                let idle_next = match Box::pin(self.step(
                    buf,
                    &mut client,
                    &mut lent,
                    shutdown,
                    &mut idle.last_active,
                ))
                .await
                {
                    Step::Handoff(reason) => return self.hand_off(reason),
                    Step::Next(end) => {
                        buf.drain(..end);
                        if let Some(mut set) = lent.take() {
                            // What the client sent while its request was served comes next.
                            buf.append(&mut set.early);
                            set.give_back();
                        }
                        buf.is_empty()
                    }
                    Step::ReadHead => {
                        let due = tokio::time::Instant::now() + KEEPALIVE;
                        if client.read_by(buf, due).await.is_err() {
                            return Served::Closed;
                        }
                        false
                    }
                    Step::ReadBody(end, timeout) => {
                        // One await here, so what the body's reads keep is the read's own
                        // state, not the connection's for every state it is in.
                        if !client.read_body(buf, end, timeout).await {
                            return Served::Closed;
                        }
                        false
                    }
                    Step::Refuse(error) => {
                        // Rare: boxed, so the connection's state stays small.
                        Box::pin(self.refuse(&mut client, error)).await;
                        return Served::Closed;
                    }
                    Step::Close => {
                        if let Some(mut set) = lent.take() {
                            // Closing: what the client sent after this request is not served.
                            set.early.clear();
                            set.give_back();
                        }
                        client.close().await;
                        return Served::Closed;
                    }
                    Step::Tunnel(end, tunnel) => {
                        // What the client sent after its handshake goes first.
                        buf.drain(..end);
                        if let Some(mut set) = lent.take() {
                            buf.append(&mut set.early);
                            set.give_back();
                        }
                        Box::pin(self.tunnel(&mut client, buf, tunnel)).await;
                        return Served::Closed;
                    }
                };
                if idle_next && !idle.wait_request(&mut client, buf).await {
                    return Served::Closed;
                }
            }
        }
    }

    /// Moves bytes both ways between the client and the upstream that switched to WebSocket,
    /// `pending` (the client's bytes that came with or after its handshake) first, until both
    /// sides close or either fails; then the request's record (101, the bytes each way, the
    /// tunnel's whole time). No buffer is held while neither side sends: each read borrows
    /// one from the thread's free list for the poll that finds bytes, as an idle keep-alive
    /// connection does. No idle limit (as on pingora's path): a tunnel lasts as long as its
    /// two ends keep it.
    async fn tunnel(
        &self,
        client: &mut Client<'_>,
        pending: &mut Vec<u8>,
        mut tunnel: Box<Tunnel>,
    ) {
        let Tunnel {
            up,
            record,
            method,
            host,
            path,
        } = &mut *tunnel;
        let Some(record) = record.as_mut() else {
            return;
        };
        let (mut upward, mut downward) = (0u64, 0u64);
        let error = relay_tunnel(client.stream, up, pending, &mut upward, &mut downward).await;
        record.bytes_received += upward;
        record.bytes_sent += downward;
        if let Err(error) = error {
            record.error = error;
        }
        let line = RequestLine { method, host, path };
        self.engine.finish(record, line, Via::Fast, Instant::now());
        client.close().await;
    }

    /// What to do with what `buf` holds: read more, refuse it, hand it over, or serve the
    /// request it starts (then `last_active` is when it ended). The caller boxes it, so the
    /// state of a request in flight (its field slots, the engine's and the relay's futures)
    /// is allocated while the request lasts, not for the connection's life: an idle
    /// connection's task stays small.
    async fn step(
        &self,
        buf: &[u8],
        client: &mut Client<'_>,
        lent: &mut Option<Box<RequestBuffers>>,
        shutdown: &ShutdownWatch,
        last_active: &mut Instant,
    ) -> Step {
        let mut fields = head::field_slots();
        let req = match head::parse(buf, &mut fields, self.engine.limits) {
            ParsedRequest::Handoff(reason) => return Step::Handoff(Handoff::Request(reason)),
            ParsedRequest::Invalid(error) => return Step::Refuse(error),
            ParsedRequest::Partial if buf.len() > self.max_head_bytes => {
                return Step::Handoff(Handoff::HeadTooLarge)
            }
            ParsedRequest::Partial => return Step::ReadHead,
            ParsedRequest::Plain(req) => req,
        };
        let route = match self.route_for(&req) {
            Ok(route) => route,
            Err(reason) => return Step::Handoff(reason),
        };
        // Bounded by MAX_BUFFERED_BODY: fits a usize.
        let end = req.head_len + req.body_len as usize;
        if buf.len() < end {
            let timeout = route.as_ref().map_or(BODY_TIMEOUT, |r| r.spec.timeout);
            return Step::ReadBody(end, timeout);
        }
        let body = &buf[req.head_len..end];
        let (outcome, ended) = self
            .serve_request(&req, body, route, client, lent, shutdown)
            .await;
        *last_active = ended;
        match outcome {
            Outcome::Handoff(reason) => Step::Handoff(reason),
            Outcome::KeepAlive => Step::Next(end),
            Outcome::Close => Step::Close,
            Outcome::Tunnel(tunnel) => Step::Tunnel(end, tunnel),
        }
    }

    /// The route of a request the fast path serves (`None`: no route, the engine answers
    /// 404), or why pingora serves it: its pool has no eligible instance yet (pingora waits
    /// for the registry's first sync), or instances that are not plain `http`. Decided before
    /// the engine sees the request, so its filters run once, on one path.
    fn route_for(&self, req: &RequestHead<'_, '_>) -> Result<Option<Arc<Route>>, Handoff> {
        self.route_of(req.host, req.path(), req.method, &FieldsOf(req))
    }

    /// [`route_for`](Self::route_for) of a request read by any parser.
    fn route_of(
        &self,
        host: &str,
        path: &str,
        method: &str,
        fields: &dyn RequestHeaders,
    ) -> Result<Option<Arc<Route>>, Handoff> {
        let Some(route) = self.engine.route(host, path, method, fields) else {
            return Ok(None);
        };
        let pool = route.own().slot.load();
        if pool.eligible_len() == 0 {
            return Err(Handoff::NoEligibleInstance);
        }
        // Every backend a filter may choose, so the choice never needs the other path.
        if !pool.all_plain_http() || !route.others_plain_http() {
            return Err(Handoff::NotPlainHttp);
        }
        Ok(Some(route))
    }

    /// Answers a request no one may forward (RFC 9112: 400, or 501 for a transfer coding it
    /// does not know) and closes: what follows its head cannot be framed.
    async fn refuse(&self, client: &mut Client<'_>, error: RequestError) {
        let mut record = RequestRecord::new();
        record.status = error.status();
        record.error = "InvalidHTTPHeader";
        let body = format!("sluice: bad request: {error}\n");
        answer(client.stream, record.status, &body).await;
        tracing::debug!(status = record.status, "request refused: {error}");
        let line = RequestLine {
            method: "",
            host: "",
            path: "",
        };
        self.engine
            .finish(&mut record, line, Via::Fast, Instant::now());
        client.close().await;
    }

    /// Serves one request through the engine: admission, then the tries and the relay, then
    /// the record (metrics, access log).
    async fn serve_request(
        &self,
        req: &RequestHead<'_, '_>,
        body: &[u8],
        route: Option<Arc<Route>>,
        client: &mut Client<'_>,
        lent: &mut Option<Box<RequestBuffers>>,
        shutdown: &ShutdownWatch,
    ) -> (Outcome, Instant) {
        let mut record = RequestRecord::new();
        record.bytes_received = body.len() as u64;
        let view = FastView {
            head: req,
            client_ip: self
                .engine
                .client_ip(client.ip, || req.field("x-forwarded-for")),
            proto: client.proto(),
        };
        let outcome = match self.engine.admit(&mut record, route, &view).await {
            Admission::Answer(reply) => {
                let close = req.close || *shutdown.borrow();
                self.reply(client, &mut record, reply, close).await
            }
            Admission::Forward => {
                if let Some(mirror) = record.filters.as_mut().and_then(|s| s.mirror.take()) {
                    // The fast path has the whole body before the engine admits a request.
                    mirror.send(Some(body));
                }
                // Given back by `serve` once the bytes the client sent meanwhile are moved.
                let bufs = lent.insert(RequestBuffers::lend());
                self.forward(&view, body, client, bufs, shutdown, &mut record)
                    .await
            }
        };
        let ended = Instant::now();
        match outcome {
            Outcome::Handoff(_) => (outcome, ended),
            Outcome::Tunnel(mut tunnel) => {
                // Finished when the tunnel ends.
                tunnel.record = Some(record);
                tunnel.method = req.method.to_string();
                tunnel.host = req.host.to_string();
                tunnel.path = req.path().to_string();
                (Outcome::Tunnel(tunnel), ended)
            }
            _ => {
                let line = RequestLine {
                    method: req.method,
                    host: req.host,
                    path: req.path(),
                };
                self.engine.finish(&mut record, line, Via::Fast, ended);
                (outcome, ended)
            }
        }
    }

    /// Picks, tries (and retries), and relays the response.
    async fn forward(
        &self,
        view: &FastView<'_, '_, '_>,
        body: &[u8],
        client: &mut Client<'_>,
        bufs: &mut RequestBuffers,
        shutdown: &ShutdownWatch,
        record: &mut RequestRecord,
    ) -> Outcome {
        let req = view.head;
        let Some(route) = record.route.clone() else {
            return self.fail(client, record, Failure::NoInstance).await;
        };
        let client_close = req.close || *shutdown.borrow();
        let changed = forward::Changed::by(record.filters.as_deref());
        let stripped = forward::upstream_target(&route.spec, req.path(), req.query(), changed);
        bufs.request.clear();
        head::write_upstream_request(
            &mut bufs.request,
            req,
            stripped.as_deref().unwrap_or(req.target),
            client.ip,
            client.proto(),
            record.filters.as_ref().map(|s| &s.upstream),
        );
        bufs.request.extend_from_slice(body);
        let mut last_error = None;
        loop {
            let pool = route.backend(record.backend).slot.load();
            if !pool.all_plain_http() {
                // The pool changed under the request. A first try goes to pingora unless the
                // filters already ran (they run once per request); a retry ends with the
                // error that asked for it.
                return match last_error {
                    None if record.filters.is_none() => Outcome::Handoff(Handoff::PoolChanged),
                    None => self.fail(client, record, Failure::PoolChanged).await,
                    Some(e) => self.fail_upstream(client, record, e).await,
                };
            }
            let picked = match self.engine.next_try(record, &pool, view) {
                Ok(picked) => picked,
                Err(failure) => return self.fail(client, record, failure.into()).await,
            };
            let addr = picked.addr;
            // Not held across the exchange's awaits: a guard takes one of arc-swap's few debt
            // slots per thread, and with more requests in flight on the shard than slots every
            // further load (of any `ArcSwap`) would take its slow path.
            drop(pool);
            let asked = Asked {
                head_request: req.is_head(),
                websocket: req.websocket,
                client_close,
            };
            let exchanged = self
                .try_instance(
                    addr,
                    req.idempotent(),
                    asked,
                    record,
                    bufs,
                    &mut WatchClient(client),
                )
                .await;
            match exchanged {
                Ok((upstream, Answered::Response(response))) => {
                    self.engine.response_head(record, response.status);
                    return self
                        .relay(
                            upstream, addr, &route, response, client, bufs, shutdown, record,
                        )
                        .await;
                }
                Ok((upstream, Answered::Switched { head_len })) => {
                    self.engine.response_head(record, 101);
                    return self.switch(upstream, head_len, client, bufs, record).await;
                }
                Err(e) => {
                    // The body is buffered whole before the first try: always at hand.
                    let retry = self
                        .engine
                        .try_failed(record, e.failed(), req.idempotent(), true);
                    if let AttemptError::ClientGone = e {
                        // The client's business, not the instance's (499).
                        record.error = "ConnectionClosed";
                        client.close().await;
                        return Outcome::Close;
                    }
                    if !retry {
                        return self.fail_upstream(client, record, e).await;
                    }
                    last_error = Some(e);
                }
            }
        }
    }

    /// One try of the request in `bufs` at `addr`, on both protocols: a kept connection (or
    /// a new one), the exchange `watch` runs until `due` (the route's timeout from the
    /// request's sending: a new connection's connect time is not part of it, its own limit is
    /// `connect_timeout`, as on the pingora path) while it watches the client. A kept
    /// connection the upstream closed while it idled is no fault of the instance: an
    /// idempotent request goes again, once, on a new connection to it.
    async fn try_instance<W: WatchTry>(
        &self,
        addr: SocketAddr,
        idempotent: bool,
        asked: Asked,
        record: &RequestRecord,
        bufs: &mut RequestBuffers,
        watch: &mut W,
    ) -> Tried {
        let timeouts = record.timeouts;
        let attempt_start = record.try_start.unwrap_or(record.start);
        let edits = record.filters.as_deref().map(|state| &state.response);
        let mut fresh = false;
        loop {
            let result = match self
                .connection(addr, fresh, attempt_start, timeouts.connect)
                .await
            {
                Err(e) => Err(e),
                Ok(up) => {
                    let sending = if up.reused {
                        attempt_start
                    } else {
                        Instant::now()
                    };
                    let RequestBuffers {
                        request,
                        response,
                        client,
                        stream_head,
                        early,
                        ..
                    } = &mut *bufs;
                    let head = W::Head::of(client, stream_head);
                    let exchange =
                        std::pin::pin!(exchange(up, asked, request, response, head, edits));
                    let due = tokio::time::Instant::from_std(sending) + timeouts.io;
                    watch.watch(exchange, due, early).await
                }
            };
            match result {
                Err(e) if e.stale() && idempotent && !fresh => fresh = true,
                result => return result,
            }
        }
    }

    /// A connection to `addr`: a kept, clean one (unless `fresh`), or a new one within
    /// `timeout`.
    async fn connection(
        &self,
        addr: SocketAddr,
        fresh: bool,
        now: Instant,
        timeout: Duration,
    ) -> Result<Upstream, AttemptError> {
        let kept = if fresh {
            None
        } else {
            upstream::take_idle(addr, now)
        };
        match kept {
            Some(up) => Ok(up),
            None => upstream::connect(addr, timeout)
                .await
                .map_err(AttemptError::Connect),
        }
    }

    /// Sends the response head (in `bufs.client`) and body to the client; keeps the upstream
    /// connection when the response ended cleanly.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        mut up: Upstream,
        addr: SocketAddr,
        route: &Route,
        response: ResponseHead,
        client: &mut Client<'_>,
        bufs: &mut RequestBuffers,
        shutdown: &ShutdownWatch,
        record: &mut RequestRecord,
    ) -> Outcome {
        let timeout = record.timeouts.io;
        let mut client_close = response.client_close;
        if !client_close && *shutdown.borrow() {
            // The gateway began to stop while the request was out: say that the connection
            // ends with this response, so the client does not send another on it. The head
            // (alone in the buffer so far) ends with its blank line.
            bufs.client.truncate(bufs.client.len().saturating_sub(2));
            bufs.client.extend_from_slice(b"connection: close\r\n\r\n");
            client_close = true;
        }
        let mut body = BodyState::new(response.framing);
        let mut reusable = response.upstream_keepalive;
        let first = &bufs.response[response.head_len..];
        let taken = match body.take(first) {
            Ok(n) => n,
            Err(_) => {
                // Nothing reached the client yet: it gets a 502, not a truncated response.
                return self
                    .fail_upstream(client, record, AttemptError::BadResponse)
                    .await;
            }
        };
        reusable &= taken == first.len();
        bufs.client.extend_from_slice(&first[..taken]);
        record.bytes_sent += taken as u64;
        if write_client(client.stream, &bufs.client, timeout)
            .await
            .is_err()
        {
            return self.client_gone(client, record).await;
        }
        while !body.is_done() {
            bufs.response.clear();
            bufs.response.reserve(READ_ROOM);
            let read = tokio::time::timeout(timeout, up.stream.read_buf(&mut bufs.response));
            let n = match read.await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return self.broken(client, record, "ReadError").await,
                Err(_) => return self.broken(client, record, "ReadTimedout").await,
            };
            if n == 0 {
                if body.ends_at_close() {
                    break;
                }
                return self.broken(client, record, "ConnectionClosed").await;
            }
            let taken = match body.take(&bufs.response) {
                Ok(n) => n,
                Err(_) => return self.broken(client, record, "InvalidHTTPHeader").await,
            };
            reusable &= taken == bufs.response.len();
            record.bytes_sent += taken as u64;
            if write_client(client.stream, &bufs.response[..taken], timeout)
                .await
                .is_err()
            {
                return self.client_gone(client, record).await;
            }
        }
        if reusable && !body.ends_at_close() {
            let since = record.try_start.unwrap_or(record.start);
            upstream::put_idle(addr, up.stream, since, self.max_idle, route.idle_timeout);
        }
        if client_close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }

    /// Sends the upstream's `101` (its head in `bufs.client`, and whatever followed it in
    /// `bufs.response`) to the client: from here the connection is a tunnel.
    async fn switch(
        &self,
        up: Upstream,
        head_len: usize,
        client: &mut Client<'_>,
        bufs: &mut RequestBuffers,
        record: &mut RequestRecord,
    ) -> Outcome {
        let after = &bufs.response[head_len..];
        bufs.client.extend_from_slice(after);
        record.bytes_sent += after.len() as u64;
        if write_client(client.stream, &bufs.client, record.timeouts.io)
            .await
            .is_err()
        {
            return self.client_gone(client, record).await;
        }
        Outcome::Tunnel(Box::new(Tunnel {
            up: up.stream,
            record: None,
            method: String::new(),
            host: String::new(),
            path: String::new(),
        }))
    }

    /// The upstream failed in the middle of a response: the client connection is closed so
    /// the client sees a truncated response, not a complete-looking one.
    async fn broken(
        &self,
        client: &mut Client<'_>,
        record: &mut RequestRecord,
        error: &'static str,
    ) -> Outcome {
        record.error = error;
        client.close().await;
        Outcome::Close
    }

    /// The client went away mid-response.
    async fn client_gone(&self, client: &mut Client<'_>, record: &mut RequestRecord) -> Outcome {
        record.error = "WriteError";
        client.close().await;
        Outcome::Close
    }

    /// Answers a request whose last try failed with `error`, and closes.
    async fn fail_upstream(
        &self,
        client: &mut Client<'_>,
        record: &mut RequestRecord,
        error: AttemptError,
    ) -> Outcome {
        let kind = error.kind();
        self.fail(client, record, Failure::Upstream(&kind)).await
    }

    /// Answers a request no instance could serve, as the pingora path does, and closes.
    async fn fail(
        &self,
        client: &mut Client<'_>,
        record: &mut RequestRecord,
        failure: Failure<'_>,
    ) -> Outcome {
        let reply = failure::answer(failure, record.target(), record.upstream);
        self.reply(client, record, reply, true).await
    }

    /// Sends one of the gateway's own answers; the connection stays open for the next
    /// request unless `close` (the request's whole body was read before the engine decided).
    async fn reply(
        &self,
        client: &mut Client<'_>,
        record: &mut RequestRecord,
        reply: Answer,
        close: bool,
    ) -> Outcome {
        let reply = record.dress(reply);
        record.status = reply.status;
        record.error = reply.error;
        let sent = write_answer(client.stream, &reply, close).await;
        if sent.is_err() || close {
            client.close().await;
            return Outcome::Close;
        }
        Outcome::KeepAlive
    }
}

/// The chain's response edits, made by the codec as it writes the head for the client.
struct ResponseEdits<'a>(&'a HeaderEdits);

impl HeadEdit for ResponseEdits<'_> {
    fn drops(&self, name: &str) -> bool {
        self.0.replaces(name)
    }

    fn append_fields(&self, out: &mut impl HeadOut) {
        for (name, value) in self.0.added() {
            out.field(name.as_str(), value);
        }
    }
}

/// The client side of a connection.
struct Client<'s> {
    stream: &'s mut dyn ClientIo,
    deadline: LazyDeadline,
    ip: Option<IpAddr>,
    /// Whether it came over TLS.
    tls: bool,
}

/// Why no more of the client's bytes came.
enum ClientRead {
    /// It closed its side, or the read failed.
    Closed,
    /// Nothing came by the due time.
    TimedOut,
}

impl Client<'_> {
    /// The scheme it came in by (`X-Forwarded-Proto`).
    fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Ends the connection's writing before it is dropped: what the stream still holds is
    /// sent (pingora's stream holds small writes until a flush), then over TLS its
    /// close_notify. A cleartext socket's FIN leaves with the close that dropping it makes:
    /// a `shutdown(2)` first is one system call more per connection for the same segment.
    async fn close(&mut self) {
        // Closing anyway: a failed flush or shutdown changes nothing.
        let _ = if self.tls {
            self.stream.shutdown().await
        } else {
            self.stream.flush().await
        };
    }

    /// Reads more of the client's bytes into `buf` by `due`, on the connection's one timer.
    async fn read_by(
        &mut self,
        buf: &mut Vec<u8>,
        due: tokio::time::Instant,
    ) -> Result<usize, ClientRead> {
        tokio::select! {
            biased;
            read = read_client(self.stream, buf) => match read {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ClientRead::Closed),
            },
            () = self.deadline.until(due) => Err(ClientRead::TimedOut),
        }
    }
}

impl Client<'_> {
    /// Reads until `buf` holds `end` bytes (the request's head and body) within `timeout`;
    /// false when the client closed or the body did not come in time (answered 408).
    async fn read_body(&mut self, buf: &mut Vec<u8>, end: usize, timeout: Duration) -> bool {
        let due = tokio::time::Instant::now() + timeout;
        while buf.len() < end {
            match self.read_by(buf, due).await {
                Ok(_) => {}
                Err(ClientRead::Closed) => return false,
                Err(ClientRead::TimedOut) => {
                    // Rare: boxed, so the connection's state stays small.
                    Box::pin(body_timed_out(self.stream, timeout)).await;
                    return false;
                }
            }
        }
        true
    }
}

/// Answers a request whose body did not come within `timeout` (408).
async fn body_timed_out(stream: &mut dyn ClientIo, timeout: Duration) {
    answer(stream, 408, &body_timeout_text(timeout)).await;
}

/// The body of the 408 answer to a request whose body did not come within `timeout`.
fn body_timeout_text(timeout: Duration) -> String {
    format!(
        "sluice: request body not received within {}\n",
        humantime::format_duration(timeout)
    )
}

/// What one request left of the connection.
enum Outcome {
    Handoff(Handoff),
    KeepAlive,
    Close,
    /// The upstream switched to WebSocket: the connection is a tunnel from here.
    Tunnel(Box<Tunnel>),
}

/// A connection switched to WebSocket: the upstream end, and the request's record and line
/// (finished when the tunnel ends: filled in by `serve_request`).
struct Tunnel {
    up: TcpStream,
    record: Option<RequestRecord>,
    method: String,
    host: String,
    path: String,
}

enum Step {
    /// The request is pingora's, for this reason.
    Handoff(Handoff),
    /// The request ended at this offset; the next one may follow.
    Next(usize),
    ReadHead,
    /// The body ends at this offset; read within this long.
    ReadBody(usize, Duration),
    /// The request cannot be forwarded: answer and close.
    Refuse(RequestError),
    Close,
    /// The request (ending at this offset) switched the connection to a tunnel.
    Tunnel(usize, Box<Tunnel>),
}

/// Why a try failed before the response head arrived.
#[derive(Debug)]
enum AttemptError {
    Connect(ConnectError),
    TimedOut,
    Write {
        reused: bool,
    },
    /// `untouched`: a kept connection that failed before any response byte (likely closed by
    /// the upstream while idle).
    Read {
        untouched: bool,
    },
    Closed {
        untouched: bool,
    },
    BadResponse,
    /// The client closed its connection while waiting.
    ClientGone,
}

impl AttemptError {
    /// How far the try got, for the retry rule (`gateway::retry`).
    fn failed(&self) -> Failed {
        match self {
            AttemptError::Connect(ConnectError::TimedOut) => Failed::ConnectTimedOut,
            AttemptError::Connect(_) => Failed::BeforeSending,
            AttemptError::Write { .. }
            | AttemptError::Read { .. }
            | AttemptError::Closed { .. } => Failed::AfterSending,
            AttemptError::TimedOut => Failed::TimedOut,
            AttemptError::BadResponse => Failed::Final,
            AttemptError::ClientGone => Failed::ClientLeft,
        }
    }

    /// A kept connection that failed before any response byte: most likely closed by the
    /// upstream while it idled.
    fn stale(&self) -> bool {
        matches!(
            self,
            AttemptError::Write { reused: true }
                | AttemptError::Read { untouched: true }
                | AttemptError::Closed { untouched: true }
        )
    }

    /// The pingora error type of the same failure: the same words in bodies and logs.
    fn kind(&self) -> ErrorType {
        match self {
            AttemptError::Connect(ConnectError::TimedOut) => ErrorType::ConnectTimedout,
            AttemptError::Connect(ConnectError::Refused) => ErrorType::ConnectRefused,
            AttemptError::Connect(ConnectError::Other(_)) => ErrorType::ConnectError,
            AttemptError::TimedOut => ErrorType::ReadTimedout,
            AttemptError::Write { .. } => ErrorType::WriteError,
            AttemptError::Read { .. } => ErrorType::ReadError,
            AttemptError::Closed { .. } | AttemptError::ClientGone => ErrorType::ConnectionClosed,
            AttemptError::BadResponse => ErrorType::InvalidHTTPHeader,
        }
    }
}

/// Where the response body stands.
enum BodyState {
    Length(u64),
    Chunked(ChunkedTracker),
    UntilClose,
}

impl BodyState {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyState::Length(0),
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedTracker::default()),
            Framing::UntilClose => BodyState::UntilClose,
        }
    }

    /// How many of `bytes` belong to the body.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, sluice_http1::BadChunk> {
        match self {
            BodyState::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                // At most bytes.len(): fits a usize.
                Ok(n as usize)
            }
            BodyState::Chunked(tracker) => tracker.feed(bytes),
            BodyState::UntilClose => Ok(bytes.len()),
        }
    }

    /// [`take`](Self::take), and appends the body's bytes among `bytes` to `out` decoded
    /// (a chunked body's data without its framing).
    fn take_decoded(
        &mut self,
        bytes: &[u8],
        out: &mut bytes::BytesMut,
    ) -> Result<usize, sluice_http1::BadChunk> {
        match self {
            BodyState::Chunked(tracker) => {
                tracker.feed_data(bytes, |data| out.extend_from_slice(data))
            }
            _ => {
                let n = self.take(bytes)?;
                out.extend_from_slice(&bytes[..n]);
                Ok(n)
            }
        }
    }

    fn is_done(&self) -> bool {
        match self {
            BodyState::Length(left) => *left == 0,
            BodyState::Chunked(tracker) => tracker.is_done(),
            BodyState::UntilClose => false,
        }
    }

    fn ends_at_close(&self) -> bool {
        matches!(self, BodyState::UntilClose)
    }
}

/// What the response to a try answers: how the request was sent.
#[derive(Clone, Copy)]
struct Asked {
    head_request: bool,
    /// A WebSocket handshake: a `101` may answer it.
    websocket: bool,
    client_close: bool,
}

/// What a try came to: the connection and the upstream's answer, or why there is none.
type Tried = Result<(Upstream, Answered), AttemptError>;

/// The form a response head takes for a client: HTTP/1.1 bytes, or HTTP/2 fields.
trait ClientHead: HeadOut + Send {
    /// Starts again for another head (after an interim response, or on a retry).
    fn start_over(&mut self);
    /// A request's buffer for heads of this form: its set's `client` or its `stream_head`.
    fn of<'a>(client: &'a mut Vec<u8>, stream: &'a mut StreamHead) -> &'a mut Self;
}

impl ClientHead for Vec<u8> {
    fn start_over(&mut self) {
        self.clear();
    }

    fn of<'a>(client: &'a mut Vec<u8>, _stream: &'a mut StreamHead) -> &'a mut Self {
        client
    }
}

impl ClientHead for StreamHead {
    fn start_over(&mut self) {
        self.clear();
    }

    fn of<'a>(_client: &'a mut Vec<u8>, stream: &'a mut StreamHead) -> &'a mut Self {
        stream
    }
}

/// A try's exchange, `exchange`, run until `due` while the client is watched: how each
/// protocol notices a client that gave up (`FastPath::try_instance`), and the form it takes
/// the response head in.
trait WatchTry: Send {
    type Head: ClientHead;

    /// `early` keeps what an HTTP/1.1 client sends meanwhile (a pipelined request).
    fn watch<'a>(
        &'a mut self,
        exchange: Pin<&'a mut (dyn Future<Output = Tried> + Send + 'a)>,
        due: tokio::time::Instant,
        early: &'a mut Vec<u8>,
    ) -> impl Future<Output = Tried> + Send + 'a;
}

/// An HTTP/1.1 client: its connection's one timer, and a read that sees it close.
struct WatchClient<'c, 's>(&'c mut Client<'s>);

impl WatchTry for WatchClient<'_, '_> {
    type Head = Vec<u8>;

    fn watch<'a>(
        &'a mut self,
        exchange: Pin<&'a mut (dyn Future<Output = Tried> + Send + 'a)>,
        due: tokio::time::Instant,
        early: &'a mut Vec<u8>,
    ) -> impl Future<Output = Tried> + Send + 'a {
        let client = &mut *self.0;
        watched(exchange, due, &mut client.deadline, client.stream, early)
    }
}

/// The upstream's answer to a try.
enum Answered {
    Response(ResponseHead),
    /// `101` to a WebSocket handshake, its head this long.
    Switched {
        head_len: usize,
    },
}

/// One try on `up`: sends `request`, reads the response head into `response` (and writes it
/// as sent to the client to `head`). No timer of its own: see [`watched`].
async fn exchange(
    mut up: Upstream,
    asked: Asked,
    request: &[u8],
    response: &mut Vec<u8>,
    head: &mut impl ClientHead,
    edits: Option<&HeaderEdits>,
) -> Result<(Upstream, Answered), AttemptError> {
    let Asked {
        head_request,
        websocket,
        client_close,
    } = asked;
    let reused = up.reused;
    if up.stream.write_all(request).await.is_err() {
        return Err(AttemptError::Write { reused });
    }
    response.clear();
    loop {
        response.reserve(READ_ROOM);
        let untouched = reused && response.is_empty();
        match up.stream.read_buf(response).await {
            Err(_) => return Err(AttemptError::Read { untouched }),
            Ok(0) => return Err(AttemptError::Closed { untouched }),
            Ok(_) => {}
        }
        loop {
            head.start_over();
            if websocket {
                let parsed = match edits {
                    Some(edits) if !edits.is_empty() => {
                        parse_upgrade_response(response, client_close, head, &ResponseEdits(edits))
                    }
                    _ => parse_upgrade_response(response, client_close, head, &Unedited),
                };
                match parsed {
                    Err(_) => return Err(AttemptError::BadResponse),
                    Ok(UpgradeResponse::Switched { head_len }) => {
                        return Ok((up, Answered::Switched { head_len }))
                    }
                    Ok(UpgradeResponse::Other(ParsedResponse::Final(parsed))) => {
                        return Ok((up, Answered::Response(parsed)))
                    }
                    Ok(UpgradeResponse::Other(ParsedResponse::Interim(len))) => {
                        response.drain(..len);
                        continue;
                    }
                    Ok(UpgradeResponse::Other(ParsedResponse::Partial))
                        if response.len() > MAX_RESPONSE_HEAD =>
                    {
                        return Err(AttemptError::BadResponse)
                    }
                    Ok(UpgradeResponse::Other(ParsedResponse::Partial)) => break,
                }
            }
            let parsed = match edits {
                Some(edits) if !edits.is_empty() => parse_response_edited(
                    response,
                    head_request,
                    client_close,
                    head,
                    &ResponseEdits(edits),
                ),
                _ => parse_response(response, head_request, client_close, head),
            };
            match parsed {
                Err(_) => return Err(AttemptError::BadResponse),
                Ok(ParsedResponse::Final(parsed)) => return Ok((up, Answered::Response(parsed))),
                Ok(ParsedResponse::Interim(len)) => {
                    response.drain(..len);
                }
                Ok(ParsedResponse::Partial) if response.len() > MAX_RESPONSE_HEAD => {
                    return Err(AttemptError::BadResponse)
                }
                Ok(ParsedResponse::Partial) => break,
            }
        }
    }
}

/// Runs `exchange` until `due`, and ends it when the client closes its connection meanwhile
/// (a client that gives up aborts the try, as on the pingora path). The watch costs no system
/// call while the client sends nothing: the socket's readiness is already known.
async fn watched<F>(
    exchange: F,
    due: tokio::time::Instant,
    deadline: &mut LazyDeadline,
    client: &mut dyn ClientIo,
    early: &mut Vec<u8>,
) -> Result<(Upstream, Answered), AttemptError>
where
    F: Future<Output = Result<(Upstream, Answered), AttemptError>>,
{
    tokio::select! {
        biased;
        done = exchange => done,
        () = deadline.until(due) => Err(AttemptError::TimedOut),
        () = watch_client(client, early) => Err(AttemptError::ClientGone),
    }
}

/// The two directions of a tunnel, each until its reader closes (then the other end's writing
/// side is shut), both until either fails: the failure's access-log name then.
async fn relay_tunnel(
    client: &mut dyn ClientIo,
    up: &mut TcpStream,
    pending: &mut Vec<u8>,
    upward: &mut u64,
    downward: &mut u64,
) -> Result<(), &'static str> {
    if !pending.is_empty() {
        up.write_all(pending).await.map_err(|_| "WriteError")?;
        *upward += pending.len() as u64;
    }
    release_client(std::mem::take(pending));
    let (mut up_read, mut up_write) = up.split();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let to_upstream = copy_half(&mut client_read, &mut up_write, upward);
    let to_client = copy_half(&mut up_read, &mut client_write, downward);
    tokio::pin!(to_upstream, to_client);
    tokio::select! {
        done = &mut to_upstream => {
            done?;
            to_client.await
        }
        done = &mut to_client => {
            done?;
            to_upstream.await
        }
    }
}

/// Copies `from` to `to` until `from` closes (then shuts `to`'s writing side), counting the
/// bytes in `count`; each read borrows a buffer only while it has bytes.
async fn copy_half<R, W>(from: &mut R, to: &mut W, count: &mut u64) -> Result<(), &'static str>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = Vec::new();
    loop {
        let n = read_client(from, &mut buf).await.map_err(|_| "ReadError")?;
        if n == 0 {
            // The other side may still talk: a failed shutdown ends nothing more than that.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf).await.map_err(|_| "WriteError")?;
        *count += n as u64;
        release_client(std::mem::take(&mut buf));
    }
}

/// Deadlines that follow one another on one timer per connection (its requests' due times, its
/// idle keep-alive limit). Setting a timer per request would touch the runtime's timer wheel
/// twice a request; this one is set once, and moved only when it fires before the current
/// due time (then to that time) or when a due time comes before it (a route with a shorter
/// timeout).
#[derive(Default)]
struct LazyDeadline {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LazyDeadline {
    /// Resolves at `due`.
    async fn until(&mut self, due: tokio::time::Instant) {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() > due {
            timer.as_mut().reset(due);
        }
        loop {
            timer.as_mut().await;
            if timer.deadline() >= due {
                return;
            }
            // Set for an earlier due time: move it to this one.
            timer.as_mut().reset(due);
        }
    }
}

/// Resolves when the client closes its connection; bytes it sends meanwhile (a pipelined
/// request) are kept in `early` and end the watch.
async fn watch_client(stream: &mut dyn ClientIo, early: &mut Vec<u8>) {
    early.reserve(1024);
    if let Ok(1..) = stream.read_buf(early).await {
        std::future::pending::<()>().await;
    }
}

/// A keep-alive connection between requests, without a timer per request: the connection's
/// one timer (its `LazyDeadline`, moved only when it fires), and a watch on the gateway's stop.
struct Idle {
    /// When the last request ended.
    last_active: Instant,
    stop: ShutdownWatch,
}

impl Idle {
    fn new(shutdown: &ShutdownWatch) -> Self {
        Self {
            last_active: Instant::now(),
            stop: shutdown.clone(),
        }
    }

    /// Waits for the client's next request; false when it closes, idles out (KEEPALIVE), or
    /// the gateway stops (an idle keep-alive connection is closed at once then, as pingora
    /// does).
    async fn wait_request(&mut self, client: &mut Client<'_>, buf: &mut Vec<u8>) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        let idle_until = tokio::time::Instant::from_std(self.last_active) + KEEPALIVE;
        tokio::select! {
            biased;
            read = read_client(client.stream, buf) => matches!(read, Ok(n) if n > 0),
            () = client.deadline.until(idle_until) => false,
            () = crate::drain::stopping(&mut self.stop) => false,
        }
    }
}

/// Writes `bytes` to the client: at once when the socket takes them (no timer), else within
/// `timeout`.
async fn write_client(
    stream: &mut dyn ClientIo,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        // Dropping a pending write is safe: nothing was written then.
        match stream.write(&bytes[written..]).now_or_never() {
            Some(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Some(Ok(n)) => written += n,
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    if written == bytes.len() {
        if let Some(flushed) = stream.flush().now_or_never() {
            return flushed;
        }
    }
    let rest = async {
        stream.write_all(&bytes[written..]).await?;
        stream.flush().await
    };
    tokio::time::timeout(timeout, rest)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A response of the gateway's own, written straight to the client (the header deadline's
/// 408, a body that never came), that says the connection closes after it.
pub async fn answer(stream: &mut dyn ClientIo, status: u16, body: &str) {
    let reply = Answer::plain(status, body.to_string(), "");
    // The client may be gone: nothing more to do then.
    let _ = write_answer(stream, &reply, true).await;
}

/// Writes one of the gateway's answers: its status, plain-text body (none for a 204 or 304)
/// and fields, `x-sluice-error: 1` when flagged, and `connection: close` when `close`.
async fn write_answer(
    stream: &mut dyn ClientIo,
    reply: &Answer,
    close: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let reason = http::StatusCode::from_u16(reply.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = Vec::with_capacity(160 + reply.body.len());
    // Writing to a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", reply.status);
    let body: &[u8] = if reply.has_body() {
        let _ = write!(out, "content-length: {}\r\n", reply.body.len());
        if !reply
            .headers
            .iter()
            .any(|(name, _)| name == http::header::CONTENT_TYPE)
        {
            out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
        }
        &reply.body
    } else {
        b""
    };
    if reply.flagged {
        out.extend_from_slice(b"x-sluice-error: 1\r\n");
    }
    for (name, value) in &reply.headers {
        sluice_http1::fields::put_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    write_client(stream, &out, Duration::from_secs(1)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::engine::filters::EditName;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn response_edits_are_made_as_the_head_is_written() {
        let name = |text: &'static str| EditName::intern(&HeaderName::from_static(text));
        let mut edits = HeaderEdits::default();
        edits.set(name("x-request-id"), &HeaderValue::from_static("ours"));
        edits.remove(name("via"));
        assert!(edits.add_text(name("ratelimit-limit"), b"10"));
        let head_of = |raw: &[u8], edits: &HeaderEdits| {
            let mut head = Vec::new();
            parse_response_edited(raw, false, false, &mut head, &ResponseEdits(edits)).unwrap();
            String::from_utf8(head).unwrap()
        };
        let upstream =
            b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\ncontent-length: 2\r\nVia: a\r\n\r\nok";
        assert_eq!(
            head_of(upstream, &edits),
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: ours\r\nratelimit-limit: 10\r\n\r\n"
        );
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            head_of(no_content, &HeaderEdits::default()),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        assert_eq!(
            head_of(no_content, &edits),
            "HTTP/1.1 204 No Content\r\nx-request-id: ours\r\nratelimit-limit: 10\r\n\r\n"
        );
    }
}
