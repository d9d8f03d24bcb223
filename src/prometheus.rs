//! The `prometheus` signal: one PromQL instant query against one server (README, "Trigger
//! metadata"; docs/prometheus.md).
//!
//! Reads are shared through the [`cache`](crate::cache): the group is the *server as reached*
//! (address, auth, headers, namespace, timeout), the item is the *question asked* (query,
//! parameters, and how the answer is read). Twenty ScaledObjects with the same query against
//! the same server cost one request per refresh, whatever their thresholds.
//!
//! This returns the query's value; `threshold` and `activationThreshold` are applied by the
//! blend. A failed request is an error, never 0: only an answered query that is empty or NaN
//! becomes 0, and only with `ignoreNullValues` (KEDA's default).
//!
//! The HTTP exchange is done with the `reqwest` client directly, and the answer is decoded by
//! [`wire`](self::wire) (values only, capped; the crate's types for errors). The crate's own
//! `InstantQueryBuilder` cannot carry
//! `queryParameters`: it only takes parameter names as `&'static str`, and these names arrive
//! at run time in trigger metadata (leaking one string per name a ScaledObject invents would
//! grow without bound). Its response handling also drops the `Retry-After` header and reads
//! bodies without a size limit, both of which matter for a poller that must not hammer or be
//! flooded by an overloaded server.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use url::Url;

use crate::binding::HostRules;
use crate::cache::{self, GroupRead, Keyed, Refresher, SignalCache, Upstream};
use crate::http;
use crate::intern::Interner;
use crate::metadata::{Aggregation, PrometheusAuth, PrometheusPlan, PrometheusTls};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::signal::SignalError;

mod answer;
mod connect;
mod wire;

use answer::{interpret, send};
use connect::{Connection, SharedClient, basic_token, build_client, connect};

/// Per-request timeout when the trigger sets no `timeout` (KEDA's HTTP default as well).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The label of this upstream in `blend_scaler_upstream_requests_total`.
const UPSTREAM: &str = "prometheus";

/// A larger answer is refused rather than buffered: a query that returns that much is not a
/// scaling signal, and the scaler must not be pushed out of memory by one.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Answers up to this size are decoded where they arrive (microseconds); larger ones on a
/// blocking thread ([`offload`]), since decoding 2 MiB takes milliseconds.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// Distinct client TLS identities (`authModes: tls`) with an HTTP client at once: each
/// client holds its own TLS configuration and connection pool.
const MAX_TLS_CLIENTS: usize = 64;

/// How long a connection to a server may take to open; the whole request is bounded by the
/// trigger's `timeout` besides.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinct queries against one server in flight at once during a refresh.
const MAX_CONCURRENT_QUERIES: usize = 16;

/// How much of an error body is quoted in an error message.
const MAX_DETAIL_CHARS: usize = 300;

/// A Prometheus server as the scaler reaches it: everything that shapes the HTTP client or
/// applies to every query sent to it. Two plans with equal `Server`s share one refresh, and
/// one copy of the key ([`key`]); plans with other auth, headers or namespace never do.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Server {
    address: Arc<str>,
    auth: Arc<PrometheusAuth>,
    /// Sorted by name (stable, so repeated names keep their order): header order carries no
    /// meaning, and must not split one server into two groups.
    headers: Vec<(String, Secret)>,
    namespace: Option<String>,
    timeout: Duration,
}

impl Server {
    /// `host:port` of the server: what errors name, since the full address may carry
    /// credentials in its user-info part.
    pub(crate) fn label(&self) -> String {
        match Url::parse(&self.address) {
            Ok(u) => match (u.host_str(), u.port_or_known_default()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => "an unparsable address".into(),
            },
            Err(_) => "an unparsable address".into(),
        }
    }

