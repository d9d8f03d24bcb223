//! Connection and HTTP/2 limits of the listeners (docs/security.md, "Transport limits"): a
//! capped accept loop shared by the gRPC, HTTP and External Metrics listeners, and the values
//! `serve` sets on tonic and hyper instead of their defaults.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::ReloadingTls;

/// The limits of one listener. [`Default`] is what `serve` uses unless told otherwise.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct TransportLimits {
    /// Open connections per listener (gRPC, External Metrics); more are closed at accept.
    #[arg(long, env = "BLEND_SCALER_MAX_CONNECTIONS", default_value_t = 128)]
    pub max_connections: usize,
    /// HTTP/2 streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); a
    /// client opening more gets REFUSED_STREAM. Each `StreamIsActive` holds one.
    #[arg(
        long,
        env = "BLEND_SCALER_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub max_concurrent_streams: u32,
    /// gRPC calls in progress at once on one connection; more are refused at once with
    /// RESOURCE_EXHAUSTED (load shedding) instead of queueing.
    #[arg(
        long,
        env = "BLEND_SCALER_MAX_CONCURRENT_REQUESTS",
        default_value_t = 512
    )]
    pub max_concurrent_requests: usize,
    /// Longest time a gRPC call may take to answer (an open stream's messages are not
    /// bounded by it, only the time to its first answer).
    #[arg(long, env = "BLEND_SCALER_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Streams the server may reset for protocol errors on one connection before it sends
    /// GOAWAY (ENHANCE_YOUR_CALM): the MadeYouReset defence, off in tonic by default.
    #[arg(
        long,
        env = "BLEND_SCALER_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS",
        default_value_t = 1024
    )]
    pub http2_max_local_error_reset_streams: usize,
    /// Streams the client may reset before the server accepted them, at once, before
    /// GOAWAY (ENHANCE_YOUR_CALM): the Rapid Reset defence.
    #[arg(
        long,
        env = "BLEND_SCALER_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS",
        default_value_t = 20
    )]
    pub http2_max_pending_accept_reset_streams: usize,
    /// Longest time from TCP accept to a finished TLS handshake.
    #[arg(long, env = "BLEND_SCALER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// How often the TLS certificate, key and client CA files are checked for new contents.
    #[arg(long, env = "BLEND_SCALER_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            max_concurrent_streams: 1024,
            max_concurrent_requests: 512,
            request_timeout: Duration::from_secs(10),
            http2_max_local_error_reset_streams: 1024,
            http2_max_pending_accept_reset_streams: 20,
            handshake_timeout: Duration::from_secs(10),
            tls_reload_interval: Duration::from_secs(10),
        }
    }
}

impl TransportLimits {
    /// Refuses values that would switch a limit off or stop the server from serving.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let zero = [
            ("--max-connections", self.max_connections == 0),
            ("--max-concurrent-streams", self.max_concurrent_streams == 0),
            (
                "--max-concurrent-requests",
                self.max_concurrent_requests == 0,
            ),
            (
                "--http2-max-local-error-reset-streams",
                self.http2_max_local_error_reset_streams == 0,
            ),
            (
                "--http2-max-pending-accept-reset-streams",
                self.http2_max_pending_accept_reset_streams == 0,
            ),
        ];
        for (flag, zero) in zero {
            if zero {
                anyhow::bail!("{flag} must be more than 0");
            }
        }
        // Compared as durations: milliseconds cast to u64 would read 2^64 ms as 0.
        let durations = [
            ("--request-timeout", self.request_timeout),
            ("--handshake-timeout", self.handshake_timeout),
            ("--tls-reload-interval", self.tls_reload_interval),
        ];
        for (flag, d) in durations {
            if d < Duration::from_millis(1) {
                anyhow::bail!("{flag} must be at least 1ms");
            }
        }
        Ok(())
    }

    /// The limits of the `/metrics`, `/livez`, `/readyz` listener: kubelet probes and a few
    /// Prometheus scrapers, nothing tenant-sized.
    pub(crate) fn http() -> Self {
        Self {
            max_connections: 32,
            max_concurrent_streams: 16,
            max_concurrent_requests: 16,
            ..Self::default()
        }
    }

    /// hyper's server builder with these limits, for the HTTP and External Metrics listeners.
    pub(crate) fn hyper_builder(
        &self,
    ) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.handshake_timeout);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_local_error_reset_streams(self.http2_max_local_error_reset_streams)
            .max_pending_accept_reset_streams(self.http2_max_pending_accept_reset_streams)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_header_list_size(16 * 1024);
        builder
    }
}

