//! A measuring stick, not a proxy: the least a hand-written HTTP/1.1 keep-alive proxy on tokio
//! can cost per request on this machine, to tell whether a lean request path of Sluice's own
//! could beat nginx where pingora's cannot (docs/benchmarks.md, issue 6).
//!
//! Per thread, a single-threaded runtime accepting on a duplicate of one listening socket (as
//! Sluice's shards do); per connection: read a request head (httparse), pick the next upstream
//! in turn, send the head with the same X-Forwarded-For, -Proto and -Host headers Sluice adds
//! on a pooled upstream connection of this thread, read the response head and its
//! Content-Length body, send both back. Requests with a body, chunked responses and
//! everything else a proxy must handle are out of scope: the connection is closed.
//!
//! `lean-floor LISTEN THREADS UPSTREAM...`, e.g.
//! `lean-floor 127.0.0.1:8082 1 127.0.0.1:9001 127.0.0.1:9002`

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MAX_HEADERS: usize = 64;

/// One thread's upstreams and their idle connections.
struct Upstreams {
    addrs: Vec<SocketAddr>,
    idle: Vec<RefCell<Vec<TcpStream>>>,
    next: Cell<usize>,
}

fn main() {
    let sluice_benches::FloorArgs {
        listen,
        threads,
        upstreams,
    } = sluice_benches::FloorArgs::from_env("lean-floor");
    let listener = match std::net::TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{listen}: {e}");
            std::process::exit(1);
        }
    };
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener
                .try_clone()
                .expect("duplicating the listening socket");
            let addrs = upstreams.clone();
            std::thread::spawn(move || worker(listener, addrs))
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

fn worker(listener: std::net::TcpListener, addrs: Vec<SocketAddr>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let listener = TcpListener::from_std(listener).expect("registering the listener");
        let upstreams = Rc::new(Upstreams {
            idle: addrs.iter().map(|_| RefCell::new(Vec::new())).collect(),
            addrs,
            next: Cell::new(0),
        });
        loop {
            let Ok((client, peer)) = listener.accept().await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            tokio::task::spawn_local(serve(client, peer, upstreams.clone()));
        }
    });
}

async fn serve(mut client: TcpStream, peer: SocketAddr, upstreams: Rc<Upstreams>) {
    let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut resp: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The request head.
        let head_len = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&inbuf) {
                Ok(httparse::Status::Complete(n)) => {
                    if !build_upstream_head(&req, peer, &mut head) {
                        return;
                    }
                    break n;
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            if read_more(&mut client, &mut inbuf).await == 0 {
                return;
            }
        };
        inbuf.drain(..head_len);

        // The upstream, in turn, on a pooled connection of this thread.
        let i = upstreams.next.get() % upstreams.addrs.len();
        upstreams.next.set(i + 1);
        let pooled = upstreams.idle[i].borrow_mut().pop();
        let mut upstream = match pooled {
            Some(s) => s,
            None => match TcpStream::connect(upstreams.addrs[i]).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    s
                }
                Err(_) => return,
            },
        };
        if upstream.write_all(&head).await.is_err() {
            return;
        }

        // The response head and its Content-Length body.
        resp.clear();
        let total = loop {
            if read_more(&mut upstream, &mut resp).await == 0 {
                return;
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&resp) {
                Ok(httparse::Status::Complete(n)) => match content_length(res.headers) {
                    Some(len) => break n + len,
                    None => return,
                },
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
        };
        while resp.len() < total {
            if read_more(&mut upstream, &mut resp).await == 0 {
                return;
            }
        }
        upstreams.idle[i].borrow_mut().push(upstream);
        if client.write_all(&resp[..total]).await.is_err() {
            return;
        }
    }
}

/// Reads what is there into the spare room of `buf`; 0 at EOF or error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await.unwrap_or(0)
}

/// The head to send upstream, with the forwarding headers; false for what is out of scope.
fn build_upstream_head(req: &httparse::Request, peer: SocketAddr, out: &mut Vec<u8>) -> bool {
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return false;
    };
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: &[u8] = b"";
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return false;
        }
        if name.eq_ignore_ascii_case("host") {
            host = h.value;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-host")
            || name.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "X-Forwarded-For: {}\r\n", peer.ip());
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n\r\n");
    true
}

fn content_length(headers: &[httparse::Header]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
}
