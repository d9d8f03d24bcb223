//! Writes to the `/status` subresource: `PUT` with its resource-version check, merge patch and
//! server-side apply (one field manager, so a merge), each recorded.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::StatusWrite;
use super::http::{Target, bad_request, not_found, reply, status};
use super::store::{Shared, commit};

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// `PATCH` (merge or apply) or `PUT` of `/status`: only `status` changes; a write that
/// changes nothing keeps the resource version and sends no event, as the API server does.
pub(super) fn write_status(
    shared: &Shared,
    method: &Method,
    t: &Target,
    name: &str,
    headers: &HeaderMap,
    q: &BTreeMap<String, String>,
    body: &Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let mut store = shared.store.lock();
    let namespace = t.namespace.clone().unwrap_or_default();
    let response = (|| {
        let patch = match parsed {
            Ok(v) if v.is_object() => v,
            _ => return bad_request("the request body is not a JSON object"),
        };
        let key = (t.kind, namespace.clone(), name.to_string());
        let Some(old) = store.objects.get(&key).cloned() else {
            return not_found(t.kind, name);
        };
        let mut new = old.clone();
        match (method.clone(), content_type.as_str()) {
            (Method::PUT, "application/json") => {
                let sent_rv = patch["metadata"]["resourceVersion"].as_str();
                if sent_rv.is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str())
                {
                    let details = json!({"name": name, "group": t.kind.group(),
                                         "kind": t.kind.plural()});
                    let message = format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                         modified; please apply your changes to the latest version and try again",
                        t.kind.qualified()
                    );
                    return reply(409, &status(409, "Conflict", &message, Some(details)));
                }
                let obj = new.as_object_mut().expect("an object");
                match patch.get("status") {
                    Some(s) => obj.insert("status".into(), s.clone()),
                    None => obj.remove("status"),
                };
            }
            (Method::PATCH, "application/apply-patch+yaml") if !q.contains_key("fieldManager") => {
                return bad_request("PATCH /status: fieldManager is required for apply requests");
            }
            // One field manager owns the whole status here, so apply is a merge.
            (Method::PATCH, "application/merge-patch+json" | "application/apply-patch+yaml") => {
                if let Some(s) = patch.get("status") {
                    let mut status = new.get("status").cloned().unwrap_or(Value::Null);
                    merge(&mut status, s);
                    new.as_object_mut()
                        .expect("an object")
                        .insert("status".into(), status);
                }
            }
            _ => {
                return reply(
                    415,
                    &status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media \
                             types include: application/json-patch+json, \
                             application/merge-patch+json, application/apply-patch+yaml (got \
                             {content_type})"
                        ),
                        None,
                    ),
                );
            }
        }
        if new == old {
            return reply(200, &old);
        }
        let stored = commit(shared, &mut store, t.kind, key, new, "MODIFIED");
        reply(200, &stored)
    })();
    store.status_writes.push(StatusWrite {
        namespace,
        name: name.to_string(),
        method: method.to_string(),
        content_type,
        field_manager: q.get("fieldManager").cloned(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        code: response.status().as_u16(),
    });
    response
}
