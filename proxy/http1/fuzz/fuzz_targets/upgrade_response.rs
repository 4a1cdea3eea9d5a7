//! The answer to a WebSocket handshake: never panics; a switch's head for the client parses
//! again as a 101 that says `upgrade: websocket` and `connection: upgrade`, with no framing
//! field and no other hop-by-hop field, and ends where the tunnel begins.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_http1::response::parse_upgrade_response;
use sluice_http1::{Unedited, UpgradeResponse};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let Ok(UpgradeResponse::Switched { head_len }) =
        parse_upgrade_response(data, false, &mut out, &Unedited)
    else {
        return;
    };
    assert!(head_len <= data.len());
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut again = httparse::Response::new(&mut fields);
    let status = again.parse(&out).expect("the client head parses");
    assert_eq!(status, httparse::Status::Complete(out.len()));
    assert_eq!(again.code, Some(101));
    let mut upgrade = 0;
    let mut connection = 0;
    for field in again.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        assert!(
            !["keep-alive", "te", "proxy-connection", "content-length", "transfer-encoding"]
                .contains(&name.as_str()),
            "{name} forwarded"
        );
        if name == "upgrade" {
            upgrade += 1;
            let protocols: Vec<&[u8]> = sluice_http1::fields::list(field.value).collect();
            assert!(
                protocols.len() == 1 && protocols[0].eq_ignore_ascii_case(b"websocket"),
                "{:?}",
                String::from_utf8_lossy(field.value)
            );
        }
        if name == "connection" {
            connection += 1;
            assert_eq!(field.value, b"upgrade");
        }
    }
    assert_eq!((upgrade, connection), (1, 1));
});
