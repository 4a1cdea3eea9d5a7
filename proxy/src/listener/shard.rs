//! Share-nothing proxy shards: one single-threaded service per proxy thread, every one
//! with its own listening socket per address and accept loops of its own.
//!
//! Why shards: a pingora listening service with N threads runs its accept loop on one runtime,
//! which registers every accepted socket with *its* reactor, then spawns the connection on a
//! random runtime; and the upstream keep-alive pool hands connections between runtimes. Every
//! read and write readiness then crosses threads (an eventfd write and a wake-up per request,
//! with one thread doing all the epoll work). A shard owns its accept loop, its connections and
//! its upstream pool, like an nginx worker, and nothing crosses threads on the request path.
//!
//! Why its own accept loops: pingora's listening service spawns each connection as one task
//! whose future holds the TLS handshake's state inline (~9 KiB, kept for the connection's
//! whole life, TLS or not). Here a connection's task holds only the loop over its requests;
//! the handshake is boxed and freed once done. Client streams hold no buffers of their own:
//! reads go straight into the request's own buffer, the fast path writes a response whole,
//! and writes in pieces (pingora's path, TLS records) are held only until their flush
//! (`Rewind`).
//!
//! Every shard binds its own socket per address, all in the port's `SO_REUSEPORT` group (the
//! kernel spreads new connections over them and wakes one shard per connection), and lists it
//! in the server's socket table under its own key (the address for shard 0, `address#N` for
//! shard N), so a graceful upgrade hands each one on; a shard finds its socket there when it
//! was inherited. Only processes of the same user can join a port's group. A predecessor whose
//! sockets predate reuseport groups is met with duplicates of its one socket, and sockets of
//! shards a predecessor had beyond this process's are accepted on by shard 0. Every shard
//! claims its keys (`listen_addresses`): pingora closes an inherited socket no service claims,
//! and a group's socket left to the predecessor alone takes the connections queued on it
//! down when the predecessor exits.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::{Fds, ListenFds, ShutdownWatch};
use pingora::services::Service as ServiceTrait;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::balance::{Handed, OpenOnShard, ShardBalance};
use super::rewind::Rewind;
use super::tls_server::TlsListener;
use crate::drain::stopping;

/// How often a shard looks for the sockets shard 0 binds.
const BIND_POLL: Duration = Duration::from_millis(5);
/// The listen backlog (pingora's).
const BACKLOG: u32 = 65_535;
/// Longest a TLS handshake may take (pingora's).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an accept loop rests when the process is out of descriptors (EMFILE): accept
/// would fail again at once and spin.
const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_secs(1);

/// What serving a cleartext connection is: boxed, as it lives for the connection's life and
/// is as large as the app's state while the connection idles; made before the connection's
/// task is spawned, so the task holds this box and not the socket and address besides.
pub type PlainConnection = Pin<Box<dyn Future<Output = Option<Stream>> + Send>>;

/// What a shard serves its connections with: a pingora app, which may serve a cleartext
/// connection on its bare socket and build pingora's stream only when it needs one.
pub trait ShardApp: ServerApp + Send + Sync + 'static {
    /// Serves a cleartext connection from `peer`; the stream it hands back (if any) is served
    /// by `process_new` from then on. Not an `async fn` (`async_trait`'s wrapper would keep a
    /// second copy of each argument beside the app's own future, for the connection's life).
    fn process_plain(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        shutdown: ShutdownWatch,
    ) -> PlainConnection {
        Box::pin(async move {
            self.process_new(pingora_stream(tcp, Some(peer)), &shutdown)
                .await
        })
    }
}

/// pingora's stream of a cleartext connection from `peer`, with the socket digest pingora
/// reads the client's address from (without `peer`, the digest asks the socket when it is
/// first read).
pub fn pingora_stream(tcp: TcpStream, peer: Option<std::net::SocketAddr>) -> Stream {
    l4_stream(tcp, peer)
}

