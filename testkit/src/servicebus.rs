//! A Service Bus management API double on loopback, for tests and the `demo` command.
//!
//! Written from the wire format (see docs/servicebus.md, "The test double"): entries and feeds carry the
//! elements, namespaces and prefixes Service Bus sends, in both the 2017-04 and 2021-05
//! shapes. It also reproduces the service's habits that matter to a scaler: the HTTP 200
//! "Publicly Listed Services" feed for a missing entity, `<Error>` bodies, SAS signature
//! checks, and on demand throttling with `Retry-After`, latency and broken bodies. A tiny
//! Azure AD token endpoint serves the workload identity exchange.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use percent_encoding::percent_decode_str;
use quick_xml::escape::escape;
use rand::RngExt;
use sha2::Sha256;

// The wire names, written here from the recorded responses (docs/servicebus.md) rather than
// imported from the scaler, so a mistake in the scaler's copy shows up as a failing test
// instead of agreeing with itself.
const ATOM_NS: &str = "http://www.w3.org/2005/Atom";
const CONNECT_NS: &str = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
const COUNTS_NS: &str = "http://schemas.microsoft.com/netservices/2011/06/servicebus";
const NOT_FOUND_FEED_TITLE: &str = "Publicly Listed Services";
/// The scope a workload identity token for Service Bus is asked for.
const AAD_SCOPE: &str = "https://servicebus.azure.net/.default";

const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
const ENTRY_TYPE: &str = "application/atom+xml; type=entry; charset=utf-8";
const FEED_TYPE: &str = "application/atom+xml; type=feed; charset=utf-8";
const ERROR_TYPE: &str = "application/xml; charset=utf-8";
const FOREVER: &str = "P10675199DT2H48M5.4775807S";
/// Bytes per message in `SizeInBytes` (the recorded queue held 3 messages in 444 bytes).
const BYTES_PER_MESSAGE: u64 = 148;

/// The shape of entries: which elements a description carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    V2017_04,
    V2021_05,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V2017_04 => "2017-04",
            ApiVersion::V2021_05 => "2021-05",
        }
    }
}

/// The prefix bound to the `CountDetails` namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountsPrefix {
    /// As the service does: `d3p1` in a subscription GET, `d2p1` everywhere else.
    AsService,
    D2p1,
    D3p1,
}

/// How a throttled response says when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    Seconds(u64),
    /// An HTTP date this far in the future.
    DateIn(Duration),
}

/// A failure the double can be told to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This status with an `<Error>` body (429 and 503 as `ServerBusy`).
    Status {
        status: u16,
        retry_after: Option<RetryAfter>,
    },
    /// The right response, cut off half way.
    Truncated,
    /// HTTP 200 with a body that is not XML.
    Garbage,
}

/// The message counts of one entity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub active: u64,
    pub dead_letter: u64,
    pub scheduled: u64,
    pub transfer: u64,
    pub transfer_dead_letter: u64,
}

impl Counts {
    pub fn active(active: u64) -> Self {
        Self {
            active,
            ..Self::default()
        }
    }

    fn total(&self) -> u64 {
        self.active
            .saturating_add(self.dead_letter)
            .saturating_add(self.scheduled)
            .saturating_add(self.transfer)
            .saturating_add(self.transfer_dead_letter)
    }
}

/// What the double accepts.
#[derive(Clone, Debug)]
pub struct DoubleOptions {
    /// The namespace name shown in entries and error trackers.
    pub namespace: String,
    /// The shared access policy whose key signs SAS tokens.
    pub key_name: String,
    pub key: String,
    /// The token endpoint's tenant, client id and the federated assertion it accepts.
    pub tenant_id: String,
    pub client_id: String,
    pub federated_token: String,
    /// Lifetime of the access tokens it issues.
    pub token_lifetime: Duration,
}

