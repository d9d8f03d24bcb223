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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;

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

type Policy = Arc<dyn Fn(&Value) -> Decision + Send + Sync>;

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: Kind,
    type_: &'static str,
    object: Value,
}

struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    events: Vec<Event>,
    /// Watches from a resource version below this get `410 Expired`.
    compacted: u64,
    status_writes: Vec<StatusWrite>,
    reviews: Vec<Value>,
    requests: Vec<Recorded>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    policy: Mutex<Policy>,
    open_watches: std::sync::atomic::AtomicUsize,
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
            .fallback(handle)
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

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta_str(obj: &Value, key: &str) -> Option<String> {
    obj.get("metadata")?.get(key)?.as_str().map(String::from)
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    let obj = obj.as_object_mut().expect("an object");
    obj.entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("metadata is an object")
}

fn without_rv(obj: &Value) -> Value {
    let mut obj = obj.clone();
    meta_mut(&mut obj).remove("resourceVersion");
    obj
}

/// Stores `object` at a new resource version and tells the watches.
fn commit(
    shared: &Shared,
    store: &mut Store,
    kind: Kind,
    key: (Kind, String, String),
    mut object: Value,
    type_: &'static str,
) -> Value {
    store.rv += 1;
    let rv = store.rv;
    let obj = object.as_object_mut().expect("an object");
    obj.insert("apiVersion".into(), json!(kind.api_version()));
    obj.insert("kind".into(), json!(kind.kind()));
    meta_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
    store.objects.insert(key, object.clone());
    let event = Event {
        rv,
        kind,
        type_,
        object: object.clone(),
    };
    store.events.push(event.clone());
    let _ = shared.events.send(event);
    object
}

fn reply(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A `metav1.Status` failure, as the API server writes it.
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn not_found(kind: Kind, name: &str) -> Response {
    let mut details = json!({"name": name, "kind": kind.plural()});
    if !kind.group().is_empty() {
        details["group"] = json!(kind.group());
    }
    reply(
        404,
        &status(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", kind.qualified()),
            Some(details),
        ),
    )
}

fn bad_request(message: &str) -> Response {
    reply(400, &status(400, "BadRequest", message, None))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = answer(&shared, &method, &uri, &headers, body).await;
    shared.store.lock().requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        code: response.status().as_u16(),
    });
    response
}

/// What a path names.
struct Target {
    kind: Kind,
    /// `None`: all namespaces.
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some(n.to_string()), false),
        [p, n, "status"] => (*p, Some(n.to_string()), true),
        _ => return None,
    };
    let kind = Kind::from_path(group, version, plural)?;
    // A namespaced kind's object is only addressed inside its namespace, a cluster-scoped
    // kind's never is.
    if (name.is_some() && kind.namespaced() && namespace.is_none())
        || (!kind.namespaced() && namespace.is_some())
    {
        return None;
    }
    Some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

fn query_params(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn answer(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if !authorized {
        return reply(401, &status(401, "Unauthorized", "Unauthorized", None));
    }
    let path = uri.path();
    if path == "/version" {
        return reply(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                    "platform": "linux/amd64"}),
        );
    }
    if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews" {
        if method != Method::POST {
            return method_not_allowed();
        }
        return review(shared, &body);
    }
    let Some(t) = target(path) else {
        return reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                Some(json!({})),
            ),
        );
    };
    let q = query_params(uri);
    match (method.clone(), &t.name, t.status) {
        (Method::GET, None, _) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(shared, &t, &q)
        }
        (Method::GET, None, _) => list(shared, &t, &q),
        (Method::GET, Some(name), false) => {
            let key = (
                t.kind,
                t.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            match shared.store.lock().objects.get(&key) {
                Some(o) => reply(200, o),
                None => not_found(t.kind, name),
            }
        }
        (Method::PATCH | Method::PUT, Some(name), true) if t.kind == Kind::BlendedMetric => {
            write_status(shared, method, &t, name, headers, &q, &body)
        }
        _ => method_not_allowed(),
    }
}

fn method_not_allowed() -> Response {
    reply(
        405,
        &status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        ),
    )
}

/// `labelSelector` and `fieldSelector`, in the equality forms (`k=v`, `k==v`, `k!=v`, `k`,
/// `!k`); the set forms are refused rather than misread.
struct Filter {
    labels: Vec<(String, Option<String>, bool)>,
    fields: Vec<(String, String, bool)>,
}

fn parse_terms(text: &str) -> Result<Vec<(String, Option<String>, bool)>, String> {
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
            return Err(format!("unable to parse requirement: {term}"));
        }
        if let Some((k, v)) = term.split_once("!=") {
            out.push((k.trim().into(), Some(v.trim().into()), false));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            out.push((k.trim().into(), Some(v.trim().into()), true));
        } else if let Some(k) = term.strip_prefix('!') {
            out.push((k.trim().into(), None, false));
        } else {
            out.push((term.into(), None, true));
        }
    }
    Ok(out)
}

