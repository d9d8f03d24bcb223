//! The tracked ScaledObjects: the map every KEDA call looks its object up in, when an object
//! KEDA stopped asking about is forgotten, and what the objects take of the scaler's capacity
//! (`crate::capacity`: counts per namespace and metadata bytes, and the room one new object
//! reserves while it is parsed).
//!
//! A fixed number of shards, each a hash table of the objects under a read-write lock, keyed
//! by the object's own labels (no copy of the key per entry). Hand-written rather than moka:
//! moka's entry took about 280 bytes per object, its bookkeeping more, and its lookup about
//! 1,000 instructions of every call (BENCHMARKS.md, "The object map without moka"); what is
//! kept of a cache here is one idle time, which a coarse timestamp in each object and a sweep
//! give.
//!
//! An object not asked about (`Objects::get`, KEDA's calls) for `object_idle_ttl` is forgotten:
//! at once for lookups (asked again, it is tracked anew, as moka's `time_to_idle` did), and
//! its room, the `blend_scaler_tracked_scaledobjects` gauge and its `/metrics` series at the
//! next sweep. A sweep runs on the first call a quarter of the idle time after the previous
//! call's sweep, at every `/metrics` scrape (`Engine::tracked_count`) and before a new object
//! is refused for capacity; like moka's housekeeping, only on activity, never on a timer of
//! its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use parking_lot::{Mutex, RwLock};

use super::key::{KeyHasher, KeyRef};
use super::{EngineError, Tracked};
use crate::capacity::Capacity;
use crate::metrics::{Metrics, ObjectEntry, ObjectSource};

/// Enough that two cores' calls on different objects seldom meet on one lock; a shard's table
/// is 48 bytes when empty.
const SHARDS: usize = 16;

/// The tracked objects, the capacity they take and when they were last asked about.
pub(super) struct Objects {
    shards: [RwLock<HashTable<Arc<Tracked>>>; SHARDS],
    hasher: KeyHasher,
    /// Times are milliseconds since this instant (`Tracked::asked`). Tokio's clock, so tests
    /// can pause it.
    epoch: tokio::time::Instant,
    idle_ms: u64,
    /// The earliest moment a call sweeps.
    next_sweep: AtomicU64,
    usage: Mutex<Usage>,
    capacity: Capacity,
    metrics: Metrics,
}

/// What [`Objects::put`] did with a new plan.
pub(super) enum Put {
    /// In the map: the reservation's room is its own now.
    Kept,
    /// A concurrent call tracked the same object with the same metadata first: use theirs;
    /// the reservation is not needed.
    Theirs(Arc<Tracked>),
    /// The map held other than the reservation was for: reserve again for this (`None` a new
    /// object, `Some(bytes)` a plan replacing one of that weight) and put again.
    Again(Option<usize>),
}

impl Objects {
    pub(super) fn new(idle_ttl: Duration, capacity: Capacity, metrics: Metrics) -> Self {
        Self {
            shards: std::array::from_fn(|_| RwLock::new(HashTable::new())),
            hasher: KeyHasher::default(),
            epoch: tokio::time::Instant::now(),
            idle_ms: u64::try_from(idle_ttl.as_millis()).unwrap_or(u64::MAX),
            next_sweep: AtomicU64::new(0),
            usage: Mutex::new(Usage::default()),
            capacity,
            metrics,
        }
    }

