//! The upstream's response head (RFC 9112 4, 6; RFC 9110 6.4.1, 7.6.1, 8.6, 15): its framing,
//! and the head as a proxy sends it on. A head whose framing could be read two ways is
//! refused: the proxy answers 502 and does not reuse the connection.

use std::mem::MaybeUninit;

use crate::fields::{self, decimal, put_field, LengthError};
use crate::hop::{self, ConnectionError, ConnectionOptions};
use crate::request::MAX_FIELDS;

/// How the response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, or a 204 or 304.
    Empty,
    Length(u64),
    Chunked,
    /// No length: the body ends when the upstream closes.
    UntilClose,
}

/// A complete final response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The head's length in bytes, its blank line included.
    pub head_len: usize,
    pub framing: Framing,
    /// The upstream connection may serve another request after this response (if it leaves
    /// no bytes over).
    pub upstream_keepalive: bool,
    /// The client connection closes after this response.
    pub client_close: bool,
}

/// What an upstream's bytes so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedResponse {
    Partial,
    /// An interim (1xx) response of this many bytes: skipped.
    Interim(usize),
    /// A final response; its head for the client was written.
    Final(ResponseHead),
}

/// Why an upstream's response head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// RFC 9112 4, 5: bad status line or field syntax (obsolete folding, whitespace before a
    /// colon, control bytes included).
    #[error("malformed response head ({0})")]
    Syntax(httparse::Error),
    /// RFC 9110 15.2.2: a switch nobody asked for.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedSwitch,
    /// RFC 9110 7.8, RFC 6455 4.2.2: a 101 that does not say it switched to WebSocket.
    #[error("101 Switching Protocols without Upgrade: websocket")]
    SwitchNotToWebSocket,
    #[error("{0}")]
    ContentLength(LengthError),
    /// RFC 9112 6.1: HTTP/1.0 has no transfer codings.
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    /// RFC 9112 6.3: chunked applied twice or not last (nor last after the final comma).
    #[error("chunked is not the final transfer coding")]
    ChunkedNotFinal,
    #[error("{0}")]
    Connection(ConnectionError),
}

/// What the `Transfer-Encoding` fields of a response say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Codings {
    present: bool,
    chunked: u32,
    last_chunked: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) -> Result<(), ResponseError> {
        let mut any = false;
        for coding in fields::list(value) {
            let name = fields::trim_ows(coding.split(|&b| b == b';').next().unwrap_or(coding));
            if !fields::is_token(name) {
                return Err(ResponseError::Syntax(httparse::Error::HeaderValue));
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            self.chunked += u32::from(chunked);
            self.last_chunked = chunked;
            any = true;
        }
        if !any {
            return Err(ResponseError::Syntax(httparse::Error::HeaderValue));
        }
        // An empty last element (`chunked, `): a recipient must ignore it (RFC 9110 5.6.1),
        // but a client that takes the text after the last comma (hyper does) sees no
        // `chunked` there and frames the body otherwise. Not final, then: refused.
        let after_last_comma = value.rsplit(|&b| b == b',').next().unwrap_or(value);
        if fields::trim_ows(after_last_comma).is_empty() {
            self.last_chunked = false;
        }
        self.present = true;
        Ok(())
    }
}

/// Parses the response at the start of `buf` to a request that was HEAD or not; when
/// complete and final, writes the head as sent to the client to `out`: HTTP/1.1, hop-by-hop
/// fields (and those `Connection` names) dropped, one `Content-Length`, none on a 204, and
/// `connection: close` when the client connection ends with it.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut impl HeadOut,
) -> Result<ParsedResponse, ResponseError> {
    parse_response_edited(buf, head_request, client_close, out, &Unedited)
}

/// Where the codec writes the head it forwards to the client, in the one pass that reads the
/// upstream's: as HTTP/1.1 bytes (`Vec<u8>`), or as the fields of another framing (an HTTP/2
/// response header). Which fields go out is the codec's rule, whatever the framing.
pub trait HeadOut {
    /// The status, before any field. `head` is the upstream's whole head: the value of each
    /// upstream field given after is a slice of it; `fields` is how many fields it has.
    fn status(&mut self, status: u16, reason: &str, head: &[u8], fields: usize);
    /// A field to forward: the upstream's (as it spelt the name), or the gateway's own.
    fn field(&mut self, name: &str, value: &[u8]);
    /// The head is complete; the client connection ends after this response when
    /// `client_close` (HTTP/1.1 says `connection: close`).
    fn end(&mut self, client_close: bool);
}

