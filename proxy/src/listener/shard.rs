//! Share-nothing proxy shards: one single-threaded pingora service per proxy thread, every one
//! accepting on the same listening sockets.
//!
//! Why: a pingora listening service with N threads runs its accept loop on one runtime, which
//! registers every accepted socket with *its* reactor, then spawns the connection on a random
//! runtime; and the upstream keep-alive pool hands connections between runtimes. Every read
//! and write readiness then crosses threads (an eventfd write and a wake-up per request, with
//! one thread doing all the epoll work). A shard owns its accept loop, its connections and its
//! upstream pool, like an nginx worker, and nothing crosses threads on the request path.
//!
//! Shard 0 binds the sockets through pingora as usual (or inherits them in a graceful upgrade,
//! and hands them on at the next); the others accept on duplicates of the same sockets, so there
//! is one accept queue per address and nothing else can bind the port.

use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::server::{Fds, ListenFds, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::Service as ServiceTrait;

/// How often a shard looks for the sockets shard 0 binds.
const BIND_POLL: Duration = Duration::from_millis(5);

/// One shard: a listening service that runs on one thread.
pub struct ProxyShard<A> {
    index: usize,
    service: Service<A>,
}

impl<A> ProxyShard<A> {
    /// Shard `index` of the proxy; `service` has its listeners added already.
    pub fn new(index: usize, service: Service<A>) -> Self {
        Self { index, service }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServiceTrait for ProxyShard<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let fds = match fds {
            Some(shared) if self.index > 0 => {
                let addresses = self.service.listen_addresses().unwrap_or_default();
                tokio::select! {
                    own = duplicates(&shared, &addresses) => Some(own),
                    _ = shutdown.changed() => return,
                }
            }
            fds => fds,
        };
        self.service
            .start_service(fds, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.service.name()
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.service.listen_addresses()
    }
}

/// A table of this shard's own duplicates of the sockets bound for `addresses`, once shard 0
/// has bound them all.
async fn duplicates(shared: &ListenFds, addresses: &[String]) -> ListenFds {
    loop {
        if let Some(own) = try_duplicate(shared, addresses) {
            return Arc::new(Mutex::new(own));
        }
        tokio::time::sleep(BIND_POLL).await;
    }
}

fn try_duplicate(shared: &ListenFds, addresses: &[String]) -> Option<Fds> {
    let table = shared.lock();
    let bound: Vec<RawFd> = addresses
        .iter()
        .map(|a| table.get(a).copied())
        .collect::<Option<_>>()?;
    let mut duplicated = Vec::with_capacity(bound.len());
    for (address, fd) in addresses.iter().zip(bound) {
        // SAFETY: the fd is a listening socket owned by shard 0's listener, which stays open
        // while the table lists it (the server keeps it for a graceful upgrade); we only
        // duplicate it here, under the table's lock.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match borrowed.try_clone_to_owned() {
            Ok(dup) => duplicated.push((address.clone(), dup)),
            Err(e) => {
                // The duplicates made so far close as `duplicated` drops; the caller retries.
                tracing::error!(%address, "cannot duplicate the listening socket: {e}");
                return None;
            }
        }
    }
    let mut own = Fds::new();
    for (address, dup) in duplicated {
        // The shard's listener takes ownership of the duplicate and closes it.
        own.add(address, dup.into_raw_fd());
    }
    Some(own)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd};

    use super::*;

    #[test]
    fn waits_for_every_address_then_duplicates_each() {
        let bound = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap().to_string();
        let shared: ListenFds = Arc::new(Mutex::new(Fds::new()));
        let addresses = vec![addr.clone(), "127.0.0.1:1".to_string()];
        assert!(
            try_duplicate(&shared, &addresses).is_none(),
            "one address not bound yet"
        );

        shared.lock().add(addr.clone(), bound.as_raw_fd());
        let own = try_duplicate(&shared, &addresses[..1]).unwrap();
        let dup = *own.get(&addr).unwrap();
        assert_ne!(dup, bound.as_raw_fd());

        // The duplicate accepts from the same queue; closing it leaves the original open.
        // SAFETY: `dup` was just made for this test and nothing else owns it.
        let dup = unsafe { TcpListener::from_raw_fd(dup) };
        let mut client = TcpStream::connect(&addr).unwrap();
        let (mut served, _) = dup.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        served.read_exact(&mut byte).unwrap();
        drop(dup);
        TcpStream::connect(&addr).unwrap();
        bound.accept().unwrap();
    }
}
