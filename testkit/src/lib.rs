//! The test kit: upstream doubles the tests, benchmarks and the `demo` command run on
//! loopback. Not part of the scaler: the `serve` build (the container image) is compiled
//! without it, and `scripts/check-serve-binary` proves that no symbol or fake credential of
//! this crate reaches that binary.
//!
//! The crate knows nothing of the scaler: it speaks the upstreams' wire formats only, so a
//! scaler that misreads them fails against it instead of agreeing with itself.

#![forbid(unsafe_code)]
// parking_lot's Mutex, as in the scaler (its clippy.toml applies here too).
#![deny(clippy::disallowed_types)]

pub mod aggregator;
pub mod kube_api;
pub mod prometheus;
pub mod servicebus;

pub use kube_api::KubeApi;
pub use prometheus::StaticPrometheus;
pub use servicebus::ServiceBusDouble;

use tokio_util::task::AbortOnDropHandle;

/// Serves `app` on `listener` until the handle is dropped; a failed accept loop leaves
/// requests refused.
fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}
