//! gRPC throughput of blend-scaler against a do-nothing baseline, side by side in one run.
//!
//! `cargo bench --bench grpc_throughput [-- --rounds 8 --seconds 5 --tasks 64 --connections 4
//! --objects 1000 --metadata cron|servicebus|servicebus+cron]`
//!
//! Two server processes run at once: `blend-scaler serve` (the binary cargo built with this
//! bench, release settings) with warm caches, and this same binary re-run as a baseline tonic
//! server that implements the same proto with fixed answers and no work. One load client (in
//! this process: `tasks` concurrent tasks over `connections` HTTP/2 connections per server)
//! drives them in alternate rounds (A, B, A, B…) with the same requests, KEDA's pair of calls
//! (`GetMetrics`, `IsActive`) over `objects` distinct ScaledObjects. Every answer is checked:
//! an error or a wrong value is counted apart, never as an answer. The figure that matters
//! is the ratio, computed per adjacent pair of rounds; the absolute numbers depend on the
//! machine and on whatever else it runs.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use blend_scaler_testkit::servicebus::ServiceBusDouble;
use futures::StreamExt;
use support::Args;
use support::baseline::METRIC;
use tonic::transport::{Channel, Endpoint};

fn main() {
    if support::role().as_deref() == Some("baseline") {
        return support::baseline::main();
    }
    let args = Args::parse();
    let rounds: usize = args.get("rounds", 8);
    let seconds: f64 = args.get("seconds", 5.0);
    let tasks: usize = args.get("tasks", 64);
    let connections: usize = args.get("connections", 4);
    let n_objects: usize = args.get("objects", 1000);
    let kind = args.string("metadata", "cron");
    // The scaler's log filter: `info` is what `serve` runs with by default.
    let rust_log = args.string("rust-log", "info");

    let rt = support::runtime();
    rt.block_on(async move {
        let upstreams = Upstreams::start(&kind).await;
        let objects = Arc::new(objects(&kind, n_objects, &upstreams));
        let baseline = support::start_self("baseline", &[("RUST_LOG", &rust_log)]);
        let scaler = support::start_scaler(&[("RUST_LOG", &rust_log)]);

        let a = Target::connect("blend-scaler", &scaler, connections, &objects).await;
        let b = Target::connect("baseline", &baseline, connections, &objects).await;
        eprintln!(
            "grpc_throughput: {rounds} rounds of {seconds}s each, {tasks} tasks, {connections} \
             connections, {n_objects} objects ({kind}); {}",
            support::machine()
        );
        // One full warm-up round each: connections, HTTP/2 windows, allocator, caches.
        let warm = Duration::from_secs_f64(seconds);
        a.round(&objects, tasks, warm).await;
        b.round(&objects, tasks, warm).await;

        let dur = Duration::from_secs_f64(seconds);
        let mut results: Vec<(RoundResult, RoundResult)> = Vec::new();
        for r in 0..rounds {
            let ra = a.round(&objects, tasks, dur).await;
            let rb = b.round(&objects, tasks, dur).await;
            eprintln!(
                "  round {}: blend-scaler {:.0} rps ({:.1} us server CPU/call, client {:.1}), \
                 baseline {:.0} rps ({:.1} us server CPU/call, client {:.1}), ratio {:.3}",
                r + 1,
                ra.rps(),
                ra.cpu_us(),
                ra.client_us(),
                rb.rps(),
                rb.cpu_us(),
                rb.client_us(),
                ra.rps() / rb.rps()
            );
            results.push((ra, rb));
        }
        report(&results, &kind, n_objects, tasks, connections);
        let _ = upstreams; // the upstream doubles live until the report is out
    });
}

/// Per-object expected answers: (GetMetrics value, IsActive).
type Expected = Vec<(i64, bool)>;

struct Target {
    name: &'static str,
    /// The server's process, for its CPU time.
    pid: u32,
    channels: Vec<Channel>,
    expected: Arc<Expected>,
}

