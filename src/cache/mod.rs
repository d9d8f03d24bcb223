//! The read cache: every KEDA call is answered from here, never from an upstream.
//!
//! Values are grouped by *upstream identity* (a Service Bus namespace with its credentials, a
//! Prometheus server with its auth), not by ScaledObject. Each group has one background task
//! that reads the group's due items in one [`Upstream::read`], however many ScaledObjects watch
//! them; an item is due once per the interval KEDA asks for it at, never more often than the
//! refresh interval (the rule is `schedule`'s). A never-seen item wakes its group at once, and concurrent
//! callers all wait for that same read, unless the group's latest reads saw it in passing (a
//! list page holds every entity on it): then it is answered from what they saw. Items
//! nobody asked about for `idle_ttl` are dropped; a group with none left is dropped too,
//! which ends its task.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::signal::{EntityCounts, SignalError};

pub(crate) mod group;
mod keyed;
mod refresher;
pub(crate) mod schedule;
mod task;
#[cfg(test)]
mod tests;

pub use keyed::{CacheEntry, Keyed, Looked, SignalCache, Wait};
pub use refresher::{FastWatch, Refresher};

/// The hash of the maps every KEDA call looks in (a signal's groups, a group's items):
/// foldhash, seeded per map. SipHash of a group's key (an endpoint with its credential) was
/// most of what a lookup cost (BENCHMARKS.md, "gRPC throughput under h2load").
pub(crate) type LookupHash = foldhash::fast::RandomState;

/// An upstream that can read several items of one group in one go.
pub trait Upstream: Send + Sync + 'static {
    /// What one refresh reads together: one namespace, one server.
    type Group: Clone + Eq + Hash + Send + Sync + Debug + 'static;
    /// What a ScaledObject watches inside a group: an entity, a query.
    type Item: Clone + Eq + Hash + Send + Sync + Debug + 'static;

    /// One read lists the whole group (a page of a list holds every entity on it): reading one
    /// more item costs no more requests, so a refresh reads every item KEDA still asks for,
    /// all on one cycle, rather than each item when it alone is due.
    const LISTS: bool = false;

    /// Reads every item. Called once per group per refresh; implementations choose how
    /// (one list request or one request per item) and report per item.
    fn read(
        &self,
        group: &Self::Group,
        items: &[Self::Item],
    ) -> impl Future<Output = GroupRead<Self::Item>> + Send;

    /// Where a group's refresh reports panics and whether its task is down (`/metrics`,
    /// `/readyz`), with the `upstream` label; none for upstreams outside the server.
    fn supervision(&self) -> Option<(&Metrics, &'static str)> {
        None
    }
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
    /// The other counts each item's read returned beside its value (a Service Bus entity's
    /// dead-lettered, scheduled, … messages); empty for upstreams whose reads have none.
    /// Kept with the item and handed out with its value ([`crate::signal::Observation::counts`]).
    pub counts: HashMap<I, EntityCounts>,
}

impl<I: Eq + Hash> GroupRead<I> {
    /// Every item failed the same way (a refused connection, a 401 for the whole namespace).
    pub(crate) fn all_failed(items: &[I], error: SignalError) -> Self
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
            counts: HashMap::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RefreshConfig {
    /// The shortest time between two reads of an item (`--refresh-interval`); an item is
    /// re-read once per the interval KEDA asks for it at, when that is longer.
    pub interval: Duration,
    /// How often a group is re-read while someone streams one of its items (README, "Answers to KEDA").
    pub fast_interval: Duration,
    /// How long a never-seen item's first read may make a caller wait.
    pub first_read_timeout: Duration,
    /// Items nobody asked about for this long are dropped.
    pub idle_ttl: Duration,
    /// The longest exponential backoff after repeated failures.
    pub max_backoff: Duration,
    /// Groups (upstream identities) kept at once; each has a task and its items.
    pub max_groups: usize,
    /// Items (entities, queries) one group reads; each costs its upstream a read or a share
    /// of one every refresh.
    pub max_items_per_group: usize,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_secs(1),
            first_read_timeout: Duration::from_secs(2),
            idle_ttl: Duration::from_secs(600),
            max_backoff: Duration::from_secs(120),
            max_groups: 1_000,
            max_items_per_group: 2_000,
        }
    }
}