/// The workload identity settings that exchange with the double's token endpoint: the
/// fields of the scaler's `WorkloadIdentityConfig`, so a test builds one from them.
#[derive(Clone, Debug)]
pub struct WorkloadIdentity {
    pub client_id: String,
    pub tenant_id: String,
    pub token_file: PathBuf,
    pub authority_host: String,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        Self {
            namespace: "blend-double".into(),
            key_name: "RootManageSharedAccessKey".into(),
            key: "ZG91YmxlLWtleS1ub3QtYS1yZWFsLXNlY3JldA==".into(),
            tenant_id: "00000000-0000-0000-0000-00000000d0b1".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            federated_token:
                "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YmxlbmQifQ.".into(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug)]
struct Entity {
    name: String,
    counts: Counts,
}

#[derive(Clone, Debug, Default)]
struct Topic {
    name: String,
    counts: Counts,
    subscriptions: BTreeMap<String, Entity>,
}

#[derive(Default)]
struct Entities {
    queues: BTreeMap<String, Entity>,
    topics: BTreeMap<String, Topic>,
}

struct ActiveFault {
    fault: Fault,
    /// `None`: until cleared.
    remaining: Option<usize>,
}

struct Shared {
    options: DoubleOptions,
    addr: SocketAddr,
    entities: Mutex<Entities>,
    version: Mutex<Option<ApiVersion>>,
    prefix: Mutex<CountsPrefix>,
    fault: Mutex<Option<ActiveFault>>,
    latency: Mutex<Duration>,
    counts: Mutex<HashMap<String, u64>>,
    log: Mutex<Vec<String>>,
    served: Mutex<Vec<Served>>,
    total: AtomicU64,
    bearer: Mutex<HashSet<String>>,
    token_requests: AtomicU64,
    issued: AtomicU64,
}

/// One management request as the double answered it.
#[derive(Clone, Debug)]
pub struct Served {
    /// When it arrived (before any injected latency).
    pub at: tokio::time::Instant,
    /// `METHOD /path?query`.
    pub request: String,
    pub status: u16,
}

/// The running double. Dropping it stops the server.
pub struct ServiceBusDouble {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceBusDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceBusDouble {
    /// Starts with [`DoubleOptions::default`] on `127.0.0.1:0`.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(DoubleOptions::default()).await
    }

    pub async fn start_with(options: DoubleOptions) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            addr,
            entities: Mutex::new(Entities::default()),
            version: Mutex::new(None),
            prefix: Mutex::new(CountsPrefix::AsService),
            fault: Mutex::new(None),
            latency: Mutex::new(Duration::ZERO),
            counts: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            served: Mutex::new(Vec::new()),
            total: AtomicU64::new(0),
            bearer: Mutex::new(HashSet::new()),
            token_requests: AtomicU64::new(0),
            issued: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            // Ends only when aborted; a failed accept loop leaves requests refused.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`: the `endpoint` metadata value that points at the double.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Also the Azure AD authority host (`AZURE_AUTHORITY_HOST`).
    pub fn authority_host(&self) -> String {
        format!("http://{}/", self.shared.addr)
    }

    pub fn options(&self) -> &DoubleOptions {
        &self.shared.options
    }

    /// A connection string with the double's key.
    pub fn connection_string(&self) -> String {
        self.connection_string_with_key(&self.shared.options.key)
    }

    /// A connection string with another key (to see it refused).
    pub fn connection_string_with_key(&self, key: &str) -> String {
        format!(
            "Endpoint=http://{}/;SharedAccessKeyName={};SharedAccessKey={key}",
            self.shared.addr, self.shared.options.key_name
        )
    }

    /// The workload identity settings that exchange with this double, reading the federated
    /// token from `token_file` (write [`DoubleOptions::federated_token`] there).
    pub fn workload_identity(&self, token_file: PathBuf) -> WorkloadIdentity {
        WorkloadIdentity {
            client_id: self.shared.options.client_id.clone(),
            tenant_id: self.shared.options.tenant_id.clone(),
            token_file,
            authority_host: self.authority_host(),
        }
    }

    /// Creates or updates a queue with this many active messages.
    pub fn set_queue(&self, name: &str, active: u64) {
        self.set_queue_counts(name, Counts::active(active));
    }

    pub fn set_queue_counts(&self, name: &str, counts: Counts) {
        let mut e = self.shared.entities.lock();
        let entry = e.queues.entry(name.to_lowercase()).or_insert(Entity {
            name: name.to_string(),
            counts,
        });
        entry.counts = counts;
    }

