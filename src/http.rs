//! The HTTP layer every upstream goes through: the Service Bus management API, the Azure AD
//! token exchange and Prometheus. One place builds the clients, sends a request with its
//! whole-exchange timeout, reads `Retry-After`, caps the body, maps transport failures to
//! [`SignalError`]s, marks credential headers sensitive and records the request metric (whose
//! `outcome` label is [`SignalError::outcome`]).
//!
//! Every request an upstream client makes passes through [`client_builder`] (how a client
//! connects) and [`exchange`] (one request and its answer), so checks on where a request may
//! go (the destination against the credential it carries, the address actually connected to)
//! and the body cap belong here, in one place, for all three.

use std::error::Error as _;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::signal::SignalError;

/// A `Retry-After` longer than this is read as this: an upstream is never parked for hours by
/// one odd header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Bytes of upstream answers the process holds at once, all upstreams together. Each answer
/// is capped on its own, but a tenant can point a thousand groups at servers that all answer
/// the cap at once; past this budget a read fails (as a failed read, not a stall) until
/// answers in flight are done with.
pub const ANSWER_BUDGET_BYTES: usize = 32 << 20;

static ANSWER_BUDGET: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(ANSWER_BUDGET_BYTES)));

/// The bounds of one exchange.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole exchange, body included.
    pub timeout: Duration,
    /// Bodies larger than this are refused as [`SignalError::TooLarge`].
    pub max_body_bytes: usize,
}

/// A client builder with what every upstream client shares: the connect timeout, the user
/// agent, and no redirects unless the caller sets its own policy.
pub fn client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        // A redirect could carry a request (and its credential) to a host the allowlist
        // never saw; an upstream that needs one says so with its own policy.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("blend-scaler/", env!("CARGO_PKG_VERSION")))
}

/// An upstream's answer: status, `Retry-After`, headers and the capped body. The body's
/// bytes count against [`ANSWER_BUDGET_BYTES`] until the answer is dropped.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub budget: Option<OwnedSemaphorePermit>,
}

/// Sends `request` and reads the answer within `limits`. `whom` names the upstream in error
/// text (a host or a fixed name, never a URL with its query).
pub async fn exchange(
    request: reqwest::RequestBuilder,
    whom: &str,
    limits: Limits,
) -> Result<Answer, SignalError> {
    let exchange = async {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&e, whom, limits.timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let retry_after = retry_after(&headers);
        let (body, budget) = read_body(response, whom, limits).await?;
        Ok(Answer {
            status,
            retry_after,
            headers,
            body,
            budget,
        })
    };
    tokio::time::timeout(limits.timeout, exchange)
        .await
        .map_err(|_| SignalError::Timeout(limits.timeout))?
}

/// Counts one request in `blend_scaler_upstream_requests_total` and its duration.
pub fn record<T>(
    metrics: &Metrics,
    upstream: &'static str,
    started: Instant,
    result: &Result<T, SignalError>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics.upstream_request(upstream, outcome, started.elapsed());
}

/// The body, refusing one larger than `limits.max_body_bytes`, and its share of
/// [`ANSWER_BUDGET_BYTES`]. A connection cut mid-body is [`SignalError::Malformed`]: what came
/// is not a document.
pub async fn read_body(
    mut response: reqwest::Response,
    whom: &str,
    limits: Limits,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), SignalError> {
    // A declared length past the cap is refused before a byte is read: reading (and dropping)
    // 15 MiB costs the async workers as much as keeping it.
    if response
        .content_length()
        .is_some_and(|n| n > limits.max_body_bytes as u64)
    {
        return Err(SignalError::TooLarge {
            limit: limits.max_body_bytes,
        });
    }
    let mut body = Vec::new();
    let mut budget: Option<OwnedSemaphorePermit> = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limits.max_body_bytes {
                    return Err(SignalError::TooLarge {
                        limit: limits.max_body_bytes,
                    });
                }
                let share = u32::try_from(chunk.len())
                    .ok()
                    .and_then(|n| ANSWER_BUDGET.clone().try_acquire_many_owned(n).ok())
                    .ok_or_else(|| {
                        SignalError::OverLimit(format!(
                            "the scaler holds {} MiB of upstream answers at once, its limit; \
                             the answer from {whom} was dropped",
                            ANSWER_BUDGET_BYTES >> 20
                        ))
                    })?;
                match &mut budget {
                    Some(held) => held.merge(share),
                    None => budget = Some(share),
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((body, budget)),
            Err(e) if !e.is_timeout() => {
                return Err(SignalError::Malformed(format!(
                    "the response from {whom} was cut off after {} bytes",
                    body.len()
                )));
            }
            Err(e) => return Err(transport_error(&e, whom, limits.timeout)),
        }
    }
}

