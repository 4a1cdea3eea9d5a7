//! The request head (RFC 9112 3, 5, 6; RFC 9110 7.2, 7.6.1, 8.6): what a proxy may forward
//! as it is, what it must refuse, and what it leaves to an engine that handles more.
//!
//! A request this module calls [`ParsedRequest::Plain`] has one valid `Host`, one body length
//! (`Content-Length`, equal duplicates collapsed, or none), no `Transfer-Encoding`, an
//! origin-form target, and no field whose removal by `Connection` would reframe it; its
//! forwarded fields leave every hop-by-hop field out.

use std::mem::MaybeUninit;

use crate::fields::{self, decimal, put_field, HostError, LengthError};
use crate::hop::{self, ConnectionError, ConnectionOptions};

/// Header fields parsed per head; a head with more is left to the other engine.
pub const MAX_FIELDS: usize = 128;

/// Room for the fields of one head, left uninitialised: httparse writes the ones it parses
/// (filling 128 empty fields first would cost a 4 KiB memset per head).
pub type FieldSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

/// Empty room for the fields of one head.
pub fn field_slots<'b>() -> FieldSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// Whether a complete head another engine parsed (pingora's) breaks a rule of this codec:
/// the same refusals on both request paths. Limits are the other engine's to apply.
pub fn check_head(head: &[u8]) -> Result<(), RequestError> {
    let mut slots = field_slots();
    let unlimited = RequestLimits {
        max_fields: usize::MAX,
        max_field_bytes: usize::MAX,
        max_body: u64::MAX,
    };
    match parse_request(head, &mut slots, unlimited) {
        ParsedRequest::Invalid(error) => Err(error),
        _ => Ok(()),
    }
}

/// What a plain request may be.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most header fields.
    pub max_fields: usize,
    /// Most bytes of header names and values, added up.
    pub max_field_bytes: usize,
    /// Largest body (the caller buffers it).
    pub max_body: u64,
}

/// A request that may be forwarded as parsed.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: &'b str,
    /// The request target as sent (origin form: path and query).
    pub target: &'b str,
    /// Where the query starts in `target` (its `?`), or its length: found once per request.
    path_len: usize,
    /// The `Host` field without its port.
    pub host: &'b str,
    /// The head's length in bytes, its blank line included.
    pub head_len: usize,
    pub body_len: u64,
    /// The client asked to close after this request.
    pub close: bool,
    pub fields: &'h [httparse::Header<'b>],
    /// `Content-Length` came repeated or as a list: it is forwarded as one value.
    collapse_length: bool,
    /// `Connection` names other fields: they are not forwarded.
    connection_names_fields: bool,
    /// The client asks to switch to WebSocket (RFC 6455 4.1: a `GET` without a body,
    /// `Upgrade: websocket`, `Connection: upgrade`): forwarded with those two fields, and
    /// after a `101` the connection is a tunnel.
    pub websocket: bool,
}

impl<'b> RequestHead<'_, 'b> {
    /// The target without its query: what routes match.
    pub fn path(&self) -> &'b str {
        &self.target[..self.path_len]
    }

    /// The query, without its `?`.
    pub fn query(&self) -> Option<&'b str> {
        self.target.get(self.path_len + 1..)
    }

    /// Whether repeating the request is harmless (RFC 9110 9.2.2).
    pub fn idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        )
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The first field named `name` (ASCII case-insensitive).
    pub fn field(&self, name: &str) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }

    /// Writes the fields a proxy forwards, as `name: value` lines: the hop-by-hop ones (and
    /// those `Connection` names) left out, `Content-Length` once, and none for which `skip`
    /// says so (the fields the caller sets itself).
    pub fn write_forwarded_fields(&self, out: &mut Vec<u8>, skip: impl Fn(&str) -> bool) {
        for field in self.fields {
            let name = field.name;
            if hop::is_hop_by_hop(name)
                || name.eq_ignore_ascii_case("trailer")
                || skip(name)
                || (self.connection_names_fields && hop::named_by_connection(name, self.fields))
            {
                continue;
            }
            if self.collapse_length && name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            put_field(out, name.as_bytes(), field.value);
        }
        if self.collapse_length {
            let mut digits = [0u8; 20];
            put_field(out, b"content-length", decimal(self.body_len, &mut digits));
        }
        if self.websocket {
            // Hop-by-hop, but what the next hop must see to switch (RFC 9110 7.8).
            out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
        }
    }
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum ParsedRequest<'h, 'b> {
    /// The head is not complete yet.
    Partial,
    /// A request that may be forwarded as parsed.
    Plain(RequestHead<'h, 'b>),
    /// A valid request this codec does not forward itself (see the reason): the other engine
    /// serves it from the same bytes.
    Handoff(HandoffReason),
    /// A request no one may forward: answer [`RequestError::status`] and close.
    Invalid(RequestError),
}

