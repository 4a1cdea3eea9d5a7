//! The fast path's HTTP/1.1 heads: which requests it takes, the request head as sent upstream,
//! and the upstream's response head as sent to the client.

use std::mem::MaybeUninit;

use super::super::proxy::{host_without_port, HeaderLimits};
use crate::strategy::RequestHeaders;

/// Header fields parsed per head; a request with more is left to pingora (which answers 431
/// when it is over `proxy.max_headers`).
pub(super) const MAX_FIELDS: usize = 128;

/// Largest request body the fast path takes: it reads the whole body before the first try,
/// so a retry can send it again. Larger bodies are streamed by pingora.
pub(super) const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// A request the fast path serves.
#[derive(Debug)]
pub(super) struct RequestHead<'h, 'b> {
    pub(super) method: &'b str,
    /// The request target as sent (origin form: path and query).
    pub(super) target: &'b str,
    /// Where the query starts in `target` (its `?`), or its length: found once per request.
    path_len: usize,
    /// The `Host` field without its port.
    pub(super) host: &'b str,
    pub(super) head_len: usize,
    pub(super) body_len: u64,
    /// The client asked to close after this request.
    pub(super) close: bool,
    pub(super) fields: &'h [httparse::Header<'b>],
}

impl<'b> RequestHead<'_, 'b> {
    /// The target without its query: what routes match.
    pub(super) fn path(&self) -> &'b str {
        &self.target[..self.path_len]
    }

    /// The query, without its `?`.
    pub(super) fn query(&self) -> Option<&'b str> {
        self.target.get(self.path_len + 1..)
    }

    /// Whether repeating the request is harmless (RFC 9110 9.2.2).
    pub(super) fn idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        )
    }

    pub(super) fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Strategies read the parsed fields in place: no header map is built per request.
impl RequestHeaders for RequestHead<'_, '_> {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub(super) enum ParsedRequest<'h, 'b> {
    /// The head is not complete yet.
    Partial,
    /// A plain request the fast path serves.
    Plain(RequestHead<'h, 'b>),
    /// Anything else (upgrades, `Expect`, chunked or large bodies, HTTP/1.0, HTTP/2, malformed
    /// or oversized heads): pingora serves it, and answers the errors.
    NotMine,
}

/// Room for the fields of one head, left uninitialised: httparse writes the ones it parses
/// (filling 128 empty fields first would cost a 4 KiB memset per head).
pub(super) type FieldSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

/// Empty room for the fields of one head.
pub(super) fn field_slots<'b>() -> FieldSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// Parses the request at the start of `buf`.
pub(super) fn parse_request<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<httparse::Header<'b>>],
    limits: HeaderLimits,
) -> ParsedRequest<'h, 'b> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ParsedRequest::Partial,
        Err(_) => return ParsedRequest::NotMine,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return ParsedRequest::NotMine;
    };
    if !target.starts_with('/') || method == "CONNECT" || req.headers.len() > limits.max_headers {
        return ParsedRequest::NotMine;
    }
    let mut bytes = 0;
    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    for field in req.headers.iter() {
        bytes += field.name.len() + field.value.len();
        let name = field.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return ParsedRequest::NotMine;
            }
            host = std::str::from_utf8(field.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            if body_len.is_some() {
                return ParsedRequest::NotMine;
            }
            body_len = parse_length(field.value);
            if body_len.is_none() {
                return ParsedRequest::NotMine;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return ParsedRequest::NotMine;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return ParsedRequest::NotMine;
        }
    }
    let body_len = body_len.unwrap_or(0);
    let Some(host) = host else {
        return ParsedRequest::NotMine;
    };
    if bytes > limits.max_header_bytes || body_len > MAX_BUFFERED_BODY {
        return ParsedRequest::NotMine;
    }
    let fields = req.headers;
    ParsedRequest::Plain(RequestHead {
        method,
        target,
        // `?` is ASCII: a char boundary.
        path_len: target
            .bytes()
            .position(|b| b == b'?')
            .unwrap_or(target.len()),
        host: host_without_port(host),
        head_len,
        body_len,
        close,
        fields,
    })
}

/// A `Content-Length` value: digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Hop-by-hop fields (RFC 9110 7.6.1) and the forwarding fields the gateway sets itself.
fn dropped_upstream(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
    ]
    .iter()
    .chain(&["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"])
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Writes the request head as sent upstream to `out`: `target` (the route may have stripped
/// its prefix), the client's fields but the hop-by-hop ones, and `X-Forwarded-For` (appended
/// to), `-Proto` and `-Host`, as the pingora path does.
pub(super) fn write_upstream_request(
    out: &mut Vec<u8>,
    req: &RequestHead<'_, '_>,
    target: &str,
    client_ip: Option<&str>,
    proto: &str,
) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in req.fields {
        if dropped_upstream(field.name) {
            continue;
        }
        put_field(out, field.name.as_bytes(), field.value);
    }
    if let Some(ip) = client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        match req.field("x-forwarded-for") {
            Some(existing) if !existing.is_empty() => {
                out.extend_from_slice(existing);
                out.extend_from_slice(b", ");
            }
            _ => {}
        }
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    put_field(out, b"x-forwarded-proto", proto.as_bytes());
    if !req.host.is_empty() {
        put_field(out, b"x-forwarded-host", req.host.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// No length: the body ends when the upstream closes.
    UntilClose,
}

/// A complete upstream response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) head_len: usize,
    pub(super) framing: Framing,
    /// The upstream connection can serve another request after this response.
    pub(super) upstream_keepalive: bool,
    /// The client connection closes after this response.
    pub(super) client_close: bool,
}

/// What an upstream's bytes so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ParsedResponse {
    Partial,
    /// An interim (1xx) response of this many bytes: skipped.
    Interim(usize),
    /// A final response; its head for the client is in `out`.
    Final(ResponseHead),
}

