//! End to end: the real gRPC server with `serve`'s sources against the Service Bus double,
//! 50 ScaledObjects over 3 queues and 2 subscriptions of one namespace, called the way KEDA
//! calls an external scaler.

#[path = "support/keda.rs"]
mod keda;

use std::collections::HashMap;
use std::time::Duration;

use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::{Running, ServerConfig};
use blend_scaler_testkit::servicebus::ServiceBusDouble;
use keda::Client;
use tokio::time::Instant;
use tonic::Code;

const INTERVAL: Duration = Duration::from_millis(250);

async fn scaler() -> (Running, Client) {
    let mut config = ServerConfig::loopback();
    config.engine.refresh = keda::refresh_every(INTERVAL);
    keda::start_with_default_sources(config).await
}

/// One ScaledObject: which entity, its messageCount and activationMessageCount.
#[derive(Clone)]
struct Watch {
    object: ScaledObjectRef,
    entity: &'static str,
    message_count: f64,
    activation: f64,
}

fn watch(
    double: &ServiceBusDouble,
    i: usize,
    entity: &'static str,
    keys: &[(&str, &str)],
    message_count: u32,
    activation: u32,
) -> Watch {
    let mut md = keda::metadata([
        (keda::SCALER_ADDRESS.0, keda::SCALER_ADDRESS.1.to_string()),
        ("endpoint", double.endpoint()),
        ("connectionFromEnv", double.connection_string()),
        ("messageCount", message_count.to_string()),
        ("activationMessageCount", activation.to_string()),
    ]);
    md.extend(keda::metadata(keys.iter().copied()));
    Watch {
        object: keda::object("production", &format!("consumer-{i}"), md),
        entity,
        message_count: f64::from(message_count),
        activation: f64::from(activation),
    }
}

/// KEDA's poll of one ScaledObject: GetMetrics then IsActive, with the spec's metric name.
async fn poll(
    mut client: Client,
    w: &Watch,
    metric: &str,
) -> Result<(i64, f64, bool), tonic::Status> {
    keda::poll(&mut client, &w.object, metric).await
}

