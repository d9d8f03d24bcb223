//! A real Prometheus server for integration tests, and a small recording proxy.
//!
//! Include it from a test file with
//! `#[path = "support/prometheus.rs"] mod prometheus_support;`
//! (a path module, so test binaries share no `support/mod.rs` with other signals' helpers).
//!
//! [`Prometheus`] runs the Debian package's `/usr/bin/prometheus` on a free loopback port with
//! its own temporary data directory and configuration, never the packaged service's
//! `/etc/prometheus`, `/var/lib/prometheus` or port 9090. Series are backfilled with
//! `promtool tsdb create-blocks-from openmetrics` before start: samples every 15 s from an hour
//! before to an hour after [`Prometheus::now`], so an instant query during the test returns
//! exactly the values written, with no scrape timing involved. The process is killed when the
//! value is dropped, and (through `PR_SET_PDEATHSIG`) when the test process dies.
//!
//! Without the package installed, [`Prometheus::builder`]'s `start` panics with the install
//! command: these tests fail loudly rather than skip.
#![allow(dead_code)] // Each test binary uses its own part of this module.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode};

/// Basic-auth user Prometheus accepts when started [`Builder::with_basic_auth`].
pub const BASIC_USER: &str = "scaler";
/// Its password; [`BASIC_HASH`] is its bcrypt hash (cost 4, so each request stays cheap):
/// `htpasswd -nbBC 4 scaler basic-pa55word-test`.
pub const BASIC_PASSWORD: &str = "basic-pa55word-test";
const BASIC_HASH: &str = "$2y$04$0ULDSZ31XyvL5QTP4XHSMu3eCOIQFHQxJ9GINqbzUFhOxT0wV3N4q";

const INSTALL_HINT: &str = "Prometheus is not installed: run `apt-get install -y prometheus` \
     (the Debian package provides /usr/bin/prometheus and /usr/bin/promtool)";

/// Test-only TLS material (see `tests/fixtures/prometheus-tls/README.md`).
pub fn tls_fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prometheus-tls")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where a package binary is: `/usr/bin`, else the first on `PATH`.
pub fn binary(name: &str) -> PathBuf {
    let packaged = Path::new("/usr/bin").join(name);
    if packaged.is_file() {
        return packaged;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT} ({name} not found)"))
}

/// One series: `(seconds from now, value)` steps, each holding until the next.
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    steps: Vec<(i64, f64)>,
}

/// What to load into the server and how it guards itself.
#[derive(Default)]
pub struct Builder {
    series: Vec<Series>,
    basic_auth: bool,
    tls: bool,
}

/// How far each side of "now" the backfilled samples reach: past the longest test, and
/// within the 5-minute lookback at every instant of it.
const SPAN_SECONDS: i64 = 3600;
const SAMPLE_EVERY: i64 = 15;

impl Builder {
    /// A gauge that is `value` for the whole test.
    pub fn gauge(self, name: &str, labels: &[(&str, &str)], value: f64) -> Self {
        self.steps(name, labels, &[(-SPAN_SECONDS, value)])
    }

    /// A gauge that takes each `(seconds from now, value)` from that moment on.
    pub fn steps(mut self, name: &str, labels: &[(&str, &str)], steps: &[(i64, f64)]) -> Self {
        self.series.push(Series {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            steps: steps.to_vec(),
        });
        self
    }

    /// A counter rising by `per_second` every second (a gauge-typed series; `rate()` reads it
    /// the same), 0 an hour before now.
    pub fn counter(self, name: &str, labels: &[(&str, &str)], per_second: f64) -> Self {
        let steps: Vec<(i64, f64)> = (0..)
            .map(|i| -SPAN_SECONDS + i * SAMPLE_EVERY)
            .take_while(|t| *t <= SPAN_SECONDS)
            .map(|t| (t, per_second * (t + SPAN_SECONDS) as f64))
            .collect();
        self.steps(name, labels, &steps)
    }

    /// Require [`BASIC_USER`]/[`BASIC_PASSWORD`] on every request (Prometheus' own
    /// `--web.config.file` `basic_auth_users`).
    pub fn with_basic_auth(mut self) -> Self {
        self.basic_auth = true;
        self
    }