    /// Now, as the objects' times count it.
    pub(super) fn now(&self) -> u64 {
        let since = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    fn hash(&self, key: KeyRef<'_>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// The bits the tables use are the hash's lowest (the bucket) and highest seven (the
    /// tag); the shard takes others, so the objects of one shard still differ in both.
    fn shard(&self, hash: u64) -> &RwLock<HashTable<Arc<Tracked>>> {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    fn is_idle(&self, tracked: &Tracked, now: u64) -> bool {
        now.saturating_sub(tracked.asked.load(Ordering::Relaxed)) >= self.idle_ms
    }

    /// The object under `key`, unless it is idle, as asked about now: its time is written
    /// only when it moves on (once a millisecond at most), so the calls on one object do not
    /// all write one cache line shared between cores.
    pub(super) fn get(&self, key: KeyRef<'_>) -> Option<Arc<Tracked>> {
        let now = self.now();
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep_due(now);
        }
        let hash = self.hash(key);
        let table = self.shard(hash).read();
        let tracked = table.find(hash, |t| t.key() == key)?;
        if self.is_idle(tracked, now) {
            return None;
        }
        touch(tracked, now);
        Some(tracked.clone())
    }

    /// Puts `tracked`, a new plan for its key, in the map, with room reserved for a new object
    /// (`new_object`) or for a plan replacing another.
    pub(super) fn put(&self, tracked: &Arc<Tracked>, new_object: bool) -> Put {
        let now = self.now();
        let key = tracked.key();
        let hash = self.hash(key);
        let mut table = self.shard(hash).write();
        let entry = table.entry(hash, |t| t.key() == key, |t| self.hash(t.key()));
        let mut usage = self.usage.lock();
        match entry {
            Entry::Occupied(mut theirs) => {
                let idle = self.is_idle(theirs.get(), now);
                if !idle && theirs.get().fingerprint == tracked.fingerprint {
                    touch(theirs.get(), now);
                    return Put::Theirs(theirs.get().clone());
                }
                if new_object && !idle {
                    return Put::Again(Some(theirs.get().weight));
                }
                // An idle object is forgotten as a sweep would; a replaced plan gives back only
                // its bytes, its object goes on.
                let old = std::mem::replace(theirs.get_mut(), tracked.clone());
                usage.release(key.0, old.weight, new_object);
            }
            Entry::Vacant(_) if !new_object => {
                // The plan this one replaces was forgotten meanwhile: it needs an object's room.
                return Put::Again(None);
            }
            Entry::Vacant(vacant) => {
                vacant.insert(tracked.clone());
            }
        }
        self.metrics.set_tracked(usage.objects as u64);
        Put::Kept
    }

    /// The objects not idle, in no particular order.
    pub(super) fn all(&self) -> Vec<Arc<Tracked>> {
        let now = self.now();
        let mut all = Vec::with_capacity(self.usage.lock().objects);
        for shard in &self.shards {
            let table = shard.read();
            all.extend(table.iter().filter(|t| !self.is_idle(t, now)).cloned());
        }
        all
    }

    /// How many objects are tracked once the idle ones are forgotten.
    pub(super) fn count(&self) -> usize {
        self.sweep(self.now());
        self.usage.lock().objects
    }

    /// Sweeps unless another call already took this turn.
    fn sweep_due(&self, now: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        let next = now.saturating_add((self.idle_ms / 4).max(1));
        if now >= due
            && self
                .next_sweep
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now);
        }
    }

    /// Forgets the objects idle `now`, giving back their room, and brings the gauge to the
    /// count. A shard without an idle object is only read.
    fn sweep(&self, now: u64) {
        let mut forgot = false;
        for shard in &self.shards {
            if !shard.read().iter().any(|t| self.is_idle(t, now)) {
                continue;
            }
            let mut table = shard.write();
            let mut usage = self.usage.lock();
            table.retain(|t| {
                let idle = self.is_idle(t, now);
                if idle {
                    usage.release(&t.labels.scaledobject_namespace, t.weight, true);
                }
                !idle
            });
            // Thousands of deleted ScaledObjects leave their buckets behind otherwise.
            if table.len() * 4 < table.capacity() {
                table.shrink_to_fit(|t| self.hash(t.key()));
            }
            forgot = true;
        }
        if forgot {
            self.metrics.set_tracked(self.usage.lock().objects as u64);
        }
    }

    /// Takes room for a new object in `namespace` (`replacing` the weight of its previous
    /// plan, if it had one), or says which cap it is past. Idle objects are let go before a
    /// refusal.
    pub(super) fn reserve<'a>(
        &'a self,
        namespace: &'a str,
        bytes: usize,
        replacing: Option<usize>,
    ) -> Result<Reservation<'a>, EngineError> {
        self.try_reserve(namespace, bytes, replacing).or_else(|_| {
            // Idle objects still count until a sweep; it takes the lock, so not under it.
            self.sweep(self.now());
            self.try_reserve(namespace, bytes, replacing)
                .map_err(EngineError::Exhausted)
        })
    }

    /// [`Objects::reserve`] once, as the objects are counted now; `Err` says which cap.
    fn try_reserve<'a>(
        &'a self,
        namespace: &'a str,
        bytes: usize,
        replacing: Option<usize>,
    ) -> Result<Reservation<'a>, String> {
        let cap = &self.capacity;
        let object = replacing.is_none();
        let mut usage = self.usage.lock();
        let in_namespace = usage.per_namespace.get(namespace).copied().unwrap_or(0);
        let bytes_after = usage.bytes + bytes - replacing.unwrap_or(0).min(usage.bytes);
        if object && usage.objects >= cap.max_objects {
            return Err(format!(
                "the scaler tracks {} ScaledObjects, its limit (--max-scaledobjects)",
                cap.max_objects
            ));
        }
        if object && in_namespace >= cap.max_objects_per_namespace {
            return Err(format!(
                "namespace `{namespace}` has {} tracked ScaledObjects, the limit per namespace \
                 (--max-scaledobjects-per-namespace)",
                cap.max_objects_per_namespace
            ));
        }
        if bytes_after > cap.max_metadata_bytes {
            return Err(format!(
                "the tracked ScaledObjects' metadata would take more than {} bytes, the limit \
                 (--max-metadata-bytes)",
                cap.max_metadata_bytes
            ));
        }
        usage.bytes += bytes;
        if object {
            usage.objects += 1;
            *usage
                .per_namespace
                .entry(namespace.to_string())
                .or_insert(0) += 1;
        }
        Ok(Reservation {
            usage: &self.usage,
            namespace,
            bytes,
            object,
            kept: false,
        })
    }
}

