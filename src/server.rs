//! Starting the gRPC and HTTP listeners, for `serve`, `demo` and the tests.

use std::net::SocketAddr;
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
use tonic::transport::Server;
use tonic::transport::server::Router as GrpcRouter;
use tonic_health::ServingStatus;

use crate::binding::HostRules;
use crate::cache::RefreshConfig;
use crate::decisions::{self, DecisionsOptions};
use crate::engine::{Engine, EngineConfig, SignalCaches};
use crate::grpc::ScalerService;
use crate::metrics::Metrics;
use crate::proto::external_scaler_server::ExternalScalerServer;
use crate::tls::ReloadingTls;
use crate::transport::{self, Incoming, TransportLimits};

pub use crate::tls::TlsFiles;

/// How long a shutdown waits for calls in flight. Kubernetes sends SIGKILL 30 s after SIGTERM
/// by default; calls are bounded by `--request-timeout` already, this bounds the rest.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    /// `/metrics`, `/livez`, `/readyz`, `/decisions`; `None` runs no HTTP listener.
    pub http_addr: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// Serve the HTTP listener over TLS too, with `tls`'s certificate and no client
    /// certificate asked for (`serve --http-tls`); needs `tls`.
    pub http_tls: bool,
    /// Connection and HTTP/2 limits of the gRPC listener (the HTTP one has its own, fixed).
    pub transport: TransportLimits,
    pub engine: EngineConfig,
    /// `/decisions` on the HTTP port.
    pub decisions: DecisionsOptions,
}

impl ServerConfig {
    /// Both listeners on free loopback ports, default engine settings.
    pub fn loopback() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: Some(([127, 0, 0, 1], 0).into()),
            tls: None,
            http_tls: false,
            transport: TransportLimits::default(),
            engine: EngineConfig::default(),
            decisions: DecisionsOptions::default(),
        }
    }
}

/// The signal sources this build has, sharing one metrics registry.
pub(crate) fn default_sources(
    refresh: &RefreshConfig,
    hosts: &HostRules,
    metrics: &Metrics,
) -> SignalCaches {
    SignalCaches {
        servicebus: Some(crate::servicebus::source(
            refresh.clone(),
            metrics.clone(),
            hosts,
        )),
        prometheus: Some(crate::prometheus::source(
            refresh.clone(),
            metrics.clone(),
            hosts,
        )),
    }
}

