//! gRPC throughput of blend-scaler against a do-nothing baseline, driven by h2load (nghttp2's
//! C load generator), so the client is not what caps both sides.
//!
//! `cargo bench --bench grpc_h2load [-- --metadata cron|all --shapes 1x1,4x10,16x50
//! --rounds 3 --seconds 5 --requests N --method IsActive|GetMetrics --h2load /usr/bin/h2load
//! --before PATH --allocator glibc-default|shipped]`
//!
//! `--before PATH` runs another `blend-scaler` build (say main's, copied before a change) as a
//! third server in every round (this build, the baseline, then that one), so a change is
//! measured against what it changes in the same minutes of a shared machine: its rows give
//! each build's ratio to the baseline of the same round, and this build's to that one.
//!
//! `--allocator shipped` runs the scaler (and the `--before` build) with the Dockerfile's
//! `GLIBC_TUNABLES`, as the image runs it; the default, `glibc-default`, runs it with glibc's
//! defaults. The baseline always has glibc's defaults: it stands for a plain tonic server.
//!
//! `--requests N` sends exactly N calls per round (h2load `-n`, no warm-up) instead of running
//! for `--seconds`: under `valgrind --tool=callgrind` (`BLEND_BENCH_SCALER_WRAP`), two runs with
//! different N give the scaler's instructions per call as the difference of their totals over
//! the difference of N, the same on a loaded machine.
//!
//! Two server processes run at once: `blend-scaler serve` (release build) and this binary
//! re-run as the baseline (the proto with fixed answers, on the same transport code as
//! `serve`). One ScaledObject (`cron`: a cron window; `all`: Service Bus, Prometheus and cron,
//! against local doubles) is asked once over tonic until it answers, so the cache is warm;
//! then h2load sends the same call over `C` connections with `M` streams each, alternating
//! servers round by round (A, B, A, B…) with one second of h2load warm-up per round. The
//! scaler's own `blend_scaler_grpc_requests_total` must count no code but OK over the run;
//! the baseline cannot fail but by transport, which h2load counts. The ratio is the median of
//! adjacent pairs' requests per second; the absolute numbers depend on the machine.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use blend_scaler_testkit::servicebus::ServiceBusDouble;
use prost::Message;
use support::{Args, FakePrometheus, Proc};

struct Shape {
    connections: usize,
    streams: usize,
}

/// How long one h2load round runs.
#[derive(Clone, Copy)]
enum Length {
    Seconds(u64),
    Requests(u64),
}

impl std::fmt::Display for Length {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Length::Seconds(s) => write!(f, "{s}s"),
            Length::Requests(n) => write!(f, "{n} calls"),
        }
    }
}

