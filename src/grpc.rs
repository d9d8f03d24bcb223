//! KEDA's `ExternalScaler` service over the engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::capacity::PerNamespace;
use crate::engine::{Engine, EngineError, ObjectRef, exhausted, unavailable};
use crate::grpc_status::code_label;
use crate::metrics::Metrics;
use crate::proto::external_scaler_server::ExternalScaler;
use crate::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// Longest namespace or name Kubernetes allows.
const MAX_NAME: usize = 253;
/// How often an open `StreamIsActive` re-checks cron windows between cache changes.
const STREAM_TICK: Duration = Duration::from_secs(1);

pub struct ScalerService {
    engine: Arc<Engine>,
    /// Turns true when the server stops, so open streams end instead of holding it up.
    stopping: watch::Receiver<bool>,
    /// Open `StreamIsActive` streams by Kubernetes namespace: each holds a task, and keeps
    /// its upstream groups at the fast interval.
    streams: PerNamespace,
}

impl ScalerService {
    pub fn new(engine: Arc<Engine>, stopping: watch::Receiver<bool>) -> Self {
        Self {
            engine,
            stopping,
            streams: PerNamespace::default(),
        }
    }
}

/// Resolves once the server is stopping.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

fn object(r: &ScaledObjectRef) -> Result<ObjectRef<'_>, Status> {
    // Kubernetes names, as the API server validates them: the names become metric labels and
    // log fields, so nothing else (control characters, bidi marks, `/`) may pass.
    if !is_dns1123(&r.namespace, 63, false) {
        return Err(Status::invalid_argument(
            "ScaledObjectRef.namespace must be a Kubernetes namespace name (RFC 1123 label: \
             at most 63 lowercase letters, digits and `-`, starting and ending alphanumeric)",
        ));
    }
    if !is_dns1123(&r.name, MAX_NAME, true) {
        return Err(Status::invalid_argument(format!(
            "ScaledObjectRef.name must be a Kubernetes object name (RFC 1123 subdomain: at most \
             {MAX_NAME} lowercase letters, digits, `-` and `.`)"
        )));
    }
    Ok(ObjectRef {
        namespace: &r.namespace,
        name: &r.name,
        metadata: &r.scaler_metadata,
    })
}

/// An RFC 1123 label (`dots` false) or subdomain (`dots`: labels joined by `.`) of at most
/// `max` bytes: each label 1 to 63 lowercase letters, digits and `-`, alphanumeric at both
/// ends. One pass over the bytes, as every call checks both names.
fn is_dns1123(s: &str, max: usize, dots: bool) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > max {
        return false;
    }
    // The current label's length so far, and the byte before.
    let (mut label, mut prev) = (0usize, b'.');
    for &c in b {
        match c {
            b'a'..=b'z' | b'0'..=b'9' => label += 1,
            b'-' if label > 0 => label += 1,
            b'.' if dots && label > 0 && prev != b'-' => label = 0,
            _ => return false,
        }
        if label > 63 {
            return false;
        }
        prev = c;
    }
    label > 0 && prev != b'-'
}

pin_project_lite::pin_project! {
    /// Counts and times one call for `/metrics`. A future by hand rather than an `async fn`:
    /// the `async fn` kept the instrumented call and its span a second time in its own state,
    /// and every handler's boxed future carried that (BENCHMARKS.md, "Per-call state").
    struct Observed<'a, F> {
        #[pin]
        call: Instrumented<F>,
        metrics: &'a Metrics,
        method: &'static str,
        started: Instant,
    }
}

impl<T, F: Future<Output = Result<T, Status>>> Future for Observed<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.call.poll(cx));
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        this.metrics
            .grpc_request(this.method, code_label(code), this.started.elapsed());
        Poll::Ready(result)
    }
}

fn observed<'a, F>(metrics: &'a Metrics, method: &'static str, call: F) -> Observed<'a, F> {
    let span = if crate::telemetry::exporting_traces() {
        tracing::info_span!("grpc", method)
    } else {
        tracing::debug_span!("grpc", method)
    };
    Observed {
        call: call.instrument(span),
        metrics,
        method,
        started: Instant::now(),
    }
}

