//! Throttling stays fair (docs/security.md, "Throttling stays fair"): one credential's 429 on a Service Bus namespace
//! holds the other credentials' groups on that host back for a bounded time only, while the
//! group that got it honours its whole `Retry-After`. The real gRPC server and the Service Bus
//! double (the management API cannot be run locally).

#[path = "support/keda.rs"]
mod keda;

use std::sync::Arc;
use std::time::Duration;

use blend_scaler::engine::SignalCaches;
use blend_scaler::metrics::Metrics;
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::secret::Secret;
use blend_scaler::server::ServerConfig;
use blend_scaler::servicebus::auth::sas_token;
use blend_scaler::servicebus::client::ClientOptions;
use blend_scaler::servicebus::{self, ServiceBusUpstream};
use blend_scaler_testkit::ServiceBusDouble;
use blend_scaler_testkit::servicebus::{Fault, RetryAfter};
use tokio::time::Instant;

/// The bound on another credential's hold in this test (`serve` keeps 30 s: a unit test in
/// `src/servicebus` checks that figure), short so the test takes seconds.
const HOLD: Duration = Duration::from_secs(2);
/// What the namespace asks of the credential it throttles.
const RETRY_AFTER: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credentials_429_holds_another_credential_on_the_namespace_back_only_briefly() {
    let double = Arc::new(ServiceBusDouble::start().await.unwrap());
    double.set_queue("orders", 1);
    double.set_queue("billing", 2);
    let refresh = keda::refresh_every(Duration::from_millis(300));
    let metrics = Metrics::new();
    let upstream = ServiceBusUpstream::with_options(
        metrics.clone(),
        ClientOptions::default(),
        Err("no workload identity in this test".into()),
    )
    .with_cross_credential_hold(HOLD);
    let sources = SignalCaches {
        servicebus: Some(servicebus::source_from(upstream, refresh.clone())),
        prometheus: None,
    };
    let mut config = ServerConfig::loopback();
    config.engine.refresh = refresh;
    let (running, mut client) = keda::start(config, sources, metrics).await;

    // Two tenants on one namespace: one with the policy key, one with a ready SAS token (an
    // entity-scoped rule, say). Two credentials, so two cache groups on one host.
    let expiry = (chrono::Utc::now().timestamp() + 3600) as u64;
    let token = sas_token(
        &format!("{}/billing", double.endpoint()),
        &double.options().key_name,
        &Secret::new(double.options().key.clone()),
        expiry,
    );
    let queue = |name: &str, connection: String| {
        keda::object(
            name,
            "consumer",
            keda::metadata([
                ("endpoint", double.endpoint()),
                ("connectionFromEnv", connection),
                ("queueName", name.to_string()),
                ("messageCount", "1".into()),
            ]),
        )
    };
    let orders = queue("orders", double.connection_string());
    let billing = queue(
        "billing",
        format!(
            "Endpoint={}/;SharedAccessSignature={}",
            double.endpoint(),
            token.expose()
        ),
    );
    assert_eq!(replicas(&mut client, &billing).await, Ok(2));
    assert_eq!(replicas(&mut client, &orders).await, Ok(1));

    // The next management read is told to wait a minute.
    double.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(RETRY_AFTER)),
        },
        Some(1),
    );
    let injected = Instant::now();
    let throttled = loop {
        // KEDA keeps asking: reads follow its calls.
        let _ = replicas(&mut client, &orders).await;
        let _ = replicas(&mut client, &billing).await;
        if let Some(s) = double
            .served()
            .into_iter()
            .find(|s| s.at >= injected && s.status == 429)
        {
            break s;
        }
        assert!(
            injected.elapsed() < Duration::from_secs(5),
            "no read was throttled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (told, other, other_path) = if throttled.request.contains("/orders") {
        (orders.clone(), billing.clone(), "/billing")
    } else {
        (billing.clone(), orders.clone(), "/orders")
    };
    double.set_queue("orders", 7);
    double.set_queue("billing", 7);

    // The other credential reads again once the bound is over, long before the minute.
    let resumed = loop {
        // Both are asked for: the one told to wait must still not be read.
        let _ = replicas(&mut client, &told).await;
        if replicas(&mut client, &other).await == Ok(7) {
            break throttled.at.elapsed();
        }
        assert!(
            throttled.at.elapsed() < HOLD * 4,
            "the other credential is still held back: {:?}",
            double.request_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        resumed >= HOLD - Duration::from_millis(300),
        "held {resumed:?}: the namespace asked for a pause"
    );
    // The credential that was told keeps waiting: no read of its queue since the 429, and
    // it answers its last good value.
    let told_reads: Vec<String> = double
        .served()
        .into_iter()
        .filter(|s| s.at > throttled.at && !s.request.contains(other_path))
        .map(|s| s.request)
        .collect();
    assert!(told_reads.is_empty(), "{told_reads:?}");
    let last_good = if told.namespace == "orders" { 1 } else { 2 };
    assert_eq!(replicas(&mut client, &told).await, Ok(last_good));
    running.shutdown().await.unwrap();
}

async fn replicas(client: &mut keda::Client, obj: &ScaledObjectRef) -> Result<i64, tonic::Code> {
    keda::metric_value(client, obj, keda::METRIC)
        .await
        .map(|v| v.0)
        .map_err(|s| s.code())
}
