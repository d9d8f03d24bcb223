//! The engine keys a ScaledObject's signals in their caches once, when it starts tracking it,
//! not on every KEDA call: a call looks its signals up by keys it already holds.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use blend_scaler::cache::{CacheEntry, SignalCache};
use blend_scaler::engine::{Engine, EngineConfig, ObjectRef, SignalCaches};
use blend_scaler::metadata::ServiceBusPlan;
use blend_scaler::metrics::Metrics;
use blend_scaler::signal::Observation;
use tokio::sync::watch;

/// A cache that answers every plan with three times its `messageCount` and counts its work.
#[derive(Default)]
struct Counting {
    entries: AtomicUsize,
    observations: Arc<AtomicUsize>,
}

struct Entry {
    value: f64,
    observations: Arc<AtomicUsize>,
}

impl SignalCache<ServiceBusPlan> for Counting {
    fn entry(&self, plan: &ServiceBusPlan, _rate: bool) -> Arc<dyn CacheEntry> {
        self.entries.fetch_add(1, Ordering::SeqCst);
        Arc::new(Entry {
            value: plan.message_count,
            observations: self.observations.clone(),
        })
    }
}

impl CacheEntry for Entry {
    fn observe(&self) -> Pin<Box<dyn Future<Output = Observation> + Send + '_>> {
        self.observations.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Observation::fresh(self.value * 3.0) })
    }

    fn watch(&self) -> (watch::Receiver<u64>, Box<dyn Send + Sync>) {
        (watch::channel(0).1, Box::new(()))
    }
}

fn metadata(message_count: &str) -> HashMap<String, String> {
    [
        ("queueName", "orders"),
        (
            "connectionFromEnv",
            "Endpoint=sb://shop-bus.servicebus.windows.net/;SharedAccessKeyName=scaler;\
             SharedAccessKey=not-a-real-key",
        ),
        ("messageCount", message_count),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn a_tracked_scaledobject_is_keyed_once_however_often_keda_asks() {
    let cache = Arc::new(Counting::default());
    let caches = SignalCaches {
        servicebus: Some(cache.clone()),
        prometheus: None,
    };
    let engine = Engine::new(EngineConfig::default(), caches, Metrics::new()).unwrap();
    let md = metadata("5");
    let obj = ObjectRef {
        namespace: "shop",
        name: "orders",
        metadata: &md,
    };
    for _ in 0..10 {
        // 15 messages at 5 a replica.
        assert_eq!(engine.replicas(obj).await.unwrap().1, 3);
        assert!(engine.is_active(obj).await.unwrap());
    }
    assert_eq!(cache.observations.load(Ordering::SeqCst), 20);
    assert_eq!(cache.entries.load(Ordering::SeqCst), 1, "keyed once");

    // New metadata is a new plan, keyed again once.
    let md = metadata("3");
    let changed = ObjectRef {
        metadata: &md,
        ..obj
    };
    for _ in 0..5 {
        assert_eq!(engine.replicas(changed).await.unwrap().1, 3);
    }
    assert_eq!(cache.entries.load(Ordering::SeqCst), 2);
}
