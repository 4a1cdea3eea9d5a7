//! The response head for an HTTP/2 client, built in the codec's one pass over the upstream's
//! head (`sluice_http1::HeadOut`): the fields the codec forwards, each value a slice of one
//! copy of the upstream's head, without the framing field HTTP/2 does not have
//! (`Transfer-Encoding`, RFC 9113 8.2.2; the codec already left out every other hop-by-hop
//! field). No HTTP/1.1 head is written and read back.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use pingora::http::ResponseHeader;
use sluice_http1::HeadOut;

/// A response head for HTTP/2 as the codec gives it.
#[derive(Default)]
pub(super) struct StreamHead {
    /// A copy of the upstream's head: upstream values are slices of it (one allocation for
    /// all).
    source: Bytes,
    /// Where the upstream's head the codec reads lies (only compared, never read through):
    /// a value within it is at the same offset in `source`.
    origin: usize,
    status: Option<StatusCode>,
    headers: HeaderMap,
    /// A field HTTP/2 cannot carry as given (a name or value `http` refuses).
    invalid: bool,
}

impl StreamHead {
    /// Starts again for another head (a retry's).
    pub(super) fn clear(&mut self) {
        self.status = None;
        self.invalid = false;
        self.headers.clear();
    }

    /// The head as pingora's HTTP/2 session sends it, the buffers let go of; `None` when the
    /// codec gave no complete head or one HTTP/2 cannot carry.
    pub(super) fn take_header(&mut self) -> Option<Box<ResponseHeader>> {
        let status = self.status.take();
        let headers = std::mem::take(&mut self.headers);
        self.source = Bytes::new();
        if std::mem::take(&mut self.invalid) {
            return None;
        }
        // The `http` parts are filled directly: pingora's `append_header` turns each name
        // into its titled spelling and parses that back into a name, for a case map a header
        // built without one never keeps.
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status?;
        parts.headers = headers;
        Some(Box::new(ResponseHeader::from(parts)))
    }

    /// `value` as a slice of the upstream's head when it is one, else a copy (the gateway's
    /// own values).
    fn shared(&self, value: &[u8]) -> Bytes {
        let at = value.as_ptr() as usize;
        match at.checked_sub(self.origin) {
            Some(offset)
                if offset <= self.source.len() && value.len() <= self.source.len() - offset =>
            {
                self.source.slice(offset..offset + value.len())
            }
            _ => Bytes::copy_from_slice(value),
        }
    }
}

impl HeadOut for StreamHead {
    fn status(&mut self, status: u16, _reason: &str, head: &[u8], fields: usize) {
        self.source = Bytes::copy_from_slice(head);
        self.origin = head.as_ptr() as usize;
        // `None` (not 100..=999) leaves the head without a status: `take_header` refuses it.
        self.status = StatusCode::from_u16(status).ok();
        // Room for the `Date` pingora adds when the upstream sent none.
        match HeaderMap::try_with_capacity(fields + 1) {
            Ok(headers) => self.headers = headers,
            Err(_) => self.invalid = true,
        }
    }

    fn field(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            self.invalid = true;
            return;
        };
        let Ok(value) = HeaderValue::from_maybe_shared(self.shared(value)) else {
            self.invalid = true;
            return;
        };
        self.invalid |= self.headers.try_append(name, value).is_err();
    }

    /// HTTP/2 has no `connection: close`: the stream ends, not the connection.
    fn end(&mut self, _client_close: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_http1::response::parse_response;
    use sluice_http1::ParsedResponse;

    fn header_of(raw: &[u8]) -> Option<Box<ResponseHeader>> {
        let mut head = StreamHead::default();
        match parse_response(raw, false, true, &mut head) {
            Ok(ParsedResponse::Final(_)) => head.take_header(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_codec_head_becomes_an_h2_header_without_framing_fields() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nconnection: close\r\nX-Empty:\r\nX-Text: caf\xc3\xa9\r\n\r\n";
        let header = header_of(raw).expect("valid");
        assert_eq!(header.status, 200);
        assert_eq!(header.headers["content-type"], "text/plain");
        assert_eq!(header.headers.get_all("set-cookie").iter().count(), 2);
        assert!(!header.headers.contains_key("transfer-encoding"));
        // Neither the upstream's `connection` nor the codec's own `connection: close`.
        assert!(!header.headers.contains_key("connection"));
        assert_eq!(header.headers["x-empty"], "");
        assert_eq!(header.headers["x-text"].as_bytes(), "café".as_bytes());
        assert_eq!(header.headers.len(), 5);
        // Every value a slice of one copy of the head: one allocation, not one per field.
        let offset = raw.windows(10).position(|w| w == b"text/plain");
        let copy = header.headers["content-type"].as_bytes().as_ptr() as usize
            - offset.expect("in the head");
        for value in header.headers.values() {
            let at = value.as_bytes().as_ptr() as usize;
            assert!(
                at >= copy && at + value.len() <= copy + raw.len(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn duplicate_lengths_become_one_and_a_retry_starts_over() {
        let mut head = StreamHead::default();
        let first = b"HTTP/1.1 503 Busy\r\nX-First: 1\r\n\r\n";
        assert!(matches!(
            parse_response(first, false, false, &mut head),
            Ok(ParsedResponse::Final(_))
        ));
        head.clear();
        let second = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok";
        assert!(matches!(
            parse_response(second, false, false, &mut head),
            Ok(ParsedResponse::Final(_))
        ));
        let header = head.take_header().expect("valid");
        assert_eq!(header.status, 200);
        assert!(!header.headers.contains_key("x-first"));
        assert_eq!(header.headers.get_all("content-length").iter().count(), 1);
        assert_eq!(header.headers["content-length"], "2");
        // Taken: nothing is left for another.
        assert!(head.take_header().is_none());
    }

    #[test]
    fn a_field_http2_cannot_carry_refuses_the_head() {
        let mut head = StreamHead::default();
        head.status(200, "OK", b"", 1);
        head.field("x-ok", b"fine");
        assert!(head.shared(b"own").len() == 3);
        head.field("bad name", b"x");
        assert!(head.take_header().is_none());
        // The refusal does not outlive its head.
        head.status(204, "No Content", b"", 0);
        assert_eq!(head.take_header().expect("valid").status, 204);
    }
}
