//! blend-scaler: a KEDA external scaler that blends Service Bus backlog, a Prometheus query
//! and cron windows into one replica count, answering KEDA from a background-refreshed cache.
//!
//! Visibility: an item is `pub` only when `main.rs`, `tests/`, `benches/`, `examples/` or the
//! fuzz targets use it; everything else is `pub(crate)` (or `pub` inside a private module), so
//! the compiler reports what nothing uses.

#![forbid(unsafe_code)]
// std's Mutex poisons on a panic; parking_lot's (or tokio's across an await) is the project's
// (clippy.toml names the type). Denied here so it holds without `-D warnings` too.
#![deny(clippy::disallowed_types)]

pub mod access;
pub mod allowlist;
pub mod binding;
pub mod blend;
pub mod cache;
pub mod capacity;
pub mod cli;
pub mod crd;
pub mod cron;
pub mod decisions;
#[cfg(feature = "demo")]
mod demo;
pub mod engine;
pub mod external_metrics;
mod grpc;
mod grpc_status;
mod http;
mod intern;
pub mod metadata;
pub mod metrics;
pub mod offload;
mod output;
pub mod prometheus;
mod scaledobject;
pub mod secret;
pub mod server;
pub mod servicebus;
pub mod signal;
#[cfg(feature = "simulate")]
pub mod simulate;
pub mod telemetry;
mod tls;
pub mod transport;

/// KEDA's `externalscaler` protocol, generated from `proto/externalscaler.proto`.
pub mod proto {
    tonic::include_proto!("externalscaler");
}
