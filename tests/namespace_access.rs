//! docs/security.md "Namespaces: who may use what", over the wire: what the scaler holds for
//! tenants (named credentials, its own workload identity, Prometheus servers and their tenant
//! headers) is usable only by the Kubernetes namespaces configured for it. A refused trigger
//! reads nothing, and the refusal for a credential that exists elsewhere is the refusal for one
//! that does not exist.

#[path = "support/keda.rs"]
mod keda;

#[path = "support/prometheus.rs"]
mod prometheus_support;

use blend_scaler::access::Access;
use blend_scaler::engine::SignalCaches;
use blend_scaler::metadata::Credentials;
use blend_scaler::metrics::Metrics;
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::ServerConfig;
use blend_scaler::servicebus::client::ClientOptions;
use blend_scaler::servicebus::{self, ServiceBusUpstream};
use blend_scaler_testkit::ServiceBusDouble;
use prometheus_support::{Prometheus, Proxy};
use tonic::Code;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn object(namespace: &str, pairs: &[(&str, &str)]) -> ScaledObjectRef {
    keda::object(namespace, "web", keda::metadata(pairs.iter().copied()))
}

async fn refused(client: &mut keda::Client, obj: &ScaledObjectRef, key: &str) -> String {
    let err = keda::metric_value(client, obj, keda::METRIC)
        .await
        .expect_err("the trigger is refused for this namespace");
    assert_eq!(err.code(), Code::PermissionDenied, "{obj:?}: {err:?}");
    assert!(
        err.message().contains(&format!("`{key}`")),
        "the error names `{key}`: {}",
        err.message()
    );
    err.message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_credential_serves_only_its_namespaces_and_unknown_names_look_the_same() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("b-orders", 37);
    let mut config = ServerConfig::loopback();
    config.engine.credentials = Credentials::from_vars(vars(&[
        (
            "BLEND_SCALER_CREDENTIAL_TENANT_B",
            &double.connection_string(),
        ),
        (
            "BLEND_SCALER_CREDENTIAL_TENANT_B_NAMESPACES",
            "tenant-b,payments",
        ),
        // Configured, but for no namespace.
        (
            "BLEND_SCALER_CREDENTIAL_ORPHAN",
            &double.connection_string(),
        ),
    ]));
    let (running, mut client) = keda::start_with_default_sources(config).await;

    let with = |name: &'static str| [("queueName", "b-orders"), ("credential", name)];
    let foreign = refused(
        &mut client,
        &object("tenant-a", &with("tenant-b")),
        "credential",
    )
    .await;
    let unknown = refused(
        &mut client,
        &object("tenant-a", &with("tenant-c")),
        "credential",
    )
    .await;
    let orphan = refused(
        &mut client,
        &object("tenant-b", &with("orphan")),
        "credential",
    )
    .await;
    assert_eq!(
        foreign.replace("tenant-b", "NAME"),
        unknown.replace("tenant-c", "NAME"),
        "no oracle: an existing credential of another namespace reads like a missing one"
    );
    assert_eq!(
        foreign.replace("tenant-b", "NAME"),
        orphan.replace("orphan", "NAME")
    );
    assert!(!foreign.contains("BLEND_SCALER_"), "{foreign}");
    assert_eq!(
        double.requests(),
        0,
        "nothing was read for a refused trigger"
    );

    for namespace in ["tenant-b", "payments"] {
        let (value, _) = keda::metric_value(
            &mut client,
            &object(namespace, &with("tenant-b")),
            keda::METRIC,
        )
        .await
        .expect("an authorised namespace reads with the credential");
        assert_eq!(value, 8, "37 messages at 5 per replica");
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scalers_workload_identity_is_opt_in_per_namespace() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 12);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, &double.options().federated_token).unwrap();
    let mut config = ServerConfig::loopback();
    config.engine.refresh = keda::refresh_every(std::time::Duration::from_millis(500));
    config.engine.access = Access::from_vars(vars(&[(
        "BLEND_SCALER_WORKLOAD_IDENTITY_NAMESPACES",
        "production",
    )]))
    .unwrap();
    let metrics = Metrics::new();
    let upstream = ServiceBusUpstream::with_options(
        metrics.clone(),
        ClientOptions::loopback(),
        Ok(keda::workload_identity(&double, file)),
    );
    let sources = SignalCaches {
        servicebus: Some(servicebus::source_from(
            upstream,
            config.engine.refresh.clone(),
        )),
        prometheus: None,
    };
    let (running, mut client) = keda::start(config, sources, metrics).await;

    // The tenant names no credential and points at the double's namespace.
    let endpoint = double.endpoint();
    let pairs = [("queueName", "orders"), ("endpoint", endpoint.as_str())];
    refused(&mut client, &object("tenant-a", &pairs), "credential").await;
    assert_eq!(
        double.token_requests(),
        0,
        "no token was fetched for tenant-a"
    );
    assert_eq!(double.requests(), 0);

    let (value, _) = keda::metric_value(&mut client, &object("production", &pairs), keda::METRIC)
        .await
        .expect("an opted-in namespace reads with the scaler's identity");
    assert_eq!(value, 3, "12 messages at 5 per replica");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_servers_and_their_tenant_headers_are_the_operators_choice() {
    let prometheus = Prometheus::builder()
        .gauge("queue_depth", &[], 42.0)
        .start()
        .await;
    // Stands in for a multi-tenant front (Mimir, Cortex): it records the headers it gets.
    let mimir = Proxy::start(&prometheus.url(), None).await;
    let mut config = ServerConfig::loopback();
    config.engine.access = Access::from_vars(vars(&[
        ("BLEND_SCALER_PROMETHEUS_SERVER_MIMIR", &mimir.url()),
        (
            "BLEND_SCALER_PROMETHEUS_SERVER_MIMIR_NAMESPACES",
            "payments",
        ),
        (
            "BLEND_SCALER_PROMETHEUS_SERVER_MIMIR_HEADERS",
            "X-Scope-OrgID={namespace}",
        ),
    ]))
    .unwrap();
    let (running, mut client) = keda::start_with_default_sources(config).await;

    let url = mimir.url();
    let pairs = [
        ("serverAddress", url.as_str()),
        ("query", "queue_depth"),
        ("threshold", "10"),
    ];
    refused(&mut client, &object("tenant-a", &pairs), "serverAddress").await;
    // Another server the namespace was not given.
    let direct = prometheus.url();
    let elsewhere = [
        ("serverAddress", direct.as_str()),
        ("query", "queue_depth"),
        ("threshold", "10"),
    ];
    refused(
        &mut client,
        &object("payments", &elsewhere),
        "serverAddress",
    )
    .await;
    assert_eq!(
        mimir.query_count(),
        0,
        "nothing was queried for a refused trigger"
    );

    let (value, _) = keda::metric_value(&mut client, &object("payments", &pairs), keda::METRIC)
        .await
        .expect("the namespace queries its server");
    assert_eq!(value, 5, "42 at 10 per replica");
    let seen = mimir.requests();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|r| r.headers.get("x-scope-orgid").map(String::as_str) == Some("payments")),
        "every query carried the namespace's own tenant header: {seen:?}"
    );
    running.shutdown().await.unwrap();
}
