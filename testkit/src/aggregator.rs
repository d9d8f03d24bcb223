//! The kube-apiserver's aggregation layer, as far as an extension API server sees it: clients
//! (kubectl) authenticate with a client certificate (CN is the user, each O a group, as the
//! apiserver's x509 authenticator reads them), and each request under `/apis` is forwarded to
//! the extension server over mTLS with the front-proxy client certificate, the caller's
//! identity in `X-Remote-User`/`X-Remote-Group` (with `system:authenticated` added) and the
//! TLS server name `<service>.<namespace>.svc`. Identity headers a client sends are dropped.
//!
//! kubectl has no flag for `X-Remote-*` headers, and a real aggregator cannot run here (no
//! kube-apiserver, no etcd), so this is the double that lets kubectl reach the adapter the
//! way it does in a cluster. `/version` is answered here and `/api` is 404 (the adapter
//! serves no core group); the real aggregator builds `/apis` itself, this one forwards it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

/// PEM material and where the extension server is.
#[derive(Clone, Debug)]
pub struct AggregatorOptions {
    /// The apiserver's own serving certificate and key (kubectl's `--certificate-authority`
    /// must trust its issuer).
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// `--client-ca-file`: the CA of the users' client certificates.
    pub client_ca_pem: String,
    /// The extension server's address and the name its certificate is checked against.
    pub backend: SocketAddr,
    pub backend_server_name: String,
    /// The APIService's `caBundle`.
    pub backend_ca_pem: String,
    /// `--proxy-client-cert-file` / `--proxy-client-key-file`.
    pub proxy_client_cert_pem: String,
    pub proxy_client_key_pem: String,
}

/// One forwarded request.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub path_and_query: String,
    pub user: String,
    pub groups: Vec<String>,
    pub code: u16,
}

/// The running aggregator; stops when dropped.
pub struct Aggregator {
    addr: SocketAddr,
    forwarded: Arc<Mutex<Vec<Forwarded>>>,
    _task: AbortOnDropHandle<()>,
}

/// The user and groups of a client certificate: CN and every O, as kube-apiserver reads them.
fn identity(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = parsed.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some((user, groups))
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl Aggregator {
    pub async fn start(options: AggregatorOptions) -> std::io::Result<Self> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(options.client_ca_pem.as_bytes()) {
            roots
                .add(ca.map_err(|e| invalid(e.to_string()))?)
                .map_err(|e| invalid(e.to_string()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| invalid(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(options.serving_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(options.serving_key_pem.as_bytes())
            .map_err(|e| invalid(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| invalid(e.to_string()))?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let pem = format!(
            "{}{}",
            options.proxy_client_cert_pem, options.proxy_client_key_pem
        );
        let backend_ca = reqwest::Certificate::from_pem(options.backend_ca_pem.as_bytes())
            .map_err(|e| invalid(e.to_string()))?;
        let upstream = reqwest::Client::builder()
            .tls_certs_only([backend_ca])
            .identity(
                reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?,
            )
            .resolve(&options.backend_server_name, options.backend)
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let base = format!(
            "https://{}:{}",
            options.backend_server_name,
            options.backend.port()
        );

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let log = forwarded.clone();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                let base = base.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let who = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(identity);
                    let app = axum::Router::new().fallback(
                        move |method: Method, uri: Uri, headers: HeaderMap| {
                            let (upstream, base, log, who) =
                                (upstream.clone(), base.clone(), log.clone(), who.clone());
                            async move {
                                forward(&upstream, &base, &log, who, method, uri, headers).await
                            }
                        },
                    );
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        }));
        Ok(Self {
            addr,
            forwarded,
            _task: task,
        })
    }

    /// `https://127.0.0.1:PORT`, for kubectl's `--server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request forwarded to the extension server, in order.
    pub fn forwarded(&self) -> Vec<Forwarded> {
        self.forwarded.lock().clone()
    }
}

async fn forward(
    upstream: &reqwest::Client,
    base: &str,
    log: &Mutex<Vec<Forwarded>>,
    who: Option<(String, Vec<String>)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some((user, mut groups)) = who else {
        return status(401, "Unauthorized", "Unauthorized");
    };
    let path = uri.path();
    if path == "/version" {
        let body = r#"{"major":"1","minor":"33","gitVersion":"v1.33.0","platform":"linux/amd64"}"#;
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    if !(path == "/apis" || path.starts_with("/apis/")) {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    if method != Method::GET {
        return status(405, "MethodNotAllowed", "only GET is forwarded here");
    }
    groups.push("system:authenticated".into());
    let path_and_query = uri
        .path_and_query()
        .map_or(path.to_string(), |p| p.to_string());
    let mut request = upstream
        .get(format!("{base}{path_and_query}"))
        .header("X-Remote-User", &user);
    for g in &groups {
        request = request.header("X-Remote-Group", g);
    }
    if let Some(accept) = headers.get(header::ACCEPT) {
        request = request.header(header::ACCEPT, accept);
    }
    let (code, content_type, body) = match request.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
            (code, ct, resp.bytes().await.unwrap_or_default())
        }
        // What the aggregator answers while the APIService is unavailable.
        Err(_) => (503, None, Bytes::from_static(b"service unavailable\n")),
    };
    log.lock().push(Forwarded {
        path_and_query,
        user,
        groups,
        code,
    });
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("text/plain")),
    );
    response
}
