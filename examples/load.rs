//! Load run (not a test): many `StreamIsActive` streams held open plus continuous `GetMetrics`
//! from many clients, against a `blend-scaler serve` process reading the Service Bus double.
//! Reports errors, answers per second, and the server's resident memory over the run.
//!
//! `scripts/load` builds and runs it; flags: `--streams N --pollers N --seconds N --binary PATH`.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use blend_scaler_testkit::servicebus::ServiceBusDouble;
use support::{Server, free_port, status_kib};
use tonic::transport::{Channel, Endpoint};

mod support;

struct Args {
    streams: usize,
    pollers: usize,
    seconds: u64,
    binary: String,
}

fn args() -> Args {
    let mut a = Args {
        streams: 2_000,
        pollers: 64,
        seconds: 60,
        binary: "target/release/blend-scaler".into(),
    };
    support::flags(|flag, value| match flag {
        "--streams" => a.streams = value.parse().expect("--streams N"),
        "--pollers" => a.pollers = value.parse().expect("--pollers N"),
        "--seconds" => a.seconds = value.parse().expect("--seconds N"),
        "--binary" => a.binary = value,
        other => panic!("unknown flag {other}"),
    });
    a
}

/// 200 ScaledObjects over 20 queues of one namespace; streams and pollers share them.
fn object(double: &ServiceBusDouble, i: usize) -> ScaledObjectRef {
    let md: HashMap<String, String> = [
        ("endpoint", double.endpoint()),
        ("connectionFromEnv", double.connection_string()),
        ("queueName", format!("orders-{}", i % 20)),
        ("messageCount", "5".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ScaledObjectRef {
        name: format!("consumer-{}", i % 200),
        namespace: "load".into(),
        scaler_metadata: md,
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let double = ServiceBusDouble::start().await.expect("the double starts");
    for q in 0..20 {
        double.set_queue(&format!("orders-{q}"), (q % 3) as u64 * 7);
    }
    let (grpc, http) = (free_port(), free_port());
    let server = Server(
        Command::new(&a.binary)
            .args(["serve", "--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args([
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--log-format",
                "json",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (build it: cargo build --release)",
                    a.binary
                )
            }),
    );
    let pid = server.0.id();
    let url = format!("http://127.0.0.1:{grpc}");
    let mut channels = Vec::new();
    for _ in 0..8 {
        let endpoint = Endpoint::from_shared(url.clone()).unwrap();
        let ch = loop {
            match endpoint.connect().await {
                Ok(ch) => break ch,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        channels.push(ch);
    }
    // Warm: every object read once, so the run measures the cache, not first reads.
    let mut warm = ExternalScalerClient::new(channels[0].clone());
    for i in 0..200 {
        warm.get_metric_spec(object(&double, i))
            .await
            .expect("warm-up");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start = status_kib(pid, "VmRSS:");

    let answers = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stream_messages = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for i in 0..a.streams {
        let ch: Channel = channels[i % channels.len()].clone();
        let obj = object(&double, i);
        let (errors, msgs) = (errors.clone(), stream_messages.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ExternalScalerClient::new(ch);
            let mut stream = match client.stream_is_active(obj).await {
                Ok(s) => s.into_inner(),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.message()).await {
                    Err(_) => return,
                    Ok(Ok(Some(_))) => {
                        msgs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    for i in 0..a.pollers {
        let ch = channels[i % channels.len()].clone();
        let objects: Vec<_> = (0..200).map(|j| object(&double, j)).collect();
        let (answers, errors) = (answers.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ExternalScalerClient::new(ch);
            let mut j = i;
            while Instant::now() < deadline {
                let req = GetMetricsRequest {
                    scaled_object_ref: Some(objects[j % objects.len()].clone()),
                    metric_name: "blended-replicas".into(),
                };
                match client.get_metrics(req).await {
                    Ok(r) if r.get_ref().metric_values.len() == 1 => {
                        answers.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                j += a.pollers;
            }
        }));
    }
    let started = Instant::now();
    let mut peak = rss_start;
    // Under load once every stream is open: the figure the end of the run is held against.
    let mut rss_loaded = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = status_kib(pid, "VmRSS:");
        peak = peak.max(now);
        if rss_loaded.is_none() && started.elapsed() >= Duration::from_secs(5) {
            rss_loaded = Some(now);
        }
    }
    let rss_loaded = rss_loaded.unwrap_or(peak);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_end = status_kib(pid, "VmRSS:");
    let answered = answers.load(Ordering::Relaxed);
    println!(
        "streams {} pollers {} for {:.0} s: GetMetrics {:.0}/s, stream messages {}, errors {}",
        a.streams,
        a.pollers,
        elapsed,
        answered as f64 / elapsed,
        stream_messages.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "server RSS: idle {:.1} MiB, under load at 5 s {:.1} MiB, peak {:.1} MiB, end {:.1} MiB; \
         Service Bus reads {}",
        rss_start as f64 / 1024.0,
        rss_loaded as f64 / 1024.0,
        peak as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        double.requests()
    );
    drop(server);
    if errors.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}