fn l4_stream(tcp: TcpStream, peer: Option<std::net::SocketAddr>) -> Box<L4Stream> {
    let mut l4 = Box::new(L4Stream::from(tcp));
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    if let Some(peer) = peer {
        // A new digest: its peer address is not set yet.
        let _ = digest.peer_addr.set(Some(peer.into()));
    }
    l4.set_socket_digest(digest);
    l4
}

/// A listening address of the proxy, cleartext or TLS.
pub struct Endpoint {
    addr: String,
    tls: Option<Arc<TlsListener>>,
}

impl Endpoint {
    pub fn plain(addr: String) -> Self {
        Self { addr, tls: None }
    }

    /// A TLS address; `listener` is shared by every shard and TLS address (one ticket key,
    /// one session cache).
    pub fn tls(addr: String, listener: Arc<TlsListener>) -> Self {
        Self {
            addr,
            tls: Some(listener),
        }
    }
}

/// One shard: the proxy's accept loops and connections on `threads` threads (1 for a
/// shard; more for the single work-stealing service).
pub struct ProxyShard<A> {
    index: usize,
    name: String,
    threads: usize,
    app: Arc<A>,
    endpoints: Arc<[Endpoint]>,
    balance: Arc<ShardBalance>,
}

impl<A> ProxyShard<A> {
    /// Shard `index` of the proxy, serving `endpoints` with `app`; `balance` is shared by
    /// every shard of the proxy.
    pub fn new(
        index: usize,
        name: String,
        threads: usize,
        app: A,
        endpoints: Arc<[Endpoint]>,
        balance: Arc<ShardBalance>,
    ) -> Self {
        Self {
            index,
            name,
            threads,
            app: Arc::new(app),
            endpoints,
            balance,
        }
    }

    /// The socket-table keys this shard claims: its own socket's for each address, and for
    /// shard 0 also those of shards a predecessor ran beyond this process's count (shard 0
    /// accepts on them, `leftovers`). Pingora closes an inherited socket nobody claims before
    /// any service starts, and a socket of the port's reuseport group closed in this process
    /// lives on in the predecessor only, whose exit resets the connections queued on it.
    fn claimed_keys(&self) -> Vec<String> {
        let indices: Vec<usize> = if self.index == 0 {
            std::iter::once(0)
                .chain(self.balance.shards()..crate::config::MAX_THREADS)
                .collect()
        } else {
            vec![self.index]
        };
        self.endpoints
            .iter()
            .flat_map(|e| indices.iter().map(|&i| shard_key(&e.addr, i)))
            .collect()
    }
}

#[async_trait]
impl<A: ShardApp> ServiceTrait for ProxyShard<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let table = fds.unwrap_or_else(|| Arc::new(Mutex::new(Fds::new())));
        let mut loops = Vec::new();
        if let Some(inbox) = self.balance.inbox(self.index) {
            loops.push(tokio::spawn(serve_handed(
                self.app.clone(),
                inbox,
                shutdown.clone(),
            )));
        }
        let shard = Shard {
            index: self.index,
            balance: self.balance.clone(),
        };
        for endpoint in self.endpoints.iter() {
            let listened = tokio::select! {
                listened = listen_shard(&table, &endpoint.addr, self.index) => listened,
                () = stopping(&mut shutdown) => return,
            };
            let mut listeners = match listened {
                Ok(listener) => vec![listener],
                Err(e) => {
                    tracing::error!(address = %endpoint.addr, "cannot listen: {e}");
                    continue;
                }
            };
            if self.index == 0 {
                // Sockets of shards a predecessor had and this process has not: still in the
                // port's reuseport group, so the kernel keeps giving them connections. Shard 0
                // accepts on them too.
                listeners.extend(leftovers(&table, &endpoint.addr, self.balance.shards()));
            }
            for listener in listeners.into_iter().map(Arc::new) {
                for _ in 0..listeners_per_fd.max(1) {
                    loops.push(tokio::spawn(accept_loop(
                        self.app.clone(),
                        shard.clone(),
                        listener.clone(),
                        endpoint.tls.clone(),
                        shutdown.clone(),
                    )));
                }
            }
        }
        for accepting in loops {
            // An accept loop ends at shutdown; a panicked one has nothing to hand back.
            let _ = accepting.await;
        }
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.claimed_keys())
    }
}

