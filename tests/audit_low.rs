//! The audit's low findings over the wire (docs/security.md, "Low findings"): the tracked-objects gauge is
//! current, shutdown is bounded whatever a client leaves in flight, and an absurd refresh
//! interval cannot panic. (User-info passwords: tests/cli_check.rs.)

#[path = "support/keda.rs"]
mod keda;

#[path = "support/prometheus.rs"]
mod prometheus_support;

use std::time::{Duration, Instant};

use blend_scaler::proto::{GetMetricsRequest, GetMetricsResponse};
use blend_scaler::server::{Running, ServerConfig};
use prometheus_support::Prometheus;

fn cron_object(name: &str) -> blend_scaler::proto::ScaledObjectRef {
    keda::object(
        "shop",
        name,
        keda::metadata([
            ("start", "0 0 1 1 *"),
            ("end", "0 1 1 1 *"),
            ("desiredReplicas", "3"),
        ]),
    )
}

async fn tracked_gauge(running: &Running) -> String {
    let (_, text) = keda::http_get(running, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with("blend_scaler_tracked_scaledobjects "))
        .unwrap_or_else(|| panic!("no gauge in {text}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracked_objects_gauge_follows_objects_in_and_out() {
    let mut config = ServerConfig::loopback();
    config.engine.object_idle_ttl = Duration::from_millis(300);
    let (running, mut client) = keda::start_with_default_sources(config).await;
    for name in ["a", "b", "c"] {
        keda::metric_value(&mut client, &cron_object(name), keda::METRIC)
            .await
            .unwrap();
    }
    assert_eq!(
        tracked_gauge(&running).await,
        "blend_scaler_tracked_scaledobjects 3"
    );
    // KEDA stops asking (the ScaledObjects were deleted): nothing else touches the engine.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        tracked_gauge(&running).await,
        "blend_scaler_tracked_scaledobjects 0"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_even_with_a_call_that_never_ends() {
    let mut config = ServerConfig::loopback();
    // Longer than any test: only the shutdown's own bound can end the call.
    config.transport.request_timeout = Duration::from_secs(120);
    let (running, _client) = keda::start_with_default_sources(config).await;

    // A unary call whose request body never comes: the handler waits for its message.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let call = tokio::spawn(async move {
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/externalscaler.ExternalScaler/GetMetrics",
        );
        let codec = tonic_prost::ProstCodec::<GetMetricsRequest, GetMetricsResponse>::default();
        let never = tonic::Request::new(futures::stream::pending::<GetMetricsRequest>());
        grpc.client_streaming(never, path, codec).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "the call is in flight");

    let started = Instant::now();
    running
        .shutdown_within(Duration::from_secs(1))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown waited {took:?} for a call that never ends"
    );
    call.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_refresh_interval_does_not_panic() {
    let prometheus = Prometheus::builder()
        .gauge("absurd_probe", &[], 7.0)
        .start()
        .await;
    for interval in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 2),
        Duration::ZERO,
    ] {
        let mut config = ServerConfig::loopback();
        config.engine.refresh = keda::refresh_every(interval);
        let (running, mut client) = keda::start_with_default_sources(config).await;
        let url = prometheus.url();
        let obj = keda::object(
            "shop",
            "web",
            keda::metadata([
                ("serverAddress", url.as_str()),
                ("query", "absurd_probe"),
                ("threshold", "1"),
            ]),
        );
        for _ in 0..3 {
            let (value, _) = keda::metric_value(&mut client, &obj, keda::METRIC)
                .await
                .unwrap_or_else(|e| panic!("{interval:?}: {e:?}"));
            assert_eq!(value, 7, "{interval:?}");
        }
        client.is_active(obj.clone()).await.unwrap();
        running.shutdown().await.unwrap();
    }
}
