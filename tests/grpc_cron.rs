//! The real server on loopback, driven the way KEDA drives an external scaler, with the cron
//! signal (which needs no upstream).

#[path = "support/keda.rs"]
mod keda;
#[path = "support/pki.rs"]
mod pki;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use blend_scaler::engine::EngineConfig;
use blend_scaler::metrics::Metrics;
use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use blend_scaler::server::{self, Running, ServerConfig, TlsFiles};
use chrono::{TimeZone, Utc};
use pki::{Pki, keda_channel, pki};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A server whose wall clock the test sets.
async fn start(clock: Arc<AtomicI64>, tls: Option<TlsFiles>) -> Running {
    let mut config = ServerConfig::loopback();
    config.tls = tls;
    config.engine = EngineConfig {
        clock: Arc::new(move || Utc.timestamp_opt(clock.load(Ordering::SeqCst), 0).unwrap()),
        ..EngineConfig::default()
    };
    server::start(config, Default::default(), Metrics::new())
        .await
        .unwrap()
}

fn business_hours() -> HashMap<String, String> {
    keda::metadata([
        keda::SCALER_ADDRESS,
        ("timezone", "Europe/Berlin"),
        ("start", "0 8 * * 1-5"),
        ("end", "0 20 * * 1-5"),
        ("desiredReplicas", "4"),
    ])
}

fn object(metadata: HashMap<String, String>) -> ScaledObjectRef {
    keda::object("production", "orders", metadata)
}

/// KEDA's sequence: GetMetricSpec once, then GetMetrics and IsActive on each poll.
async fn keda_poll(client: &mut keda::Client, obj: &ScaledObjectRef) -> (String, i64, f64, bool) {
    let spec = client
        .get_metric_spec(obj.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1, "exactly one metric spec");
    let spec = &spec.metric_specs[0];
    assert_eq!((spec.target_size, spec.target_size_float), (1, 1.0));
    let (int, float, active) = keda::poll(client, obj, &format!("s0-{}", spec.metric_name))
        .await
        .unwrap();
    (spec.metric_name.clone(), int, float, active)
}

#[tokio::test]
async fn inside_a_window_keda_sees_the_desired_replicas_and_an_active_scaler() {
    // Wednesday 2026-06-03 10:00 in Berlin.
    let clock = Arc::new(AtomicI64::new(
        Utc.with_ymd_and_hms(2026, 6, 3, 8, 0, 0)
            .unwrap()
            .timestamp(),
    ));
    let server = start(clock.clone(), None).await;
    let mut client = keda::connect(&server).await;
    let obj = object(business_hours());

    let (name, int, float, active) = keda_poll(&mut client, &obj).await;
    assert_eq!(name, "blended-replicas");
    assert_eq!((int, float, active), (4, 4.0, true));

    // Saturday: outside the window.
    clock.store(
        Utc.with_ymd_and_hms(2026, 6, 6, 8, 0, 0)
            .unwrap()
            .timestamp(),
        Ordering::SeqCst,
    );
    let (_, int, float, active) = keda_poll(&mut client, &obj).await;
    assert_eq!((int, float, active), (0, 0.0, false));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_metadata_is_invalid_argument_naming_the_key() {
    let clock = Arc::new(AtomicI64::new(0));
    let server = start(clock, None).await;
    let mut client = keda::connect(&server).await;
    let mut md = business_hours();
    md.insert("desiredReplicas".into(), "many".into());
    md.insert("timezone".into(), "Atlantis/Central".into());
    let status = client
        .get_metric_spec(object(md.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("`desiredReplicas`"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("`timezone`"),
        "{}",
        status.message()
    );
    let status = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object(md.clone())),
            metric_name: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client.is_active(object(md)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A typo in a key.
    let mut md = business_hours();
    md.insert("desiredReplica".into(), "3".into());
    let status = client.is_active(object(md)).await.unwrap_err();
    assert!(
        status.message().contains("`desiredReplica`"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_health_service_answers_serving_for_all_three_names() {
    let server = start(Arc::new(AtomicI64::new(0)), None).await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "liveness", "readiness"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "`{service}` is SERVING");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn streams_send_the_current_state_at_once_and_follow_the_window() {
    let clock = Arc::new(AtomicI64::new(
        Utc.with_ymd_and_hms(2026, 6, 3, 5, 59, 59)
            .unwrap()
            .timestamp(),
    ));
    let server = start(clock.clone(), None).await;
    let mut client = keda::connect(&server).await;
    let obj = object(business_hours());

    let mut specs = client
        .stream_metric_spec(obj.clone())
        .await
        .unwrap()
        .into_inner();
    let first = specs.message().await.unwrap().unwrap();
    assert_eq!(first.metric_specs[0].target_size, 1);

    let mut stream = client.stream_is_active(obj).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .unwrap();
    assert!(
        !first.unwrap().unwrap().result,
        "07:59:59 in Berlin is outside"
    );
    // The window opens at 08:00 local; the stream says so without being polled.
    clock.store(
        Utc.with_ymd_and_hms(2026, 6, 3, 6, 0, 0)
            .unwrap()
            .timestamp(),
        Ordering::SeqCst,
    );
    let next = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .unwrap();
    assert!(next.unwrap().unwrap().result);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_and_probes_are_served_over_http() {
    let server = start(Arc::new(AtomicI64::new(0)), None).await;
    let mut client = keda::connect(&server).await;
    keda_poll(&mut client, &object(business_hours())).await;
    let base = format!("http://{}", server.http_addr.unwrap());
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"blend_scaler_grpc_requests_total{method="GetMetrics",code="OK"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"blend_scaler_signal_value{scaledobject_namespace="production",scaledobject="orders",signal="cron"}"#), "{text}");
    server.shutdown().await.unwrap();
}

/// `pki`'s server certificate, key and CA in a fresh directory, as `serve` is given them.
fn tls_files(pki: &Pki) -> (tempfile::TempDir, TlsFiles) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &pki.server_cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &pki.server_key).unwrap();
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        client_ca: Some(dir.path().join("ca.pem")),
    };
    (dir, files)
}

#[tokio::test]
async fn mtls_admits_a_client_with_a_certificate_and_refuses_one_without() {
    let pki = pki("1", &["localhost"]);
    let (_dir, files) = tls_files(&pki);
    let server = start(Arc::new(AtomicI64::new(0)), Some(files)).await;
    let url = format!("https://localhost:{}", server.grpc_addr.port());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");

    let with_cert = keda_channel(server.grpc_addr.port(), &pki.ca, &pki)
        .await
        .unwrap();
    let mut client = ExternalScalerClient::new(with_cert);
    let (_, int, _, _) = keda_poll(&mut client, &object(business_hours())).await;
    assert!(int >= 0);

    let without_cert = Channel::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let refused = match without_cert {
        Err(_) => true,
        Ok(ch) => ExternalScalerClient::new(ch)
            .is_active(object(business_hours()))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_upstream_outside_the_allowlist_is_permission_denied() {
    let mut config = ServerConfig::loopback();
    config.engine.allow_upstream = Some(vec![
        "*.servicebus.windows.net".into(),
        "prometheus.monitoring".into(),
    ]);
    let server = server::start(config, Default::default(), Metrics::new())
        .await
        .unwrap();
    let mut client = keda::connect(&server).await;
    let md = keda::metadata([
        ("serverAddress", "http://169.254.169.254:9090"),
        ("query", "up"),
        ("threshold", "1"),
    ]);
    let status = client.get_metric_spec(object(md)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("`serverAddress`"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("169.254.169.254"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}
