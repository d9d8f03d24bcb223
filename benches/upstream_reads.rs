//! Upstream amplification: how many upstream reads KEDA's call pattern causes, through
//! blend-scaler, beside what KEDA's built-in triggers would make for the same objects.
//!
//! `cargo bench --bench upstream_reads [-- --signal SIGNAL --objects 1,10,100,1000
//! --scale 20 --minutes 10]`, SIGNAL one of `servicebus` (a queue per object),
//! `servicebus-topics` (a quarter of them subscriptions over five topics), `prometheus` (a
//! query per object), `prometheus-shared` (one query for all).
//!
//! The real server runs in process (the same `server::start` as `serve`) against a local
//! upstream double that counts requests. Each ScaledObject is called the way KEDA calls an
//! external scaler: `GetMetricSpec` once, a poll every 30 s (`IsActive` + `GetMetrics`) and an
//! HPA read every 15 s (`GetMetrics`), with phases spread uniformly (seeded) over those
//! periods, as KEDA's independent per-object loops are when the scaler (re)starts.
//!
//! Each size runs twice. The first simulated minute runs in real time: it is when every
//! object is new to the scaler, and what it costs depends on real-time details (a 5 ms
//! coalescing pause, the read's own duration). Then the whole 10 minutes run on a real
//! schedule shortened `--scale` times (default 20): every duration of the model (poll, HPA
//! period, refresh interval 5 s, fast interval 1 s, the 10 minutes) is divided by the same
//! factor. Reads follow KEDA's calls (docs/servicebus.md, "Requests"), so that run's reads after the first minute are
//! counted as they are, from the double's request log, and reported per KEDA polling interval
//! (30 s); the 10-minute total is the first minute's reads plus those. Paused tokio time cannot
//! be used: it would jump the clock while a request is on the loopback socket.
//!
//! A read counts as after the first minute when the call it follows is: the latest KEDA call
//! for the same item (query; a Service Bus namespace's objects are one item) before the read
//! arrived. The cache reads an item only after a call since its previous read, so each read
//! follows a call of its own, and a call just before the minute's end that waits for its read
//! (a second poll, its value lapsed) is the first minute's, as the real-time run counts it. A
//! cut by the instant instead counted such reads in both runs (3 of 2,000 at 100 queries).
//! Both runs count until a refresh and a fast interval after the last call ended, by when
//! every read a call was due is made.
//!
//! `--cached-metrics true` sets KEDA's `useCachedMetrics` on every trigger, blend-scaler's
//! `external` trigger and the built-in ones alike: the HPA's reads are then answered from
//! KEDA's own cache of the last poll and reach neither the scaler nor the upstream, so KEDA
//! asks once per polling interval. It is what a user of the built-in triggers who minds the
//! upstream's load sets, so the comparison is made both ways.
//!
//! The built-in trigger model: KEDA's `azure-servicebus` and `prometheus` scalers read their
//! upstream once per trigger each time KEDA asks the trigger (`GetMetricsAndActivity`): once
//! per poll and once per HPA read, counted from the calls actually made in the run. Counting
//! each gRPC call of the pattern separately (`IsActive` and `GetMetrics` on a poll) would give
//! 4/3 of that; the table uses the lower.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blend_scaler::cache::RefreshConfig;
use blend_scaler::engine::{EngineConfig, SignalCaches};
use blend_scaler::metrics::Metrics;
use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use blend_scaler::server::{self, ServerConfig};
use blend_scaler_testkit::servicebus::ServiceBusDouble;
use support::{Args, Rng};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;

const POLL: Duration = Duration::from_secs(30);
const HPA: Duration = Duration::from_secs(15);
const REFRESH: Duration = Duration::from_secs(5);
const FAST: Duration = Duration::from_secs(1);
/// Reads in the first simulated minute are startup; the steady state is what follows.
const WARMUP: Duration = Duration::from_secs(60);

fn main() {
    let args = Args::parse();
    let signal = args.string("signal", "servicebus");
    let cached: bool = args.get("cached-metrics", false);
    let scale: f64 = args.get("scale", 20.0);
    let minutes: f64 = args.get("minutes", 10.0);
    let sizes: Vec<usize> = args
        .string("objects", "1,10,100,1000")
        .split(',')
        .map(|s| s.trim().parse().expect("--objects N,N,…"))
        .collect();
    let rt = support::runtime();
    eprintln!(
        "upstream_reads: {signal}, {minutes} simulated minutes at 1/{scale} speed; {}",
        support::machine()
    );
    let mut rows = Vec::new();
    for &n in &sizes {
        // The first minute in real time: startup depends on how new objects arrive, and on
        // a real-time coalescing pause in the cache that a shortened schedule would not
        // shorten with it.
        let startup = rt.block_on(scenario(
            &signal,
            n,
            cached,
            1.0,
            WARMUP.as_secs_f64() / 60.0,
        ));
        eprintln!("  {n} objects, first minute in real time: {startup:?}");
        let steady = rt.block_on(scenario(&signal, n, cached, scale, minutes));
        eprintln!("  {n} objects, {minutes} minutes at 1/{scale}: {steady:?}");
        rows.push((n, startup, steady));
    }
    report(&signal, cached, minutes, scale, &rows);
}