    #[cfg(test)]
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Every secret value this server is reached with, for scrubbing text that came back
    /// from the server (an error page could echo a header).
    fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(t) = &self.auth.bearer {
            out.push(t.expose().to_string());
        }
        if let Some((user, pass)) = &self.auth.basic {
            out.push(user.expose().to_string());
            out.push(pass.expose().to_string());
            out.push(basic_token(user.expose(), pass.expose()));
        }
        if let Some((_, v)) = &self.auth.custom {
            out.push(v.expose().to_string());
        }
        for (_, v) in &self.headers {
            out.push(v.expose().to_string());
        }
        if let Ok(u) = Url::parse(&self.address) {
            if !u.username().is_empty() {
                out.push(u.username().to_string());
            }
            if let Some(p) = u.password() {
                out.push(p.to_string());
            }
        }
        out.retain(|s| !s.is_empty());
        // Longest first, so a secret containing another is replaced whole.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out
    }

    /// `text` with every secret of this server replaced, cut to a readable length.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.trim().to_string();
        for secret in self.secrets() {
            out = out.replace(&secret, "<redacted>");
        }
        if out.chars().count() > MAX_DETAIL_CHARS {
            out = out.chars().take(MAX_DETAIL_CHARS).collect::<String>() + "…";
        }
        out
    }
}

/// Never prints a secret: auth shows only which modes are on, headers only their names, and
/// the address loses any user-info.
impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = match Url::parse(&self.address) {
            Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                let _ = u.set_username("redacted");
                let _ = u.set_password(None);
                u.to_string()
            }
            _ => self.address.to_string(),
        };
        f.debug_struct("Server")
            .field("address", &address)
            .field("auth", &auth_modes(&self.auth))
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn auth_modes(auth: &PrometheusAuth) -> Vec<&'static str> {
    let mut modes = Vec::new();
    if auth.bearer.is_some() {
        modes.push("bearer");
    }
    if auth.basic.is_some() {
        modes.push("basic");
    }
    if auth.custom.is_some() {
        modes.push("custom");
    }
    if auth.tls.is_some() {
        modes.push("tls");
    }
    modes
}

/// One question to a server, and how its answer becomes one number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    query: Arc<str>,
    /// Sorted by name (stable), for the same reason as [`Server::headers`].
    parameters: Vec<(String, String)>,
    ignore_null_values: bool,
    series_aggregation: Option<Aggregation>,
}

/// The cache keys of a plan: which server, and which question. The server is the one shared
/// copy of an equal server (every entry and group of 10,000 plans on five servers holds one of
/// five), so it is made when a plan is tracked, not per call.
pub fn key(plan: &PrometheusPlan) -> (Arc<Server>, Query) {
    static SERVERS: Interner<Server> = Interner::new();
    let mut headers = plan.custom_headers().to_vec();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut parameters = plan.query_parameters().to_vec();
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    (
        SERVERS.share(Server {
            address: plan.server_address.clone(),
            auth: plan.auth.clone(),
            headers,
            namespace: plan.namespace().map(str::to_string),
            timeout: plan.timeout().unwrap_or(DEFAULT_TIMEOUT),
        }),
        Query {
            query: plan.query.clone(),
            parameters,
            ignore_null_values: plan.ignore_null_values,
            series_aggregation: plan.series_aggregation,
        },
    )
}

/// The Prometheus signal's cache, as the engine uses it.
pub fn source(
    config: cache::RefreshConfig,
    metrics: Metrics,
    hosts: &HostRules,
) -> Arc<dyn SignalCache<PrometheusPlan>> {
    Arc::new(Keyed::new(
        Refresher::new(PrometheusUpstream::new(metrics, hosts), config),
        key,
    ))
}

/// Reads instant queries from Prometheus servers.
pub struct PrometheusUpstream {
    metrics: Metrics,
    /// Which addresses the clients connect to.
    hosts: HostRules,
    /// How each server is reached; a server nobody reads for a while is forgotten.
    connections: moka::sync::Cache<Arc<Server>, Result<Connection, SignalError>>,
    /// HTTP clients by TLS identity, not by server: a client loads TLS roots and keeps a
    /// connection pool (about 130 KB), and two thousand distinct `serverAddress` values
    /// held 270 MB when each had its own.
    clients: moka::sync::Cache<Option<PrometheusTls>, Arc<SharedClient>>,
    live_clients: Arc<std::sync::atomic::AtomicUsize>,
}

