//! Capacity limits over the wire (docs/security.md, "Capacity"): past each cap the caller gets
//! `RESOURCE_EXHAUSTED` and the scaler keeps nothing; within them everything answers as
//! before. The real gRPC server, a real Prometheus (`apt-get install -y prometheus`) where a
//! Prometheus is needed, and a hostile upstream of its own where the finding is about one.

#[path = "support/prometheus.rs"]
mod prometheus_support;

#[path = "support/keda.rs"]
mod keda;

use std::sync::Arc;
use std::time::Duration;

use blend_scaler::cache::{Keyed, Refresher};
use blend_scaler::capacity::Capacity;
use blend_scaler::engine::SignalCaches;
use blend_scaler::metrics::Metrics;
use blend_scaler::offload::{self, Work};
use blend_scaler::prometheus::{self, PrometheusUpstream};
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::{Running, ServerConfig};
use keda::Client;
use prometheus_support::Prometheus;
use tonic::Code;

fn cron(namespace: &str, name: &str) -> ScaledObjectRef {
    keda::object(
        namespace,
        name,
        keda::metadata([
            keda::SCALER_ADDRESS,
            ("start", "0 8 * * *"),
            ("end", "0 20 * * *"),
            ("desiredReplicas", "2"),
        ]),
    )
}

async fn scaler(
    capacity: Capacity,
    max_groups: usize,
    max_items: usize,
) -> (Running, Client, Arc<PrometheusUpstream>) {
    let mut config = ServerConfig::loopback();
    config.engine.capacity = capacity;
    config.engine.refresh = keda::refresh_every(Duration::from_millis(500));
    config.engine.refresh.max_groups = max_groups;
    config.engine.refresh.max_items_per_group = max_items;
    let metrics = Metrics::new();
    let upstream = Arc::new(PrometheusUpstream::new(
        metrics.clone(),
        &blend_scaler::binding::HostRules::loopback(),
    ));
    let sources = SignalCaches {
        servicebus: None,
        prometheus: Some(Arc::new(Keyed::new(
            Refresher::from_arc(upstream.clone(), config.engine.refresh.clone()),
            prometheus::key,
        ))),
    };
    let (running, client) = keda::start(config, sources, metrics).await;
    (running, client, upstream)
}

fn exhausted<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> String {
    let status = r.expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status.message().to_string()
}

