//! `store = "local"`: one budget per process, shared by every thread, lock-free (a
//! concurrent map of one atomic TAT per key, moved by compare-and-swap). Keys whose bucket
//! is full again are as good as unseen and are swept away in the background, so memory
//! follows the keys active within a burst's refill time; past `MAX_KEYS` live keys, new ones
//! share one budget until the sweep makes room (limited, never unlimited).

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::gcra::{Decision, Gcra};

/// Most keys tracked one by one.
const MAX_KEYS: usize = 1_000_000;
/// The key that new keys share past MAX_KEYS.
const OVERFLOW_KEY: u64 = u64::MAX;

type Table = papaya::HashMap<u64, AtomicU64>;

/// The budgets of one filter.
#[derive(Debug)]
pub(super) struct LocalStore {
    table: Arc<Table>,
    epoch: Instant,
    /// Keys are hashed with a seed of this store's own (kept across reloads with the store):
    /// nobody outside the process can pick two keys that share a budget.
    hasher: foldhash::fast::RandomState,
}

impl LocalStore {
    pub(super) fn new(gcra: Gcra) -> Self {
        let table = Arc::new(Table::new());
        let epoch = Instant::now();
        spawn_sweeper(Arc::downgrade(&table), gcra, epoch);
        Self {
            table,
            epoch,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The table's key for `key`.
    pub(super) fn key_hash(&self, key: impl Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Takes one request from `key`'s budget, if there is one.
    pub(super) fn acquire(&self, key: u64, gcra: &Gcra) -> Decision {
        let now = nanos_since(self.epoch);
        let table = self.table.pin();
        let cell = match table.get(&key) {
            Some(cell) => cell,
            None if table.len() >= MAX_KEYS => {
                table.get_or_insert_with(OVERFLOW_KEY, || AtomicU64::new(0))
            }
            None => table.get_or_insert_with(key, || AtomicU64::new(0)),
        };
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let (decision, next) = gcra.decide(tat, now);
            if next == tat {
                return decision;
            }
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return decision,
                Err(current) => tat = current,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    fn sweep(&self, gcra: &Gcra) {
        sweep(&self.table, gcra, self.epoch);
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Removes the keys whose bucket is full again.
fn sweep(table: &Table, gcra: &Gcra, epoch: Instant) {
    let now = nanos_since(epoch);
    table
        .pin()
        .retain(|_, tat| !gcra.is_idle(tat.load(Ordering::Acquire), now));
}

/// Sweeps `table` every few seconds until its filter is gone.
fn spawn_sweeper(table: Weak<Table>, gcra: Gcra, epoch: Instant) {
    let every = Duration::from_secs(5);
    let spawned = std::thread::Builder::new()
        .name("sluice rate-limit sweep".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(table) = table.upgrade() else { return };
            sweep(&table, &gcra, epoch);
        });
    if let Err(e) = spawned {
        // Without it idle keys stay until MAX_KEYS, then share one budget: still limited.
        tracing::warn!("rate-limit: cannot start the idle-key sweep: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_budget_across_threads_and_idle_keys_swept() {
        let gcra = Gcra::new(100, Duration::from_secs(3600), 100);
        let store = Arc::new(LocalStore::new(gcra));
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if store.acquire(7, &gcra).retry_after.is_none() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
        // A key refilled at once is swept; a busy one stays.
        let quick = Gcra::new(1_000_000_000, Duration::from_secs(1), 1);
        store.acquire(8, &quick);
        std::thread::sleep(Duration::from_millis(2));
        store.sweep(&quick);
        assert_eq!(store.len(), 1);
    }
}