    pub fn remove_queue(&self, name: &str) {
        self.shared
            .entities
            .lock()
            .queues
            .remove(&name.to_lowercase());
    }

    /// Creates a topic (with no subscriptions) if it does not exist.
    pub fn add_topic(&self, topic: &str) {
        let mut e = self.shared.entities.lock();
        e.topics
            .entry(topic.to_lowercase())
            .or_insert_with(|| Topic {
                name: topic.to_string(),
                ..Topic::default()
            });
    }

    pub fn remove_topic(&self, topic: &str) {
        self.shared
            .entities
            .lock()
            .topics
            .remove(&topic.to_lowercase());
    }

    /// Creates or updates a subscription (and its topic) with this many active messages.
    pub fn set_subscription(&self, topic: &str, subscription: &str, active: u64) {
        self.set_subscription_counts(topic, subscription, Counts::active(active));
    }

    pub fn set_subscription_counts(&self, topic: &str, subscription: &str, counts: Counts) {
        self.add_topic(topic);
        let mut e = self.shared.entities.lock();
        if let Some(t) = e.topics.get_mut(&topic.to_lowercase()) {
            let entry = t
                .subscriptions
                .entry(subscription.to_lowercase())
                .or_insert(Entity {
                    name: subscription.to_string(),
                    counts,
                });
            entry.counts = counts;
        }
    }

    pub fn remove_subscription(&self, topic: &str, subscription: &str) {
        let mut e = self.shared.entities.lock();
        if let Some(t) = e.topics.get_mut(&topic.to_lowercase()) {
            t.subscriptions.remove(&subscription.to_lowercase());
        }
    }

    /// Forces the entry shape; `None` (the default) follows each request's `api-version`.
    pub fn set_api_version(&self, version: Option<ApiVersion>) {
        *self.shared.version.lock() = version;
    }

    pub fn set_counts_prefix(&self, prefix: CountsPrefix) {
        *self.shared.prefix.lock() = prefix;
    }

    /// Answers the next `times` management requests (all, when `None`) with `fault`,
    /// after authentication.
    pub fn inject(&self, fault: Fault, times: Option<usize>) {
        *self.shared.fault.lock() = Some(ActiveFault {
            fault,
            remaining: times,
        });
    }

    pub fn clear_faults(&self) {
        *self.shared.fault.lock() = None;
    }

    /// Delay before every management response.
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock() = latency;
    }

    /// Accepts this bearer token (besides the ones its token endpoint issues).
    pub fn allow_bearer(&self, token: &str) {
        self.shared.bearer.lock().insert(token.to_string());
    }

    /// Management requests received (token exchanges not included).
    pub fn requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// Management requests to `path` (decoded, without query; case-insensitive), e.g.
    /// `/$Resources/Queues` or `/orders`.
    pub fn requests_to(&self, path: &str) -> u64 {
        let key = path.to_lowercase();
        self.shared.counts.lock().get(&key).copied().unwrap_or(0)
    }

    /// Every management request as `METHOD /path?query`, in order.
    /// Every management request with when it arrived and the status it got, in order of
    /// arrival (for timing checks such as `Retry-After`).
    pub fn served(&self) -> Vec<Served> {
        let mut served = self.shared.served.lock().clone();
        served.sort_by_key(|s| s.at);
        served
    }

    pub fn request_log(&self) -> Vec<String> {
        self.shared.log.lock().clone()
    }

    pub fn reset_counts(&self) {
        self.shared.counts.lock().clear();
        self.shared.log.lock().clear();
        self.shared.served.lock().clear();
        self.shared.total.store(0, Ordering::SeqCst);
        self.shared.token_requests.store(0, Ordering::SeqCst);
    }

    /// Token exchanges received.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(Ordering::SeqCst)
    }
}

