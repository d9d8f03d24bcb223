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

/// An instant [`GoodReads`] are kept at: the cache's clock, or the simulator's seconds since
/// the start of a trace.
pub trait Moment: Copy + PartialOrd {
    /// How long after `earlier` this is; zero when `earlier` is later.
    fn since(self, earlier: Self) -> Duration;
}

impl Moment for tokio::time::Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Moment for Duration {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_sub(earlier)
    }
}

/// The last two good reads of one watched value, and the [`Observation`] a decision gets from
/// them: the one rule the cache keeps and the simulator replays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GoodReads<T> {
    latest: Option<(f64, T)>,
    previous: Option<(f64, T)>,
}

// By hand: no reads needs no default instant.
impl<T> Default for GoodReads<T> {
    fn default() -> Self {
        Self {
            latest: None,
            previous: None,
        }
    }
}

impl<T: Moment> GoodReads<T> {
    /// A good read of `value` that finished at `at`.
    pub fn store(&mut self, value: f64, at: T) {
        self.previous = self.latest;
        self.latest = Some((value, at));
    }

    /// The latest good value and when it was read.
    pub fn latest(&self) -> Option<(f64, T)> {
        self.latest
    }

    /// What a decision at `now` sees: the latest good value, its age, the change per second
    /// between the last two good reads, and the latest refresh's `error` (if it failed).
    pub fn observation(&self, now: T, error: Option<Arc<SignalError>>) -> Observation {
        let rate = match (self.latest, self.previous) {
            (Some((v1, t1)), Some((v0, t0))) if t1 > t0 => {
                Some((v1 - v0) / t1.since(t0).as_secs_f64())
            }
            _ => None,
        };
        Observation {
            value: self.latest.map(|(v, _)| v),
            age: self.latest.map(|(_, t)| now.since(t)),
            error,
            rate,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_reads_give_the_latest_value_its_age_and_the_rate_between_the_last_two() {
        let s = Duration::from_secs;
        let mut r = GoodReads::default();
        assert_eq!(r.observation(s(3), None), Observation::default());
        r.store(10.0, s(0));
        let o = r.observation(s(3), None);
        assert_eq!((o.value, o.age, o.rate), (Some(10.0), Some(s(3)), None));
        r.store(60.0, s(5));
        let o = r.observation(s(7), Some(Arc::new(SignalError::NullResult)));
        assert_eq!(
            (o.value, o.age, o.rate),
            (Some(60.0), Some(s(2)), Some(10.0))
        );
        assert!(o.error.is_some());
        // Two reads at the same instant give no rate rather than a division by zero.
        r.store(70.0, s(5));
        assert_eq!(r.observation(s(5), None).rate, None);
        assert_eq!(r.latest(), Some((70.0, s(5))));
    }
}
