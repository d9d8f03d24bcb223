//! The HTTPS listener of the External Metrics API: mTLS against the front-proxy CA, identity
//! from `X-Remote-*` only on that verified connection, and the metric route answered by the
//! same engine and cache as the gRPC scaler.

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

use super::documents::{self, ExternalMetricValue};
use super::{ApiError, NAME_LABEL, quantity, selector};
use crate::crd::BlendedMetricSpec;
use crate::engine::{Engine, EngineError, ObjectRef};
use crate::tls::{ClientCa, ReloadingTls};
use crate::transport::{self, TransportLimits};

/// The `BlendedMetric`s the adapter serves, by namespace and name.
#[derive(Default)]
pub struct Registry {
    objects: RwLock<HashMap<(String, String), BlendedMetricSpec>>,
}

impl Registry {
    pub fn upsert(&self, namespace: &str, name: &str, spec: BlendedMetricSpec) {
        self.objects
            .write()
            .insert((namespace.into(), name.into()), spec);
    }

    pub fn remove(&self, namespace: &str, name: &str) {
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

/// PEM files of the listener: the serving certificate, and the CA front-proxy client
/// certificates must chain to, with the CNs allowed (empty: any).
#[derive(Clone, Debug)]
pub struct AdapterTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca_pem: Vec<u8>,
    pub allowed_names: Vec<String>,
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
}

/// The verified front-proxy connection's identity headers (research note 4.2).
#[derive(Clone, Debug)]
struct Caller {
    user: String,
}

fn caller(headers: &HeaderMap, verified: bool) -> Result<Caller, ApiError> {
    if !verified {
        return Err(ApiError::Unauthorized);
    }
    let user = headers
        .get_all("x-remote-user")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| !v.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    Ok(Caller {
        user: user.to_string(),
    })
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

/// The routes; `verified` says the connection's client certificate passed the CN check.
fn router(state: AppState, verified: bool) -> Router {
    let doc = move |d: fn() -> Value| {
        move |headers: HeaderMap| async move {
            match caller(&headers, verified) {
                Ok(_) => json(200, &d()),
                Err(e) => error(e),
            }
        }
    };
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
                    match metric_value(&s, &headers, verified, &namespace, &metric, &q).await {
                        Ok(v) => json(200, &v),
                        Err(e) => error(e),
                    }
                },
            ),
        )
        .fallback(move |headers: HeaderMap, uri: axum::http::Uri| async move {
            match caller(&headers, verified) {
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
        })
        .with_state(state)
}

async fn metric_value(
    s: &AppState,
    headers: &HeaderMap,
    verified: bool,
    namespace: &str,
    metric: &str,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let caller = caller(headers, verified)?;
    tracing::debug!(user = %caller.user, namespace, metric, "external metric read");
    let text = query.get("labelSelector").map(String::as_str).unwrap_or("");
    let sel = selector::parse(text)?;
    let name = sel
        .pinned(NAME_LABEL)
        .ok_or_else(|| ApiError::MissingReference(text.to_string()))?
        .to_string();
    let not_found = || ApiError::NotFound {
        metric: metric.to_string(),
    };
    let spec = s.registry.get(namespace, &name).ok_or_else(not_found)?;
    let labels = BTreeMap::from([(NAME_LABEL.to_string(), name.clone())]);
    if !sel.matches(&labels) {
        return Err(not_found());
    }
    let metadata = spec.metadata_map();
    let object = super::cluster::engine_object_name(&name);
    let engine_error = |source| ApiError::Engine {
        namespace: namespace.to_string(),
        name: name.clone(),
        source,
    };
    let from_env = crate::crd::from_env_errors(metadata.keys());
    if !from_env.is_empty() {
        return Err(ApiError::InvalidMetadata {
            namespace: namespace.into(),
            name: name.clone(),
            errors: crate::metadata::MetadataErrors(from_env),
        });
    }
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
            if tracked.plan.metric_name != metric {
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

/// The client certificate's CN is in `allowed` (empty: any CN the CA signed).
fn name_allowed(leaf: Option<&CertificateDer<'_>>, allowed: &[String]) -> bool {
    let Some(leaf) = leaf else { return false };
    if allowed.is_empty() {
        return true;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| allowed.iter().any(|a| a == cn))
}

/// Binds `addr` and serves the API over HTTPS with mandatory client certificates, with the
/// default [`TransportLimits`]; the serving certificate and key are re-read when they change.
pub async fn start(
    addr: SocketAddr,
    tls: AdapterTls,
    engine: Arc<Engine>,
    registry: Arc<Registry>,
) -> anyhow::Result<Listener> {
    let limits = TransportLimits::default();
    let material = ReloadingTls::load(
        &tls.cert,
        &tls.key,
        ClientCa::Pem(tls.client_ca_pem.clone()),
        &[b"h2", b"http/1.1"],
    )?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding external metrics address {addr}"))?;
    let addr = listener.local_addr()?;
    ReloadingTls::watch(&material, limits.tls_reload_interval);
    let incoming = transport::accept_tls(listener, &limits, material);
    let state = AppState { engine, registry };
    let allowed = tls.allowed_names;
    let task = tokio::spawn(transport::serve_http(
        incoming,
        limits,
        move |stream: &transport::Tls| {
            let verified = name_allowed(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first()),
                &allowed,
            );
            router(state.clone(), verified)
        },
    ));
    tracing::info!(%addr, "external metrics API serving");
    Ok(Listener { addr, task })
}
