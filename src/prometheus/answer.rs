//! One instant query sent and its answer read: the decoded value, or what the answer means as
//! an error (KEDA's rules for empty, NaN and several series).

use std::time::Duration;

use prometheus_http_query::error::{PrometheusError, PrometheusErrorType};
use reqwest::StatusCode;

use super::connect::Connection;
use super::wire::{self, Data, Envelope};
use super::{INLINE_DECODE_BYTES, MAX_BODY_BYTES, Query, Server, UPSTREAM};
use crate::http::{self, Limits};
use crate::offload::{self, Work};
use crate::signal::SignalError;

/// One GET of `/api/v1/query`: the decoded data, or what the answer means as an error.
pub(super) async fn send(
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
pub(super) fn api_error(
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
/// cut short; never into an error a caller sees (docs/security.md, "Where requests may go": an internal host's page
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
pub(super) fn http_error(
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
pub(super) fn interpret(data: Data, query: &Query) -> Result<f64, SignalError> {
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
