//! The fast path's upstream keep-alive connections: idle connections per upstream address,
//! owned by the thread (one proxy shard) that made them, so taking one back is a `Vec::pop`
//! with no lock and no cross-thread wake-up.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

struct Idle {
    stream: TcpStream,
    /// When it is closed unused (`proxy.upstream_idle_timeout` after it became idle, as the
    /// route that kept it had it: a reload applies to the connections kept after it).
    expires: Instant,
}

#[derive(Default)]
struct Connections {
    /// FxHash: a SocketAddr needs no DoS-resistant hash, and SipHash cost ~230 instructions
    /// per lookup, two lookups a request.
    idle: FxHashMap<SocketAddr, Vec<Idle>>,
    /// Whether this thread's sweeper task runs.
    sweeping: bool,
}

thread_local! {
    static CONNECTIONS: RefCell<Connections> = RefCell::new(Connections::default());
}

/// An upstream connection and whether it served a request before.
pub(super) struct Upstream {
    pub(super) stream: TcpStream,
    pub(super) reused: bool,
}

/// A connection to `addr` that has not expired by `now`, most recent first, and that is clean: every kept connection is checked before reuse, whatever the
/// method, so bytes an upstream wrote after its response (a late second response, a body
/// after a HEAD answer or a 204) never reach the next request, and a closed one is not tried.
pub(super) fn take_idle(addr: SocketAddr, now: Instant) -> Option<Upstream> {
    CONNECTIONS.with_borrow_mut(|c| {
        let list = c.idle.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            if now >= idle.expires {
                continue;
            }
            if !is_clean(&idle.stream) {
                continue;
            }
            return Some(Upstream {
                stream: idle.stream,
                reused: true,
            });
        }
        None
    })
}

/// Whether an idle connection has nothing to read and is not closed: one non-blocking peek
/// (`recv(MSG_PEEK | MSG_DONTWAIT)`). The reactor's cached readiness is not enough: bytes that
/// arrived after the last read may not have been polled yet on a busy shard.
fn is_clean(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: the fd is the open socket `stream` owns; one byte is written at most, into
    // `byte`, which outlives the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let e = std::io::Error::last_os_error();
        e.kind() == std::io::ErrorKind::WouldBlock
    }
}

/// Keeps `stream` for the next request to `addr`, unless `max_idle` are kept already. `since`
/// is when it became idle, or earlier (the request's start: one clock read fewer, and an
/// idle time counted long only retires the connection sooner).
pub(super) fn put_idle(
    addr: SocketAddr,
    stream: TcpStream,
    since: Instant,
    max_idle: usize,
    idle_timeout: Duration,
) {
    let start_sweeper = CONNECTIONS.with_borrow_mut(|c| {
        let list = c.idle.entry(addr).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                stream,
                expires: since + idle_timeout,
            });
        }
        !std::mem::replace(&mut c.sweeping, true)
    });
    if start_sweeper {
        // The shard's runtime is single-threaded: the task runs on this thread and sweeps this
        // thread's connections.
        tokio::spawn(sweep_forever(idle_timeout));
    }
}

/// Closes expired connections (those to instances that left the pool included), checking a
/// few times per timeout (the first one kept: a sweeping period, not a limit).
async fn sweep_forever(idle_timeout: Duration) {
    let period = (idle_timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let now = Instant::now();
        CONNECTIONS.with_borrow_mut(|c| {
            c.idle.retain(|_, list| {
                list.retain(|idle| now < idle.expires);
                !list.is_empty()
            });
        });
    }
}

/// A new connection to `addr`, within `timeout`.
pub(super) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Upstream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::TimedOut),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused)
        }
        Ok(Err(e)) => return Err(ConnectError::Other(e)),
        Ok(Ok(stream)) => stream,
    };
    // Small requests and responses go out at once.
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        stream,
        reused: false,
    })
}

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("connect timed out")]
    TimedOut,
    #[error("connection refused")]
    Refused,
    #[error("{0}")]
    Other(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_a_clean_connection_and_drops_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_secs(10);
        let Upstream { stream, .. } = connect(addr, timeout).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        put_idle(addr, stream, Instant::now(), 4, timeout);
        let again = take_idle(addr, Instant::now()).expect("clean");
        assert!(again.reused);
        put_idle(addr, again.stream, Instant::now(), 4, timeout);

        drop(served);
        // The close reaches the socket; the reactor is not polled in between (no await).
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            take_idle(addr, Instant::now()).is_none(),
            "closed by the upstream"
        );

        // Stray bytes after a response: seen before reuse, even before the reactor is polled.
        let Upstream { stream, .. } = connect(addr, timeout).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        put_idle(addr, stream, Instant::now(), 4, timeout);
        std::io::Write::write_all(&mut served.into_std().unwrap(), b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(take_idle(addr, Instant::now()).is_none(), "bytes left over");

        let Upstream { stream, .. } = connect(addr, timeout).await.unwrap();
        put_idle(addr, stream, Instant::now(), 4, Duration::ZERO);
        assert!(take_idle(addr, Instant::now()).is_none(), "idle too long");
        let refused = connect("127.0.0.1:1".parse().unwrap(), timeout).await;
        assert!(matches!(refused, Err(ConnectError::Refused)));
    }
}
