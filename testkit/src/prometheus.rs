//! A Prometheus HTTP API that answers every instant query with one settable value (the
//! `demo`'s upstream; tests that need PromQL run Debian's real `prometheus`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::task::AbortOnDropHandle;

/// Serves `/api/v1/query` on loopback until dropped.
pub struct StaticPrometheus {
    addr: SocketAddr,
    value: Arc<AtomicU64>,
    _server: AbortOnDropHandle<()>,
}

impl StaticPrometheus {
    pub async fn start() -> std::io::Result<Self> {
        let value = Arc::new(AtomicU64::new(0f64.to_bits()));
        let shared = value.clone();
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(move || {
                let v = f64::from_bits(shared.load(Ordering::SeqCst));
                async move {
                    let now = chrono::Utc::now().timestamp();
                    axum::Json(serde_json::json!({
                        "status": "success",
                        "data": {"resultType": "vector", "result": [
                            {"metric": {}, "value": [now, v.to_string()]}
                        ]}
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            addr,
            value,
            _server: crate::serve(listener, app),
        })
    }

    /// The `serverAddress` to give the scaler.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value every query answers from now on.
    pub fn set(&self, v: f64) {
        self.value.store(v.to_bits(), Ordering::SeqCst);
    }
}
