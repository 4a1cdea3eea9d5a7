//! Accepted connections balanced across shards. The kernel spreads new connections over the
//! shards' sockets by a hash of their addresses (`SO_REUSEPORT`), not by load; on one shared
//! socket it woke whichever shard waited first, and one shard could end up with most
//! connections (CPU 334/26 in one measured run). A shard that accepts a connection while
//! another holds clearly fewer open ones (`overloaded`) hands it over: the socket leaves the
//! accepting shard's reactor and joins the other's, which serves it from then on. One atomic
//! read per shard and accept, and a channel send only when the split is uneven; nothing per
//! request. The counts are also what a graceful stop waits on (`drain::Drain`).
//!
//! How uneven is uneven: a hand-off costs a cross-thread wake and the socket's move between
//! reactors, worth it for a connection that lives but not for one that closes after one
//! request, and a shard that drains a burst of its accept queue runs ahead of the other for a
//! moment without being loaded. But each shard's connections share that shard's CPU, so an
//! uneven split of kept-alive connections serves some clients slower than others and shows in
//! the tail: with a quarter plus two of slack, 32 connections could sit 19/13. One connection
//! of slack plus an eighth of the least loaded shard's count splits 32 connections at worst
//! 17/15 and 64 at 34/30 (per-client request rates under `h2load --h1 -c32` spread ~4× less
//! than with the quarter plus two), and costs a `Connection: close` load ~0.2 more
//! `epoll_ctl` per connection than the quarter-plus-two rule did, with no CPU per connection
//! that shows (docs/benchmarks.md "Session 30").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::tls_server::TlsListener;

/// How many more open connections than the least loaded shard's a shard may hold before it
/// hands new ones over, besides an eighth of that shard's count.
const SLACK: usize = 1;

/// Whether a shard holding `own` open connections, while the least loaded holds `fewest`,
/// hands a new one over: when it holds more than an eighth more than `fewest`, plus `SLACK`.
fn overloaded(own: usize, fewest: usize) -> bool {
    own > fewest + fewest / 8 + SLACK
}

/// A connection on its way to another shard.
pub(super) struct Handed {
    pub(super) stream: std::net::TcpStream,
    pub(super) peer: std::net::SocketAddr,
    pub(super) tls: Option<Arc<TlsListener>>,
    /// Counted open on the shard it goes to from the moment it was chosen.
    pub(super) open: OpenOnShard,
}

/// The open-connection counts of the proxy's shards and the way to each one's inbox.
pub struct ShardBalance {
    open: Box<[PaddedCount]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
    receivers: Mutex<Vec<Option<mpsc::UnboundedReceiver<Handed>>>>,
}

/// A count on a cache line of its own: shards update theirs without contending.
#[repr(align(64))]
#[derive(Default)]
struct PaddedCount(AtomicUsize);