#[derive(Default, Clone)]
struct Round {
    rps: f64,
    done: u64,
    failed: u64,
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() {
    if support::role().as_deref() == Some("baseline") {
        return support::baseline::main();
    }
    let args = Args::parse();
    let rounds: usize = args.get("rounds", 3);
    let seconds: u64 = args.get("seconds", 5);
    let requests: u64 = args.get("requests", 0);
    let length = if requests > 0 {
        Length::Requests(requests)
    } else {
        Length::Seconds(seconds)
    };
    let kind = args.string("metadata", "cron");
    let method = args.string("method", "IsActive");
    let h2load = args.string("h2load", "/usr/bin/h2load");
    let shapes: Vec<Shape> = args
        .string("shapes", "1x1,4x10,16x50")
        .split(',')
        .map(|s| {
            let (c, m) = s.split_once('x').expect("--shapes CxM,CxM");
            Shape {
                connections: c.parse().expect("connections"),
                streams: m.parse().expect("streams"),
            }
        })
        .collect();
    let rust_log = args.string("rust-log", "info");
    let before_binary = args.string("before", "");
    let allocator = args.string("allocator", "glibc-default");
    let mut scaler_env = support::allocator_env(&allocator);
    // In the output, so a saved table says which allocator setting it measured.
    match scaler_env.first() {
        Some((k, v)) => println!("scaler allocator: {allocator} ({k}={v})"),
        None => println!("scaler allocator: {allocator}"),
    }
    scaler_env.push(("RUST_LOG".into(), rust_log.clone()));
    let scaler_env: Vec<(&str, &str)> = scaler_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let rt = support::runtime();
    rt.block_on(async move {
        let doubles = Doubles::start(&kind).await;
        let object = doubles.object();
        let scaler = support::start_scaler(&scaler_env);
        let baseline = support::start_self("baseline", &[("RUST_LOG", &rust_log)]);
        let before = (!before_binary.is_empty())
            .then(|| support::start_scaler_at(&before_binary, &scaler_env));
        warm(&scaler, &object).await;
        warm(&baseline, &object).await;
        if let Some(before) = &before {
            warm(before, &object).await;
        }

        let body = tempfile::NamedTempFile::new().unwrap();
        let message = match method.as_str() {
            "IsActive" => object.encode_to_vec(),
            "GetMetrics" => GetMetricsRequest {
                scaled_object_ref: Some(object.clone()),
                metric_name: support::baseline::METRIC.into(),
            }
            .encode_to_vec(),
            other => panic!("unknown --method {other} (IsActive, GetMetrics)"),
        };
        let mut framed = vec![0u8];
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
        std::fs::write(body.path(), framed).unwrap();

        eprintln!(
            "grpc_h2load: {method}, {kind} metadata, {rounds} rounds of {length} per server \
             and shape; {}",
            support::machine()
        );
        let codes_before = grpc_codes(&scaler, &method).await;
        let mut table = Vec::new();
        let mut before_table = Vec::new();
        for shape in &shapes {
            let mut pairs = Vec::new();
            let mut before_pairs = Vec::new();
            for r in 0..rounds {
                let a = run(&h2load, &scaler, shape, length, body.path(), &method);
                let b = run(&h2load, &baseline, shape, length, body.path(), &method);
                if let Some(before) = &before {
                    let c = run(&h2load, before, shape, length, body.path(), &method);
                    eprintln!(
                        "  {}x{} round {r}: --before build {:.0} rps (p99 {:.2} ms, {:.1} us \
                         CPU/call), ratio {:.3}; this build / --before {:.3}",
                        shape.connections,
                        shape.streams,
                        c.rps,
                        c.p99_ms,
                        c.cpu_us,
                        c.rps / b.rps,
                        a.rps / c.rps
                    );
                    before_pairs.push((c, b.clone(), a.rps));
                }
                eprintln!(
                    "  {}x{} round {r}: blend-scaler {:.0} rps (p99 {:.2} ms, {:.1} us CPU/call), \
                     baseline {:.0} rps (p99 {:.2} ms, {:.1} us CPU/call), ratio {:.3}",
                    shape.connections,
                    shape.streams,
                    a.rps,
                    a.p99_ms,
                    a.cpu_us,
                    b.rps,
                    b.p99_ms,
                    b.cpu_us,
                    a.rps / b.rps
                );
                pairs.push((a, b));
            }
            table.push(pairs);
            before_table.push(before_pairs);
        }
        let codes_after = grpc_codes(&scaler, &method).await;
        let not_ok: u64 = codes_after
            .iter()
            .filter(|(code, _)| code.as_str() != "OK")
            .map(|(code, n)| n - codes_before.get(code).copied().unwrap_or(0))
            .sum();
        report(&shapes, &table, &kind, &method, not_ok);
        if before.is_some() {
            report_before(&shapes, &before_table, &before_binary);
        }
        drop(doubles);
    });
}

/// Upstream doubles for `--metadata all`; none for `cron`.
struct Doubles {
    servicebus: Option<ServiceBusDouble>,
    prometheus: Option<FakePrometheus>,
}

impl Doubles {
    async fn start(kind: &str) -> Self {
        match kind {
            "cron" => Self {
                servicebus: None,
                prometheus: None,
            },
            "all" => Self {
                servicebus: Some(ServiceBusDouble::start().await.unwrap()),
                prometheus: Some(FakePrometheus::start(7.0).await),
            },
            other => panic!("unknown --metadata {other} (cron, all)"),
        }
    }

