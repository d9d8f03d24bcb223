//! A Service Bus management API double on loopback, for tests and the `demo` command.
//!
//! Written from the wire format (see docs/servicebus.md, "The test double"): entries and feeds carry the
//! elements, namespaces and prefixes Service Bus sends, in both the 2017-04 and 2021-05
//! shapes. It also reproduces the service's habits that matter to a scaler: the HTTP 200
//! "Publicly Listed Services" feed for a missing entity, `<Error>` bodies, SAS signature
//! checks, and on demand throttling with `Retry-After`, latency and broken bodies. A tiny
//! Azure AD token endpoint serves the workload identity exchange.

mod atom;
mod auth;
mod serve;
mod state;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::task::AbortOnDropHandle;

pub use self::auth::verify_sas;
use self::serve::handle;
use self::state::{ActiveFault, Entities, Entity, Shared, Topic};

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
    _server: AbortOnDropHandle<()>,
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
        Ok(Self {
            shared,
            _server: crate::serve(listener, app),
        })
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