#[tokio::test]
async fn scaledobjects_past_the_namespace_and_total_caps_are_refused_and_the_rest_answer() {
    let capacity = Capacity {
        max_objects: 5,
        max_objects_per_namespace: 3,
        ..Capacity::default()
    };
    let (running, mut client, _) = scaler(capacity, 10, 10).await;
    for i in 0..3 {
        client
            .get_metric_spec(cron("team-a", &format!("so-{i}")))
            .await
            .expect("within the cap");
    }
    let why = exhausted(client.get_metric_spec(cron("team-a", "so-3")).await);
    assert!(why.contains("namespace `team-a`"), "{why}");
    // Another namespace has its own count, up to the total.
    client
        .get_metric_spec(cron("team-b", "so-0"))
        .await
        .expect("team-b has room");
    client
        .get_metric_spec(cron("team-b", "so-1"))
        .await
        .expect("the fifth object");
    let why = exhausted(client.get_metric_spec(cron("team-c", "so-0")).await);
    assert!(why.contains("--max-scaledobjects"), "{why}");
    // Tracked objects still answer, and a changed one is not a new one.
    keda::metric_value(&mut client, &cron("team-a", "so-0"), keda::METRIC)
        .await
        .expect("a tracked object still answers");
    let mut changed = cron("team-a", "so-1");
    changed
        .scaler_metadata
        .insert("desiredReplicas".into(), "4".into());
    client
        .get_metric_spec(changed)
        .await
        .expect("a metadata change takes no new room");
    assert_eq!(running.engine.tracked_count(), 5);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn metadata_past_the_byte_budget_is_refused_before_it_is_parsed() {
    let capacity = Capacity {
        max_metadata_bytes: 4_000,
        ..Capacity::default()
    };
    let (running, mut client, _) = scaler(capacity, 10, 10).await;
    // One window padded to 3 KiB: the second object's does not fit beside the first's.
    let window = "0 8 * * * -> 0 20 * * * = 1;";
    let mut big = keda::object(
        "team-a",
        "big",
        keda::metadata([("windows", format!("{window}{}", " ".repeat(3_000)))]),
    );
    client
        .get_metric_spec(big.clone())
        .await
        .expect("the first fits");
    big.name = "big-2".into();
    let why = exhausted(client.get_metric_spec(big).await);
    assert!(why.contains("--max-metadata-bytes"), "{why}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn distinct_prometheus_servers_past_the_group_cap_are_refused_and_share_one_http_client() {
    let prometheus = Prometheus::builder()
        .gauge("http_rps", &[("pod", "a")], 30.0)
        .start()
        .await;
    let (running, mut client, upstream) = scaler(Capacity::default(), 3, 10).await;
    // Each `timeout` makes another group (the audit's probe used 2,000 paths).
    let object = |i: usize| {
        keda::object(
            "team-a",
            &format!("prom-{i}"),
            keda::metadata([
                ("serverAddress", prometheus.url()),
                ("query", "sum(http_rps)".into()),
                ("threshold", "10".into()),
                ("timeout", format!("{}ms", 2_000 + i)),
            ]),
        )
    };
    for i in 0..3 {
        let (replicas, _) = keda::metric_value(&mut client, &object(i), keda::METRIC)
            .await
            .expect("within the group cap");
        assert_eq!(replicas, 3);
    }
    assert_eq!(
        upstream.client_count(),
        1,
        "one HTTP client for three servers"
    );
    let why = exhausted(keda::metric_value(&mut client, &object(3), keda::METRIC).await);
    assert!(why.contains("--max-upstream-groups"), "{why}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn distinct_queries_past_the_item_cap_of_one_server_are_refused() {
    let prometheus = Prometheus::builder()
        .gauge("http_rps", &[("pod", "a")], 30.0)
        .start()
        .await;
    let (running, mut client, _) = scaler(Capacity::default(), 10, 2).await;
    let object = |i: usize| {
        keda::object(
            "team-a",
            &format!("q-{i}"),
            keda::metadata([
                ("serverAddress", prometheus.url()),
                ("query", format!("sum(http_rps) + {i}")),
                ("threshold", "10".into()),
            ]),
        )
    };
    for i in 0..2 {
        keda::metric_value(&mut client, &object(i), keda::METRIC)
            .await
            .expect("within the item cap");
    }
    let why = exhausted(keda::metric_value(&mut client, &object(2), keda::METRIC).await);
    assert!(why.contains("--max-items-per-group"), "{why}");
    // A query already watched is not a new item.
    keda::metric_value(&mut client, &object(0), keda::METRIC)
        .await
        .expect("still answered");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn streams_past_the_namespace_cap_are_refused_until_one_ends() {
    let capacity = Capacity {
        max_streams_per_namespace: 2,
        ..Capacity::default()
    };
    let (running, mut client, _) = scaler(capacity, 10, 10).await;
    let mut first = client
        .stream_is_active(cron("team-a", "s-0"))
        .await
        .expect("first")
        .into_inner();
    let _second = client
        .stream_is_active(cron("team-a", "s-1"))
        .await
        .expect("second")
        .into_inner();
    first.message().await.expect("the current state at once");
    let why = exhausted(client.stream_is_active(cron("team-a", "s-2")).await);
    assert!(why.contains("--max-streams-per-namespace"), "{why}");
    // Another namespace is not held back.
    let _other = client
        .stream_is_active(cron("team-b", "s-0"))
        .await
        .expect("team-b");
    drop(first);
    // The server sees the stream end once the client's RST reaches it.
    let mut opened = None;
    for _ in 0..50 {
        match client.stream_is_active(cron("team-a", "s-2")).await {
            Ok(s) => {
                opened = Some(s);
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    assert!(opened.is_some(), "a place came free when a stream ended");
    running.shutdown().await.unwrap();
}

/// A hostile "Prometheus": answers every query with `series` series (and says how many
/// requests it got).
async fn hostile_prometheus(series: usize) -> (String, tokio::task::JoinHandle<()>) {
    let one = r#"{"metric":{"pod":"p","namespace":"n","instance":"10.0.0.1:9090"},"value":[1700000000,"1"]}"#;
    let body = format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
        vec![one; series].join(",")
    );
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

fn summed(namespace: &str, name: &str, url: &str) -> ScaledObjectRef {
    keda::object(
        namespace,
        name,
        keda::metadata([
            ("serverAddress", url),
            ("query", "up"),
            ("threshold", "1000"),
            ("seriesAggregation", "sum"),
        ]),
    )
}

#[tokio::test]
async fn large_answers_are_decoded_off_the_async_workers_and_answers_past_the_caps_are_refused() {
    let (running, mut client, _) = scaler(Capacity::default(), 10, 10).await;
    // 5,000 series, about 470 KiB: read, on a blocking thread.
    let (ok_url, ok) = hostile_prometheus(5_000).await;
    let before = offload::runs(Work::Answer);
    let (replicas, _) = keda::metric_value(&mut client, &summed("t", "big", &ok_url), keda::METRIC)
        .await
        .expect("a large answer within the caps");
    assert_eq!(replicas, 5, "5,000 series of 1 over threshold 1000");
    assert!(
        offload::runs(Work::Answer) > before,
        "decoded off the async workers"
    );

    // 10,001 small series: under 2 MiB but over the series cap.
    let (many_url, many) = hostile_prometheus(10_001).await;
    let status = keda::metric_value(&mut client, &summed("t", "many", &many_url), keda::METRIC)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("more than 10000 series"),
        "{status:?}"
    );

    // 25,000 series, about 2.3 MiB: over the body cap.
    let (huge_url, huge) = hostile_prometheus(25_000).await;
    let status = keda::metric_value(&mut client, &summed("t", "huge", &huge_url), keda::METRIC)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("larger than 2097152 bytes"),
        "{status:?}"
    );
    for t in [ok, many, huge] {
        t.abort();
    }
    running.shutdown().await.unwrap();
}
