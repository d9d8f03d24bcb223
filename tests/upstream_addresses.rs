//! docs/security.md "Where requests may go", over the wire: no server-side request forgery. The
//! allowlist is `host[:port]` with dot-bounded wildcards; the address actually connected to is
//! checked (loopback, link-local, private ranges and the Kubernetes API refused unless an
//! operator allows them); and an upstream's response body never travels back to the gRPC caller.

#[path = "support/keda.rs"]
mod keda;

#[path = "support/prometheus.rs"]
mod prometheus_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blend_scaler::allowlist::HostList;
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::{self, ServerConfig};
use prometheus_support::Prometheus;
use tokio::net::TcpListener;
use tonic::Code;

/// What an internal service would answer (a metadata endpoint, an admin page).
const SECRET_PAGE: &str = "SSRF-READBACK aws_secret_access_key=AKIA-FAKE-SECRET";

/// An internal HTTP service on loopback: answers every request with `status` and `body`, and
/// counts the connections it gets.
struct Internal {
    url: String,
    port: u16,
    connections: Arc<AtomicUsize>,
}

async fn internal(status: u16, content_type: &'static str, body: String) -> Internal {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [(axum::http::header::CONTENT_TYPE, content_type)],
                body,
            )
        }
    });
    let counted = tokio_stream_listener(listener, seen);
    tokio::spawn(async move {
        let _ = axum::serve(counted, app).await;
    });
    Internal {
        url: format!("http://127.0.0.1:{port}"),
        port,
        connections,
    }
}

/// A listener that counts accepted connections.
fn tokio_stream_listener(listener: TcpListener, seen: Arc<AtomicUsize>) -> CountingListener {
    CountingListener { listener, seen }
}