/// The head as HTTP/1.1 bytes, appended.
impl HeadOut for Vec<u8> {
    fn status(&mut self, status: u16, reason: &str, _head: &[u8], _fields: usize) {
        self.extend_from_slice(b"HTTP/1.1 ");
        // httparse takes exactly three digits, so 100..=999 (a byte each, no formatter).
        self.extend_from_slice(&[
            b'0' + (status / 100) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
            b' ',
        ]);
        self.extend_from_slice(reason.as_bytes());
        self.extend_from_slice(b"\r\n");
    }

    fn field(&mut self, name: &str, value: &[u8]) {
        put_field(self, name.as_bytes(), value);
    }

    fn end(&mut self, client_close: bool) {
        if client_close {
            self.extend_from_slice(b"connection: close\r\n");
        }
        self.extend_from_slice(b"\r\n");
    }
}

/// Changes a gateway makes to a response head on its way to the client, made in the pass
/// that writes the head.
pub trait HeadEdit {
    /// Whether the upstream's field `name` is left out.
    fn drops(&self, name: &str) -> bool;
    /// Gives `out` the gateway's own fields.
    fn append_fields(&self, out: &mut impl HeadOut);
}

/// No change to the head.
pub struct Unedited;

impl HeadEdit for Unedited {
    fn drops(&self, _name: &str) -> bool {
        false
    }

    fn append_fields(&self, _out: &mut impl HeadOut) {}
}

/// [`parse_response`], with `edit`'s changes made to the head written to `out`: the
/// upstream fields it drops are left out, its own fields follow the upstream's (before the
/// codec's own framing fields, which no edit touches).
pub fn parse_response_edited(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut impl HeadOut,
    edit: &impl HeadEdit,
) -> Result<ParsedResponse, ResponseError> {
    with_head(buf, ParsedResponse::Partial, |resp, head_len| {
        edited_head(
            resp,
            &buf[..head_len],
            head_request,
            client_close,
            out,
            edit,
        )
    })
}

/// The response head at the start of `buf`, parsed once (httparse, at most `MAX_FIELDS`
/// fields) and given with its length to `read`; `partial` while it is incomplete.
fn with_head<T>(
    buf: &[u8],
    partial: T,
    read: impl FnOnce(&httparse::Response<'_, '_>, usize) -> Result<T, ResponseError>,
) -> Result<T, ResponseError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] =
        [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    match parsed {
        Ok(httparse::Status::Complete(head_len)) => read(&resp, head_len),
        Ok(httparse::Status::Partial) => Ok(partial),
        Err(e) => Err(ResponseError::Syntax(e)),
    }
}

/// Fields a head this codec wrote may carry: the upstream's [`MAX_FIELDS`] and the filters'
/// additions.
pub const MAX_WRITTEN_FIELDS: usize = 2 * MAX_FIELDS;

/// A complete response head this codec accepted or wrote, read again by someone who needs its
/// fields as a list (an HTTP/2 response header, an auth answer's fields): `read` gets the status
/// code and the fields, parsed into uninitialised slots as every parse here (zeroing them was
/// most of the cost). `None` when `head` is not a complete head of at most
/// [`MAX_WRITTEN_FIELDS`] fields.
pub fn read_head<T>(
    head: &[u8],
    read: impl FnOnce(u16, &[httparse::Header<'_>]) -> T,
) -> Option<T> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_WRITTEN_FIELDS] =
        [const { MaybeUninit::uninit() }; MAX_WRITTEN_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, head, &mut slots);
    match parsed {
        Ok(httparse::Status::Complete(_)) => Some(read(resp.code?, resp.headers)),
        _ => None,
    }
}

