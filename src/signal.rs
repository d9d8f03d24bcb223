//! What the upstream sources produce: readings, their errors, and the kinds of signal.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The three signals a trigger can blend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignalKind {
    ServiceBus,
    Prometheus,
    Cron,
}

impl SignalKind {
    /// The label used in metrics, logs and `explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::ServiceBus => "servicebus",
            SignalKind::Prometheus => "prometheus",
            SignalKind::Cron => "cron",
        }
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an upstream read gave no value. Messages carry no secrets: upstream clients put only
/// status codes, entity names and the upstream's own error detail in them.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SignalError {
    #[error("{0} was not found")]
    NotFound(String),
    #[error("authorization failed (HTTP {status}): {detail}")]
    Unauthorized { status: u16, detail: String },
    #[error("throttled (HTTP {status}){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64())).unwrap_or_default())]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("HTTP {status}: {detail}")]
    Http { status: u16, detail: String },
    #[error("timed out after {}ms", .0.as_millis())]
    Timeout(Duration),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The upstream refused the query itself (bad PromQL): a metadata problem, not an outage.
    #[error("the query was refused: {0}")]
    InvalidQuery(String),
    #[error("the result is empty or NaN and `ignoreNullValues` is false")]
    NullResult,
    #[error("the query returned {0} series; set `seriesAggregation` (sum, max or avg)")]
    MultipleSeries(usize),
    /// The query timed out on the upstream itself (Prometheus's `timeout` error type).
    #[error("the query timed out upstream: {0}")]
    QueryTimeout(String),
    #[error("the response is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The client for an upstream cannot be set up from the plan (endpoint, headers, TLS).
    #[error("{0}")]
    Setup(String),
    /// No credential to send: not configured, unreadable, or not resolved.
    #[error("{0}")]
    Credential(String),
    /// An entity name or pattern that cannot be read, or names another kind of entity.
    #[error("{0}")]
    InvalidEntity(String),
    /// More to read than the scaler's limits allow.
    #[error("{0}")]
    OverLimit(String),
    /// Past one of the scaler's capacity limits (upstream groups, items per group, answers in
    /// flight): nothing was kept, and the caller gets `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    Capacity(String),
    /// A read that did not report an item it was asked for: a bookkeeping gap, not an outage.
    #[error("{0}")]
    Unreported(&'static str),
    /// The upstream's host resolved only to addresses the scaler does not connect to.
    #[error("{0}")]
    Refused(String),
}

impl SignalError {
    /// The `outcome` label of `blend_scaler_upstream_requests_total`: a small fixed set, the
    /// same for every upstream.
    pub fn outcome(&self) -> &'static str {
        match self {
            SignalError::NotFound(_) => "not_found",
            SignalError::Unauthorized { .. } => "unauthorized",
            SignalError::Throttled { .. } => "throttled",
            SignalError::Timeout(_) | SignalError::QueryTimeout(_) => "timeout",
            SignalError::InvalidQuery(_) => "bad_query",
            _ => "error",
        }
    }

    /// The same error with `f` applied to every free text it carries (to scrub a secret an
    /// upstream echoed).
    pub fn map_text(self, f: impl Fn(&str) -> String) -> SignalError {
        use SignalError::*;
        match self {
            NotFound(m) => NotFound(f(&m)),
            Unauthorized { status, detail } => Unauthorized {
                status,
                detail: f(&detail),
            },
            Http { status, detail } => Http {
                status,
                detail: f(&detail),
            },
            Connect(m) => Connect(f(&m)),
            Malformed(m) => Malformed(f(&m)),
            InvalidQuery(m) => InvalidQuery(f(&m)),
            QueryTimeout(m) => QueryTimeout(f(&m)),
            Setup(m) => Setup(f(&m)),
            Credential(m) => Credential(f(&m)),
            InvalidEntity(m) => InvalidEntity(f(&m)),
            OverLimit(m) => OverLimit(f(&m)),
            Refused(m) => Refused(f(&m)),
            Capacity(m) => Capacity(f(&m)),
            other @ (Throttled { .. }
            | Timeout(_)
            | NullResult
            | MultipleSeries(_)
            | TooLarge { .. }
            | Unreported(_)) => other,
        }
    }

    /// How long the upstream asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SignalError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What the cache knows about one watched value at the moment of a decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// The last good value, if any.
    pub value: Option<f64>,
    /// How old that value is.
    pub age: Option<Duration>,
    /// Set when the latest refresh failed; the value above is then kept from before.
    pub error: Option<Arc<SignalError>>,
    /// Change per second between the last two good values (for `drainTime`).
    pub rate: Option<f64>,
}

impl Observation {
    pub fn fresh(value: f64) -> Self {
        Self {
            value: Some(value),
            age: Some(Duration::ZERO),
            error: None,
            rate: None,
        }
    }

    /// No value, and why.
    pub fn failed(error: SignalError) -> Self {
        Self {
            value: None,
            age: None,
            error: Some(Arc::new(error)),
            rate: None,
        }
    }
}

/// The message counts a Service Bus read returned beside the active count (`CountDetails`):
/// shown and exported, never decided on. A count the upstream left out stays `None`, never 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntityCounts {
    pub active: Option<u64>,
    pub dead_letter: Option<u64>,
    pub scheduled: Option<u64>,
    pub transfer: Option<u64>,
    pub transfer_dead_letter: Option<u64>,
}

impl EntityCounts {
    /// The counts of several entities (a `useRegex` match) added up: a count any entity left
    /// out is unknown for the sum.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a EntityCounts>) -> EntityCounts {
        let add = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_add(b?));
        let zero = Some(0);
        all.into_iter().fold(
            EntityCounts {
                active: zero,
                dead_letter: zero,
                scheduled: zero,
                transfer: zero,
                transfer_dead_letter: zero,
            },
            |acc, c| EntityCounts {
                active: add(acc.active, c.active),
                dead_letter: add(acc.dead_letter, c.dead_letter),
                scheduled: add(acc.scheduled, c.scheduled),
                transfer: add(acc.transfer, c.transfer),
                transfer_dead_letter: add(acc.transfer_dead_letter, c.transfer_dead_letter),
            },
        )
    }
}
