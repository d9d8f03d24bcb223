//! Helpers shared by the bench binaries (not a bench itself): argument parsing, child
//! processes, percentiles, resident memory.

#![allow(dead_code)]

pub mod baseline;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The multi-threaded runtime every bench drives its clients and doubles on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `--key value` pairs after cargo's own `--bench`.
pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse() -> Self {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            if let Some(key) = a.strip_prefix("--") {
                if key == "bench" {
                    continue;
                }
                let value = match it.peek() {
                    Some(v) if !v.starts_with("--") => it.next().unwrap(),
                    _ => "true".to_string(),
                };
                map.insert(key.to_string(), value);
            }
        }
        Self(map)
    }

    pub fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.0.get(key) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("--{key} {v}: not a valid value")),
            None => default,
        }
    }

    pub fn string(&self, key: &str, default: &str) -> String {
        self.0.get(key).cloned().unwrap_or_else(|| default.into())
    }
}

/// A child process killed (by its own pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTP (`/metrics`) address, for `blend-scaler serve`.
    pub http_addr: Option<SocketAddr>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// A field of the process's `/proc/PID/status` in KiB (`"RssFile:"`, …).
    pub fn status_kib(&self, field: &str) -> u64 {
        status_kib(&format!("/proc/{}/status", self.pid()), field)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first (`serve` stops gracefully; a profiler wrapping it gets to write its
        // data), then SIGKILL if it is still there after 30 s.
        let pid = self.child.id();
        // A wrapper (`BLEND_BENCH_SCALER_WRAP`) runs the scaler as its own child: stop that.
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for p in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a child of our own child.
            unsafe { libc::kill(p, libc::SIGTERM) };
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `blend-scaler` binary cargo built beside this bench, in the same profile.
pub fn scaler_binary() -> &'static str {
    env!("CARGO_BIN_EXE_blend-scaler")
}

/// `GLIBC_TUNABLES` as the Dockerfile's `ENV` sets it for the image, for the scaler's
/// environment when a bench measures what ships (`--allocator shipped`).
pub fn shipped_allocator_env() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");
    let text = std::fs::read_to_string(path).expect("reading the Dockerfile");
    let value = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV GLIBC_TUNABLES="))
        .next_back()
        .expect("the Dockerfile sets ENV GLIBC_TUNABLES=…");
    vec![("GLIBC_TUNABLES".to_string(), value.trim().to_string())]
}

/// The scaler's allocator environment for `--allocator shipped|glibc-default`.
pub fn allocator_env(allocator: &str) -> Vec<(String, String)> {
    match allocator {
        "shipped" => shipped_allocator_env(),
        "glibc-default" => Vec::new(),
        other => panic!("--allocator {other}: expected `shipped` or `glibc-default`"),
    }
}

/// Starts `blend-scaler serve` on free loopback ports and waits until it accepts gRPC
/// connections. The ports are chosen here, not read from its log: with `RUST_LOG=off` the
/// log says nothing.
///
/// `BLEND_BENCH_SCALER_WRAP` (e.g. `heaptrack -o /tmp/scaler`) runs it under a profiler.
pub fn start_scaler(extra_env: &[(&str, &str)]) -> Proc {
    start_scaler_at(scaler_binary(), extra_env)
}