impl ShardBalance {
    pub fn new(shards: usize) -> Arc<Self> {
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Some(rx))
            })
            .unzip();
        Arc::new(Self {
            open: (0..shards).map(|_| PaddedCount::default()).collect(),
            inboxes: inboxes.into(),
            receivers: Mutex::new(receivers),
        })
    }

    /// How many shards share the load.
    pub(super) fn shards(&self) -> usize {
        self.open.len()
    }

    /// Shard `index`'s inbox, taken once when the shard starts.
    pub(super) fn inbox(&self, index: usize) -> Option<mpsc::UnboundedReceiver<Handed>> {
        self.receivers.lock().get_mut(index).and_then(Option::take)
    }

    /// The shard that serves a connection `accepting` just accepted: itself, unless it is
    /// `overloaded` next to the least loaded one. The connection is counted there.
    pub(super) fn choose(self: &Arc<Self>, accepting: usize) -> (usize, OpenOnShard) {
        let own = self.count(accepting);
        let (least, fewest) = (0..self.open.len())
            .map(|i| (i, self.count(i)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((accepting, own));
        let target = if overloaded(own, fewest) {
            least
        } else {
            accepting
        };
        (target, self.opened(target))
    }

    /// Counts a connection open on `shard` until the returned guard drops.
    pub(super) fn opened(self: &Arc<Self>, shard: usize) -> OpenOnShard {
        if let Some(count) = self.open.get(shard) {
            count.0.fetch_add(1, Ordering::Relaxed);
        }
        OpenOnShard {
            balance: self.clone(),
            shard,
        }
    }

    /// Sends `handed` to `shard`; gives it back if that shard no longer takes connections.
    pub(super) fn hand(&self, shard: usize, handed: Handed) -> Result<(), Handed> {
        match self.inboxes.get(shard) {
            Some(inbox) => inbox.send(handed).map_err(|e| e.0),
            None => Err(handed),
        }
    }

    /// Connections open on every shard, those in transit between shards included: what the
    /// graceful stop waits for (`drain::Drain`).
    pub fn open_connections(&self) -> usize {
        self.open.iter().map(|c| c.0.load(Ordering::Acquire)).sum()
    }

    fn count(&self, shard: usize) -> usize {
        self.open
            .get(shard)
            .map_or(usize::MAX, |c| c.0.load(Ordering::Relaxed))
    }
}

/// One connection counted open on a shard.
pub(super) struct OpenOnShard {
    balance: Arc<ShardBalance>,
    shard: usize,
}

impl OpenOnShard {
    /// The same connection, counted on `shard` instead (it was handed there, or back).
    pub(super) fn moved_to(self, shard: usize) -> OpenOnShard {
        let moved = self.balance.opened(shard);
        drop(self);
        moved
    }
}

impl Drop for OpenOnShard {
    fn drop(&mut self) {
        if let Some(count) = self.balance.open.get(self.shard) {
            count.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_keeps_connections_until_it_is_clearly_ahead_of_another() {
        let balance = ShardBalance::new(2);
        let mut held = Vec::new();
        // Shard 0 accepts everything: it keeps up to SLACK more than shard 1 (and an eighth
        // of shard 1's count), then hands on.
        let mut targets = Vec::new();
        for _ in 0..8 {
            let (target, open) = balance.choose(0);
            targets.push(target);
            held.push(open);
        }
        assert_eq!(targets, [0, 0, 1, 0, 1, 0, 1, 0]);
        assert_eq!((balance.count(0), balance.count(1)), (5, 3));
        assert_eq!(balance.open_connections(), 8);
        // Closing connections uncounts them.
        held.clear();
        assert_eq!((balance.count(0), balance.count(1)), (0, 0));
    }

    #[test]
    fn kept_alive_connections_split_within_60_40_whoever_accepts_them() {
        // 64 connections, the `shards.py` load, all arriving on one shard's socket: the
        // worst case the kernel's hash could deal.
        for shards in [2, 3, 4] {
            let balance = ShardBalance::new(shards);
            let held: Vec<_> = (0..64).map(|_| balance.choose(0).1).collect();
            let counts: Vec<usize> = (0..shards).map(|i| balance.count(i)).collect();
            let (most, least) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
            // The last connection kept made the busiest one more than the rule allows.
            assert!(!overloaded(most - 1, least), "{counts:?}");
            if shards == 2 {
                assert!(most * 10 <= 64 * 6, "{counts:?}");
                assert!(most - least <= 4, "{counts:?}");
            }
            drop(held);
        }
    }

    #[test]
    fn thirty_two_kept_alive_connections_split_at_worst_17_15() {
        // The `wrk -c32` load of `tls.py`: each shard's connections share its CPU, so the
        // split is how unevenly clients are served.
        let balance = ShardBalance::new(2);
        let held: Vec<_> = (0..32).map(|_| balance.choose(0).1).collect();
        assert_eq!((balance.count(0), balance.count(1)), (17, 15));
        drop(held);
    }

    #[test]
    fn a_moved_connection_is_counted_where_it_went() {
        let balance = ShardBalance::new(3);
        let open = balance.opened(2).moved_to(1);
        assert_eq!(
            (balance.count(0), balance.count(1), balance.count(2)),
            (0, 1, 0)
        );
        drop(open);
        assert_eq!(balance.count(1), 0);
    }

    #[test]
    fn each_inbox_is_taken_once() {
        let balance = ShardBalance::new(2);
        assert!(balance.inbox(1).is_some());
        assert!(balance.inbox(1).is_none());
        assert!(balance.inbox(5).is_none());
    }
}
