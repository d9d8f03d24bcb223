//! A hand-written client for the Service Bus management (ATOM) API: the one interface that
//! reports message counts without receiving messages. No maintained Rust crate reads them
//! (`azure_messaging_servicebus` speaks AMQP), so the few GETs needed are written here.

use std::time::Duration;

use tokio::time::Instant;

use crate::binding::HostRules;
use crate::http::{self, Limits};
use crate::metrics::Metrics;
use crate::offload::{self, Work};
use crate::secret::Secret;
use crate::signal::SignalError;

use super::atom::{self, Description};
use super::auth::Credential;

/// The management API version requested.
pub const API_VERSION: &str = "2021-05";
/// Entries per list page (`$top`); the service's maximum.
pub(crate) const PAGE_SIZE: usize = 100;
/// The `upstream` label of request metrics.
pub(crate) const UPSTREAM: &str = "servicebus";

/// The largest answer read: a page of 100 entities is about 250 KiB.
pub(crate) const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Answers up to this size are parsed where they arrive; larger ones (list pages) on a
/// blocking thread ([`crate::offload`]).
const INLINE_PARSE_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Bound on one request, body included.
    pub timeout: Duration,
    /// Bodies larger than this are refused (a page of 100 entities is about 250 KiB).
    pub max_body_bytes: usize,
    /// Which addresses the client connects to (the default: public ones only).
    pub hosts: HostRules,
}

impl ClientOptions {
    /// The defaults, with loopback upstreams allowed: for local test doubles.
    pub fn loopback() -> Self {
        Self {
            hosts: HostRules::loopback(),
            ..Self::default()
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_body_bytes: MAX_BODY_BYTES,
            hosts: HostRules::default(),
        }
    }
}

/// One namespace: where it is and how to authenticate.
#[derive(Debug)]
pub struct Connection {
    /// `scheme://host[:port][/base]`, no trailing slash.
    endpoint: String,
    /// For messages: `host[:port]`.
    host: String,
    credential: Credential,
}

