//! `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: validated as the API server
//! does, answered by the policy the test sets, each review recorded.

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{Value, json};

use super::http::{bad_request, reply, status};
use super::store::Shared;

/// A SubjectAccessReview: validated as the API server does, answered by the policy.
pub(super) fn review(shared: &Shared, body: &Bytes) -> Response {
    let mut sar = match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => v,
        _ => return bad_request("the request body is not a SubjectAccessReview"),
    };
    shared.store.lock().reviews.push(sar.clone());
    let spec = sar.get("spec").cloned().unwrap_or(Value::Null);
    let user = spec["user"].as_str().unwrap_or("");
    let groups = spec["groups"].as_array().is_some_and(|g| !g.is_empty());
    let resource = spec.get("resourceAttributes").is_some_and(|r| !r.is_null());
    let non_resource = spec
        .get("nonResourceAttributes")
        .is_some_and(|r| !r.is_null());
    let invalid = if user.is_empty() && !groups {
        Some("spec.user: Invalid value: \"\": at least one of user or group must be specified")
    } else if resource == non_resource {
        Some(
            "spec.resourceAttributes: Invalid value: \"null\": exactly one of \
             nonResourceAttributes or resourceAttributes must be specified",
        )
    } else {
        None
    };
    if let Some(why) = invalid {
        let message = format!("SubjectAccessReview.authorization.k8s.io \"\" is invalid: {why}");
        return reply(
            422,
            &status(
                422,
                "Invalid",
                &message,
                Some(json!({"group": "authorization.k8s.io", "kind": "SubjectAccessReview"})),
            ),
        );
    }
    let policy = shared.policy.lock().clone();
    let decision = policy(&spec);
    let mut status = json!({"allowed": decision.allowed});
    if decision.denied {
        status["denied"] = json!(true);
    }
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    let obj = sar.as_object_mut().expect("a JSON object");
    obj.insert("apiVersion".into(), json!("authorization.k8s.io/v1"));
    obj.insert("kind".into(), json!("SubjectAccessReview"));
    obj.insert("metadata".into(), json!({"creationTimestamp": null}));
    obj.insert("status".into(), status);
    reply(201, &sar)
}