fn now_text() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn uuid() -> String {
    let v: u128 = rand::rng().random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// `<Error><Code/><Detail/></Error>` with a tracker the way the service writes it.
fn error_body(shared: &Shared, status: u16, detail: &str, path: &str) -> String {
    format!(
        "<Error><Code>{status}</Code><Detail>{} TrackingId:{}_G1, SystemTracker:{}:{}, \
         Timestamp:{}</Detail></Error>",
        escape(detail),
        uuid(),
        escape(&shared.options.namespace),
        escape(path.trim_start_matches('/')),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S"),
    )
}

fn error_reply(shared: &Shared, status: u16, detail: &str, path: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(code, ERROR_TYPE, error_body(shared, status, detail, path))
}

async fn handle(
    state: AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = tokio::time::Instant::now();
    let shared = state.0.clone();
    let token_exchange = method == Method::POST && uri.path().ends_with("/oauth2/v2.0/token");
    let request = format!("{method} {}?{}", uri.path(), uri.query().unwrap_or(""));
    let response = answer(state, method, uri, headers, body).await;
    if !token_exchange {
        shared.served.lock().push(Served {
            at,
            request,
            status: response.status().as_u16(),
        });
    }
    response
}

async fn answer(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_path = uri.path().to_string();
    let path = percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let query = uri.query().unwrap_or("").to_string();
    if method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        return token_endpoint(&shared, &path, &body);
    }

    shared.total.fetch_add(1, Ordering::SeqCst);
    *shared.counts.lock().entry(path.to_lowercase()).or_default() += 1;
    shared
        .log
        .lock()
        .push(format!("{method} {raw_path}?{query}"));

    let latency = *shared.latency.lock();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| shared.addr.to_string());
    if let Err(detail) = authorize(&shared, &headers, &host, &path) {
        return error_reply(&shared, 401, &detail, &path);
    }

    let fault = {
        let mut f = shared.fault.lock();
        let fault = f.as_ref().map(|a| a.fault);
        if let Some(active) = f.as_mut()
            && let Some(n) = active.remaining.as_mut()
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *f = None;
            }
        }
        fault
    };
    if let Some(Fault::Status {
        status,
        retry_after,
    }) = fault
    {
        return status_fault(&shared, status, retry_after, &path);
    }
    if fault == Some(Fault::Garbage) {
        return reply(
            StatusCode::OK,
            ENTRY_TYPE,
            "\u{1}garbage{not xml at all".into(),
        );
    }

    let response = if method == Method::GET {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        get(&shared, &host, &path, &raw_path, &query, &params)
    } else {
        // The double is read-only; the service answers writes to missing paths like this.
        (
            StatusCode::NOT_FOUND,
            ERROR_TYPE,
            error_body(
                &shared,
                404,
                "No service is hosted at the specified address.",
                &path,
            ),
        )
    };
    let (status, content_type, mut text) = response;
    if fault == Some(Fault::Truncated) {
        let mut cut = text.len() / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    reply(status, content_type, text)
}

