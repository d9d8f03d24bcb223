//! Starting the gRPC and HTTP listeners, for `serve`, `demo` and the tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::cache::RefreshConfig;
use crate::engine::{Engine, EngineConfig, SignalCaches};
use crate::grpc::ScalerService;
use crate::metrics::Metrics;
use crate::proto::external_scaler_server::ExternalScalerServer;

/// PEM files for TLS on gRPC; with `client_ca`, client certificates are required (mTLS).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    /// `/metrics`, `/livez`, `/readyz`; `None` runs no HTTP listener.
    pub http_addr: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub engine: EngineConfig,
}

impl ServerConfig {
    /// Both listeners on free loopback ports, default engine settings.
    pub fn loopback() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: Some(([127, 0, 0, 1], 0).into()),
            tls: None,
            engine: EngineConfig::default(),
        }
    }
}

/// The signal sources this build has, sharing one metrics registry.
pub fn default_sources(refresh: &RefreshConfig, metrics: &Metrics) -> SignalCaches {
    SignalCaches {
        servicebus: Some(crate::servicebus::source(refresh.clone(), metrics.clone())),
        prometheus: Some(crate::prometheus::source(refresh.clone(), metrics.clone())),
    }
}

/// [`start`] with `serve`'s signal sources, refreshed as `config.engine.refresh` says.
pub async fn start_with_default_sources(config: ServerConfig) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let sources = default_sources(&config.engine.refresh, &metrics);
    start(config, sources, metrics).await
}

/// A running scaler. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops accepting, lets calls in flight finish, and waits.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }

    /// Waits until the server stops on its own (an error) or `signal` resolves.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.task => r?,
            _ = signal => self.shutdown().await,
        }
    }
}

/// Binds both listeners and starts serving.
pub async fn start(
    config: ServerConfig,
    sources: SignalCaches,
    metrics: Metrics,
) -> anyhow::Result<Running> {
    let engine = Arc::new(Engine::new(config.engine, sources, metrics.clone())?);

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", "liveness", "readiness"] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    let mut builder = Server::builder()
        // KEDA keeps one connection per scaler address; a bounded age makes it reconnect,
        // so a headless Service spreads KEDA across replicas.
        .max_connection_age(Duration::from_secs(300))
        .max_connection_age_grace(Duration::from_secs(30))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(tls)?)?;
    }

    let ready = Arc::new(AtomicBool::new(false));
    let http = match config.http_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP address {addr}"))?;
            let http_addr = listener.local_addr()?;
            let app = http_router(metrics.clone(), ready.clone());
            let task = tokio::spawn(async move { axum::serve(listener, app).await });
            Some((http_addr, task))
        }
        None => None,
    };
    let http_addr = http.as_ref().map(|(a, _)| *a);

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let router = builder
        .add_service(health_service)
        .add_service(ExternalScalerServer::new(ScalerService::new(
            engine.clone(),
            stopping_rx,
        )));
    let incoming = TcpListenerStream::new(grpc_listener);
    ready.store(true, Ordering::SeqCst);
    let task = tokio::spawn(async move {
        let result = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.await;
                // End open streams first: graceful shutdown waits for every call in flight.
                let _ = stopping_tx.send(true);
            })
            .await;
        if let Some((_, http_task)) = http {
            http_task.abort();
        }
        result.context("gRPC server")
    });
    tracing::info!(%grpc_addr, http_addr = ?http_addr, tls = config.tls.is_some(), "blend-scaler serving");
    Ok(Running {
        grpc_addr,
        http_addr,
        engine,
        stop: Some(stop_tx),
        task,
    })
}

fn tls_config(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

fn http_router(metrics: Metrics, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        )
}
