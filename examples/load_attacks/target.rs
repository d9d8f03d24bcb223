//! The process under attack: the victim tenant calling it, its resident memory sampled.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::support::{Server, free_port, status_kib};
use crate::{fds, object, tiny_cron};

/// p50, p99 and max in ms, the number of calls and errors.
pub type VictimStats = (f64, f64, f64, usize, u64);

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

/// One `serve` process under attack, with the victim calling it and its RSS sampled.
pub struct Target {
    server: Server,
    pub pid: u32,
    pub http: u16,
    pub channels: Vec<Channel>,
    victim: Victim,
    rss: Rss,
}

impl Target {
    pub async fn start(binary: &str) -> Self {
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
    pub fn row(&self, name: &str, got: String) -> Row {
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

    pub fn stop(self) -> u64 {
        self.victim.stop.store(true, Ordering::Relaxed);
        let hwm = status_kib(self.pid, "VmHWM:");
        drop(self.server);
        hwm
    }
}

pub struct Row {
    pub name: String,
    pub got: String,
    pub peak_kib: u64,
    pub victim: VictimStats,
    pub fds: usize,
}
