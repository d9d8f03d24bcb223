//! Load run (not a test): the resource and CPU attacks of docs/security.md ("Capacity", "No
//! tenant can stall another") against a `blend-scaler serve` process with its default capacity
//! limits, one after another, while a victim tenant calls `IsActive` every 20 ms on its own
//! connection. Prints, per attack, what the attacker got (answers and refusals by gRPC code), the
//! server's resident memory, and the victim's latency (p50, p99, max).
//!
//! `scripts/load-attacks` builds (release) and runs it; flags: `--binary PATH`, `--objects N`
//! (default 50,000), `--servers N` (2,000), `--seconds N` per CPU attack (20).
//!
//! The upstreams are hostile ones of this process's own, on loopback: a "Prometheus" that
//! answers every query with 15 MiB of series under `/big…`, and a small answer elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use parking_lot::Mutex;
use support::{Server, free_port, status_kib};
use tonic::transport::{Channel, Endpoint};

mod support;

type Client = ExternalScalerClient<Channel>;

struct Args {
    binary: String,
    objects: usize,
    servers: usize,
    seconds: u64,
    /// Attacks to run on fresh processes (all when empty); `--only` also skips the combined run.
    only: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        binary: "target/release/blend-scaler".into(),
        objects: 50_000,
        servers: 2_000,
        seconds: 20,
        only: Vec::new(),
    };
    support::flags(|flag, value| match flag {
        "--binary" => a.binary = value,
        "--objects" => a.objects = value.parse().expect("--objects N"),
        "--servers" => a.servers = value.parse().expect("--servers N"),
        "--seconds" => a.seconds = value.parse().expect("--seconds N"),
        "--only" => a.only = value.split(',').map(str::to_owned).collect(),
        other => panic!("unknown flag {other}"),
    });
    a
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn md(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn object(namespace: &str, name: &str, metadata: HashMap<String, String>) -> ScaledObjectRef {
    ScaledObjectRef {
        namespace: namespace.into(),
        name: name.into(),
        scaler_metadata: metadata,
    }
}

fn tiny_cron() -> HashMap<String, String> {
    md(&[
        ("start", "0 8 * * *".into()),
        ("end", "0 20 * * *".into()),
        ("desiredReplicas", "1".into()),
    ])
}

/// The audit's `cronbig`: about 8 KB of windows, every text distinct per object.
fn cron_big(i: usize, max_windows: Option<usize>) -> HashMap<String, String> {
    let mut ws: Vec<String> = Vec::new();
    let mut j = 0;
    loop {
        let w = format!(
            "{} {} {} {} * -> {} {} {} {} * = 1",
            (i * 7 + j) % 60,
            (j / 60) % 24,
            1 + (i % 28),
            1 + j % 12,
            (i * 7 + j + 1) % 60,
            (j / 60) % 24,
            1 + (i % 28),
            1 + j % 12
        );
        if ws.iter().map(|x| x.len() + 1).sum::<usize>() + w.len() > 8000
            || max_windows.is_some_and(|m| ws.len() == m)
        {
            break;
        }
        ws.push(w);
        j += 1;
    }
    md(&[("windows", ws.join(";"))])
}

/// The outcome of one call, by gRPC code name.
fn code(r: &Result<(), tonic::Status>) -> String {
    match r {
        Ok(()) => "OK".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

async fn get_metrics(client: &mut Client, obj: ScaledObjectRef) -> Result<(), tonic::Status> {
    client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(obj),
            metric_name: "x".into(),
        })
        .await
        .map(|_| ())
}

/// Sends every object once (`GetMetrics`, 64 at a time over the channels) and counts the
/// codes.
async fn flood(channels: &[Channel], objects: Vec<ScaledObjectRef>) -> BTreeMap<String, u64> {
    use futures::StreamExt;
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let n = channels.len();
    futures::stream::iter(objects.into_iter().enumerate())
        .map(|(i, obj)| {
            let mut client = ExternalScalerClient::new(channels[i % n].clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let counts = counts.clone();
            async move {
                let r = get_metrics(&mut client, obj).await;
                *counts.lock().entry(code(&r)).or_insert(0) += 1;
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    counts.lock().clone()
}

/// `GetMetricSpec` of `make(i)` from `workers` tasks for `seconds`, counting codes.
async fn hammer(
    channels: &[Channel],
    workers: usize,
    seconds: u64,
    make: impl Fn(usize) -> ScaledObjectRef + Send + Sync + 'static,
) -> BTreeMap<String, u64> {
    let make = Arc::new(make);
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = ExternalScalerClient::new(channels[w % channels.len()].clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (make, counts) = (make.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let obj = make(i);
                let r = client.get_metric_spec(obj).await.map(|_| ());
                *counts.lock().entry(code(&r)).or_insert(0) += 1;
                i += workers;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    counts.lock().clone()
}

/// p50, p99 and max in ms, the number of calls and errors.
type VictimStats = (f64, f64, f64, usize, u64);

/// The victim's latencies since the last [`Victim::take`].
struct Victim {
    latencies: Arc<Mutex<Vec<Duration>>>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Victim {
    fn start(channel: Channel) -> Self {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, e, s) = (latencies.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = ExternalScalerClient::new(channel);
            let obj = object("victim", "checkout", tiny_cron());
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let started = Instant::now();
                let r = client.is_active(obj.clone()).await;
                l.lock().push(started.elapsed());
                if r.is_err() {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            latencies,
            errors,
            stop,
        }
    }

    fn take(&self) -> VictimStats {
        let mut v = std::mem::take(&mut *self.latencies.lock());
        v.sort();
        let errors = self.errors.swap(0, Ordering::Relaxed);
        if v.is_empty() {
            return (0.0, 0.0, 0.0, 0, errors);
        }
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
        (q(0.5), q(0.99), q(1.0), v.len(), errors)
    }
}

/// Samples the server's RSS every 100 ms; `take` gives the peak since the last one.
struct Rss {
    peak: Arc<AtomicU64>,
}

impl Rss {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        tokio::spawn(async move {
            loop {
                p.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { peak }
    }

    fn take(&self, pid: u32) -> u64 {
        self.peak.swap(status_kib(pid, "VmRSS:"), Ordering::Relaxed)
    }
}

/// A hostile "Prometheus": `/big…/api/v1/query` answers 15 MiB of series (the audit's
/// `evil.py`, here streamed without a length), `/many…` 9,000 series (about 800 KiB, under every cap, so it is decoded),
/// anything else one series.
async fn hostile_prometheus() -> String {
    let series = r#"{"metric":{},"value":[0,"1"]}"#;
    let body = |n: usize| {
        axum::body::Bytes::from(format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            vec![series; n].join(",")
        ))
    };
    let (big, many, one) = (body((15 << 20) / (series.len() + 1)), body(9_000), body(1));
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let body = if uri.path().starts_with("/big") {
            // Streamed in 64 KiB chunks with no Content-Length, the harder case: the scaler
            // cannot refuse it from the headers and reads until its cap.
            chunked(&big, 64 << 10)
        } else if uri.path().starts_with("/many") {
            axum::body::Body::from(many.clone())
        } else {
            axum::body::Body::from(one.clone())
        };
        async move { ([("content-type", "application/json")], body) }
    });
    serve(app).await
}

/// `bytes` as a body streamed in chunks of `size` with no `Content-Length`.
fn chunked(bytes: &axum::body::Bytes, size: usize) -> axum::body::Body {
    let chunks: Vec<_> = (0..bytes.len())
        .step_by(size)
        .map(|i| Ok::<_, std::io::Error>(bytes.slice(i..(i + size).min(bytes.len()))))
        .collect();
    axum::body::Body::from_stream(futures::stream::iter(chunks))
}

/// Serves `app` on a loopback port of its own; its URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// `n` hostile "Service Bus" namespace hosts: every GET is HTTP 200 with a feed of 1,000
/// queue entries, about 800 KiB (under the 2 MiB cap and the entry limit, so it is parsed
/// whole every refresh), sent chunked as Service Bus sends its answers.
async fn hostile_servicebus(n: usize) -> Vec<String> {
    let entry = |i: usize| {
        format!(
            r#"<entry><title type="text">queue-{i:04}</title><content type="application/xml"><QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"><MessageCount>1</MessageCount><CountDetails xmlns:d2p1="http://schemas.microsoft.com/netservices/2011/06/servicebus"><d2p1:ActiveMessageCount>1</d2p1:ActiveMessageCount></CountDetails><!-- {pad} --></QueueDescription></content></entry>"#,
            pad = "x".repeat(380)
        )
    };
    let feed = axum::body::Bytes::from(format!(
        r#"<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Queues</title>{}</feed>"#,
        (0..1_000).map(entry).collect::<String>()
    ));
    let app = axum::Router::new().fallback(move || {
        let body = chunked(&feed, 16 << 10);
        async move { ([("content-type", "application/atom+xml; type=feed")], body) }
    });
    let mut hosts = Vec::new();
    for _ in 0..n {
        hosts.push(serve(app.clone()).await);
    }
    hosts
}

/// A queue on a hostile Service Bus namespace host.
fn servicebus(endpoint: &str, queue: String) -> HashMap<String, String> {
    md(&[
        ("endpoint", endpoint.to_string()),
        (
            "connectionFromEnv",
            format!("Endpoint={endpoint}/;SharedAccessKeyName=k;SharedAccessKey=a2V5"),
        ),
        ("queueName", queue),
        ("messageCount", "5".into()),
    ])
}

fn prom(address: String, query: String) -> HashMap<String, String> {
    md(&[
        ("serverAddress", address),
        ("query", query),
        ("threshold", "1".into()),
        ("seriesAggregation", "sum".into()),
        ("timeout", "60s".into()),
    ])
}

/// One `serve` process under attack, with the victim calling it and its RSS sampled.
struct Target {
    server: Server,
    pid: u32,
    http: u16,
    channels: Vec<Channel>,
    victim: Victim,
    rss: Rss,
}

impl Target {
    async fn start(binary: &str) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let server = Server(
            Command::new(binary)
                .args(["serve", "--grpc-addr", &format!("127.0.0.1:{grpc}")])
                .args(["--http-addr", &format!("127.0.0.1:{http}")])
                .args(["--log-format", "json", "--allow-loopback-upstreams"])
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {binary}: {e} (cargo build --release)")),
        );
        let pid = server.0.id();
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{grpc}")).unwrap();
        let connect = || async {
            loop {
                match endpoint.connect().await {
                    Ok(ch) => break ch,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        };
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(connect().await);
        }
        let victim = Victim::start(connect().await);
        let rss = Rss::start(pid);
        // The victim's first call parses its metadata; the figures start after it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        victim.take();
        rss.take(pid);
        Self {
            server,
            pid,
            http,
            channels,
            victim,
            rss,
        }
    }

    /// The figures since the last row.
    fn row(&self, name: &str, got: String) -> Row {
        let peak = self.rss.take(self.pid);
        let v = self.victim.take();
        let row = Row {
            name: name.to_string(),
            got,
            peak_kib: peak,
            victim: v,
            fds: fds(self.pid),
        };
        eprintln!(
            "{}: {}; peak RSS {:.1} MiB; victim p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} calls, {} errors); {} fds",
            row.name,
            row.got,
            peak as f64 / 1024.0,
            v.0,
            v.1,
            v.2,
            v.3,
            v.4,
            row.fds
        );
        row
    }

    fn stop(self) -> u64 {
        self.victim.stop.store(true, Ordering::Relaxed);
        let hwm = status_kib(self.pid, "VmHWM:");
        drop(self.server);
        hwm
    }
}

struct Row {
    name: String,
    got: String,
    peak_kib: u64,
    victim: VictimStats,
    fds: usize,
}

fn fmt(c: BTreeMap<String, u64>) -> String {
    c.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attacks, by name; each returns its row's title and what the attacker got.
async fn attack(kind: &str, a: &Args, upstream: &str, ch: &[Channel]) -> (String, String) {
    match kind {
        // Capacity: distinct tiny objects, over as many namespaces as a direct caller likes.
        "objects" => {
            let objs = (0..a.objects)
                .map(|i| object(&format!("ns-{}", i % 100), &format!("so-{i}"), tiny_cron()))
                .collect();
            let got = flood(ch, objs).await;
            (
                format!("{} distinct cron objects over 100 namespaces", a.objects),
                fmt(got),
            )
        }
        // Capacity: 8 KB of distinct windows (more than 16: invalid).
        "cronbig" => {
            let objs = (0..200)
                .map(|i| object("cronbig", &format!("big-{i}"), cron_big(i, None)))
                .collect();
            (
                "200 objects with 8 KB of distinct windows".into(),
                fmt(flood(ch, objs).await),
            )
        }
        // Capacity: the same cut to the 16 windows allowed, every text distinct, 20 namespaces.
        "cron16" => {
            let objs = (0..2_000)
                .map(|i| {
                    object(
                        &format!("cron-{}", i % 20),
                        &format!("w16-{i}"),
                        cron_big(i, Some(16)),
                    )
                })
                .collect();
            (
                "2,000 objects with 16 distinct windows each".into(),
                fmt(flood(ch, objs).await),
            )
        }
        // Capacity: distinct Prometheus servers, one call each, then their refreshes.
        "servers" => {
            let objs = (0..a.servers)
                .map(|i| {
                    object(
                        &format!("groups-{}", i % 10),
                        &format!("prom-{i}"),
                        prom(format!("{upstream}/g{i}"), "up".into()),
                    )
                })
                .collect();
            let got = flood(ch, objs).await;
            tokio::time::sleep(Duration::from_secs(a.seconds)).await;
            (
                format!(
                    "{} distinct Prometheus servers, then {} s of refreshes",
                    a.servers, a.seconds
                ),
                fmt(got),
            )
        }
        // Capacity and CPU: 15 MiB answers, 16 servers x 16 queries, refreshing every 5 s.
        "big" => {
            let objs = (0..256)
                .map(|i| {
                    object(
                        "evil",
                        &format!("big-{i}"),
                        prom(format!("{upstream}/big{}", i % 16), format!("q{i}")),
                    )
                })
                .collect();
            let got = flood(ch, objs).await;
            tokio::time::sleep(Duration::from_secs(a.seconds)).await;
            (
                format!(
                    "15 MiB answers: 256 queries on 16 servers, then {} s of refreshes",
                    a.seconds
                ),
                fmt(got),
            )
        }
        // CPU: answers under every cap but large (9,000 series): decoded every refresh.
        "decode" => {
            let objs = (0..64)
                .map(|i| {
                    object(
                        "decode",
                        &format!("many-{i}"),
                        prom(format!("{upstream}/many{}", i % 16), format!("m{i}")),
                    )
                })
                .collect();
            let got = flood(ch, objs).await;
            tokio::time::sleep(Duration::from_secs(a.seconds)).await;
            (
                format!(
                    "800 KiB answers (9,000 series): 64 queries, {} s of refreshes",
                    a.seconds
                ),
                fmt(got),
            )
        }
        // CPU: Service Bus list pages under every cap but large, parsed every refresh.
        "servicebus-decode" => {
            let hosts = hostile_servicebus(16).await;
            let objs = (0..64)
                .map(|i| {
                    object(
                        "decode",
                        &format!("queue-{i}"),
                        servicebus(&hosts[i % 16], format!("queue-{i:04}")),
                    )
                })
                .collect();
            let got = flood(ch, objs).await;
            tokio::time::sleep(Duration::from_secs(a.seconds)).await;
            (
                format!(
                    "800 KiB Service Bus pages (1,000 entries): 64 queues on 16 namespaces, {} s of refreshes",
                    a.seconds
                ),
                fmt(got),
            )
        }
        // CPU: oversized keys, 4 callers at once.
        "huge-key" => {
            let key = Arc::new("x".repeat(256 << 10));
            let got = hammer(ch, 4, a.seconds, move |i| {
                let mut m = tiny_cron();
                m.insert(format!("{i}{key}"), "v".into());
                object("cpu", "huge-key", m)
            })
            .await;
            (
                format!("256 KiB unknown keys, 4 callers for {} s", a.seconds),
                fmt(got),
            )
        }
        // 10,000 keys of 100 B (the audit's 1 MB request, past the gRPC decode limit), and as
        // many as fit under that limit: the most decoding a request can still cost.
        "many-keys" | "many-keys-under-limit" => {
            let keys = if kind == "many-keys" { 10_000 } else { 5_000 };
            let got = hammer(ch, 4, a.seconds, move |i| {
                let mut m = tiny_cron();
                for k in 0..keys {
                    m.insert(
                        format!("unknown-key-{i}-{k:05}-{}", "y".repeat(80)),
                        "v".into(),
                    );
                }
                object("cpu", "10k-keys", m)
            })
            .await;
            (
                format!(
                    "{keys} unknown keys of 100 B, 4 callers for {} s",
                    a.seconds
                ),
                fmt(got),
            )
        }
        // CPU: windows on 31 February, 16 per trigger, new text every call.
        "never" => {
            let got = hammer(ch, 4, a.seconds, |i| {
                let ws: Vec<String> = (0..16)
                    .map(|j| {
                        format!(
                            "{} {} 31 2 * -> {} {} 31 2 * = 1",
                            j % 60,
                            i % 24,
                            (j + 1) % 60,
                            i % 24
                        )
                    })
                    .collect();
                object(
                    "cpu",
                    &format!("never-{i}"),
                    md(&[("windows", ws.join(";"))]),
                )
            })
            .await;
            (
                format!("16 windows on 31 February, 4 callers for {} s", a.seconds),
                fmt(got),
            )
        }
        other => panic!("unknown attack {other}"),
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let upstream = hostile_prometheus().await;
    let mut rows = Vec::new();
    let mut worst_hwm = 0;
    // Each attack on a fresh process, so each meets its own cap...
    for kind in [
        "objects",
        "cronbig",
        "cron16",
        "servers",
        "big",
        "decode",
        "servicebus-decode",
        "huge-key",
        "many-keys",
        "many-keys-under-limit",
        "never",
    ] {
        if !a.only.is_empty() && !a.only.iter().any(|o| o == kind) {
            continue;
        }
        let t = Target::start(&a.binary).await;
        let (name, got) = attack(kind, &a, &upstream, &t.channels).await;
        rows.push(t.row(&name, got));
        worst_hwm = worst_hwm.max(t.stop());
    }
    // ...then the memory ones together on one process: every cap filled at once.
    let t = Target::start(&a.binary).await;
    let together: &[&str] = if a.only.is_empty() {
        &["servers", "big", "cron16", "objects"]
    } else {
        &[]
    };
    for &kind in together {
        let (name, got) = attack(kind, &a, &upstream, &t.channels).await;
        rows.push(t.row(&format!("together: {name}"), got));
    }
    let metrics = scrape_size(t.http).await;
    let end_rss = status_kib(t.pid, "VmRSS:");
    let together_hwm = t.stop();
    worst_hwm = worst_hwm.max(together_hwm);

    println!(
        "| attack | attacker got (gRPC codes) | peak RSS (MiB) | victim IsActive p50 / p99 / max (ms) | victim calls (errors) | fds |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.2} / {:.2} / {:.2} | {} ({}) | {} |",
            r.name,
            r.got,
            r.peak_kib as f64 / 1024.0,
            r.victim.0,
            r.victim.1,
            r.victim.2,
            r.victim.3,
            r.victim.4,
            r.fds
        );
    }
    println!(
        "\ntogether, at the end: RSS {:.1} MiB, high-water mark {:.1} MiB, /metrics {} bytes; \
         the highest high-water mark of any run {:.1} MiB",
        end_rss as f64 / 1024.0,
        together_hwm as f64 / 1024.0,
        metrics,
        worst_hwm as f64 / 1024.0
    );
    if worst_hwm > 256 * 1024 {
        eprintln!("resident memory went past 256 MiB");
        std::process::exit(1);
    }
}

/// The size of one `/metrics` scrape.
async fn scrape_size(port: u16) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out.len()
}