/// `Retry-After` (whole or fractional seconds, or an HTTP date), or Azure's
/// `retry-after-ms`/`x-ms-retry-after-ms`, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

pub(crate) fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let millis = ["retry-after-ms", "x-ms-retry-after-ms"]
        .into_iter()
        .find_map(|n| text(n).and_then(|v| v.parse::<u64>().ok()))
        .map(Duration::from_millis);
    let wait = millis.or_else(|| {
        let v = text("retry-after")?;
        if let Ok(secs) = v.parse::<f64>() {
            return (secs.is_finite() && secs >= 0.0)
                .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
        }
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        let at = SystemTime::from(at);
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    })?;
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A transport failure as a [`SignalError`]: the root cause, never the URL's query. Every
/// failure short of an answer (refused, reset, a pooled connection closed under the request)
/// is [`SignalError::Connect`]: the upstream could not be reached, whatever the socket said.
pub fn transport_error(e: &reqwest::Error, whom: &str, timeout: Duration) -> SignalError {
    if e.is_timeout() {
        return SignalError::Timeout(timeout);
    }
    let mut cause = String::new();
    let mut source: Option<&dyn std::error::Error> = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        // The URL carries no secret, but its query is noise in a message.
        cause = match e.url() {
            Some(url) => e.to_string().replace(url.as_str(), "the endpoint"),
            None => e.to_string(),
        };
    }
    SignalError::Connect(format!("{whom}: {cause}"))
}

/// "error sending request: client error (Connect): tcp connect error: Connection refused":
/// reqwest's own message says little without its sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A header value that is never printed by reqwest's or hyper's debug output.
pub fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_fractions_dates_and_milliseconds_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28:00
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_at(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(7)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_millis(1500)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:00:00 GMT"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("999999"));
        assert_eq!(retry_after_at(&h, now), Some(MAX_RETRY_AFTER));
        h.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after_at(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after_at(&h, now), None);
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_millis(1500)));
        h.insert("retry-after-ms", HeaderValue::from_static("99999999"));
        assert_eq!(retry_after_at(&h, now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn sensitive_header_values_are_not_debug_printed() {
        let v = sensitive("Bearer s3cret").unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cret"));
        assert!(sensitive("line\nbreak").is_none());
    }

    #[test]
    fn every_failure_kind_has_its_outcome_label() {
        let throttled = |status| SignalError::Throttled {
            status,
            retry_after: None,
        };
        assert_eq!(throttled(429).outcome(), "throttled");
        assert_eq!(throttled(503).outcome(), "throttled");
        assert_eq!(
            SignalError::Unauthorized {
                status: 403,
                detail: String::new()
            }
            .outcome(),
            "unauthorized"
        );
        assert_eq!(SignalError::NotFound("q".into()).outcome(), "not_found");
        assert_eq!(SignalError::Timeout(Duration::ZERO).outcome(), "timeout");
        assert_eq!(SignalError::QueryTimeout("t".into()).outcome(), "timeout");
        assert_eq!(SignalError::InvalidQuery("q".into()).outcome(), "bad_query");
        assert_eq!(SignalError::TooLarge { limit: 1 }.outcome(), "error");
        assert_eq!(SignalError::Connect("x".into()).outcome(), "error");
    }
}