impl Target {
    async fn connect(
        name: &'static str,
        server: &support::Proc,
        connections: usize,
        objects: &[ScaledObjectRef],
    ) -> Self {
        let mut channels = Vec::new();
        for _ in 0..connections {
            // Each `connect` is its own HTTP/2 connection.
            let ch = Endpoint::from_shared(format!("http://{}", server.addr))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap();
            channels.push(ch);
        }
        // The answers each object should get: for the scaler, what it says once its caches
        // are warm (polled until every object answers); for the baseline, its fixed answer.
        // Objects are registered 256 at a time, as KEDA's independent loops would: a
        // never-seen object waits for its group's next read (up to about a second).
        let client = ExternalScalerClient::new(channels[0].clone());
        let expected: Vec<(i64, bool)> = futures::stream::iter(objects.iter().cloned())
            .map(|o| {
                let mut client = client.clone();
                async move {
                    let started = Instant::now();
                    loop {
                        let spec = client.get_metric_spec(o.clone()).await;
                        let m = client
                            .get_metrics(GetMetricsRequest {
                                scaled_object_ref: Some(o.clone()),
                                metric_name: METRIC.into(),
                            })
                            .await;
                        let a = client.is_active(o.clone()).await;
                        match (spec, m, a) {
                            (Ok(_), Ok(m), Ok(a)) => {
                                let v = m.into_inner().metric_values[0].metric_value;
                                break (v, a.into_inner().result);
                            }
                            (s, m, a) if started.elapsed() > Duration::from_secs(10) => panic!(
                                "{name}: object {} never answered: {:?} {:?} {:?}",
                                o.name,
                                s.err(),
                                m.err(),
                                a.err()
                            ),
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            })
            .buffered(256)
            .collect()
            .await;
        Self {
            name,
            pid: server.pid(),
            channels,
            expected: Arc::new(expected),
        }
    }

    async fn round(
        &self,
        objects: &Arc<Vec<ScaledObjectRef>>,
        tasks: usize,
        dur: Duration,
    ) -> RoundResult {
        let next = Arc::new(AtomicUsize::new(0));
        let cpu_before = support::cpu_time(self.pid);
        let client_before = support::cpu_time(std::process::id());
        let started = Instant::now();
        let deadline = started + dur;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let mut client =
                ExternalScalerClient::new(self.channels[t % self.channels.len()].clone());
            let objects = objects.clone();
            let expected = self.expected.clone();
            let next = next.clone();
            handles.push(tokio::spawn(async move {
                let mut r = RoundResult::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    // KEDA's poll: GetMetrics, then IsActive, for each object in turn.
                    let i = (n / 2) % objects.len();
                    let o = &objects[i];
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    let good = if n.is_multiple_of(2) {
                        client
                            .get_metrics(GetMetricsRequest {
                                scaled_object_ref: Some(o.clone()),
                                metric_name: METRIC.into(),
                            })
                            .await
                            .map(|m| {
                                let m = m.into_inner();
                                m.metric_values.len() == 1
                                    && m.metric_values[0].metric_value == expected[i].0
                                    && m.metric_values[0].metric_value_float == expected[i].0 as f64
                            })
                    } else {
                        client
                            .is_active(o.clone())
                            .await
                            .map(|a| a.into_inner().result == expected[i].1)
                    };
                    let t1 = Instant::now();
                    if t1 > deadline {
                        break;
                    }
                    match good {
                        Ok(true) => {
                            r.ok += 1;
                            r.latencies_us.push((t1 - t0).as_micros() as u32);
                        }
                        Ok(false) => r.wrong += 1,
                        Err(_) => r.errors += 1,
                    }
                }
                r
            }));
        }
        let mut total = RoundResult::default();
        for h in handles {
            total.merge(h.await.unwrap());
        }
        total.elapsed = started.elapsed().min(dur);
        total.server_cpu = support::cpu_time(self.pid) - cpu_before;
        total.client_cpu = support::cpu_time(std::process::id()) - client_before;
        if total.errors + total.wrong > 0 {
            eprintln!(
                "  {}: {} errors, {} wrong answers (not counted)",
                self.name, total.errors, total.wrong
            );
        }
        total
    }
}

#[derive(Default)]
struct RoundResult {
    ok: u64,
    errors: u64,
    wrong: u64,
    latencies_us: Vec<u32>,
    elapsed: Duration,
    /// CPU time the server process used during the round (including calls still in flight
    /// at the deadline, a bias of at most `tasks` calls).
    server_cpu: Duration,
    /// CPU time of this process (the load client) during the round.
    client_cpu: Duration,
}

impl RoundResult {
    fn merge(&mut self, o: RoundResult) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.wrong += o.wrong;
        self.latencies_us.extend(o.latencies_us);
    }

    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU microseconds per answered call.
    fn cpu_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }

    /// Load-client CPU microseconds per answered call.
    fn client_us(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }
}

