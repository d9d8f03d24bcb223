//! The read cache: every KEDA call is answered from here, never from an upstream.
//!
//! Values are grouped by *upstream identity* (a Service Bus namespace with its credentials, a
//! Prometheus server with its auth), not by ScaledObject. Each group has one background task
//! that reads all of the group's watched items in one [`Upstream::read`] per refresh, however
//! many ScaledObjects watch them. A never-seen item wakes its group at once, and concurrent
//! callers all wait for that same read, unless the group's latest reads saw it in passing (a
//! list page holds every entity on it): then it is answered from what they saw. Items
//! nobody asked about for `idle_ttl` are dropped; a group with none left is dropped too,
//! which ends its task.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::signal::{EntityCounts, Observation, SignalError};

mod schedule;

use schedule::{Action, Outcome, Pending, Schedule, after};

/// How long a wake waits for more never-seen items before reading.
const COALESCE: Duration = Duration::from_millis(5);

/// moka refuses idle times past 1,000 years; a group idle for ten is gone anyway.
const MAX_TIME_TO_IDLE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// An upstream that can read several items of one group in one go.
pub trait Upstream: Send + Sync + 'static {
    /// What one refresh reads together: one namespace, one server.
    type Group: Clone + Eq + Hash + Send + Sync + Debug + 'static;
    /// What a ScaledObject watches inside a group: an entity, a query.
    type Item: Clone + Eq + Hash + Send + Sync + Debug + 'static;

    /// Reads every item. Called once per group per refresh; implementations choose how
    /// (one list request or one request per item) and report per item.
    fn read(
        &self,
        group: &Self::Group,
        items: &[Self::Item],
    ) -> impl Future<Output = GroupRead<Self::Item>> + Send;
}

/// The outcome of one refresh of a group.
#[derive(Debug)]
pub struct GroupRead<I> {
    /// One result per item; an item left out counts as an error.
    pub values: HashMap<I, Result<f64, SignalError>>,
    /// The upstream asked not to be called again before this long (429/503 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Values the read saw for items nobody asked about (yet): the other entities on a list
    /// page. An item asked about for the first time is answered from these, as fresh as the
    /// group's own items, instead of waking the group for a read of its own.
    pub seen_in_passing: HashMap<I, f64>,
}