/// The key of shard `index`'s socket for `addr` in the socket table: the address itself for
/// shard 0 (what a predecessor of any version lists), `addr#index` for the others.
fn shard_key(addr: &str, index: usize) -> String {
    if index == 0 {
        addr.to_string()
    } else {
        format!("{addr}#{index}")
    }
}

/// Shard `index`'s listening socket for `addr`: its own, in the port's `SO_REUSEPORT` group, so
/// the kernel spreads new connections over the shards and wakes one shard per connection (on
/// one shared socket every shard's reactor woke for each connection, and all but one found
/// nothing to accept: `Connection: close` load 28.7 k -> 31.7 k requests/s with 2 shards).
/// Inherited from a predecessor in a graceful upgrade when its table lists it; else bound and
/// listed for the next. Shard 0 binds first and the others join its address (its port, when
/// `addr` asked for any). A port another process holds, in a reuseport group or not, was
/// refused before any shard starts (`Parts::check_listeners`, whose plain bind fails on any
/// listening socket), so a second gateway started on it by mistake does not take a share.
/// When the port is held by a predecessor's socket outside any reuseport group (a build that
/// predates them), a shard accepts on a duplicate of shard 0's.
async fn listen_shard(table: &ListenFds, addr: &str, index: usize) -> std::io::Result<TcpListener> {
    let key = shard_key(addr, index);
    if index == 0 {
        return listen(table, &key, || parse_address(addr));
    }
    let shard_0 = loop {
        if let Some(fd) = table.lock().get(addr).copied() {
            break fd;
        }
        tokio::time::sleep(BIND_POLL).await;
    };
    // SAFETY: shard 0's listening socket, open while the table lists it (the server keeps it
    // for a graceful upgrade); only borrowed here to read its address and to duplicate it.
    let shard_0 = unsafe { BorrowedFd::borrow_raw(shard_0) };
    match listen(table, &key, || local_address(shard_0)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let std = std::net::TcpListener::from(shard_0.try_clone_to_owned()?);
            std.set_nonblocking(true)?;
            TcpListener::from_std(std)
        }
        listened => listened,
    }
}

/// The inherited sockets for `addr` of shards `shards` and up (a predecessor ran more shards).
fn leftovers(table: &ListenFds, addr: &str, shards: usize) -> Vec<TcpListener> {
    let table = table.lock();
    (shards..)
        .map_while(|index| table.get(&shard_key(addr, index)).copied())
        .filter_map(|fd| {
            // SAFETY: a listening socket inherited for a shard this process does not run;
            // owned from here by shard 0's extra listener (the table keeps the number for the
            // next upgrade, as for every inherited socket).
            let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            std.set_nonblocking(true).ok()?;
            without_delay(&std);
            TcpListener::from_std(std).ok()
        })
        .collect()
}

fn parse_address(addr: &str) -> std::io::Result<SocketAddr> {
    addr.parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))
}

/// The address `socket` is bound to.
fn local_address(socket: BorrowedFd<'_>) -> std::io::Result<SocketAddr> {
    // A listener that borrows the descriptor: `ManuallyDrop` keeps it from closing it.
    // SAFETY: `socket` is a valid open descriptor for the borrow's length.
    let borrowed = std::mem::ManuallyDrop::new(unsafe {
        std::net::TcpListener::from_raw_fd(socket.as_raw_fd())
    });
    borrowed.local_addr()
}

