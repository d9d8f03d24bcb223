//! docs/security.md "Credentials go only to their own hosts", over the wire: a tenant's trigger
//! metadata cannot send the scaler's credentials (a connection string, a named credential, a
//! Prometheus credential, the workload-identity token) to a host the tenant chose. The scaler
//! refuses such a trigger with `INVALID_ARGUMENT` naming the key, before any request leaves,
//! even with `--allow-loopback-upstreams` (the harness's setting) and the sink on loopback.

#[path = "support/keda.rs"]
mod keda;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blend_scaler::metadata::Credentials;
use blend_scaler::server::{self, ServerConfig};
use blend_scaler_testkit::ServiceBusDouble;
use tokio::net::TcpListener;
use tonic::Code;

/// An attacker's server: it only counts the connections the scaler opens to it.
struct Sink {
    url: String,
    connections: Arc<AtomicUsize>,
}

async fn sink() -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    Sink { url, connections }
}

async fn refused_naming(client: &mut keda::Client, pairs: &[(&str, String)], key: &str) {
    let md = keda::metadata(pairs.iter().cloned());
    let obj = keda::object("tenant-a", "web", md);
    let err = keda::metric_value(client, &obj, keda::METRIC)
        .await
        .expect_err("the trigger is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{pairs:?}: {err:?}");
    assert!(
        err.message().contains(&format!("`{key}`")),
        "{pairs:?}: the error names `{key}`: {}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_of_the_scaler_or_a_tenant_reaches_a_host_the_tenant_names() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("b-orders", 37);
    let sink = sink().await;
    let mut config = ServerConfig::loopback();
    config.engine.credentials = Credentials::from_vars([
        (
            "BLEND_SCALER_CREDENTIAL_TENANT_B".to_string(),
            double.connection_string(),
        ),
        // Every namespace may use both: this test is about hosts, tests/namespace_access.rs
        // about namespaces.
        (
            "BLEND_SCALER_CREDENTIAL_TENANT_B_NAMESPACES".to_string(),
            "*".to_string(),
        ),
        (
            "BLEND_SCALER_PROMETHEUS_CREDENTIAL_CENTRAL_NAMESPACES".to_string(),
            "*".to_string(),
        ),
        (
            "BLEND_SCALER_PROMETHEUS_CREDENTIAL_CENTRAL".to_string(),
            "bearer:PROM-CENTRAL-BEARER-SECRET".to_string(),
        ),
        (
            "BLEND_SCALER_PROMETHEUS_CREDENTIAL_CENTRAL_SERVERS".to_string(),
            "https://prometheus-server.monitoring".to_string(),
        ),
    ]);
    let (running, mut client) = keda::start_with_default_sources(config).await;

    // Tenant B's connection string, pointed elsewhere with `endpoint`.
    let queue = ("queueName", "b-orders".to_string());
    let cs = ("connectionFromEnv", double.connection_string());
    let to_sink = ("endpoint", sink.url.clone());
    refused_naming(
        &mut client,
        &[queue.clone(), cs.clone(), to_sink.clone()],
        "endpoint",
    )
    .await;
    // A named credential of the scaler, pointed elsewhere.
    let named = ("credential", "tenant-b".to_string());
    refused_naming(
        &mut client,
        &[queue.clone(), named.clone(), to_sink.clone()],
        "endpoint",
    )
    .await;
    // The same through `cloud: Private`.
    let private = [
        queue.clone(),
        cs.clone(),
        ("namespace", "x".to_string()),
        ("cloud", "Private".to_string()),
        ("endpointSuffix", "attacker.example".to_string()),
    ];
    refused_naming(&mut client, &private, "endpointSuffix").await;
    // The scaler's own token (no credential), via a private suffix smuggling in a host.
    let port = sink.url.rsplit(':').next().unwrap();
    let smuggled = [
        queue.clone(),
        ("namespace", "x".to_string()),
        ("cloud", "Private".to_string()),
        ("endpointSuffix", format!("x@127.0.0.1:{port}")),
    ];
    refused_naming(&mut client, &smuggled, "endpointSuffix").await;
    // A Prometheus credential, sent to a server it is not configured for.
    let prom = [
        ("serverAddress", sink.url.clone()),
        ("query", "up".to_string()),
        ("threshold", "1".to_string()),
        ("prometheusCredential", "central".to_string()),
    ];
    refused_naming(&mut client, &prom, "prometheusCredential").await;
    // A queue name choosing the request path.
    let path = [
        ("queueName", "latest/meta-data/iam".to_string()),
        cs.clone(),
    ];
    refused_naming(&mut client, &path, "queueName").await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.connections.load(Ordering::SeqCst),
        0,
        "nothing reached the tenant's host"
    );

    // Control: the credential still works on its own host.
    let own = keda::object("tenant-b", "web", keda::metadata([queue, cs]));
    let (value, _) = keda::metric_value(&mut client, &own, keda::METRIC)
        .await
        .expect("B's own trigger reads its own namespace");
    assert_eq!(value, 8, "37 messages at 5 per replica");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_loopback_flag_a_credential_never_travels_over_plain_http() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 3);
    // Started without the harness, so without `--allow-loopback-upstreams`.
    let running = server::start_with_default_sources(ServerConfig::loopback())
        .await
        .unwrap();
    let mut client = keda::connect(&running).await;
    let pairs = [
        ("queueName", "orders".to_string()),
        ("connectionFromEnv", double.connection_string()),
    ];
    refused_naming(&mut client, &pairs, "connectionFromEnv").await;
    let headers = [
        ("serverAddress", "http://prometheus.example".to_string()),
        ("query", "up".to_string()),
        ("threshold", "1".to_string()),
        ("customHeaders", "X-Scope-OrgID=tenant-a".to_string()),
    ];
    refused_naming(&mut client, &headers, "serverAddress").await;
    running.shutdown().await.unwrap();
}
