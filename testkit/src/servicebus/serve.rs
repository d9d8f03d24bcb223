//! How the double answers a request: the token exchange, authorization, injected faults, then
//! the management API's reads (and its habit of answering a missing entity with HTTP 200).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use quick_xml::escape::escape;
use rand::RngExt;

use super::atom::{
    ATOM_NS, Ctx, ENTRY_TYPE, ERROR_TYPE, FEED_TYPE, NOT_FOUND_FEED_TITLE, now_text, uuid,
};
use super::auth::{authorize, token_endpoint};
use super::state::Shared;
use super::{ApiVersion, Fault, RetryAfter, Served};

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

pub(super) async fn handle(
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
