//! Resident memory of `blend-scaler serve`: idle, and with 10,000 ScaledObjects tracked.
//!
//! `cargo bench --bench memory [-- --objects 10000 --namespaces 20 --prometheus-servers 5
//! --queries 2000 --baseline PATH]`
//!
//! The scaler runs as its own process (the binary cargo built with this bench); its `VmRSS`
//! is read from `/proc/PID/status`, and 10 s after the last poll its two parts, `RssFile`
//! (code pages, libraries) and `RssAnon` (heap, stacks, the allocator's free memory). Every
//! object blends all three signals, each with its own metadata: a queue of its own in one of
//! `namespaces` Service Bus namespaces (one management API double each, in this process), one
//! of `queries` distinct PromQL queries spread over `prometheus-servers` fake Prometheus APIs
//! (a different threshold per object), and business-hours windows in one of eight time zones.
//! KEDA's first poll (`GetMetricSpec`, `GetMetrics`, `IsActive`) registers each object; two
//! more polls follow while the background refreshes run, then 40 s without one (longer than
//! KEDA's default 30 s polling interval), and resident memory is sampled throughout.
//!
//! `--scaler PATH` measures another build instead of the one cargo built with this bench
//! (whose default features carry `demo` and `simulate`): `scripts/bench memory` passes the
//! image's build (the Dockerfile's profile and features), so the figures are those of what
//! ships. `--baseline PATH` runs another `blend-scaler` build (say main's, copied before a
//! change) through the same steps against the same doubles, one after the other (the baseline
//! first, then this build; `--rounds N` alternates them N times and keeps each one's median),
//! and prints both columns in one table.
//!
//! Both builds run with the allocator settings the image ships (the Dockerfile's
//! `GLIBC_TUNABLES`), so the figures are those of what ships; `--allocator glibc-default`
//! runs them with glibc's defaults instead. `--scaler-env K=V,…` adds to either.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use blend_scaler_testkit::servicebus::ServiceBusDouble;
use parking_lot::Mutex;
use support::Args;
use tonic::transport::{Channel, Endpoint};

const ZONES: [&str; 8] = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
];

