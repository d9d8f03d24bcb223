//! The adapter's watcher against the test kit's Kubernetes API double, through the real
//! `kube` client: a `BlendedMetric` applied to the API becomes a served metric with a status
//! that says so, written only when it changes, the same from two replicas.

#[path = "support/keda.rs"]
mod keda;
#[path = "support/kube.rs"]
mod kube_support;

use std::time::Duration;

use blend_scaler::crd::BlendedMetricStatus;
use blend_scaler::external_metrics::cluster::{self, ClusterOptions};
use blend_scaler::external_metrics::server::Registry;
use blend_scaler::server::{Running, ServerConfig};
use blend_scaler_testkit::kube_api::Kind;
use blend_scaler_testkit::{KubeApi, StaticPrometheus};
use serde_json::{Value, json};

async fn client(api: &KubeApi) -> kube::Client {
    kube_support::client(&api.kubeconfig("default")).await
}

fn prometheus_metadata(prom: &StaticPrometheus, threshold: &str) -> Value {
    json!({
        "serverAddress": prom.url(),
        "query": "sum(rate(http_requests_total[2m]))",
        "threshold": threshold,
    })
}

fn blended_metric(namespace: &str, name: &str, metadata: Value) -> Value {
    json!({
        "apiVersion": "blend-scaler.io/v1alpha1", "kind": "BlendedMetric",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"metadata": metadata},
    })
}

/// A replica: the scaler (its engine, and gRPC for KEDA) and the watcher writing statuses.
struct Replica {
    running: Running,
    grpc: keda::Client,
    watcher: tokio::task::JoinHandle<()>,
}

async fn replica(api: &KubeApi) -> Replica {
    let (running, grpc) = keda::start_with_default_sources(ServerConfig::loopback()).await;
    let options = ClusterOptions {
        status_interval: Duration::from_millis(100),
    };
    let watcher = cluster::spawn(
        client(api).await,
        running.engine.clone(),
        std::sync::Arc::new(Registry::default()),
        options,
    );
    Replica {
        running,
        grpc,
        watcher,
    }
}

impl Replica {
    async fn stop(self) {
        self.watcher.abort();
        self.running.shutdown().await.unwrap();
    }
}

/// The stored status once `ready` says it is what the test waits for (20 s at most: a new
/// signal value shows after the cache's 5 s refresh).
async fn status_when(
    api: &KubeApi,
    namespace: &str,
    name: &str,
    ready: impl Fn(&BlendedMetricStatus) -> bool,
) -> (BlendedMetricStatus, String) {
    for _ in 0..400 {
        if let Some(obj) = api.get(Kind::BlendedMetric, namespace, name)
            && let Some(status) = obj.get("status")
        {
            let status: BlendedMetricStatus = serde_json::from_value(status.clone()).unwrap();
            if ready(&status) {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string();
                return (status, rv);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no such status on {namespace}/{name}: {:?}",
        api.get(Kind::BlendedMetric, namespace, name)
    );
}

fn ready_condition(s: &BlendedMetricStatus) -> (&str, &str) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    (c.status.as_str(), c.reason.as_str())
}

#[tokio::test]
async fn an_applied_blended_metric_is_ready_with_the_value_keda_gets_over_grpc() {
    let api = KubeApi::start().await.unwrap();
    let prom = StaticPrometheus::start().await.unwrap();
    prom.set(65.0);
    let mut r = replica(&api).await;
    api.apply(blended_metric(
        "production",
        "orders",
        prometheus_metadata(&prom, "10"),
    ));

    let (status, _) = status_when(&api, "production", "orders", |s| !s.conditions.is_empty()).await;
    assert_eq!(ready_condition(&status), ("True", "Serving"));
    assert_eq!(status.metric_name.as_deref(), Some("blended-replicas"));
    assert_eq!(status.observed_generation, Some(1));

    let mut grpc_metadata = keda::metadata([
        ("serverAddress", prom.url().as_str()),
        ("query", "sum(rate(http_requests_total[2m]))"),
        ("threshold", "10"),
    ]);
    grpc_metadata.insert(keda::SCALER_ADDRESS.0.into(), keda::SCALER_ADDRESS.1.into());
    let obj = keda::object("production", "orders-so", grpc_metadata);
    let (grpc, _) = keda::metric_value(&mut r.grpc, &obj, keda::METRIC)
        .await
        .unwrap();
    assert_eq!(grpc, 7);
    assert_eq!(status.value, Some(grpc.to_string()));

    // The value follows the signal at the next recompute, not only on object changes.
    prom.set(125.0);
    let (later, _) = status_when(&api, "production", "orders", |s| {
        s.value.as_deref() == Some("13")
    })
    .await;
    assert_eq!(ready_condition(&later), ("True", "Serving"));
    assert_eq!(
        later.conditions[0].last_transition_time, status.conditions[0].last_transition_time,
        "the condition held, so its transition time did too"
    );
    r.stop().await;
}

#[tokio::test]
async fn bad_metadata_and_from_env_keys_are_ready_false_with_each_key_named() {
    let api = KubeApi::start().await.unwrap();
    let prom = StaticPrometheus::start().await.unwrap();
    let r = replica(&api).await;
    api.apply(blended_metric(
        "production",
        "typo",
        prometheus_metadata(&prom, "ten"),
    ));
    let mut from_env = prometheus_metadata(&prom, "10");
    from_env["bearerTokenFromEnv"] = json!("PROM_TOKEN");
    from_env["authModes"] = json!("bearer");
    api.apply(blended_metric("production", "env", from_env));

    let (typo, _) = status_when(&api, "production", "typo", |s| !s.conditions.is_empty()).await;
    assert_eq!(ready_condition(&typo), ("False", "InvalidMetadata"));
    assert_eq!(typo.value, None);
    assert!(
        typo.errors.iter().any(|e| e.key == "threshold"),
        "{:?}",
        typo.errors
    );
    let (env, _) = status_when(&api, "production", "env", |s| !s.conditions.is_empty()).await;
    assert_eq!(ready_condition(&env), ("False", "InvalidMetadata"));
    let keys: Vec<_> = env.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["bearerTokenFromEnv"]);
    assert!(!serde_json::to_string(&env).unwrap().contains("PROM_TOKEN"));

    // Fixing the metadata flips the condition, with the new generation observed.
    api.apply(blended_metric(
        "production",
        "typo",
        prometheus_metadata(&prom, "10"),
    ));
    let (fixed, _) = status_when(&api, "production", "typo", |s| {
        ready_condition(s).0 == "True"
    })
    .await;
    assert_eq!(fixed.observed_generation, Some(2));
    assert!(fixed.errors.is_empty());
    r.stop().await;
}