fn new_socket(address: SocketAddr) -> std::io::Result<TcpSocket> {
    if address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// The listening socket `table` lists under `key` (inherited in a graceful upgrade), else a
/// new one bound to the address `bind_to` gives, in the port's reuseport group, listed under
/// `key` so the next upgrade hands it on.
fn listen(
    table: &ListenFds,
    key: &str,
    bind_to: impl FnOnce() -> std::io::Result<SocketAddr>,
) -> std::io::Result<TcpListener> {
    let mut table = table.lock();
    let socket = match table.get(key) {
        Some(&fd) => {
            // SAFETY: the table's descriptors are listening sockets handed to this service to
            // own (inherited from the previous process); each is taken once, by the one shard
            // that listens under its key.
            let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
            // The reactor needs it non-blocking, whoever made it.
            std.set_nonblocking(true)?;
            // Listening again on a listening socket only updates its backlog (Linux).
            TcpSocket::from_std_stream(std)
        }
        None => {
            let address = bind_to()?;
            let socket = new_socket(address)?;
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(address)?;
            table.add(key.to_string(), socket.as_raw_fd());
            socket
        }
    };
    without_delay(&socket);
    socket.listen(BACKLOG)
}

/// Sets `TCP_NODELAY` on a listening socket: every socket it accepts starts with it (Linux
/// and the BSDs copy it to each accepted socket), so a connection needs no `setsockopt` of
/// its own — one system call fewer per connection, 1 of ~14 for a request on a new
/// connection. Responses are written whole: there is no reason to wait for more; and a body
/// written in pieces would wait on the client's delayed acknowledgement without it.
/// A socket that refuses it is still listened on (its connections then wait on Nagle's
/// algorithm): losing a listener, or an inherited one's queue, is worse.
fn without_delay(listener: &impl AsRawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor for the borrow's length; the option's value is the `c_int`
    // on this stack frame, and its length is that of a `c_int`.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!("cannot set TCP_NODELAY on a listening socket: {e}");
    }
}

/// Which shard an accept loop belongs to, and the proxy's balance.
#[derive(Clone)]
struct Shard {
    index: usize,
    balance: Arc<ShardBalance>,
}

/// Accepts connections until the gateway stops, one task each: on this shard, or handed to a
/// less loaded one.
async fn accept_loop<A: ShardApp>(
    app: Arc<A>,
    shard: Shard,
    listener: Arc<TcpListener>,
    tls: Option<Arc<TlsListener>>,
    mut shutdown: ShutdownWatch,
) {
    loop {
        let accepted = tokio::select! {
            // The stop first: once it began, what waits in the queue is left to a successor
            // that shares the socket (a graceful upgrade), not taken on here.
            biased;
            () = stopping(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (target, open) = shard.balance.choose(shard.index);
                let kept = if target == shard.index {
                    Some((stream, open))
                } else {
                    hand_over(&shard, target, stream, peer, &tls, open)
                        .map(|(stream, open)| (stream, open.moved_to(shard.index)))
                };
                if let Some((stream, open)) = kept {
                    spawn_connection(&app, stream, peer, tls.clone(), &shutdown, open);
                }
            }
            Err(e) => {
                tracing::error!("accept failed: {e}");
                if e.raw_os_error() == Some(libc::EMFILE) {
                    tokio::time::sleep(OUT_OF_DESCRIPTORS_PAUSE).await;
                }
            }
        }
    }
}

/// Sends `stream` (counted open on `target` by `open`, in transit too) to shard `target`;
/// `None` once it is on its way (or lost: a socket that cannot leave this shard's reactor is
/// closed), else the stream back to serve here (the target no longer takes connections).
fn hand_over(
    shard: &Shard,
    target: usize,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    tls: &Option<Arc<TlsListener>>,
    open: OpenOnShard,
) -> Option<(TcpStream, OpenOnShard)> {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!("cannot hand a connection to shard {target}: {e}");
            return None;
        }
    };
    let handed = Handed {
        stream,
        peer,
        tls: tls.clone(),
        open,
    };
    match shard.balance.hand(target, handed) {
        Ok(()) => None,
        Err(back) => TcpStream::from_std(back.stream)
            .ok()
            .map(|stream| (stream, back.open)),
    }
}