struct CountingListener {
    listener: TcpListener,
    seen: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((io, addr)) = self.listener.accept().await {
                self.seen.fetch_add(1, Ordering::SeqCst);
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

fn prometheus_object(server: &str) -> ScaledObjectRef {
    keda::object(
        "tenant-a",
        "web",
        keda::metadata([
            ("serverAddress", server),
            ("query", "blend_probe"),
            ("threshold", "1"),
        ]),
    )
}

async fn error_of(client: &mut keda::Client, obj: &ScaledObjectRef) -> tonic::Status {
    keda::metric_value(client, obj, keda::METRIC)
        .await
        .expect_err("no value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_pages_body_never_reaches_the_caller() {
    let mut config = ServerConfig::loopback();
    config.engine.refresh = keda::refresh_every(Duration::from_millis(300));
    let (running, mut client) = keda::start_with_default_sources(config).await;

    let pages = [
        internal(500, "text/plain", SECRET_PAGE.to_string()).await,
        internal(200, "text/html", format!("<html>{SECRET_PAGE}</html>")).await,
        internal(
            400,
            "application/json",
            format!(r#"{{"status":"error","errorType":"bad_data","error":"{SECRET_PAGE}"}}"#),
        )
        .await,
        internal(
            200,
            "application/json",
            format!(r#"{{"{SECRET_PAGE}": 1}}"#),
        )
        .await,
    ];
    for page in &pages {
        let status = error_of(&mut client, &prometheus_object(&page.url)).await;
        assert!(page.connections.load(Ordering::SeqCst) > 0, "it was read");
        assert!(
            !status.message().contains("SSRF-READBACK") && !status.message().contains("AKIA"),
            "the body came back to the caller: {status:?}"
        );
    }

    // The same through a Service Bus endpoint a tenant's connection string names.
    let sb_pages = [
        internal(
            500,
            "application/xml",
            format!("<Error><Code>500</Code><Detail>{SECRET_PAGE}</Detail></Error>"),
        )
        .await,
        internal(401, "text/html", SECRET_PAGE.to_string()).await,
        internal(
            200,
            "application/xml",
            format!("<{SECRET_PAGE}/>").replace(' ', "_"),
        )
        .await,
    ];
    for page in &sb_pages {
        let cs = format!(
            "Endpoint={}/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0",
            page.url
        );
        let obj = keda::object(
            "tenant-a",
            "orders",
            keda::metadata([("queueName", "orders"), ("connectionFromEnv", cs.as_str())]),
        );
        let status = error_of(&mut client, &obj).await;
        assert!(page.connections.load(Ordering::SeqCst) > 0, "it was read");
        assert!(
            !status.message().contains("SSRF") && !status.message().contains("AKIA"),
            "the body came back to the caller: {status:?}"
        );
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_not_connected_to() {
    let page = internal(200, "text/plain", SECRET_PAGE.to_string()).await;
    // Without the harness: no `--allow-loopback-upstreams`.
    let running = server::start_with_default_sources(ServerConfig::loopback())
        .await
        .unwrap();
    let mut client = keda::connect(&running).await;
    let by_name = format!("http://localhost:{}", page.port);
    let status = error_of(&mut client, &prometheus_object(&by_name)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("does not connect to"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "what a name resolves to is not told: {}",
        status.message()
    );
    assert_eq!(page.connections.load(Ordering::SeqCst), 0);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literals_on_internal_addresses_are_refused_before_any_request() {
    let page = internal(200, "text/plain", SECRET_PAGE.to_string()).await;
    let running = server::start_with_default_sources(ServerConfig::loopback())
        .await
        .unwrap();
    let mut client = keda::connect(&running).await;
    for server in [
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.1:9090".to_string(),
        "http://100.64.0.1".to_string(),
        "http://[fd00::1]:9090".to_string(),
        page.url.clone(),
        format!("http://[::ffff:127.0.0.1]:{}", page.port),
        format!("http://0x7f.1:{}", page.port),
    ] {
        let status = client
            .get_metric_spec(prometheus_object(&server))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{server}: {status:?}"
        );
        assert!(
            status.message().contains("`serverAddress`"),
            "{server}: {}",
            status.message()
        );
    }
    let cs = "Endpoint=sb://169.254.169.254/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0";
    let obj = keda::object(
        "tenant-a",
        "orders",
        keda::metadata([("queueName", "orders"), ("connectionFromEnv", cs)]),
    );
    let status = client.get_metric_spec(obj).await.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("`endpoint`"),
        "{}",
        status.message()
    );
    assert_eq!(page.connections.load(Ordering::SeqCst), 0);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_api_address_needs_a_host_named_exactly_by_the_operator() {
    let prometheus = Prometheus::builder()
        .gauge("blend_probe", &[], 3.0)
        .start()
        .await;
    let by_name = format!("http://localhost:{}", prometheus.addr().port());
    let start = |private: &[&str]| {
        let mut config = ServerConfig::loopback();
        // Loopback stands in for the API service's ClusterIP.
        config.engine.hosts.kubernetes_api =
            vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        config.engine.hosts.private_upstreams = HostList::parse_hosts(private).unwrap();
        keda::start_with_default_sources(config)
    };

    // Even with loopback allowed, and with a wildcard that covers the name.
    let (running, mut client) = start(&["local*"]).await;
    let status = error_of(&mut client, &prometheus_object(&by_name)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    running.shutdown().await.unwrap();

    let (running, mut client) = start(&["localhost"]).await;
    let (value, _) = keda::metric_value(&mut client, &prometheus_object(&by_name), keda::METRIC)
        .await
        .expect("a host the operator named is read");
    assert_eq!(value, 3);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_is_host_and_port_with_dot_bounded_wildcards() {
    let prometheus = Prometheus::builder()
        .gauge("blend_probe", &[], 2.0)
        .start()
        .await;
    let other = internal(200, "text/plain", SECRET_PAGE.to_string()).await;
    let port = prometheus.addr().port();
    let mut config = ServerConfig::loopback();
    config.engine.allow_upstream = Some(vec![
        "*.servicebus.windows.net".into(),
        format!("localhost:{port}"),
        "prometheus*".into(),
    ]);
    let (running, mut client) = keda::start_with_default_sources(config).await;

    let allowed = format!("http://localhost:{port}");
    let (value, _) = keda::metric_value(&mut client, &prometheus_object(&allowed), keda::METRIC)
        .await
        .expect("the allowed host and port is read");
    assert_eq!(value, 2);
    for refused in [
        format!("http://localhost:{}", other.port),
        "http://localhost".to_string(),
        "https://x.servicebus.windows.net.evil.io".to_string(),
        "https://a.b.servicebus.windows.net".to_string(),
        "http://prometheus.attacker.example".to_string(),
    ] {
        let status = client
            .get_metric_spec(prometheus_object(&refused))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{refused}: {status:?}"
        );
    }
    assert_eq!(other.connections.load(Ordering::SeqCst), 0);
    running.shutdown().await.unwrap();
}
