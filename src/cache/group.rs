//! One group's shared state: its items with their values, what its reads saw in passing, and
//! the signals between the callers and the group's refresh task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::schedule::{Demand, ItemView};
use super::{LookupHash, Upstream};
use crate::signal::{EntityCounts, GoodReads, Moment, Observation, SignalError};

/// What the cache holds for one item: when it was last asked about (by anyone, and by KEDA),
/// whether and when it was read, its latest good values and the latest error. `T` is the
/// clock: the server's, or the simulator's, which keeps its blend-scaler side in these too
/// (`simulate::cache`), so both follow one rule for when a call waits and what it sees.
#[derive(Clone, Debug)]
pub(crate) struct ItemState<T = Instant> {
    pub(crate) last_asked: Option<T>,
    pub(crate) demand: Demand<T>,
    pub(crate) attempted: bool,
    /// When its latest read (good or not) finished.
    pub(crate) read_at: Option<T>,
    /// A KEDA call found its value older than the period plus a refresh and waits for a read.
    pub(crate) lapsed: bool,
    pub(crate) reads: GoodReads<T>,
    pub(crate) error: Option<Arc<SignalError>>,
    /// The other counts the latest read that had them returned for it ([`super::GroupRead::counts`]).
    pub(crate) counts: Option<EntityCounts>,
}

// By hand: an item never asked about needs no default instant.
impl<T> Default for ItemState<T> {
    fn default() -> Self {
        Self {
            last_asked: None,
            demand: Demand::default(),
            attempted: false,
            read_at: None,
            lapsed: false,
            reads: GoodReads::default(),
            error: None,
            counts: None,
        }
    }
}

impl<T: Moment> ItemState<T> {
    pub(crate) fn observation(&self, now: T) -> Observation {
        Observation {
            counts: self.counts,
            ..self.reads.observation(now, self.error.clone())
        }
    }

    /// KEDA asked for the item at `at` (`interval`: `--refresh-interval`); whether the call
    /// made a read due that the group's task may be sleeping past, so it must be woken.
    /// A call that finds the value lapsed ([`Demand::lapsed`]) marks it so: only when KEDA
    /// had stopped asking, since a read already due (held back by Retry-After, or slow) is
    /// what an answer from the cache is for.
    pub(crate) fn keda_call(&mut self, at: T, interval: Duration) -> bool {
        let due = |item: &Self| item.read_at.and_then(|r| item.demand.due(r, interval));
        let was_due = due(self).is_some();
        if !was_due
            && self
                .read_at
                .is_some_and(|r| self.demand.lapsed(r, at, interval))
        {
            self.lapsed = true;
        }
        self.demand.called(at, interval);
        !was_due && due(self).is_some()
    }

    /// Whether a caller is answered from what is kept now, rather than wait for a read (the
    /// item was never read, or its value lapsed).
    pub(crate) fn answerable(&self) -> bool {
        self.attempted && !self.lapsed
    }

    /// The item as the schedule sees it.
    pub(crate) fn view(&self) -> ItemView<'_, T> {
        ItemView {
            demand: &self.demand,
            read: self.read_at,
            waiting: !self.answerable(),
        }
    }

    /// A read of the item finished at `finished` with `value`.
    pub(crate) fn read(&mut self, finished: T, value: Result<f64, Arc<SignalError>>) {
        self.attempted = true;
        self.read_at = Some(finished);
        self.lapsed = false;
        match value {
            Ok(v) => {
                self.reads.store(v, finished);
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }
}

pub(super) struct Group<U: Upstream> {
    pub(super) key: U::Group,
    /// Boxed: a group's table has room for up to twice its items (hashbrown doubles), and
    /// a state is some 270 bytes to the key's 40; 10,000 queues on twenty namespaces left
    /// half of 4.6 MB of tables empty inline.
    pub(super) items: Mutex<HashMap<U::Item, Box<ItemState>, LookupHash>>,
    /// What the latest full read and the wakes since saw in passing
    /// ([`super::GroupRead::seen_in_passing`]), with when each read finished.
    pub(super) seen_in_passing: Mutex<HashMap<U::Item, (f64, Instant)>>,
    /// Bumped after every refresh, so waiters and streams can look again.
    pub(super) generation: watch::Sender<u64>,
    pub(super) wake: Notify,
    pub(super) fast_watchers: AtomicUsize,
    /// Its task dropped it from the map: callers holding it ([`super::refresher::Held`])
    /// look in the map again.
    pub(super) retired: AtomicBool,
    /// The refresher's count of live groups, which this one leaves when dropped.
    pub(super) live: Arc<AtomicUsize>,
}

impl<U: Upstream> Drop for Group<U> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
