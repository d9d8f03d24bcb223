//! `StreamIsActive` (README, "Answers to KEDA"): the current state at once, then `true` as soon as the cached
//! state turns active; an idle Service Bus entity is re-read at least every second while a
//! stream is open, and only at the normal interval once it is closed. Over the real server
//! and the Service Bus double, with the default refresh settings (5 s, 1 s while streamed).

#[path = "support/keda.rs"]
mod keda;

use std::sync::Arc;
use std::time::Duration;

use blend_scaler::cache::RefreshConfig;
use blend_scaler::engine::EngineConfig;
use blend_scaler::proto::{IsActiveResponse, ScaledObjectRef};
use blend_scaler::server::{Running, ServerConfig};
use blend_scaler_testkit::servicebus::{Fault, ServiceBusDouble};
use keda::Client;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Streaming;

/// How late a read or a message may come on a busy machine.
const JITTER: Duration = Duration::from_millis(300);

async fn scaler() -> (Running, Client) {
    let refresh = RefreshConfig::default();
    assert_eq!(refresh.interval, Duration::from_secs(5));
    assert_eq!(refresh.fast_interval, Duration::from_secs(1));
    let mut config = ServerConfig::loopback();
    config.engine = EngineConfig {
        refresh: refresh.clone(),
        ..EngineConfig::default()
    };
    keda::start_with_default_sources(config).await
}

fn consumer(double: &ServiceBusDouble) -> ScaledObjectRef {
    let md = keda::metadata([
        (keda::SCALER_ADDRESS.0, keda::SCALER_ADDRESS.1.to_string()),
        ("endpoint", double.endpoint()),
        ("connectionFromEnv", double.connection_string()),
        ("queueName", "orders".into()),
        ("messageCount", "5".into()),
        ("staleAfter", "3s".into()),
    ]);
    keda::object("streams", "consumer", md)
}

/// When each management request reached the double (as the double recorded it).
struct Arrivals {
    double: Arc<ServiceBusDouble>,
}

impl Arrivals {
    fn watch(double: Arc<ServiceBusDouble>) -> Self {
        Self { double }
    }

    fn between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        self.double
            .served()
            .into_iter()
            .map(|s| s.at)
            .filter(|t| *t >= from && *t < to)
            .collect()
    }
}

/// The next state the stream sends, within `within`.
async fn next_state(stream: &mut Streaming<IsActiveResponse>, within: Duration) -> Option<bool> {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(r))) => Some(r.result),
        Ok(Some(Err(status))) => panic!("the stream failed: {status:?}"),
        Ok(None) => panic!("the stream ended"),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_turns_true_within_a_second_and_keeps_the_idle_entity_read_every_second() {
    let double = Arc::new(ServiceBusDouble::start().await.unwrap());
    double.set_queue("orders", 0);
    let arrivals = Arrivals::watch(double.clone());
    let (running, mut client) = scaler().await;
    let obj = consumer(&double);

    let opened = Instant::now();
    let mut stream = client
        .stream_is_active(obj.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_state(&mut stream, Duration::from_millis(2_500)).await,
        Some(false),
        "the current state at once"
    );
    assert!(opened.elapsed() < Duration::from_millis(2_500));

    // Idle, streamed: the entity is re-read every second, not every 5 s.
    let watch_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let reads = arrivals.between(watch_from, Instant::now());
    let gaps: Vec<Duration> = reads.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(reads.len() >= 3, "idle reads while streamed: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(1) + JITTER),
        "at least every second: {gaps:?}"
    );
    assert_eq!(
        next_state(&mut stream, Duration::from_millis(10)).await,
        None,
        "nothing new to say while idle"
    );

    // A message arrives: `true` within the fast interval plus a read.
    double.set_queue("orders", 1);
    let arrived = Instant::now();
    assert_eq!(
        next_state(&mut stream, Duration::from_millis(1_500)).await,
        Some(true),
        "true within 1.5 s"
    );
    let took = arrived.elapsed();
    assert!(
        took <= Duration::from_secs(1) + JITTER,
        "active after {took:?}"
    );

    // Drained again: the stream says so too.
    double.set_queue("orders", 0);
    assert_eq!(
        next_state(&mut stream, Duration::from_millis(1_500)).await,
        Some(false)
    );

    // Closed: back to the normal 5 s interval (one read may already be scheduled).
    drop(stream);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let reads = arrivals.between(quiet_from, Instant::now());
    assert!(
        reads.len() <= 1,
        "{} reads in 3 s after the stream closed",
        reads.len()
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_never_makes_an_open_stream_say_inactive() {
    let double = Arc::new(ServiceBusDouble::start().await.unwrap());
    double.set_queue("orders", 7);
    let (running, mut client) = scaler().await;
    let obj = consumer(&double);
    let mut stream = client
        .stream_is_active(obj.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_state(&mut stream, Duration::from_millis(2_500)).await,
        Some(true)
    );

    // Every read fails from here; past staleAfter (3 s) the state is unknown, which is not
    // sent (KEDA would act on a `false`), and the stream stays open.
    double.inject(Fault::Garbage, None);
    assert_eq!(
        next_state(&mut stream, Duration::from_millis(4_500)).await,
        None,
        "no state from a failing upstream"
    );
    let status = client.is_active(obj.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // It recovers with the entity drained: now `false` is the truth, and it is sent (after
    // the failure backoff, which starts at the 5 s interval).
    double.clear_faults();
    double.set_queue("orders", 0);
    assert_eq!(
        next_state(&mut stream, Duration::from_millis(6_000)).await,
        Some(false)
    );
    running.shutdown().await.unwrap();
}