impl Connection {
    pub fn new(endpoint: &str, credential: Credential) -> Result<Self, SignalError> {
        let endpoint = endpoint.trim().trim_end_matches('/');
        let shown = crate::secret::without_userinfo(endpoint);
        let url = url::Url::parse(endpoint).map_err(|_| {
            SignalError::Setup(format!("the Service Bus endpoint `{shown}` is not a URL"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(SignalError::Setup(format!(
                "the Service Bus endpoint `{shown}` is not an http(s) URL"
            )));
        }
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        Ok(Self {
            endpoint: endpoint.to_string(),
            host,
            credential,
        })
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }
}

/// Reads queues, subscriptions and their lists.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    metrics: Metrics,
    options: ClientOptions,
}

impl Client {
    pub fn new(metrics: Metrics, options: ClientOptions) -> Self {
        // The management API does not redirect: the layer's default of following none holds.
        let http = http::client_builder(options.timeout, &options.hosts)
            .build()
            // Only fails when the compiled-in TLS backend cannot initialise: a broken build.
            .expect("the HTTP client builds with the compiled-in TLS backend");
        Self {
            http,
            metrics,
            options,
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// GET `/{queue}`.
    pub async fn queue(&self, conn: &Connection, name: &str) -> Result<Description, SignalError> {
        let what = format!("queue `{name}` in namespace `{}`", conn.host);
        let path = entity_path(&[name])?;
        let (w, name) = (what.clone(), name.to_string());
        self.read(conn, &path, &[], &what, move |body| {
            let d = atom::entity_from(body, &w)?;
            expect_kind(d, atom::EntityKind::Queue, &name)
        })
        .await
    }

    /// GET `/{topic}/Subscriptions/{subscription}`.
    pub async fn subscription(
        &self,
        conn: &Connection,
        topic: &str,
        subscription: &str,
    ) -> Result<Description, SignalError> {
        let what = format!(
            "subscription `{subscription}` of topic `{topic}` in namespace `{}`",
            conn.host
        );
        let path = format!(
            "{}/Subscriptions/{}",
            entity_path(&[topic])?,
            entity_path(&[subscription])?
        );
        let (w, subscription) = (what.clone(), subscription.to_string());
        self.read(conn, &path, &[], &what, move |body| {
            let d = atom::entity_from(body, &w)?;
            expect_kind(d, atom::EntityKind::Subscription, &subscription)
        })
        .await
    }

    /// GET `/$Resources/Queues?$skip={skip}&$top=100`.
    pub async fn queues_page(
        &self,
        conn: &Connection,
        skip: usize,
    ) -> Result<Vec<Description>, SignalError> {
        let what = format!("the queue list of namespace `{}`", conn.host);
        self.page(conn, "$Resources/Queues", skip, &what).await
    }

    /// GET `/$Resources/Topics?$skip={skip}&$top=100`.
    pub async fn topics_page(
        &self,
        conn: &Connection,
        skip: usize,
    ) -> Result<Vec<Description>, SignalError> {
        let what = format!("the topic list of namespace `{}`", conn.host);
        self.page(conn, "$Resources/Topics", skip, &what).await
    }

    /// GET `/{topic}/Subscriptions?$skip={skip}&$top=100`.
    pub async fn subscriptions_page(
        &self,
        conn: &Connection,
        topic: &str,
        skip: usize,
    ) -> Result<Vec<Description>, SignalError> {
        let what = format!("topic `{topic}` in namespace `{}`", conn.host);
        let path = format!("{}/Subscriptions", entity_path(&[topic])?);
        self.page(conn, &path, skip, &what).await
    }

    async fn page(
        &self,
        conn: &Connection,
        path: &str,
        skip: usize,
        what: &str,
    ) -> Result<Vec<Description>, SignalError> {
        let query = [("$skip", skip.to_string()), ("$top", PAGE_SIZE.to_string())];
        let w = what.to_string();
        self.read(conn, path, &query, what, move |body| {
            atom::page_from(body, &w)
        })
        .await
    }

    /// One GET, parsed by `parse`, recorded in the metrics with its final outcome (a 200
    /// not-found feed counts as `not_found`).
    async fn read<T>(
        &self,
        conn: &Connection,
        path: &str,
        query: &[(&str, String)],
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, SignalError> + Send + 'static,
    ) -> Result<T, SignalError>
    where
        T: Send + 'static,
    {
        let started = Instant::now();
        let result = match self.fetch(conn, path, query, what).await {
            Ok(body) if body.len() <= INLINE_PARSE_BYTES => parse(&body),
            Ok(body) => offload::run(Work::Answer, move || parse(&body)).await,
            Err(e) => Err(e),
        };
        http::record(&self.metrics, UPSTREAM, started, &result);
        result.map_err(|e| scrub(e, conn.credential.key()))
    }

    /// The body of a 200 response, or the error the status and body mean.
    async fn fetch(
        &self,
        conn: &Connection,
        path: &str,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<String, SignalError> {
        let resource = format!("{}/{path}", conn.endpoint);
        let authorization = conn.credential.authorization(&resource).await?;
        // Marked sensitive, so HTTP debug output never prints it.
        let authorization = http::sensitive(authorization.expose()).ok_or_else(|| {
            SignalError::Credential(
                "the credential contains characters not allowed in a header".into(),
            )
        })?;
        let mut url = format!("{resource}?api-version={API_VERSION}");
        for (k, v) in query {
            url.push('&');
            url.push_str(k);
            url.push('=');
            url.push_str(&http::escape(v));
        }
        let request = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(
                reqwest::header::ACCEPT,
                "application/atom+xml, application/xml",
            );
        let limits = Limits {
            timeout: self.options.timeout,
            max_body_bytes: self.options.max_body_bytes,
        };
        let answer = http::exchange(request, &format!("namespace `{}`", conn.host), limits).await?;
        let (status, wait, body) = (answer.status.as_u16(), answer.retry_after, answer.body);
        // Counted against the answer budget until it is text.
        let _budget = answer.budget;
        if status == 200 {
            let text = String::from_utf8(body)
                .map_err(|_| SignalError::Malformed(format!("{what}: the body is not UTF-8")))?;
            return Ok(text);
        }
        let text = String::from_utf8_lossy(&body);
        Err(match atom::error_from(status, &text, what) {
            SignalError::Throttled { status, .. } => SignalError::Throttled {
                status,
                retry_after: wait,
            },
            other => other,
        })
    }
}

/// An entity name as URL path segments. Names may contain `/` (nested paths); empty, `.` and
/// `..` segments are refused, so a name cannot step out of the namespace's entity paths.
fn entity_path(names: &[&str]) -> Result<String, SignalError> {
    let mut out = Vec::new();
    for name in names {
        for segment in name.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(SignalError::InvalidEntity(format!(
                    "`{name}` is not a valid Service Bus entity name"
                )));
            }
            out.push(http::escape(segment));
        }
    }
    Ok(out.join("/"))
}

/// A GET of a queue path can return a topic of that name (and so on): say so rather than
/// scale on the wrong kind of entity.
fn expect_kind(
    d: Description,
    kind: atom::EntityKind,
    name: &str,
) -> Result<Description, SignalError> {
    if d.kind == kind {
        Ok(d)
    } else {
        Err(SignalError::InvalidEntity(format!(
            "`{name}` is a {}, not a {}",
            d.kind.as_str(),
            kind.as_str()
        )))
    }
}

/// Removes a key or token from an upstream's error text, should it ever echo one.
fn scrub(error: SignalError, key: Option<&Secret>) -> SignalError {
    match key.map(Secret::expose).filter(|k| k.len() >= 4) {
        Some(key) => error.map_text(|s| s.replace(key, "<redacted>")),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_names_become_safe_path_segments() {
        assert_eq!(entity_path(&["orders"]).unwrap(), "orders");
        assert_eq!(entity_path(&["a b/c?d"]).unwrap(), "a%20b/c%3Fd");
        for bad in ["", "..", "a/../b", "a//b", "/a"] {
            assert!(entity_path(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_echoed_in_an_error_is_scrubbed() {
        let e = SignalError::Unauthorized {
            status: 401,
            detail: "bad token s3cr3tkey".into(),
        };
        let clean = scrub(e, Some(&Secret::new("s3cr3tkey")));
        assert!(!clean.to_string().contains("s3cr3tkey"), "{clean}");
    }
}
