//! Where a chunked body ends (RFC 9112 7.1): follows the chunk framing of bytes passed through
//! unchanged, so a proxy forwards a chunked message without decoding it. Strict: every line
//! ends in CRLF (a bare LF or CR is an error, not a line end), a chunk size is hex digits
//! followed only by whitespace or well-formed extensions, chunk data ends in CRLF, trailer
//! lines are field lines. Whatever else is an error: the message's end could be read two
//! ways, so it is never relayed.

use crate::fields::is_tchar;

/// Why chunk framing could not be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

/// Most bytes of chunk extensions on one size line (hyper allows 16 KiB in all).
const MAX_EXTENSION_BYTES: u32 = 4096;
/// Most bytes of the trailer section.
const MAX_TRAILER_BYTES: u32 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size or an extension (`BWS`).
    SizeSpace,
    /// After `;`, before an extension name.
    ExtNameStart,
    ExtName,
    /// Whitespace after an extension name: `=`, `;` or the line's end may follow.
    ExtNameSpace,
    /// After `=`, before the value.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// The LF of the size line.
    SizeLf,
    /// Chunk data still to come.
    Data(u64),
    /// The CR, then the LF, after chunk data.
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// The LF of the final empty line.
    FinalLf,
    Done,
}

/// Follows one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedTracker {
    state: State,
    /// The size of the chunk whose size line is being read.
    size: u64,
    /// Extension bytes on the current size line, or trailer bytes so far.
    extra: u32,
}