/// Why a valid request is left to the other engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffReason {
    /// The HTTP/2 connection preface.
    Http2,
    Http10,
    /// An absolute-form or asterisk-form target, or `CONNECT`.
    TargetForm,
    /// An upgrade other than a WebSocket handshake (`RequestHead::websocket`).
    Upgrade,
    Expect,
    /// A chunked request body.
    ChunkedBody,
    /// A body larger than [`RequestLimits::max_body`].
    LargeBody,
    /// More fields, or more field bytes, than the limits: the other engine answers 431.
    HeaderLimits,
}

impl HandoffReason {
    /// Every reason, for callers that keep one counter each.
    pub const ALL: [HandoffReason; 8] = [
        HandoffReason::Http2,
        HandoffReason::Http10,
        HandoffReason::TargetForm,
        HandoffReason::Upgrade,
        HandoffReason::Expect,
        HandoffReason::ChunkedBody,
        HandoffReason::LargeBody,
        HandoffReason::HeaderLimits,
    ];

    /// The reason's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffReason::Http2 => "http2",
            HandoffReason::Http10 => "http10",
            HandoffReason::TargetForm => "target_form",
            HandoffReason::Upgrade => "upgrade",
            HandoffReason::Expect => "expect",
            HandoffReason::ChunkedBody => "chunked_body",
            HandoffReason::LargeBody => "large_body",
            HandoffReason::HeaderLimits => "header_limits",
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// RFC 9112 2.2, 3, 5: not an HTTP/1.x message (bad request line, field syntax,
    /// whitespace before a colon, obsolete line folding, control bytes).
    #[error("malformed request head ({0})")]
    Syntax(httparse::Error),
    /// RFC 9112 3.2: an HTTP/1.1 request without `Host`.
    #[error("no Host field")]
    MissingHost,
    /// RFC 9112 3.2: more than one `Host`.
    #[error("more than one Host field")]
    DuplicateHost,
    #[error("{0}")]
    Host(HostError),
    /// RFC 9110 8.6.
    #[error("{0}")]
    ContentLength(LengthError),
    /// RFC 9112 6.1, 6.3: `Transfer-Encoding` with `Content-Length` (a smuggling shape).
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    /// RFC 9112 6.1: `Transfer-Encoding` in an HTTP/1.0 request.
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    /// RFC 9112 6.3: chunked is not the final (and only once applied) transfer coding.
    #[error("chunked is not the final transfer coding")]
    ChunkedNotFinal,
    /// RFC 9112 6.1: a transfer coding other than chunked (answered 501).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// RFC 9110 7.6.1.
    #[error("{0}")]
    Connection(ConnectionError),
    /// RFC 9112 3.2: a target that is none of the four forms, or an origin-form one with a
    /// byte a URI may not carry as it stands (see `has_uri_bytes_only`).
    #[error("invalid request target")]
    Target,
}

impl RequestError {
    /// The status the client is answered.
    pub fn status(self) -> u16 {
        match self {
            RequestError::UnsupportedTransferCoding => 501,
            _ => 400,
        }
    }
}

/// How the `Transfer-Encoding` fields read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codings {
    None,
    /// Exactly `chunked`.
    Chunked,
    ChunkedNotFinal,
    Unsupported,
}

