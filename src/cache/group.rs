//! One group's shared state: its items with their values, what its reads saw in passing, and
//! the signals between the callers and the group's refresh task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::schedule::Demand;
use super::{LookupHash, Upstream};
use crate::signal::{GoodReads, Observation, SignalError};

/// What the cache holds for one item: when it was last asked about (by anyone, and by KEDA),
/// whether and when it was read, its latest good values and the latest error.
#[derive(Clone, Debug, Default)]
pub(super) struct ItemState {
    pub(super) last_asked: Option<Instant>,
    pub(super) demand: Demand,
    pub(super) attempted: bool,
    /// When its latest read (good or not) finished.
    pub(super) read_at: Option<Instant>,
    /// A KEDA call found its value older than the period plus a refresh and waits for a read.
    pub(super) lapsed: bool,
    pub(super) reads: GoodReads<Instant>,
    pub(super) error: Option<Arc<SignalError>>,
}

impl ItemState {
    pub(super) fn observation(&self, now: Instant) -> Observation {
        self.reads.observation(now, self.error.clone())
    }
}

pub(super) struct Group<U: Upstream> {
    pub(super) key: U::Group,
    pub(super) items: Mutex<HashMap<U::Item, ItemState, LookupHash>>,
    /// What the latest full read and the wakes since saw in passing
    /// ([`super::GroupRead::seen_in_passing`]), with when each read finished.
    pub(super) seen_in_passing: Mutex<HashMap<U::Item, (f64, Instant)>>,
    /// Bumped after every refresh, so waiters and streams can look again.
    pub(super) generation: watch::Sender<u64>,
    pub(super) wake: Notify,
    pub(super) fast_watchers: AtomicUsize,
    /// The refresher's count of live groups, which this one leaves when dropped.
    pub(super) live: Arc<AtomicUsize>,
}

impl<U: Upstream> Drop for Group<U> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
