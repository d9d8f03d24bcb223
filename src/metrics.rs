//! Prometheus metrics (README, "Metrics"). Labels stay bounded: ScaledObject identity, signal
//! kind, upstream kind, outcome class, RPC method and status code; never URLs, queries,
//! error strings or secrets.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
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

    /// Adds where per-ScaledObject series come from at scrape time (an engine's tracked
    /// objects). Held weakly: a source dropped is left out, and none keeps another alive.
    pub(crate) fn add_object_source(&self, source: Weak<dyn ObjectSource>) {
        let mut sources = self.0.objects.0.lock();
        sources.retain(|s| s.strong_count() > 0);
        sources.push(source);
    }
}

/// What per-ScaledObject series are made of at scrape time: each object's labels, when its
/// last answer was given, and its figures ([`crate::engine`] keeps them with the object).
pub(crate) trait ObjectSource: Send + Sync {
    fn each_object(&self, each: &mut dyn FnMut(ObjectEntry<'_>));
}

/// One object as a source gives it: labels, when it last answered, and its figures.
pub(crate) type ObjectEntry<'a> = (&'a ObjectLabels, Option<DateTime<Utc>>, Figures);

/// The per-ScaledObject series, written out at scrape time from what each object keeps of
/// its answers. (A label-keyed family per metric held about 1.6 KB per object in hash tables
/// and label copies, and allocated labels on every KEDA call; a map of figures by object
/// another 500 bytes, a second record of each answer.)
#[derive(Default)]
struct ObjectSeries(Mutex<Vec<Weak<dyn ObjectSource>>>);

impl std::fmt::Debug for ObjectSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSeries")
            .field("sources", &self.0.lock().len())
            .finish()
    }
}

/// One ScaledObject's series values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Figures {
    pub(crate) desired: Option<f64>,
    pub(crate) max_replicas: Option<f64>,
    pub(crate) stale_after: Option<f64>,
    /// By [`SignalKind`], in declaration order.
    pub(crate) signals: [Option<SignalFigures>; 3],
    pub(crate) servicebus: Option<EntityCounts>,
}

