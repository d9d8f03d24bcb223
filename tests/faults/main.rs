//! Fault injection, end to end: the real gRPC server called the way KEDA calls it
//! (GetMetrics, then IsActive), over the Service Bus double and a real Prometheus, while the
//! upstreams refuse, throttle, stall, break their bodies or vanish.
//!
//! For every fault the answers are checked against README's "Answers to KEDA" and the read
//! bounds of docs/servicebus.md and docs/prometheus.md:
//! - the gRPC code is OK or UNAVAILABLE (bad credentials and missing entities included), never
//!   UNKNOWN, and the server never panics;
//! - a failure is never read as 0: within `staleAfter` the last good value is held (and the
//!   answer never drops below the previous one), after it the answer is UNAVAILABLE, which
//!   is what engages KEDA's `fallback`;
//! - every answer comes back in well under KEDA's 3 s deadline (measured, bound 2.5 s);
//! - 429/503 `Retry-After` is honoured: the double sees no request sooner.
//!
//! Real time throughout (paused time would jump the clock while a request is on a socket),
//! with a short refresh interval and `staleAfter=3s`.

#[path = "../support/keda.rs"]
mod keda;
#[path = "../support/prometheus.rs"]
mod prometheus_support;

mod blended;
mod prometheus_upstream;
mod servicebus_upstream;

use std::sync::Arc;
use std::time::Duration;

use blend_scaler::cache::RefreshConfig;
use blend_scaler::engine::{EngineConfig, SignalCaches};
use blend_scaler::metrics::Metrics;
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::{Running, ServerConfig};
use blend_scaler::servicebus::client::ClientOptions;
use blend_scaler::servicebus::{self, ServiceBusUpstream};
use blend_scaler_testkit::servicebus::{Fault, RetryAfter, Served, ServiceBusDouble};
use parking_lot::Mutex;
use prometheus_support::{Prometheus, Proxy};
use tokio::time::Instant;
use tonic::{Code, Status};

/// The refresh interval (and the fast one) of the scaler under test.
const INTERVAL: Duration = Duration::from_millis(250);
/// `staleAfter` of every ScaledObject here.
const STALE: Duration = Duration::from_secs(3);
const STALE_AFTER: &str = "3s";
/// KEDA's deadline is 3 s; README ("Answers to KEDA") bounds a first read at 2 s. Generous for a loaded machine.
const ANSWER_BOUND: Duration = Duration::from_millis(2_500);
/// How often the tests poll, like an impatient KEDA.
const POLL: Duration = Duration::from_millis(100);
/// Slack on timing checks of request arrivals (recorded by the double as they come in).
const JITTER: Duration = Duration::from_millis(50);