/// Folds one `Transfer-Encoding` value into what came before.
fn fold_codings(before: Codings, value: &[u8]) -> Result<Codings, RequestError> {
    let mut state = before;
    for coding in fields::list(value) {
        // A coding may carry parameters (`gzip;q=1`): only its name matters here.
        let name = coding.split(|&b| b == b';').next().unwrap_or(coding);
        let name = fields::trim_ows(name);
        if !fields::is_token(name) {
            return Err(RequestError::Syntax(httparse::Error::HeaderValue));
        }
        state = match state {
            // Anything after chunked (another chunked included) means chunked is not final.
            Codings::Chunked | Codings::ChunkedNotFinal => Codings::ChunkedNotFinal,
            _ if name.eq_ignore_ascii_case(b"chunked") => match state {
                Codings::None => Codings::Chunked,
                // `gzip, chunked`: a coding this codec does not apply.
                _ => Codings::Unsupported,
            },
            _ => Codings::Unsupported,
        };
    }
    if state == Codings::None {
        // An empty Transfer-Encoding names no coding: not a valid list (1#transfer-coding).
        return Err(RequestError::Syntax(httparse::Error::HeaderValue));
    }
    Ok(state)
}

/// Parses the request at the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
    limits: RequestLimits,
) -> ParsedRequest<'h, 'b> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ParsedRequest::Partial,
        Err(_) if buf.starts_with(b"PRI * HTTP/2.0\r\n") => {
            return ParsedRequest::Handoff(HandoffReason::Http2)
        }
        Err(httparse::Error::TooManyHeaders) => {
            return ParsedRequest::Handoff(HandoffReason::HeaderLimits)
        }
        Err(e) => return ParsedRequest::Invalid(RequestError::Syntax(e)),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return ParsedRequest::Invalid(RequestError::Syntax(httparse::Error::Token));
    };
    match scan_fields(req.headers, version) {
        Err(e) => ParsedRequest::Invalid(e),
        Ok(scan) => classify(method, target, version, head_len, req.headers, scan, limits),
    }
}

/// What the fields of a request say.
struct Scan<'b> {
    host: Option<&'b str>,
    length: Option<u64>,
    collapse_length: bool,
    codings: Codings,
    connection: ConnectionOptions,
    upgrade: bool,
    /// One `Upgrade` field, naming only `websocket`.
    websocket: bool,
    expect: bool,
    field_bytes: usize,
}

/// Reads every field once; refuses what makes the request ambiguous.
fn scan_fields<'b>(fields: &[httparse::Header<'b>], version: u8) -> Result<Scan<'b>, RequestError> {
    let mut scan = Scan {
        host: None,
        length: None,
        collapse_length: false,
        codings: Codings::None,
        connection: ConnectionOptions::default(),
        upgrade: false,
        websocket: false,
        expect: false,
        field_bytes: 0,
    };
    let mut hosts = 0;
    for field in fields {
        scan.field_bytes += field.name.len() + field.value.len();
        let name = field.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 {
                return Err(RequestError::DuplicateHost);
            }
            scan.host = Some(fields::parse_host(field.value).map_err(RequestError::Host)?);
        } else if name.eq_ignore_ascii_case("content-length") {
            scan.collapse_length |= scan.length.is_some();
            scan.length = Some(
                fields::fold_content_length(scan.length, field.value)
                    .map_err(RequestError::ContentLength)?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            scan.codings = fold_codings(scan.codings, field.value)?;
        } else if name.eq_ignore_ascii_case("connection") {
            scan.connection
                .add(field.value)
                .map_err(RequestError::Connection)?;
        } else if name.eq_ignore_ascii_case("upgrade") {
            // A second Upgrade field, or any other protocol, is pingora's to serve.
            scan.websocket = !scan.upgrade && is_websocket(field.value);
            scan.upgrade = true;
        } else if name.eq_ignore_ascii_case("expect") {
            scan.expect = true;
        }
    }
    if scan.codings != Codings::None {
        if scan.length.is_some() {
            return Err(RequestError::LengthAndTransferEncoding);
        }
        if version == 0 {
            return Err(RequestError::TransferEncodingInHttp10);
        }
        match scan.codings {
            Codings::ChunkedNotFinal => return Err(RequestError::ChunkedNotFinal),
            Codings::Unsupported => return Err(RequestError::UnsupportedTransferCoding),
            Codings::None | Codings::Chunked => {}
        }
    }
    if version == 1 && hosts == 0 {
        return Err(RequestError::MissingHost);
    }
    Ok(scan)
}

