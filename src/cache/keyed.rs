//! The cache as the engine sees it: by plan, whatever the upstream's keys are. A plan's key in
//! its upstream's cache is worked out once, when the engine starts tracking the ScaledObject
//! ([`SignalCache::entry`]), not on every KEDA call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::refresher::{Asker, Held};
use super::{Refresher, Upstream};
use crate::signal::Observation;

/// One signal's cache as the engine sees it: by plan, whatever the upstream's keys are.
pub trait SignalCache<P>: Send + Sync + 'static {
    /// `plan`'s entry in the cache, its (group, item) key computed here once. `rate`: the
    /// plan decides on the value's rate (`drainTime`), so its looks keep the item's reads the
    /// rate is worked out from ([`crate::signal::GoodReads::keep_history`]).
    fn entry(&self, plan: &P, rate: bool) -> Arc<dyn CacheEntry>;

    /// The current observation for `plan` (see [`Refresher::observe`]); [`Self::entry`] once
    /// and [`CacheEntry::observe`] per call where a plan is read more than once.
    fn observe<'a>(
        &'a self,
        plan: &'a P,
    ) -> Pin<Box<dyn Future<Output = Observation> + Send + 'a>> {
        let entry = self.entry(plan, false);
        Box::pin(async move { entry.observe().await })
    }

    /// Change notifications for `plan`'s group, and a guard that keeps it at the fast interval.
    fn watch(&self, plan: &P) -> (watch::Receiver<u64>, Box<dyn Send + Sync>) {
        self.entry(plan, false).watch()
    }
}

/// One plan's place in its signal's cache.
pub trait CacheEntry: Send + Sync + 'static {
    /// The current observation for a KEDA call, which counts as demand (see
    /// [`Refresher::observe`]).
    fn observe(&self) -> Pin<Box<dyn Future<Output = Observation> + Send + '_>>;
    /// The current observation for a look that is not KEDA asking (a stream, `/decisions`;
    /// see [`Refresher::peek`]).
    fn peek(&self) -> Pin<Box<dyn Future<Output = Observation> + Send + '_>> {
        self.observe()
    }
    /// [`Self::observe`] (`keda`) or [`Self::peek`] asked at `now`, split where it would
    /// wait: the engine's per-call path, which boxes no future for a warm cache and reads
    /// the clock once for all of a call's signals.
    fn look(&self, keda: bool, _now: Instant) -> Looked<'_> {
        Looked::Waiting(if keda { self.observe() } else { self.peek() })
    }
    /// Change notifications for the entry's group, and a guard that keeps it at the fast
    /// interval.
    fn watch(&self) -> (watch::Receiver<u64>, Box<dyn Send + Sync>);
}

/// What [`CacheEntry::look`] found.
pub enum Looked<'a> {
    /// The observation, from the cache as it is.
    Ready(Observation),
    /// The wait for a read the item needs first (never read, or its value lapsed).
    Waiting(Wait<'a>),
}

/// The wait for a read, as [`Looked::Waiting`] holds it.
pub type Wait<'a> = Pin<Box<dyn Future<Output = Observation> + Send + 'a>>;

/// Adapts a [`Refresher`] to a plan type through a function from plan to (group, item).
pub struct Keyed<U: Upstream, P> {
    refresher: Arc<Refresher<U>>,
    key: fn(&P) -> (U::Group, U::Item),
}

impl<U: Upstream, P> Keyed<U, P> {
    pub fn new(refresher: Refresher<U>, key: fn(&P) -> (U::Group, U::Item)) -> Self {
        Self {
            refresher: Arc::new(refresher),
            key,
        }
    }
}

impl<U: Upstream, P: Send + Sync + 'static> SignalCache<P> for Keyed<U, P> {
    fn entry(&self, plan: &P, rate: bool) -> Arc<dyn CacheEntry> {
        let (group, item) = (self.key)(plan);
        Arc::new(KeyedEntry {
            refresher: self.refresher.clone(),
            group,
            held: Held::default(),
            item,
            rate,
        })
    }
}

/// A plan's (group, item) in a [`Refresher`], and its way to the group between calls.
struct KeyedEntry<U: Upstream> {
    refresher: Arc<Refresher<U>>,
    group: U::Group,
    held: Held<U>,
    item: U::Item,
    rate: bool,
}

impl<U: Upstream> CacheEntry for KeyedEntry<U> {
    fn observe(&self) -> Pin<Box<dyn Future<Output = Observation> + Send + '_>> {
        Box::pin(self.refresher.look_held(
            &self.group,
            &self.held,
            &self.item,
            Asker::keda(self.rate),
        ))
    }

    fn peek(&self) -> Pin<Box<dyn Future<Output = Observation> + Send + '_>> {
        Box::pin(self.refresher.look_held(
            &self.group,
            &self.held,
            &self.item,
            Asker::peek(self.rate),
        ))
    }

    fn look(&self, keda: bool, now: Instant) -> Looked<'_> {
        match self.refresher.look_held_at(
            &self.group,
            &self.held,
            &self.item,
            Asker {
                keda,
                rate: self.rate,
            },
            now,
        ) {
            Ok(observation) => Looked::Ready(observation),
            Err(waiting) => Looked::Waiting(Box::pin(self.refresher.wait(waiting, &self.item))),
        }
    }

    fn watch(&self) -> (watch::Receiver<u64>, Box<dyn Send + Sync>) {
        match self.refresher.watch(&self.group) {
            Some((rx, guard)) => (rx, Box::new(guard)),
            // Past the group cap: a receiver that never changes (its sender is gone); the
            // stream's own reads report the refusal.
            None => (watch::channel(0).1, Box::new(())),
        }
    }
}