fn status_fault(
    shared: &Shared,
    status: u16,
    retry_after: Option<RetryAfter>,
    path: &str,
) -> Response {
    let detail = match status {
        429 => {
            "SubCode=50004. The request was terminated because the namespace is being \
             throttled. Please wait and retry."
        }
        503 => "SubCode=50002. The server is busy. Please wait and retry. (ServerBusy)",
        401 => "Manage,EntityRead claims required for this operation.",
        403 => "The request is forbidden for this identity.",
        404 => "No service is hosted at the specified address.",
        _ => "The service encountered an error.",
    };
    let mut response = error_reply(shared, status, detail, path);
    if let Some(r) = retry_after {
        let value = match r {
            RetryAfter::Seconds(s) => s.to_string(),
            RetryAfter::DateIn(d) => {
                let at = chrono::DateTime::<chrono::Utc>::from(SystemTime::now() + d);
                at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
            }
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

/// Checks the `Authorization` header: a SAS token signed with the configured key for a
/// resource covering `host/path`, unexpired; or a bearer token the double knows.
fn authorize(shared: &Shared, headers: &HeaderMap, host: &str, path: &str) -> Result<(), String> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err("MissingToken: The request has no authorization header.".into());
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return if shared.bearer.lock().contains(token.trim()) {
            Ok(())
        } else {
            Err("InvalidToken: The bearer token is not valid.".into())
        };
    }
    let Some(token) = value.strip_prefix("SharedAccessSignature ") else {
        return Err("InvalidToken: claim is empty or token is invalid.".into());
    };
    verify_sas(
        token,
        &shared.options.key_name,
        &shared.options.key,
        &format!("{host}{path}"),
        SystemTime::now(),
    )
}

/// Verifies a SAS token (`sr=…&sig=…&se=…&skn=…`) for a request to `resource`
/// (`host/path`). Written apart from the client's signer, from the token format.
pub fn verify_sas(
    token: &str,
    key_name: &str,
    key: &str,
    resource: &str,
    now: SystemTime,
) -> Result<(), String> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for pair in token.trim().split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k, v);
        }
    }
    let field = |name: &str| {
        fields
            .get(name)
            .copied()
            .ok_or_else(|| format!("InvalidToken: the token has no `{name}`."))
    };
    let (sr, sig, se, skn) = (field("sr")?, field("sig")?, field("se")?, field("skn")?);
    let decode = |v: &str| {
        percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    if decode(skn) != key_name {
        return Err(
            "InvalidSignature: The token has an invalid signature (unknown key name).".into(),
        );
    }
    let expiry: u64 = se
        .parse()
        .map_err(|_| "InvalidToken: the expiry is not a number.".to_string())?;
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if expiry <= now {
        return Err(format!(
            "ExpiredToken: The token is expired. Expiration time: {expiry}."
        ));
    }
    // The audience covers the request when it is the resource or one of its parents.
    let audience = decode(sr).to_lowercase();
    let audience = ["https://", "http://", "sb://"]
        .iter()
        .find_map(|s| audience.strip_prefix(s))
        .unwrap_or(&audience)
        .trim_end_matches('/')
        .to_string();
    let target = resource.to_lowercase().trim_end_matches('/').to_string();
    if audience.is_empty() || !(target == audience || target.starts_with(&format!("{audience}/"))) {
        return Err("InvalidAudience: The token audience does not cover this resource.".into());
    }
    // The signature is over the `sr` exactly as it appears in the token.
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(decode(sig)) else {
        return Err("InvalidSignature: The token has an invalid signature.".into());
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()) else {
        return Err("InvalidSignature: The token has an invalid signature.".into());
    };
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(se.as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| "InvalidSignature: The token has an invalid signature.".to_string())
}

fn token_endpoint(shared: &Shared, path: &str, body: &[u8]) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let o = &shared.options;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let refuse = |status: StatusCode, error: &str, description: &str| {
        let body = serde_json::json!({
            "error": error,
            "error_description": format!("{description}\r\nTrace ID: {}", uuid()),
        });
        (status, axum::Json(body)).into_response()
    };
    let tenant = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    if tenant != o.tenant_id {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "AADSTS90002: Tenant not found.",
        );
    }
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain a valid grant.",
        );
    }
    if field("scope") != AAD_SCOPE {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided scope is not valid.",
        );
    }
    if field("client_id") != o.client_id {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    if field("client_assertion") != o.federated_token {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700213: No matching federated identity record found for the presented assertion.",
        );
    }
    let n = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("double-access-token-{n}-{}", uuid());
    shared.bearer.lock().insert(token.clone());
    let secs = o.token_lifetime.as_secs();
    axum::Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": token,
    }))
    .into_response()
}

/// The entry shape for this request.
fn version_for(shared: &Shared, params: &HashMap<String, String>) -> ApiVersion {
    if let Some(v) = *shared.version.lock() {
        return v;
    }
    match params.get("api-version").map(String::as_str) {
        Some("2017-04") => ApiVersion::V2017_04,
        _ => ApiVersion::V2021_05,
    }
}