fn expected(w: &Watch, counts: &HashMap<&str, u64>) -> (i64, bool) {
    let active = counts[w.entity] as f64;
    (
        (active / w.message_count).ceil() as i64,
        active > w.activation,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_scaledobjects_on_one_namespace_answer_keda_from_shared_reads() {
    let double = ServiceBusDouble::start().await.unwrap();
    let mut counts: HashMap<&str, u64> = HashMap::from([
        ("orders", 37),
        ("billing", 3),
        ("shipping", 0),
        ("events/audit", 12),
        ("events/email", 0),
    ]);
    let apply = |counts: &HashMap<&str, u64>| {
        for (entity, n) in counts {
            match entity.split_once('/') {
                Some((t, s)) => double.set_subscription(t, s, *n),
                None => double.set_queue(entity, *n),
            }
        }
    };
    apply(&counts);
    let entities: [(&str, Vec<(&str, &str)>); 5] = [
        ("orders", vec![("queueName", "orders")]),
        ("billing", vec![("queueName", "billing")]),
        ("shipping", vec![("queueName", "shipping")]),
        (
            "events/audit",
            vec![("topicName", "events"), ("subscriptionName", "audit")],
        ),
        (
            "events/email",
            vec![("topicName", "events"), ("subscriptionName", "email")],
        ),
    ];
    // messageCount and activationMessageCount vary, so answers differ per object.
    let watches: Vec<Watch> = (0..50)
        .map(|i| {
            let (entity, keys) = &entities[i % 5];
            watch(
                &double,
                i,
                entity,
                keys,
                [1, 5, 10][i % 3],
                [0, 2, 20][i / 5 % 3],
            )
        })
        .collect();

    let (running, client) = scaler().await;
    let started = Instant::now();

    // KEDA asks for each object's metric spec once.
    let mut metric = HashMap::new();
    for w in &watches {
        let spec = client
            .clone()
            .get_metric_spec(w.object.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec.metric_specs.len(), 1, "exactly one metric spec");
        let s = &spec.metric_specs[0];
        assert_eq!((s.target_size, s.target_size_float), (1, 1.0));
        metric.insert(w.object.name.clone(), format!("s0-{}", s.metric_name));
    }

    // Then polls every object, many times per refresh interval.
    let poll_all = |counts: HashMap<&'static str, u64>| {
        let watches = watches.clone();
        let metric = metric.clone();
        let client = client.clone();
        async move {
            let answers = futures::future::join_all(
                watches
                    .iter()
                    .map(|w| poll(client.clone(), w, &metric[&w.object.name])),
            )
            .await;
            let mut wrong = Vec::new();
            for (w, answer) in watches.iter().zip(answers) {
                let (int, float, active) = answer.expect("every watched entity exists");
                assert_eq!(int as f64, float, "metricValue and metricValueFloat agree");
                let (want, want_active) = expected(w, &counts);
                if (int, active) != (want, want_active) {
                    wrong.push(format!(
                        "{} ({}): {int}/{active}, want {want}/{want_active}",
                        w.object.name, w.entity
                    ));
                }
            }
            wrong
        }
    };
    let wrong = poll_all(counts.clone()).await;
    assert!(wrong.is_empty(), "first answers: {wrong:#?}");
    // Steady state: from here each refresh is one queue page and one subscription page.
    let warm_up = double.requests();
    let steady = Instant::now();
    let until = Instant::now() + Duration::from_millis(1_200);
    while Instant::now() < until {
        let wrong = poll_all(counts.clone()).await;
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    // The backlog moves: answers follow within a few refreshes.
    counts.insert("orders", 0);
    counts.insert("events/email", 95);
    counts.insert("shipping", 21);
    apply(&counts);
    let deadline = Instant::now() + INTERVAL * 8;
    loop {
        let wrong = poll_all(counts.clone()).await;
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "answers did not follow: {wrong:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let steady_reads = double.requests() - warm_up;
    let steady_refreshes = (steady.elapsed().as_millis() / INTERVAL.as_millis()) as u64 + 1;
    assert!(
        steady_reads <= 2 * steady_refreshes,
        "{steady_reads} reads in {:?}: {:#?}",
        steady.elapsed(),
        double.request_log()
    );
    assert!(
        warm_up <= 6,
        "50 first callers: {:#?}",
        double.request_log()
    );

    // A ScaledObject on a queue that does not exist: an error that says so, never 0.
    let ghost = watch(&double, 99, "ghost", &[("queueName", "ghost")], 5, 0);
    let status = poll(client.clone(), &ghost, "s0-blended-replicas")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("queue `ghost`") && status.message().contains("was not found"),
        "{}",
        status.message()
    );
    let status = client
        .clone()
        .is_active(ghost.object.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    // The read bound of docs/servicebus.md ("Requests") over the whole run: one namespace, 6 watched entities in 1 topic, so at most
    // ceil(6 / 100) + 1 = 2 reads per refresh; refreshes come once per interval, and each of
    // the two bursts of never-seen objects (the fifty, then the ghost) may add two.
    let elapsed = started.elapsed();
    let refreshes = (elapsed.as_millis() / INTERVAL.as_millis()) as u64 + 1 + 2 * 2;
    let log = double.request_log();
    assert!(
        double.requests() <= 2 * refreshes,
        "{} requests in {elapsed:?} ({refreshes} refreshes allowed): {log:#?}",
        double.requests()
    );
    // Past the first caller (alone, it gets one GET), only the two list reads, and the
    // ghost's own GET when it was new (a new item is read alone, not with the lists).
    assert!(
        log[warm_up as usize..].iter().all(|r| {
            r.starts_with("GET /$Resources/Queues?")
                || r.starts_with("GET /events/Subscriptions?")
                || r.starts_with("GET /ghost?")
        }),
        "only list reads: {log:#?}"
    );
    assert!(double.requests_to("/ghost") <= 1, "{log:#?}");
    let text = running.engine.metrics().encode();
    assert!(
        text.contains(
            r#"blend_scaler_upstream_requests_total{upstream="servicebus",outcome="ok"}"#
        ),
        "{text}"
    );
    running.shutdown().await.unwrap();
}
