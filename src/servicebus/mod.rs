//! The `servicebus` signal: `ActiveMessageCount` of a queue or topic subscription, read from
//! the management (ATOM) API, one read per namespace per refresh shared by every ScaledObject
//! that watches it (docs/servicebus.md).
//!
//! The cache groups by [`NamespaceKey`] (endpoint + credentials) and keeps one [`Watched`]
//! item per distinct entity (or pattern). Each refresh of a namespace plans its requests:
//! - queues: one GET when a single queue is watched; otherwise the paged queue list
//!   (`$Resources/Queues`, 100 a page), stopping early once every named queue is seen
//!   unless a pattern needs the whole list;
//! - per topic: one GET when a single subscription is watched; otherwise the paged list of
//!   the topic's subscriptions;
//! - topic names that are patterns (`useRegex`) add the paged topic list.
//!
//! So reads per namespace per refresh stay within `ceil(entities / 100)` plus one per
//! watched topic. A 429/503 stops the refresh's remaining requests and hands `Retry-After`
//! to the cache, which holds the group back that long. The host is remembered too, so groups
//! on the same namespace with other credentials (entity-scoped SAS rules, other tenants) wait
//! as well, but at most [`CROSS_CREDENTIAL_HOLD`]: one tenant's throttling must not park the
//! others for the ten minutes a `Retry-After` may ask.

pub mod atom;
pub mod auth;
pub mod client;
mod read_plan;
mod upstream;
mod values;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::binding::HostRules;
use crate::cache::{CacheEntry, Keyed, KeyedEntry, RefreshConfig, Refresher, SignalCache};
use crate::intern::Interner;
use crate::metadata::{Aggregation, Entity, ServiceBusAuth, ServiceBusPlan};
use crate::metrics::Metrics;
use crate::signal::{EntityCounts, Observation};

pub use self::upstream::{CROSS_CREDENTIAL_HOLD, ServiceBusUpstream};

/// One namespace as the cache groups it: where it is and who reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceKey {
    /// The management endpoint, normalised (lower-case host, no trailing slash).
    pub endpoint: Arc<str>,
    pub auth: ServiceBusAuth,
}

/// What one ScaledObject watches inside a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Watched {
    pub entity: Entity,
    /// Names are anchored regular expressions (KEDA's `useRegex`).
    pub use_regex: bool,
    /// How matching entities combine; always `Sum` without `useRegex`, so equal entities
    /// share one item.
    pub operation: Aggregation,
}

/// The cache key of a plan: its namespace and what it watches there. The namespace is the one
/// shared copy of an equal namespace with equal credentials (every entry and group of 10,000
/// plans on twenty namespaces holds one of twenty), so it is made when a plan is tracked.
pub fn key(plan: &ServiceBusPlan) -> (Arc<NamespaceKey>, Watched) {
    static NAMESPACES: Interner<NamespaceKey> = Interner::new();
    (
        NAMESPACES.share(NamespaceKey {
            endpoint: normalise_endpoint(&plan.endpoint),
            auth: plan.auth.clone(),
        }),
        Watched {
            entity: plan.entity.clone(),
            use_regex: plan.use_regex,
            operation: if plan.use_regex {
                plan.operation
            } else {
                Aggregation::Sum
            },
        },
    )
}

/// The plan's own (shared) text when it is normal already, as parsed endpoints are.
fn normalise_endpoint(endpoint: &Arc<str>) -> Arc<str> {
    let trimmed = endpoint.trim();
    let normal = match url::Url::parse(trimmed) {
        Ok(url) => url.as_str().trim_end_matches('/').to_string(),
        Err(_) => trimmed.trim_end_matches('/').to_string(),
    };
    if *normal == **endpoint {
        endpoint.clone()
    } else {
        crate::intern::intern(&normal)
    }
}

/// The Service Bus signal as the engine uses it: a background-refreshed cache over a
/// [`ServiceBusUpstream`] that reads workload identity settings from the environment.
pub fn source(
    config: RefreshConfig,
    metrics: Metrics,
    hosts: &HostRules,
) -> Arc<dyn SignalCache<ServiceBusPlan>> {
    source_from(ServiceBusUpstream::new(metrics, hosts), config)
}

/// Like [`source`], over a given upstream (tests, `demo`).
pub fn source_from(
    upstream: ServiceBusUpstream,
    config: RefreshConfig,
) -> Arc<dyn SignalCache<ServiceBusPlan>> {
    let upstream = Arc::new(upstream);
    Arc::new(ServiceBusCache {
        keyed: Keyed::new(Refresher::from_arc(upstream.clone(), config), key),
        upstream,
    })
}

/// The cache over the upstream, and the upstream itself for the counts its reads kept.
struct ServiceBusCache {
    keyed: Keyed<ServiceBusUpstream, ServiceBusPlan>,
    upstream: Arc<ServiceBusUpstream>,
}

impl SignalCache<ServiceBusPlan> for ServiceBusCache {
    fn entry(&self, plan: &ServiceBusPlan) -> Arc<dyn CacheEntry> {
        Arc::new(ServiceBusEntry {
            entry: self.keyed.keyed_entry(plan),
            upstream: self.upstream.clone(),
            counts: parking_lot::Mutex::new(None),
        })
    }
}

/// A plan's entry, and the upstream whose table has the counts under the entry's key.
struct ServiceBusEntry {
    entry: KeyedEntry<ServiceBusUpstream>,
    upstream: Arc<ServiceBusUpstream>,
    /// The counts as last looked up, and the group's generation then: a read stores its
    /// counts before it bumps the generation, so until the next bump they are the same, and
    /// a KEDA call need not hash the key into the upstream's table again.
    counts: parking_lot::Mutex<Option<(u64, Option<EntityCounts>)>>,
}

impl CacheEntry for ServiceBusEntry {
    fn observe(&self) -> Pin<Box<dyn Future<Output = Observation> + Send + '_>> {
        self.entry.observe()
    }

    fn peek(&self) -> Pin<Box<dyn Future<Output = Observation> + Send + '_>> {
        self.entry.peek()
    }

    fn watch(&self) -> (tokio::sync::watch::Receiver<u64>, Box<dyn Send + Sync>) {
        self.entry.watch()
    }

    fn counts(&self) -> Option<EntityCounts> {
        let generation = self.entry.generation();
        let mut last = self.counts.lock();
        if let (Some(now), Some((then, counts))) = (generation, *last)
            && now == then
        {
            return counts;
        }
        let (group, item) = self.entry.key();
        // Clones of shared values (the namespace's `Arc`, the entity's names): no allocation.
        let counts = self.upstream.counts.get(&(group.clone(), item.clone()));
        *last = generation.map(|g| (g, counts));
        counts
    }
}

#[cfg(test)]
mod tests;