type Answer = (StatusCode, &'static str, String);

fn get(
    shared: &Shared,
    host: &str,
    path: &str,
    raw_path: &str,
    query: &str,
    params: &HashMap<String, String>,
) -> Answer {
    let version = version_for(shared, params);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let self_url = format!("https://{host}{raw_path}?{query}");
    let ctx = Ctx {
        shared,
        host,
        version,
        api: params
            .get("api-version")
            .cloned()
            .unwrap_or_else(|| version.as_str().to_string()),
        prefix: *shared.prefix.lock(),
    };
    let skip: usize = params
        .get("$skip")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let top: usize = params
        .get("$top")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(100);
    let entities = shared.entities.lock();
    let is = |s: &str, word: &str| s.eq_ignore_ascii_case(word);
    match segments.as_slice() {
        [r, q] if is(r, "$Resources") && is(q, "Queues") => {
            let entries: Vec<String> = entities
                .queues
                .values()
                .skip(skip)
                .take(top)
                .map(|e| ctx.queue_entry(e, Some(&self_url)))
                .collect();
            ok_feed(&ctx.feed("Queues", &self_url, &entries))
        }
        [r, t] if is(r, "$Resources") && is(t, "Topics") => {
            let entries: Vec<String> = entities
                .topics
                .values()
                .skip(skip)
                .take(top)
                .map(|t| ctx.topic_entry(t, Some(&self_url)))
                .collect();
            ok_feed(&ctx.feed("Topics", &self_url, &entries))
        }
        [topic, s] if is(s, "Subscriptions") => match entities.topics.get(&topic.to_lowercase()) {
            Some(t) => {
                let entries: Vec<String> = t
                    .subscriptions
                    .values()
                    .skip(skip)
                    .take(top)
                    .map(|e| ctx.subscription_entry(t, e, Some((&self_url, s))))
                    .collect();
                ok_feed(&ctx.feed("Subscriptions", &self_url, &entries))
            }
            None => not_found_feed(),
        },
        [topic, s, sub] if is(s, "Subscriptions") => {
            match entities
                .topics
                .get(&topic.to_lowercase())
                .and_then(|t| t.subscriptions.get(&sub.to_lowercase()).map(|e| (t, e)))
            {
                Some((t, e)) => ok_entry(ctx.subscription_entry(t, e, None)),
                None => not_found_feed(),
            }
        }
        _ => {
            let name = path.trim_matches('/').to_lowercase();
            if let Some(q) = entities.queues.get(&name) {
                ok_entry(ctx.queue_entry(q, None))
            } else if let Some(t) = entities.topics.get(&name) {
                ok_entry(ctx.topic_entry(t, None))
            } else {
                not_found_feed()
            }
        }
    }
}

fn ok_entry(body: String) -> Answer {
    (StatusCode::OK, ENTRY_TYPE, body)
}

fn ok_feed(body: &str) -> Answer {
    (StatusCode::OK, FEED_TYPE, body.to_string())
}

/// HTTP 200 and this feed is how the service says an entity does not exist.
fn not_found_feed() -> Answer {
    let id: u32 = rand::rng().random_range(10_000..99_999);
    (
        StatusCode::OK,
        FEED_TYPE,
        format!(
            r#"<feed xmlns="{ATOM_NS}"><title type="text">{NOT_FOUND_FEED_TITLE}</title><subtitle type="text">This is the list of publicly-listed services currently available.</subtitle><id>uuid:{};id={id}</id><updated>{}</updated><generator>Service Bus 1.1</generator></feed>"#,
            uuid(),
            now_text()
        ),
    )
}

struct Ctx<'a> {
    shared: &'a Shared,
    host: &'a str,
    version: ApiVersion,
    /// The api-version echoed in ids and links.
    api: String,
    prefix: CountsPrefix,
}

