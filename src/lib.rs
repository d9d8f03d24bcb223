//! blend-scaler: a KEDA external scaler that blends Service Bus backlog, a Prometheus query
//! and cron windows into one replica count, answering KEDA from a background-refreshed cache.

pub mod blend;
pub mod cache;
pub mod cron;
pub mod metadata;
pub mod metrics;
pub mod secret;
pub mod servicebus;
pub mod signal;

/// KEDA's `externalscaler` protocol, generated from `proto/externalscaler.proto`.
pub mod proto {
    tonic::include_proto!("externalscaler");
}