/// Like [`start_scaler`], for another build of `blend-scaler` (a baseline run side by side).
pub fn start_scaler_at(binary: &str, extra_env: &[(&str, &str)]) -> Proc {
    let (addr, http_addr) = free_ports();
    let mut cmd = wrapped("BLEND_BENCH_SCALER_WRAP", binary);
    cmd.arg("serve")
        .args(["--grpc-addr", &addr.to_string()])
        .args(["--http-addr", &http_addr.to_string()])
        .args([
            "--log-format",
            "json",
            // The doubles listen on loopback over plain http.
            "--allow-loopback-upstreams",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting blend-scaler serve");
    let stderr = child.stderr.take().unwrap();
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    // A profiler wrapping the scaler can take a while to start it.
    for _ in 0..1200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Proc {
                child,
                addr,
                http_addr: Some(http_addr),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("blend-scaler exited before serving ({status})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("blend-scaler did not accept connections on {addr} within 60 s");
}

/// Two distinct loopback addresses no one listens on now (the kernel's picks, both held
/// until both are chosen, then released for the child).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let (a, b) = (bind(), bind());
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// `binary`, run by the command in the environment variable `wrap` (a profiler) if it is set.
fn wrapped(wrap: &str, binary: impl AsRef<std::ffi::OsStr>) -> Command {
    let wrap = std::env::var(wrap).unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(binary);
            c
        }
        None => Command::new(binary),
    }
}

/// Re-runs this bench binary with `BLEND_BENCH_ROLE=role` and `extra_env`; the child prints
/// its address.
///
/// `BLEND_BENCH_BASELINE_WRAP` runs it under a profiler, as `BLEND_BENCH_SCALER_WRAP` does
/// the scaler (instructions per call of both sides, measured the same way).
pub fn start_self(role: &str, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = wrapped(
        "BLEND_BENCH_BASELINE_WRAP",
        std::env::current_exe().unwrap(),
    );
    cmd.envs(extra_env.iter().copied());
    let mut child = cmd
        .env("BLEND_BENCH_ROLE", role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting a bench child");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = lines
        .next()
        .expect("the bench child exited")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in lines {});
    Proc {
        child,
        addr,
        http_addr: None,
    }
}

pub fn role() -> Option<String> {
    std::env::var("BLEND_BENCH_ROLE").ok()
}

/// `VmRSS` of a `/proc/*/status` file, in KiB.
pub fn rss_kib(status_path: &str) -> u64 {
    status_kib(status_path, "VmRSS:")
}

/// `field` of a `/proc/*/status` file, in KiB.
pub fn status_kib(status_path: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(status_path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    assert!(!sorted.is_empty());
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// A tiny Prometheus HTTP API on loopback: answers every instant query with one sample of
/// `value` and counts the requests. It measures request counts, not Prometheus.
pub struct FakePrometheus {
    pub addr: SocketAddr,
    pub queries: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub value: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// When each query arrived and its `query` parameter, once [`Self::log_queries`] is on
    /// (off by default: the memory bench's fakes answer queries for a long time).
    log: QueryLog,
    task: tokio::task::JoinHandle<()>,
}

type QueryLog = std::sync::Arc<parking_lot::Mutex<Option<Vec<(tokio::time::Instant, String)>>>>;

impl FakePrometheus {
    pub async fn start(value: f64) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let queries = Arc::new(AtomicU64::new(0));
        let value = Arc::new(AtomicU64::new(value.to_bits()));
        let log = QueryLog::default();
        let (q, v, l) = (queries.clone(), value.clone(), log.clone());
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(move |params: axum::extract::Query<HashMap<String, String>>| {
                q.fetch_add(1, Ordering::SeqCst);
                if let Some(log) = l.lock().as_mut() {
                    let query = params.0.get("query").cloned().unwrap_or_default();
                    log.push((tokio::time::Instant::now(), query));
                }
                let value = f64::from_bits(v.load(Ordering::SeqCst));
                async move {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64();
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        format!(
                            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now},"{value}"]}}]}}}}"#
                        ),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            queries,
            value,
            log,
            task,
        }
    }

    /// From now on, every query is logged with its arrival ([`Self::query_log`]).
    pub fn log_queries(&self) {
        self.log.lock().get_or_insert_with(Vec::new);
    }

    /// The queries logged so far: when each arrived, and its `query` parameter.
    pub fn query_log(&self) -> Vec<(tokio::time::Instant, String)> {
        self.log.lock().clone().unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The simulator's seeded splitmix64, so every run spreads the same phases.
#[allow(unused_imports)] // not every bench draws phases
pub use blend_scaler::simulate::generate::Rng;
