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
//! [`wire`] (values only, capped; the crate's types for errors). The crate's own
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
use prometheus_http_query::error::{PrometheusError, PrometheusErrorType};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName};
use tokio::time::Instant;
use url::Url;

use crate::binding::HostRules;
use crate::cache::{self, GroupRead, Keyed, Refresher, SignalCache, Upstream};
use crate::http::{self, Limits};
use crate::metadata::{Aggregation, PrometheusAuth, PrometheusPlan, PrometheusTls};
use crate::metrics::Metrics;
use crate::offload::{self, Work};
use crate::secret::Secret;
use crate::signal::SignalError;

mod wire;

use wire::{Data, Envelope};

/// Per-request timeout when the trigger sets no `timeout` (KEDA's HTTP default as well).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

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
/// applies to every query sent to it. Two plans with equal `Server`s share one refresh.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Server {
    address: String,
    auth: PrometheusAuth,
    /// Sorted by name (stable, so repeated names keep their order): header order carries no
    /// meaning, and must not split one server into two groups.
    headers: Vec<(String, Secret)>,
    namespace: Option<String>,
    timeout: Duration,
}

impl Server {
    /// `host:port` of the server: what errors name, since the full address may carry
    /// credentials in its user-info part.
    pub fn label(&self) -> String {
        match Url::parse(&self.address) {
            Ok(u) => match (u.host_str(), u.port_or_known_default()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => "an unparsable address".into(),
            },
            Err(_) => "an unparsable address".into(),
        }
    }

