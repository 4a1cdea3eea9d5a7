//! The directory of services: applies registry updates in revision order, rebuilds the pools
//! of the services they touch and swaps each in whole; owns the live-state table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;

use super::snapshot::{Chunk, CHUNK};
use super::{instance_key, InstanceLive, Member, Pool};
use crate::metrics::Metrics;
use crate::registry::{InstanceSpec, Scheme, SourceEvent, Status, Update};

/// The one atomically swapped pool of one service. Routes hold the slot; requests load the pool.
#[derive(Debug)]
pub struct ServiceSlot {
    name: Arc<str>,
    pool: ArcSwap<Pool>,
}

impl ServiceSlot {
    fn new(name: Arc<str>) -> Self {
        Self {
            pool: ArcSwap::from_pointee(Pool::empty(name.clone())),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The current snapshot: lock-free, wait-free for readers.
    pub fn load(&self) -> arc_swap::Guard<Arc<Pool>> {
        self.pool.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn load_full(&self) -> Arc<Pool> {
        self.pool.load_full()
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Arc<str>, Arc<ServiceSlot>>,
    /// Instances as last applied, by service then id.
    instances: HashMap<Arc<str>, BTreeMap<String, Arc<InstanceSpec>>>,
    live: HashMap<(Arc<str>, Arc<str>), Weak<InstanceLive>>,
    /// Revision of each source's last reset: updates at or below it are stale.
    last_reset: HashMap<Arc<str>, i64>,
    synced: HashSet<Arc<str>>,
    expected_sources: Vec<String>,
    /// Services whose new instances wait for a passing health check (`wait_first`).
    wait_first: HashSet<String>,
    /// `[services.NAME] scheme`: for instances whose registry value names none.
    default_schemes: HashMap<String, Scheme>,
    /// Keeps membership logging to a bounded rate under churn.
    membership_log: LogBudget,
}

/// Membership lines the log takes per second (all services); the rest are counted and the
/// next line written says how many were left out.
const MEMBERSHIP_LINES_PER_SECOND: u32 = 50;

/// A per-second budget of log lines.
#[derive(Default)]
struct LogBudget {
    window: Option<std::time::Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether one more line fits this second; when a new second starts after lines were
    /// left out, says how many first.
    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let fresh = self
            .window
            .is_none_or(|start| now.duration_since(start) >= std::time::Duration::from_secs(1));
        if fresh {
            if self.suppressed > 0 {
                tracing::info!(
                    left_out = self.suppressed,
                    "registry churn: pool change lines left out in the last second(s)"
                );
            }
            self.window = Some(now);
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < MEMBERSHIP_LINES_PER_SECOND {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Every service the gateway knows, by name.
pub struct Directory {
    inner: Mutex<Inner>,
    generation: AtomicU64,
    metrics: Arc<Metrics>,
    /// Set once every expected source has synced (lock-free read for the request path).
    ready: std::sync::atomic::AtomicBool,
    ready_notify: tokio::sync::Notify,
}

impl Directory {
    /// `sources` are the names of the registry sources that must sync before `/readyz` is 200.
    pub fn new(metrics: Arc<Metrics>, sources: &[&str]) -> Self {
        let inner = Inner {
            expected_sources: sources.iter().map(|s| s.to_string()).collect(),
            ..Inner::default()
        };
        Self {
            ready: std::sync::atomic::AtomicBool::new(sources.is_empty()),
            ready_notify: tokio::sync::Notify::new(),
            inner: Mutex::new(inner),
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (each change is one insert or
        // one swap), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The slot of `service`, created empty when the registry has not listed it yet.
    pub fn slot(&self, service: &str) -> Arc<ServiceSlot> {
        let mut inner = self.lock();
        self.slot_locked(&mut inner, service)
    }

    fn slot_locked(&self, inner: &mut Inner, service: &str) -> Arc<ServiceSlot> {
        if let Some(slot) = inner.slots.get(service) {
            return slot.clone();
        }
        // Per-service families are present from the service's first mention, at zero.
        self.metrics
            .outlier_ejections_total
            .with_label_values(&[service]);
        let name: Arc<str> = service.into();
        let slot = Arc::new(ServiceSlot::new(name.clone()));
        inner.slots.insert(name, slot.clone());
        slot
    }

    /// Every slot, sorted by service name.
    pub fn slots(&self) -> Vec<Arc<ServiceSlot>> {
        let inner = self.lock();
        let mut slots: Vec<_> = inner.slots.values().cloned().collect();
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        slots
    }

    /// Whether every expected registry source has completed its first sync.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits (at most `limit`) until every source has synced; `true` when ready.
    pub async fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let notified = self.ready_notify.notified();
        if self.is_ready() {
            return true;
        }
        let _ = tokio::time::timeout(limit, notified).await;
        self.is_ready()
    }

    fn update_ready(&self, inner: &Inner) {
        let ready = inner
            .expected_sources
            .iter()
            .all(|s| inner.synced.contains(s.as_str()));
        if ready && !self.ready.swap(true, Ordering::AcqRel) {
            self.ready_notify.notify_waiters();
        }
    }

    /// Services whose new instances get no traffic until their first health check passes.
    pub fn set_wait_first(&self, services: impl IntoIterator<Item = String>) {
        self.lock().wait_first = services.into_iter().collect();
    }

    /// Sets the scheme of each service's instances whose registry value names none, and
    /// rebuilds the services whose setting changed.
    pub fn set_default_schemes(&self, schemes: HashMap<String, Scheme>) {
        let mut inner = self.lock();
        let changed: Vec<Arc<str>> = inner
            .slots
            .keys()
            .filter(|name| inner.default_schemes.get(&***name) != schemes.get(&***name))
            .cloned()
            .collect();
        inner.default_schemes = schemes;
        for service in changed {
            self.rebuild(&mut inner, &service, &Resolved::default());
        }
    }

    /// Rebuilds and swaps the pool of `service` (after a health change).
    pub fn refresh(&self, service: &str) {
        let mut inner = self.lock();
        let name: Arc<str> = service.into();
        // Instances are unchanged: every member keeps the address it had.
        self.rebuild(&mut inner, &name, &Resolved::default());
    }

    /// Seeds the pools from a saved state (a cold start while the source is unreachable). It
    /// does not count as the source's sync: its first real reset replaces it whole.
    pub fn seed(&self, source: &str, services: BTreeMap<String, Vec<InstanceSpec>>) {
        self.apply(SourceEvent {
            source: source.into(),
            revision: i64::MIN,
            update: Update::Reset { services },
        });
        let mut inner = self.lock();
        inner.synced.remove(source);
        inner.last_reset.remove(source);
        self.ready.store(false, Ordering::Release);
    }

    /// The instances of every service as last applied (for the state file).
    pub fn instances(&self) -> BTreeMap<String, Vec<InstanceSpec>> {
        let inner = self.lock();
        inner
            .instances
            .iter()
            .map(|(name, m)| {
                (
                    name.to_string(),
                    m.values().map(|i| (**i).clone()).collect(),
                )
            })
            .collect()
    }

    /// Changes with every pool swap.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether `source` has completed its first sync.
    pub fn is_synced(&self, source: &str) -> bool {
        self.lock().synced.contains(source)
    }

    /// Applies one event. Anything at or below the revision of the source's last reset is
    /// stale (already part of that listing) and ignored; several events may share a revision
    /// (one etcd transaction), and sources deliver a key's events in order.
    pub fn apply(&self, event: SourceEvent) {
        self.apply_all(std::iter::once(event));
    }

    /// Applies a batch of events in order, then rebuilds each service they touched once: a
    /// burst of updates (a bulk registration, a re-list) costs one swap per service. Host
    /// names are resolved first, on this thread and without the lock; an async caller uses
    /// [`Directory::apply_all_resolving`] instead.
    pub fn apply_all(&self, events: impl IntoIterator<Item = SourceEvent>) {
        let events: Vec<SourceEvent> = events.into_iter().collect();
        let mut resolved = Resolved::default();
        for name in host_names(&events) {
            let addr = name.to_socket_addrs().map(|mut a| a.next());
            resolved.insert(name, addr);
        }
        self.apply_resolved(events, &resolved);
    }

    /// As [`Directory::apply_all`], for the registry tasks: host names are resolved on the
    /// runtime's blocking pool (`getaddrinfo` may take seconds), before the lock is taken.
    pub async fn apply_all_resolving(&self, events: Vec<SourceEvent>) {
        let mut resolved = Resolved::default();
        for name in host_names(&events) {
            let lookup =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name.clone()));
            let addr = match lookup.await {
                Ok(Ok(mut addrs)) => Ok(addrs.next()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            };
            resolved.insert(name, addr);
        }
        self.apply_resolved(events, &resolved);
    }

    fn apply_resolved(&self, events: Vec<SourceEvent>, resolved: &Resolved) {
        let mut inner = self.lock();
        // Per service touched: the instance ids changed, or `None` for "rebuild whole".
        let mut touched: Vec<(Arc<str>, Option<Vec<String>>)> = Vec::new();
        for event in events {
            for (service, id) in self.apply_locked(&mut inner, event) {
                let at = match touched.iter().position(|(s, _)| *s == service) {
                    Some(at) => at,
                    None => {
                        touched.push((service, Some(Vec::new())));
                        touched.len() - 1
                    }
                };
                match (&mut touched[at].1, id) {
                    (Some(ids), Some(id)) => ids.push(id),
                    (ids, _) => *ids = None,
                }
            }
        }
        for (service, ids) in touched {
            match ids {
                Some(mut ids) => {
                    ids.sort_unstable();
                    ids.dedup();
                    self.rebuild_instances(&mut inner, &service, &ids, resolved);
                }
                None => self.rebuild(&mut inner, &service, resolved),
            }
        }
        self.update_ready(&inner);
    }

    /// Applies one event to the instance maps; returns the services it changed, each with the
    /// one instance id it changed (`None`: possibly all of them).
    fn apply_locked(
        &self,
        inner: &mut Inner,
        event: SourceEvent,
    ) -> Vec<(Arc<str>, Option<String>)> {
        let last = inner.last_reset.get(&event.source).copied();
        if last.is_some_and(|last| event.revision <= last) {
            tracing::debug!(source = %event.source, revision = event.revision, "stale update ignored");
            return Vec::new();
        }
        if matches!(event.update, Update::Reset { .. }) {
            inner
                .last_reset
                .insert(event.source.clone(), event.revision);
        }
        self.metrics
            .registry_events_total
            .with_label_values(&[&*event.source, event.update.kind()])
            .inc();
        match event.update {
            Update::Reset { services } => {
                inner.synced.insert(event.source.clone());
                let mut touched = Vec::new();
                let mut listed: HashSet<Arc<str>> = HashSet::new();
                for (service, instances) in services {
                    let new: BTreeMap<String, Arc<InstanceSpec>> = instances
                        .into_iter()
                        .map(|i| (i.id.clone(), Arc::new(i)))
                        .collect();
                    let name: Arc<str> = service.into();
                    listed.insert(name.clone());
                    if inner.instances.get(&name) != Some(&new) {
                        inner.instances.insert(name.clone(), new);
                        touched.push(name);
                    }
                }
                let gone: Vec<Arc<str>> = inner
                    .instances
                    .keys()
                    .filter(|name| !listed.contains(*name))
                    .cloned()
                    .collect();
                for name in gone {
                    inner.instances.remove(&name);
                    touched.push(name);
                }
                touched.into_iter().map(|name| (name, None)).collect()
            }
            Update::Upsert { service, instance } => {
                let name: Arc<str> = service.into();
                let entry = inner.instances.entry(name.clone()).or_default();
                let instance = Arc::new(instance);
                if entry.get(&instance.id) == Some(&instance) {
                    Vec::new()
                } else {
                    let id = instance.id.clone();
                    entry.insert(id.clone(), instance);
                    vec![(name, Some(id))]
                }
            }
            Update::Remove { service, id } => {
                let name: Arc<str> = service.into();
                let removed = inner
                    .instances
                    .get_mut(&name)
                    .is_some_and(|entry| entry.remove(&id).is_some());
                if removed {
                    vec![(name, Some(id))]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Rebuilds the whole snapshot of `service` from its instances and swaps it in.
    fn rebuild(&self, inner: &mut Inner, service: &Arc<str>, resolved: &Resolved) {
        let slot = self.slot_locked(inner, service);
        let previous = slot.load_full();
        // Both sides are sorted by id (a snapshot keeps the order of the id-keyed map it was
        // built from), so the old member of each instance is found by one merge walk: no
        // hashing of 10 000 ids per change.
        let mut old_members = previous.members().peekable();
        let mut changes = MembershipChanges::default();
        let (specs, mut make) = MemberMaker::split(inner, service, resolved);
        let mut members = Vec::with_capacity(specs.map_or(0, BTreeMap::len));
        for spec in specs.into_iter().flat_map(BTreeMap::values) {
            let spec = &make.defaulted(spec);
            while let Some(gone) = old_members.next_if(|m| m.spec.id < spec.id) {
                changes.left.push(gone.spec.id.clone());
            }
            let old = old_members.next_if(|m| m.spec.id == spec.id);
            changes.note(old, spec);
            members.push(make.member(spec, old));
        }
        changes
            .left
            .extend(old_members.map(|gone| gone.spec.id.clone()));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pool = Pool::new(service.clone(), generation, members);
        self.publish(inner, &slot, previous, pool, &changes);
    }

    /// Applies a change to the instances `ids` (sorted) of `service`: the chunks of the
    /// snapshot that hold them are rebuilt, every other chunk is shared with the previous
    /// snapshot, so a change costs the same in a pool of 10 000 as in one of 100. Falls back
    /// to [`Directory::rebuild`] for a change of many instances.
    fn rebuild_instances(
        &self,
        inner: &mut Inner,
        service: &Arc<str>,
        ids: &[String],
        resolved: &Resolved,
    ) {
        let slot = self.slot_locked(inner, service);
        let previous = slot.load_full();
        let old_chunks = previous.chunks();
        if old_chunks.is_empty() || ids.len() > old_chunks.len().div_ceil(4) {
            drop(previous);
            return self.rebuild(inner, service, resolved);
        }
        let (specs, mut make) = MemberMaker::split(inner, service, resolved);
        let Some(specs) = specs else {
            drop(previous);
            return self.rebuild(inner, service, resolved);
        };
        let now_ms = super::clock_ms();
        let mut changes = MembershipChanges::default();
        let mut chunks = Vec::with_capacity(old_chunks.len() + 1);
        let mut pending = ids.iter().peekable();
        for (c, chunk) in old_chunks.iter().enumerate() {
            // The ids that sort before the next chunk's first member belong to this chunk.
            let next_first = old_chunks.get(c + 1).map(|next| next.first_id());
            let mine: Vec<&String> = std::iter::from_fn(|| {
                pending.next_if(|id| next_first.is_none_or(|first| id.as_str() < first))
            })
            .collect();
            if mine.is_empty() {
                chunks.push(chunk.clone());
                continue;
            }
            let mut members = Vec::with_capacity(chunk.members().len() + mine.len());
            let mut old_members = chunk.members().iter().peekable();
            for id in mine {
                while let Some(kept) = old_members.next_if(|m| m.spec.id < *id) {
                    members.push(kept.clone());
                }
                let old = old_members.next_if(|m| m.spec.id == *id);
                match specs.get(id) {
                    Some(spec) => {
                        let spec = &make.defaulted(spec);
                        changes.note(old, spec);
                        members.push(make.member(spec, old));
                    }
                    None if old.is_some() => changes.left.push(id.clone()),
                    None => {}
                }
            }
            members.extend(old_members.cloned());
            while members.len() > 2 * CHUNK {
                let rest = members.split_off(CHUNK);
                chunks.push(Chunk::new(members, now_ms));
                members = rest;
            }
            if !members.is_empty() {
                chunks.push(Chunk::new(members, now_ms));
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pool = Pool::from_chunks(service.clone(), generation, chunks);
        self.publish(inner, &slot, previous, pool, &changes);
    }

    /// Logs the membership changes, swaps `pool` in for `previous` and updates the gauges.
    fn publish(
        &self,
        inner: &mut Inner,
        slot: &ServiceSlot,
        previous: Arc<Pool>,
        pool: Pool,
        changes: &MembershipChanges,
    ) {
        let service = slot.name_arc().clone();
        changes.log(&mut inner.membership_log, &service, pool.members().len());
        let generation = pool.generation();
        let eligible = pool.eligible_len() as i64;
        let ineligible = pool.members().len() as i64 - eligible;
        slot.pool.store(Arc::new(pool));
        drop(previous);
        let m = &self.metrics;
        m.pool_swaps_total.with_label_values(&[&*service]).inc();
        m.pool_instances
            .with_label_values(&[&*service, "eligible"])
            .set(eligible);
        m.pool_instances
            .with_label_values(&[&*service, "ineligible"])
            .set(ineligible);
        tracing::debug!(%service, generation, eligible, ineligible, "pool swapped");
    }

    /// One latency decay tick for every instance still referred to
    /// ([`InstanceLive::decay_idle_latency`]).
    pub fn decay_idle_latencies(&self) {
        let inner = self.lock();
        for live in inner.live.values().filter_map(std::sync::Weak::upgrade) {
            live.decay_idle_latency();
        }
    }

    /// Copies live counters into their Prometheus families and drops the labels of instances
    /// nothing refers to any more. Called on scrape, so the request path records nothing twice.
    pub fn export_live_metrics(&self) {
        let mut inner = self.lock();
        let m = &self.metrics;
        let now_ms = super::live::clock_ms();
        inner
            .live
            .retain(|(service, id), weak| match weak.upgrade() {
                Some(live) => {
                    m.upstream_requests_in_flight
                        .with_label_values(&[&**service, &**id])
                        .set(i64::from(live.in_flight()));
                    let healthy = live.health().admits() && !live.is_ejected(now_ms);
                    m.upstream_healthy
                        .with_label_values(&[&**service, &**id])
                        .set(i64::from(healthy));
                    m.upstream_picks_total
                        .with_label_values(&[&**service, &**id])
                        .inc_by(live.take_unexported_picks());
                    true
                }
                None => {
                    let _ = m
                        .upstream_requests_in_flight
                        .remove_label_values(&[&**service, &**id]);
                    let _ = m
                        .upstream_picks_total
                        .remove_label_values(&[&**service, &**id]);
                    let _ = m.upstream_healthy.remove_label_values(&[&**service, &**id]);
                    false
                }
            });
    }
}

/// Longest a host name's resolution may take before its instance is left without an address.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most membership lines one rebuild writes; a larger change (a first listing of a big pool,
/// a re-list) is one summary line instead of a line per instance.
const MAX_MEMBERSHIP_LINES: usize = 16;

/// Logs instances that joined or left `service`'s pool, and status changes, at info: what an
/// operator reads when traffic moves. One line per change, one summary line for a larger
/// change, within `budget` lines a second.
/// What making the members of one service needs from the directory, borrowed apart from the
/// service's instances so that both can be used in one pass.
struct MemberMaker<'a> {
    lives: &'a mut HashMap<(Arc<str>, Arc<str>), Weak<InstanceLive>>,
    wait_first: bool,
    default_scheme: Option<Scheme>,
    service: &'a Arc<str>,
    resolved: &'a Resolved,
}

impl<'a> MemberMaker<'a> {
    /// The instances of `service` (if listed) and the maker of its members.
    fn split(
        inner: &'a mut Inner,
        service: &'a Arc<str>,
        resolved: &'a Resolved,
    ) -> (Option<&'a BTreeMap<String, Arc<InstanceSpec>>>, Self) {
        let Inner {
            instances,
            live,
            wait_first,
            default_schemes,
            ..
        } = inner;
        let maker = Self {
            lives: live,
            wait_first: wait_first.contains(&**service),
            default_scheme: default_schemes.get(&**service).copied(),
            service,
            resolved,
        };
        (instances.get(service), maker)
    }

    /// `spec` with the service's default scheme, when its registry value named none.
    fn defaulted(&self, spec: &Arc<InstanceSpec>) -> Arc<InstanceSpec> {
        with_default_scheme(spec, self.default_scheme)
    }

    /// The member for `spec`: an unchanged instance carries over as it was (same live
    /// state, key and address); otherwise its live state is found or made, and its address
    /// kept or resolved.
    fn member(&mut self, spec: &Arc<InstanceSpec>, old: Option<&Member>) -> Member {
        let service = self.service;
        if let Some(old) = old {
            if Arc::ptr_eq(&old.spec, spec) || old.spec == *spec {
                return Member {
                    spec: spec.clone(),
                    key: old.key,
                    socket: old.socket,
                    live: old.live.clone(),
                };
            }
        }
        let id: Arc<str> = spec.id.as_str().into();
        let live_key = (service.clone(), id.clone());
        let live = match self.lives.get(&live_key).and_then(Weak::upgrade) {
            Some(live) => live,
            None => {
                let health = if self.wait_first {
                    crate::pool::Health::Pending
                } else {
                    crate::pool::Health::Unchecked
                };
                let live = Arc::new(InstanceLive::with_health(service.clone(), id, health));
                self.lives.insert(live_key, Arc::downgrade(&live));
                live
            }
        };
        let socket = match old {
            Some(old) if old.spec.addr == spec.addr && old.socket.is_some() => old.socket,
            _ => resolve(service, spec, self.resolved),
        };
        Member {
            key: instance_key(&spec.id),
            spec: spec.clone(),
            socket,
            live,
        }
    }
}

/// What one rebuild changed in a pool's membership, for the log.
#[derive(Default)]
struct MembershipChanges {
    joined: Vec<Arc<InstanceSpec>>,
    /// (id, from, to)
    status_changed: Vec<(String, Status, Status)>,
    left: Vec<String>,
}

impl MembershipChanges {
    /// Notes `spec` against the member it replaces (`None`: it joins).
    fn note(&mut self, old: Option<&Member>, spec: &Arc<InstanceSpec>) {
        match old {
            Some(old) if old.spec.status != spec.status => {
                self.status_changed
                    .push((spec.id.clone(), old.spec.status, spec.status))
            }
            Some(_) => {}
            None => self.joined.push(spec.clone()),
        }
    }

    /// One line per change, or one summary line past [`MAX_MEMBERSHIP_LINES`]; within the
    /// log budget.
    fn log(&self, budget: &mut LogBudget, service: &str, instances: usize) {
        let total = self.joined.len() + self.status_changed.len() + self.left.len();
        if total > MAX_MEMBERSHIP_LINES {
            if !budget.take() {
                return;
            }
            tracing::info!(
                %service,
                joined = self.joined.len(),
                left = self.left.len(),
                status_changed = self.status_changed.len(),
                instances,
                "pool changed"
            );
            return;
        }
        for spec in &self.joined {
            if !budget.take() {
                continue;
            }
            tracing::info!(
                %service,
                instance = %spec.id,
                addr = %spec.addr,
                status = spec.status.as_str(),
                weight = spec.weight,
                "instance joined"
            );
        }
        for (id, from, to) in &self.status_changed {
            if !budget.take() {
                continue;
            }
            tracing::info!(
                %service,
                instance = %id,
                from = from.as_str(),
                to = to.as_str(),
                "instance status changed"
            );
        }
        for id in &self.left {
            if !budget.take() {
                continue;
            }
            tracing::info!(%service, instance = %id, "instance left");
        }
    }
}

/// `spec`, with `default` as its scheme when its registry value named none.
fn with_default_scheme(spec: &Arc<InstanceSpec>, default: Option<Scheme>) -> Arc<InstanceSpec> {
    match default {
        Some(scheme) if !spec.scheme_named && spec.scheme != scheme => {
            let mut defaulted = (**spec).clone();
            defaulted.scheme = scheme;
            Arc::new(defaulted)
        }
        _ => spec.clone(),
    }
}

/// Host names resolved ahead of a rebuild: `host:port` to its first address, or why not.
type Resolved = HashMap<String, std::io::Result<Option<SocketAddr>>>;

/// The instance addresses in `events` that are not IP literals, once each.
fn host_names(events: &[SourceEvent]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut note = |spec: &InstanceSpec| {
        if spec.addr.parse::<SocketAddr>().is_err() && !names.contains(&spec.addr) {
            names.push(spec.addr.clone());
        }
    };
    for event in events {
        match &event.update {
            Update::Reset { services } => services.values().flatten().for_each(&mut note),
            Update::Upsert { instance, .. } => note(instance),
            Update::Remove { .. } => {}
        }
    }
    names
}

/// The address of `host:port`: an IP literal as it is, a host name as resolved ahead;
/// `None`, logged, when it cannot be.
fn resolve(service: &str, spec: &InstanceSpec, resolved: &Resolved) -> Option<SocketAddr> {
    if let Ok(addr) = spec.addr.parse::<SocketAddr>() {
        return Some(addr);
    }
    match resolved.get(&spec.addr) {
        Some(Ok(Some(addr))) => Some(*addr),
        Some(Ok(None)) => {
            tracing::warn!(%service, instance = %spec.id, addr = %spec.addr, "cannot resolve: no address");
            None
        }
        Some(Err(e)) => {
            tracing::warn!(%service, instance = %spec.id, addr = %spec.addr, "cannot resolve: {e}");
            None
        }
        // Unchanged instances keep their address; a new one is always resolved ahead.
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_lines_are_held_to_their_budget_per_second() {
        let mut budget = LogBudget::default();
        let taken = (0..60).filter(|_| budget.take()).count();
        assert_eq!(taken, MEMBERSHIP_LINES_PER_SECOND as usize);
        assert_eq!(budget.suppressed, 10);
        // A new second: the budget is back, the left-out count reported and reset.
        budget.window = Some(std::time::Instant::now() - std::time::Duration::from_secs(2));
        assert!(budget.take());
        assert_eq!(budget.suppressed, 0);
    }
    use crate::registry::{decode_value, Status};

    fn event(revision: i64, update: Update) -> SourceEvent {
        SourceEvent {
            source: "test".into(),
            revision,
            update,
        }
    }

    fn spec(id: &str, port: u16) -> InstanceSpec {
        decode_value(id, format!("127.0.0.1:{port}").as_bytes()).unwrap()
    }

    /// What a pool says of its members: id, weight, eligibility, in order.
    fn shape(pool: &Pool) -> (Vec<(String, u32)>, Vec<String>) {
        (
            pool.members()
                .map(|m| (m.spec.id.clone(), m.spec.weight))
                .collect(),
            pool.eligible_members().map(|m| m.spec.id.clone()).collect(),
        )
    }

    #[test]
    fn a_change_of_one_instance_rebuilds_its_chunk_and_shares_the_rest() {
        let dir = Directory::new(Arc::new(Metrics::new()), &["test"]);
        let slot = dir.slot("svc");
        let n = 1_000;
        let all: Vec<InstanceSpec> = (0..n).map(|i| spec(&format!("i-{i:04}"), 1)).collect();
        dir.apply(event(
            1,
            Update::Reset {
                services: [("svc".to_string(), all)].into(),
            },
        ));
        let mut revision = 1;
        let mut check = |update: Update| {
            revision += 1;
            let before = slot.load_full();
            dir.apply(event(revision, update));
            let after = slot.load_full();
            // The same as a whole rebuild of the same instances.
            let incremental = shape(&after);
            // The chunks' live pointers, shared chunks' included, are the members' own.
            assert!((0..after.eligible_len())
                .all(|i| std::ptr::eq(after.eligible_live(i), after.eligible(i).live.cell())));
            dir.refresh("svc");
            assert_eq!(incremental, shape(&slot.load_full()));
            // Most chunks are the previous snapshot's own.
            let shared = after
                .chunks()
                .iter()
                .filter(|c| {
                    before
                        .chunks()
                        .iter()
                        .any(|b| Arc::ptr_eq(b.members(), c.members()))
                })
                .count();
            assert!(
                shared + 2 >= after.chunks().len(),
                "{shared} of {}",
                after.chunks().len()
            );
            // Live state carries over.
            let live = |p: &Pool| {
                p.members()
                    .find(|m| m.spec.id == "i-0002")
                    .map(|m| m.live.clone())
            };
            assert!(Arc::ptr_eq(&live(&before).unwrap(), &live(&after).unwrap()));
        };
        let mut heavier = spec("i-0500", 1);
        heavier.weight = 300;
        check(Update::Upsert {
            service: "svc".into(),
            instance: heavier,
        });
        let mut down = spec("i-0001", 1);
        down.status = Status::Down;
        check(Update::Upsert {
            service: "svc".into(),
            instance: down,
        });
        check(Update::Remove {
            service: "svc".into(),
            id: "i-0700".into(),
        });
        for id in ["i-0700", "a-first", "i-0640x", "z-last"] {
            check(Update::Upsert {
                service: "svc".into(),
                instance: spec(id, 2),
            });
        }
        // A chunk that grows past twice its size is split.
        for i in 0..200 {
            check(Update::Upsert {
                service: "svc".into(),
                instance: spec(&format!("i-0300-{i:03}"), 3),
            });
        }
        let pool = slot.load_full();
        assert!(pool.chunks().iter().all(|c| c.members().len() <= 2 * CHUNK));
        assert_eq!(pool.members().len(), n - 1 + 4 + 200);
        // The round-robin cycle follows: i-0500 gets three times a default instance's share.
        let picks: Vec<usize> = (0..pool.eligible_len() * 10)
            .filter_map(|_| pool.next_round_robin())
            .collect();
        let heavy = (0..pool.eligible_len())
            .find(|&i| pool.eligible(i).spec.id == "i-0500")
            .unwrap();
        let share = picks.iter().filter(|&&i| i == heavy).count();
        assert!((25..=35).contains(&share), "{share}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn host_names_are_resolved_before_the_lock_and_off_the_runtime() {
        let dir = Arc::new(Directory::new(Arc::new(Metrics::new()), &["test"]));
        let slot = dir.slot("svc");
        let named = |id: &str, addr: &str| decode_value(id, addr.as_bytes()).unwrap();
        let reset = event(
            1,
            Update::Reset {
                services: [(
                    "svc".to_string(),
                    vec![
                        named("literal", "127.0.0.1:1"),
                        named("name", "localhost:2"),
                        named("nowhere", "no-such-host.invalid:3"),
                    ],
                )]
                .into(),
            },
        );
        // While the name is looked up, the directory answers (its lock is not held).
        let applying = {
            let dir = dir.clone();
            tokio::spawn(async move { dir.apply_all_resolving(vec![reset]).await })
        };
        let _ = dir.slots();
        applying.await.unwrap();
        let pool = slot.load_full();
        let socket = |id: &str| pool.members().find(|m| m.spec.id == id).unwrap().socket;
        assert_eq!(socket("literal"), Some("127.0.0.1:1".parse().unwrap()));
        assert!(socket("name").is_some_and(|a| a.ip().is_loopback() && a.port() == 2));
        assert_eq!(socket("nowhere"), None);
    }

    #[test]
    fn live_state_survives_swaps_and_stale_revisions_are_ignored() {
        let dir = Directory::new(Arc::new(Metrics::new()), &["test"]);
        assert!(!dir.is_ready());
        let slot = dir.slot("svc");
        dir.apply(event(
            1,
            Update::Reset {
                services: [("svc".to_string(), vec![spec("a", 1), spec("b", 2)])].into(),
            },
        ));
        assert!(dir.is_ready());
        let pool = slot.load_full();
        assert_eq!(pool.eligible_len(), 2);
        let guard = pool.eligible(0).live.start_request();

        let mut down = spec("b", 2);
        down.status = Status::Down;
        dir.apply(event(
            2,
            Update::Upsert {
                service: "svc".into(),
                instance: down,
            },
        ));
        let after = slot.load_full();
        assert_eq!(after.eligible_len(), 1);
        assert!(Arc::ptr_eq(
            &after.members().next().unwrap().live,
            guard.live()
        ));
        assert_eq!(after.members().next().unwrap().live.in_flight(), 1);

        // An event at or below the last reset's revision changes nothing.
        dir.apply(event(
            1,
            Update::Remove {
                service: "svc".into(),
                id: "a".into(),
            },
        ));
        assert_eq!(slot.load().members().len(), 2);

        // The instance leaves; the request in flight still ends on the same live state.
        dir.apply(event(
            3,
            Update::Remove {
                service: "svc".into(),
                id: "a".into(),
            },
        ));
        assert_eq!(slot.load().members().len(), 1);
        assert_eq!(guard.live().in_flight(), 1);
        drop(guard);
    }

    #[test]
    fn reset_removes_unlisted_services() {
        let dir = Directory::new(Arc::new(Metrics::new()), &["test"]);
        let slot = dir.slot("svc");
        dir.apply(event(
            1,
            Update::Reset {
                services: [("svc".to_string(), vec![spec("a", 1)])].into(),
            },
        ));
        assert_eq!(slot.load().members().len(), 1);
        dir.apply(event(
            2,
            Update::Reset {
                services: BTreeMap::new(),
            },
        ));
        assert_eq!(slot.load().members().len(), 0);
    }
}
