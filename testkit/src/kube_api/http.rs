//! Routing: the bearer check, `/version`, the SubjectAccessReview endpoint and the resource
//! paths, each request recorded; and the `metav1.Status` replies the API server writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::read::{list, watch};
use super::review::review;
use super::status_write::write_status;
use super::store::Shared;
use super::{Kind, Recorded, TOKEN};

pub(super) fn reply(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A `metav1.Status` failure, as the API server writes it.
pub(super) fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

pub(super) fn not_found(kind: Kind, name: &str) -> Response {
    let mut details = json!({"name": name, "kind": kind.plural()});
    if !kind.group().is_empty() {
        details["group"] = json!(kind.group());
    }
    reply(
        404,
        &status(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", kind.qualified()),
            Some(details),
        ),
    )
}

pub(super) fn bad_request(message: &str) -> Response {
    reply(400, &status(400, "BadRequest", message, None))
}

pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = answer(&shared, &method, &uri, &headers, body).await;
    shared.store.lock().requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        code: response.status().as_u16(),
    });
    response
}

/// What a path names.
pub(super) struct Target {
    pub(super) kind: Kind,
    /// `None`: all namespaces.
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) status: bool,
}

fn target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some(n.to_string()), false),
        [p, n, "status"] => (*p, Some(n.to_string()), true),
        _ => return None,
    };
    let kind = Kind::from_path(group, version, plural)?;
    // A namespaced kind's object is only addressed inside its namespace, a cluster-scoped
    // kind's never is.
    if (name.is_some() && kind.namespaced() && namespace.is_none())
        || (!kind.namespaced() && namespace.is_some())
    {
        return None;
    }
    Some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

fn query_params(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn answer(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if !authorized {
        return reply(401, &status(401, "Unauthorized", "Unauthorized", None));
    }
    let path = uri.path();
    if path == "/version" {
        return reply(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                    "platform": "linux/amd64"}),
        );
    }
    if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews" {
        if method != Method::POST {
            return method_not_allowed();
        }
        return review(shared, &body);
    }
    let Some(t) = target(path) else {
        return reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                Some(json!({})),
            ),
        );
    };
    let q = query_params(uri);
    match (method.clone(), &t.name, t.status) {
        (Method::GET, None, _) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(shared, &t, &q)
        }
        (Method::GET, None, _) => list(shared, &t, &q),
        (Method::GET, Some(name), false) => {
            let key = (
                t.kind,
                t.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            match shared.store.lock().objects.get(&key) {
                Some(o) => reply(200, o),
                None => not_found(t.kind, name),
            }
        }
        (Method::PATCH | Method::PUT, Some(name), true) if t.kind == Kind::BlendedMetric => {
            write_status(shared, method, &t, name, headers, &q, &body)
        }
        _ => method_not_allowed(),
    }
}

fn method_not_allowed() -> Response {
    reply(
        405,
        &status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        ),
    )
}
