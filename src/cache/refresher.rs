//! The cache of one kind of upstream: finds or creates a group (starting its supervised
//! refresh task) and answers callers from the group's items.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::group::Group;
use super::schedule::after;
use super::task::{refresh_loop, supervise};
use super::{RefreshConfig, Upstream};
use crate::signal::Observation;

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