impl<I: Eq + Hash> GroupRead<I> {
    /// Every item failed the same way (a refused connection, a 401 for the whole namespace).
    pub fn all_failed(items: &[I], error: SignalError) -> Self
    where
        I: Clone,
    {
        let retry_after = error.retry_after();
        Self {
            values: items
                .iter()
                .map(|i| (i.clone(), Err(error.clone())))
                .collect(),
            retry_after,
            seen_in_passing: HashMap::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RefreshConfig {
    /// How often each group is re-read.
    pub interval: Duration,
    /// How often a group is re-read while someone streams one of its items (SPEC 4).
    pub fast_interval: Duration,
    /// How long a never-seen item's first read may make a caller wait.
    pub first_read_timeout: Duration,
    /// Items nobody asked about for this long are dropped.
    pub idle_ttl: Duration,
    /// The longest exponential backoff after repeated failures.
    pub max_backoff: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_secs(1),
            first_read_timeout: Duration::from_secs(2),
            idle_ttl: Duration::from_secs(600),
            max_backoff: Duration::from_secs(120),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Slot {
    last_asked: Option<Instant>,
    attempted: bool,
    good: Option<(f64, Instant)>,
    previous_good: Option<(f64, Instant)>,
    error: Option<Arc<SignalError>>,
}

impl Slot {
    fn observation(&self, now: Instant) -> Observation {
        let rate = match (self.good, self.previous_good) {
            (Some((v1, t1)), Some((v0, t0))) if t1 > t0 => {
                Some((v1 - v0) / t1.duration_since(t0).as_secs_f64())
            }
            _ => None,
        };
        Observation {
            value: self.good.map(|(v, _)| v),
            age: self.good.map(|(_, t)| now.saturating_duration_since(t)),
            error: self.error.clone(),
            rate,
        }
    }
}

struct Group<U: Upstream> {
    key: U::Group,
    items: Mutex<HashMap<U::Item, Slot>>,
    /// What the latest full read and the wakes since saw in passing
    /// ([`GroupRead::seen_in_passing`]), with when each read finished.
    seen_in_passing: Mutex<HashMap<U::Item, (f64, Instant)>>,
    /// Bumped after every refresh, so waiters and streams can look again.
    generation: watch::Sender<u64>,
    wake: Notify,
    fast_watchers: AtomicUsize,
}

/// Keeps one group re-read at the fast interval while it lives.
pub struct FastWatch<U: Upstream> {
    group: Arc<Group<U>>,
}

impl<U: Upstream> Drop for FastWatch<U> {
    fn drop(&mut self) {
        self.group.fast_watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The cache of one kind of upstream.
pub struct Refresher<U: Upstream> {
    upstream: Arc<U>,
    config: RefreshConfig,
    groups: moka::sync::Cache<U::Group, Arc<Group<U>>>,
}

impl<U: Upstream> Refresher<U> {
    pub fn new(upstream: U, config: RefreshConfig) -> Self {
        Self::from_arc(Arc::new(upstream), config)
    }

    pub fn from_arc(upstream: Arc<U>, config: RefreshConfig) -> Self {
        // A group lives while its task holds it; the map only finds it. Its own idle timer
        // is a backstop for a task that ended.
        let groups = moka::sync::Cache::builder()
            .time_to_idle(
                config
                    .idle_ttl
                    .saturating_add(config.interval.saturating_mul(2))
                    .min(MAX_TIME_TO_IDLE),
            )
            .build();
        Self {
            upstream,
            config,
            groups,
        }
    }

    pub fn upstream(&self) -> &U {
        &self.upstream
    }

    pub fn config(&self) -> &RefreshConfig {
        &self.config
    }

    /// Groups currently tracked (for tests and metrics).
    pub fn group_count(&self) -> u64 {
        self.groups.run_pending_tasks();
        self.groups.entry_count()
    }

    fn group(&self, key: &U::Group) -> Arc<Group<U>> {
        self.groups.get_with_by_ref(key, || {
            let group = Arc::new(Group {
                key: key.clone(),
                items: Mutex::new(HashMap::new()),
                seen_in_passing: Mutex::new(HashMap::new()),
                generation: watch::channel(0).0,
                wake: Notify::new(),
                fast_watchers: AtomicUsize::new(0),
            });
            let (weak, upstream, config, groups) = (
                Arc::downgrade(&group),
                self.upstream.clone(),
                self.config.clone(),
                self.groups.clone(),
            );
            tokio::spawn(supervise(key.clone(), self.config.interval, move || {
                refresh_loop(
                    weak.clone(),
                    upstream.clone(),
                    config.clone(),
                    groups.clone(),
                )
            }));
            group
        })
    }

    /// The current observation of `item`. A never-seen item is answered from what the
    /// group's latest reads saw in passing, if they saw it; otherwise it is read at once, and
    /// this waits for that first read, shared with every concurrent caller, at most
    /// `first_read_timeout`.
    pub async fn observe(&self, key: &U::Group, item: &U::Item) -> Observation {
        let group = self.group(key);
        let mut changes = group.generation.subscribe();
        {
            let mut items = group.items.lock();
            let slot = items.entry(item.clone()).or_default();
            let now = Instant::now();
            slot.last_asked = Some(now);
            if !slot.attempted
                && let Some(&(v, at)) = group.seen_in_passing.lock().get(item)
            {
                // From here on the group's reads include it.
                slot.attempted = true;
                slot.good = Some((v, at));
            }
            if slot.attempted {
                return slot.observation(now);
            }
        }
        group.wake.notify_one();
        let deadline = after(Instant::now(), self.config.first_read_timeout);
        loop {
            let done = tokio::time::timeout_at(deadline, changes.changed()).await;
            let items = group.items.lock();
            let slot = items.get(item).cloned().unwrap_or_default();
            if slot.attempted || !matches!(done, Ok(Ok(()))) {
                return slot.observation(Instant::now());
            }
        }
    }

    /// A receiver that changes after every refresh of `key`'s group, and a guard that keeps
    /// the group at the fast interval until dropped.
    pub fn watch(&self, key: &U::Group) -> (watch::Receiver<u64>, FastWatch<U>) {
        let group = self.group(key);
        group.fast_watchers.fetch_add(1, Ordering::SeqCst);
        group.wake.notify_one();
        (group.generation.subscribe(), FastWatch { group })
    }
}

/// One signal's cache as the engine sees it: by plan, whatever the upstream's keys are.
pub trait SignalSource<P>: Send + Sync + 'static {
    /// The current observation for `plan` (see [`Refresher::observe`]).
    fn observe<'a>(&'a self, plan: &'a P)
    -> Pin<Box<dyn Future<Output = Observation> + Send + 'a>>;
    /// Change notifications for `plan`'s group, and a guard that keeps it at the fast interval.
    fn watch(&self, plan: &P) -> (watch::Receiver<u64>, Box<dyn Send + Sync>);
    /// The message counts the latest read returned beside `plan`'s value, for sources whose
    /// reads carry them (Service Bus); shown and exported, never decided on.
    fn counts(&self, _plan: &P) -> Option<EntityCounts> {
        None
    }
}

/// Adapts a [`Refresher`] to a plan type through a function from plan to (group, item).
pub struct Keyed<U: Upstream, P> {
    refresher: Refresher<U>,
    key: fn(&P) -> (U::Group, U::Item),
}

impl<U: Upstream, P> Keyed<U, P> {
    pub fn new(refresher: Refresher<U>, key: fn(&P) -> (U::Group, U::Item)) -> Self {
        Self { refresher, key }
    }

    pub fn refresher(&self) -> &Refresher<U> {
        &self.refresher
    }
}

impl<U: Upstream, P: Send + Sync + 'static> SignalSource<P> for Keyed<U, P> {
    fn observe<'a>(
        &'a self,
        plan: &'a P,
    ) -> Pin<Box<dyn Future<Output = Observation> + Send + 'a>> {
        Box::pin(async move {
            let (group, item) = (self.key)(plan);
            self.refresher.observe(&group, &item).await
        })
    }

    fn watch(&self, plan: &P) -> (watch::Receiver<u64>, Box<dyn Send + Sync>) {
        let (group, _) = (self.key)(plan);
        let (rx, guard) = self.refresher.watch(&group);
        (rx, Box::new(guard))
    }
}

/// Runs a group's refresh task and starts it again if it panics, so a group never stays
/// registered without a task refreshing it (every ScaledObject on it would answer
/// `UNAVAILABLE` for good). A task that ends normally (its group dropped) is not restarted.
async fn supervise<F, Fut>(what: impl Debug, pause: Duration, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(group = ?what, "a refresh task panicked; restarting it");
                tokio::time::sleep(pause).await;
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// One read, with a panic inside the upstream turned into an error for every item: the
/// task carries on and the values say why they are missing.
async fn read_guarded<U: Upstream>(
    upstream: &U,
    group: &U::Group,
    items: &[U::Item],
) -> GroupRead<U::Item> {
    match AssertUnwindSafe(upstream.read(group, items))
        .catch_unwind()
        .await
    {
        Ok(read) => read,
        Err(_) => {
            tracing::error!(group = ?group, "an upstream read panicked");
            GroupRead::all_failed(
                items,
                SignalError::Unreported("the upstream read failed unexpectedly"),
            )
        }
    }
}

/// The thin driver of a group's [`Schedule`]: sleeps until it says, reads what it says,
/// reports how the read went.
async fn refresh_loop<U: Upstream>(
    group: Weak<Group<U>>,
    upstream: Arc<U>,
    config: RefreshConfig,
    groups: moka::sync::Cache<U::Group, Arc<Group<U>>>,
) {
    let mut schedule = Schedule::new(&config, Instant::now());
    loop {
        let Some(g) = group.upgrade() else { return };
        let woken = tokio::select! {
            _ = tokio::time::sleep_until(schedule.sleep_until()) => false,
            _ = g.wake.notified() => {
                tokio::time::sleep_until(schedule.wake_read_at(Instant::now(), COALESCE)).await;
                true
            }
        };

        let now = Instant::now();
        let streaming = || g.fast_watchers.load(Ordering::SeqCst) > 0;
        let (action, items) = {
            let mut items = g.items.lock();
            items.retain(|_, slot| {
                slot.last_asked
                    .is_some_and(|t| now.saturating_duration_since(t) < config.idle_ttl)
            });
            let pending = Pending {
                watched: items.len(),
                new: items.values().filter(|slot| !slot.attempted).count(),
                streaming: streaming(),
            };
            let action = schedule.decide(now, woken, pending);
            let read: Vec<U::Item> = match action {
                Action::Read { full } => items
                    .iter()
                    .filter(|(_, slot)| full || !slot.attempted)
                    .map(|(item, _)| item.clone())
                    .collect(),
                Action::Wait | Action::Drop => Vec::new(),
            };
            (action, read)
        };
        let full = match action {
            Action::Read { full } => full,
            Action::Wait => continue,
            Action::Drop => {
                groups.invalidate(&g.key);
                return;
            }
        };

        let read = read_guarded(&*upstream, &g.key, &items).await;
        let finished = Instant::now();
        let any_ok = store(&g, &items, read.values, full, finished);
        {
            // Throttled, or a full read failing throughout: the upstream refuses us now, and
            // nothing read earlier stands in for a read of a new item.
            let refused = read.retry_after.is_some() || (full && !any_ok);
            let mut seen = g.seen_in_passing.lock();
            // A full read replaces what earlier ones saw, so an item answered from it is as
            // fresh as the group's own; a wake's read adds to it.
            if refused || full {
                seen.clear();
            }
            if !refused {
                seen.extend(
                    read.seen_in_passing
                        .into_iter()
                        .map(|(item, v)| (item, (v, finished))),
                );
            }
        }
        g.generation.send_modify(|n| *n += 1);
        let outcome = Outcome {
            retry_after: read.retry_after,
            any_ok,
        };
        schedule.read_done(finished, full, outcome, streaming());
    }
}

/// Stores one read's values in the group's slots; whether any item got a value.
fn store<U: Upstream>(
    g: &Group<U>,
    items: &[U::Item],
    mut values: HashMap<U::Item, Result<f64, SignalError>>,
    full: bool,
    finished: Instant,
) -> bool {
    let mut any_ok = false;
    let mut slots = g.items.lock();
    let mut throttled = None;
    for item in items {
        let Some(slot) = slots.get_mut(item) else {
            continue;
        };
        slot.attempted = true;
        match values.remove(item).unwrap_or(Err(SignalError::Unreported(
            "the upstream did not report this item",
        ))) {
            Ok(v) => {
                any_ok = true;
                slot.previous_good = slot.good;
                slot.good = Some((v, finished));
                slot.error = None;
            }
            Err(e) => {
                let e = Arc::new(e);
                if e.retry_after().is_some() {
                    throttled = Some(e.clone());
                }
                slot.error = Some(e);
            }
        }
    }
    // A wake's read throttled holds the whole group back: the items it did not read say why
    // their values are ageing.
    if let (false, Some(e)) = (full, throttled) {
        for slot in slots
            .values_mut()
            .filter(|s| s.attempted && s.error.is_none())
        {
            slot.error = Some(e.clone());
        }
    }
    any_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Counts reads and serves values from a table; fails items it has no value for.
    #[derive(Default)]
    struct Table {
        values: Mutex<HashMap<&'static str, f64>>,
        reads: AtomicU32,
        retry_after: Mutex<Option<Duration>>,
        delay: Mutex<Duration>,
        /// Reads see the whole table, as a list does, and report the rest in passing.
        list: Mutex<bool>,
        /// The items of every read, sorted.
        batches: Mutex<Vec<Vec<&'static str>>>,
        /// Reads panic (a bug in an upstream client, an absurd token lifetime).
        panic: Mutex<bool>,
    }

    impl Upstream for Table {
        type Group = &'static str;
        type Item = &'static str;

        async fn read(
            &self,
            _group: &&'static str,
            items: &[&'static str],
        ) -> GroupRead<&'static str> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let mut batch = items.to_vec();
            batch.sort();
            self.batches.lock().push(batch);
            let delay = *self.delay.lock();
            tokio::time::sleep(delay).await;
            if *self.panic.lock() {
                panic!("the upstream client hit a bug");
            }
            if let Some(pause) = *self.retry_after.lock() {
                return GroupRead::all_failed(
                    items,
                    SignalError::Throttled {
                        status: 429,
                        retry_after: Some(pause),
                    },
                );
            }
            let values = self.values.lock();
            GroupRead {
                values: items
                    .iter()
                    .map(|i| {
                        let v = values
                            .get(i)
                            .copied()
                            .ok_or_else(|| SignalError::NotFound(i.to_string()));
                        (*i, v)
                    })
                    .collect(),
                retry_after: None,
                seen_in_passing: if *self.list.lock() {
                    values
                        .iter()
                        .filter(|(k, _)| !items.contains(k))
                        .map(|(k, v)| (*k, *v))
                        .collect()
                } else {
                    HashMap::new()
                },
            }
        }
    }

    fn config() -> RefreshConfig {
        RefreshConfig {
            interval: Duration::from_secs(5),
            idle_ttl: Duration::from_secs(60),
            ..RefreshConfig::default()
        }
    }

    fn table(pairs: &[(&'static str, f64)]) -> Arc<Table> {
        let t = Table::default();
        t.values.lock().extend(pairs.iter().copied());
        Arc::new(t)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_callers_share_one_read() {
        let t = table(&[("orders", 12.0), ("billing", 3.0)]);
        let r = Arc::new(Refresher::from_arc(t.clone(), config()));
        let mut joins = Vec::new();
        for i in 0..50 {
            let r = r.clone();
            let item = if i % 2 == 0 { "orders" } else { "billing" };
            joins.push(tokio::spawn(async move { r.observe(&"ns", &item).await }));
        }
        for (i, j) in joins.into_iter().enumerate() {
            let obs = j.await.unwrap();
            assert_eq!(obs.value, Some(if i % 2 == 0 { 12.0 } else { 3.0 }));
        }
        assert_eq!(
            t.reads.load(Ordering::SeqCst),
            1,
            "one read for the whole burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_group_is_refreshed_in_the_background_once_per_interval() {
        let t = table(&[("orders", 1.0)]);
        let r = Refresher::from_arc(t.clone(), config());
        assert_eq!(r.observe(&"ns", &"orders").await.value, Some(1.0));
        let after_first = t.reads.load(Ordering::SeqCst);
        t.values.lock().insert("orders", 9.0);
        for _ in 0..100 {
            // KEDA calls far more often than the refresh interval: all from the cache.
            r.observe(&"ns", &"orders").await;
        }
        assert_eq!(t.reads.load(Ordering::SeqCst), after_first);
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        let obs = r.observe(&"ns", &"orders").await;
        assert_eq!(obs.value, Some(9.0));
        assert_eq!(obs.rate, Some(8.0 / 5.0));
        assert_eq!(t.reads.load(Ordering::SeqCst), after_first + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_seen_items_arriving_one_by_one_share_a_read_per_second() {
        // KEDA's polls after a scaler restart: thirty never-seen items, one every 100 ms.
        let names: Vec<&'static str> = (0..30)
            .map(|i| &*Box::leak(format!("queue-{i}").into_boxed_str()))
            .collect();
        let pairs: Vec<(&'static str, f64)> = names.iter().map(|n| (*n, 1.0)).collect();
        let t = table(&pairs);
        let r = Arc::new(Refresher::from_arc(t.clone(), config()));
        let mut callers = Vec::new();
        for name in names {
            let r = r.clone();
            callers.push(tokio::spawn(async move {
                let asked = Instant::now();
                let obs = r.observe(&"ns", &name).await;
                (obs, asked.elapsed())
            }));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for c in callers {
            let (obs, waited) = c.await.unwrap();
            assert_eq!(obs.value, Some(1.0));
            assert!(waited <= Duration::from_millis(1_010), "waited {waited:?}");
        }
        // Three seconds of arrivals: the first read, then one a second (not thirty).
        assert_eq!(t.reads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_item_is_read_alone_and_the_others_keep_their_schedule() {
        let t = table(&[("orders", 1.0), ("billing", 2.0)]);
        let r = Refresher::from_arc(t.clone(), config());
        r.observe(&"ns", &"orders").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(r.observe(&"ns", &"billing").await.value, Some(2.0));
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert_eq!(
            *t.batches.lock(),
            [vec!["orders"], vec!["billing"], vec!["billing", "orders"]],
            "the first read, the wake for billing, the refresh due 5 s after the first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_item_failing_alone_does_not_hold_the_others_back() {
        let t = table(&[("orders", 1.0)]);
        let r = Refresher::from_arc(t.clone(), config());
        r.observe(&"ns", &"orders").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let typo = r.observe(&"ns", &"ordres").await;
        assert!(matches!(
            typo.error.as_deref(),
            Some(SignalError::NotFound(_))
        ));
        t.values.lock().insert("orders", 6.0);
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        // Refreshed on time, 5 s after the first read, not backed off after the typo's.
        assert_eq!(t.reads.load(Ordering::SeqCst), 3);
        assert_eq!(r.observe(&"ns", &"orders").await.value, Some(6.0));
    }

    #[tokio::test(start_paused = true)]
    async fn items_a_list_saw_in_passing_are_answered_without_a_read_of_their_own() {
        let t = table(&[("orders", 12.0), ("billing", 3.0), ("audit", 0.0)]);
        *t.list.lock() = true;
        let r = Refresher::from_arc(t.clone(), config());
        assert_eq!(r.observe(&"ns", &"orders").await.value, Some(12.0));
        assert_eq!(t.reads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let billing = r.observe(&"ns", &"billing").await;
        assert_eq!(billing.value, Some(3.0));
        assert_eq!(
            billing.age,
            Some(Duration::from_secs(2)),
            "as old as the read"
        );
        assert_eq!(r.observe(&"ns", &"audit").await.value, Some(0.0));
        assert_eq!(t.reads.load(Ordering::SeqCst), 1, "no read for either");
        // Both are the group's own items from now on.
        t.values.lock().insert("billing", 8.0);
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert_eq!(r.observe(&"ns", &"billing").await.value, Some(8.0));
        assert_eq!(t.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_failed_read_saw_in_passing_is_not_kept() {
        let t = table(&[("orders", 12.0), ("billing", 3.0)]);
        *t.list.lock() = true;
        let r = Refresher::from_arc(t.clone(), config());
        r.observe(&"ns", &"orders").await;
        // An item the list does not hold wakes the group; that read is throttled.
        *t.retry_after.lock() = Some(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(r.observe(&"ns", &"ghost").await.value, None);
        assert_eq!(t.reads.load(Ordering::SeqCst), 2);
        // The first read's page is younger than the interval, but the latest read saw
        // nothing: billing waits for a read of its own, which Retry-After holds back past
        // the first-read bound.
        assert_eq!(r.observe(&"ns", &"billing").await.value, None);
        assert_eq!(t.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_read_is_cut_off_at_the_bound() {
        let t = table(&[("orders", 1.0)]);
        *t.delay.lock() = Duration::from_secs(10);
        let r = Refresher::from_arc(t.clone(), config());
        let started = Instant::now();
        let obs = r.observe(&"ns", &"orders").await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(obs.value, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_last_good_value_and_reports_the_error() {
        let t = table(&[("orders", 4.0)]);
        let r = Refresher::from_arc(t.clone(), config());
        r.observe(&"ns", &"orders").await;
        t.values.lock().clear();
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        let obs = r.observe(&"ns", &"orders").await;
        assert_eq!(obs.value, Some(4.0));
        assert!(obs.age.unwrap() >= Duration::from_secs(5));
        assert!(matches!(
            obs.error.as_deref(),
            Some(SignalError::NotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_even_when_new_items_arrive() {
        let t = table(&[("orders", 4.0), ("billing", 1.0)]);
        *t.retry_after.lock() = Some(Duration::from_secs(30));
        let r = Refresher::from_arc(t.clone(), config());
        r.observe(&"ns", &"orders").await;
        assert_eq!(t.reads.load(Ordering::SeqCst), 1);
        // A new item wakes the group, but the namespace asked for 30 s of quiet.
        // (this first read of billing waits its 2 s bound)
        r.observe(&"ns", &"billing").await;
        tokio::time::sleep(Duration::from_secs(27)).await;
        assert_eq!(t.reads.load(Ordering::SeqCst), 1);
        *t.retry_after.lock() = None;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(t.reads.load(Ordering::SeqCst), 2);
        assert_eq!(r.observe(&"ns", &"billing").await.value, Some(1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_speeds_its_group_up_until_it_ends() {
        let t = table(&[("orders", 0.0)]);
        let r = Refresher::from_arc(t.clone(), config());
        r.observe(&"ns", &"orders").await;
        let (mut changes, guard) = r.watch(&"ns");
        let before = t.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        let fast = t.reads.load(Ordering::SeqCst) - before;
        assert!(fast >= 4, "reads while streaming: {fast}");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        drop(guard);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = t.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert!(t.reads.load(Ordering::SeqCst) - before <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn items_nobody_asks_about_are_dropped_with_their_group() {
        let t = table(&[("orders", 1.0)]);
        let r = Refresher::from_arc(t.clone(), config());
        r.observe(&"ns", &"orders").await;
        assert_eq!(r.group_count(), 1);
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(r.group_count(), 0);
        let reads = t.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(t.reads.load(Ordering::SeqCst), reads, "the task ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_read_reports_an_error_and_the_group_keeps_being_refreshed() {
        let t = table(&[("orders", 4.0)]);
        *t.panic.lock() = true;
        let r = Refresher::from_arc(t.clone(), config());
        let obs = r.observe(&"ns", &"orders").await;
        assert_eq!(obs.value, None);
        assert!(
            matches!(obs.error.as_deref(), Some(SignalError::Unreported(_))),
            "{obs:?}"
        );
        // The bug goes away (a token endpoint answers sensibly again): the next refresh,
        // backed off like any failure, reads the value.
        *t.panic.lock() = false;
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        assert_eq!(r.observe(&"ns", &"orders").await.value, Some(4.0));
        assert_eq!(t.reads.load(Ordering::SeqCst), 2);
        assert_eq!(r.group_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_task_that_panics_is_started_again_and_one_that_ends_is_not() {
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        supervise("ns", Duration::from_secs(5), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("a bug in the task");
                }
            }
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }
}
