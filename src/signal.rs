//! What the upstream sources produce: readings, their errors, and the kinds of signal.

use std::collections::VecDeque;
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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn outcome(&self) -> &'static str {
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
    pub(crate) fn map_text(self, f: impl Fn(&str) -> String) -> SignalError {
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
    /// The value's change per second over the good reads of the last [`RATE_WINDOW`], a
    /// least-squares fit (for `drainTime`); none before a second read, and none for a value
    /// no `drainTime` plan reads ([`GoodReads::keep_history`]).
    pub rate: Option<f64>,
    /// The other counts the latest read that had them returned beside the value (Service
    /// Bus): shown and exported, never decided on.
    pub counts: Option<EntityCounts>,
}

/// An instant [`GoodReads`] and the cache's read schedule are kept at: the cache's clock, or
/// the simulator's time since the start of a trace, so both run the same rules.
pub(crate) trait Moment: Copy + Ord + std::fmt::Debug {
    /// How long after `earlier` this is; zero when `earlier` is later.
    fn since(self, earlier: Self) -> Duration;
    /// `d` later; `None` past the last instant the clock can hold.
    fn plus(self, d: Duration) -> Option<Self>;
}

impl Moment for tokio::time::Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }

    fn plus(self, d: Duration) -> Option<Self> {
        self.checked_add(d)
    }
}

impl Moment for Duration {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_sub(earlier)
    }

    fn plus(self, d: Duration) -> Option<Self> {
        self.checked_add(d)
    }
}

/// How far back the backlog's rate looks: long enough to see several batches of a producer
/// that sends one every 15 s (four), so a batch landing between two reads is not taken for a
/// rate of hundreds a second; short enough that a real ramp shows within about a third of it
/// (docs/drain-time.md, "The rate").
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(60);

/// A read less than this after the one before it is replaced by the next read: a 1 s refresh
/// keeps about 13 reads of the window, as the default 5 s refresh does, not 60.
const READ_SPACING: Duration = Duration::from_secs(5);

/// The good reads of one watched value, and the [`Observation`] a decision gets from them:
/// the one rule the cache keeps and the simulator replays. Everything a decision sees is a
/// function of these reads and the time, never of how many calls asked.
///
/// Only the latest read is kept until a plan that needs the rate (`drainTime`) reads the value
/// ([`Self::keep_history`]); from then on the reads of the last [`RATE_WINDOW`] are kept too,
/// and the rate comes from them. Nothing else decides on the rate, and thirteen reads of
/// every queue and query (about 400 bytes each at 10,000 of them) would be kept for nothing.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GoodReads<T> {
    latest: Option<(f64, T)>,
    /// Boxed: 8 bytes in every item's state, where the reads and their rate inline were 48.
    history: Option<Box<History<T>>>,
}

/// The reads of the last [`RATE_WINDOW`], oldest first, the latest last, and their rate.
#[derive(Clone, Debug, PartialEq)]
struct History<T> {
    reads: VecDeque<(f64, T)>,
    /// The least-squares change per second over `reads`, worked out once per read.
    rate: Option<f64>,
}

// By hand: no reads needs no default instant.
impl<T> Default for GoodReads<T> {
    fn default() -> Self {
        Self {
            latest: None,
            history: None,
        }
    }
}

impl<T: Moment> GoodReads<T> {
    /// From now on keep the reads the rate is worked out from. The rate shows from the next
    /// read on, as for a value read for the first time.
    pub(crate) fn keep_history(&mut self) {
        if self.history.is_none() {
            self.history = Some(Box::new(History {
                reads: self.latest.into_iter().collect(),
                rate: None,
            }));
        }
    }

    /// A good read of `value` that finished at `at`. A read no later than the latest (a
    /// clock that did not move) replaces it.
    pub(crate) fn store(&mut self, value: f64, at: T) {
        self.latest = Some((value, at));
        let Some(history) = &mut self.history else {
            return;
        };
        let History { reads, rate } = &mut **history;
        let n = reads.len();
        let replaces_latest = match reads.back() {
            Some(&(_, last)) if at.since(last).is_zero() => true,
            Some(&(_, last)) if n >= 2 => last.since(reads[n - 2].1) < READ_SPACING,
            _ => false,
        };
        if replaces_latest {
            reads.pop_back();
        }
        reads.push_back((value, at));
        while reads
            .front()
            .is_some_and(|&(_, t)| at.since(t) > RATE_WINDOW)
        {
            reads.pop_front();
        }
        *rate = slope(reads);
    }

    /// What a decision at `now` sees: the latest good value, its age, the change per second
    /// over the reads of the last [`RATE_WINDOW`] (when they are kept), and the latest
    /// refresh's `error` (if it failed).
    pub(crate) fn observation(&self, now: T, error: Option<Arc<SignalError>>) -> Observation {
        Observation {
            value: self.latest.map(|(v, _)| v),
            age: self.latest.map(|(_, t)| now.since(t)),
            error,
            rate: self.history.as_ref().and_then(|h| h.rate),
            counts: None,
        }
    }
}

