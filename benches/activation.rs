//! Activation latency: with a `StreamIsActive` stream open, the time from the Service Bus
//! double's active count going 0 to 1 until `true` arrives on the stream.
//!
//! `cargo bench --bench activation [-- --trials 20]`
//!
//! The real server runs in process with the default refresh settings (5 s, and 1 s while a
//! stream is open), against the in-process management-API double. Each trial waits a random
//! moment (seeded) so the change lands anywhere in the refresh cycle, flips the count, and
//! times the stream's `true`; then it sets the count back and waits for `false`.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use blend_scaler::engine::{EngineConfig, SignalCaches};
use blend_scaler::metrics::Metrics;
use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{IsActiveResponse, ScaledObjectRef};
use blend_scaler::server::{self, ServerConfig};
use blend_scaler_testkit::servicebus::ServiceBusDouble;
use support::{Args, Rng};
use tokio::time::Instant;

/// KEDA's default `pollingInterval`.
const KEDA_POLL: Duration = Duration::from_secs(30);

fn main() {
    let args = Args::parse();
    let trials: usize = args.get("trials", 20);
    let rt = support::runtime();
    eprintln!("activation: {trials} trials; {}", support::machine());
    let mut latencies = rt.block_on(run(trials));
    latencies.sort();
    let mut as_ms: Vec<f64> = latencies.iter().map(|d| support::ms(*d)).collect();
    let median = support::median(&mut as_ms);
    let max = as_ms.iter().copied().fold(0.0, f64::max);
    let min = as_ms.iter().copied().fold(f64::INFINITY, f64::min);
    println!();
    println!("Activation latency, Service Bus count 0 -> 1, {trials} trials:");
    println!("| path | median | max | min |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| blend-scaler `StreamIsActive` (external-push) | {:.0} ms | {:.0} ms | {:.0} ms |",
        median, max, min
    );
    println!(
        "| KEDA polling, default pollingInterval {} s (model: uniform over the interval) | {} ms | {} ms | 0 ms |",
        KEDA_POLL.as_secs(),
        KEDA_POLL.as_millis() / 2,
        KEDA_POLL.as_millis()
    );
    println!(
        "ratio of medians, KEDA poll / blend-scaler: {:.0}x",
        KEDA_POLL.as_secs_f64() * 500.0 / median
    );
}

async fn run(trials: usize) -> Vec<Duration> {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 0);
    let metrics = Metrics::new();
    let engine = EngineConfig {
        // The double listens on loopback over plain http.
        hosts: blend_scaler::binding::HostRules {
            allow_loopback: true,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    let sources = SignalCaches {
        servicebus: Some(blend_scaler::servicebus::source(
            engine.refresh.clone(),
            metrics.clone(),
            &blend_scaler::binding::HostRules::loopback(),
        )),
        ..SignalCaches::default()
    };
    let running = server::start(
        ServerConfig {
            http_addr: None,
            engine,
            ..ServerConfig::loopback()
        },
        sources,
        metrics,
    )
    .await
    .unwrap();
    let mut client = ExternalScalerClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    let metadata: HashMap<String, String> = [
        ("scalerAddress", "blend-scaler:9090".to_string()),
        ("endpoint", double.endpoint()),
        ("connectionFromEnv", double.connection_string()),
        ("queueName", "orders".into()),
        ("messageCount", "5".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let object = ScaledObjectRef {
        name: "orders".into(),
        namespace: "production".into(),
        scaler_metadata: metadata,
    };
    let mut stream = client.stream_is_active(object).await.unwrap().into_inner();
    assert!(!next(&mut stream).await, "an idle queue starts inactive");
    let mut rng = Rng::new(0xac71_7a7e);
    let mut out = Vec::with_capacity(trials);
    for trial in 0..trials {
        // Land the change anywhere in the 1 s refresh cycle (and a bit beyond).
        tokio::time::sleep(Duration::from_millis(200 + (rng.uniform() * 1300.0) as u64)).await;
        let t0 = Instant::now();
        double.set_queue("orders", 1);
        assert!(next(&mut stream).await, "trial {trial}: expected true");
        let took = t0.elapsed();
        eprintln!("  trial {}: {:.0} ms", trial + 1, support::ms(took));
        out.push(took);
        double.set_queue("orders", 0);
        assert!(!next(&mut stream).await, "trial {trial}: expected false");
    }
    drop(stream);
    running.shutdown().await.unwrap();
    out
}

/// The stream's next state, within 10 s.
async fn next(stream: &mut tonic::Streaming<IsActiveResponse>) -> bool {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no stream message within 10 s")
        .expect("stream error")
        .expect("stream ended")
        .result
}
