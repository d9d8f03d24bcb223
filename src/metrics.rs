//! Prometheus metrics (README, "Metrics"). Labels stay bounded: ScaledObject identity, signal
//! kind, upstream kind, outcome class, RPC method and status code; never URLs, queries,
//! error strings or secrets.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::signal::{EntityCounts, SignalKind};

/// What one answer leaves in a ScaledObject's series.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AnswerFigures<'a> {
    /// The answer, when there was one (not for `UNAVAILABLE`).
    pub(crate) replicas: Option<u32>,
    /// Each usable signal: kind, value, replicas, age.
    pub(crate) signals: &'a [(SignalKind, f64, u32, Option<Duration>)],
    /// Each signal without a usable value, with the age of its last good value if any.
    pub(crate) missing: &'a [(SignalKind, Option<Duration>)],
    /// The plan's `maxReplicas` clamp.
    pub(crate) max_replicas: Option<u32>,
    /// The plan's `staleAfter`.
    pub(crate) stale_after: Duration,
    /// The other counts of the Service Bus entity the answer read.
    pub(crate) servicebus: Option<EntityCounts>,
}

/// A ScaledObject as KEDA names it, the labels of its series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjectLabels {
    pub(crate) scaledobject_namespace: Arc<str>,
    pub(crate) scaledobject: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) upstream: &'static str,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamKindLabels {
    pub(crate) upstream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabels {
    pub(crate) method: &'static str,
    pub(crate) code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub(crate) method: &'static str,
}

