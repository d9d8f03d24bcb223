//! Prometheus metrics (SPEC section 6). Labels stay bounded: ScaledObject identity, signal
//! kind, upstream kind, outcome class, RPC method and status code; never URLs, queries,
//! error strings or secrets.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::signal::SignalKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub scaledobject_namespace: String,
    pub scaledobject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub scaledobject_namespace: String,
    pub scaledobject: String,
    pub signal: &'static str,
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

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the scaler exports, cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    desired_replicas: Family<ObjectLabels, FloatGauge>,
    signal_value: Family<SignalLabels, FloatGauge>,
    signal_replicas: Family<SignalLabels, FloatGauge>,
    signal_age: Family<SignalLabels, FloatGauge>,
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
        let desired_replicas = Family::default();
        let signal_value = Family::default();
        let signal_replicas = Family::default();
        let signal_age = Family::default();
        let upstream_requests = Family::default();
        let upstream_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let grpc_requests = Family::default();
        let grpc_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let tracked_objects = Gauge::default();
        registry.register(
            "desired_replicas",
            "Blended replica count last answered for a ScaledObject",
            desired_replicas.clone(),
        );
        registry.register(
            "signal_value",
            "Raw value of one signal (active messages, query result, cron replicas)",
            signal_value.clone(),
        );
        registry.register(
            "signal_replicas",
            "Replicas one signal asks for on its own",
            signal_replicas.clone(),
        );
        registry.register(
            "signal_age_seconds",
            "Age of the value a signal was last decided with",
            signal_age.clone(),
        );
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
            desired_replicas,
            signal_value,
            signal_replicas,
            signal_age,
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

    pub fn record_decision(
        &self,
        object: &ObjectLabels,
        replicas: Option<u32>,
        signals: &[(SignalKind, f64, u32, Option<Duration>)],
    ) {
        if let Some(r) = replicas {
            self.0
                .desired_replicas
                .get_or_create(object)
                .set(f64::from(r));
        }
        for (kind, value, reps, age) in signals {
            let labels = SignalLabels {
                scaledobject_namespace: object.scaledobject_namespace.clone(),
                scaledobject: object.scaledobject.clone(),
                signal: kind.as_str(),
            };
            self.0.signal_value.get_or_create(&labels).set(*value);
            self.0
                .signal_replicas
                .get_or_create(&labels)
                .set(f64::from(*reps));
            if let Some(age) = age {
                self.0
                    .signal_age
                    .get_or_create(&labels)
                    .set(age.as_secs_f64());
            }
        }
    }

    /// Drops the series of a ScaledObject no longer tracked, so label sets stay bounded.
    pub fn forget(&self, object: &ObjectLabels) {
        self.0.desired_replicas.remove(object);
        for kind in [
            SignalKind::ServiceBus,
            SignalKind::Prometheus,
            SignalKind::Cron,
        ] {
            let labels = SignalLabels {
                scaledobject_namespace: object.scaledobject_namespace.clone(),
                scaledobject: object.scaledobject.clone(),
                signal: kind.as_str(),
            };
            self.0.signal_value.remove(&labels);
            self.0.signal_replicas.remove(&labels);
            self.0.signal_age.remove(&labels);
        }
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
}