    /// Serve HTTPS with `server.crt` and require a client certificate signed by `ca.crt`.
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub async fn start(self) -> Prometheus {
        let prometheus = binary("prometheus");
        let promtool = binary("promtool");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let now = chrono::Utc::now().timestamp();
        let data = dir.path().join("data");

        let input = dir.path().join("series.om");
        std::fs::write(&input, openmetrics(&self.series, now)).expect("writing the series");
        if !self.series.is_empty() {
            let out = Command::new(&promtool)
                .args(["tsdb", "create-blocks-from", "openmetrics"])
                .arg(&input)
                .arg(&data)
                .output()
                .expect("running promtool");
            assert!(
                out.status.success(),
                "promtool could not backfill: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // No scrape jobs: the backfilled series are the only data, so results are exact.
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  evaluation_interval: 1h\n").expect("config");
        let web_config = (self.basic_auth || self.tls).then(|| {
            let path = dir.path().join("web.yml");
            std::fs::write(&path, web_config(self.basic_auth, self.tls)).expect("web config");
            path
        });

        let mut server = Prometheus {
            binary: prometheus,
            dir,
            config,
            web_config,
            data,
            port: 0,
            child: None,
            now,
            basic_auth: self.basic_auth,
            tls: self.tls,
        };
        server.launch().await;
        server
    }
}

fn openmetrics(series: &[Series], now: i64) -> String {
    let mut out = String::new();
    let mut typed = std::collections::HashSet::new();
    // OpenMetrics wants each metric family's samples together.
    let mut ordered: Vec<&Series> = series.iter().collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    for s in ordered {
        if typed.insert(s.name.clone()) {
            let _ = writeln!(out, "# TYPE {} gauge", s.name);
        }
        let labels = if s.labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let mut t = -SPAN_SECONDS;
        while t <= SPAN_SECONDS {
            let value = s
                .steps
                .iter()
                .take_while(|(from, _)| *from <= t)
                .last()
                .map(|(_, v)| *v);
            if let Some(v) = value {
                let _ = writeln!(out, "{}{labels} {v} {}", s.name, now + t);
            }
            t += SAMPLE_EVERY;
        }
    }
    out.push_str("# EOF\n");
    out
}

fn web_config(basic_auth: bool, tls: bool) -> String {
    let mut out = String::new();
    if tls {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prometheus-tls");
        let _ = write!(
            out,
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  \
             client_auth_type: RequireAndVerifyClientCert\n",
            dir.join("server.crt").display(),
            dir.join("server.key").display(),
            dir.join("ca.crt").display(),
        );
    }
    if basic_auth {
        let _ = write!(out, "basic_auth_users:\n  {BASIC_USER}: {BASIC_HASH}\n");
    }
    out
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    binary: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    web_config: Option<PathBuf>,
    data: PathBuf,
    port: u16,
    child: Option<Child>,
    now: i64,
    basic_auth: bool,
    tls: bool,
}

impl Prometheus {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The base URL, as `serverAddress` takes it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The Unix time (seconds) the series' step offsets count from.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Kills the server (as a crash would: no graceful shutdown). The port stays free for
    /// [`Prometheus::restart`] unless someone else takes it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    /// Requests Prometheus has served on `/api/v1/query` (any status), from its own
    /// `prometheus_http_requests_total`.
    pub async fn query_requests(&self) -> u64 {
        let text = self
            .client()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("Prometheus' /metrics")
            .text()
            .await
            .expect("Prometheus' /metrics body");
        text.lines()
            .filter(|l| {
                l.starts_with("prometheus_http_requests_total{")
                    && l.contains("handler=\"/api/v1/query\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// An HTTP client that gets past this server's guard (for the helpers, not the scaler).
    fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if self.tls {
            let pem = format!("{}{}", tls_fixture("client.crt"), tls_fixture("client.key"));
            b = b
                .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("client identity"))
                .tls_certs_only([
                    reqwest::Certificate::from_pem(tls_fixture("ca.crt").as_bytes())
                        .expect("test CA"),
                ]);
        }
        if self.basic_auth {
            let mut h = reqwest::header::HeaderMap::new();
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Basic {token}").parse().expect("header"),
            );
            b = b.default_headers(h);
        }
        b.build().expect("a helper client")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits for `/-/ready`. A port taken between choosing and
    /// binding it is retried on a new one.
    async fn launch(&mut self) {
        for attempt in 0..3 {
            if self.port == 0 || attempt > 0 {
                self.port = free_port();
            }
            let log = std::fs::File::create(self.log_path()).expect("log file");
            let mut cmd = Command::new(&self.binary);
            cmd.arg(format!("--config.file={}", self.config.display()))
                .arg(format!("--storage.tsdb.path={}", self.data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
                .arg("--log.level=info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log);
            if let Some(web) = &self.web_config {
                cmd.arg(format!("--web.config.file={}", web.display()));
            }
            // SAFETY: prctl is async-signal-safe and touches only the child being created.
            // It kills the server if the test process dies without running Drop.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("starting {}: {e}. {INSTALL_HINT}", self.binary.display())
            });
            self.child = Some(child);
            match self.wait_ready().await {
                Ok(()) => return,
                Err(why) => {
                    let log = self.log();
                    self.stop();
                    if log.contains("address already in use") && attempt < 2 {
                        continue;
                    }
                    panic!("Prometheus did not become ready: {why}\n--- its log ---\n{log}");
                }
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = self.client();
        let url = format!("{}/-/ready", self.url());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("it exited with {status}"));
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("no ready answer within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    /// Decoded query-string pairs, in order.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct ProxyState {
    requests: Mutex<Vec<Recorded>>,
    /// When set, every request gets this status (and `Retry-After` seconds) instead.
    failure: Mutex<Option<(u16, Option<u64>)>>,
}

/// A loopback HTTP proxy in front of a Prometheus: records every request, can require an
/// exact `Authorization` header (the way an auth gateway enforces bearer tokens, which
/// Prometheus itself cannot; a refusal echoes the header it got), and can be told to fail.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards to `upstream` (a base URL); with `require_authorization`, anything else gets 401.
    pub async fn start(upstream: &str, require_authorization: Option<&str>) -> Proxy {
        let state = Arc::new(ProxyState::default());
        let upstream = upstream.trim_end_matches('/').to_string();
        let required = require_authorization.map(str::to_string);
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback({
            let state = state.clone();
            move |req: Request<Body>| {
                let state = state.clone();
                let upstream = upstream.clone();
                let required = required.clone();
                let client = client.clone();
                async move { forward(req, &state, &upstream, required.as_deref(), &client).await }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().clone()
    }

    /// Instant queries seen so far.
    pub fn query_count(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/query")
            .count()
    }

    /// Answer every request with `status` (and `Retry-After`), or forward again with `None`.
    pub fn fail_with(&self, failure: Option<(u16, Option<u64>)>) {
        *self.state.failure.lock() = failure;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    req: Request<Body>,
    state: &ProxyState,
    upstream: &str,
    required: Option<&str>,
    client: &reqwest::Client,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let authorization = headers.get("authorization").cloned();
    state.requests.lock().push(Recorded {
        path: path.clone(),
        query,
        headers,
    });

    let reply = |status: StatusCode, headers: &[(&str, String)], body: String| {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.body(Body::from(body)).expect("a response")
    };
    if let Some(want) = required
        && authorization.as_deref() != Some(want)
    {
        // Echoes what it got, as careless gateways do: the scaler must scrub its errors.
        return reply(
            StatusCode::UNAUTHORIZED,
            &[("content-type", "text/plain".into())],
            format!("unauthorized: got {authorization:?}\n"),
        );
    }
    let failure = *state.failure.lock();
    if let Some((status, retry_after)) = failure {
        let mut h = vec![("content-type", "text/plain".to_string())];
        if let Some(secs) = retry_after {
            h.push(("retry-after", secs.to_string()));
        }
        return reply(
            StatusCode::from_u16(status).expect("a status"),
            &h,
            "injected failure\n".into(),
        );
    }

    let url = if raw_query.is_empty() {
        format!("{upstream}{path}")
    } else {
        format!("{upstream}{path}?{raw_query}")
    };
    match client.get(url).send().await {
        Ok(r) => {
            let status = r.status();
            let mut out = HeaderMap::new();
            if let Some(ct) = r.headers().get("content-type") {
                out.insert("content-type", ct.clone());
            }
            let body = r.bytes().await.unwrap_or_default();
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = status;
            *resp.headers_mut() = out;
            resp
        }
        Err(_) => reply(
            StatusCode::BAD_GATEWAY,
            &[],
            "upstream unreachable\n".into(),
        ),
    }
}