/// A request whose fields are sound: forwarded as parsed, or handed off.
fn classify<'h, 'b>(
    method: &'b str,
    target: &'b str,
    version: u8,
    head_len: usize,
    fields: &'h [httparse::Header<'b>],
    scan: Scan<'b>,
    limits: RequestLimits,
) -> ParsedRequest<'h, 'b> {
    let origin_form = target.starts_with('/');
    if !origin_form || method == "CONNECT" {
        let other_form = target == "*"
            || method == "CONNECT"
            || target.starts_with("http://")
            || target.starts_with("https://");
        return if other_form {
            ParsedRequest::Handoff(HandoffReason::TargetForm)
        } else {
            ParsedRequest::Invalid(RequestError::Target)
        };
    }
    if target.contains('#') {
        // RFC 9112 3.2.1: origin-form is a path and a query, never a fragment.
        return ParsedRequest::Invalid(RequestError::Target);
    }
    if !has_uri_bytes_only(target) {
        // What `http::Uri` refuses, hyper and pingora answer 400: so does the codec.
        return ParsedRequest::Invalid(RequestError::Target);
    }
    let reason = if scan.codings == Codings::Chunked {
        Some(HandoffReason::ChunkedBody)
    } else if version == 0 {
        Some(HandoffReason::Http10)
    } else if (scan.upgrade || scan.connection.upgrade) && !websocket_request(method, &scan) {
        Some(HandoffReason::Upgrade)
    } else if scan.expect {
        Some(HandoffReason::Expect)
    } else if fields.len() > limits.max_fields || scan.field_bytes > limits.max_field_bytes {
        Some(HandoffReason::HeaderLimits)
    } else if scan.length.is_some_and(|n| n > limits.max_body) {
        Some(HandoffReason::LargeBody)
    } else {
        None
    };
    if let Some(reason) = reason {
        return ParsedRequest::Handoff(reason);
    }
    ParsedRequest::Plain(RequestHead {
        method,
        target,
        // `?` is ASCII: a char boundary.
        path_len: target
            .bytes()
            .position(|b| b == b'?')
            .unwrap_or(target.len()),
        // An HTTP/1.1 request has exactly one Host (checked above).
        host: scan.host.unwrap_or(""),
        head_len,
        body_len: scan.length.unwrap_or(0),
        close: scan.connection.close,
        fields,
        collapse_length: scan.collapse_length,
        connection_names_fields: scan.connection.names_fields,
        websocket: scan.upgrade && websocket_request(method, &scan),
    })
}

/// An `Upgrade` value naming exactly one protocol, `websocket` (RFC 6455 4.1; any case).
fn is_websocket(value: &[u8]) -> bool {
    let mut protocols = fields::list(value);
    protocols
        .next()
        .is_some_and(|p| p.eq_ignore_ascii_case(b"websocket"))
        && protocols.next().is_none()
}

/// RFC 6455 4.1: an opening handshake is a `GET` with `Upgrade: websocket` and `Connection:
/// upgrade`, and no body (HTTP/1.1 is checked before).
fn websocket_request(method: &str, scan: &Scan<'_>) -> bool {
    method == "GET"
        && scan.websocket
        && scan.connection.upgrade
        && scan.length.unwrap_or(0) == 0
        && scan.codings == Codings::None
}