/// `tracked` asked about `now`. `fetch_max`, as two calls may write their moments in either
/// order.
fn touch(tracked: &Tracked, now: u64) {
    if tracked.asked.load(Ordering::Relaxed) < now {
        tracked.asked.fetch_max(now, Ordering::Relaxed);
    }
}

/// The objects as the source of their `/metrics` series.
impl ObjectSource for Objects {
    fn each_object(&self, each: &mut dyn FnMut(ObjectEntry<'_>)) {
        let now = self.now();
        for shard in &self.shards {
            for tracked in shard.read().iter().filter(|t| !self.is_idle(t, now)) {
                let answered = tracked.answered.lock();
                if let Some(figures) = answered.figures(&tracked.plan) {
                    each((&tracked.labels, answered.at(), figures));
                }
            }
        }
    }
}

/// Tracked objects by count, per namespace and by metadata size.
#[derive(Debug, Default)]
struct Usage {
    objects: usize,
    bytes: usize,
    per_namespace: HashMap<String, usize>,
}

impl Usage {
    fn release(&mut self, namespace: &str, bytes: usize, object: bool) {
        self.bytes = self.bytes.saturating_sub(bytes);
        if !object {
            return;
        }
        self.objects = self.objects.saturating_sub(1);
        if let Some(n) = self.per_namespace.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_namespace.remove(namespace);
            }
        }
    }
}

/// Room taken for one object being parsed; given back unless the object is kept.
pub(super) struct Reservation<'a> {
    usage: &'a Mutex<Usage>,
    namespace: &'a str,
    bytes: usize,
    object: bool,
    kept: bool,
}

impl Reservation<'_> {
    pub(super) fn keep(mut self) {
        self.kept = true;
    }

    /// Whether it holds a new object's room (else a replacing plan's bytes only).
    pub(super) fn new_object(&self) -> bool {
        self.object
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.usage
                .lock()
                .release(self.namespace, self.bytes, self.object);
        }
    }
}

/// What an object's metadata counts against `Capacity::max_metadata_bytes`.
pub(super) fn weight(metadata: &HashMap<String, String>) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests;
