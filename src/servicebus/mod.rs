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

use std::sync::Arc;

use crate::binding::HostRules;
use crate::cache::{Keyed, RefreshConfig, Refresher, SignalCache};
use crate::intern::Interner;
use crate::metadata::{Aggregation, Entity, ServiceBusAuth, ServiceBusPlan};
use crate::metrics::Metrics;

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
            auth: (*plan.auth).clone(),
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
    Arc::new(Keyed::new(Refresher::new(upstream, config), key))
}

#[cfg(test)]
mod tests;
