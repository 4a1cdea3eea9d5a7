//! Differential tests: valid, near-valid and hostile byte streams, generated, where whatever
//! this codec accepts must be framed exactly as an independent implementation frames it —
//! hyper's HTTP/1 server, fed the same bytes in memory — or refused. Refusing more than hyper
//! is allowed (the codec is stricter by design); accepting what hyper refuses, or framing a
//! message differently, is a failure.
//!
//! The framing check: the generated message is followed by a sentinel request. Both parsers
//! must find the message's end at the same byte, which shows as both reading the sentinel as
//! the next request.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use proptest::prelude::*;
use sluice_http1::request::{field_slots, parse_request, RequestLimits};
use sluice_http1::{ChunkedTracker, ParsedRequest};

const SENTINEL: &[u8] = b"GET /sentinel HTTP/1.1\r\nHost: s\r\n\r\n";

const LIMITS: RequestLimits = RequestLimits {
    max_fields: 100,
    max_field_bytes: 64 * 1024,
    max_body: 1 << 20,
};

/// One request as hyper's server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    hosts: Vec<Vec<u8>>,
    body: Vec<u8>,
}

/// Feeds `bytes` to hyper's HTTP/1 server and returns the requests it served, in order, until
/// it stopped (the end of the input, or an error).
fn hyper_reads(bytes: &[u8]) -> Vec<Seen> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 22);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let method = req.method().to_string();
                    let target = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    let hosts = req
                        .headers()
                        .get_all("host")
                        .iter()
                        .map(|v| v.as_bytes().to_vec())
                        .collect();
                    let body = req.into_body().collect().await?.to_bytes().to_vec();
                    record.lock().unwrap().push(Seen {
                        method,
                        target,
                        hosts,
                        body,
                    });
                    Ok::<_, hyper::Error>(hyper::Response::new(
                        http_body_util::Empty::<bytes::Bytes>::new(),
                    ))
                }
            });
        // Half-close: the end of the input does not cut the pipelined requests short.
        let serve = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let feed = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        let _ =
            tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(serve, feed) }).await;
        let seen = seen.lock().unwrap().clone();
        seen
    })
}

/// What this codec makes of a request followed by the sentinel: the request, where it ends,
/// and whether the connection closes after it, if it takes it as a plain request.
fn codec_reads(bytes: &[u8]) -> Option<(Seen, usize, bool)> {
    let mut slots = field_slots();
    let ParsedRequest::Plain(req) = parse_request(bytes, &mut slots, LIMITS) else {
        return None;
    };
    let end = req.head_len + usize::try_from(req.body_len).ok()?;
    let seen = Seen {
        method: req.method.to_string(),
        target: req.target.to_string(),
        hosts: req
            .fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("host"))
            .map(|f| f.value.to_vec())
            .collect(),
        body: bytes.get(req.head_len..end)?.to_vec(),
    };
    Some((seen, end, req.close))
}

/// A field line from a pool of ordinary, doubtful and hostile ones.
fn field() -> impl Strategy<Value = Vec<u8>> {
    let named = prop_oneof![
        Just(b"Host: a.test".to_vec()),
        Just(b"Host: a.test:8080".to_vec()),
        Just(b"Host: [::1]:80".to_vec()),
        Just(b"Host: user@a.test".to_vec()),
        Just(b"Host: \xff\xfe".to_vec()),
        Just(b"Host:".to_vec()),
        Just(b"Host: a b".to_vec()),
        Just(b"Content-Length: 3".to_vec()),
        Just(b"Content-Length: 03".to_vec()),
        Just(b"Content-Length: 3, 3".to_vec()),
        Just(b"Content-Length: 3, 4".to_vec()),
        Just(b"Content-Length: +3".to_vec()),
        Just(b"Content-Length: 0".to_vec()),
        Just(b"Content-Length: 99999999999999999999".to_vec()),
        Just(b"Content-Length : 3".to_vec()),
        Just(b"Transfer-Encoding: chunked".to_vec()),
        Just(b"Transfer-Encoding: gzip, chunked".to_vec()),
        Just(b"Transfer-Encoding: chunked, gzip".to_vec()),
        Just(b"Transfer-Encoding: xchunked".to_vec()),
        Just(b"Transfer-Encoding:  chunked ".to_vec()),
        Just(b"Connection: close".to_vec()),
        Just(b"Connection: keep-alive, x-a".to_vec()),
        Just(b"Connection: content-length".to_vec()),
        Just(b"Connection: upgrade".to_vec()),
        Just(b"Upgrade: websocket".to_vec()),
        Just(b"Expect: 100-continue".to_vec()),
        Just(b" X-Folded: yes".to_vec()),
        Just(b"X-A: a\x00b".to_vec()),
        Just(b"X-A: caf\xc3\xa9".to_vec()),
        Just(b"X-A:\tv\t".to_vec()),
        Just(b": no-name".to_vec()),
        Just(b"X A: space".to_vec()),
    ];
    let benign = ("[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}", "[ -~]{0,12}")
        .prop_map(|(name, value)| format!("{name}: {value}").into_bytes());
    let random = (
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}",
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(name, value)| [name.as_bytes(), b": ", &value].concat());
    prop_oneof![8 => benign, 3 => named, 1 => random]
}