/// Serves the connections other shards hand to this one, until the gateway stops.
async fn serve_handed<A: ShardApp>(
    app: Arc<A>,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Handed>,
    mut shutdown: ShutdownWatch,
) {
    loop {
        let handed = tokio::select! {
            handed = inbox.recv() => handed,
            () = stopping(&mut shutdown) => return,
        };
        let Some(handed) = handed else { return };
        // Joins this shard's reactor: its readiness is served here from now on.
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => spawn_connection(
                &app,
                stream,
                handed.peer,
                handed.tls,
                &shutdown,
                handed.open,
            ),
            Err(e) => tracing::debug!("cannot take over a handed connection: {e}"),
        }
    }
}

/// Spawns the task of one accepted connection on this shard.
fn spawn_connection<A: ShardApp>(
    app: &Arc<A>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<Arc<TlsListener>>,
    shutdown: &ShutdownWatch,
    open: OpenOnShard,
) {
    // TCP_NODELAY came with the accept (`without_delay` on the listening socket).
    match tls {
        None => {
            let plain = app.clone().process_plain(stream, peer, shutdown.clone());
            tokio::spawn(plain_connection(app.clone(), plain, shutdown.clone(), open));
        }
        Some(tls) => {
            tokio::spawn(tls_connection(
                app.clone(),
                stream,
                peer,
                tls,
                shutdown.clone(),
                open,
            ));
        }
    }
}

/// One cleartext connection: `plain` (`ShardApp::process_plain`, on the bare socket), then
/// the app for as long as it hands a stream back. An `async move` block, not an `async fn`:
/// the task keeps each argument once, not once as an argument and again as the body's local
/// (with the box made before the task, a task of 256 bytes instead of 384).
// An async block keeps each argument once (see above): not an `async fn` on purpose.
#[allow(clippy::manual_async_fn)]
fn plain_connection<A: ShardApp>(
    app: Arc<A>,
    plain: PlainConnection,
    shutdown: ShutdownWatch,
    open: OpenOnShard,
) -> impl Future<Output = ()> + Send {
    async move {
        // Counted open on this shard while the task lives: the block owns it.
        let _ = &open;
        let mut plain = plain;
        // Polled where it is (`Pin<Box<_>>` is `Unpin`), not moved into a second slot.
        if let Some(stream) = (&mut plain).await {
            drop(plain);
            // Boxed: only a connection handed to pingora needs it.
            Box::pin(serve_handed_back(&app, stream, &shutdown)).await;
        }
    }
}

/// A stream the app hands back (pingora's keep-alive) is served again until it is done.
async fn serve_handed_back<A: ShardApp>(app: &Arc<A>, stream: Stream, shutdown: &ShutdownWatch) {
    let mut next = app.process_new(stream, shutdown).await;
    while let Some(stream) = next {
        next = app.process_new(stream, shutdown).await;
    }
}

