//! No tenant can stall another (docs/security.md, "No tenant can stall another"), over the wire: oversized metadata is
//! refused before any work with one short error, cron windows that never come are refused
//! at parse, and parsing runs off the async workers. The latency a victim sees while these
//! attacks run is measured by `scripts/load-attacks` (BENCHMARKS.md), not here.

#[path = "support/keda.rs"]
mod keda;

use blend_scaler::engine::SignalCaches;
use blend_scaler::metrics::Metrics;
use blend_scaler::offload::{self, Work};
use blend_scaler::server::ServerConfig;
use tonic::Code;

fn cron(extra: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    let mut md = keda::metadata([
        ("start", "0 8 * * *"),
        ("end", "0 20 * * *"),
        ("desiredReplicas", "1"),
    ]);
    md.extend(keda::metadata(extra.iter().copied()));
    md
}

async fn scaler() -> (blend_scaler::server::Running, keda::Client) {
    keda::start(
        ServerConfig::loopback(),
        SignalCaches::default(),
        Metrics::new(),
    )
    .await
}

#[tokio::test]
async fn ten_thousand_unknown_keys_get_one_short_error() {
    let (running, mut client) = scaler().await;
    let mut md = cron(&[]);
    // Short keys, so the request stays under the decode limit and reaches the parser.
    for i in 0..10_000 {
        md.insert(format!("k{i:05}"), "v".into());
    }
    let status = client
        .get_metric_spec(keda::object("t", "many-keys", md))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // The audit got 1,010,090 characters back.
    assert!(status.message().len() < 200, "{}", status.message());
    assert!(
        status.message().contains("10003 keys; at most 64"),
        "{}",
        status.message()
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_bigger_than_any_valid_metadata_is_refused_before_it_is_decoded() {
    let (running, mut client) = scaler().await;
    // The audit's request: 10,000 unknown keys of about 100 bytes, 1 MB of protobuf.
    let mut md = cron(&[]);
    for i in 0..10_000 {
        md.insert(format!("unknown-key-{i:05}-{}", "y".repeat(80)), "v".into());
    }
    let status = client
        .get_metric_spec(keda::object("t", "audit-keys", md))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(status.message().len() < 200, "{}", status.message());

    // The largest metadata the parser accepts the shape of still gets through the decoder.
    let mut md = cron(&[]);
    while md.len() < blend_scaler::metadata::MAX_KEYS {
        let key = format!(
            "{:0>width$}",
            md.len(),
            width = blend_scaler::metadata::MAX_KEY_BYTES
        );
        md.insert(key, "v".repeat(blend_scaler::metadata::MAX_VALUE_BYTES));
    }
    let status = client
        .get_metric_spec(keda::object("t", "largest-valid-shape", md))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("is not a known key"),
        "{}",
        status.message()
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_huge_key_gets_one_error_without_a_suggestion_or_the_key() {
    let (running, mut client) = scaler().await;
    let key = format!("queueName{}", "x".repeat(256 << 10));
    let status = client
        .get_metric_spec(keda::object("t", "huge-key", cron(&[(&key, "v")])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let message = status.message();
    assert!(message.contains("longer than 256 bytes"), "{message}");
    assert!(
        !message.contains("did you mean") && message.len() < 200,
        "{message}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn at_most_ten_problems_are_listed_in_one_error() {
    let (running, mut client) = scaler().await;
    let mut md = cron(&[]);
    for i in 0..40 {
        md.insert(format!("typo{i:02}"), "v".into());
    }
    let status = client
        .get_metric_spec(keda::object("t", "typos", md))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message().matches("is not a known key").count(), 10);
    assert!(
        status.message().ends_with("and 30 more"),
        "{}",
        status.message()
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn windows_that_never_come_are_refused_at_parse_naming_the_key() {
    let (running, mut client) = scaler().await;
    let never = keda::metadata([
        ("start", "0 0 31 2 *"),
        ("end", "1 0 31 2 *"),
        ("desiredReplicas", "1"),
    ]);
    let status = client
        .is_active(keda::object("t", "never", never))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("metadata key `end`")
            || status.message().contains("metadata key `start`"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("does not occur within two years"),
        "{}",
        status.message()
    );
    let windows = keda::metadata([(
        "windows",
        "0 8 * * * -> 0 9 * * * = 1; 0 0 30 2 * -> 0 1 30 2 * = 2",
    )]);
    let status = client
        .is_active(keda::object("t", "never-2", windows))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("metadata key `windows`: window 2:"),
        "{}",
        status.message()
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn new_metadata_is_parsed_and_cron_searched_off_the_async_workers() {
    let (running, mut client) = scaler().await;
    let obj = keda::object("t", "offloaded", cron(&[("desiredReplicas", "3")]));
    let before = offload::runs(Work::Metadata);
    client.is_active(obj.clone()).await.expect("an answer");
    // One parse and one first search, both on blocking threads.
    assert!(offload::runs(Work::Metadata) >= before + 2);
    running.shutdown().await.unwrap();
}
