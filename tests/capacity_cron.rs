//! The cap on distinct cron expressions over the wire (docs/security.md, "Capacity": 8 KiB of distinct
//! windows held 1.3 MB per object). A test binary of its own: the count is process-wide, so
//! no other test may parse expressions while this one counts.

#[path = "support/keda.rs"]
mod keda;

use blend_scaler::capacity::Capacity;
use blend_scaler::engine::SignalCaches;
use blend_scaler::metrics::Metrics;
use blend_scaler::server::ServerConfig;
use tonic::Code;

#[tokio::test]
async fn more_than_sixteen_windows_are_invalid_and_distinct_cron_texts_past_the_cap_are_refused() {
    let mut config = ServerConfig::loopback();
    config.engine.capacity = Capacity {
        max_cron_expressions: blend_scaler::cron::held_expressions() + 2,
        ..Capacity::default()
    };
    let (running, mut client) = keda::start(config, SignalCaches::default(), Metrics::new()).await;
    let windows = |n: usize| {
        (0..n)
            .map(|i| format!("1 {} * * * -> 1 {} * * * = 1", i % 12, 12 + i % 12))
            .collect::<Vec<_>>()
            .join(";")
    };
    let obj =
        |name: &str, w: String| keda::object("team-a", name, keda::metadata([("windows", w)]));
    let status = client
        .get_metric_spec(obj("many", windows(17)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 16"), "{status:?}");
    // Two new expressions fit; spelt otherwise, they are the same two; a third does not fit.
    client
        .get_metric_spec(obj("a", "7 1 * * * -> 7 13 * * * = 1".into()))
        .await
        .expect("fits");
    client
        .get_metric_spec(obj("b", "7  1 * * *  ->  7 13 *  * * = 2".into()))
        .await
        .expect("shared");
    let status = client
        .get_metric_spec(obj("c", "8 1 * * * -> 8 13 * * * = 1".into()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-cron-expressions"),
        "{status:?}"
    );
    // The refused plan's expressions were let go: nothing grew.
    assert_eq!(
        blend_scaler::cron::held_expressions(),
        running.engine.config().capacity.max_cron_expressions
    );
    running.shutdown().await.unwrap();
}