impl PrometheusUpstream {
    pub fn new(metrics: Metrics, hosts: &HostRules) -> Self {
        Self {
            metrics,
            hosts: hosts.clone(),
            connections: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(15 * 60))
                .build(),
            clients: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(15 * 60))
                .build(),
            live_clients: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// HTTP clients alive now (for tests and the load script).
    pub fn client_count(&self) -> usize {
        self.live_clients.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn connection(&self, server: &Arc<Server>) -> Result<Connection, SignalError> {
        if let Some(known) = self.connections.get(server) {
            return known;
        }
        let made = self.client(server).and_then(|http| connect(server, http));
        // A setup error stays what it is until the metadata changes; a full client table may
        // have room on the next refresh.
        if !matches!(made, Err(SignalError::Capacity(_))) {
            self.connections.insert(server.clone(), made.clone());
        }
        made
    }

    /// The client for `server`'s TLS identity, built when none is alive.
    fn client(&self, server: &Server) -> Result<Arc<SharedClient>, SignalError> {
        use std::sync::atomic::Ordering;
        self.clients
            .try_get_with_by_ref(&server.auth.tls, || {
                if self.live_clients.fetch_add(1, Ordering::SeqCst) >= MAX_TLS_CLIENTS {
                    self.live_clients.fetch_sub(1, Ordering::SeqCst);
                    return Err(SignalError::Capacity(format!(
                        "the scaler holds HTTP clients for {MAX_TLS_CLIENTS} distinct TLS client \
                         identities, its limit"
                    )));
                }
                match build_client(server, &self.hosts) {
                    Ok(client) => Ok(Arc::new(SharedClient {
                        client,
                        live: self.live_clients.clone(),
                    })),
                    Err(e) => {
                        self.live_clients.fetch_sub(1, Ordering::SeqCst);
                        Err(e)
                    }
                }
            })
            .map_err(|e: Arc<SignalError>| (*e).clone())
    }

    /// Sends one query and turns the answer into one number; records the request.
    pub async fn query(&self, server: &Arc<Server>, query: &Query) -> Result<f64, SignalError> {
        let connection = self.connection(server)?;
        let started = Instant::now();
        let answer = send(&connection, server, query).await;
        // The request's outcome: an answer that then reads as no value was still answered.
        http::record(&self.metrics, UPSTREAM, started, &answer);
        let result = answer.and_then(|data| interpret(data, query));
        if let Err(e) = &result {
            tracing::debug!(
                upstream = UPSTREAM,
                server = %server.label(),
                outcome = e.outcome(),
                error = %e,
                "prometheus query gave no value"
            );
        }
        result
    }
}

impl Upstream for PrometheusUpstream {
    fn supervision(&self) -> Option<(&Metrics, &'static str)> {
        Some((&self.metrics, "prometheus"))
    }

    type Group = Arc<Server>;
    type Item = Query;

    async fn read(&self, server: &Arc<Server>, items: &[Query]) -> GroupRead<Query> {
        if let Err(e) = self.connection(server) {
            return GroupRead::all_failed(items, e);
        }
        // One request per distinct query: the instant-query API answers one expression at a
        // time. Identical queries were already merged into one item by the cache.
        let values: HashMap<Query, Result<f64, SignalError>> =
            futures::stream::iter(items.iter().cloned())
                .map(|q| async move {
                    let v = self.query(server, &q).await;
                    (q, v)
                })
                .buffer_unordered(MAX_CONCURRENT_QUERIES)
                .collect()
                .await;
        // A throttled answer speaks for the whole server.
        let retry_after = values
            .values()
            .filter_map(|v| v.as_ref().err().and_then(SignalError::retry_after))
            .max();
        GroupRead {
            values,
            retry_after,
            // One query per item: nothing is read that was not asked for.
            seen_in_passing: HashMap::new(),
            counts: HashMap::new(),
        }
    }
}

#[cfg(test)]
mod tests;