impl Filter {
    fn from_query(q: &BTreeMap<String, String>) -> Result<Self, String> {
        let labels = parse_terms(q.get("labelSelector").map_or("", String::as_str))?;
        let mut fields = Vec::new();
        for (k, v, eq) in parse_terms(q.get("fieldSelector").map_or("", String::as_str))? {
            if !matches!(k.as_str(), "metadata.name" | "metadata.namespace") {
                return Err(format!(
                    "\"{k}\" is not a known field selector: only \"metadata.name\", \
                     \"metadata.namespace\""
                ));
            }
            fields.push((k, v.unwrap_or_default(), eq));
        }
        Ok(Self { labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let labels_ok = self.labels.iter().all(|(k, v, eq)| {
            let have = labels.get(k).and_then(Value::as_str);
            match (v, eq) {
                (Some(v), true) => have == Some(v.as_str()),
                (Some(v), false) => have != Some(v.as_str()),
                (None, true) => have.is_some(),
                (None, false) => have.is_none(),
            }
        });
        let fields_ok = self.fields.iter().all(|(k, v, eq)| {
            let key = k.trim_start_matches("metadata.");
            let have = obj["metadata"]
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("");
            (have == v) == *eq
        });
        labels_ok && fields_ok
    }
}

fn in_scope(t: &Target, kind: Kind, obj: &Value) -> bool {
    kind == t.kind
        && t.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
}

fn list(shared: &Shared, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let filter = match Filter::from_query(q) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let store = shared.store.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((kind, _, _), o)| in_scope(t, *kind, o) && filter.matches(o))
        .map(|(_, o)| {
            let mut o = o.clone();
            if t.kind.builtin() {
                let m = o.as_object_mut().expect("an object");
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    reply(
        200,
        &json!({
            "kind": format!("{}List", t.kind.kind()),
            "apiVersion": t.kind.api_version(),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }),
    )
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// `?watch=true`: from `resourceVersion` (exclusive), or the current objects as `ADDED`
/// first when it is absent or `0`; until `timeoutSeconds`, ending with a `BOOKMARK` when the
/// client allows them.
fn watch(shared: &Arc<Shared>, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let filter = match Filter::from_query(q) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return bad_request(&format!("invalid resource version \"{v}\""));
            }
        },
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let receiver = shared.events.subscribe();
    let store = shared.store.lock();
    let mut first: Vec<Bytes> = Vec::new();
    let mut last = store.rv;
    match from {
        Some(rv) if rv < store.compacted => {
            let s = status(
                410,
                "Expired",
                &format!("too old resource version: {rv} ({})", store.compacted),
                None,
            );
            first.push(event_line("ERROR", &s));
            let body = Body::from_stream(futures::stream::iter(
                first.into_iter().map(Ok::<_, std::io::Error>),
            ));
            return watch_response(body);
        }
        Some(rv) => {
            for e in store.events.iter().filter(|e| e.rv > rv) {
                if in_scope(t, e.kind, &e.object) && filter.matches(&e.object) {
                    first.push(event_line(e.type_, &e.object));
                }
            }
        }
        None => {
            for ((kind, _, _), o) in &store.objects {
                if in_scope(t, *kind, o) && filter.matches(o) {
                    first.push(event_line("ADDED", o));
                }
            }
        }
    }
    if from.is_some_and(|rv| rv > last) {
        last = from.unwrap_or(last);
    }
    drop(store);
    let kind = t.kind;
    let scope = Target {
        kind,
        namespace: t.namespace.clone(),
        name: None,
        status: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let guard = WatchGuard::new(shared.clone());
    struct Live {
        receiver: broadcast::Receiver<Event>,
        last: u64,
        scope: Target,
        filter: Filter,
        deadline: tokio::time::Instant,
        bookmarks: bool,
        done: bool,
        _guard: WatchGuard,
    }
    let live = Live {
        receiver,
        last,
        scope,
        filter,
        deadline,
        bookmarks,
        done: false,
        _guard: guard,
    };
    let rest = futures::stream::unfold(live, move |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            match tokio::time::timeout_at(s.deadline, s.receiver.recv()).await {
                Ok(Ok(e)) => {
                    if e.rv <= s.last {
                        continue;
                    }
                    s.last = e.rv;
                    if in_scope(&s.scope, e.kind, &e.object) && s.filter.matches(&e.object) {
                        let line = event_line(e.type_, &e.object);
                        return Some((Ok::<_, std::io::Error>(line), s));
                    }
                }
                // A watcher that falls this far behind is dropped, as the API server does.
                Ok(Err(_)) => return None,
                Err(_) => {
                    s.done = true;
                    if s.bookmarks {
                        let kind = s.scope.kind;
                        let marker = json!({
                            "kind": kind.kind(), "apiVersion": kind.api_version(),
                            "metadata": {"resourceVersion": s.last.to_string()},
                        });
                        return Some((Ok(event_line("BOOKMARK", &marker)), s));
                    }
                    return None;
                }
            }
        }
    });
    let head = futures::stream::iter(first.into_iter().map(Ok::<_, std::io::Error>));
    watch_response(Body::from_stream(futures::StreamExt::chain(head, rest)))
}

fn watch_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

struct WatchGuard(Arc<Shared>);

impl WatchGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared
            .open_watches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0
            .open_watches
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// `PATCH` (merge or apply) or `PUT` of `/status`: only `status` changes; a write that
/// changes nothing keeps the resource version and sends no event, as the API server does.
fn write_status(
    shared: &Shared,
    method: &Method,
    t: &Target,
    name: &str,
    headers: &HeaderMap,
    q: &BTreeMap<String, String>,
    body: &Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let mut store = shared.store.lock();
    let namespace = t.namespace.clone().unwrap_or_default();
    let response = (|| {
        let patch = match parsed {
            Ok(v) if v.is_object() => v,
            _ => return bad_request("the request body is not a JSON object"),
        };
        let key = (t.kind, namespace.clone(), name.to_string());
        let Some(old) = store.objects.get(&key).cloned() else {
            return not_found(t.kind, name);
        };
        let mut new = old.clone();
        match (method.clone(), content_type.as_str()) {
            (Method::PUT, "application/json") => {
                let sent_rv = patch["metadata"]["resourceVersion"].as_str();
                if sent_rv.is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str())
                {
                    let details = json!({"name": name, "group": t.kind.group(),
                                         "kind": t.kind.plural()});
                    let message = format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                         modified; please apply your changes to the latest version and try again",
                        t.kind.qualified()
                    );
                    return reply(409, &status(409, "Conflict", &message, Some(details)));
                }
                let obj = new.as_object_mut().expect("an object");
                match patch.get("status") {
                    Some(s) => obj.insert("status".into(), s.clone()),
                    None => obj.remove("status"),
                };
            }
            (Method::PATCH, "application/merge-patch+json") => {
                if let Some(s) = patch.get("status") {
                    let mut status = new.get("status").cloned().unwrap_or(Value::Null);
                    merge(&mut status, s);
                    new.as_object_mut()
                        .expect("an object")
                        .insert("status".into(), status);
                }
            }
            (Method::PATCH, "application/apply-patch+yaml") => {
                if !q.contains_key("fieldManager") {
                    return bad_request(
                        "PATCH /status: fieldManager is required for apply requests",
                    );
                }
                // One field manager owns the whole status here, so apply is a merge.
                if let Some(s) = patch.get("status") {
                    let mut status = new.get("status").cloned().unwrap_or(Value::Null);
                    merge(&mut status, s);
                    new.as_object_mut()
                        .expect("an object")
                        .insert("status".into(), status);
                }
            }
            _ => {
                return reply(
                    415,
                    &status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media \
                             types include: application/json-patch+json, \
                             application/merge-patch+json, application/apply-patch+yaml (got \
                             {content_type})"
                        ),
                        None,
                    ),
                );
            }
        }
        if new == old {
            return reply(200, &old);
        }
        let stored = commit(shared, &mut store, t.kind, key, new, "MODIFIED");
        reply(200, &stored)
    })();
    store.status_writes.push(StatusWrite {
        namespace,
        name: name.to_string(),
        method: method.to_string(),
        content_type,
        field_manager: q.get("fieldManager").cloned(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        code: response.status().as_u16(),
    });
    response
}

