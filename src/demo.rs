//! `demo`: the real server, simulated upstreams on loopback, and a KEDA-style client walking
//! through a scripted day on a fast virtual clock.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use blend_scaler_testkit::{ServiceBusDouble, StaticPrometheus};
use chrono::{DateTime, TimeZone, Utc};
use clap::Args;

use crate::binding::HostRules;
use crate::cache::RefreshConfig;
use crate::engine::EngineConfig;
use crate::output::outln;
use crate::proto::external_scaler_client::ExternalScalerClient;
use crate::proto::{GetMetricsRequest, ScaledObjectRef};
use crate::server::{self, ServerConfig};
use crate::signal::SignalKind;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Real milliseconds per virtual half hour.
    #[arg(long, default_value_t = 250)]
    pub step_ms: u64,
}

/// The scripted day: what each signal sees at a virtual time of day (hours, UTC).
pub struct Script;

impl Script {
    pub const METADATA: &'static [(&'static str, &'static str)] = &[
        ("queueName", "order-processing"),
        ("messageCount", "10"),
        ("activationMessageCount", "1"),
        (
            "query",
            "sum(rate(http_requests_total{app=\"order-processor\"}[2m]))",
        ),
        ("threshold", "200"),
        ("activationThreshold", "50"),
        ("timezone", "UTC"),
        // Business hours hold a floor; the lunch peak holds a higher one.
        (
            "windows",
            "0 8 * * 1-5 -> 0 20 * * 1-5 = 3; 0 11 * * 1-5 -> 0 14 * * 1-5 = 6",
        ),
        ("minReplicas", "1"),
        ("maxReplicas", "30"),
    ];

    /// HTTP requests per second at `hour` (0.0..24.0): a quiet night, a morning ramp, a
    /// lunch peak and an evening decline.
    pub fn request_rate(hour: f64) -> f64 {
        let peak = 1_000.0;
        let shape = match hour {
            h if h < 6.0 => 0.02,
            h if h < 12.0 => 0.02 + 0.98 * (h - 6.0) / 6.0,
            h if h < 13.0 => 1.0,
            h if h < 21.0 => 1.0 - 0.9 * (h - 13.0) / 8.0,
            _ => 0.1 - 0.08 * (hour - 21.0) / 3.0,
        };
        (peak * shape).round()
    }

    /// Active messages at `hour`: an afternoon batch import lands 240 messages at 15:00, and
    /// the consumers drain it over the next two hours.
    pub fn backlog(hour: f64) -> u64 {
        match hour {
            h if (15.0..17.0).contains(&h) => (240.0 * (1.0 - (h - 15.0) / 2.0)).round() as u64,
            h if (9.0..18.0).contains(&h) => 4,
            _ => 0,
        }
    }

    /// The demo day: Wednesday 2026-06-03.
    pub fn day_start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 3, 0, 0, 0).unwrap()
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let virtual_now = Arc::new(AtomicI64::new(Script::day_start().timestamp()));
    let clock_now = virtual_now.clone();
    let refresh = RefreshConfig {
        interval: Duration::from_millis((args.step_ms / 3).max(20)),
        ..RefreshConfig::default()
    };
    let config = ServerConfig {
        engine: EngineConfig {
            refresh: refresh.clone(),
            clock: Arc::new(move || {
                Utc.timestamp_opt(clock_now.load(Ordering::SeqCst), 0)
                    .single()
                    .unwrap_or_default()
            }),
            // The simulated upstreams listen on loopback over plain http.
            hosts: HostRules {
                allow_loopback: true,
                ..HostRules::default()
            },
            ..EngineConfig::default()
        },
        ..ServerConfig::loopback()
    };
    let prometheus = StaticPrometheus::start().await?;
    let bus = ServiceBusDouble::start().await?;
    bus.set_queue("order-processing", 0);
    let running = server::start_with_default_sources(config).await?;
    let mut client = ExternalScalerClient::connect(format!("http://{}", running.grpc_addr)).await?;

    let mut scaler_metadata: std::collections::HashMap<String, String> = Script::METADATA
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    scaler_metadata.insert("serverAddress".into(), prometheus.url());
    scaler_metadata.insert("endpoint".into(), bus.endpoint());
    // In a cluster KEDA resolves this from the workload's environment; the double checks the
    // SAS signature made from it.
    scaler_metadata.insert("connectionFromEnv".into(), bus.connection_string());
    let object = ScaledObjectRef {
        name: "order-processor".into(),
        namespace: "production".into(),
        scaler_metadata,
    };
    outln!(
        "blend-scaler demo: the real gRPC server on {}, called the way KEDA calls it.",
        running.grpc_addr
    )?;
    outln!("ScaledObject production/order-processor blends:")?;
    let mut keys: Vec<_> = object.scaler_metadata.iter().collect();
    keys.sort();
    for (k, v) in keys {
        let shown = if k == "connectionFromEnv" {
            "<connection string, redacted>"
        } else {
            v
        };
        outln!("  {k}: {shown}")?;
    }
    let spec = client.get_metric_spec(object.clone()).await?.into_inner();
    let spec = &spec.metric_specs[0];
    outln!(
        "GetMetricSpec: metric `{}`, target {} (AverageValue)\n",
        spec.metric_name,
        spec.target_size
    )?;
    outln!(
        "{:>5}  {:>8}  {:>6}  {:<11}  {:>17}  {:>17}  {:>8}",
        "time",
        "replicas",
        "active",
        "decided by",
        "servicebus",
        "prometheus",
        "cron"
    )?;

    let step = Duration::from_millis(args.step_ms);
    let mut last = None;
    for half_hour in 0..48 {
        let t = Script::day_start() + chrono::Duration::minutes(30 * half_hour);
        virtual_now.store(t.timestamp(), Ordering::SeqCst);
        let hour = f64::from(half_hour as u32) / 2.0;
        prometheus.set(Script::request_rate(hour));
        bus.set_queue("order-processing", Script::backlog(hour));
        tokio::time::sleep(step).await;
        let active = client.is_active(object.clone()).await?.into_inner().result;
        let value = client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(object.clone()),
                metric_name: spec.metric_name.clone(),
            })
            .await?
            .into_inner()
            .metric_values[0]
            .metric_value;
        let (_, decision) = running
            .engine
            .answer(crate::engine::ObjectRef {
                namespace: &object.namespace,
                name: &object.name,
                metadata: &object.scaler_metadata,
            })
            .await?;
        let cell = |kind: SignalKind, unit: &str| {
            decision
                .signals
                .iter()
                .find(|s| s.kind == kind)
                .map_or("-".to_string(), |s| {
                    format!("{}{unit} -> {}", s.value, s.replicas)
                })
        };
        let marker = if last != Some(value) { "*" } else { " " };
        last = Some(value);
        outln!(
            "{}  {:>7}{marker}  {:>6}  {:<11}  {:>17}  {:>17}  {:>8}",
            t.format("%H:%M"),
            value,
            if active { "yes" } else { "no" },
            decision.decided_by.map_or("-", SignalKind::as_str),
            cell(SignalKind::ServiceBus, " msg"),
            cell(SignalKind::Prometheus, " rps"),
            cell(SignalKind::Cron, ""),
        )?;
    }
    outln!("\n* the replica count changed. Each signal shows value -> replicas on its own;")?;
    outln!("  the answer is the largest (policy max), clamped to minReplicas..maxReplicas.")?;
    outln!(
        "\n{} KEDA calls were answered from the cache and never reached an upstream; the \
         background refresh (every {} ms here, about 10 virtual minutes) made {} Service Bus reads.",
        2 * 48 + 1,
        refresh.interval.as_millis(),
        bus.requests()
    )?;
    let text = running.engine.metrics().encode();
    for line in text.lines().filter(|l| {
        l.starts_with("blend_scaler_grpc_requests_total")
            || l.starts_with("blend_scaler_upstream_requests_total")
    }) {
        outln!("  {line}")?;
    }
    running.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