/// Whether an origin-form target (no `#`) has only the bytes `http::Uri` takes, by the
/// classes of its path and query scanners (the WHATWG URL path and query states, with `"`,
/// `{` and `}` let through in the path): visible ASCII but `<`, `>` and `` ` `` in the path
/// and `"`, `<` and `>` in the query, or bytes from 0x80 (the target is UTF-8 already).
fn has_uri_bytes_only(target: &str) -> bool {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let visible = |b: u8| (0x21..=0x7e).contains(&b) || b >= 0x80;
    path.bytes()
        .all(|b| visible(b) && !matches!(b, b'<' | b'>' | b'`'))
        && query
            .bytes()
            .all(|b| visible(b) && !matches!(b, b'"' | b'<' | b'>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_fields: 100,
        max_field_bytes: 32 * 1024,
        max_body: 64 * 1024,
    };

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Plain {
            path: String,
            host: String,
            body: u64,
            close: bool,
        },
        Partial,
        Handoff(HandoffReason),
        Invalid(u16),
    }

    fn seen(raw: &[u8]) -> Seen {
        let mut slots = field_slots();
        match parse_request(raw, &mut slots, LIMITS) {
            ParsedRequest::Plain(r) => Seen::Plain {
                path: r.path().to_string(),
                host: r.host.to_string(),
                body: r.body_len,
                close: r.close,
            },
            ParsedRequest::Partial => Seen::Partial,
            ParsedRequest::Handoff(reason) => Seen::Handoff(reason),
            ParsedRequest::Invalid(e) => Seen::Invalid(e.status()),
        }
    }

    fn forwarded(raw: &[u8]) -> String {
        let mut slots = field_slots();
        let ParsedRequest::Plain(r) = parse_request(raw, &mut slots, LIMITS) else {
            panic!("plain: {}", String::from_utf8_lossy(raw));
        };
        let mut out = Vec::new();
        r.write_forwarded_fields(&mut out, |n| n.eq_ignore_ascii_case("x-forwarded-for"));
        String::from_utf8(out).expect("ASCII")
    }

    fn plain(path: &str, host: &str, body: u64, close: bool) -> Seen {
        Seen::Plain {
            path: path.into(),
            host: host.into(),
            body,
            close,
        }
    }

    #[test]
    fn plain_requests_are_taken() {
        assert_eq!(
            seen(b"GET /a?q=1 HTTP/1.1\r\nHost: x.test:8080\r\n\r\n"),
            plain("/a", "x.test", 0, false)
        );
        assert_eq!(
            seen(b"POST /p HTTP/1.1\r\nhost: [::1]:80\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc"),
            plain("/p", "::1", 3, true)
        );
        assert_eq!(seen(b"GET / HTTP/1.1\r\nHost: a\r\n"), Seen::Partial);
    }

    #[test]
    fn rfc9112_2_2_a_leading_empty_line_is_ignored_and_a_bare_cr_is_refused() {
        assert_eq!(
            seen(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            plain("/", "a", 0, false)
        );
        assert_eq!(
            seen(b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n"),
            Seen::Invalid(400)
        );
    }

    #[test]
    fn rfc9112_3_request_line_syntax() {
        for bad in [
            &b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert_eq!(
                seen(bad),
                Seen::Invalid(400),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rfc9112_3_2_target_forms() {
        for other in [
            &b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            assert_eq!(seen(other), Seen::Handoff(HandoffReason::TargetForm));
        }
        for bad in [
            &b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(seen(bad), Seen::Invalid(400));
        }
    }

    #[test]
    fn targets_with_bytes_the_uri_refuses_are_400_as_http_uri_decides() {
        for byte in 0x21..=0x7eu8 {
            if matches!(byte, b'#' | b'?') {
                continue;
            }
            for target in [
                format!("/a{}b?q=1", char::from(byte)),
                format!("/a?q={}1", char::from(byte)),
            ] {
                let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
                let takes = hyper::Uri::try_from(target.as_str()).is_ok();
                let seen = seen(raw.as_bytes());
                if takes {
                    assert!(matches!(seen, Seen::Plain { .. }), "{target}: {seen:?}");
                } else {
                    assert_eq!(seen, Seen::Invalid(400), "{target}");
                }
            }
        }
        assert!(has_uri_bytes_only("/caf\u{e9}?q=\u{e9}"));
    }

    #[test]
    fn rfc9112_3_2_exactly_one_valid_host() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: b\r\nHost: \xff\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n",
        ] {
            assert_eq!(
                seen(bad),
                Seen::Invalid(400),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            seen(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
            plain("/", "", 0, false)
        );
    }

    #[test]
    fn rfc9112_5_1_no_whitespace_before_the_colon_and_no_obs_fold() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n X-A: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
        ] {
            assert_eq!(
                seen(bad),
                Seen::Invalid(400),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rfc9110_8_6_content_length() {
        assert_eq!(
            seen(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"),
            plain("/", "a", 2, false)
        );
        assert_eq!(
            forwarded(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX: y\r\nContent-Length: 2\r\n\r\nab"),
            "Host: a\r\nX: y\r\ncontent-length: 2\r\n"
        );
        assert_eq!(
            forwarded(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"),
            "Host: a\r\nContent-Length: 12\r\n"
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        ] {
            assert_eq!(
                seen(bad),
                Seen::Invalid(400),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            seen(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n"),
            Seen::Handoff(HandoffReason::LargeBody)
        );
    }

    #[test]
    fn rfc9112_6_1_transfer_encoding() {
        assert_eq!(
            seen(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Seen::Handoff(HandoffReason::ChunkedBody)
        );
        assert_eq!(
            seen(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Seen::Handoff(HandoffReason::ChunkedBody)
        );
        for (bad, status) in [
            (&b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..], 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400),
        ] {
            assert_eq!(seen(bad), Seen::Invalid(status), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rfc9110_7_6_1_connection_options_and_hop_by_hop_fields_are_not_forwarded() {
        assert_eq!(
            forwarded(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: x\r\nProxy-Connection: k\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n"),
            "Host: a\r\nAccept: */*\r\n"
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: content-length\r\n\r\nx"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding\r\n\r\n",
        ] {
            assert_eq!(seen(bad), Seen::Invalid(400), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rfc6455_4_1_a_websocket_handshake_is_forwarded_with_its_upgrade() {
        let raw = b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let mut slots = field_slots();
        let ParsedRequest::Plain(head) = parse_request(raw, &mut slots, LIMITS) else {
            panic!("a WebSocket handshake is the codec's");
        };
        assert!(head.websocket);
        assert_eq!(
            forwarded(raw),
            "Host: a\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             connection: upgrade\r\nupgrade: websocket\r\n"
        );
        let mut slots = field_slots();
        let ParsedRequest::Plain(plain) =
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &mut slots, LIMITS)
        else {
            panic!("plain");
        };
        assert!(!plain.websocket);
        // Anything else that asks to switch is left to pingora: another protocol, two of
        // them, two Upgrade fields, no `Connection: upgrade` (or only it), a method other
        // than GET, a body.
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket, foo\r\nConnection: upgrade\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(seen(raw), Seen::Handoff(_)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // An empty body is no body.
        let mut slots = field_slots();
        let ParsedRequest::Plain(head) = parse_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n",
            &mut slots,
            LIMITS,
        ) else {
            panic!("plain");
        };
        assert!(head.websocket);
    }

    #[test]
    fn other_engines_serve_the_rest() {
        for (raw, reason) in [
            (
                &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
                HandoffReason::Http10,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", HandoffReason::Http10),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
                HandoffReason::Upgrade,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                HandoffReason::Expect,
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HandoffReason::Http2),
        ] {
            assert_eq!(
                seen(raw),
                Seen::Handoff(reason),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            seen(raw.as_bytes()),
            Seen::Handoff(HandoffReason::HeaderLimits)
        );
        let too_many: String = (0..200).map(|i| format!("x-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{too_many}\r\n");
        assert_eq!(
            seen(raw.as_bytes()),
            Seen::Handoff(HandoffReason::HeaderLimits)
        );
    }

    #[test]
    fn a_head_parsed_elsewhere_is_held_to_the_same_rules() {
        assert_eq!(check_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(
            check_head(
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nHost: a\r\n\r\n"
            ),
            Ok(())
        );
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\n\r\n"),
            Err(RequestError::MissingHost)
        );
        assert_eq!(
            check_head(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n"),
            Err(RequestError::Connection(
                ConnectionError::NamesEndToEndField
            ))
        );
    }

    #[test]
    fn path_and_query_split_at_the_first_question_mark() {
        for (raw, path, query) in [
            (
                &b"GET /a/b?x=1&y=? HTTP/1.1\r\nHost: h\r\n\r\n"[..],
                "/a/b",
                Some("x=1&y=?"),
            ),
            (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", "/a", None),
            (b"GET /a? HTTP/1.1\r\nHost: h\r\n\r\n", "/a", Some("")),
        ] {
            let mut slots = field_slots();
            let ParsedRequest::Plain(r) = parse_request(raw, &mut slots, LIMITS) else {
                panic!("plain");
            };
            assert_eq!((r.path(), r.query()), (path, query));
        }
    }
}