/// A SubjectAccessReview: validated as the API server does, answered by the policy.
fn review(shared: &Shared, body: &Bytes) -> Response {
    let mut sar = match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => v,
        _ => return bad_request("the request body is not a SubjectAccessReview"),
    };
    shared.store.lock().reviews.push(sar.clone());
    let spec = sar.get("spec").cloned().unwrap_or(Value::Null);
    let user = spec["user"].as_str().unwrap_or("");
    let groups = spec["groups"].as_array().is_some_and(|g| !g.is_empty());
    let resource = spec.get("resourceAttributes").is_some_and(|r| !r.is_null());
    let non_resource = spec
        .get("nonResourceAttributes")
        .is_some_and(|r| !r.is_null());
    let invalid = if user.is_empty() && !groups {
        Some("spec.user: Invalid value: \"\": at least one of user or group must be specified")
    } else if resource == non_resource {
        Some(
            "spec.resourceAttributes: Invalid value: \"null\": exactly one of \
             nonResourceAttributes or resourceAttributes must be specified",
        )
    } else {
        None
    };
    if let Some(why) = invalid {
        let message = format!("SubjectAccessReview.authorization.k8s.io \"\" is invalid: {why}");
        return reply(
            422,
            &status(
                422,
                "Invalid",
                &message,
                Some(json!({"group": "authorization.k8s.io", "kind": "SubjectAccessReview"})),
            ),
        );
    }
    let policy = shared.policy.lock().clone();
    let decision = policy(&spec);
    let mut status = json!({"allowed": decision.allowed});
    if decision.denied {
        status["denied"] = json!(true);
    }
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    let obj = sar.as_object_mut().expect("a JSON object");
    obj.insert("apiVersion".into(), json!("authorization.k8s.io/v1"));
    obj.insert("kind".into(), json!("SubjectAccessReview"));
    obj.insert("metadata".into(), json!({"creationTimestamp": null}));
    obj.insert("status".into(), status);
    reply(201, &sar)
}
