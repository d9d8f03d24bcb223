//! The HTTPS listener of the External Metrics API: mTLS against the front-proxy CA, identity
//! from `X-Remote-*` only on that verified connection, a SubjectAccessReview per metric read,
//! the group served only while its APIService is ours or absent, and the metric route
//! answered by the same engine and cache as the gRPC scaler.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::RwLock;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::authz::{Authorizer, MetricRead, UserInfo};
use super::documents::{self, ExternalMetricValue};
use super::front_proxy::FrontProxy;
use super::{ApiError, NAME_LABEL, apiservice, quantity, selector};
use crate::crd::BlendedMetricSpec;
use crate::engine::{Engine, EngineError, ObjectRef};
use crate::tls::{ClientCa, ReloadingTls};
use crate::transport::{self, TransportLimits};

/// The `BlendedMetric`s the adapter serves, by namespace and name.
pub struct Registry {
    objects: RwLock<HashMap<(String, String), BlendedMetricSpec>>,
    /// Until the first list from the API server, a name missing here may exist: such a read
    /// is 503 (try again), not 404.
    listed: std::sync::atomic::AtomicBool,
}

/// A registry filled by hand: complete from the start.
impl Default for Registry {
    fn default() -> Self {
        Self {
            objects: RwLock::default(),
            listed: true.into(),
        }
    }
}

impl Registry {
    /// A registry a watcher fills: incomplete until [`Registry::mark_listed`].
    pub fn unlisted() -> Self {
        Self {
            objects: RwLock::default(),
            listed: false.into(),
        }
    }