/// An accepted connection; it holds one of the listener's connection slots until dropped.
pub struct Conn<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Conn<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// What the accept loop yields: plain TCP connections.
pub(crate) type Plain = Conn<TcpStream>;
/// What the accept loop yields with TLS: connections whose handshake has finished.
pub(crate) type Tls = tokio_rustls::server::TlsStream<Conn<TcpStream>>;
/// The connections of one listener, in the order their handshakes finish.
pub(crate) type Incoming<T> = ReceiverStream<io::Result<T>>;

/// Accepts on `listener` while fewer than `limits.max_connections` are open.
pub fn accept_plain(listener: TcpListener, limits: &TransportLimits) -> Incoming<Plain> {
    accept(listener, limits, |conn| async move { Ok(conn) })
}

/// As [`accept_plain`], with a TLS handshake (bounded by `limits.handshake_timeout`) using
/// whatever certificate `tls` holds at the time.
pub(crate) fn accept_tls(
    listener: TcpListener,
    limits: &TransportLimits,
    tls: Arc<ReloadingTls>,
) -> Incoming<Tls> {
    accept(listener, limits, move |conn| {
        let acceptor = tls.acceptor();
        async move { acceptor.accept(conn).await }
    })
}

fn accept<T, F, Fut>(listener: TcpListener, limits: &TransportLimits, handshake: F) -> Incoming<T>
where
    T: Send + 'static,
    F: Fn(Plain) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let max = limits.max_connections;
    let handshake_timeout = limits.handshake_timeout;
    let (tx, rx) = mpsc::channel(max.clamp(1, 1024));
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            // The server drops its end when it stops: stop accepting and free the port.
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: retrying at once would spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(%peer, max_connections = max, "connection limit reached; closing new connections");
                }
                drop(tcp);
                continue;
            };
            // Small gRPC answers must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
            let pending = handshake(Conn {
                io: tcp,
                _slot: slot,
            });
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, pending).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "handshake failed"),
                    Err(_) => tracing::debug!(%peer, "handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Serves an axum router on `incoming` with hyper and `limits` until the task is aborted.
pub(crate) async fn serve_http<T>(
    mut incoming: Incoming<T>,
    limits: TransportLimits,
    router: impl Fn(&T) -> axum::Router + Send + 'static,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt;
    let builder = Arc::new(limits.hyper_builder());
    while let Some(conn) = incoming.next().await {
        let Ok(conn) = conn else { continue };
        let service = hyper_util::service::TowerToHyperService::new(router(&conn));
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::TransportLimits;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: TransportLimits,
    }

    #[test]
    fn the_flag_defaults_are_the_library_defaults() {
        let parsed = Flags::try_parse_from(["serve"]).unwrap();
        assert_eq!(parsed.limits, TransportLimits::default());
    }

    #[test]
    fn a_zero_limit_is_refused_naming_its_flag() {
        let parsed = Flags::try_parse_from(["serve", "--max-concurrent-streams", "0"]).unwrap();
        let error = parsed.limits.validate().unwrap_err().to_string();
        assert!(error.contains("--max-concurrent-streams"), "{error}");
        let parsed = Flags::try_parse_from(["serve", "--request-timeout", "0s"]).unwrap();
        let error = parsed.limits.validate().unwrap_err().to_string();
        assert!(error.contains("--request-timeout"), "{error}");
    }

    #[test]
    fn a_timeout_is_compared_as_a_duration_not_as_truncated_milliseconds() {
        // 2^64 ms: as a u64 count of milliseconds it would wrap to 0 and be refused as zero.
        let huge = "18446744073709551s 616ms";
        let parsed = Flags::try_parse_from(["serve", "--handshake-timeout", huge]).unwrap();
        assert_eq!(parsed.limits.handshake_timeout.as_millis(), 1u128 << 64);
        parsed.limits.validate().unwrap();
        let parsed = Flags::try_parse_from(["serve", "--tls-reload-interval", "500us"]).unwrap();
        let error = parsed.limits.validate().unwrap_err().to_string();
        assert_eq!(error, "--tls-reload-interval must be at least 1ms");
    }
}