/// The least-squares slope of value over time, per second; none from fewer than two reads
/// or reads at one instant. A fitted line weighs every read of the window, so one batch moves
/// it by its size over the window, not over the gap between two reads.
fn slope<T: Moment>(reads: &VecDeque<(f64, T)>) -> Option<f64> {
    let &(_, first) = reads.front()?;
    let n = reads.len() as f64;
    let x = |t: T| t.since(first).as_secs_f64();
    let mean_x = reads.iter().map(|&(_, t)| x(t)).sum::<f64>() / n;
    let mean_y = reads.iter().map(|&(v, _)| v).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(v, t) in reads {
        let dx = x(t) - mean_x;
        sxy += dx * (v - mean_y);
        sxx += dx * dx;
    }
    let rate = sxy / sxx;
    (sxx > 0.0 && rate.is_finite()).then_some(rate)
}

impl Observation {
    pub fn fresh(value: f64) -> Self {
        Self {
            value: Some(value),
            age: Some(Duration::ZERO),
            error: None,
            rate: None,
            counts: None,
        }
    }

    /// No value, and why.
    pub(crate) fn failed(error: SignalError) -> Self {
        Self {
            value: None,
            age: None,
            error: Some(Arc::new(error)),
            rate: None,
            counts: None,
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
    pub(crate) fn sum<'a>(all: impl IntoIterator<Item = &'a EntityCounts>) -> EntityCounts {
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

    /// Reads kept as for a `drainTime` plan.
    fn with_history() -> GoodReads<Duration> {
        let mut r = GoodReads::default();
        r.keep_history();
        r
    }

    fn kept(r: &GoodReads<Duration>) -> &VecDeque<(f64, Duration)> {
        &r.history.as_ref().expect("reads kept").reads
    }

    #[test]
    fn good_reads_give_the_latest_value_its_age_and_the_rate_between_the_last_two() {
        let s = Duration::from_secs;
        let mut r = with_history();
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
        // A read at the same instant replaces the latest rather than dividing by zero.
        r.store(70.0, s(5));
        assert_eq!(r.observation(s(5), None).rate, Some(12.0));
        assert_eq!(r.latest, Some((70.0, s(5))));
        let mut one = with_history();
        one.store(1.0, s(4));
        one.store(2.0, s(4));
        assert_eq!(one.observation(s(4), None).rate, None);
    }

    #[test]
    fn the_rate_is_a_fit_over_the_last_minute_so_a_batch_is_not_a_rate() {
        let s = Duration::from_secs;
        // A batch of 400 every 15 s, drained within 10 s, read every 5 s: the mean rate is
        // about nothing; the last two reads alone would say 80 a second.
        let mut r = with_history();
        for t in (0..=300).step_by(5) {
            let backlog = if t % 15 == 0 { 400.0 } else { 0.0 };
            r.store(backlog, s(t));
            if t >= 60 {
                let rate = r.observation(s(t), None).rate.unwrap();
                assert!(rate.abs() < 8.0, "at {t} s: {rate}");
            }
        }
        // A ramp of 20 a second shows in full as soon as it is in the reads.
        let mut r = with_history();
        for t in (0..=30).step_by(5) {
            r.store(20.0 * t as f64, s(t));
        }
        assert_eq!(r.observation(s(30), None).rate, Some(20.0));
        // Reads older than the window are let go, and a 1 s refresh is kept at 5 s spacing.
        let mut r = with_history();
        for t in 0..=200 {
            r.store(t as f64, s(t));
        }
        assert!(kept(&r).len() <= 14, "{}", kept(&r).len());
        assert!(s(200).since(kept(&r)[0].1) <= RATE_WINDOW);
        assert_eq!(r.latest, Some((200.0, s(200))));
    }

    #[test]
    fn a_value_no_drain_time_plan_reads_keeps_its_latest_read_and_no_rate_until_one_does() {
        let s = Duration::from_secs;
        let mut r = GoodReads::default();
        for t in (0..=60).step_by(5) {
            r.store(20.0 * t as f64, s(t));
        }
        let o = r.observation(s(62), None);
        assert_eq!((o.value, o.age, o.rate), (Some(1200.0), Some(s(2)), None));
        assert!(r.history.is_none(), "no reads kept beside the latest");
        // A drainTime plan starts reading it: the rate shows from the next read on.
        r.keep_history();
        assert_eq!(r.observation(s(62), None).rate, None);
        r.store(1300.0, s(65));
        assert_eq!(r.observation(s(65), None).rate, Some(20.0));
        assert_eq!(kept(&r).len(), 2);
        // Asking again keeps what is kept.
        r.keep_history();
        assert_eq!(kept(&r).len(), 2);
    }
}
