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
use std::sync::Arc;
use std::time::{Duration, Instant};

use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use parking_lot::Mutex;
use support::status_kib;
use tonic::transport::Channel;

#[path = "../support/mod.rs"]
mod support;

mod attacks;
mod hostile;
mod target;

use attacks::attack;
use hostile::hostile_prometheus;
use target::Target;

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

fn fmt(c: BTreeMap<String, u64>) -> String {
    c.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
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