fn spec(metric_name: &str) -> GetMetricSpecResponse {
    GetMetricSpecResponse {
        metric_specs: vec![MetricSpec {
            metric_name: metric_name.to_string(),
            target_size: 1,
            target_size_float: 1.0,
        }],
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for ScalerService {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        observed(self.engine.metrics(), "IsActive", async {
            let r = request.get_ref();
            let result = self.engine.is_active(object(r)?).await?;
            Ok(Response::new(IsActiveResponse { result }))
        })
        .await
    }

    type StreamIsActiveStream = Stream<IsActiveResponse>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let r = request.into_inner();
        let max = self.engine.config().capacity.max_streams_per_namespace;
        let (tracked, place) = observed(self.engine.metrics(), "StreamIsActive", async {
            let obj = object(&r)?;
            let place = self.streams.take(obj.namespace, max).ok_or_else(|| {
                EngineError::Exhausted(format!(
                    "namespace `{}` has {max} open StreamIsActive streams, the limit per \
                     namespace (--max-streams-per-namespace)",
                    obj.namespace
                ))
            })?;
            Ok((self.engine.track(obj).await?, place))
        })
        .await?;
        let engine = self.engine.clone();
        let stopping = self.stopping.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // Counted against the namespace while the stream lives.
            let _place = place;
            let mut stop = std::pin::pin!(stopped(stopping));
            // The guards keep the upstream groups at the fast interval while the stream lives.
            let (mut changes, _guards): (Vec<_>, Vec<_>) =
                engine.watch(&tracked).into_iter().unzip();
            let mut tick = tokio::time::interval(STREAM_TICK);
            let mut last = None;
            loop {
                let decision = engine.peek(&tracked).await;
                if let Some(why) = exhausted(&decision) {
                    let _ = tx.send(Err(EngineError::Exhausted(why).into())).await;
                    break;
                }
                // Unknown (a signal missing and none active) is not sent: KEDA would act on it.
                if let Ok(active) = decision.active()
                    && last != Some(active)
                {
                    if tx
                        .send(Ok(IsActiveResponse { result: active }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    last = Some(active);
                } else if let Err(m) = decision.active() {
                    tracing::debug!(error = %unavailable(m), "stream state unknown");
                }
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = &mut stop => break,
                    _ = tick.tick() => {}
                    _ = any_changed(&mut changes) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        observed(self.engine.metrics(), "GetMetricSpec", async {
            let tracked = self.engine.track(object(request.get_ref())?).await?;
            Ok(Response::new(spec(&tracked.plan.metric_name)))
        })
        .await
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        observed(self.engine.metrics(), "GetMetrics", async {
            let r = request
                .get_ref()
                .scaled_object_ref
                .as_ref()
                .ok_or_else(|| {
                    Status::invalid_argument("GetMetricsRequest.scaledObjectRef is required")
                })?;
            let (tracked, replicas) = self.engine.replicas(object(r)?).await?;
            Ok(Response::new(GetMetricsResponse {
                metric_values: vec![MetricValue {
                    metric_name: tracked.plan.metric_name.to_string(),
                    metric_value: i64::from(replicas),
                    metric_value_float: f64::from(replicas),
                }],
            }))
        })
        .await
    }

    type StreamMetricSpecStream = Stream<GetMetricSpecResponse>;

    async fn stream_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let tracked = observed(self.engine.metrics(), "StreamMetricSpec", async {
            Ok(self.engine.track(object(request.get_ref())?).await?)
        })
        .await?;
        // The spec is fixed for a given metadata (target 1); KEDA reopens the stream when the
        // ScaledObject changes. Send it once and hold the stream open until KEDA leaves.
        let (tx, rx) = mpsc::channel(1);
        let first = spec(&tracked.plan.metric_name);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_ok() {
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = stopped(stopping) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Resolves when any receiver sees a new refresh; never, when there are none.
async fn any_changed(receivers: &mut [watch::Receiver<u64>]) {
    if receivers.is_empty() {
        return std::future::pending().await;
    }
    let waits = receivers.iter_mut().map(|r| Box::pin(r.changed()));
    let (result, _, _) = futures::future::select_all(waits).await;
    if result.is_err() {
        // The group is gone; the tick keeps the stream going.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tracing::span;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::{EnvFilter, Layer};

    use super::*;

    /// Records the names of the spans opened and the messages of the events logged.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            self.0
                .lock()
                .push(format!("span {}", attrs.metadata().name()));
        }

        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0
                .lock()
                .push(format!("event {}", event.metadata().level()));
        }
    }

    fn seen_at(filter: &str) -> Vec<String> {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(filter))
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            let metrics = Metrics::new();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(observed(&metrics, "IsActive", async {
                tracing::info!("decision changed");
                Ok::<_, Status>(())
            }))
        })
        .unwrap();
        seen.0.lock().clone()
    }

    /// The names' rules as Kubernetes states them, one rule at a time.
    fn reference_label(s: &str) -> bool {
        let b = s.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        (1..=63).contains(&b.len())
            && b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_name_checks_agree_with_the_rules_stated_one_at_a_time(
            s in "[a-z0-9.-]{0,70}|([a-z0-9-]{0,64}\\.){0,5}[a-zA-Z0-9_ -]{0,64}",
        ) {
            proptest::prop_assert_eq!(is_dns1123(&s, 63, false), reference_label(&s));
            proptest::prop_assert_eq!(
                is_dns1123(&s, MAX_NAME, true),
                s.len() <= MAX_NAME && s.split('.').all(reference_label)
            );
        }
    }

    #[test]
    fn names_at_the_length_limits_and_their_edges() {
        let label = "a".repeat(63);
        assert!(is_dns1123(&label, 63, false));
        assert!(!is_dns1123(&format!("{label}b"), 63, false));
        let name = [label.as_str(); 4].join(".");
        assert_eq!(name.len(), 255);
        assert!(!is_dns1123(&name, MAX_NAME, true));
        assert!(is_dns1123(&name[..MAX_NAME], MAX_NAME, true));
        for bad in [
            "", "-a", "a-", "a..b", ".a", "a.", "a-.b", "a.-b", "A", "a_b",
        ] {
            assert!(!is_dns1123(bad, MAX_NAME, true), "{bad:?}");
        }
        assert!(!is_dns1123("a.b", 63, false), "a namespace has no dots");
        assert!(is_dns1123("a-b.c0", MAX_NAME, true));
    }

    #[test]
    fn without_a_trace_exporter_the_call_span_is_opened_at_debug_only_and_info_lines_still_log() {
        assert!(!crate::telemetry::exporting_traces());
        assert_eq!(seen_at("info"), ["event INFO"]);
        assert_eq!(seen_at("debug"), ["span grpc", "event INFO"]);
    }
}
