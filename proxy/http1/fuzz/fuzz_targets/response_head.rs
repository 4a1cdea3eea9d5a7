//! The response head: never panics, and the head written for the client is sound — it parses
//! again with the same status, carries no hop-by-hop field, at most one `Content-Length`, and
//! the framing the proxy follows is the framing the client will read; and `read_head` reads it
//! as a plain httparse parse does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_http1::response::parse_response;
use sluice_http1::{Framing, ParsedResponse};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let client_close = flags & 2 == 2;
    let mut out = Vec::new();
    let Ok(ParsedResponse::Final(head)) =
        parse_response(data, head_request, client_close, &mut out)
    else {
        return;
    };
    assert!(head.head_len <= data.len());
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut again = httparse::Response::new(&mut fields);
    let status = again.parse(&out).expect("the client head parses");
    assert_eq!(status, httparse::Status::Complete(out.len()));
    assert_eq!(again.code, Some(head.status));
    // `read_head` (uninitialised slots) reads the written head as the plain parse does.
    let listed = |fields: &[httparse::Header<'_>]| -> Vec<(String, Vec<u8>)> {
        fields
            .iter()
            .map(|f| (f.name.to_string(), f.value.to_vec()))
            .collect()
    };
    assert_eq!(
        sluice_http1::read_head(&out, |code, fields| (code, listed(fields))),
        Some((head.status, listed(again.headers))),
        "read_head disagrees with httparse"
    );
    let mut lengths = Vec::new();
    let mut chunked = false;
    for field in again.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        assert!(
            !["keep-alive", "te", "upgrade", "proxy-connection"].contains(&name.as_str()),
            "{name} forwarded"
        );
        if name == "connection" {
            assert_eq!(field.value, b"close");
        }
        if name == "content-length" {
            lengths.push(field.value.to_vec());
        }
        if name == "transfer-encoding" {
            chunked = field.value.to_ascii_lowercase().ends_with(b"chunked");
        }
    }
    assert!(lengths.len() <= 1);
    match head.framing {
        Framing::Length(n) => {
            assert!(!chunked);
            // The value as sent (leading zeros may stay): the same number.
            let sent: Vec<Option<u64>> = lengths
                .iter()
                .map(|v| sluice_http1::fields::parse_decimal(sluice_http1::fields::trim_ows(v)))
                .collect();
            assert_eq!(sent, [Some(n)]);
        }
        Framing::Chunked => assert!(chunked && lengths.is_empty()),
        Framing::UntilClose => assert!(head.client_close && !head.upstream_keepalive),
        Framing::Empty => {}
    }
});