    pub fn timeout(&self) -> Duration {
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
            _ => self.address.clone(),
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
    query: String,
    /// Sorted by name (stable), for the same reason as [`Server::headers`].
    parameters: Vec<(String, String)>,
    ignore_null_values: bool,
    series_aggregation: Option<Aggregation>,
}

impl Query {
    pub fn promql(&self) -> &str {
        &self.query
    }
}

/// The cache keys of a plan: which server, and which question.
pub fn key(plan: &PrometheusPlan) -> (Server, Query) {
    let mut headers = plan.custom_headers.clone();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut parameters = plan.query_parameters.clone();
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    (
        Server {
            address: plan.server_address.clone(),
            auth: plan.auth.clone(),
            headers,
            namespace: plan.namespace.clone(),
            timeout: plan.timeout.unwrap_or(DEFAULT_TIMEOUT),
        },
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

/// How one [`Server`] is reached: the shared HTTP client of its TLS identity, the headers
/// its requests carry, and where its instant queries go.
#[derive(Clone)]
struct Connection {
    http: Arc<SharedClient>,
    headers: HeaderMap,
    query_url: Url,
}

/// An HTTP client shared by every server reached with one TLS identity (most share the one
/// without), counted in its upstream's `live_clients` while it lives.
struct SharedClient {
    client: reqwest::Client,
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for SharedClient {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads instant queries from Prometheus servers.
pub struct PrometheusUpstream {
    metrics: Metrics,
    /// Which addresses the clients connect to.
    hosts: HostRules,
    /// How each server is reached; a server nobody reads for a while is forgotten.
    connections: moka::sync::Cache<Server, Result<Connection, SignalError>>,
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

    fn connection(&self, server: &Server) -> Result<Connection, SignalError> {
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
    pub async fn query(&self, server: &Server, query: &Query) -> Result<f64, SignalError> {
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

    type Group = Server;
    type Item = Query;

    async fn read(&self, server: &Server, items: &[Query]) -> GroupRead<Query> {
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
        }
    }
}

fn config_error(server: &Server, what: &str) -> SignalError {
    SignalError::Setup(format!(
        "the Prometheus client for {} could not be set up: {what}",
        server.label()
    ))
}

/// How requests to one server are made on `http`: auth and custom headers on every request,
/// sent to the server's query URL.
fn connect(server: &Server, http: Arc<SharedClient>) -> Result<Connection, SignalError> {
    let config_error = |what: &str| config_error(server, what);
    let mut url = Url::parse(&server.address).map_err(|_| config_error("bad serverAddress"))?;
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{path}/api/v1/query"));
    url.set_fragment(None);

    let mut headers = HeaderMap::new();
    for (name, value) in &server.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| config_error(&format!("`{name}` is not a header name")))?;
        headers.append(
            name.clone(),
            http::sensitive(value.expose())
                .ok_or_else(|| config_error(&format!("the value of header `{name}` is invalid")))?,
        );
    }
    // Like KEDA, a bearer token wins over basic auth for `Authorization`; a custom auth header
    // is added under its own name (and replaces a custom header of the same name).
    let authorization = match (&server.auth.bearer, &server.auth.basic) {
        (Some(token), _) => Some(format!("Bearer {}", token.expose())),
        (None, Some((user, pass))) => Some(format!(
            "Basic {}",
            basic_token(user.expose(), pass.expose())
        )),
        (None, None) => None,
    };
    if let Some(value) = authorization {
        headers.insert(
            AUTHORIZATION,
            http::sensitive(&value)
                .ok_or_else(|| config_error("the credentials are not header-safe"))?,
        );
    }
    if let Some((name, value)) = &server.auth.custom {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| config_error("`customAuthHeader` is not a header name"))?;
        headers.insert(
            name,
            http::sensitive(value.expose())
                .ok_or_else(|| config_error("`customAuthValueFromEnv` is not header-safe"))?,
        );
    }

    Ok(Connection {
        http,
        headers,
        query_url: url,
    })
}

/// The HTTP client for a TLS identity (`server`'s): its client certificate and CA, if any,
/// and redirects within a server's own origin.
fn build_client(server: &Server, hosts: &HostRules) -> Result<reqwest::Client, SignalError> {
    let config_error = |what: &str| config_error(server, what);
    let mut builder =
        http::client_builder(CONNECT_TIMEOUT, hosts).redirect(same_origin_redirects());
    if let Some(tls) = &server.auth.tls {
        // reqwest wants the certificate chain and its key in one PEM buffer.
        let pem = format!("{}\n{}\n", tls.cert.expose(), tls.key.expose());
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|_| {
            config_error("`certFromEnv`/`keyFromEnv` are not a PEM certificate and key")
        })?;
        builder = builder.identity(identity);
        if let Some(ca) = &tls.ca {
            // As KEDA (Go's RootCAs): a given CA replaces the system roots.
            let roots = reqwest::Certificate::from_pem_bundle(ca.expose().as_bytes())
                .map_err(|_| config_error("`caFromEnv` is not a PEM certificate"))?;
            if roots.is_empty() {
                return Err(config_error("`caFromEnv` holds no certificate"));
            }
            builder = builder.tls_certs_only(roots);
        }
    }
    builder
        .build()
        .map_err(|e| config_error(&http::error_chain(&e.without_url())))
}

/// Follows redirects within the server's own origin only. Custom headers and custom auth
/// values go with every request, and reqwest strips only the standard credential headers on a
/// cross-host redirect, so following one could hand a secret to another host. A redirect
/// elsewhere (an SSO login page, say) is answered as the 3xx it is: an error.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > 10 || !same_origin {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

fn basic_token(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// One GET of `/api/v1/query`: the decoded data, or what the answer means as an error.
async fn send(
    connection: &Connection,
    server: &Server,
    query: &Query,
) -> Result<Data, SignalError> {
    let mut params: Vec<(&str, &str)> = vec![("query", &query.query)];
    if let Some(ns) = &server.namespace {
        params.push(("namespace", ns));
    }
    params.extend(
        query
            .parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );

    let request = connection
        .http
        .client
        .get(connection.query_url.clone())
        .headers(connection.headers.clone())
        .query(&params);
    let limits = Limits {
        timeout: server.timeout,
        max_body_bytes: MAX_BODY_BYTES,
    };
    let answer = http::exchange(
        request,
        &format!("Prometheus at {}", server.label()),
        limits,
    )
    .await
    .map_err(|e| e.map_text(|t| server.scrub(t)))?;
    let status = answer.status;
    let retry_after = answer.retry_after;
    let body = answer.body;
    // The body counts against the answer budget until it is decoded.
    let _budget = answer.budget;
    let is_json = answer
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));

    let (decoded, body) = if !is_json {
        (None, body)
    } else if body.len() <= INLINE_DECODE_BYTES {
        (Some(serde_json::from_slice::<Envelope>(&body)), body)
    } else {
        offload::run(Work::Answer, move || {
            (Some(serde_json::from_slice::<Envelope>(&body)), Vec::new())
        })
        .await
    };
    match decoded {
        Some(Err(e)) if e.to_string().starts_with(wire::TOO_MANY_SERIES) => {
            Err(SignalError::OverLimit(format!(
                "Prometheus at {} answered more than {} series; no scaling query needs that \
                 many (aggregate them in the query)",
                server.label(),
                wire::MAX_SERIES
            )))
        }
        Some(Ok(Envelope::Success { data })) if status.is_success() => Ok(data),
        Some(Ok(Envelope::Error(e))) => Err(api_error(status, &e, retry_after, server)),
        Some(Err(e)) if status.is_success() => {
            // serde's message can quote the body: it goes to the log only.
            log_detail(server, status, &e.to_string());
            Err(SignalError::Malformed(format!(
                "Prometheus at {} sent an answer that is not a query result",
                server.label()
            )))
        }
        _ if status.is_success() => Err(SignalError::Malformed(format!(
            "Prometheus at {} answered HTTP {} without JSON",
            server.label(),
            status.as_u16()
        ))),
        _ => Err(http_error(
            status,
            &String::from_utf8_lossy(&body),
            retry_after,
            server,
        )),
    }
}

/// A Prometheus `{"status":"error"}` answer. `bad_data` is the query (or a query parameter)
/// being refused: a metadata problem the operator must fix, not an outage.
fn api_error(
    status: StatusCode,
    e: &PrometheusError,
    retry_after: Option<Duration>,
    server: &Server,
) -> SignalError {
    log_detail(
        server,
        status,
        &format!("{}: {}", e.error_type(), e.message()),
    );
    match e.error_type() {
        PrometheusErrorType::BadData => SignalError::InvalidQuery(format!(
            "Prometheus at {} refused it as bad_data (its message is in the scaler's log)",
            server.label()
        )),
        PrometheusErrorType::Timeout => {
            SignalError::QueryTimeout(format!("Prometheus at {}", server.label()))
        }
        _ => http_status(status, retry_after, server),
    }
}

/// The text of an error answer goes to the scaler's log, scrubbed of the server's secrets and
/// cut short; never into an error a caller sees (audit finding H2: an internal host's page
/// read back through error text).
fn log_detail(server: &Server, status: StatusCode, text: &str) {
    tracing::warn!(
        upstream = UPSTREAM,
        server = %server.label(),
        status = status.as_u16(),
        detail = %server.scrub(text),
        "Prometheus answered an error"
    );
}

/// A non-2xx answer that is not a Prometheus error (a proxy's page, an auth gateway).
fn http_error(
    status: StatusCode,
    body: &str,
    retry_after: Option<Duration>,
    server: &Server,
) -> SignalError {
    if !body.trim().is_empty() {
        log_detail(server, status, body);
    }
    http_status(status, retry_after, server)
}

/// The error for a status code alone: a fixed cause naming the server.
fn http_status(status: StatusCode, retry_after: Option<Duration>, server: &Server) -> SignalError {
    let code = status.as_u16();
    let detail = format!("Prometheus at {}", server.label());
    match code {
        // Prometheus itself only answers 400 for a query it cannot parse or evaluate as asked.
        400 => SignalError::InvalidQuery(detail),
        401 | 403 => SignalError::Unauthorized {
            status: code,
            detail,
        },
        429 | 503 if retry_after.is_some() || code == 429 => SignalError::Throttled {
            status: code,
            retry_after,
        },
        _ => SignalError::Http {
            status: code,
            detail,
        },
    }
}

/// One number from an answered query (KEDA's rules, plus `seriesAggregation`):
/// - no series: 0 with `ignoreNullValues`, else [`SignalError::NullResult`];
/// - several series: [`SignalError::MultipleSeries`] unless `seriesAggregation` is set;
/// - a NaN or infinite value: 0 with `ignoreNullValues` (for each series before
///   aggregating), else [`SignalError::NullResult`];
/// - a scalar answer counts as one series; a range vector is a query problem.
fn interpret(data: Data, query: &Query) -> Result<f64, SignalError> {
    let values: Vec<f64> = match data {
        Data::Vector(values) => values,
        Data::Scalar(value) => vec![value],
        Data::Matrix => {
            return Err(SignalError::InvalidQuery(
                "the query returns a range vector; an instant vector or a scalar is needed \
                 (drop the `[…]` range or wrap it in a function such as rate())"
                    .into(),
            ));
        }
    };
    if values.is_empty() {
        return if query.ignore_null_values {
            Ok(0.0)
        } else {
            Err(SignalError::NullResult)
        };
    }
    if values.len() > 1 && query.series_aggregation.is_none() {
        return Err(SignalError::MultipleSeries(values.len()));
    }
    let mut finite = Vec::with_capacity(values.len());
    for v in values {
        if v.is_finite() {
            finite.push(v);
        } else if query.ignore_null_values {
            finite.push(0.0);
        } else {
            return Err(SignalError::NullResult);
        }
    }
    match query.series_aggregation {
        Some(aggregation) => aggregation.apply(&finite).ok_or(SignalError::NullResult),
        None => Ok(finite[0]),
    }
}

#[cfg(test)]
mod tests;