    /// The ScaledObject every request names, with the metadata KEDA would send.
    fn object(&self) -> ScaledObjectRef {
        let mut m: HashMap<String, String> = HashMap::from([
            (
                "scalerAddress".into(),
                "blend-scaler.blend-scaler.svc.cluster.local:9090".into(),
            ),
            ("timezone".into(), "Europe/Berlin".into()),
            ("start".into(), "0 8 * * 1-5".into()),
            ("end".into(), "0 20 * * 1-5".into()),
            ("desiredReplicas".into(), "3".into()),
        ]);
        if let Some(bus) = &self.servicebus {
            bus.set_queue("orders", 42);
            m.insert("endpoint".into(), bus.endpoint());
            m.insert("connectionFromEnv".into(), bus.connection_string());
            m.insert("queueName".into(), "orders".into());
            m.insert("messageCount".into(), "10".into());
        }
        if let Some(prom) = &self.prometheus {
            m.insert("serverAddress".into(), prom.url());
            m.insert("query".into(), "sum(rate(http_requests_total[2m]))".into());
            m.insert("threshold".into(), "5".into());
        }
        ScaledObjectRef {
            name: "orders".into(),
            namespace: "team-01".into(),
            scaler_metadata: m,
        }
    }
}

/// Asks until both calls answer, so h2load only ever meets a warm cache.
async fn warm(server: &Proc, object: &ScaledObjectRef) {
    let mut client = ExternalScalerClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    for _ in 0..100 {
        let metrics = client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(object.clone()),
                metric_name: support::baseline::METRIC.into(),
            })
            .await;
        let active = client.is_active(object.clone()).await;
        if metrics.is_ok() && active.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never answered both calls", server.addr);
}

