//! End to end: the real gRPC server with the production signal sources, a real Prometheus
//! (`apt-get install -y prometheus`), and KEDA's calls through the generated tonic client.

#[path = "support/prometheus.rs"]
mod prometheus_support;

#[path = "support/keda.rs"]
mod keda;

use std::time::Duration;

use blend_scaler::blend::replicas_for;
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::{Running, ServerConfig};
use keda::Client;
use prometheus_support::Prometheus;
use tonic::Code;

const INTERVAL: Duration = Duration::from_millis(500);

/// The scaler on loopback with `serve`'s sources, refreshing every [`INTERVAL`].
async fn scaler() -> (Running, Client) {
    let mut config = ServerConfig::loopback();
    config.engine.refresh = keda::refresh_every(INTERVAL);
    keda::start_with_default_sources(config).await
}

fn object(name: &str, prometheus: &str, extra: &[(&str, &str)]) -> ScaledObjectRef {
    let mut md = keda::metadata([
        keda::SCALER_ADDRESS,
        ("serverAddress", prometheus),
        ("query", "sum(http_rps)"),
        ("threshold", "10"),
    ]);
    md.extend(keda::metadata(extra.iter().copied()));
    keda::object("shop", name, md)
}

/// KEDA's poll: GetMetrics with the spec's name, then IsActive.
async fn poll(
    client: &mut Client,
    obj: &ScaledObjectRef,
) -> Result<(i64, f64, bool), tonic::Status> {
    keda::poll(client, obj, keda::METRIC).await
}

#[tokio::test]
async fn keda_gets_ceil_value_over_threshold_replicas_and_activation_from_a_real_prometheus() {
    let prometheus = Prometheus::builder()
        .gauge("http_rps", &[("pod", "a")], 100.0)
        .gauge("http_rps", &[("pod", "b")], 23.4)
        .start()
        .await;
    let (running, mut client) = scaler().await;

    let busy = object("web", &prometheus.url(), &[("activationThreshold", "100")]);
    let spec = client
        .get_metric_spec(busy.clone())
        .await
        .expect("a metric spec")
        .into_inner()
        .metric_specs;
    assert_eq!(spec.len(), 1);
    assert_eq!(spec[0].metric_name, "blended-replicas");
    assert_eq!((spec[0].target_size, spec[0].target_size_float), (1, 1.0));

    let want = i64::from(replicas_for(123.4, 10.0));
    assert_eq!(want, 13);
    assert_eq!(
        poll(&mut client, &busy).await.expect("an answer"),
        (13, 13.0, true)
    );

    // Same value, activation above it: replicas still computed, scaler inactive.
    let quiet = object(
        "web-quiet",
        &prometheus.url(),
        &[("activationThreshold", "200")],
    );
    assert_eq!(
        poll(&mut client, &quiet).await.expect("an answer"),
        (13, 13.0, false)
    );
    running.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn twenty_scaledobjects_with_the_same_query_cost_one_prometheus_query_per_refresh() {
    let prometheus = Prometheus::builder()
        .gauge("http_rps", &[], 57.0)
        .start()
        .await;
    let (running, mut client) = scaler().await;
    let objects: Vec<ScaledObjectRef> = (0..20)
        .map(|i| {
            let threshold = (i + 1).to_string();
            object(
                &format!("svc-{i}"),
                &prometheus.url(),
                &[("threshold", threshold.as_str())],
            )
        })
        .collect();

    let before = prometheus.query_requests().await;
    // KEDA polls every object every 100 ms for 2 s: 20 × 20 × 2 calls.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for (i, obj) in objects.iter().enumerate() {
            let threshold = (i + 1) as f64;
            let want = i64::from(replicas_for(57.0, threshold));
            assert_eq!(
                poll(&mut client, obj).await.expect("an answer"),
                (want, want as f64, true)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let queries = prometheus.query_requests().await - before;
    let refreshes = 1 + (elapsed.as_millis() / INTERVAL.as_millis()) as u64;
    assert!(
        (2..=refreshes).contains(&queries),
        "{queries} queries reached Prometheus in {elapsed:?} (refreshes: at most {refreshes})"
    );
    running.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn invalid_promql_is_invalid_argument_naming_the_query_key() {
    let prometheus = Prometheus::builder()
        .gauge("http_rps", &[], 1.0)
        .start()
        .await;
    let (running, mut client) = scaler().await;
    let broken = object(
        "web",
        &prometheus.url(),
        &[("query", "sum(rate(http_rps[5m])")],
    );
    let status = poll(&mut client, &broken)
        .await
        .expect_err("a refused query");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("`query`"), "{}", status.message());
    assert!(
        status.message().contains("bad_data"),
        "{}",
        status.message()
    );
    // Prometheus's own message is upstream text: it stays in the scaler's log.
    assert!(
        !status.message().contains("parse error"),
        "{}",
        status.message()
    );
    running.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn with_prometheus_gone_keda_gets_the_last_value_then_unavailable_never_zero() {
    const TOKEN: &str = "tok-grpc-e2e-secret";
    let mut prometheus = Prometheus::builder()
        .gauge("http_rps", &[], 42.0)
        .start()
        .await;
    let (running, mut client) = scaler().await;
    let obj = object(
        "web",
        &prometheus.url(),
        &[
            ("staleAfter", "2s"),
            ("authModes", "bearer"),
            ("bearerTokenFromEnv", TOKEN),
        ],
    );
    assert_eq!(
        poll(&mut client, &obj).await.expect("an answer"),
        (5, 5.0, true)
    );

    prometheus.stop();
    let stopped = tokio::time::Instant::now();
    // Within staleAfter the last good value holds; after it, UNAVAILABLE (KEDA's fallback).
    let status = loop {
        match poll(&mut client, &obj).await {
            Ok(answer) => {
                assert_eq!(answer, (5, 5.0, true), "the held value, never 0");
                assert!(
                    stopped.elapsed() < Duration::from_secs(4),
                    "still answering {:?} after staleAfter",
                    stopped.elapsed()
                );
            }
            Err(status) => break status,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        stopped.elapsed() >= Duration::from_secs(1),
        "UNAVAILABLE came before staleAfter: {:?}",
        stopped.elapsed()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("prometheus"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&prometheus.addr().to_string()),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(TOKEN), "{}", status.message());

    // Back again: answers resume without anyone re-registering.
    prometheus.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(answer) = poll(&mut client, &obj).await {
            assert_eq!(answer, (5, 5.0, true));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.shutdown().await.expect("a clean shutdown");
}
