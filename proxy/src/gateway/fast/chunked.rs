//! Where a chunked body ends: follows the chunk framing of bytes passed through unchanged, so
//! the fast path forwards an upstream's chunked response without decoding it.

/// Why chunk framing could not be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(super) struct BadChunk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions or whitespace up to the end of the line.
    SizeLine {
        size: u64,
    },
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after chunk data; `cr` when the CR was seen.
    DataEnd {
        cr: bool,
    },
    /// The start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The CR of the final empty line was seen.
    FinalLf,
    Done,
}

/// Follows one chunked body.
#[derive(Debug, Clone)]
pub(super) struct ChunkedTracker {
    state: State,
}

impl Default for ChunkedTracker {
    fn default() -> Self {
        Self {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl ChunkedTracker {
    /// Whether the last chunk and the trailers have been seen.
    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `bytes`; returns how many belong to the body (all of them, unless the body ends
    /// inside `bytes`).
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        State::DataEnd { cr: false }
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                State::Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return Err(BadChunk);
                        }
                        let v = (b as char).to_digit(16).ok_or(BadChunk)?;
                        State::Size {
                            size: size * 16 + u64::from(v),
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 0 => return Err(BadChunk),
                    b';' | b' ' | b'\t' | b'\r' => State::SizeLine { size },
                    b'\n' => Self::after_size(size),
                    _ => return Err(BadChunk),
                },
                State::SizeLine { size } => match b {
                    b'\n' => Self::after_size(size),
                    _ => State::SizeLine { size },
                },
                State::DataEnd { cr } => match b {
                    b'\r' if !cr => State::DataEnd { cr: true },
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(BadChunk),
                },
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => State::Done,
                    _ => State::Trailer,
                },
                State::Trailer => match b {
                    b'\n' => State::TrailerStart,
                    _ => State::Trailer,
                },
                State::FinalLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(BadChunk),
                },
            };
            i += 1;
        }
        Ok(i)
    }

    fn after_size(size: u64) -> State {
        if size == 0 {
            State::TrailerStart
        } else {
            State::Data(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed_in_pieces(body: &[u8], piece: usize) -> (usize, bool) {
        let mut t = ChunkedTracker::default();
        let mut total = 0;
        for part in body.chunks(piece) {
            let n = t.feed(part).unwrap();
            total += n;
            if n < part.len() {
                break;
            }
        }
        (total, t.is_done())
    }

    #[test]
    fn finds_the_end_whatever_the_read_boundaries() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for piece in 1..=body.len() {
            assert_eq!(
                consumed_in_pieces(body, piece),
                (body.len(), true),
                "{piece}"
            );
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut t = ChunkedTracker::default();
        assert_eq!(t.feed(b"0\r\n\r\nHTTP/1.1 200"), Ok(5));
        assert!(t.is_done());
        let mut bare_lf = ChunkedTracker::default();
        assert_eq!(bare_lf.feed(b"2\nab\n0\n\n"), Ok(8));
        assert!(bare_lf.is_done());
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(ChunkedTracker::default().feed(b"zz\r\n"), Err(BadChunk));
        assert_eq!(ChunkedTracker::default().feed(b"\r\n"), Err(BadChunk));
        assert_eq!(ChunkedTracker::default().feed(b"1\r\nab"), Err(BadChunk));
        assert_eq!(
            ChunkedTracker::default().feed(b"ffffffffffffffff\r\n"),
            Err(BadChunk)
        );
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let mut t = ChunkedTracker::default();
        assert_eq!(t.feed(b"5\r\nhel"), Ok(6));
        assert!(!t.is_done());
    }
}