/// A framing field: the ones smuggling is made of, drawn on their own so that pairs of them
/// are common.
fn framing_field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"Content-Length: 3".to_vec()),
        Just(b"Content-Length: 03".to_vec()),
        Just(b"Content-Length: 0".to_vec()),
        Just(b"Content-Length: 6".to_vec()),
        Just(b"Content-Length: 3, 3".to_vec()),
        Just(b"content-length:3".to_vec()),
        Just(b"Transfer-Encoding: chunked".to_vec()),
        Just(b"Transfer-Encoding: identity".to_vec()),
        Just(b"Host: h.test".to_vec()),
        Just(b"Host: other.test".to_vec()),
    ]
}

/// A line ending: mostly CRLF, sometimes a bare LF or CR.
fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![40 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..]), 1 => Just(&b"\r"[..])]
}

/// A request head and body, and byte-level damage to it.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        3 => Just("GET"),
        3 => Just("POST"),
        1 => Just("HEAD"),
        1 => Just("PUT"),
        1 => Just("OPTIONS"),
        1 => Just("G(T")
    ];
    let target = prop_oneof![
        4 => Just("/"),
        4 => Just("/a?b=c"),
        1 => Just("/a#f"),
        1 => Just("*"),
        1 => Just("http://a.test/x"),
        1 => Just("a/b"),
        1 => Just("/%2e%2e/")
    ];
    let version = prop_oneof![20 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0"), 1 => Just("HTTP/1.2")];
    // Most requests carry one good Host first; the pool adds doubtful ones.
    let host = proptest::option::weighted(0.9, Just(b"Host: h.test".to_vec()));
    let fields = proptest::collection::vec((field(), line_end()), 0..4);
    let framing = proptest::collection::vec(framing_field(), 0..3);
    let body = prop_oneof![
        Just(b"".to_vec()),
        Just(b"abc".to_vec()),
        Just(b"3\r\nabc\r\n0\r\n\r\n".to_vec()),
        Just(b"abcdef".to_vec()),
    ];
    let damage = proptest::option::weighted(0.1, (any::<prop::sample::Index>(), any::<u8>()));
    (
        method,
        target,
        version,
        (host, framing),
        fields,
        line_end(),
        body,
        damage,
    )
        .prop_map(
            |(method, target, version, (host, framing), fields, end, body, damage)| {
                let mut raw = format!("{method} {target} {version}").into_bytes();
                raw.extend_from_slice(end);
                for field in host.into_iter().chain(framing) {
                    raw.extend_from_slice(&field);
                    raw.extend_from_slice(b"\r\n");
                }
                for (field, end) in fields {
                    raw.extend_from_slice(&field);
                    raw.extend_from_slice(end);
                }
                raw.extend_from_slice(b"\r\n");
                raw.extend_from_slice(&body);
                if let Some((at, byte)) = damage {
                    let at = at.index(raw.len());
                    raw[at] = byte;
                }
                raw
            },
        )
}

