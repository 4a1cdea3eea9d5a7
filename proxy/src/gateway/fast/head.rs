//! The fast path's use of the HTTP/1.1 codec (`sluice_http1`): which requests it takes under
//! the gateway's limits, and the request head as sent upstream with the forwarding fields.

use sluice_http1::fields::put_field;
pub(super) use sluice_http1::request::{field_slots, ParsedRequest, RequestHead};
use sluice_http1::request::{parse_request, RequestLimits};

use super::super::engine::filters::HeaderEdits;
use super::super::proxy::HeaderLimits;

/// Largest request body the fast path takes: it reads the whole body before the first try,
/// so a retry can send it again. Larger bodies are streamed by pingora.
pub(super) const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// Parses the request at the start of `buf` under the listener's limits.
pub(super) fn parse<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
    limits: HeaderLimits,
) -> ParsedRequest<'h, 'b> {
    let limits = RequestLimits {
        max_fields: limits.max_headers,
        max_field_bytes: limits.max_header_bytes,
        max_body: MAX_BUFFERED_BODY,
    };
    parse_request(buf, slots, limits)
}

/// The forwarding fields the gateway sets itself, never copied from the client.
fn set_by_gateway(name: &str) -> bool {
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// Writes the request head as sent upstream to `out`: `target` (the route may have stripped
/// its prefix), the client's fields as the codec forwards them with the filters' `edits`,
/// and `X-Forwarded-For`
/// (appended to), `-Proto` and `-Host`, as the pingora path does.
pub(super) fn write_upstream_request(
    out: &mut Vec<u8>,
    req: &RequestHead<'_, '_>,
    target: &str,
    client_ip: Option<&str>,
    proto: &str,
    edits: Option<&HeaderEdits>,
) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match edits {
        None => req.write_forwarded_fields(out, set_by_gateway),
        Some(edits) => {
            req.write_forwarded_fields(out, |name| set_by_gateway(name) || edits.replaces(name));
            for (name, value) in edits.added() {
                put_field(out, name.as_str().as_bytes(), value);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeaderLimits = HeaderLimits {
        max_headers: 100,
        max_header_bytes: 32 * 1024,
    };

    #[test]
    fn upstream_request_drops_hop_by_hop_and_forwards() {
        let raw = b"GET /api/x?q HTTP/1.1\r\nHost: ex.test\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n";
        let mut slots = field_slots();
        let ParsedRequest::Plain(req) = parse(raw, &mut slots, LIMITS) else {
            panic!("plain");
        };
        let mut out = Vec::new();
        write_upstream_request(&mut out, &req, "/x?q", Some("127.0.0.1"), "http", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x?q HTTP/1.1\r\nHost: ex.test\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: ex.test\r\n\r\n"
        );
    }

    #[test]
    fn the_gateway_limits_apply() {
        let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        let mut slots = field_slots();
        assert!(matches!(
            parse(raw.as_bytes(), &mut slots, LIMITS),
            ParsedRequest::Handoff(sluice_http1::HandoffReason::HeaderLimits)
        ));
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n";
        let mut slots = field_slots();
        assert!(matches!(
            parse(raw, &mut slots, LIMITS),
            ParsedRequest::Handoff(sluice_http1::HandoffReason::LargeBody)
        ));
    }
}