impl Default for ChunkedTracker {
    fn default() -> Self {
        Self {
            state: State::Size { size: 0, digits: 0 },
            size: 0,
            extra: 0,
        }
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `qdtext` and the bytes a `quoted-pair` may escape (RFC 9110 5.6.4), but `"` and `\`.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

/// A field value byte (RFC 9110 5.5: VCHAR, obs-text, SP, HTAB).
fn is_value_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7E | 0x80..=0xFF)
}

impl ChunkedTracker {
    /// Whether the last chunk and the trailer section have been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `bytes`; returns how many belong to the body (all of them, unless the body ends
    /// inside `bytes`). After an error the tracker is not to be fed again.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        self.feed_data(bytes, |_| {})
    }

    /// [`feed`](Self::feed), and tells `data` each run of chunk data in `bytes`, in order:
    /// the body decoded, for a recipient that does not frame it in chunks (an HTTP/2 client).
    /// Trailer fields are not data: they are followed and left out.
    pub fn feed_data(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                let take = left.min((bytes.len() - i) as u64);
                // At most bytes.len() - i: fits a usize.
                data(&bytes[i..i + take as usize]);
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            self.state = self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// The state after one byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<State, BadChunk> {
        use State::*;
        let in_extension = matches!(
            self.state,
            SizeSpace
                | ExtNameStart
                | ExtName
                | ExtNameSpace
                | ExtValueStart
                | ExtToken
                | ExtQuoted
                | ExtQuotedEscape
        );
        if in_extension {
            self.extra += 1;
            if self.extra > MAX_EXTENSION_BYTES {
                return Err(BadChunk);
            }
        }
        let in_trailer = matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | FinalLf
        );
        if in_trailer {
            self.extra += 1;
            if self.extra > MAX_TRAILER_BYTES {
                return Err(BadChunk);
            }
        }
        let next = match (self.state, b) {
            (Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                if size > u64::MAX >> 4 {
                    return Err(BadChunk);
                }
                // An ASCII hex digit: to_digit succeeds.
                let v = (b as char).to_digit(16).ok_or(BadChunk)?;
                Size {
                    size: size << 4 | u64::from(v),
                    digits: digits.saturating_add(1),
                }
            }
            (Size { digits: 0, .. }, _) => return Err(BadChunk),
            (Size { size, .. }, b) => {
                self.size = size;
                self.extra = 0;
                match b {
                    b'\r' => SizeLf,
                    b';' => ExtNameStart,
                    b if is_space(b) => SizeSpace,
                    _ => return Err(BadChunk),
                }
            }
            (SizeSpace, b) if is_space(b) => SizeSpace,
            (SizeSpace | ExtName | ExtNameSpace | ExtToken, b';') => ExtNameStart,
            (SizeSpace | ExtName | ExtNameSpace | ExtToken, b'\r') => SizeLf,
            (ExtNameStart, b) if is_space(b) => ExtNameStart,
            (ExtNameStart | ExtName, b) if is_tchar(b) => ExtName,
            (ExtName | ExtNameSpace, b) if is_space(b) => ExtNameSpace,
            (ExtName | ExtNameSpace, b'=') => ExtValueStart,
            (ExtValueStart, b) if is_space(b) => ExtValueStart,
            (ExtValueStart, b'"') => ExtQuoted,
            (ExtValueStart | ExtToken, b) if is_tchar(b) => ExtToken,
            (ExtToken, b) if is_space(b) => SizeSpace,
            (ExtQuoted, b'"') => SizeSpace,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted, b) if is_qdtext(b) => ExtQuoted,
            (ExtQuotedEscape, b) if is_value_byte(b) => ExtQuoted,
            (SizeLf, b'\n') if self.size == 0 => {
                self.extra = 0;
                TrailerStart
            }
            (SizeLf, b'\n') => Data(self.size),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size { size: 0, digits: 0 },
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart | TrailerName, b) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b) if is_value_byte(b) => TrailerValue,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            _ => return Err(BadChunk),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed_in_pieces(body: &[u8], piece: usize) -> Result<(usize, bool), BadChunk> {
        let mut t = ChunkedTracker::default();
        let mut total = 0;
        for part in body.chunks(piece) {
            let n = t.feed(part)?;
            total += n;
            if n < part.len() {
                break;
            }
        }
        Ok((total, t.is_done()))
    }

    fn whole(body: &[u8]) -> Result<(usize, bool), BadChunk> {
        consumed_in_pieces(body, body.len().max(1))
    }

    #[test]
    fn decodes_the_chunk_data_whatever_the_read_boundaries() {
        let body = b"5\r\nhello\r\n1a;ext=1;q=\"a\\\"b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for piece in 1..=body.len() {
            let mut t = ChunkedTracker::default();
            let mut decoded = Vec::new();
            let mut taken = 0;
            for part in body.chunks(piece) {
                let n = t
                    .feed_data(part, |data| decoded.extend_from_slice(data))
                    .expect("valid");
                taken += n;
                if n < part.len() {
                    break;
                }
            }
            assert!(t.is_done(), "{piece}");
            assert_eq!(taken, body.len() - 4, "{piece}");
            assert_eq!(decoded, b"helloabcdefghijklmnopqrstuvwxyz", "{piece}");
        }
    }

    #[test]
    fn rfc9112_7_1_finds_the_end_whatever_the_read_boundaries() {
        let body = b"5\r\nhello\r\n1a;ext=1;q=\"a\\\"b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for piece in 1..=body.len() {
            assert_eq!(
                consumed_in_pieces(body, piece),
                Ok((body.len(), true)),
                "{piece}"
            );
        }
    }

    #[test]
    fn rfc9112_7_1_stops_at_the_end_of_the_body() {
        let mut t = ChunkedTracker::default();
        assert_eq!(t.feed(b"0\r\n\r\nHTTP/1.1 200"), Ok(5));
        assert!(t.is_done());
    }

    #[test]
    fn rfc9112_2_2_bare_lf_and_bare_cr_are_not_line_ends() {
        for bad in [
            &b"2\nab\r\n0\r\n\r\n"[..],
            b"2\r\nab\n0\r\n\r\n",
            b"2\r\nab\r\n0\n\r\n",
            b"2\r\nab\r\n0\r\n\n",
            b"2\r\nab\r\n0\r\nx: 1\n\r\n",
            b"5\rX\n",
            b"2\r\nab\rX",
        ] {
            assert_eq!(
                whole(bad),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rfc9112_7_1_1_only_extensions_may_follow_the_size() {
        for good in [
            &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
            b"5; a = \"q\"\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0;last\r\n\r\n",
            b"005\r\nhello\r\n000\r\n\r\n",
        ] {
            assert_eq!(
                whole(good),
                Ok((good.len(), true)),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b"5 garbage\r\nhello\r\n0\r\n\r\n"[..],
            b"5;\r\n",
            b"5;a=\r\n",
            b"5;a=\"open\r\n",
            b"5;a b\r\n",
            b"5;=b\r\n",
            b"5x\r\n",
            b"0x5\r\n",
            b"+5\r\n",
            b" 5\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                whole(bad),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rfc9112_7_1_chunk_data_ends_in_crlf() {
        assert_eq!(whole(b"1\r\nab"), Err(BadChunk));
        assert_eq!(whole(b"1\r\na\r\r"), Err(BadChunk));
    }

    #[test]
    fn rfc9112_7_1_2_trailer_lines_are_field_lines() {
        for bad in [
            &b"0\r\nno colon\r\n\r\n"[..],
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nx : space before colon\r\n\r\n",
            b"0\r\nx: a\x00b\r\n\r\n",
            b"0\r\n x: folded\r\n\r\n",
        ] {
            assert_eq!(
                whole(bad),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn sizes_that_overflow_and_endless_lines_are_refused() {
        assert_eq!(whole(b"fffffffffffffffff\r\n"), Err(BadChunk));
        let long_ext = format!("1;{}\r\n", "a".repeat(5000));
        assert_eq!(whole(long_ext.as_bytes()), Err(BadChunk));
        let long_trailer = format!("0\r\nx: {}\r\n\r\n", "a".repeat(70_000));
        assert_eq!(whole(long_trailer.as_bytes()), Err(BadChunk));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let mut t = ChunkedTracker::default();
        assert_eq!(t.feed(b"5\r\nhel"), Ok(6));
        assert!(!t.is_done());
    }
}
