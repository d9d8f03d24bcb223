//! A Kubernetes API server double for the metrics adapter's tests: the few resources the
//! adapter reads and writes, answered in the API's JSON (List kinds with a `resourceVersion`,
//! newline-delimited watch events, `metav1.Status` errors, no-op writes that keep the
//! resource version), with state the test changes and every request recorded.
//!
//! No real kube-apiserver can run here (no etcd, no cluster), so this is a double; it knows
//! nothing of the scaler and speaks plain HTTP, which `kube::Client` and kubectl accept.
//!
//! Served:
//! - `blendedmetrics` (`blend-scaler.io/v1alpha1`, namespaced): list, get and watch in all
//!   namespaces or one, and `PATCH`/`PUT` of the `/status` subresource (recorded);
//! - `configmaps` (core `v1`, namespaced): list, get and watch;
//! - `apiservices` (`apiregistration.k8s.io/v1`, cluster-scoped): list, get and watch;
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`, answered by a policy the test
//!   sets (deny by default), each review recorded;
//! - `/version`.
//!
//! Rooms: [`KubeApi`] (this file) is what a test holds and the [`Kind`]s it serves; `store`
//! the objects, resource versions and event history behind it; `http` the routing, the bearer
//! check and the `metav1.Status` replies; `read` list and watch with their selectors;
//! `status_write` the `/status` subresource; `review` the SubjectAccessReview.

mod http;
mod read;
mod review;
mod status_write;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;

use self::store::{Event, Shared, Store, commit, meta_mut, meta_str, now, without_rv};

/// The bearer token the generated kubeconfig carries; any other is answered 401.
pub const TOKEN: &str = "kube-api-double-token";

/// One resource type the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    BlendedMetric,
    ConfigMap,
    ApiService,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::BlendedMetric, Kind::ConfigMap, Kind::ApiService];

    fn group(self) -> &'static str {
        match self {
            Kind::BlendedMetric => "blend-scaler.io",
            Kind::ConfigMap => "",
            Kind::ApiService => "apiregistration.k8s.io",
        }
    }

    fn version(self) -> &'static str {
        match self {
            Kind::BlendedMetric => "v1alpha1",
            Kind::ConfigMap | Kind::ApiService => "v1",
        }
    }

    fn api_version(self) -> String {
        match self.group() {
            "" => self.version().to_string(),
            g => format!("{g}/{}", self.version()),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::BlendedMetric => "BlendedMetric",
            Kind::ConfigMap => "ConfigMap",
            Kind::ApiService => "APIService",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::BlendedMetric => "blendedmetrics",
            Kind::ConfigMap => "configmaps",
            Kind::ApiService => "apiservices",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Kind::ApiService)
    }

    /// Writes to the main resource leave `status` alone (it has its own subresource).
    fn has_status_subresource(self) -> bool {
        matches!(self, Kind::BlendedMetric | Kind::ApiService)
    }

    /// The API server strips `kind`/`apiVersion` from the items of built-in lists and keeps
    /// them on custom resources'.
    fn builtin(self) -> bool {
        !matches!(self, Kind::BlendedMetric)
    }

    /// `blendedmetrics.blend-scaler.io`, `configmaps`: how Status messages name the resource.
    fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    fn from_object(obj: &Value) -> Option<Kind> {
        let api_version = obj.get("apiVersion")?.as_str()?;
        let kind = obj.get("kind")?.as_str()?;
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind() == kind)
    }

    fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.version() == version && k.plural() == plural)
    }
}

/// A write to a `/status` subresource, as received.
#[derive(Clone, Debug)]
pub struct StatusWrite {
    pub namespace: String,
    pub name: String,
    /// `PATCH` or `PUT`.
    pub method: String,
    pub content_type: String,
    pub field_manager: Option<String>,
    pub body: Value,
    /// The HTTP status the double answered.
    pub code: u16,
}

/// One request, as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub code: u16,
}

/// What the SubjectAccessReview policy decides.
#[derive(Clone, Debug, Default)]
pub struct Decision {
    pub allowed: bool,
    pub denied: bool,
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: &str) -> Self {
        Self {
            allowed: true,
            denied: false,
            reason: reason.into(),
        }
    }

    /// "No opinion": neither allowed nor explicitly denied (RBAC's answer when no rule matches).
    pub fn no_opinion() -> Self {
        Self::default()
    }
}

/// The running double; stops when dropped.
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: AbortOnDropHandle<()>,
}

impl KubeApi {
    pub async fn start() -> std::io::Result<Self> {
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                uid: 0,
                objects: BTreeMap::new(),
                events: Vec::new(),
                compacted: 0,
                status_writes: Vec::new(),
                reviews: Vec::new(),
                requests: Vec::new(),
            }),
            events,
            policy: Mutex::new(Arc::new(|_: &Value| Decision::no_opinion())),
            open_watches: Default::default(),
        });
        let app = axum::Router::new()
            .fallback(http::handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            addr,
            shared,
            _server: crate::serve(listener, app),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at the double with [`TOKEN`].
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-api-double\n  cluster:\n    \
             server: {url}\nusers:\n- name: test\n  user:\n    token: {TOKEN}\ncontexts:\n- \
             name: test\n  context:\n    cluster: kube-api-double\n    user: test\n    \
             namespace: {namespace}\ncurrent-context: test\n",
            url = self.url()
        )
    }

    /// Writes [`KubeApi::kubeconfig`] to `path` (for `KUBECONFIG`).
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig("default"))
    }

    /// Creates or replaces an object (`apiVersion`, `kind`, `metadata.name`, and
    /// `metadata.namespace` for namespaced kinds), as `kubectl apply` would: the server fills
    /// `uid`, `creationTimestamp` and `resourceVersion`, bumps `generation` when the spec
    /// changes and keeps the stored `status` of kinds with a status subresource. Returns the
    /// stored object.
    ///
    /// # Panics
    /// On an object the double does not serve: a mistake in the test.
    pub fn apply(&self, object: Value) -> Value {
        let kind = Kind::from_object(&object).expect("an object of a kind the double serves");
        let name = meta_str(&object, "name").expect("metadata.name");
        let namespace = if kind.namespaced() {
            meta_str(&object, "namespace").expect("metadata.namespace")
        } else {
            String::new()
        };
        let mut store = self.shared.store.lock();
        let key = (kind, namespace.clone(), name.clone());
        let mut new = object;
        let old = store.objects.get(&key).cloned();
        let type_ = match &old {
            None => {
                store.uid += 1;
                let uid = format!("00000000-0000-4000-8000-{:012x}", store.uid);
                let meta = meta_mut(&mut new);
                meta.insert("uid".into(), json!(uid));
                meta.insert("creationTimestamp".into(), json!(now()));
                if kind == Kind::BlendedMetric {
                    meta.insert("generation".into(), json!(1));
                }
                if !kind.namespaced() {
                    meta.remove("namespace");
                }
                "ADDED"
            }
            Some(old) => {
                let meta = meta_mut(&mut new);
                for k in ["uid", "creationTimestamp", "generation"] {
                    match old["metadata"].get(k) {
                        Some(v) => meta.insert(k.into(), v.clone()),
                        None => meta.remove(k),
                    };
                }
                if kind == Kind::BlendedMetric && old.get("spec") != new.get("spec") {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    meta_mut(&mut new).insert("generation".into(), json!(g));
                }
                "MODIFIED"
            }
        };
        if kind.has_status_subresource() {
            let obj = new.as_object_mut().expect("an object");
            match old.as_ref().and_then(|o| o.get("status")) {
                Some(s) => obj.insert("status".into(), s.clone()),
                None => obj.remove("status"),
            };
        }
        if let Some(old) = &old
            && without_rv(old) == without_rv(&new)
        {
            return old.clone();
        }
        commit(&self.shared, &mut store, kind, key, new, type_)
    }

    /// Deletes an object; `None` if it did not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let mut store = self.shared.store.lock();
        let key = (kind, namespace.to_string(), name.to_string());
        let mut old = store.objects.remove(&key)?;
        store.rv += 1;
        let rv = store.rv;
        meta_mut(&mut old).insert("resourceVersion".into(), json!(rv.to_string()));
        let event = Event {
            rv,
            kind,
            type_: "DELETED",
            object: old.clone(),
        };
        store.events.push(event.clone());
        let _ = self.shared.events.send(event);
        Some(old)
    }

    /// The stored object, as a GET would answer it.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let key = (kind, namespace.to_string(), name.to_string());
        self.shared.store.lock().objects.get(&key).cloned()
    }

    /// Forgets the event history: a watch from an older resource version gets `410 Expired`
    /// and the client must list again, as after etcd compaction.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock();
        store.compacted = store.rv;
        store.events.clear();
    }

    /// Every write to a `/status` subresource, in order.
    pub fn status_writes(&self) -> Vec<StatusWrite> {
        self.shared.store.lock().status_writes.clone()
    }

    /// Every SubjectAccessReview posted, as received.
    pub fn reviews(&self) -> Vec<Value> {
        self.shared.store.lock().reviews.clone()
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.store.lock().requests.clone()
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared
            .open_watches
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How SubjectAccessReviews are answered from now on (given the review's `spec`).
    pub fn set_policy(&self, policy: impl Fn(&Value) -> Decision + Send + Sync + 'static) {
        *self.shared.policy.lock() = Arc::new(policy);
    }
}