/// The `ExternalScaler` methods, whose series [`Metrics::grpc_request`] keeps handles to.
const GRPC_METHODS: [&str; 5] = [
    "IsActive",
    "StreamIsActive",
    "GetMetricSpec",
    "GetMetrics",
    "StreamMetricSpec",
];

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the scaler exports, cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    objects: Arc<ObjectSeries>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<UpstreamKindLabels, Histogram, fn() -> Histogram>,
    grpc_requests: Family<GrpcLabels, Counter>,
    grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// By [`GRPC_METHODS`]: the `OK` counter and the latency histogram of each method, taken
    /// from the families at its first call. Every KEDA call records both; a family lookup
    /// takes the family's read lock (a write to a word both cores share) and SipHashes the
    /// labels, two of them per call.
    grpc_handles: [OnceLock<(Counter, Histogram)>; GRPC_METHODS.len()],
    tracked_objects: Gauge,
    refresh_restarts: Family<UpstreamKindLabels, Counter>,
    refresh_read_panics: Family<UpstreamKindLabels, Counter>,
    refresh_down: Family<UpstreamKindLabels, Gauge>,
    /// Of every upstream kind, for `/readyz`.
    refresh_down_total: std::sync::atomic::AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("blend_scaler");
        let objects = Arc::new(ObjectSeries::default());
        registry.register_collector(Box::new(objects.clone()));
        let upstream_requests = Family::default();
        let upstream_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let grpc_requests = Family::default();
        let grpc_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let tracked_objects = Gauge::default();
        registry.register(
            "upstream_requests",
            "Requests to upstreams by outcome",
            upstream_requests.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Upstream request latency",
            upstream_duration.clone(),
        );
        registry.register(
            "grpc_requests",
            "KEDA calls by method and status code",
            grpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "KEDA call latency",
            grpc_duration.clone(),
        );
        registry.register(
            "tracked_scaledobjects",
            "ScaledObjects the scaler currently tracks",
            tracked_objects.clone(),
        );
        let refresh_restarts = Family::default();
        let refresh_read_panics = Family::default();
        let refresh_down = Family::default();
        registry.register(
            "refresh_task_restarts",
            "Refresh tasks restarted after a panic",
            refresh_restarts.clone(),
        );
        registry.register(
            "refresh_read_panics",
            "Upstream reads that panicked (reported as an error for their items)",
            refresh_read_panics.clone(),
        );
        registry.register(
            "refresh_groups_down",
            "Upstream groups whose refresh panicked and has not completed a read since",
            refresh_down.clone(),
        );
        Self(Arc::new(Inner {
            refresh_restarts,
            refresh_read_panics,
            refresh_down,
            refresh_down_total: std::sync::atomic::AtomicI64::new(0),
            registry,
            objects,
            upstream_requests,
            upstream_duration,
            grpc_requests,
            grpc_duration,
            grpc_handles: Default::default(),
            tracked_objects,
        }))
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.0.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn upstream_request(
        &self,
        upstream: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.0
            .upstream_requests
            .get_or_create(&UpstreamLabels { upstream, outcome })
            .inc();
        self.0
            .upstream_duration
            .get_or_create(&UpstreamKindLabels { upstream })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn grpc_request(&self, method: &'static str, code: &'static str, took: Duration) {
        let seconds = took.as_secs_f64();
        let slot = GRPC_METHODS.iter().position(|m| *m == method);
        if let Some(slot) = slot.filter(|_| code == "OK") {
            // The series are created on a method's first call, as the families would.
            let (calls, latency) = self.0.grpc_handles[slot].get_or_init(|| {
                let calls = self
                    .0
                    .grpc_requests
                    .get_or_create(&GrpcLabels { method, code });
                let latency = self.0.grpc_duration.get_or_create(&MethodLabels { method });
                (calls.clone(), latency.clone())
            });
            calls.inc();
            latency.observe(seconds);
            return;
        }
        self.0
            .grpc_requests
            .get_or_create(&GrpcLabels { method, code })
            .inc();
        self.0
            .grpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    /// A group's refresh panicked: its whole task (`task`, restarted) or one read.
    pub(crate) fn refresh_panicked(&self, upstream: &'static str, task: bool) {
        let family = if task {
            &self.0.refresh_restarts
        } else {
            &self.0.refresh_read_panics
        };
        family.get_or_create(&UpstreamKindLabels { upstream }).inc();
    }

    /// A group's refresh went down (a panic) or came back (a read completed).
    pub(crate) fn refresh_group_down(&self, upstream: &'static str, down: bool) {
        let delta = if down { 1 } else { -1 };
        self.0
            .refresh_down
            .get_or_create(&UpstreamKindLabels { upstream })
            .inc_by(delta);
        self.0
            .refresh_down_total
            .fetch_add(delta, std::sync::atomic::Ordering::SeqCst);
    }

    /// Groups whose refresh is down, of every upstream kind (`/readyz` is not ready above 0).
    pub(crate) fn refresh_groups_down(&self) -> i64 {
        self.0
            .refresh_down_total
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn set_tracked(&self, n: u64) {
        self.0.tracked_objects.set(n as i64);
    }

    /// Records a ScaledObject's answer: the replicas (when there are some), each usable
    /// signal's figures, and each missing signal's age. A signal missing from this answer
    /// keeps its last value and replicas; its age keeps growing, so a stale signal shows.
    pub(crate) fn record_answer(&self, object: &ObjectLabels, answer: &AnswerFigures<'_>) {
        let mut objects = self.0.objects.0.lock();
        let series = match objects.get_mut(object) {
            Some(series) => series,
            None => objects.entry(Arc::new(object.clone())).or_default(),
        };
        if let Some(r) = answer.replicas {
            series.desired = Some(f64::from(r));
        }
        series.max_replicas = answer.max_replicas.map(f64::from);
        series.stale_after = Some(answer.stale_after.as_secs_f64());
        if answer.servicebus.is_some() {
            series.servicebus = answer.servicebus;
        }
        for &(kind, value, replicas, age) in answer.signals {
            series.signals[kind as usize] = Some(SignalFigures {
                value: Some(value),
                replicas: Some(f64::from(replicas)),
                age: age.map(|a| a.as_secs_f64()),
                missing: false,
            });
        }
        for &(kind, age) in answer.missing {
            let f = series.signals[kind as usize].get_or_insert(SignalFigures {
                value: None,
                replicas: None,
                age: None,
                missing: true,
            });
            f.missing = true;
            if let Some(age) = age {
                f.age = Some(age.as_secs_f64());
            }
        }
    }

    /// Drops the series of a ScaledObject no longer tracked, so label sets stay bounded.
    pub(crate) fn forget(&self, object: &ObjectLabels) {
        self.0.objects.0.lock().remove(object);
    }
}

/// The per-ScaledObject series: the last decision's figures, kept once per object and
/// written out at scrape time. (A label-keyed family per metric held about 1.6 KB per
/// object in hash tables and label copies, and allocated labels on every KEDA call.)
#[derive(Debug, Default)]
struct ObjectSeries(Mutex<BTreeMap<Arc<ObjectLabels>, Figures>>);

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    desired: Option<f64>,
    max_replicas: Option<f64>,
    stale_after: Option<f64>,
    /// By [`SignalKind`], in declaration order.
    signals: [Option<SignalFigures>; 3],
    servicebus: Option<EntityCounts>,
}

#[derive(Clone, Copy, Debug)]
struct SignalFigures {
    /// `None` until the signal has had a usable value.
    value: Option<f64>,
    replicas: Option<f64>,
    age: Option<f64>,
    /// The latest answer had no usable value for it.
    missing: bool,
}

const SIGNAL_KINDS: [SignalKind; 3] = [
    SignalKind::ServiceBus,
    SignalKind::Prometheus,
    SignalKind::Cron,
];

type SignalMetric = (
    &'static str,
    &'static str,
    fn(&SignalFigures) -> Option<f64>,
);

const SIGNAL_METRICS: [SignalMetric; 4] = [
    (
        "signal_value",
        "Raw value of one signal (active messages, query result, cron replicas)",
        |f| f.value,
    ),
    (
        "signal_replicas",
        "Replicas one signal asks for on its own",
        |f| f.replicas,
    ),
    (
        "signal_age_seconds",
        "Age of a signal's last good value at the latest answer (grows while it is missing)",
        |f| f.age,
    ),
    (
        "signal_missing",
        "1 when the latest answer had no usable value for the signal (never read, or past staleAfter)",
        |f| Some(if f.missing { 1.0 } else { 0.0 }),
    ),
];

type ObjectMetric = (&'static str, &'static str, fn(&Figures) -> Option<f64>);

/// Per-ScaledObject series, `desired_replicas` first.
const OBJECT_METRICS: [ObjectMetric; 8] = [
    (
        "desired_replicas",
        "Blended replica count last answered for a ScaledObject",
        |f| f.desired,
    ),
    ("max_replicas", "The trigger's maxReplicas clamp", |f| {
        f.max_replicas
    }),
    (
        "stale_after_seconds",
        "The trigger's staleAfter: a signal value older than this is not used",
        |f| f.stale_after,
    ),
    (
        "servicebus_active_messages",
        "ActiveMessageCount of the Service Bus entity (sum over a useRegex match)",
        |f| count(f.servicebus?.active),
    ),
    (
        "servicebus_dead_letter_messages",
        "DeadLetterMessageCount of the Service Bus entity, from the same management read",
        |f| count(f.servicebus?.dead_letter),
    ),
    (
        "servicebus_scheduled_messages",
        "ScheduledMessageCount of the Service Bus entity, from the same management read",
        |f| count(f.servicebus?.scheduled),
    ),
    (
        "servicebus_transfer_messages",
        "TransferMessageCount of the Service Bus entity, from the same management read",
        |f| count(f.servicebus?.transfer),
    ),
    (
        "servicebus_transfer_dead_letter_messages",
        "TransferDeadLetterMessageCount of the Service Bus entity, from the same management read",
        |f| count(f.servicebus?.transfer_dead_letter),
    ),
];

fn count(c: Option<u64>) -> Option<f64> {
    c.map(|c| c as f64)
}

impl Collector for ObjectSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Written from a copy: writing 10,000 objects' series takes some 20 ms, and KEDA's
        // calls must not wait for a scrape.
        let objects: Vec<(Arc<ObjectLabels>, Figures)> = self
            .0
            .lock()
            .iter()
            .map(|(o, figures)| (o.clone(), *figures))
            .collect();
        for (name, help, pick) in OBJECT_METRICS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (o, figures) in objects.iter() {
                let Some(v) = pick(figures) else { continue };
                let labels = [
                    ("scaledobject_namespace", o.scaledobject_namespace.as_ref()),
                    ("scaledobject", o.scaledobject.as_ref()),
                ];
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, pick) in SIGNAL_METRICS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (o, figures) in objects.iter() {
                for (kind, f) in SIGNAL_KINDS.iter().zip(&figures.signals) {
                    let Some(v) = f.as_ref().and_then(pick) else {
                        continue;
                    };
                    let labels = [
                        ("scaledobject_namespace", o.scaledobject_namespace.as_ref()),
                        ("scaledobject", o.scaledobject.as_ref()),
                        ("signal", kind.as_str()),
                    ];
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_uses_the_spec_names() {
        let m = Metrics::new();
        let obj = ObjectLabels {
            scaledobject_namespace: "prod".into(),
            scaledobject: "orders".into(),
        };
        m.record_answer(
            &obj,
            &AnswerFigures {
                replicas: Some(4),
                signals: &[(
                    SignalKind::ServiceBus,
                    37.0,
                    4,
                    Some(Duration::from_secs(2)),
                )],
                max_replicas: Some(20),
                stale_after: Duration::from_secs(60),
                servicebus: Some(EntityCounts {
                    active: Some(37),
                    dead_letter: Some(3),
                    scheduled: Some(1),
                    transfer: Some(0),
                    transfer_dead_letter: None,
                }),
                ..AnswerFigures::default()
            },
        );
        m.upstream_request("servicebus", "ok", Duration::from_millis(12));
        m.grpc_request("GetMetrics", "OK", Duration::from_millis(1));
        let text = m.encode();
        for needle in [
            r#"blend_scaler_desired_replicas{scaledobject_namespace="prod",scaledobject="orders"} 4"#,
            r#"blend_scaler_signal_value{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 37"#,
            r#"blend_scaler_signal_replicas{"#,
            r#"blend_scaler_signal_age_seconds{"#,
            r#"blend_scaler_upstream_requests_total{upstream="servicebus",outcome="ok"} 1"#,
            r#"blend_scaler_upstream_request_duration_seconds_bucket{"#,
            r#"blend_scaler_grpc_requests_total{method="GetMetrics",code="OK"} 1"#,
            r#"blend_scaler_grpc_request_duration_seconds_count{method="GetMetrics"} 1"#,
            r#"blend_scaler_max_replicas{scaledobject_namespace="prod",scaledobject="orders"} 20"#,
            r#"blend_scaler_stale_after_seconds{scaledobject_namespace="prod",scaledobject="orders"} 60"#,
            r#"blend_scaler_signal_missing{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 0"#,
            r#"blend_scaler_servicebus_dead_letter_messages{scaledobject_namespace="prod",scaledobject="orders"} 3"#,
            r#"blend_scaler_servicebus_scheduled_messages{scaledobject_namespace="prod",scaledobject="orders"} 1"#,
            r#"blend_scaler_servicebus_transfer_messages{scaledobject_namespace="prod",scaledobject="orders"} 0"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // A count the upstream left out is no series, never a 0.
        assert!(!text.contains("blend_scaler_servicebus_transfer_dead_letter_messages{"));
        m.forget(&obj);
        assert!(!m.encode().contains(r#"scaledobject="orders""#));
    }

    #[test]
    fn a_methods_calls_count_in_one_series_whatever_the_order_of_codes() {
        let m = Metrics::new();
        // No series before a method's first call.
        assert!(!m.encode().contains("method=\"IsActive\""));
        m.grpc_request("IsActive", "INVALID_ARGUMENT", Duration::from_millis(1));
        m.grpc_request("IsActive", "OK", Duration::from_millis(1));
        m.grpc_request("IsActive", "OK", Duration::from_millis(3));
        m.grpc_request("IsActive", "UNAVAILABLE", Duration::from_millis(1));
        m.grpc_request("GetMetrics", "OK", Duration::from_millis(1));
        let text = m.encode();
        for needle in [
            r#"blend_scaler_grpc_requests_total{method="IsActive",code="OK"} 2"#,
            r#"blend_scaler_grpc_requests_total{method="IsActive",code="INVALID_ARGUMENT"} 1"#,
            r#"blend_scaler_grpc_requests_total{method="IsActive",code="UNAVAILABLE"} 1"#,
            r#"blend_scaler_grpc_requests_total{method="GetMetrics",code="OK"} 1"#,
            r#"blend_scaler_grpc_request_duration_seconds_count{method="IsActive"} 4"#,
            r#"blend_scaler_grpc_request_duration_seconds_sum{method="IsActive"} 0.006"#,
            r#"blend_scaler_grpc_request_duration_seconds_count{method="GetMetrics"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(
            text.matches("grpc_requests_total{method=\"IsActive\",code=\"OK\"}")
                .count(),
            1
        );
        assert!(!text.contains("method=\"GetMetricSpec\""));
    }

    #[test]
    fn each_object_keeps_its_last_figures_per_signal_until_forgotten() {
        let m = Metrics::new();
        let obj = |name: &str| ObjectLabels {
            scaledobject_namespace: "prod".into(),
            scaledobject: name.into(),
        };
        let sb = (
            SignalKind::ServiceBus,
            37.0,
            4,
            Some(Duration::from_secs(2)),
        );
        let cron = (SignalKind::Cron, 3.0, 3, None);
        fn answer<'a>(
            replicas: Option<u32>,
            signals: &'a [(SignalKind, f64, u32, Option<Duration>)],
            missing: &'a [(SignalKind, Option<Duration>)],
        ) -> AnswerFigures<'a> {
            AnswerFigures {
                replicas,
                signals,
                missing,
                stale_after: Duration::from_secs(60),
                ..AnswerFigures::default()
            }
        }
        m.record_answer(&obj("orders"), &answer(Some(4), &[sb, cron], &[]));
        m.record_answer(&obj("billing"), &answer(None, &[cron], &[]));
        // Service Bus missing from the next answer: its last value stays, its age grows.
        m.record_answer(
            &obj("orders"),
            &answer(
                Some(3),
                &[(SignalKind::Cron, 3.0, 3, None)],
                &[(SignalKind::ServiceBus, Some(Duration::from_secs(90)))],
            ),
        );
        // A signal never read has no value, only its missing flag.
        m.record_answer(
            &obj("billing"),
            &answer(None, &[cron], &[(SignalKind::Prometheus, None)]),
        );
        let text = m.encode();
        for needle in [
            "# TYPE blend_scaler_desired_replicas gauge",
            "# TYPE blend_scaler_signal_age_seconds gauge",
            r#"blend_scaler_desired_replicas{scaledobject_namespace="prod",scaledobject="orders"} 3"#,
            r#"blend_scaler_signal_value{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 37"#,
            r#"blend_scaler_signal_age_seconds{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 90"#,
            r#"blend_scaler_signal_missing{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 1"#,
            r#"blend_scaler_signal_missing{scaledobject_namespace="prod",scaledobject="billing",signal="prometheus"} 1"#,
            r#"blend_scaler_signal_replicas{scaledobject_namespace="prod",scaledobject="billing",signal="cron"} 3"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // No answer yet for billing, and cron values have no age.
        assert!(
            !text.contains(
                r#"desired_replicas{scaledobject_namespace="prod",scaledobject="billing"}"#
            )
        );
        assert!(!text.contains(r#"signal_age_seconds{scaledobject_namespace="prod",scaledobject="orders",signal="cron"}"#));
        assert!(!text.contains(r#"signal_value{scaledobject_namespace="prod",scaledobject="billing",signal="prometheus"}"#));
        m.forget(&obj("orders"));
        let text = m.encode();
        assert!(!text.contains(r#"scaledobject="orders""#), "{text}");
        assert!(text.contains(r#"scaledobject="billing""#), "{text}");
    }
}