/// Panics on the runtime's worker threads (the server's tasks and handlers), counted by a
/// hook: test bodies run on their own threads, so their failed assertions are not counted.
static SERVER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_server_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
            {
                SERVER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Stops the scaler (in-flight calls finish) and checks that nothing in it panicked.
async fn finish(s: Scaler) {
    s.running.shutdown().await.expect("a clean shutdown");
    assert_eq!(
        SERVER_PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a server task panicked (see the output above)"
    );
}

struct Scaler {
    running: Running,
    client: keda::Client,
}

/// The scaler on loopback with both upstream sources; Service Bus requests time out after
/// `servicebus_timeout`.
async fn scaler(servicebus_timeout: Duration) -> Scaler {
    count_server_panics();
    let refresh = RefreshConfig {
        interval: INTERVAL,
        fast_interval: INTERVAL,
        first_read_timeout: Duration::from_secs(2),
        max_backoff: Duration::from_secs(1),
        ..RefreshConfig::default()
    };
    let metrics = Metrics::new();
    let upstream = ServiceBusUpstream::with_options(
        metrics.clone(),
        ClientOptions {
            timeout: servicebus_timeout,
            ..ClientOptions::loopback()
        },
        Err("no workload identity in these tests".into()),
    );
    let sources = SignalCaches {
        servicebus: Some(servicebus::source_from(upstream, refresh.clone())),
        prometheus: Some(blend_scaler::prometheus::source(
            refresh.clone(),
            metrics.clone(),
            &blend_scaler::binding::HostRules::loopback(),
        )),
    };
    let mut config = ServerConfig::loopback();
    config.engine = EngineConfig {
        refresh,
        ..EngineConfig::default()
    };
    let (running, client) = keda::start(config, sources, metrics).await;
    Scaler { running, client }
}

fn object(name: &str, pairs: &[(&str, String)]) -> ScaledObjectRef {
    let mut md = keda::metadata([keda::SCALER_ADDRESS, ("staleAfter", STALE_AFTER)]);
    md.extend(keda::metadata(pairs.iter().cloned()));
    keda::object("faults", name, md)
}

/// A ScaledObject on queue `queue` of the double (`messageCount` 5).
fn queue_object(name: &str, double: &ServiceBusDouble, queue: &str) -> ScaledObjectRef {
    object(
        name,
        &[
            ("endpoint", double.endpoint()),
            ("connectionFromEnv", double.connection_string()),
            ("queueName", queue.into()),
            ("messageCount", "5".into()),
        ],
    )
}

/// One KEDA poll: GetMetrics then IsActive, each timed.
#[derive(Debug)]
struct Answer {
    /// When the poll started.
    at: Instant,
    metrics: Result<i64, Status>,
    active: Result<bool, Status>,
}

impl Answer {
    fn value(&self) -> Option<i64> {
        self.metrics.as_ref().ok().copied()
    }

    fn unavailable(&self) -> bool {
        matches!(&self.metrics, Err(s) if s.code() == Code::Unavailable)
    }
}

async fn poll(s: &Scaler, obj: &ScaledObjectRef) -> Answer {
    let mut client = s.client.clone();
    let at = Instant::now();
    let metrics = keda::metric_value(&mut client, obj, keda::METRIC)
        .await
        .map(|(int, float)| {
            assert_eq!(int as f64, float, "int and float agree");
            assert!(int >= 0, "never negative: {int}");
            int
        });
    let took = at.elapsed();
    assert!(took < ANSWER_BOUND, "GetMetrics took {took:?}: {metrics:?}");
    let started = Instant::now();
    let active = client
        .is_active(obj.clone())
        .await
        .map(|r| r.into_inner().result);
    let took = started.elapsed();
    assert!(took < ANSWER_BOUND, "IsActive took {took:?}: {active:?}");
    for status in [metrics.as_ref().err(), active.as_ref().err()]
        .into_iter()
        .flatten()
    {
        assert!(
            matches!(status.code(), Code::Unavailable),
            "only UNAVAILABLE for an upstream failure, never {:?}: {}",
            status.code(),
            status.message()
        );
        assert!(!status.message().is_empty(), "an error says why");
    }
    Answer {
        at,
        metrics,
        active,
    }
}

/// Polls until `done` holds for an answer (returned with every answer seen), failing at `within`.
async fn poll_until(
    s: &Scaler,
    obj: &ScaledObjectRef,
    within: Duration,
    what: &str,
    done: impl Fn(&Answer) -> bool,
) -> Vec<Answer> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let a = poll(s, obj).await;
        let ok = done(&a);
        seen.push(a);
        if ok {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}: {seen:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// After a fault that began at `fault_at` (the last good read was at most one refresh before),
/// the answers hold `held` (never lower, never 0) while the value is younger than
/// `staleAfter`, then turn UNAVAILABLE and stay so, with a message containing `reason`.
async fn held_then_unavailable(
    s: &Scaler,
    obj: &ScaledObjectRef,
    fault_at: Instant,
    held: i64,
    reason: &str,
) -> Vec<Answer> {
    // Age counts from the last good read (at most a refresh, plus scheduling, before the
    // fault) and is checked with whole-interval slack either side.
    let surely_fresh = fault_at + STALE - Duration::from_millis(1_000);
    let surely_stale = fault_at + STALE + Duration::from_millis(1_500);
    let mut seen: Vec<Answer> = Vec::new();
    loop {
        let a = poll(s, obj).await;
        match &a.metrics {
            Ok(v) => {
                assert_eq!(
                    *v, held,
                    "the last good value is held, never lowered: {a:?}"
                );
                // (IsActive comes a moment later and may already find the value stale.)
                assert!(
                    matches!(&a.active, Ok(true))
                        || matches!(&a.active, Err(s) if s.code() == Code::Unavailable),
                    "held active: {a:?}"
                );
                assert!(
                    !seen.iter().any(Answer::unavailable),
                    "once stale, stays UNAVAILABLE until the upstream recovers: {seen:#?}\n{a:?}"
                );
                assert!(
                    a.at < surely_stale,
                    "still answering past staleAfter: {a:?}"
                );
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{a:?}");
                assert!(
                    a.at >= surely_fresh,
                    "UNAVAILABLE before staleAfter: the value should be held ({:?} after the \
                     fault): {a:?}",
                    a.at - fault_at
                );
                assert!(
                    status.message().contains(reason) && status.message().contains("staleAfter"),
                    "the message names the failure and the stale value: {}",
                    status.message()
                );
                assert!(
                    matches!(&a.active, Err(s) if s.code() == Code::Unavailable),
                    "IsActive agrees: {a:?}"
                );
            }
        }
        let at = a.at;
        seen.push(a);
        if at >= surely_stale {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(
        seen.iter().any(|a| a.value() == Some(held)),
        "held within staleAfter: {seen:#?}"
    );
    assert!(
        seen.last().is_some_and(Answer::unavailable),
        "UNAVAILABLE after staleAfter: {seen:#?}"
    );
    seen
}

/// A never-seen ScaledObject whose upstream fails: UNAVAILABLE naming the failure, never 0.
async fn first_answer_is_unavailable(s: &Scaler, obj: &ScaledObjectRef, reason: &str) {
    let a = poll(s, obj).await;
    let status = a
        .metrics
        .as_ref()
        .expect_err("no value from a failing upstream");
    assert_eq!(status.code(), Code::Unavailable, "{a:?}");
    assert!(
        status.message().contains(reason),
        "the message names the failure (`{reason}`): {}",
        status.message()
    );
    assert!(
        matches!(&a.active, Err(s) if s.code() == Code::Unavailable),
        "IsActive agrees: {a:?}"
    );
    // Asked again from the cache: still no value.
    let again = poll(s, obj).await;
    assert!(again.unavailable(), "{again:?}");
}

/// When each management request reached the double, and what it got.
struct Arrivals {
    double: Arc<ServiceBusDouble>,
}

impl Arrivals {
    fn watch(double: Arc<ServiceBusDouble>) -> Self {
        Self { double }
    }

    fn since(&self, t: Instant) -> Vec<Instant> {
        self.served_since(t).iter().map(|s| s.at).collect()
    }

    fn served_since(&self, t: Instant) -> Vec<Served> {
        self.double
            .served()
            .into_iter()
            .filter(|s| s.at >= t)
            .collect()
    }

    /// The first request answered with `status` at or after `t`.
    fn first(&self, status: u16, t: Instant) -> Instant {
        self.served_since(t)
            .iter()
            .find(|s| s.status == status)
            .unwrap_or_else(|| panic!("no {status} answered: {:#?}", self.double.served()))
            .at
    }
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// A TCP forwarder to an upstream that can vanish at once: no listener, no open connection.
struct Forwarder {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(to: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                t.lock().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            addr,
            tasks,
            accept,
        }
    }

    /// Closes the listening port and every connection through it.
    fn vanish(&self) {
        self.accept.abort();
        self.tasks.lock().abort_all();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.vanish();
    }
}

/// A queue with 12 messages and `messageCount` 5: 3 replicas, active.
async fn good_queue() -> (Arc<ServiceBusDouble>, ScaledObjectRef) {
    let double = ServiceBusDouble::start().await.expect("the double starts");
    double.set_queue("orders", 12);
    let obj = queue_object("consumer", &double, "orders");
    (Arc::new(double), obj)
}

async fn first_good_answer(s: &Scaler, obj: &ScaledObjectRef, want: i64) {
    let a = poll(s, obj).await;
    assert_eq!(a.value(), Some(want), "{a:?}");
    assert_eq!(a.active.as_ref().ok(), Some(&true), "{a:?}");
}

/// A ScaledObject on a Prometheus query (`threshold` 10).
fn prometheus_object(name: &str, server: &str, query: &str) -> ScaledObjectRef {
    object(
        name,
        &[
            ("serverAddress", server.into()),
            ("query", query.into()),
            ("threshold", "10".into()),
        ],
    )
}
