//! How much one scaler process holds for its tenants (docs/security.md, "Capacity").
//!
//! Every ScaledObject author is a tenant, and a direct gRPC caller can invent namespaces and
//! objects at will, so everything the scaler keeps per object, per upstream or per stream is
//! capped; past a cap the caller gets `RESOURCE_EXHAUSTED` and nothing is kept. The defaults
//! keep the process within the chart's 256 MiB memory limit (BENCHMARKS.md, "Hostile
//! input"). The upstream caps (groups, items per group) are in
//! [`RefreshConfig`](crate::cache::RefreshConfig), next to the cache they bound.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// The engine's caps; `serve` flags set them.
#[derive(Clone, Debug)]
pub struct Capacity {
    /// ScaledObjects (triggers, strictly: one per metric name) tracked at once.
    pub max_objects: usize,
    /// Of those, in one Kubernetes namespace.
    pub max_objects_per_namespace: usize,
    /// The trigger metadata of every tracked object together, in bytes (keys and values): a
    /// plan keeps its strings, and an 8 KiB value is allowed in every key.
    pub max_metadata_bytes: usize,
    /// Open `StreamIsActive` streams of one Kubernetes namespace.
    pub max_streams_per_namespace: usize,
    /// Distinct cron expressions held (about 5 KB each; equal ones are shared).
    pub max_cron_expressions: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_objects: 10_000,
            max_objects_per_namespace: 1_000,
            max_metadata_bytes: 32 << 20,
            max_streams_per_namespace: 1_000,
            max_cron_expressions: 4_096,
        }
    }
}

/// A count per Kubernetes namespace, under a cap. Taking a place gives a guard that gives it
/// back when dropped.
#[derive(Clone, Debug, Default)]
pub(crate) struct PerNamespace {
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One place taken in a [`PerNamespace`]; given back on drop.
#[derive(Debug)]
pub(crate) struct Place {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    namespace: String,
}

impl PerNamespace {
    /// A place for `namespace`, unless it already holds `max`.
    pub(crate) fn take(&self, namespace: &str, max: usize) -> Option<Place> {
        let mut counts = self.counts.lock();
        let n = counts.entry(namespace.to_string()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                counts.remove(namespace);
            }
            return None;
        }
        *n += 1;
        Some(Place {
            counts: self.counts.clone(),
            namespace: namespace.to_string(),
        })
    }

    /// Places taken in `namespace` now.
    #[cfg(test)]
    pub(crate) fn count(&self, namespace: &str) -> usize {
        self.counts.lock().get(namespace).copied().unwrap_or(0)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.namespace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_namespace_and_given_back_on_drop() {
        let streams = PerNamespace::default();
        let a: Vec<Place> = (0..3).map(|_| streams.take("a", 3).unwrap()).collect();
        assert!(streams.take("a", 3).is_none(), "a is full");
        let b = streams.take("b", 3).expect("b has its own count");
        drop(a);
        assert_eq!(streams.count("a"), 0);
        assert!(streams.take("a", 3).is_some());
        drop(b);
        assert!(
            streams.counts.lock().is_empty(),
            "nothing kept for empty namespaces"
        );
        assert!(streams.take("c", 0).is_none());
        assert!(streams.counts.lock().is_empty());
    }
}