/// `blend_scaler_grpc_requests_total{method}` by code, from the scaler's `/metrics`.
async fn grpc_codes(scaler: &Proc, method: &str) -> HashMap<String, u64> {
    let addr = scaler.http_addr.expect("serve has an HTTP address");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("blend_scaler_grpc_requests_total{{method=\"{method}\",code=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (code, value) = rest.split_once("\"} ")?;
            Some((code.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// One h2load run against `server`.
fn run(
    h2load: &str,
    server: &Proc,
    shape: &Shape,
    length: Length,
    body: &std::path::Path,
    method: &str,
) -> Round {
    let log = tempfile::NamedTempFile::new().unwrap();
    let cpu_before = support::cpu_time(server.pid());
    let mut h2load = Command::new(h2load);
    match length {
        Length::Seconds(s) => h2load.args(["-D", &s.to_string(), "--warm-up-time", "1"]),
        Length::Requests(n) => h2load.args(["-n", &n.to_string()]),
    };
    let out = h2load
        .args(["-c", &shape.connections.to_string()])
        .args(["-m", &shape.streams.to_string()])
        .args(["-t", "1"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg("--log-file")
        .arg(log.path())
        .arg(format!(
            "http://{}/externalscaler.ExternalScaler/{method}",
            server.addr
        ))
        .output()
        .expect("running h2load (Debian: nghttp2-client)");
    let cpu = support::cpu_time(server.pid()) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    let mut round = Round::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            round.rps = rest
                .split(", ")
                .nth(1)
                .and_then(|v| v.strip_suffix(" req/s"))
                .and_then(|v| v.parse().ok())
                .expect("h2load's req/s");
        }
        if let Some(rest) = line.strip_prefix("requests: ") {
            let field = |name: &str| -> u64 {
                rest.split(", ")
                    .find_map(|f| f.strip_suffix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            round.done = field(" succeeded");
            round.failed = field(" failed") + field(" errored") + field(" timeout");
        }
    }
    let mut latencies: Vec<u64> = std::fs::read_to_string(log.path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    latencies.sort_unstable();
    if !latencies.is_empty() {
        round.p50_ms = support::quantile(&latencies, 0.5) as f64 / 1000.0;
        round.p99_ms = support::quantile(&latencies, 0.99) as f64 / 1000.0;
    }
    let served = match length {
        // The warm-up second is served too but not counted by h2load: CPU per call over all.
        Length::Seconds(s) => round.rps * (s as f64 + 1.0),
        Length::Requests(n) => n as f64,
    };
    round.cpu_us = cpu.as_secs_f64() * 1e6 / served.max(1.0);
    round
}

/// `median (min to max)` of per-round ratios.
/// The median of one figure over a shape's rounds.
fn median_of<T>(rounds: &[T], figure: impl Fn(&T) -> f64) -> f64 {
    let mut v: Vec<f64> = rounds.iter().map(figure).collect();
    support::median(&mut v)
}

fn spread(mut v: Vec<f64>) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{:.3} ({min:.3} to {max:.3})", support::median(&mut v))
}

/// The `--before` build against the same rounds' baseline, and this build against it.
fn report_before(shapes: &[Shape], table: &[Vec<(Round, Round, f64)>], binary: &str) {
    println!();
    println!("The --before build ({binary}) in the same rounds (third of each):");
    println!(
        "| connections x streams | --before requests/s (median) | CPU us/call | p99 ms | ratio to baseline (range) | p99 ratio | this build / --before (range) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (shape, rounds) in shapes.iter().zip(table) {
        let med = |f: &dyn Fn(&(Round, Round, f64)) -> f64| median_of(rounds, f);
        let range =
            |f: &dyn Fn(&(Round, Round, f64)) -> f64| spread(rounds.iter().map(f).collect());
        println!(
            "| {}x{} | {:.0} | {:.1} | {:.2} | {} | {:.2} | {} |",
            shape.connections,
            shape.streams,
            med(&|r| r.0.rps),
            med(&|r| r.0.cpu_us),
            med(&|r| r.0.p99_ms),
            range(&|r| r.0.rps / r.1.rps),
            med(&|r| r.0.p99_ms / r.1.p99_ms.max(1e-3)),
            range(&|r| r.2 / r.0.rps),
        );
    }
}

fn report(shapes: &[Shape], table: &[Vec<(Round, Round)>], kind: &str, method: &str, not_ok: u64) {
    println!();
    println!(
        "gRPC throughput under h2load, {method}, {kind} metadata, one ScaledObject, \
         {} rounds per server and shape (alternating):",
        table.first().map_or(0, Vec::len)
    );
    println!(
        "| connections x streams | server | requests/s (median) | server CPU us/call | p50 ms | p99 ms | failed | ratio (range) | p99 ratio |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (shape, pairs) in shapes.iter().zip(table) {
        let med = |f: &dyn Fn(&(Round, Round)) -> f64| median_of(pairs, f);
        let ratio = spread(pairs.iter().map(|(a, b)| a.rps / b.rps).collect());
        let p99_ratio = med(&|p| p.0.p99_ms / p.1.p99_ms.max(1e-3));
        let failed = |pick: &dyn Fn(&(Round, Round)) -> u64| pairs.iter().map(pick).sum::<u64>();
        println!(
            "| {}x{} | blend-scaler | {:.0} | {:.1} | {:.2} | {:.2} | {} | {ratio} | {p99_ratio:.2} |",
            shape.connections,
            shape.streams,
            med(&|p| p.0.rps),
            med(&|p| p.0.cpu_us),
            med(&|p| p.0.p50_ms),
            med(&|p| p.0.p99_ms),
            failed(&|p| p.0.failed),
        );
        println!(
            "| | baseline | {:.0} | {:.1} | {:.2} | {:.2} | {} | | |",
            med(&|p| p.1.rps),
            med(&|p| p.1.cpu_us),
            med(&|p| p.1.p50_ms),
            med(&|p| p.1.p99_ms),
            failed(&|p| p.1.failed),
        );
    }
    let answered: u64 = table.iter().flatten().map(|(a, _)| a.done).sum::<u64>();
    println!(
        "blend-scaler answered {answered} counted calls; calls it answered with a code other than OK: {not_ok}"
    );
    assert_eq!(not_ok, 0, "blend-scaler answered errors under load");
}
