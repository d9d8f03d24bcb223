//! Logs through `tracing` (JSON in containers, text on a terminal) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, traces over OTLP/gRPC.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "otlp")]
use opentelemetry::trace::TracerProvider as _;
#[cfg(feature = "otlp")]
use opentelemetry_sdk::Resource;
#[cfg(feature = "otlp")]
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// JSON unless stderr is a terminal.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }
}

/// Set once an OTLP exporter is installed.
static EXPORTING_TRACES: AtomicBool = AtomicBool::new(false);

/// Whether spans leave the process (OTLP). The per-call gRPC span is made at `info` only
/// then: in the logs alone it only named the method on the few lines logged inside a call,
/// and opening it (the JSON layer formats a span's fields when it opens) took about 5,400 of
/// the 18,900 instructions the scaler's own part of a call took (BENCHMARKS.md, "gRPC
/// throughput under h2load"). At `debug` it is still there for `RUST_LOG=debug`.
pub fn exporting_traces() -> bool {
    EXPORTING_TRACES.load(Ordering::Relaxed)
}

/// Keeps the trace exporter alive; flushes it when dropped.
pub struct Telemetry(#[cfg(feature = "otlp")] Option<SdkTracerProvider>);

#[cfg(feature = "otlp")]
impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    #[cfg(feature = "otlp")]
    {
        let provider = otlp_provider()?;
        let otel = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("blend-scaler")));
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(otel)
            .try_init()?;
        EXPORTING_TRACES.store(provider.is_some(), Ordering::Relaxed);
        Ok(Telemetry(provider))
    }
    #[cfg(not(feature = "otlp"))]
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()?;
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|e| !e.is_empty()) {
            tracing::warn!(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but this build has no OTLP exporter \
                 (built without the `otlp` feature); no traces are exported"
            );
        }
        Ok(Telemetry())
    }
}

/// A tracer provider exporting over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
#[cfg(feature = "otlp")]
fn otlp_provider() -> anyhow::Result<Option<SdkTracerProvider>> {
    Ok(match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            // The exporter reads the endpoint and headers from the standard OTEL_* variables.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name("blend-scaler")
                            .build(),
                    )
                    .build(),
            )
        }
        _ => None,
    })
}
