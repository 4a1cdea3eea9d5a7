//! The fast path's use of the HTTP/1.1 codec (`sluice_http1`): which requests it takes under
//! the gateway's limits, and the request head as sent upstream with the forwarding fields.

use std::net::IpAddr;

use sluice_http1::fields::put_field;
use sluice_http1::hop::is_hop_by_hop;
pub(super) use sluice_http1::request::{field_slots, ParsedRequest, RequestHead};
use sluice_http1::request::{parse_request, RequestLimits};

use super::super::engine::filters::HeaderEdits;
use super::super::forward::X_FORWARDED_FOR;
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
    client_ip: Option<IpAddr>,
    proto: &str,
    edits: Option<&HeaderEdits>,
) {
    write_request_line(out, req.method, target);
    match edits {
        None => req.write_forwarded_fields(out, set_by_gateway),
        Some(edits) => {
            req.write_forwarded_fields(out, |name| set_by_gateway(name) || edits.replaces(name))
        }
    }
    let forwarded = Forwarded {
        existing_for: req.field("x-forwarded-for"),
        client_ip,
        proto,
        host: req.host,
    };
    write_gateway_fields(out, forwarded, edits);
}

/// The HTTP/1.1 request line.
fn write_request_line(out: &mut Vec<u8>, method: &str, target: &str) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// What the `X-Forwarded-*` fields say.
struct Forwarded<'a> {
    /// The client's own `X-Forwarded-For`, appended to.
    existing_for: Option<&'a [u8]>,
    client_ip: Option<IpAddr>,
    proto: &'a str,
    /// The host without its port (none: no `X-Forwarded-Host`).
    host: &'a str,
}

/// The fields that follow the client's: the filters' added fields, then `X-Forwarded-For`
/// (appended to), `-Proto` and `-Host`, and the head's blank line.
fn write_gateway_fields(out: &mut Vec<u8>, forwarded: Forwarded<'_>, edits: Option<&HeaderEdits>) {
    if let Some(edits) = edits {
        for (name, value) in edits.added() {
            put_field(out, name.as_str().as_bytes(), value);
        }
    }
    if let Some(ip) = forwarded.client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        match forwarded.existing_for {
            Some(existing) if !existing.is_empty() => {
                out.extend_from_slice(existing);
                out.extend_from_slice(b", ");
            }
            _ => {}
        }
        put_ip(out, ip);
        out.extend_from_slice(b"\r\n");
    }
    put_field(out, b"x-forwarded-proto", forwarded.proto.as_bytes());
    if !forwarded.host.is_empty() {
        put_field(out, b"x-forwarded-host", forwarded.host.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `ip` as its `Display` writes it, with no allocation or formatting machinery for IPv4 (a
/// `to_string` per connection was ~3 % of the user time of a connection per request).
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                let mut digits = [0u8; 20];
                out.extend_from_slice(sluice_http1::fields::decimal(octet.into(), &mut digits));
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// An HTTP/2 request as the HTTP/1.1 head sent upstream (RFC 9113 8.3.1, 8.2.3): the
/// authority as `Host` (pingora refused a stream whose `:authority` and `Host` disagree),
/// the `Cookie` fields joined into one, `Content-Length` as the body declares it, the other
/// fields as the client sent them but hop-by-hop ones and those the gateway sets, then the
/// same gateway fields as [`write_upstream_request`]'s.
pub(super) fn write_upstream_request_h2(
    out: &mut Vec<u8>,
    req: &H2Request<'_>,
    target: &str,
    client_ip: Option<IpAddr>,
    proto: &str,
    edits: Option<&HeaderEdits>,
) {
    let replaced = |name: &str| edits.is_some_and(|e| e.replaces(name));
    let head = req.head;
    write_request_line(out, head.method.as_str(), target);
    if !replaced("host") {
        put_field(out, b"host", req.authority.as_bytes());
    }
    if let Some(n) = req.body_len {
        if !replaced("content-length") {
            let mut digits = [0u8; 20];
            put_field(
                out,
                b"content-length",
                sluice_http1::fields::decimal(n, &mut digits),
            );
        }
    }
    let mut cookies = head.headers.get_all(http::header::COOKIE).iter();
    if let Some(first) = cookies.next().filter(|_| !replaced("cookie")) {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for more in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(more.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &head.headers {
        let name = name.as_str();
        let own = matches!(name, "host" | "content-length" | "cookie");
        if own || is_hop_by_hop(name) || set_by_gateway(name) || replaced(name) {
            continue;
        }
        put_field(out, name.as_bytes(), value.as_bytes());
    }
    let forwarded = Forwarded {
        existing_for: head
            .headers
            .get(X_FORWARDED_FOR.header())
            .map(|v| v.as_bytes()),
        client_ip,
        proto,
        host: sluice_http1::fields::host_without_port(req.authority),
    };
    write_gateway_fields(out, forwarded, edits);
}

/// An HTTP/2 request the fast path forwards: pingora's header of the stream, its authority
/// (`:authority`, else `Host`), and the body length (none: no body, and none declared).
pub(super) struct H2Request<'a> {
    pub(super) head: &'a pingora::http::RequestHeader,
    pub(super) authority: &'a str,
    pub(super) body_len: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

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
        write_upstream_request(&mut out, &req, "/x?q", LOOPBACK, "http", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x?q HTTP/1.1\r\nHost: ex.test\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: ex.test\r\n\r\n"
        );
    }

    #[test]
    fn an_h2_request_goes_upstream_as_http1() {
        let mut head = pingora::http::RequestHeader::build("POST", b"/api/x?q", None).unwrap();
        for (name, value) in [
            ("cookie", "a=1"),
            ("te", "trailers"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "10.0.0.1"),
            ("content-length", "5"),
        ] {
            head.append_header(name, value).unwrap();
        }
        let req = H2Request {
            head: &head,
            authority: "ex.test:8443",
            body_len: Some(5),
        };
        let mut out = Vec::new();
        write_upstream_request_h2(&mut out, &req, "/x?q", LOOPBACK, "http", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /x?q HTTP/1.1\r\nhost: ex.test:8443\r\ncontent-length: 5\r\n\
             cookie: a=1; b=2\r\naccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: ex.test\r\n\r\n"
        );
    }

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        let mut addresses: Vec<IpAddr> = vec![
            [0, 0, 0, 0].into(),
            [255, 255, 255, 255].into(),
            [10, 0, 100, 9].into(),
            "::1".parse().unwrap(),
            "2001:db8::8a2e:370:7334".parse().unwrap(),
            "::ffff:192.0.2.128".parse().unwrap(),
        ];
        let mut rng = fastrand::Rng::with_seed(16);
        addresses.extend((0..2000).map(|_| IpAddr::from(rng.u32(..).to_be_bytes())));
        for ip in addresses {
            let mut out = b"x".to_vec();
            put_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}").as_bytes(), "{ip}");
        }
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