/// [`start`] with `serve`'s signal sources, refreshed as `config.engine.refresh` says.
pub async fn start_with_default_sources(config: ServerConfig) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let sources = default_sources(&config.engine.refresh, &config.engine.hosts, &metrics);
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
    /// Stops accepting, lets calls in flight finish for at most [`SHUTDOWN_GRACE`], and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown_within(SHUTDOWN_GRACE).await
    }

    /// [`Running::shutdown`] with its own bound: calls still in flight after `grace` (a read
    /// of a slow upstream, a client that never finishes its request) are dropped, so a
    /// terminating pod exits well inside Kubernetes' grace period (docs/security.md, "Low findings").
    pub async fn shutdown_within(mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(
                    grace_seconds = grace.as_secs_f64(),
                    "calls still in flight after the shutdown grace period; stopping anyway"
                );
                self.task.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops on its own (an error) or `signal` resolves.
    pub(crate) async fn run_until(
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
    let limits = &config.transport;
    limits.validate()?;
    // Read before serving, so a bad certificate stops `serve` instead of every handshake.
    let tls = config
        .tls
        .as_ref()
        .map(ReloadingTls::for_grpc)
        .transpose()?;
    let http_tls = match (&config.tls, config.http_tls) {
        (Some(files), true) => Some(ReloadingTls::for_http(files)?),
        (None, true) => anyhow::bail!("--http-tls needs --tls-cert and --tls-key"),
        (_, false) => None,
    };
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

    let mut builder = grpc_server(limits);

    let ready = Arc::new(AtomicBool::new(false));
    let http = match config.http_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP address {addr}"))?;
            let http_addr = listener.local_addr()?;
            let limits = TransportLimits::http();
            let app = http_router(metrics.clone(), ready.clone(), engine.clone())
                .merge(decisions::router(engine.clone(), config.decisions.clone()));
            let task = match &http_tls {
                Some(tls) => {
                    ReloadingTls::watch(tls, config.transport.tls_reload_interval);
                    let incoming = transport::accept_tls(listener, &limits, tls.clone());
                    tokio::spawn(transport::serve_http(incoming, limits, move |_| {
                        app.clone()
                    }))
                }
                None => {
                    let incoming = transport::accept_plain(listener, &limits);
                    tokio::spawn(transport::serve_http(incoming, limits, move |_| {
                        app.clone()
                    }))
                }
            };
            Some((http_addr, task))
        }
        None => None,
    };
    let http_addr = http.as_ref().map(|(a, _)| *a);

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let router = builder.add_service(health_service).add_service(
        ExternalScalerServer::new(ScalerService::new(engine.clone(), stopping_rx))
            .max_decoding_message_size(crate::metadata::MAX_REQUEST_BYTES),
    );
    ready.store(true, Ordering::SeqCst);
    let shutdown = async move {
        let _ = stop_rx.await;
        // End open streams first: graceful shutdown waits for every call in flight.
        let _ = stopping_tx.send(true);
    };
    let task = match &tls {
        Some(tls) => {
            ReloadingTls::watch(tls, limits.tls_reload_interval);
            let incoming = transport::accept_tls(grpc_listener, limits, tls.clone());
            tokio::spawn(serve_grpc(router, incoming, shutdown, http))
        }
        None => {
            let incoming = transport::accept_plain(grpc_listener, limits);
            tokio::spawn(serve_grpc(router, incoming, shutdown, http))
        }
    };
    tracing::info!(%grpc_addr, http_addr = ?http_addr, tls = config.tls.is_some(), http_tls = config.http_tls, "blend-scaler serving");
    Ok(Running {
        grpc_addr,
        http_addr,
        engine,
        stop: Some(stop_tx),
        task,
    })
}

/// tonic's server with `serve`'s transport settings (connection age, keepalive, the HTTP/2
/// and gRPC limits); also the benchmarks' baseline, so only the work behind it differs.
pub fn grpc_server(limits: &TransportLimits) -> Server {
    Server::builder()
        // KEDA keeps one connection per scaler address; a bounded age makes it reconnect,
        // so a headless Service spreads KEDA across replicas.
        .max_connection_age(Duration::from_secs(300))
        .max_connection_age_grace(Duration::from_secs(30))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // tonic leaves these unset, which means no limit (see docs/security.md).
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(limits.http2_max_local_error_reset_streams))
        .http2_max_pending_accept_reset_streams(Some(limits.http2_max_pending_accept_reset_streams))
        .http2_max_header_list_size(16 * 1024)
        .concurrency_limit_per_connection(limits.max_concurrent_requests)
        .load_shed(true)
        .timeout(limits.request_timeout)
}

async fn serve_grpc<T>(
    router: GrpcRouter,
    incoming: Incoming<T>,
    shutdown: impl std::future::Future<Output = ()>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
) -> anyhow::Result<()>
where
    T: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    let result = router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Some((_, http_task)) = http {
        http_task.abort();
    }
    result.context("gRPC server")
}

fn http_router(metrics: Metrics, ready: Arc<AtomicBool>, engine: Arc<Engine>) -> Router {
    let readyz_metrics = metrics.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let engine = engine.clone();
                async move {
                    // Objects KEDA stopped asking about leave the map at a sweep; one here
                    // keeps `blend_scaler_tracked_scaledobjects` (and the forgotten objects'
                    // series) current at every scrape (docs/security.md, "Low findings").
                    engine.tracked_count();
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
                // A group whose refresh panicked answers UNAVAILABLE until a read completes:
                // not ready, so the failure is seen (docs/robustness.md).
                let down = readyz_metrics.refresh_groups_down();
                async move {
                    if !ready {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    } else if down > 0 {
                        (StatusCode::SERVICE_UNAVAILABLE, "a refresh task is down")
                    } else {
                        (StatusCode::OK, "ready")
                    }
                }
            }),
        )
}