/// One TLS connection: its handshake (boxed: its state is freed once done, not kept for the
/// connection's life), then pingora's stream to the app for as long as it hands it back. An
/// `async move` block, not an `async fn`: the task keeps each argument once.
// An async block keeps each argument once (see above): not an `async fn` on purpose.
#[allow(clippy::manual_async_fn)]
fn tls_connection<A: ShardApp>(
    app: Arc<A>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    listener: Arc<TlsListener>,
    shutdown: ShutdownWatch,
    open: OpenOnShard,
) -> impl Future<Output = ()> + Send {
    async move {
        // Counted open on this shard while the task lives: the block owns it.
        let _ = &open;
        let l4 = l4_stream(tcp, Some(peer));
        let handshake = Box::pin(tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            // Under TLS, the records of a response are held until its flush: one write.
            listener.acceptor.tls_handshake(Rewind::new(Vec::new(), l4)),
        ));
        let counters = &listener.counters;
        let tls: Stream = match handshake.await {
            Ok(Ok(tls)) => {
                counters.completed.inc();
                Box::new(tls)
            }
            Ok(Err(e)) => {
                counters.failed.inc();
                tracing::debug!("TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                counters.failed.inc();
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
        serve_handed_back(&app, tls, &shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::*;

    /// Answers each connection with the name of the thread that serves it, then holds it.
    struct WhichThread;

    #[async_trait]
    impl ServerApp for WhichThread {
        async fn process_new(
            self: &Arc<Self>,
            mut stream: Stream,
            _shutdown: &ShutdownWatch,
        ) -> Option<Stream> {
            use tokio::io::AsyncWriteExt;
            let name = std::thread::current().name().unwrap_or("").to_string();
            stream
                .write_all(format!("{name}\n").as_bytes())
                .await
                .ok()?;
            stream.flush().await.ok()?;
            std::future::pending::<()>().await;
            None
        }
    }

    impl ShardApp for WhichThread {}

    #[test]
    fn connections_accepted_on_one_socket_are_split_evenly_across_shards() {
        let bound = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap().to_string();
        let table: ListenFds = Arc::new(Mutex::new(Fds::new()));
        // Listed as if inherited: shard 0 takes it over, shard 1 duplicates it.
        table.lock().add(addr.clone(), bound.into_raw_fd());
        let endpoints: Arc<[Endpoint]> = vec![Endpoint::plain(addr.clone())].into();
        let balance = ShardBalance::new(2);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let shards: Vec<_> = (0..2)
            .map(|index| {
                // Shard 1 listens on nothing: shard 0 accepts every connection, and only
                // the hand-off can give shard 1 its share.
                let listens = if index == 0 {
                    endpoints.clone()
                } else {
                    Arc::from(Vec::new())
                };
                let mut shard = ProxyShard::new(
                    index,
                    format!("shard {index}"),
                    1,
                    WhichThread,
                    listens,
                    balance.clone(),
                );
                let (table, shutdown) = (table.clone(), shutdown.clone());
                std::thread::Builder::new()
                    .name(format!("shard {index}"))
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        runtime.block_on(shard.start_service(Some(table), shutdown, 1));
                    })
                    .unwrap()
            })
            .collect();
        let mut clients = Vec::new();
        let mut served = [0usize; 2];
        for _ in 0..20 {
            let mut client = TcpStream::connect(&addr).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while client.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            match line.as_slice() {
                b"shard 0" => served[0] += 1,
                b"shard 1" => served[1] += 1,
                other => panic!("served by {:?}", String::from_utf8_lossy(other)),
            }
            clients.push(client);
        }
        // Within the balance's rule: an eighth more than the other's count, plus one, plus
        // the connection that made it so.
        assert!(
            served[0].abs_diff(served[1]) <= 3,
            "split {served:?} across the shards"
        );
        assert!(served[1] >= 8, "shard 1 got its share: {served:?}");
        stop.send(true).unwrap();
        drop(clients);
        drop(shards);
    }

    /// Accepts on `listener` until `wanted` connections came or a second passed.
    async fn accepted(listener: &tokio::net::TcpListener, wanted: usize) -> usize {
        let mut n = 0;
        while n < wanted {
            match tokio::time::timeout(Duration::from_millis(200), listener.accept()).await {
                Ok(Ok(_)) => n += 1,
                _ => break,
            }
        }
        n
    }

    #[tokio::test]
    async fn every_shard_listens_in_the_port_group_under_its_own_key() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let table: ListenFds = Arc::new(Mutex::new(Fds::new()));
        let first = listen_shard(&table, &addr, 0).await.unwrap();
        let second = listen_shard(&table, &addr, 1).await.unwrap();
        let zero_fd = *table.lock().get(&addr).unwrap();
        let one_fd = *table.lock().get(&format!("{addr}#1")).unwrap();
        assert_eq!(zero_fd, first.as_raw_fd());
        assert_eq!(one_fd, second.as_raw_fd());
        // The kernel spreads connections over the group: both get some of 40.
        let clients: Vec<_> = (0..40)
            .map(|_| TcpStream::connect(&addr).unwrap())
            .collect();
        let (a, b) = (accepted(&first, 40).await, accepted(&second, 40).await);
        assert_eq!(a + b, 40);
        assert!(a > 0 && b > 0, "split {a}/{b}");
        drop(clients);

        // A successor finds each shard's socket by its key; one it has no shard for is
        // accepted on by shard 0.
        // (Shard 2's socket as a predecessor left it: listed, owned by no listener here.)
        let third = listen_shard(&table, &addr, 2).await.unwrap();
        let third = third.into_std().unwrap().into_raw_fd();
        let extra = leftovers(&table, &addr, 2);
        assert_eq!(extra.len(), 1);
        assert_eq!(extra[0].as_raw_fd(), third);
        assert!(leftovers(&table, &addr, 3).is_empty());
    }

    #[tokio::test]
    async fn accepted_connections_come_without_delay() {
        // Bound here, and inherited from a predecessor that did not set it.
        let bound = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap().to_string();
        let table: ListenFds = Arc::new(Mutex::new(Fds::new()));
        table.lock().add(addr.clone(), bound.into_raw_fd());
        let inherited = listen_shard(&table, &addr, 0).await.unwrap();
        let fresh = listen_shard(&table, "127.0.0.1:0", 0).await.unwrap();
        let leftover = TcpListener::bind("127.0.0.1:0").unwrap();
        let leftover_addr = leftover.local_addr().unwrap().to_string();
        table
            .lock()
            .add(shard_key(&leftover_addr, 1), leftover.into_raw_fd());
        let leftover = leftovers(&table, &leftover_addr, 1).remove(0);
        for listener in [inherited, fresh, leftover] {
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (served, _) = listener.accept().await.unwrap();
            assert!(served.nodelay().unwrap());
        }
    }

    #[tokio::test]
    async fn the_other_shards_wait_for_shard_0_and_join_its_port() {
        // Any port: only shard 0's bind picks it, and the others must join that one.
        let addr = "127.0.0.1:0";
        let table: ListenFds = Arc::new(Mutex::new(Fds::new()));
        let early = tokio::spawn({
            let table = table.clone();
            async move { listen_shard(&table, addr, 1).await }
        });
        tokio::time::sleep(BIND_POLL * 4).await;
        assert!(!early.is_finished(), "shard 1 bound before shard 0");
        let first = listen_shard(&table, addr, 0).await.unwrap();
        let second = early.await.unwrap().unwrap();
        let port = first.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(second.local_addr().unwrap().port(), port);
        assert_ne!(first.as_raw_fd(), second.as_raw_fd());
    }

    #[tokio::test]
    async fn a_predecessors_socket_outside_any_group_is_duplicated() {
        // Bound without SO_REUSEPORT, as a predecessor of an older build did, and inherited.
        let bound = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap().to_string();
        let table: ListenFds = Arc::new(Mutex::new(Fds::new()));
        table.lock().add(addr.clone(), bound.as_raw_fd());
        let other = listen_shard(&table, &addr, 1).await.unwrap();
        assert_ne!(other.as_raw_fd(), bound.as_raw_fd());
        // The duplicate accepts from the same queue.
        let mut client = TcpStream::connect(&addr).unwrap();
        let (mut served, _) = other.accept().await.unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut served, &mut byte)
            .await
            .unwrap();
        assert_eq!(&byte, b"x");
    }
}
