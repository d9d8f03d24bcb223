//! A refresh that panics is visible: counted on `/metrics`, and `/readyz` not ready while the
//! group's refresh is down (docs/robustness.md, "A refresh that panics").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blend_scaler::cache::{GroupRead, Keyed, RefreshConfig, Refresher, Upstream};
use blend_scaler::engine::{ObjectRef, SignalCaches};
use blend_scaler::metrics::Metrics;
use blend_scaler::server::{self, ServerConfig};
use blend_scaler::servicebus::{self, NamespaceKey, Watched};

/// A Service Bus upstream whose reads panic while `broken` (a bug in a client), else 7.
struct Buggy {
    metrics: Metrics,
    broken: Arc<AtomicBool>,
}

impl Upstream for Buggy {
    type Group = Arc<NamespaceKey>;
    type Item = Watched;

    async fn read(&self, _group: &Arc<NamespaceKey>, items: &[Watched]) -> GroupRead<Watched> {
        if self.broken.load(Ordering::SeqCst) {
            panic!("a bug in the upstream client");
        }
        GroupRead {
            values: items.iter().map(|i| (i.clone(), Ok(7.0))).collect(),
            retry_after: None,
            seen_in_passing: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    fn supervision(&self) -> Option<(&Metrics, &'static str)> {
        Some((&self.metrics, "servicebus"))
    }
}

#[tokio::test]
async fn a_panicking_read_shows_on_metrics_and_readyz_until_a_read_completes() {
    let metrics = Metrics::new();
    let broken = Arc::new(AtomicBool::new(true));
    let mut config = ServerConfig::loopback();
    config.engine.refresh = RefreshConfig {
        interval: Duration::from_millis(200),
        fast_interval: Duration::from_millis(200),
        max_backoff: Duration::from_millis(400),
        ..RefreshConfig::default()
    };
    let upstream = Buggy {
        metrics: metrics.clone(),
        broken: broken.clone(),
    };
    let caches = SignalCaches {
        servicebus: Some(Arc::new(Keyed::new(
            Refresher::new(upstream, config.engine.refresh.clone()),
            servicebus::key,
        ))),
        prometheus: None,
    };
    let running = server::start(config, caches, metrics).await.unwrap();
    let base = format!("http://{}", running.http_addr.unwrap());
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(&url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/readyz").await.0, 200);

    let md: HashMap<String, String> = [
        ("queueName", "orders"),
        ("messageCount", "1"),
        (
            "connectionFromEnv",
            "Endpoint=sb://shop-bus.servicebus.windows.net/;SharedAccessKeyName=scaler;\
             SharedAccessKey=not-a-real-key",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let obj = ObjectRef {
        namespace: "shop",
        name: "orders",
        metadata: &md,
    };
    assert!(running.engine.replicas(obj).await.is_err(), "no value yet");
    let (status, body) = get("/readyz").await;
    assert_eq!((status, body.as_str()), (503, "a refresh task is down"));
    let (_, text) = get("/metrics").await;
    for needle in [
        r#"blend_scaler_refresh_read_panics_total{upstream="servicebus"} 1"#,
        r#"blend_scaler_refresh_groups_down{upstream="servicebus"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    // The bug goes away: the next refresh completes and the pod is ready again.
    broken.store(false, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    while get("/readyz").await.0 != 200 {
        // KEDA keeps asking: reads follow its calls.
        let _ = running.engine.replicas(obj).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running.engine.replicas(obj).await.unwrap().1, 7);
    running.shutdown().await.unwrap();
}