/// [`parse_response_edited`] of a complete head.
fn edited_head(
    resp: &httparse::Response<'_, '_>,
    head: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut impl HeadOut,
    edit: &impl HeadEdit,
) -> Result<ParsedResponse, ResponseError> {
    let head_len = head.len();
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(ResponseError::Syntax(httparse::Error::Status));
    };
    if status < 100 {
        return Err(ResponseError::Syntax(httparse::Error::Status));
    }
    if status == 101 {
        return Err(ResponseError::UnexpectedSwitch);
    }
    if status < 200 {
        return Ok(ParsedResponse::Interim(head_len));
    }
    let mut length = None;
    let mut collapse_length = false;
    let mut codings = Codings::default();
    let mut connection = ConnectionOptions::default();
    for field in resp.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            collapse_length |= length.is_some();
            length = Some(
                fields::fold_content_length(length, field.value)
                    .map_err(ResponseError::ContentLength)?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.add(field.value)?;
        } else if name.eq_ignore_ascii_case("connection") {
            connection
                .add(field.value)
                .map_err(ResponseError::Connection)?;
        }
    }
    // RFC 9112 6.3: with both, Transfer-Encoding wins; the proxy drops Content-Length before
    // forwarding and does not trust the connection for another request.
    let length_overridden = codings.present && length.is_some();
    if codings.present {
        if version == 0 {
            return Err(ResponseError::TransferEncodingInHttp10);
        }
        if codings.chunked > 1 || (codings.chunked == 1 && !codings.last_chunked) {
            return Err(ResponseError::ChunkedNotFinal);
        }
    }
    let no_body = status == 204 || status == 304;
    let framing = if head_request || no_body {
        Framing::Empty
    } else if codings.present && codings.last_chunked {
        Framing::Chunked
    } else if codings.present {
        // A coding other than chunked: the body ends with the connection (RFC 9112 6.3).
        Framing::UntilClose
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    let upstream_close =
        connection.close || (version == 0 && !connection.keep_alive) || length_overridden;
    let client_close = client_close || framing == Framing::UntilClose;
    write_client_head(
        out,
        status,
        resp.reason.unwrap_or(""),
        head,
        resp.headers,
        |name| {
            // RFC 9110 8.6: no Content-Length on a 204; RFC 9112 6.1: nor Transfer-Encoding.
            let framing_field = name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding");
            let length_field = name.eq_ignore_ascii_case("content-length");
            (status == 204 && framing_field)
                || ((collapse_length || length_overridden) && length_field)
                || (connection.names_fields && hop::named_by_connection(name, resp.headers))
                || edit.drops(name)
        },
    );
    edit.append_fields(out);
    if collapse_length && status != 204 && !length_overridden {
        if let Some(n) = length {
            let mut digits = [0u8; 20];
            out.field("content-length", decimal(n, &mut digits));
        }
    }
    out.end(client_close);
    Ok(ParsedResponse::Final(ResponseHead {
        status,
        head_len,
        framing,
        upstream_keepalive: !upstream_close && framing != Framing::UntilClose,
        client_close,
    }))
}

/// What an upstream answered a WebSocket handshake (`RequestHead::websocket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeResponse {
    /// `101 Switching Protocols` of `head_len` bytes; its head for the client was written.
    /// The connection is a tunnel from the next byte on, both ways.
    Switched { head_len: usize },
    /// Any other answer, read as [`parse_response_edited`] reads it (a refused handshake is
    /// an ordinary response).
    Other(ParsedResponse),
}

/// The upstream's answer to a WebSocket handshake. A `101` must carry `Upgrade: websocket`
/// (RFC 6455 4.2.2); its head goes to the client with the upstream's fields (the handshake's
/// `Sec-WebSocket-*` among them) and `edit`'s changes, `upgrade` kept and `connection:
/// upgrade` said, but no other hop-by-hop or framing field (a 1xx has no body). Anything
/// else is [`parse_response_edited`]'s.
pub fn parse_upgrade_response(
    buf: &[u8],
    client_close: bool,
    out: &mut impl HeadOut,
    edit: &impl HeadEdit,
) -> Result<UpgradeResponse, ResponseError> {
    with_head(
        buf,
        UpgradeResponse::Other(ParsedResponse::Partial),
        |resp, head_len| {
            let head = &buf[..head_len];
            if resp.code == Some(101) {
                switched_head(resp, head, out, edit)
            } else {
                edited_head(resp, head, false, client_close, out, edit).map(UpgradeResponse::Other)
            }
        },
    )
}