/// What one scenario counted (in simulated terms).
#[derive(Debug, Default)]
struct Counts {
    /// Upstream requests blend-scaler made, all and after the first minute.
    reads: u64,
    steady_reads: u64,
    /// KEDA's calls: polls and HPA reads (all, and after the first minute).
    polls: u64,
    hpa_reads: u64,
    steady_polls: u64,
    steady_hpa_reads: u64,
    /// Distinct upstream items (entities, queries) the objects watch.
    items: usize,
    /// gRPC calls that failed (none expected), by status code.
    errors: ErrorCodes,
    /// The reads a KEDA polling interval needs at most for these objects after the first
    /// minute: one list pass (docs/servicebus.md, "Requests": `ceil(entities / 100)` pages plus one per watched topic)
    /// or one read per distinct query, per interval KEDA asks at (never shorter than the
    /// refresh interval).
    bound_per_poll: u64,
}

/// Failed gRPC calls by status code, so a failure's cause is named in the report.
#[derive(Default)]
struct ErrorCodes {
    by_code: [AtomicU64; 17],
    /// The first failure's message, which names the cause the code alone does not.
    first: std::sync::OnceLock<String>,
}

impl ErrorCodes {
    fn count<T>(&self, result: Result<T, tonic::Status>) {
        if let Err(status) = result {
            let code = (status.code() as usize).min(self.by_code.len() - 1);
            self.by_code[code].fetch_add(1, Ordering::Relaxed);
            let _ = self.first.set(status.message().to_string());
        }
    }

