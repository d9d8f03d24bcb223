//! One group's shared state: its items with their values, what its reads saw in passing, and
//! the signals between the callers and the group's refresh task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Upstream;
use crate::signal::{Observation, SignalError};

/// What the cache holds for one item: when it was last asked about, whether it was ever read,
/// its last two good values and the latest error.
#[derive(Clone, Debug, Default)]
pub(super) struct ItemState {
    pub(super) last_asked: Option<Instant>,
    pub(super) attempted: bool,
    pub(super) good: Option<(f64, Instant)>,
    pub(super) previous_good: Option<(f64, Instant)>,
    pub(super) error: Option<Arc<SignalError>>,
}

impl ItemState {
    pub(super) fn observation(&self, now: Instant) -> Observation {
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

pub(super) struct Group<U: Upstream> {
    pub(super) key: U::Group,
    pub(super) items: Mutex<HashMap<U::Item, ItemState>>,
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
