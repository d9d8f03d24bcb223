//! Prometheus metrics (README, "Metrics"). Labels stay bounded: ScaledObject identity, signal
//! kind, upstream kind, outcome class, RPC method and status code; never URLs, queries,
//! error strings or secrets.

use std::collections::BTreeMap;
use std::sync::Arc;
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

use crate::signal::SignalKind;

/// A ScaledObject as KEDA names it, the labels of its series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectLabels {
    pub scaledobject_namespace: String,
    pub scaledobject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamKindLabels {
    pub upstream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

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
    tracked_objects: Gauge,
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
        Self(Arc::new(Inner {
            registry,
            objects,
            upstream_requests,
            upstream_duration,
            grpc_requests,
            grpc_duration,
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

    pub fn upstream_request(&self, upstream: &'static str, outcome: &'static str, took: Duration) {
        self.0
            .upstream_requests
            .get_or_create(&UpstreamLabels { upstream, outcome })
            .inc();
        self.0
            .upstream_duration
            .get_or_create(&UpstreamKindLabels { upstream })
            .observe(took.as_secs_f64());
    }

    pub fn grpc_request(&self, method: &'static str, code: &'static str, took: Duration) {
        self.0
            .grpc_requests
            .get_or_create(&GrpcLabels { method, code })
            .inc();
        self.0
            .grpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    pub fn set_tracked(&self, n: u64) {
        self.0.tracked_objects.set(n as i64);
    }

    /// Records a ScaledObject's decision: the answer (when there is one) and each usable
    /// signal's figures. A signal missing from this decision keeps its last figures.
    pub fn record_decision(
        &self,
        object: &ObjectLabels,
        replicas: Option<u32>,
        signals: &[(SignalKind, f64, u32, Option<Duration>)],
    ) {
        let mut objects = self.0.objects.0.lock();
        let series = match objects.get_mut(object) {
            Some(series) => series,
            None => objects.entry(Arc::new(object.clone())).or_default(),
        };
        if let Some(r) = replicas {
            series.desired = Some(f64::from(r));
        }
        for &(kind, value, replicas, age) in signals {
            series.signals[kind as usize] = Some(SignalFigures {
                value,
                replicas: f64::from(replicas),
                age: age.map(|a| a.as_secs_f64()),
            });
        }
    }

    /// Drops the series of a ScaledObject no longer tracked, so label sets stay bounded.
    pub fn forget(&self, object: &ObjectLabels) {
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
    /// By [`SignalKind`], in declaration order.
    signals: [Option<SignalFigures>; 3],
}

#[derive(Clone, Copy, Debug)]
struct SignalFigures {
    value: f64,
    replicas: f64,
    age: Option<f64>,
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

const SIGNAL_METRICS: [SignalMetric; 3] = [
    (
        "signal_value",
        "Raw value of one signal (active messages, query result, cron replicas)",
        |f| Some(f.value),
    ),
    (
        "signal_replicas",
        "Replicas one signal asks for on its own",
        |f| Some(f.replicas),
    ),
    (
        "signal_age_seconds",
        "Age of the value a signal was last decided with",
        |f| f.age,
    ),
];

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
        let mut family = encoder.encode_descriptor(
            "desired_replicas",
            "Blended replica count last answered for a ScaledObject",
            None,
            MetricType::Gauge,
        )?;
        for (o, figures) in objects.iter() {
            if let Some(d) = figures.desired {
                let labels = [
                    ("scaledobject_namespace", o.scaledobject_namespace.as_str()),
                    ("scaledobject", o.scaledobject.as_str()),
                ];
                ConstGauge::new(d).encode(family.encode_family(&labels)?)?;
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
                        ("scaledobject_namespace", o.scaledobject_namespace.as_str()),
                        ("scaledobject", o.scaledobject.as_str()),
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
        m.record_decision(
            &obj,
            Some(4),
            &[(
                SignalKind::ServiceBus,
                37.0,
                4,
                Some(Duration::from_secs(2)),
            )],
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
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        m.forget(&obj);
        assert!(!m.encode().contains(r#"scaledobject="orders""#));
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
        m.record_decision(&obj("orders"), Some(4), &[sb, cron]);
        m.record_decision(&obj("billing"), None, &[cron]);
        // Service Bus missing from the next decision: its last figures stay.
        m.record_decision(&obj("orders"), Some(3), &[(SignalKind::Cron, 3.0, 3, None)]);
        let text = m.encode();
        for needle in [
            "# TYPE blend_scaler_desired_replicas gauge",
            "# TYPE blend_scaler_signal_age_seconds gauge",
            r#"blend_scaler_desired_replicas{scaledobject_namespace="prod",scaledobject="orders"} 3"#,
            r#"blend_scaler_signal_value{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 37"#,
            r#"blend_scaler_signal_age_seconds{scaledobject_namespace="prod",scaledobject="orders",signal="servicebus"} 2"#,
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
        m.forget(&obj("orders"));
        let text = m.encode();
        assert!(!text.contains(r#"scaledobject="orders""#), "{text}");
        assert!(text.contains(r#"scaledobject="billing""#), "{text}");
    }
}
