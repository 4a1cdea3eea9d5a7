//! The request head: never panics, and a plain request's forwarded head is sound — one
//! `Host` (valid, no user information), no `Transfer-Encoding`, at most one
//! `Content-Length` equal to the body length, no hop-by-hop field, and it parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_http1::request::{field_slots, parse_request, RequestLimits};
use sluice_http1::ParsedRequest;

const LIMITS: RequestLimits = RequestLimits {
    max_fields: 100,
    max_field_bytes: 32 * 1024,
    max_body: 64 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let mut slots = field_slots();
    let ParsedRequest::Plain(req) = parse_request(data, &mut slots, LIMITS) else {
        return;
    };
    assert!(req.head_len <= data.len());
    assert!(req.body_len <= LIMITS.max_body);
    assert!(req.target.starts_with('/') && !req.target.contains('#'));
    // What hyper's and pingora's URI parse refuse is never forwarded.
    assert!(http::Uri::try_from(req.target).is_ok(), "{:?}", req.target);
    assert!(!req.host.contains('@'));
    let hosts = req
        .fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("host"))
        .count();
    assert_eq!(hosts, 1);

    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target).into_bytes();
    req.write_forwarded_fields(&mut head, |_| false);
    head.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut again = httparse::Request::new(&mut fields);
    let status = again.parse(&head).expect("the forwarded head parses");
    assert_eq!(status, httparse::Status::Complete(head.len()));
    let mut lengths = 0;
    for field in again.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        assert!(
            !["transfer-encoding", "connection", "keep-alive", "te", "upgrade", "proxy-connection"]
                .contains(&name.as_str()),
            "{name} forwarded"
        );
        if name == "content-length" {
            lengths += 1;
            // The value as sent (leading zeros may stay): the same number.
            let sent = sluice_http1::fields::parse_decimal(sluice_http1::fields::trim_ows(field.value));
            assert_eq!(sent, Some(req.body_len));
        }
    }
    assert!(lengths <= 1);
});