fn main() {
    let args = Args::parse();
    let n: usize = args.get("objects", 10_000);
    let namespaces: usize = args.get("namespaces", 20);
    let servers: usize = args.get("prometheus-servers", 5);
    let queries: usize = args.get("queries", 2_000);
    // KEDA calls each object from its own loop: effectively unbounded concurrency.
    let concurrency: usize = args.get("concurrency", 1_000);
    let scaler_env = args.string("scaler-env", "");
    let allocator = args.string("allocator", "shipped");
    let baseline = args.string("baseline", "");
    let rounds: usize = args.get("rounds", 1);
    let rt = support::runtime();
    let mut env = support::allocator_env(&allocator);
    // `--scaler-env K=V,K2=V2`: extra environment for the scaler.
    env.extend(
        scaler_env
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    eprintln!(
        "memory: {n} objects, {namespaces} Service Bus namespaces, {queries} queries on \
         {servers} Prometheus servers; {}",
        support::machine()
    );
    let mut builds = Vec::new();
    if !baseline.is_empty() {
        builds.push(("baseline", baseline.clone()));
    }
    let scaler = args.string("scaler", support::scaler_binary());
    builds.push(("this build", scaler));
    rt.block_on(run(
        Shape {
            n,
            namespaces,
            servers,
            queries,
            concurrency,
        },
        &env,
        &builds,
        rounds.max(1),
    ));
}

/// What the bench tracks and how hard KEDA's first poll comes.
#[derive(Clone, Copy)]
struct Shape {
    n: usize,
    namespaces: usize,
    servers: usize,
    queries: usize,
    concurrency: usize,
}

async fn run(shape: Shape, env: &[(String, String)], builds: &[(&str, String)], rounds: usize) {
    let Shape {
        n,
        namespaces,
        servers,
        queries,
        ..
    } = shape;
    let mut doubles = Vec::new();
    for _ in 0..namespaces {
        doubles.push(ServiceBusDouble::start().await.unwrap());
    }
    let mut proms = Vec::new();
    for _ in 0..servers {
        proms.push(support::FakePrometheus::start(120.0).await);
    }
    let objects: Vec<ScaledObjectRef> = (0..n)
        .map(|i| {
            let double = &doubles[i % namespaces];
            let queue = format!("queue-{:05}", i / namespaces);
            double.set_queue(&queue, (i % 40) as u64);
            // Each query lives on one server (i % queries decides both).
            let q = i % queries;
            let prom = &proms[q % servers];
            let m: HashMap<String, String> = [
                (
                    "scalerAddress",
                    "blend-scaler.blend-scaler.svc.cluster.local:9090".to_string(),
                ),
                ("endpoint", double.endpoint()),
                ("connectionFromEnv", double.connection_string()),
                ("queueName", queue),
                ("messageCount", format!("{}", 5 + i % 20)),
                ("serverAddress", prom.url()),
                (
                    "query",
                    format!(
                        "sum(rate(http_requests_total{{namespace=\"team-{:03}\",app=\"app-{q:05}\"}}[2m]))",
                        q % 200
                    ),
                ),
                ("threshold", format!("{}", 50 + i % 150)),
                ("timezone", ZONES[i % ZONES.len()].to_string()),
                ("start", "0 8 * * 1-5".into()),
                ("end", "0 20 * * 1-5".into()),
                ("desiredReplicas", format!("{}", 1 + i % 5)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            ScaledObjectRef {
                name: format!("app-{i:05}"),
                namespace: format!("team-{:03}", i % 200),
                scaler_metadata: m,
            }
        })
        .collect();
    let objects = Arc::new(objects);

    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // Per build, per row: the figure of every round.
    let mut figures: Vec<Vec<Vec<u64>>> = vec![Vec::new(); builds.len()];
    let mut states: Vec<String> = Vec::new();
    let mut tracked = Vec::new();
    for round in 0..rounds {
        for (b, (label, binary)) in builds.iter().enumerate() {
            eprintln!("  round {}, {label} ({binary}):", round + 1);
            let (rows, count) = measure(binary, &env, &objects, shape).await;
            states = rows.iter().map(|(state, _)| state.clone()).collect();
            if figures[b].is_empty() {
                figures[b] = vec![Vec::new(); rows.len()];
            }
            for (i, (_, kib)) in rows.into_iter().enumerate() {
                figures[b][i].push(kib);
            }
            tracked.push(format!("{label} {count}"));
        }
    }

    println!();
    println!(
        "Resident memory of blend-scaler serve (VmRSS), {n} ScaledObjects with all three \
         signals ({namespaces} Service Bus namespaces, {queries} queries on {servers} \
         Prometheus servers), scaler environment {}; tracked per /metrics: {}{}:",
        if env.is_empty() {
            "glibc's defaults".to_string()
        } else {
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
        tracked.join(", "),
        if rounds > 1 {
            format!("; median of {rounds} rounds")
        } else {
            String::new()
        }
    );
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let median = |v: &[u64]| {
        let mut v: Vec<f64> = v.iter().map(|&k| k as f64).collect();
        support::median(&mut v) as u64
    };
    let labels: Vec<&str> = builds.iter().map(|(label, _)| *label).collect();
    if builds.len() == 1 {
        println!("| state | VmRSS |");
        println!("| --- | ---: |");
    } else {
        println!("| state | {} | ratio |", labels.join(" | "));
        println!("| --- |{} ---: |", " ---: |".repeat(labels.len()));
    }
    for (i, state) in states.iter().enumerate() {
        let values: Vec<u64> = figures.iter().map(|f| median(&f[i])).collect();
        let cells: Vec<String> = values.iter().map(|&k| mib(k)).collect();
        match values.as_slice() {
            [base, this] => println!(
                "| {state} | {} | {:.2} |",
                cells.join(" | "),
                *this as f64 / (*base).max(1) as f64
            ),
            _ => println!("| {state} | {} |", cells.join(" | ")),
        }
    }
    drop(doubles);
}

/// One build through the steps: idle, KEDA's first poll, two more polls with refreshes
/// between them, and a pause. Rows of (state, VmRSS in KiB), and the tracked count it reports.
async fn measure(
    binary: &str,
    env: &[(&str, &str)],
    objects: &Arc<Vec<ScaledObjectRef>>,
    shape: Shape,
) -> (Vec<(String, u64)>, String) {
    let n = shape.n;
    let scaler = support::start_scaler_at(binary, env);
    let pid = scaler.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = scaler.rss_kib();

    // Sample RSS every 100 ms for the peak.
    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let rss = support::rss_kib(&format!("/proc/{pid}/status"));
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut channels = Vec::new();
    for _ in 0..2 {
        channels.push(
            Endpoint::from_shared(format!("http://{}", scaler.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let mut rows: Vec<(String, u64)> = vec![("idle (no ScaledObject)".into(), idle)];
    let started = Instant::now();
    let codes = poll_all(&channels, objects, true, shape.concurrency).await;
    eprintln!(
        "    first poll of {n} objects in {:.1} s: {codes:?}",
        started.elapsed().as_secs_f64()
    );
    rows.push((
        format!("{n} tracked, after KEDA's first poll"),
        scaler.rss_kib(),
    ));
    for pass in 2..=3 {
        // Two refresh intervals between polls: every group read again, twice.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let codes = poll_all(&channels, objects, false, shape.concurrency).await;
        eprintln!("    poll {pass}: {codes:?}");
        rows.push((format!("{n} tracked, after poll {pass}"), scaler.rss_kib()));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tracked = tracked(&scaler).await;
    let steady = scaler.rss_kib();
    rows.push((format!("{n} tracked, 10 s later"), steady));
    // Code pages and libraries against the heap, stacks and the allocator's free memory: what
    // a heap change can move and what it cannot.
    rows.push((
        "  of it file-backed (`RssFile`)".into(),
        scaler.status_kib("RssFile:"),
    ));
    rows.push((
        "  of it anonymous (`RssAnon`)".into(),
        scaler.status_kib("RssAnon:"),
    ));
    // KEDA's default `pollingInterval` is 30 s, three times this bench's gap between polls,
    // and reads follow KEDA's calls: what the scaler holds between two of its polls.
    tokio::time::sleep(Duration::from_secs(30)).await;
    rows.push((format!("{n} tracked, 40 s later"), scaler.rss_kib()));
    sampler.abort();
    rows.push((
        "peak (sampled every 100 ms)".into(),
        peak.load(Ordering::Relaxed),
    ));
    drop(channels);
    drop(scaler);
    (rows, tracked)
}

/// One KEDA poll of every object (with `GetMetricSpec` the first time), `concurrency` at a time;
/// counts answers by gRPC code.
async fn poll_all(
    channels: &[Channel],
    objects: &Arc<Vec<ScaledObjectRef>>,
    first: bool,
    concurrency: usize,
) -> BTreeMap<String, u64> {
    let codes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut client = ExternalScalerClient::new(channels[t % channels.len()].clone());
        let (objects, codes, next) = (objects.clone(), codes.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(o) = objects.get(i) else { break };
                let record = |r: Result<(), tonic::Status>| {
                    let code = r.map_or_else(|s| format!("{:?}", s.code()), |_| "Ok".into());
                    *codes.lock().entry(code).or_default() += 1;
                };
                if first {
                    record(client.get_metric_spec(o.clone()).await.map(|_| ()));
                }
                record(
                    client
                        .get_metrics(GetMetricsRequest {
                            scaled_object_ref: Some(o.clone()),
                            metric_name: "blended-replicas".into(),
                        })
                        .await
                        .map(|_| ()),
                );
                record(client.is_active(o.clone()).await.map(|_| ()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(codes).unwrap().into_inner()
}

/// `blend_scaler_tracked_scaledobjects` from the scaler's `/metrics`.
async fn tracked(scaler: &support::Proc) -> String {
    let Some(addr) = scaler.http_addr else {
        return "unknown".into();
    };
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .map(|r| r.text());
    let text = match body {
        Ok(t) => t.await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find(|l| l.starts_with("blend_scaler_tracked_scaledobjects"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("unknown")
        .to_string()
}