#[tokio::test]
async fn two_replicas_converge_on_one_status_and_then_stop_writing() {
    let api = KubeApi::start().await.unwrap();
    let prom = StaticPrometheus::start().await.unwrap();
    prom.set(30.0);
    let a = replica(&api).await;
    let b = replica(&api).await;
    api.apply(blended_metric(
        "production",
        "orders",
        prometheus_metadata(&prom, "10"),
    ));
    status_when(&api, "production", "orders", |s| {
        s.value.as_deref() == Some("3")
    })
    .await;
    // The replica that wrote second may have set another second's lastTransitionTime; after
    // that both read the stored condition and keep it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, rv) = status_when(&api, "production", "orders", |_| true).await;
    let writes_then = api.status_writes().len();
    // Twenty recompute intervals of both replicas later, the object is untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let obj = api
        .get(Kind::BlendedMetric, "production", "orders")
        .unwrap();
    assert_eq!(obj["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(
        serde_json::from_value::<BlendedMetricStatus>(obj["status"].clone()).unwrap(),
        status
    );
    let writes = api.status_writes();
    assert_eq!(writes.len(), writes_then, "no write once converged");
    assert!(
        writes.len() <= 2,
        "at most one write per replica, got {}: {writes:?}",
        writes.len()
    );
    assert!(writes.iter().all(|w| w.code == 200), "{writes:?}");
    assert!(
        writes
            .iter()
            .all(|w| w.field_manager.as_deref() == Some("blend-scaler"))
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_deleted_blended_metric_gets_no_further_status_writes() {
    let api = KubeApi::start().await.unwrap();
    let prom = StaticPrometheus::start().await.unwrap();
    prom.set(30.0);
    let r = replica(&api).await;
    api.apply(blended_metric(
        "production",
        "orders",
        prometheus_metadata(&prom, "10"),
    ));
    status_when(&api, "production", "orders", |s| s.value.is_some()).await;
    api.delete(Kind::BlendedMetric, "production", "orders");
    let before = api.status_writes().len();
    prom.set(90.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<_> = api.status_writes().into_iter().skip(before).collect();
    assert!(after.is_empty(), "written after deletion: {after:?}");
    r.stop().await;
}

#[tokio::test]
async fn the_registry_counts_as_listed_only_once_the_first_list_is_in() {
    let api = KubeApi::start().await.unwrap();
    let prom = StaticPrometheus::start().await.unwrap();
    api.apply(blended_metric(
        "production",
        "orders",
        prometheus_metadata(&prom, "10"),
    ));
    let (running, _grpc) = keda::start_with_default_sources(ServerConfig::loopback()).await;
    let registry = std::sync::Arc::new(Registry::unlisted());
    assert!(!registry.listed());
    let watcher = cluster::spawn(
        client(&api).await,
        running.engine.clone(),
        registry.clone(),
        ClusterOptions::default(),
    );
    for _ in 0..200 {
        if registry.listed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(registry.listed(), "the watcher's first list marks it");
    watcher.abort();
    running.shutdown().await.unwrap();
}