/// A chunked body: well-formed chunks with extensions and trailers, and damage.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let size_line = prop_oneof![
        Just(""),
        Just(";a"),
        Just(";a=b"),
        Just("; a = \"q\\\"x\""),
        Just(" "),
        Just(" garbage"),
        Just("\rX"),
        Just(";a\nb"),
    ];
    let chunk = (
        proptest::collection::vec(b'a'..=b'z', 1..20),
        size_line,
        line_end(),
    );
    let trailer = prop_oneof![
        Just(b"".to_vec()),
        Just(b"x-t: 1\r\n".to_vec()),
        Just(b"x-t: 1\n".to_vec()),
        Just(b"no-colon\r\n".to_vec()),
        Just(b" folded: 1\r\n".to_vec()),
    ];
    let damage = proptest::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>()));
    (
        proptest::collection::vec(chunk, 0..4),
        trailer,
        prop_oneof![Just("0"), Just("000"), Just("0;last")],
        damage,
    )
        .prop_map(|(chunks, trailer, last, damage)| {
            let mut raw = Vec::new();
            for (data, ext, end) in chunks {
                raw.extend_from_slice(format!("{:x}{ext}", data.len()).as_bytes());
                raw.extend_from_slice(end);
                raw.extend_from_slice(&data);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(last.as_bytes());
            raw.extend_from_slice(b"\r\n");
            raw.extend_from_slice(&trailer);
            raw.extend_from_slice(b"\r\n");
            if let Some((at, byte)) = damage {
                if !raw.is_empty() {
                    let at = at.index(raw.len());
                    raw[at] = byte;
                }
            }
            raw
        })
}

/// Where the tracker says a chunked body ends, feeding it in pieces of `piece` bytes.
fn chunked_end(body: &[u8], piece: usize) -> Option<usize> {
    let mut tracker = ChunkedTracker::default();
    let mut total = 0;
    for part in body.chunks(piece.max(1)) {
        let n = tracker.feed(part).ok()?;
        total += n;
        if n < part.len() {
            break;
        }
    }
    tracker.is_done().then_some(total)
}

/// Classic smuggling shapes, always tried: the generated cases may miss one.
const FIXED: &[&[u8]] = &[
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 0\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  3 \r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\n\n",
];

#[test]
fn classic_smuggling_shapes_agree_with_hyper() {
    for raw in FIXED {
        let stream = [*raw, SENTINEL].concat();
        let Some((ours, end, _)) = codec_reads(&stream) else {
            continue;
        };
        let theirs = hyper_reads(&stream);
        let shown = String::from_utf8_lossy(raw);
        assert!(
            !theirs.is_empty(),
            "hyper refused what the codec takes: {shown}"
        );
        assert_eq!(theirs[0], ours, "{shown}");
        assert_eq!(&stream[end..], SENTINEL, "{shown}");
        assert_eq!(theirs.len(), 2, "{shown}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    /// A request the codec forwards is one hyper reads the same: method, target, Host, body,
    /// and the same end (the sentinel comes next for both).
    #[test]
    fn plain_requests_are_framed_as_hyper_frames_them(raw in request()) {
        let stream = [raw.as_slice(), SENTINEL].concat();
        if let Some((ours, end, closes)) = codec_reads(&stream) {
            let theirs = hyper_reads(&stream);
            prop_assert!(!theirs.is_empty(), "hyper refused what the codec takes: {:?}",
                String::from_utf8_lossy(&stream));
            prop_assert_eq!(&theirs[0], &ours);
            // The same end: what follows is the same next request for both (the sentinel, or
            // bytes the generated body left in front of it, counted by neither as a body).
            if closes {
                // The connection ends with this request: there is no next one to compare.
                return Ok(());
            }
            if let Some((next, _, _)) = codec_reads(&stream[end..]) {
                prop_assert!(theirs.len() >= 2, "hyper stopped after {:?}", theirs);
                prop_assert_eq!(&theirs[1], &next);
            }
            if &stream[end..] == SENTINEL {
                prop_assert_eq!(theirs.len(), 2);
            }
        }
    }

    /// A chunked body the tracker accepts is one hyper decodes and ends at the same byte,
    /// however the bytes are split into reads.
    #[test]
    fn chunked_bodies_end_where_hyper_ends_them(body in chunked_body(), piece in 1usize..64) {
        let whole = chunked_end(&body, body.len());
        prop_assert_eq!(chunked_end(&body, piece), whole, "split into {}", piece);
        if let Some(end) = whole {
            let head = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
            let stream = [&head[..], &body[..end], SENTINEL].concat();
            let theirs = hyper_reads(&stream);
            prop_assert!(theirs.len() >= 2, "hyper refused a body the tracker takes: {:?} -> {:?}",
                String::from_utf8_lossy(&body), theirs);
            prop_assert_eq!(theirs[1].target.as_str(), "/sentinel");
        }
    }
}