/// [`parse_upgrade_response`] of a complete `101` head.
fn switched_head(
    resp: &httparse::Response<'_, '_>,
    head: &[u8],
    out: &mut impl HeadOut,
    edit: &impl HeadEdit,
) -> Result<UpgradeResponse, ResponseError> {
    let mut upgrades = resp
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("upgrade"));
    let websocket = upgrades.next().is_some_and(|f| {
        let mut protocols = fields::list(f.value);
        protocols
            .next()
            .is_some_and(|p| p.eq_ignore_ascii_case(b"websocket"))
            && protocols.next().is_none()
    });
    if !websocket || upgrades.next().is_some() {
        return Err(ResponseError::SwitchNotToWebSocket);
    }
    let mut connection = ConnectionOptions::default();
    for field in resp.headers.iter() {
        if field.name.eq_ignore_ascii_case("connection") {
            connection
                .add(field.value)
                .map_err(ResponseError::Connection)?;
        }
    }
    out.status(101, resp.reason.unwrap_or(""), head, resp.headers.len());
    for field in resp.headers.iter() {
        let name = field.name;
        let upgrade = name.eq_ignore_ascii_case("upgrade");
        let framing = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        let hop = !upgrade
            && (hop::is_hop_by_hop(name)
                || (connection.names_fields && hop::named_by_connection(name, resp.headers)));
        if framing || hop || edit.drops(name) {
            continue;
        }
        out.field(name, field.value);
    }
    edit.append_fields(out);
    out.field("connection", b"upgrade");
    out.end(false);
    Ok(UpgradeResponse::Switched {
        head_len: head.len(),
    })
}