impl Ctx<'_> {
    fn feed(&self, title: &str, self_url: &str, entries: &[String]) -> String {
        let url = escape(self_url);
        format!(
            r#"<feed xmlns="{ATOM_NS}"><title type="text">{title}</title><id>{url}</id><updated>{}</updated><link rel="self" href="{url}"/>{}</feed>"#,
            now_text(),
            entries.concat()
        )
    }

    fn counts(&self, c: &Counts, subscription_get: bool) -> String {
        let p = match self.prefix {
            CountsPrefix::D2p1 => "d2p1",
            CountsPrefix::D3p1 => "d3p1",
            CountsPrefix::AsService if subscription_get => "d3p1",
            CountsPrefix::AsService => "d2p1",
        };
        format!(
            "<CountDetails xmlns:{p}=\"{COUNTS_NS}\">\
             <{p}:ActiveMessageCount>{}</{p}:ActiveMessageCount>\
             <{p}:DeadLetterMessageCount>{}</{p}:DeadLetterMessageCount>\
             <{p}:ScheduledMessageCount>{}</{p}:ScheduledMessageCount>\
             <{p}:TransferMessageCount>{}</{p}:TransferMessageCount>\
             <{p}:TransferDeadLetterMessageCount>{}</{p}:TransferDeadLetterMessageCount>\
             </CountDetails>",
            c.active, c.dead_letter, c.scheduled, c.transfer, c.transfer_dead_letter
        )
    }

    /// `<entry>` around a description. In a feed the entry inherits the Atom namespace,
    /// carries `xml:base` and links relative to it.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        id: &str,
        name: &str,
        author: bool,
        in_feed: Option<(&str, String)>,
        description: String,
    ) -> String {
        let now = now_text();
        let (open, link) = match &in_feed {
            Some((base, relative)) => (
                format!(r#"<entry xml:base="{}">"#, escape(*base)),
                escape(relative.as_str()).into_owned(),
            ),
            None => (
                format!(r#"<entry xmlns="{ATOM_NS}">"#),
                escape(id).into_owned(),
            ),
        };
        let author = if author {
            format!(
                "<author><name>{}</name></author>",
                escape(&self.shared.options.namespace)
            )
        } else {
            String::new()
        };
        format!(
            r#"{open}<id>{}</id><title type="text">{}</title><published>{now}</published><updated>{now}</updated>{author}<link rel="self" href="{link}"/><content type="application/xml">{description}</content></entry>"#,
            escape(id),
            escape(name),
        )
    }

    fn queue_entry(&self, q: &Entity, feed_url: Option<&str>) -> String {
        let api = &self.api;
        let name = &q.name;
        let id = format!("https://{}/{name}?api-version={api}", self.host);
        let c = &q.counts;
        let now = now_text();
        let mut d = format!(
            r#"<QueueDescription xmlns="{CONNECT_NS}" xmlns:i="{XSI_NS}"><LockDuration>PT1M</LockDuration><MaxSizeInMegabytes>1024</MaxSizeInMegabytes><RequiresDuplicateDetection>false</RequiresDuplicateDetection><RequiresSession>false</RequiresSession><DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive><DeadLetteringOnMessageExpiration>false</DeadLetteringOnMessageExpiration><DuplicateDetectionHistoryTimeWindow>PT10M</DuplicateDetectionHistoryTimeWindow><MaxDeliveryCount>10</MaxDeliveryCount><EnableBatchedOperations>true</EnableBatchedOperations><SizeInBytes>{}</SizeInBytes><MessageCount>{}</MessageCount><IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules></AuthorizationRules><Status>Active</Status><CreatedAt>{now}</CreatedAt><UpdatedAt>{now}</UpdatedAt><AccessedAt>{now}</AccessedAt><SupportOrdering>true</SupportOrdering>{}<AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle><EnablePartitioning>false</EnablePartitioning>"#,
            c.total().saturating_mul(BYTES_PER_MESSAGE),
            c.total(),
            self.counts(c, false),
        );
        // 2017-04 repeats two flags after the counts; 2021-05 adds the message size limit.
        match self.version {
            ApiVersion::V2017_04 => d.push_str(
                "<IsAnonymousAccessible>false</IsAnonymousAccessible><SupportOrdering>true</SupportOrdering><EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableExpress>false</EnableExpress>",
            ),
            ApiVersion::V2021_05 => d.push_str(
                "<EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableExpress>false</EnableExpress><MaxMessageSizeInKilobytes>256</MaxMessageSizeInKilobytes>",
            ),
        }
        d.push_str("</QueueDescription>");
        let in_feed = feed_url.map(|u| (u, format!("../{name}?api-version={api}")));
        self.entry(&id, name, true, in_feed, d)
    }

    fn topic_entry(&self, t: &Topic, feed_url: Option<&str>) -> String {
        let api = &self.api;
        let name = &t.name;
        let id = format!("https://{}/{name}?api-version={api}", self.host);
        let now = now_text();
        let size: u64 = t
            .subscriptions
            .values()
            .map(|s| s.counts.total())
            .sum::<u64>()
            .saturating_mul(BYTES_PER_MESSAGE);
        let mut d = format!(
            r#"<TopicDescription xmlns="{CONNECT_NS}" xmlns:i="{XSI_NS}"><DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive><MaxSizeInMegabytes>1024</MaxSizeInMegabytes><RequiresDuplicateDetection>false</RequiresDuplicateDetection><DuplicateDetectionHistoryTimeWindow>PT10M</DuplicateDetectionHistoryTimeWindow><EnableBatchedOperations>true</EnableBatchedOperations><SizeInBytes>{size}</SizeInBytes><FilteringMessagesBeforePublishing>false</FilteringMessagesBeforePublishing><IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules></AuthorizationRules><Status>Active</Status><CreatedAt>{now}</CreatedAt><UpdatedAt>{now}</UpdatedAt><AccessedAt>{now}</AccessedAt><SupportOrdering>false</SupportOrdering>{}<SubscriptionCount>{}</SubscriptionCount><AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle><EnablePartitioning>false</EnablePartitioning>"#,
            self.counts(&t.counts, false),
            t.subscriptions.len(),
        );
        if self.version == ApiVersion::V2017_04 {
            d.push_str("<FilteringMessagesBeforePublishing>false</FilteringMessagesBeforePublishing><IsAnonymousAccessible>false</IsAnonymousAccessible>");
        }
        d.push_str("<EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableSubscriptionPartitioning>false</EnableSubscriptionPartitioning><EnableExpress>false</EnableExpress></TopicDescription>");
        let in_feed = feed_url.map(|u| (u, format!("../{name}?api-version={api}")));
        self.entry(&id, name, true, in_feed, d)
    }

    /// `in_feed`: the feed's URL and the `Subscriptions` segment as the request spelt it.
    fn subscription_entry(&self, t: &Topic, s: &Entity, in_feed: Option<(&str, &str)>) -> String {
        let api = &self.api;
        let (topic, name) = (&t.name, &s.name);
        let c = &s.counts;
        let now = now_text();
        let mut d = format!(
            r#"<SubscriptionDescription xmlns="{CONNECT_NS}" xmlns:i="{XSI_NS}"><LockDuration>PT1M</LockDuration><RequiresSession>false</RequiresSession><DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive><DeadLetteringOnMessageExpiration>false</DeadLetteringOnMessageExpiration><DeadLetteringOnFilterEvaluationExceptions>true</DeadLetteringOnFilterEvaluationExceptions><MessageCount>{}</MessageCount><MaxDeliveryCount>10</MaxDeliveryCount><EnableBatchedOperations>true</EnableBatchedOperations><Status>Active</Status><CreatedAt>{now}</CreatedAt><UpdatedAt>{now}</UpdatedAt><AccessedAt>{now}</AccessedAt>{}<AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle><EntityAvailabilityStatus>Available</EntityAvailabilityStatus>"#,
            c.total(),
            self.counts(c, in_feed.is_none()),
        );
        if self.version == ApiVersion::V2021_05 {
            d.push_str("<IsClientAffine>false</IsClientAffine>");
        }
        d.push_str("</SubscriptionDescription>");
        match in_feed {
            // Listed: an https id without the query's extras, a link relative to the feed.
            Some((url, segment)) => {
                let id = format!(
                    "https://{}/{topic}/{segment}/{name}?api-version={api}",
                    self.host
                );
                let rel = format!("{segment}/{name}?api-version={api}");
                self.entry(&id, name, false, Some((url, rel)), d)
            }
            // Read alone: the service names it with the sb:// scheme.
            None => {
                let id = format!(
                    "sb://{}/{topic}/Subscriptions/{name}?api-version={api}",
                    self.host
                );
                self.entry(&id, name, false, None, d)
            }
        }
    }
}