    fn total(&self) -> u64 {
        self.by_code.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// `0`, or the total with its codes and the first message: `7403 (Unavailable 7403: "…")`.
    fn describe(&self) -> String {
        let by_code: Vec<String> = (0..self.by_code.len())
            .filter_map(|i| {
                let n = self.by_code[i].load(Ordering::Relaxed);
                (n > 0).then(|| format!("{:?} {n}", tonic::Code::from_i32(i as i32)))
            })
            .collect();
        match by_code.is_empty() {
            true => "0".into(),
            false => format!(
                "{} ({}: {:?})",
                self.total(),
                by_code.join(", "),
                self.first.get().map(String::as_str).unwrap_or_default()
            ),
        }
    }
}

impl std::fmt::Debug for ErrorCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

trait Upstream: Send + Sync {
    /// Every request so far: when it arrived, and the item it read ([`item_of`]).
    fn reads(&self) -> Vec<(Instant, String)>;
}

impl Upstream for ServiceBusDouble {
    fn reads(&self) -> Vec<(Instant, String)> {
        // One namespace: a list page or an entity's read serves any of its objects.
        self.served()
            .into_iter()
            .map(|s| (s.at, String::new()))
            .collect()
    }
}

impl Upstream for support::FakePrometheus {
    fn reads(&self) -> Vec<(Instant, String)> {
        self.query_log()
    }
}

/// The item an object's calls ask for, as [`Upstream::reads`] names it: its query, or for
/// Service Bus the namespace (every object of the bench shares one).
fn item_of(object: &ScaledObjectRef) -> String {
    object
        .scaler_metadata
        .get("query")
        .cloned()
        .unwrap_or_default()
}

/// How many of `reads` follow a call at or after `from`: each read goes with the latest call
/// for its item before it arrived (a read before any call, which the cache never makes, by
/// its own instant).
fn reads_after(
    reads: &[(Instant, String)],
    calls: &HashMap<String, Vec<Instant>>,
    from: Instant,
) -> u64 {
    let follows = |(at, item): &(Instant, String)| {
        calls
            .get(item)
            .and_then(|c| c[..c.partition_point(|t| t <= at)].last())
            .unwrap_or(at)
            >= &from
    };
    reads.iter().filter(|r| follows(r)).count() as u64
}

async fn scenario(signal: &str, n: usize, cached: bool, scale: f64, minutes: f64) -> Counts {
    let s = move |d: Duration| d.div_f64(scale);
    let refresh = RefreshConfig {
        interval: s(REFRESH),
        fast_interval: s(FAST),
        ..RefreshConfig::default()
    };
    let metrics = Metrics::new();
    let mut sources = SignalCaches::default();
    let upstream: Box<dyn Upstream>;
    let objects: Vec<ScaledObjectRef>;
    let items: usize;
    let bound: u64;
    match signal {
        "prometheus" | "prometheus-shared" => {
            let prom = support::FakePrometheus::start(42.0).await;
            prom.log_queries();
            // Each object its own query (the common case), or all of them one query.
            let distinct = if signal == "prometheus" { n } else { 1 };
            objects = (0..n)
                .map(|i| {
                    object(
                        i,
                        [
                            ("serverAddress", prom.url()),
                            (
                                "query",
                                format!(
                                    "sum(rate(http_requests_total{{app=\"app-{:05}\"}}[2m]))",
                                    i % distinct
                                ),
                            ),
                            ("threshold", format!("{}", 10 + i % 90)),
                        ],
                    )
                })
                .collect();
            items = distinct;
            // A query shared by several objects is asked for by each of them: it is read
            // once per refresh interval at most, however often they ask.
            let asks = (n / distinct) as u64 * asks_per_poll(cached);
            bound = distinct as u64 * asks.min(POLL.as_secs() / REFRESH.as_secs());
            sources.prometheus = Some(blend_scaler::prometheus::source(
                refresh.clone(),
                metrics.clone(),
                &blend_scaler::binding::HostRules::loopback(),
            ));
            upstream = Box::new(prom);
        }
        "servicebus" | "servicebus-topics" => {
            let double = ServiceBusDouble::start().await.unwrap();
            // One namespace. `servicebus`: each object its own queue. `servicebus-topics`:
            // a quarter of them watch a subscription instead, over five topics.
            let topics = signal == "servicebus-topics";
            let mut subscriptions: HashMap<String, usize> = HashMap::new();
            objects = (0..n)
                .map(|i| {
                    let mut keys = vec![
                        ("endpoint", double.endpoint()),
                        ("connectionFromEnv", double.connection_string()),
                        ("messageCount", format!("{}", 5 + i % 20)),
                    ];
                    if topics && i % 4 == 3 {
                        let topic = format!("events-{}", i % 5);
                        let sub = format!("sub-{i:05}");
                        double.set_subscription(&topic, &sub, (i % 50) as u64);
                        *subscriptions.entry(topic.clone()).or_default() += 1;
                        keys.push(("topicName", topic));
                        keys.push(("subscriptionName", sub));
                    } else {
                        let queue = format!("queue-{i:05}");
                        double.set_queue(&queue, (i % 50) as u64);
                        keys.push(("queueName", queue));
                    }
                    object_from(i, keys)
                })
                .collect();
            items = n;
            // ceil(entities / 100) list pages plus one list per watched topic.
            bound = (n.div_ceil(100) as u64 + subscriptions.len() as u64) * asks_per_poll(cached);
            sources.servicebus = Some(blend_scaler::servicebus::source(
                refresh.clone(),
                metrics.clone(),
                &blend_scaler::binding::HostRules::loopback(),
            ));
            upstream = Box::new(double);
        }
        other => panic!("unknown --signal {other}"),
    }

    let running = server::start(
        ServerConfig {
            http_addr: None,
            engine: EngineConfig {
                refresh,
                // The double listens on loopback over plain http.
                hosts: blend_scaler::binding::HostRules {
                    allow_loopback: true,
                    ..Default::default()
                },
                ..EngineConfig::default()
            },
            ..ServerConfig::loopback()
        },
        sources,
        metrics,
    )
    .await
    .unwrap();
    // KEDA keeps one connection per scaler address.
    let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let started = Instant::now();
    let warm_end = started + s(WARMUP);
    let end = started + s(Duration::from_secs_f64(minutes * 60.0));
    let polls = Arc::new(AtomicU64::new(0));
    let hpa = Arc::new(AtomicU64::new(0));
    let steady_polls = Arc::new(AtomicU64::new(0));
    let steady_hpa = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorCodes::default());
    let mut rng = Rng::new(0x5eed_0000 + n as u64);
    let mut tasks = Vec::new();
    for o in objects {
        let item = item_of(&o);
        let poll_at = started + s(POLL).mul_f64(rng.uniform());
        let hpa_at = started + s(HPA).mul_f64(rng.uniform());
        let mut client = ExternalScalerClient::new(channel.clone());
        let (polls, hpa, steady_polls, steady_hpa, errors) = (
            polls.clone(),
            hpa.clone(),
            steady_polls.clone(),
            steady_hpa.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut poll = tokio::time::interval_at(poll_at, s(POLL));
            let mut hpa_tick = tokio::time::interval_at(hpa_at, s(HPA));
            poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
            hpa_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut spec_sent = false;
            // When KEDA asked for the object's value (the tick: a poll's two calls are one).
            let mut asked = Vec::new();
            let get_metrics = |o: &ScaledObjectRef| GetMetricsRequest {
                scaled_object_ref: Some(o.clone()),
                metric_name: "blended-replicas".into(),
            };
            loop {
                let is_poll = tokio::select! {
                    t = poll.tick() => { if t >= end { break } true }
                    // With useCachedMetrics the HPA's reads stop at KEDA's cache.
                    t = hpa_tick.tick(), if !cached => { if t >= end { break } false }
                };
                let now = Instant::now();
                asked.push(now);
                if !spec_sent {
                    errors.count(client.get_metric_spec(o.clone()).await);
                    spec_sent = true;
                }
                if is_poll {
                    errors.count(client.is_active(o.clone()).await);
                    errors.count(client.get_metrics(get_metrics(&o)).await);
                    polls.fetch_add(1, Ordering::Relaxed);
                    if now >= warm_end {
                        steady_polls.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    errors.count(client.get_metrics(get_metrics(&o)).await);
                    hpa.fetch_add(1, Ordering::Relaxed);
                    if now >= warm_end {
                        steady_hpa.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (item, asked)
        }));
    }
    let mut calls: HashMap<String, Vec<Instant>> = HashMap::new();
    for t in tasks {
        let (item, asked) = t.await.unwrap();
        calls.entry(item).or_default().extend(asked);
    }
    for asked in calls.values_mut() {
        asked.sort();
    }
    // A read comes at most a period and a refresh after the call it follows (README,
    // `--refresh-interval`), and each task ended a period after its last call.
    tokio::time::sleep_until(end.max(Instant::now()) + s(REFRESH) + s(FAST)).await;
    let reads = upstream.reads();
    running.shutdown().await.unwrap();
    Counts {
        reads: reads.len() as u64,
        steady_reads: reads_after(&reads, &calls, warm_end),
        polls: polls.load(Ordering::Relaxed),
        hpa_reads: hpa.load(Ordering::Relaxed),
        steady_polls: steady_polls.load(Ordering::Relaxed),
        steady_hpa_reads: steady_hpa.load(Ordering::Relaxed),
        items,
        errors: Arc::try_unwrap(errors).unwrap_or_default(),
        bound_per_poll: bound,
    }
}

fn errors_described(start: &Counts, steady: &Counts) -> String {
    match (start.errors.total(), steady.errors.total()) {
        (0, 0) => "0".into(),
        _ => format!(
            "first minute {}; shortened run {}",
            start.errors.describe(),
            steady.errors.describe()
        ),
    }
}

/// How often KEDA asks for an object's value per polling interval: at each HPA read (every
/// 15 s, twice per 30 s poll), or only at the poll when the HPA is served from KEDA's cache.
fn asks_per_poll(cached: bool) -> u64 {
    if cached {
        1
    } else {
        (POLL.as_secs() / HPA.as_secs()).max(1)
    }
}

fn object<const K: usize>(i: usize, keys: [(&str, String); K]) -> ScaledObjectRef {
    object_from(i, keys.into_iter().collect())
}

fn object_from(i: usize, keys: Vec<(&str, String)>) -> ScaledObjectRef {
    let mut m: HashMap<String, String> =
        keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    m.insert(
        "scalerAddress".into(),
        "blend-scaler.blend-scaler.svc.cluster.local:9090".into(),
    );
    ScaledObjectRef {
        name: format!("app-{i:05}"),
        namespace: format!("team-{:02}", i % 40),
        scaler_metadata: m,
    }
}

fn report(signal: &str, cached: bool, minutes: f64, scale: f64, rows: &[(usize, Counts, Counts)]) {
    let polls_after = (minutes * 60.0 - WARMUP.as_secs_f64()) / POLL.as_secs_f64();
    println!();
    println!(
        "Upstream reads, {signal}, useCachedMetrics {cached}, KEDA's pattern for {minutes} \
         minutes: the first minute in real time, the rest counted on a schedule shortened \
         {scale}x:"
    );
    println!(
        "| ScaledObjects | watched items | first minute: blend-scaler / built-in | \
         reads per 30 s poll after it (bound) | blend-scaler, {minutes} min | \
         built-in trigger, {minutes} min | fewer by | gRPC errors |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, start, steady) in rows {
        let per_poll = steady.steady_reads as f64 / polls_after;
        let blend = start.reads + steady.steady_reads;
        // The built-in trigger: one read per poll and per HPA read, for every object.
        let builtin_first = start.polls + start.hpa_reads;
        let builtin = builtin_first + steady.steady_polls + steady.steady_hpa_reads;
        println!(
            "| {n} | {} | {} / {builtin_first} | {per_poll:.2} ({}) | {blend} | {builtin} | \
             {:.1}x | {} |",
            steady.items,
            start.reads,
            steady.bound_per_poll,
            builtin as f64 / (blend as f64).max(1.0),
            errors_described(start, steady)
        );
    }
}