fn report(
    results: &[(RoundResult, RoundResult)],
    kind: &str,
    n_objects: usize,
    tasks: usize,
    connections: usize,
) {
    let summary = |pick: &dyn Fn(&(RoundResult, RoundResult)) -> &RoundResult| {
        let mut rps: Vec<f64> = results.iter().map(|p| pick(p).rps()).collect();
        let mut lat: Vec<u32> = results
            .iter()
            .flat_map(|p| pick(p).latencies_us.iter().copied())
            .collect();
        lat.sort_unstable();
        let errors: u64 = results.iter().map(|p| pick(p).errors + pick(p).wrong).sum();
        let mut cpu: Vec<f64> = results.iter().map(|p| pick(p).cpu_us()).collect();
        (
            support::median(&mut rps),
            support::median(&mut cpu),
            support::quantile(&lat, 0.5) as f64 / 1000.0,
            support::quantile(&lat, 0.99) as f64 / 1000.0,
            errors,
        )
    };
    let a = summary(&|p| &p.0);
    let b = summary(&|p| &p.1);
    let mut ratios: Vec<f64> = results.iter().map(|(a, b)| a.rps() / b.rps()).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(0.0, f64::max);
    let ratio = support::median(&mut ratios);
    println!();
    println!(
        "gRPC throughput, {kind} metadata, {n_objects} objects, {tasks} tasks over {connections} \
         connections, {} rounds each (alternating):",
        results.len()
    );
    println!(
        "| server | requests/s (median of rounds) | server CPU us/call | p50 ms | p99 ms | errors or wrong |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, x) in [("blend-scaler", a), ("baseline", b)] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.2} | {:.2} | {} |",
            x.0, x.1, x.2, x.3, x.4
        );
    }
    println!(
        "ratio blend-scaler / baseline: {ratio:.3} (median of {} adjacent pairs; range {min:.3}..{max:.3})",
        results.len()
    );
}

/// Distinct ScaledObjects with the metadata KEDA would send.
fn objects(kind: &str, n: usize, upstreams: &Upstreams) -> Vec<ScaledObjectRef> {
    const ZONES: [&str; 4] = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];
    (0..n)
        .map(|i| {
            let mut m: HashMap<String, String> = HashMap::new();
            m.insert(
                "scalerAddress".into(),
                "blend-scaler.blend-scaler.svc.cluster.local:9090".into(),
            );
            let cron = |m: &mut HashMap<String, String>| {
                m.insert("timezone".into(), ZONES[i % ZONES.len()].into());
                m.insert("start".into(), "0 8 * * 1-5".into());
                m.insert("end".into(), "0 20 * * 1-5".into());
                m.insert("desiredReplicas".into(), (1 + i % 5).to_string());
            };
            match kind {
                "cron" => cron(&mut m),
                other => {
                    upstreams.metadata(other, i, &mut m);
                    if other.contains("cron") {
                        cron(&mut m);
                    }
                }
            }
            ScaledObjectRef {
                name: format!("app-{i:05}"),
                namespace: format!("team-{:02}", i % 40),
                scaler_metadata: m,
            }
        })
        .collect()
}

/// Upstream doubles the scaler reads in the background (none for cron-only metadata): one
/// Service Bus namespace, a queue per object.
struct Upstreams {
    servicebus: Option<ServiceBusDouble>,
}

impl Upstreams {
    async fn start(kind: &str) -> Self {
        match kind {
            "cron" => Upstreams { servicebus: None },
            "servicebus" | "servicebus+cron" => Upstreams {
                servicebus: Some(ServiceBusDouble::start().await.unwrap()),
            },
            other => panic!("unknown --metadata {other} (cron, servicebus, servicebus+cron)"),
        }
    }

    fn metadata(&self, _kind: &str, i: usize, m: &mut HashMap<String, String>) {
        if let Some(double) = &self.servicebus {
            let queue = format!("queue-{i:05}");
            double.set_queue(&queue, (i % 97) as u64);
            m.insert("endpoint".into(), double.endpoint());
            m.insert("connectionFromEnv".into(), double.connection_string());
            m.insert("queueName".into(), queue);
            m.insert("messageCount".into(), "10".into());
        }
    }
}