/// Why an upstream's response could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid response header from upstream")]
pub(super) struct BadResponse;

/// Parses the response at the start of `buf`; when complete and final, writes its head as
/// sent to the client to `out` (HTTP/1.1, hop-by-hop fields dropped, `connection: close`
/// when the client connection ends with it).
pub(super) fn parse_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut Vec<u8>,
) -> Result<ParsedResponse, BadResponse> {
    let mut fields = field_slots();
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
        Err(_) => return Err(BadResponse),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse);
    };
    if status == 101 || status < 100 {
        // Nothing asked to switch protocols.
        return Err(BadResponse);
    }
    if status < 200 {
        return Ok(ParsedResponse::Interim(head_len));
    }
    let mut length = None;
    let mut chunked = None;
    let mut upstream_close = version == 0;
    for field in resp.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(field.value).ok_or(BadResponse)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = field.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            let value = field.value;
            if value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                upstream_close = true;
            } else if version == 0
                && value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
            {
                upstream_close = false;
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let client_close = client_close || framing == Framing::UntilClose;
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse takes exactly three digits, so 100..=999 (a byte each, no formatter).
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for field in resp.headers.iter() {
        let hop_by_hop = ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|n| field.name.eq_ignore_ascii_case(n));
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3): a proxy drops the latter.
        let overridden = chunked.is_some() && field.name.eq_ignore_ascii_case("content-length");
        if hop_by_hop || overridden {
            continue;
        }
        put_field(out, field.name.as_bytes(), field.value);
    }
    if client_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ParsedResponse::Final(ResponseHead {
        status,
        head_len,
        framing,
        upstream_keepalive: !upstream_close && framing != Framing::UntilClose,
        client_close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeaderLimits = HeaderLimits {
        max_headers: 100,
        max_header_bytes: 32 * 1024,
    };

    fn plain(raw: &[u8]) -> Option<(String, String, u64, bool)> {
        let mut fields = field_slots();
        match parse_request(raw, &mut fields, LIMITS) {
            ParsedRequest::Plain(r) => Some((
                r.path().to_string(),
                r.host.to_string(),
                r.body_len,
                r.close,
            )),
            ParsedRequest::Partial => Some(("partial".into(), String::new(), 0, false)),
            ParsedRequest::NotMine => None,
        }
    }

    #[test]
    fn takes_plain_requests_and_leaves_the_rest() {
        assert_eq!(
            plain(b"GET /a?q=1 HTTP/1.1\r\nHost: x.test:8080\r\n\r\n"),
            Some(("/a".into(), "x.test".into(), 0, false))
        );
        assert_eq!(
            plain(b"POST /p HTTP/1.1\r\nhost: [::1]:80\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc"),
            Some(("/p".into(), "::1".into(), 3, true))
        );
        assert_eq!(
            plain(b"GET / HTTP/1.1\r\nHost: a\r\n").map(|p| p.0),
            Some("partial".into())
        );
        for other in [
            &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert_eq!(plain(other), None, "{}", String::from_utf8_lossy(other));
        }
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
            let mut fields = field_slots();
            let ParsedRequest::Plain(r) = parse_request(raw, &mut fields, LIMITS) else {
                panic!("plain");
            };
            assert_eq!((r.path(), r.query()), (path, query));
        }
    }

    #[test]
    fn limits_leave_the_answer_to_pingora() {
        let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(plain(raw.as_bytes()), None);
    }

    #[test]
    fn upstream_request_drops_hop_by_hop_and_forwards() {
        let raw = b"GET /api/x?q HTTP/1.1\r\nHost: ex.test\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n";
        let mut fields = field_slots();
        let ParsedRequest::Plain(req) = parse_request(raw, &mut fields, LIMITS) else {
            panic!("plain");
        };
        let mut out = Vec::new();
        write_upstream_request(&mut out, &req, "/x?q", Some("127.0.0.1"), "http");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x?q HTTP/1.1\r\nHost: ex.test\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: ex.test\r\n\r\n"
        );
    }

    fn response(raw: &[u8], head: bool, close: bool) -> (ParsedResponse, String) {
        let mut out = Vec::new();
        let parsed = parse_response(raw, head, close, &mut out).unwrap();
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_and_client_head() {
        let (p, out) = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok",
            false,
            false,
        );
        assert_eq!(
            p,
            ParsedResponse::Final(ResponseHead {
                status: 200,
                head_len: 61,
                framing: Framing::Length(2),
                upstream_keepalive: true,
                client_close: false,
            })
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");

        let (p, out) = response(b"HTTP/1.0 200 OK\r\n\r\nbody", false, false);
        let ParsedResponse::Final(h) = p else {
            panic!()
        };
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.upstream_keepalive && h.client_close);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");

        for (status, line) in [(404, "404 Not Found"), (599, "599 "), (302, "302 Found")] {
            let raw = format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\n\r\n");
            let (p, out) = response(raw.as_bytes(), false, false);
            assert!(matches!(p, ParsedResponse::Final(h) if h.status == status));
            assert_eq!(out, format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\n\r\n"));
        }

        let (p, out) = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            false,
            false,
        );
        let ParsedResponse::Final(h) = p else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.upstream_keepalive && !h.client_close);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");

        let (p, _) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, true);
        let ParsedResponse::Final(h) = p else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.client_close);

        assert_eq!(
            response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1", false, false).0,
            ParsedResponse::Interim(25)
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\nContent-Le", false, false).0,
            ParsedResponse::Partial
        );
        let mut out = Vec::new();
        assert_eq!(
            parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", false, false, &mut out),
            Err(BadResponse)
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                &mut out
            ),
            Err(BadResponse)
        );
    }
}
