//! Buffers lent per request from per-thread free lists: a buffer belongs to a request in
//! flight, not to a connection, so an idle keep-alive connection holds none (HAProxy's lazy
//! buffers), and a request allocates none once the shard is warm.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

/// Room a lent upstream read buffer has for reading.
pub(super) const READ_ROOM: usize = 16 * 1024;
/// Room a client connection's read buffer gets when bytes arrive while it holds none.
const CLIENT_ROOM: usize = 4096;
/// Sets (and client read buffers) a thread keeps for the next requests; more in flight at
/// once are allocated and freed as needed.
const KEPT: usize = 64;
/// A buffer that grew past its role's limit (a large head or body) is freed, not kept.
const MAX_KEPT_RESPONSE: usize = 4 * READ_ROOM;
const MAX_KEPT_OTHER: usize = 4 * CLIENT_ROOM;

/// What one forwarded request works with.
#[derive(Default)]
pub(super) struct RequestBuffers {
    /// The request as sent upstream.
    pub(super) request: Vec<u8>,
    /// Bytes read from the upstream (room for READ_ROOM when lent).
    pub(super) response: Vec<u8>,
    /// The response head (and first body bytes) as sent to an HTTP/1.1 client.
    pub(super) client: Vec<u8>,
    /// The response head for an HTTP/2 client (taken by its stream; let go of when the set
    /// is given back).
    pub(super) stream_head: super::stream_head::StreamHead,
    /// Bytes the client sent while its request was served (a pipelined request).
    pub(super) early: Vec<u8>,
    /// An HTTP/2 stream's response body as it goes out: each DATA write is split off it, and
    /// its allocation is reclaimed once h2 has sent (and dropped) what was split off.
    pub(super) stream_body: bytes::BytesMut,
}

thread_local! {
    // Boxed in the list too: lending one moves a pointer, not the set.
    #[allow(clippy::vec_box)]
    static SETS: RefCell<Vec<Box<RequestBuffers>>> = const { RefCell::new(Vec::new()) };
    static CLIENT_READS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl RequestBuffers {
    /// A set for one request: empty buffers, the response one with READ_ROOM to read into.
    /// Boxed: a connection holds a pointer to the set of its request in flight (none idle).
    pub(super) fn lend() -> Box<Self> {
        let mut set = SETS.with_borrow_mut(|sets| sets.pop()).unwrap_or_default();
        // Only a fresh set (or one whose response buffer was let go) allocates here.
        set.response.reserve(READ_ROOM);
        set
    }

    /// Takes the set back for the next request (`early` must have been emptied: its bytes
    /// are the connection's). Buffers grown past their limit are freed.
    pub(super) fn give_back(mut self: Box<Self>) {
        debug_assert!(self.early.is_empty(), "a pipelined request would be lost");
        keep_within(&mut self.response, MAX_KEPT_RESPONSE);
        for buffer in [&mut self.request, &mut self.client, &mut self.early] {
            keep_within(buffer, MAX_KEPT_OTHER);
        }
        keep_within(&mut self.stream_body, MAX_KEPT_RESPONSE);
        // A head a failed try left (its copy of the upstream's) is not kept either.
        self.stream_head = Default::default();
        SETS.with_borrow_mut(|sets| {
            if sets.len() < KEPT {
                sets.push(self);
            }
        });
    }
}

/// A byte buffer a set keeps between requests.
trait KeptBuffer: Default {
    fn capacity(&self) -> usize;
    fn clear(&mut self);
}

impl KeptBuffer for Vec<u8> {
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
    fn clear(&mut self) {
        Vec::clear(self)
    }
}

impl KeptBuffer for bytes::BytesMut {
    fn capacity(&self) -> usize {
        bytes::BytesMut::capacity(self)
    }
    fn clear(&mut self) {
        bytes::BytesMut::clear(self)
    }
}

/// Empties `buffer`, and frees it if it grew past `limit`.
fn keep_within<B: KeptBuffer>(buffer: &mut B, limit: usize) {
    if buffer.capacity() > limit {
        *buffer = B::default();
    } else {
        buffer.clear();
    }
}

/// Reads the client's next bytes into `buf`. An empty `buf` holds no memory while it waits:
/// its allocation goes back to the thread's free list, and a buffer is taken from it only for
/// the poll that finds bytes to read (put back when the read would block), as nginx and
/// HAProxy allocate a connection's buffer only once it is readable. A non-empty `buf` (a
/// partial head or body) grows as needed.
pub(crate) async fn read_client<S>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize>
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use tokio::io::AsyncReadExt;

    if !buf.is_empty() {
        buf.reserve(READ_ROOM.min(buf.capacity().max(1024)));
        return stream.read_buf(buf).await;
    }
    release_client(std::mem::take(buf));
    poll_fn(|cx| {
        let mut lent = CLIENT_READS
            .with_borrow_mut(|free| free.pop())
            .unwrap_or_else(|| Vec::with_capacity(CLIENT_ROOM));
        match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut lent) {
            Poll::Ready(Ok(n)) if n > 0 => {
                *buf = lent;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(result) => {
                release_client(lent);
                Poll::Ready(result)
            }
            Poll::Pending => {
                release_client(lent);
                Poll::Pending
            }
        }
    })
    .await
}

/// Takes back an emptied client read buffer (a connection between requests holds none).
pub(crate) fn release_client(mut buffer: Vec<u8>) {
    if buffer.capacity() < CLIENT_ROOM || buffer.capacity() > MAX_KEPT_OTHER {
        return;
    }
    buffer.clear();
    CLIENT_READS.with_borrow_mut(|free| {
        if free.len() < KEPT {
            free.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_set_is_lent_again_and_grown_buffers_are_freed() {
        let mut first = RequestBuffers::lend();
        assert!(first.response.capacity() >= READ_ROOM);
        first.response.extend_from_slice(b"left over");
        first.request.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        first.client.reserve(MAX_KEPT_OTHER + 1);
        let response = first.response.as_ptr();
        let request = first.request.as_ptr();
        first.give_back();
        let again = RequestBuffers::lend();
        assert_eq!(again.response.as_ptr(), response, "the same allocation");
        assert_eq!(again.request.as_ptr(), request, "the same allocation");
        assert!(again.response.is_empty() && again.request.is_empty());
        assert_eq!(again.client.capacity(), 0, "a grown buffer is not kept");
        again.give_back();
    }

    #[test]
    fn only_client_buffers_of_the_usual_size_are_kept() {
        let mut usual = Vec::with_capacity(CLIENT_ROOM);
        usual.extend_from_slice(b"GET");
        let address = usual.as_ptr();
        release_client(usual);
        release_client(Vec::new());
        release_client(Vec::with_capacity(MAX_KEPT_OTHER + 1));
        let again = CLIENT_READS
            .with_borrow_mut(|free| free.pop())
            .expect("kept");
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty());
        assert!(CLIENT_READS.with_borrow(|free| free.is_empty()));
    }
}
