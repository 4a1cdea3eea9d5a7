//! The field grammar both directions share (RFC 9110 5.6): tokens, comma-separated lists,
//! `Content-Length` (8.6) and the `Host` authority (7.2, RFC 3986 3.2).

/// Whether `b` may appear in a token (RFC 9110 5.6.2 `tchar`).
pub fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Whether `s` is a non-empty token.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().copied().all(is_tchar)
}

/// Optional whitespace (RFC 9110 5.6.3): space and horizontal tab, nothing else.
pub fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else {
        return &[];
    };
    // A non-whitespace byte exists, so `rposition` finds one at or after `start`.
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .unwrap_or(start);
    &s[start..=end]
}

/// The elements of a comma-separated list (RFC 9110 5.6.1), trimmed, empty ones skipped
/// (a recipient MUST accept and ignore them).
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Why a `Content-Length` cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    #[error("Content-Length is not a decimal number")]
    Invalid,
    #[error("Content-Length values differ")]
    Conflicting,
}

/// Folds one `Content-Length` field value into `seen`: the value must be `1*DIGIT`, and a
/// repeated field must repeat the same value (RFC 9110 8.6: a recipient may collapse equal
/// duplicates; anything else is an unrecoverable framing error). A comma-separated list in
/// one field (`3, 3`) is refused, as hyper does: no sender needs it.
pub fn fold_content_length(seen: Option<u64>, value: &[u8]) -> Result<u64, LengthError> {
    let n = parse_decimal(trim_ows(value)).ok_or(LengthError::Invalid)?;
    match seen {
        Some(before) if before != n => Err(LengthError::Conflicting),
        _ => Ok(n),
    }
}

/// `1*DIGIT` as a u64; `None` for anything else, an overflow included.
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|&d| d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Why a `Host` value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("Host is not a valid authority")]
    Invalid,
    #[error("Host carries user information")]
    UserInfo,
}

/// The host of a `Host` field value (`uri-host [ ":" port ]`, RFC 9110 7.2), without its port
/// and brackets. Empty is allowed (a target without an authority); user information, paths,
/// whitespace, control bytes and anything outside RFC 3986's host grammar are refused.
pub fn parse_host(value: &[u8]) -> Result<&str, HostError> {
    if value.contains(&b'@') {
        return Err(HostError::UserInfo);
    }
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let close = rest
            .iter()
            .position(|&b| b == b']')
            .ok_or(HostError::Invalid)?;
        let literal = &rest[..close];
        let valid = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !valid {
            return Err(HostError::Invalid);
        }
        let after = &rest[close + 1..];
        let port = match after {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(HostError::Invalid),
        };
        (literal, port)
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    if let Some(port) = port {
        if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return Err(HostError::Invalid);
        }
    }
    if !value.starts_with(b"[") && !is_reg_name(host) {
        return Err(HostError::Invalid);
    }
    if value.is_empty() {
        return Ok("");
    }
    // Every byte was checked to be ASCII above.
    std::str::from_utf8(host).map_err(|_| HostError::Invalid)
}

/// RFC 3986 `reg-name` (which covers IPv4 addresses): unreserved, percent-encoded and
/// sub-delims bytes, but `,`: a `Host` with a comma reads as two joined `Host` fields to
/// parsers that join duplicates.
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' => {}
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 2;
            }
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` without the port (and brackets), for an
/// authority another parser already validated (pingora's request URI and `Host`).
pub fn host_without_port(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    // A byte search: `split(':')` costs ~130 instructions a request in the char searcher.
    match raw.bytes().position(|b| b == b':') {
        Some(colon) => &raw[..colon],
        None => raw,
    }
}

/// Writes one `name: value` line.
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `room`.
pub fn decimal(mut n: u64, room: &mut [u8; 20]) -> &[u8] {
    let mut at = room.len();
    loop {
        at -= 1;
        // n % 10 < 10: a digit.
        room[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &room[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_5_6_2_tokens() {
        assert!(is_token(b"chunked"));
        assert!(is_token(b"x-a_b.c~!"));
        for bad in [&b""[..], b"a b", b"a,b", b"a\"", b"a:b", b"\x80"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn rfc9110_5_6_1_lists_skip_empty_elements() {
        let elements: Vec<&[u8]> = list(b" ,a , b,,\tc ,").collect();
        assert_eq!(elements, [&b"a"[..], b"b", b"c"]);
    }

    #[test]
    fn rfc9110_8_6_content_length_is_digits_and_equal_duplicates_collapse_lists_refused() {
        assert_eq!(fold_content_length(None, b"42"), Ok(42));
        assert_eq!(fold_content_length(None, b"0"), Ok(0));
        assert_eq!(fold_content_length(Some(7), b"7"), Ok(7));
        assert_eq!(
            fold_content_length(Some(7), b"8"),
            Err(LengthError::Conflicting)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1.0",
            b"0x10",
            b"1 2",
            b"7,",
            b",",
            b"7, 7",
            b"7, 8",
            b"99999999999999999999",
        ] {
            assert_eq!(
                fold_content_length(None, bad),
                Err(LengthError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rfc9110_7_2_host_is_an_authority_without_userinfo() {
        assert_eq!(parse_host(b"example.com"), Ok("example.com"));
        assert_eq!(parse_host(b"example.com:8080"), Ok("example.com"));
        assert_eq!(parse_host(b"127.0.0.1:80"), Ok("127.0.0.1"));
        assert_eq!(parse_host(b"[::1]:80"), Ok("::1"));
        assert_eq!(parse_host(b"[::1]"), Ok("::1"));
        assert_eq!(parse_host(b"a%2Db"), Ok("a%2Db"));
        assert_eq!(parse_host(b""), Ok(""));
        assert_eq!(parse_host(b"user@host"), Err(HostError::UserInfo));
        assert_eq!(parse_host(b"u:p@host:80"), Err(HostError::UserInfo));
        for bad in [
            &b"a b"[..],
            b"host/path",
            b"host?q",
            b"host#f",
            b"host:80:80",
            b"host:http",
            b"host:123456",
            b"[::1",
            b"[::1]x",
            b"[]",
            b"[v1.x]",
            b"a%2",
            b"\xff\xfe",
            b"h\x00st",
            b"a,b",
        ] {
            assert_eq!(parse_host(bad), Err(HostError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn host_without_port_of_a_validated_authority() {
        assert_eq!(host_without_port("a.test:8080"), "a.test");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("a.test"), "a.test");
    }
}
