//! The cache of one kind of upstream: finds or creates a group (starting its supervised
//! refresh task) and answers callers from the group's items.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::group::Group;
use super::schedule::after;
use super::task::{TaskHealth, refresh_loop, supervise};
use super::{LookupHash, RefreshConfig, Upstream};
use crate::signal::{Observation, SignalError};

/// moka refuses idle times past 1,000 years; a group idle for ten is gone anyway.
const MAX_TIME_TO_IDLE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Keeps one group re-read at the fast interval while it lives.
pub struct FastWatch<U: Upstream> {
    group: Arc<Group<U>>,
}

impl<U: Upstream> Drop for FastWatch<U> {
    fn drop(&mut self) {
        self.group.fast_watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who looks at an item: a KEDA call (`keda`, which counts as demand) or a look that is not
/// KEDA asking (a stream's, `/decisions`), for a plan that decides on the value's rate
/// (`rate`, `drainTime`: the item keeps the reads it is worked out from) or not.
#[derive(Clone, Copy, Debug)]
pub(super) struct Asker {
    pub(super) keda: bool,
    pub(super) rate: bool,
}

impl Asker {
    pub(super) fn keda(rate: bool) -> Self {
        Self { keda: true, rate }
    }

    pub(super) fn peek(rate: bool) -> Self {
        Self { keda: false, rate }
    }
}

/// A caller's way to its group kept between calls (a tracked object's cache entry), so a
/// call does not hash the group's key into the map each time. Weak: the map still owns the
/// group, and a group its task dropped is not kept alive by the objects that watched it.
pub(super) struct Held<U: Upstream>(Mutex<Option<(Weak<Group<U>>, Instant)>>);

impl<U: Upstream> Default for Held<U> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

/// A look that found no answer yet: the group to wake, and its refreshes to wait on.
pub(super) struct Waiting<U: Upstream> {
    group: Arc<Group<U>>,
    changes: watch::Receiver<u64>,
}

/// The cache of one kind of upstream.
pub struct Refresher<U: Upstream> {
    upstream: Arc<U>,
    config: RefreshConfig,
    groups: moka::sync::Cache<U::Group, Arc<Group<U>>, LookupHash>,
    /// Groups alive (in the map, or still held by a stream's guard), for `max_groups`.
    live: Arc<AtomicUsize>,
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
            .build_with_hasher(LookupHash::default());
        Self {
            upstream,
            config,
            groups,
            live: Arc::new(AtomicUsize::new(0)),
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

    /// The group of `key`, started if new, unless `max_groups` are alive.
    fn group(&self, key: &U::Group) -> Result<Arc<Group<U>>, SignalError> {
        self.groups
            .try_get_with_by_ref(key, || self.start_group(key))
            .map_err(|e: Arc<SignalError>| (*e).clone())
    }

    fn start_group(&self, key: &U::Group) -> Result<Arc<Group<U>>, SignalError> {
        let max = self.config.max_groups;
        if self.live.fetch_add(1, Ordering::SeqCst) >= max {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(SignalError::Capacity(format!(
                "the scaler reads {max} distinct upstreams of this kind, its limit \
                 (--max-upstream-groups); share a server or namespace (and its credentials) \
                 with other triggers"
            )));
        }
        let group = Arc::new(Group {
            key: key.clone(),
            items: Mutex::new(HashMap::default()),
            seen_in_passing: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
            wake: Notify::new(),
            fast_watchers: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            live: self.live.clone(),
        });
        let (weak, upstream, config, groups) = (
            Arc::downgrade(&group),
            self.upstream.clone(),
            self.config.clone(),
            self.groups.clone(),
        );
        let health = Arc::new(TaskHealth::new(self.upstream.supervision()));
        let task_health = health.clone();
        tokio::spawn(supervise(
            key.clone(),
            self.config.interval,
            health,
            move || {
                refresh_loop(
                    weak.clone(),
                    upstream.clone(),
                    config.clone(),
                    groups.clone(),
                    task_health.clone(),
                )
            },
        ));
        Ok(group)
    }

    /// The current observation of `item` for a KEDA call (`GetMetrics`, `IsActive`): the call
    /// counts as demand, which is what keeps the item read (README, `--refresh-interval`: reads follow demand).
    /// A never-seen item is answered from what the group's latest reads saw in passing, if
    /// they saw it; otherwise it is read at once, and this waits for that first read, shared
    /// with every concurrent caller, at most `first_read_timeout`. So does a call that finds
    /// the value older than KEDA's period plus one refresh ([`super::schedule::Demand::lapsed`]): KEDA had
    /// stopped asking, so nothing kept it read.
    pub async fn observe(&self, key: &U::Group, item: &U::Item) -> Observation {
        self.look(self.group(key), item, Asker::keda(false), Instant::now())
            .await
    }

    /// The current observation of `item` without counting as KEDA asking: a stream's looks
    /// (its group is read at the fast interval anyway) and `/decisions`.
    pub async fn peek(&self, key: &U::Group, item: &U::Item) -> Observation {
        self.look(self.group(key), item, Asker::peek(false), Instant::now())
            .await
    }

    /// [`Self::observe`] (`asker.keda`) or [`Self::peek`] through `held`, a handle to the group
    /// that a caller keeps between calls ([`Held`]).
    pub(super) async fn look_held(
        &self,
        key: &U::Group,
        held: &Held<U>,
        item: &U::Item,
        asker: Asker,
    ) -> Observation {
        let now = Instant::now();
        self.look(self.held_group(key, held, now), item, asker, now)
            .await
    }

    /// [`Self::look_held`] asked at `now` without waiting: the observation if the cache can
    /// answer now, else the read to wait for ([`Self::wait`]).
    pub(super) fn look_held_at(
        &self,
        key: &U::Group,
        held: &Held<U>,
        item: &U::Item,
        asker: Asker,
        now: Instant,
    ) -> Result<Observation, Waiting<U>> {
        self.start(self.held_group(key, held, now), item, asker, now)
    }

    /// `key`'s group through `held` while it is the group the map holds, else from the map.
    /// The map is still asked at least once per refresh interval, so its idle timer sees
    /// the calls as it did when every call looked there, and a group replaced in the map
    /// (dropped by its task, evicted while a stream held it) is left within one interval.
    fn held_group(
        &self,
        key: &U::Group,
        held: &Held<U>,
        now: Instant,
    ) -> Result<Arc<Group<U>>, SignalError> {
        let mut held = held.0.lock();
        if let Some((weak, looked)) = &*held
            && now.saturating_duration_since(*looked) < self.config.interval
            && let Some(group) = weak.upgrade()
            && !group.retired.load(Ordering::SeqCst)
        {
            return Ok(group);
        }
        let group = self.group(key)?;
        *held = Some((Arc::downgrade(&group), now));
        Ok(group)
    }

    /// [`Self::start`], and the wait for the read when it found none to answer from.
    async fn look(
        &self,
        group: Result<Arc<Group<U>>, SignalError>,
        item: &U::Item,
        asker: Asker,
        asked: Instant,
    ) -> Observation {
        match self.start(group, item, asker, asked) {
            Ok(observation) => observation,
            Err(waiting) => self.wait(waiting, item).await,
        }
    }

    /// The part of a look that never waits: the call counted at `asked`, and the answer if
    /// the item has one, else the read to wait for.
    fn start(
        &self,
        group: Result<Arc<Group<U>>, SignalError>,
        item: &U::Item,
        asker: Asker,
        asked: Instant,
    ) -> Result<Observation, Waiting<U>> {
        let group = match group {
            Ok(g) => g,
            Err(e) => return Ok(Observation::failed(e)),
        };
        let changes = {
            let mut items = group.items.lock();
            let slot = match items.get_mut(item) {
                Some(slot) => slot,
                None => {
                    let max = self.config.max_items_per_group;
                    if items.len() >= max {
                        return Ok(Observation::failed(SignalError::Capacity(format!(
                            "this upstream already has {max} distinct entities or queries \
                             watched, the limit per upstream (--max-items-per-group)"
                        ))));
                    }
                    // Cloned only here: a call for a known item copies none of its strings.
                    items.entry(item.clone()).or_default()
                }
            };
            slot.last_asked = Some(asked);
            if asker.rate {
                slot.reads.keep_history();
            }
            if !slot.attempted
                && let Some(&(v, at)) = group.seen_in_passing.lock().get(item)
            {
                // From here on the group's reads include it.
                slot.read(at, Ok(v));
            }
            if asker.keda && slot.keda_call(asked, self.config.interval) {
                group.wake.notify_one();
            }
            if slot.answerable() {
                return Ok(slot.observation(asked));
            }
            // Under the items lock: a read stores its values under it before it bumps the
            // generation, so no read that finishes from here on goes unseen.
            group.generation.subscribe()
        };
        Err(Waiting { group, changes })
    }

    /// Waits for the read a look found missing, at most `first_read_timeout`.
    pub(super) async fn wait(&self, waiting: Waiting<U>, item: &U::Item) -> Observation {
        let Waiting { group, mut changes } = waiting;
        group.wake.notify_one();
        let deadline = after(Instant::now(), self.config.first_read_timeout);
        loop {
            let done = tokio::time::timeout_at(deadline, changes.changed()).await;
            let items = group.items.lock();
            let slot = items.get(item);
            if slot.is_some_and(|slot| slot.answerable()) || !matches!(done, Ok(Ok(()))) {
                return slot.map_or_else(Observation::default, |slot| {
                    slot.observation(Instant::now())
                });
            }
        }
    }

    /// A receiver that changes after every refresh of `key`'s group, and a guard that keeps
    /// the group at the fast interval until dropped; `None` past `max_groups`.
    pub fn watch(&self, key: &U::Group) -> Option<(watch::Receiver<u64>, FastWatch<U>)> {
        let group = self.group(key).ok()?;
        group.fast_watchers.fetch_add(1, Ordering::SeqCst);
        group.wake.notify_one();
        Some((group.generation.subscribe(), FastWatch { group }))
    }
}