    pub(crate) fn mark_listed(&self) {
        self.listed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn listed(&self) -> bool {
        self.listed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn upsert(&self, namespace: &str, name: &str, spec: BlendedMetricSpec) {
        self.objects
            .write()
            .insert((namespace.into(), name.into()), spec);
    }

    pub(crate) fn remove(&self, namespace: &str, name: &str) {
        self.objects
            .write()
            .remove(&(namespace.to_string(), name.to_string()));
    }

    fn get(&self, namespace: &str, name: &str) -> Option<BlendedMetricSpec> {
        self.objects
            .read()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// PEM files of the listener's serving certificate.
#[derive(Clone, Debug)]
pub struct AdapterTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Who may call: the front-proxy trust (the handshake and each request), the authorizer of
/// each metric read, and whether the group is ours to serve.
#[derive(Clone)]
pub struct Access {
    pub front_proxy: Arc<FrontProxy>,
    pub authorizer: Arc<dyn Authorizer>,
    pub ownership: Arc<apiservice::Guard>,
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    access: Access,
}

/// The identity on this request: `X-Remote-*` count only while the connection's certificate
/// verifies against the current front-proxy trust (docs/metrics-adapter.md, "Who may read").
fn caller(
    s: &AppState,
    headers: &HeaderMap,
    peer: &[CertificateDer<'static>],
) -> Result<UserInfo, ApiError> {
    if !s.access.front_proxy.verified(peer) {
        return Err(ApiError::Unauthorized);
    }
    UserInfo::from_headers(headers).ok_or(ApiError::Unauthorized)
}

fn json(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(e: ApiError) -> Response {
    let (code, body) = e.status();
    json(code, &body)
}

/// The routes for one connection, whose client certificate chain is `peer`.
fn router(state: AppState, peer: Arc<[CertificateDer<'static>]>) -> Router {
    let doc = {
        let peer = peer.clone();
        move |d: fn() -> Value| {
            let peer = peer.clone();
            move |State(s): State<AppState>, headers: HeaderMap| async move {
                let allowed = caller(&s, &headers, &peer).and_then(|_| s.access.ownership.allows());
                match allowed {
                    Ok(()) => json(200, &d()),
                    Err(e) => error(e),
                }
            }
        }
    };
    let metric_peer = peer.clone();
    Router::new()
        .route("/apis", get(doc(documents::api_group_list)))
        .route(
            "/apis/external.metrics.k8s.io",
            get(doc(documents::api_group)),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(doc(documents::api_resource_list)),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(
                move |State(s): State<AppState>,
                      Path((namespace, metric)): Path<(String, String)>,
                      Query(q): Query<HashMap<String, String>>,
                      headers: HeaderMap| async move {
                    match metric_value(&s, &headers, &metric_peer, &namespace, &metric, &q).await {
                        Ok(v) => json(200, &v),
                        Err(e) => error(e),
                    }
                },
            ),
        )
        .fallback(
            move |State(s): State<AppState>, headers: HeaderMap, uri: axum::http::Uri| async move {
                match caller(&s, &headers, &peer) {
                    Err(e) => error(e),
                    Ok(_) => json(
                        404,
                        &documents::status(
                            404,
                            "NotFound",
                            &format!(
                                "the server could not find the requested resource ({})",
                                uri.path()
                            ),
                        ),
                    ),
                }
            },
        )
        .with_state(state)
}

async fn metric_value(
    s: &AppState,
    headers: &HeaderMap,
    peer: &[CertificateDer<'static>],
    namespace: &str,
    metric: &str,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let user = caller(s, headers, peer)?;
    s.access.ownership.allows()?;
    tracing::debug!(user = %user.user, namespace, metric, "external metric read");
    let read = MetricRead {
        user,
        namespace: namespace.to_string(),
        metric: metric.to_string(),
    };
    match s.access.authorizer.allowed(&read).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError::Forbidden {
                user: read.user.user,
                metric: read.metric,
                namespace: read.namespace,
            });
        }
        Err(error) => {
            tracing::error!(%error, user = %read.user.user, namespace, metric, "authorization check failed");
            return Err(ApiError::AuthorizationFailed);
        }
    }
    let text = query.get("labelSelector").map(String::as_str).unwrap_or("");
    let sel = selector::parse(text)?;
    let name = sel
        .pinned(NAME_LABEL)
        .ok_or_else(|| ApiError::MissingReference(text.to_string()))?
        .to_string();
    let not_found = || ApiError::NotFound {
        metric: metric.to_string(),
    };
    let spec = s
        .registry
        .get(namespace, &name)
        .ok_or_else(|| match s.registry.listed() {
            true => not_found(),
            false => ApiError::NotListed {
                metric: metric.to_string(),
            },
        })?;
    let labels = BTreeMap::from([(NAME_LABEL.to_string(), name.clone())]);
    if !sel.matches(&labels) {
        return Err(not_found());
    }
    let metadata = spec
        .engine_metadata()
        .map_err(|errors| ApiError::InvalidMetadata {
            namespace: namespace.into(),
            name: name.clone(),
            errors,
        })?;
    let object = super::cluster::engine_object_name(&name);
    let engine_error = |source| ApiError::Engine {
        namespace: namespace.to_string(),
        name: name.clone(),
        source,
    };
    let decided = s
        .engine
        .replicas(ObjectRef {
            namespace,
            name: &object,
            metadata: &metadata,
        })
        .await;
    let replicas = match decided {
        Ok((tracked, r)) => {
            if &*tracked.plan.metric_name != metric {
                return Err(not_found());
            }
            r
        }
        Err(EngineError::Unavailable { .. }) if spec.fallback.is_some() => {
            spec.fallback.as_ref().map_or(0, |f| f.replicas)
        }
        Err(e) => return Err(engine_error(e)),
    };
    let item = ExternalMetricValue::new(
        metric,
        labels,
        chrono::Utc::now(),
        quantity::from_replicas(replicas),
    );
    Ok(documents::value_list(&item))
}

/// A running External Metrics listener.
pub struct Listener {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Listener {
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the API over HTTPS with mandatory client certificates, with the
/// default [`TransportLimits`]; the serving certificate and key are re-read when they change.
pub async fn start(
    addr: SocketAddr,
    tls: AdapterTls,
    access: Access,
    engine: Arc<Engine>,
    registry: Arc<Registry>,
) -> anyhow::Result<Listener> {
    let limits = TransportLimits::default();
    let material = ReloadingTls::load(
        &tls.cert,
        &tls.key,
        ClientCa::Verifier(access.front_proxy.verifier()),
        &[b"h2", b"http/1.1"],
    )?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding external metrics address {addr}"))?;
    let addr = listener.local_addr()?;
    ReloadingTls::watch(&material, limits.tls_reload_interval);
    let incoming = transport::accept_tls(listener, &limits, material);
    let state = AppState {
        engine,
        registry,
        access,
    };
    let task = tokio::spawn(transport::serve_http(
        incoming,
        limits,
        move |stream: &transport::Tls| {
            let peer: Arc<[CertificateDer<'static>]> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            router(state.clone(), peer)
        },
    ));
    tracing::info!(%addr, "external metrics API serving");
    Ok(Listener { addr, task })
}
