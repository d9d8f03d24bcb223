//! The `prometheus` signal against a real Prometheus server (the Debian `prometheus` package),
//! with exact backfilled series. Needs `apt-get install -y prometheus`; fails without it.

#[path = "../support/prometheus.rs"]
mod prometheus_support;

mod credentials;
mod failures;
mod reads;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blend_scaler::binding::HostRules;
use blend_scaler::blend::{Inputs, decide, replicas_for};
use blend_scaler::cache::{RefreshConfig, Refresher, Upstream};
use blend_scaler::metadata::{Credentials, Origin, Plan, PrometheusPlan, parse};
use blend_scaler::metrics::Metrics;
use blend_scaler::prometheus::{self, PrometheusUpstream, key};
use blend_scaler::signal::{Observation, SignalError, SignalKind};
use prometheus_support::{BASIC_PASSWORD, BASIC_USER, Prometheus, Proxy, tls_fixture};

/// A whole trigger's plan, parsed as KEDA would hand the metadata over.
fn plan(server: &str, extra: &[(&str, &str)]) -> Plan {
    let mut md: HashMap<String, String> = HashMap::new();
    md.insert("serverAddress".into(), server.into());
    md.insert("threshold".into(), "10".into());
    for (k, v) in extra {
        md.insert(k.to_string(), v.to_string());
    }
    parse(&md, Origin::Keda, &Credentials::default()).expect("valid metadata")
}

fn prom(plan: &Plan) -> &PrometheusPlan {
    plan.prometheus.as_ref().expect("a Prometheus plan")
}

/// The Prometheus upstream as `serve --allow-loopback-upstreams` builds it: the test servers
/// listen on loopback.
fn upstream_on_loopback(metrics: Metrics) -> PrometheusUpstream {
    PrometheusUpstream::new(metrics, &HostRules::loopback())
}

/// One uncached read, as a refresh does it.
async fn read(upstream: &PrometheusUpstream, plan: &Plan) -> Result<f64, SignalError> {
    let (server, query) = key(prom(plan));
    upstream.query(&server, &query).await
}

fn fast_refresh() -> RefreshConfig {
    RefreshConfig {
        interval: Duration::from_millis(300),
        fast_interval: Duration::from_millis(300),
        first_read_timeout: Duration::from_secs(2),
        idle_ttl: Duration::from_secs(60),
        max_backoff: Duration::from_millis(600),
        ..RefreshConfig::default()
    }
}

/// Polls `observe` until `done` holds, at most `within`.
async fn observe_until(
    refresher: &Refresher<PrometheusUpstream>,
    plan: &Plan,
    within: Duration,
    done: impl Fn(&Observation) -> bool,
) -> Observation {
    let (server, query) = key(prom(plan));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let obs = refresher.observe(&server, &query).await;
        if done(&obs) || tokio::time::Instant::now() > deadline {
            return obs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything any test in this binary logged (all targets, all levels), for leak checks.
/// One global subscriber rather than a per-test one: tracing caches per call site whether
/// anyone listens, and a call site first hit on another test's thread would stay silent to a
/// thread-scoped subscriber.
fn captured_logs() -> String {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedBuffer(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        buffer
    });
    String::from_utf8_lossy(&buffer.lock()).into_owned()
}

#[derive(Clone)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