/// The status and the fields to forward; not yet the end of the head.
fn write_client_head(
    out: &mut impl HeadOut,
    status: u16,
    reason: &str,
    head: &[u8],
    all: &[httparse::Header<'_>],
    skip: impl Fn(&str) -> bool,
) {
    out.status(status, reason, head, all.len());
    for field in all {
        if hop::is_hop_by_hop(field.name) || skip(field.name) {
            continue;
        }
        out.field(field.name, field.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(raw: &[u8], head: bool, close: bool) -> (ParsedResponse, String) {
        let mut out = Vec::new();
        let parsed = parse_response(raw, head, close, &mut out).expect("valid");
        (parsed, String::from_utf8(out).expect("ASCII"))
    }

    #[test]
    fn read_head_gives_the_code_and_fields_of_a_complete_head_only() {
        let fields = |raw: &[u8]| {
            read_head(raw, |code, fields| {
                let list: Vec<(String, Vec<u8>)> = fields
                    .iter()
                    .map(|f| (f.name.to_string(), f.value.to_vec()))
                    .collect();
                (code, list)
            })
        };
        let (code, list) =
            fields(b"HTTP/1.1 201 Created\r\nA: 1\r\nb: two\r\nA: 3\r\n\r\n").expect("complete");
        assert_eq!(code, 201);
        assert_eq!(
            list,
            [("A", &b"1"[..]), ("b", b"two"), ("A", b"3")]
                .map(|(n, v)| (n.to_string(), v.to_vec()))
        );
        assert_eq!(fields(b"HTTP/1.1 200 OK\r\nA: 1\r\n"), None, "partial");
        assert_eq!(fields(b"HTTP/1.1 2x0 OK\r\n\r\n"), None, "invalid");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..MAX_WRITTEN_FIELDS {
            many.extend_from_slice(format!("f{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            fields(&many).map(|(_, l)| l.len()),
            Some(MAX_WRITTEN_FIELDS)
        );
        many.splice(17..17, b"one: more\r\n".iter().copied());
        assert_eq!(fields(&many), None, "more than MAX_WRITTEN_FIELDS");
    }

    fn final_head(raw: &[u8], head: bool) -> (ResponseHead, String) {
        match response(raw, head, false) {
            (ParsedResponse::Final(h), out) => (h, out),
            other => panic!("{other:?}"),
        }
    }

    fn refused(raw: &[u8]) -> ResponseError {
        let mut out = Vec::new();
        parse_response(raw, false, false, &mut out).expect_err(&String::from_utf8_lossy(raw))
    }

    /// Drops `x-drop` (any case), adds `x-added: 1`.
    struct DropAndAdd;

    impl HeadEdit for DropAndAdd {
        fn drops(&self, name: &str) -> bool {
            name.eq_ignore_ascii_case("x-drop")
        }

        fn append_fields(&self, out: &mut impl HeadOut) {
            out.field("x-added", b"1");
        }
    }

    /// A head as the calls a framing other than HTTP/1.1 gets: the status, each field, and
    /// whether each upstream value was a slice of the upstream's head.
    #[derive(Default)]
    struct Recorded {
        status: u16,
        head: (usize, usize),
        fields: Vec<(String, Vec<u8>, bool)>,
        end: Option<bool>,
    }

    impl HeadOut for Recorded {
        fn status(&mut self, status: u16, _reason: &str, head: &[u8], fields: usize) {
            assert!(
                self.end.is_none() && self.fields.is_empty(),
                "one status, first"
            );
            assert!(fields >= 1, "the upstream's fields are counted");
            self.status = status;
            self.head = (head.as_ptr() as usize, head.len());
        }

        fn field(&mut self, name: &str, value: &[u8]) {
            assert!(self.end.is_none(), "no field after the end");
            let at = value.as_ptr() as usize;
            let within = at >= self.head.0 && at + value.len() <= self.head.0 + self.head.1;
            self.fields.push((name.to_string(), value.to_vec(), within));
        }

        fn end(&mut self, client_close: bool) {
            self.end = Some(client_close);
        }
    }

    #[test]
    fn a_head_given_as_fields_has_the_fields_of_the_head_written_as_bytes() {
        let heads: [&[u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nX-Drop: a\r\nKeep: b\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nTE: x\r\nServer: s\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\n\r\n",
        ];
        for raw in heads {
            for close in [false, true] {
                let mut bytes = Vec::new();
                let as_bytes = parse_response_edited(raw, false, close, &mut bytes, &DropAndAdd);
                let mut recorded = Recorded::default();
                let as_fields =
                    parse_response_edited(raw, false, close, &mut recorded, &DropAndAdd);
                assert_eq!(as_bytes, as_fields);
                let Ok(ParsedResponse::Final(parsed)) = as_fields else {
                    panic!("final: {}", String::from_utf8_lossy(raw));
                };
                assert_eq!(recorded.status, parsed.status);
                assert_eq!(recorded.end, Some(parsed.client_close));
                // The bytes again from the fields: the same head, line for line.
                let mut rebuilt = Vec::new();
                let text = String::from_utf8(bytes).unwrap();
                let reason = text.lines().next().unwrap()[13..].to_string();
                rebuilt.status(recorded.status, &reason, raw, 1);
                for (name, value, _) in &recorded.fields {
                    rebuilt.field(name, value);
                }
                rebuilt.end(parsed.client_close);
                assert_eq!(String::from_utf8(rebuilt).unwrap(), text);
                // Upstream values are slices of its head (no copy needed); only the edit's
                // and the codec's own fields are not.
                for (name, _, within) in &recorded.fields {
                    let own = name == "x-added" || name == "content-length" && !*within;
                    assert!(*within || own, "{name} of {}", String::from_utf8_lossy(raw));
                }
            }
        }
    }

    #[test]
    fn an_edit_drops_upstream_fields_and_adds_its_own_before_the_framing_fields() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Drop: a\r\nKeep: b\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok";
        let mut out = Vec::new();
        let parsed = parse_response_edited(raw, false, true, &mut out, &DropAndAdd).unwrap();
        assert!(matches!(parsed, ParsedResponse::Final(h) if h.framing == Framing::Length(2)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nKeep: b\r\nx-added: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
        // The same head unedited keeps its field.
        let (_, unedited) = response(raw, false, true);
        assert!(unedited.contains("X-Drop: a\r\n"), "{unedited}");
        // An interim response is skipped whole, edited or not.
        let mut out = Vec::new();
        let interim = parse_response_edited(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            false,
            false,
            &mut out,
            &DropAndAdd,
        );
        assert_eq!(interim.unwrap(), ParsedResponse::Interim(25));
    }

    #[test]
    fn rfc9112_6_3_framing() {
        let (h, out) = final_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok",
            false,
        );
        assert_eq!(
            h,
            ResponseHead {
                status: 200,
                head_len: 61,
                framing: Framing::Length(2),
                upstream_keepalive: true,
                client_close: false,
            }
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");

        let (h, out) = final_head(b"HTTP/1.0 200 OK\r\n\r\nbody", false);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.upstream_keepalive && h.client_close);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");

        let (h, _) = final_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(h.upstream_keepalive);

        let (h, out) = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.upstream_keepalive && !h.client_close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        );

        let (h, _) = final_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!(h.framing, Framing::UntilClose);
    }

    #[test]
    fn rfc9110_9_3_2_and_15_3_5_head_204_and_304_have_no_body() {
        let (h, _) = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.upstream_keepalive);
        let (h, out) = final_head(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(out, "HTTP/1.1 204 No Content\r\n\r\n");
        let (h, out) = final_head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(
            out,
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"
        );
        let (h, _) = final_head(
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn rfc9110_8_6_content_length() {
        let (h, out) = final_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: y\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Length(3));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\ncontent-length: 3\r\n\r\n");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(matches!(refused(bad), ResponseError::ContentLength(_)));
        }
    }

    #[test]
    fn rfc9112_6_1_transfer_encoding_shapes_that_could_be_read_two_ways() {
        // RFC 9112 6.3: Transfer-Encoding overrides; Content-Length is not forwarded and the
        // upstream connection is not reused.
        let (h, out) = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.upstream_keepalive);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            refused(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ResponseError::TransferEncodingInHttp10
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Empty elements after it: the text after the last comma is not `chunked`, which
            // is all some clients read (found by the `response_head` fuzz target).
            b"HTTP/1.1 210\nTransfer-Encoding: ,,,chunked,,,,\n\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked, \r\n\r\n",
        ] {
            assert_eq!(refused(bad), ResponseError::ChunkedNotFinal);
        }
        // Empty elements before it are ignored (RFC 9110 5.6.1).
        let (h, _) = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , gzip,chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(matches!(
            refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n"),
            ResponseError::Syntax(_)
        ));
    }

    #[test]
    fn rfc9112_4_and_5_syntax() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX: y\r\n folded\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
            b"HTTP/1.1 200 OK\rX: y\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                matches!(refused(bad), ResponseError::Syntax(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            refused(b"HTTP/1.1 101 Switching\r\n\r\n"),
            ResponseError::UnexpectedSwitch
        );
        assert!(matches!(
            refused(b"HTTP/1.1 000 Zero\r\n\r\n"),
            ResponseError::Syntax(_)
        ));
    }

    #[test]
    fn rfc9110_7_6_1_hop_by_hop_fields_are_not_forwarded() {
        let (_, out) = final_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nUpgrade: h2c\r\nProxy-Connection: k\r\nTrailer: x-t\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTrailer: x-t\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n"),
            ResponseError::Connection(ConnectionError::NamesEndToEndField)
        );
    }

    fn upgrade(raw: &[u8]) -> Result<(UpgradeResponse, String), ResponseError> {
        let mut out = Vec::new();
        let parsed = parse_upgrade_response(raw, false, &mut out, &DropAndAdd)?;
        Ok((parsed, String::from_utf8(out).expect("ASCII")))
    }

    #[test]
    fn rfc6455_4_2_2_a_switch_to_websocket_goes_to_the_client_with_its_upgrade() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nContent-Length: 0\r\nX-Drop: 1\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello";
        let (parsed, head) = upgrade(raw).expect("a switch");
        assert_eq!(
            parsed,
            UpgradeResponse::Switched {
                head_len: raw.len() - 7
            }
        );
        assert_eq!(
            head,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nx-added: 1\r\nconnection: upgrade\r\n\r\n"
        );
        // A refused handshake is an ordinary response, framed as any other.
        let (parsed, head) =
            upgrade(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno").expect("a response");
        assert!(
            matches!(parsed, UpgradeResponse::Other(ParsedResponse::Final(h)) if h.status == 403 && h.framing == Framing::Length(2)),
            "{parsed:?}"
        );
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert_eq!(
            upgrade(b"HTTP/1.1 101 Switching").expect("partial").0,
            UpgradeResponse::Other(ParsedResponse::Partial)
        );
        // A 101 to something else, or to nothing named, is refused (502).
        for bad in [
            &b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket, h2c\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(
                upgrade(bad),
                Err(ResponseError::SwitchNotToWebSocket),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Without a handshake, a 101 is still one nobody asked for.
        assert_eq!(
            refused(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            ResponseError::UnexpectedSwitch
        );
    }

    #[test]
    fn status_lines_and_interim_responses() {
        for (status, line) in [(404, "404 Not Found"), (599, "599 "), (302, "302 Found")] {
            let raw = format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\n\r\n");
            let (h, out) = final_head(raw.as_bytes(), false);
            assert_eq!(h.status, status);
            assert_eq!(out, format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\n\r\n"));
        }
        assert_eq!(
            response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1", false, false).0,
            ParsedResponse::Interim(25)
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\nContent-Le", false, false).0,
            ParsedResponse::Partial
        );
        let (h, out) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, true);
        assert!(matches!(h, ParsedResponse::Final(h) if h.client_close));
        assert!(out.ends_with("connection: close\r\n\r\n"));
    }
}
