//! The KEDA side of the integration tests: a scaler on loopback, a client calling it the way
//! KEDA's external scaler does, and ScaledObject references built from metadata pairs.
//!
//! Include it from a test file with `#[path = "support/keda.rs"] mod keda;`.
#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use blend_scaler::cache::RefreshConfig;
use blend_scaler::engine::SignalCaches;
use blend_scaler::metrics::Metrics;
use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use blend_scaler::server::{self, Running, ServerConfig};
use blend_scaler::servicebus::auth::WorkloadIdentityConfig;
use blend_scaler_testkit::ServiceBusDouble;
use tonic::transport::Channel;

/// What KEDA calls the scaler with.
pub type Client = ExternalScalerClient<Channel>;

/// The metric name KEDA asks `GetMetrics` for: the spec's name behind the trigger index.
pub const METRIC: &str = "s0-blended-replicas";

/// The `scalerAddress` KEDA passes along with every trigger's metadata.
pub const SCALER_ADDRESS: (&str, &str) = ("scalerAddress", "blend-scaler.keda:9090");

/// Trigger metadata from pairs, as KEDA hands it over (every value a string).
pub fn metadata<K: ToString, V: ToString>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> HashMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A ScaledObject reference as KEDA sends it.
pub fn object(namespace: &str, name: &str, metadata: HashMap<String, String>) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: namespace.into(),
        scaler_metadata: metadata,
    }
}

/// Refreshes every `interval` (streams too), backing off at most a second, so a test sees
/// recovery within seconds.
pub fn refresh_every(interval: Duration) -> RefreshConfig {
    RefreshConfig {
        interval,
        fast_interval: interval,
        max_backoff: Duration::from_secs(1),
        ..RefreshConfig::default()
    }
}

/// GET `path` on `running`'s plain-HTTP port (`/metrics`, `/decisions`, the probes):
/// (status, body).
pub async fn http_get(running: &Running, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", running.http_addr.expect("an HTTP port"));
    let r = reqwest::get(&url).await.expect("GET");
    (r.status().as_u16(), r.text().await.expect("a body"))
}

/// A gRPC client connected to `running`.
pub async fn connect(running: &Running) -> Client {
    ExternalScalerClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .expect("a gRPC connection")
}

/// The scaler on loopback with these sources, and a client connected to it.
///
/// The test doubles listen on loopback over plain http, so the scaler runs with
/// `--allow-loopback-upstreams`, as a local test setup would.
pub async fn start(
    mut config: ServerConfig,
    sources: SignalCaches,
    metrics: Metrics,
) -> (Running, Client) {
    config.engine.hosts.allow_loopback = true;
    let running = server::start(config, sources, metrics)
        .await
        .expect("the scaler starts");
    let client = connect(&running).await;
    (running, client)
}

/// The scaler on loopback with `serve`'s sources, and a client connected to it.
pub async fn start_with_default_sources(mut config: ServerConfig) -> (Running, Client) {
    config.engine.hosts.allow_loopback = true;
    let running = server::start_with_default_sources(config)
        .await
        .expect("the scaler starts");
    let client = connect(&running).await;
    (running, client)
}

/// `GetMetrics` for `metric`: the one value's integer and float forms.
pub async fn metric_value(
    client: &mut Client,
    obj: &ScaledObjectRef,
    metric: &str,
) -> Result<(i64, f64), tonic::Status> {
    let values = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(obj.clone()),
            metric_name: metric.to_string(),
        })
        .await?
        .into_inner()
        .metric_values;
    assert_eq!(values.len(), 1, "exactly one metric value");
    Ok((values[0].metric_value, values[0].metric_value_float))
}

/// KEDA's poll of one ScaledObject: `GetMetrics` for `metric`, then `IsActive`.
pub async fn poll(
    client: &mut Client,
    obj: &ScaledObjectRef,
    metric: &str,
) -> Result<(i64, f64, bool), tonic::Status> {
    let (int, float) = metric_value(client, obj, metric).await?;
    let active = client.is_active(obj.clone()).await?.into_inner().result;
    Ok((int, float, active))
}

/// The scaler's workload identity settings for the double's token endpoint.
pub fn workload_identity(double: &ServiceBusDouble, token_file: PathBuf) -> WorkloadIdentityConfig {
    let wi = double.workload_identity(token_file);
    WorkloadIdentityConfig {
        client_id: wi.client_id,
        tenant_id: wi.tenant_id,
        token_file: wi.token_file,
        authority_host: wi.authority_host,
    }
}