impl Figures {
    /// `self` with what `later` (a later answer of another trigger of the same object) has:
    /// its figures where it has them, as if both had written into one series in turn.
    fn then(self, later: Figures) -> Figures {
        let mut signals = self.signals;
        for (mine, theirs) in signals.iter_mut().zip(later.signals) {
            *mine = theirs.or(*mine);
        }
        Figures {
            desired: later.desired.or(self.desired),
            max_replicas: later.max_replicas,
            stale_after: later.stale_after,
            signals,
            servicebus: later.servicebus.or(self.servicebus),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SignalFigures {
    /// `None` until the signal has had a usable value.
    pub(crate) value: Option<f64>,
    pub(crate) replicas: Option<f64>,
    pub(crate) age: Option<f64>,
    /// The latest answer had no usable value for it.
    pub(crate) missing: bool,
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
        let sources: Vec<Arc<dyn ObjectSource>> =
            self.0.lock().iter().filter_map(Weak::upgrade).collect();
        let mut all: Vec<(ObjectLabels, Option<DateTime<Utc>>, Figures)> = Vec::new();
        for source in &sources {
            source.each_object(&mut |(labels, at, figures)| {
                all.push((labels.clone(), at, figures));
            });
        }
        // The triggers of one object share its series: each in the order it answered.
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut objects: Vec<(ObjectLabels, Figures)> = Vec::with_capacity(all.len());
        for (labels, _, figures) in all {
            match objects.last_mut() {
                Some((last, kept)) if *last == labels => *kept = kept.then(figures),
                _ => objects.push((labels, figures)),
            }
        }
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
        let source = Objects::source(vec![(
            labels("orders"),
            Some(1),
            Figures {
                desired: Some(4.0),
                max_replicas: Some(20.0),
                stale_after: Some(60.0),
                signals: [Some(used(37.0, 4.0, Some(2.0))), None, None],
                servicebus: Some(EntityCounts {
                    active: Some(37),
                    dead_letter: Some(3),
                    scheduled: Some(1),
                    transfer: Some(0),
                    transfer_dead_letter: None,
                }),
            },
        )]);
        m.add_object_source(Arc::downgrade(&source));
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
        drop(source);
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
    fn the_triggers_of_one_object_write_its_series_in_the_order_they_answered() {
        let m = Metrics::new();
        let cron = |replicas: f64| Some(used(replicas, replicas, None));
        let figures = |desired: Option<f64>, signals| Figures {
            desired,
            stale_after: Some(60.0),
            signals,
            ..Figures::default()
        };
        let source = Objects::source(vec![
            // The later answer of `orders`' two triggers wins where it has a figure; the
            // earlier one's Service Bus figures stay, since the later has none.
            (
                labels("orders"),
                Some(2),
                figures(None, [None, None, cron(3.0)]),
            ),
            (
                labels("orders"),
                Some(1),
                figures(
                    Some(4.0),
                    [Some(used(37.0, 4.0, Some(2.0))), None, cron(1.0)],
                ),
            ),
            (
                labels("billing"),
                None,
                figures(
                    None,
                    [
                        None,
                        Some(SignalFigures {
                            value: None,
                            replicas: None,
                            age: None,
                            missing: true,
                        }),
                        None,
                    ],
                ),
            ),
        ]);
        m.add_object_source(Arc::downgrade(&source));
        let text = m.encode();
        for needle in [
            "# TYPE blend_scaler_desired_replicas gauge",
            r#"blend_scaler_desired_replicas{scaledobject_namespace="prod",scaledobject="orders"} 4"#,
            r#"blend_scaler_signal_value{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 37"#,
            r#"blend_scaler_signal_value{scaledobject_namespace="prod",scaledobject="orders",signal="cron"} 3"#,
            r#"blend_scaler_signal_missing{scaledobject_namespace="prod",scaledobject="billing",signal="prometheus"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(
            text.matches(
                r#"desired_replicas{scaledobject_namespace="prod",scaledobject="orders"}"#
            )
            .count(),
            1
        );
        // No count yet for billing, and a signal never read has no value.
        assert!(
            !text.contains(
                r#"desired_replicas{scaledobject_namespace="prod",scaledobject="billing"}"#
            )
        );
        assert!(!text.contains(r#"signal_value{scaledobject_namespace="prod",scaledobject="billing",signal="prometheus"}"#));
        // Cron values have no age.
        assert!(!text.contains(r#"signal_age_seconds{scaledobject_namespace="prod",scaledobject="orders",signal="cron"}"#));
    }

    fn labels(name: &str) -> ObjectLabels {
        ObjectLabels {
            scaledobject_namespace: "prod".into(),
            scaledobject: name.into(),
        }
    }

    fn used(value: f64, replicas: f64, age: Option<f64>) -> SignalFigures {
        SignalFigures {
            value: Some(value),
            replicas: Some(replicas),
            age,
            missing: false,
        }
    }

    /// Objects with fixed figures, answered at the given seconds.
    struct Objects(Vec<(ObjectLabels, Option<DateTime<Utc>>, Figures)>);

    impl Objects {
        fn source(objects: Vec<(ObjectLabels, Option<i64>, Figures)>) -> Arc<dyn ObjectSource> {
            Arc::new(Self(
                objects
                    .into_iter()
                    .map(|(l, at, f)| (l, at.and_then(|s| DateTime::from_timestamp(s, 0)), f))
                    .collect(),
            ))
        }
    }

    impl ObjectSource for Objects {
        fn each_object(&self, each: &mut dyn FnMut(ObjectEntry<'_>)) {
            for (labels, at, figures) in &self.0 {
                each((labels, *at, *figures));
            }
        }
    }
}
