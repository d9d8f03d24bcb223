//! The double's credentials: SAS tokens checked from the token format, bearer tokens it issued,
//! and the Azure AD token endpoint of the workload identity exchange.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;

use super::atom::uuid;
use super::state::Shared;

/// The scope a workload identity token for Service Bus is asked for.
const AAD_SCOPE: &str = "https://servicebus.azure.net/.default";

/// Checks the `Authorization` header: a SAS token signed with the configured key for a
/// resource covering `host/path`, unexpired; or a bearer token the double knows.
pub(super) fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    host: &str,
    path: &str,
) -> Result<(), String> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err("MissingToken: The request has no authorization header.".into());
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return if shared.bearer.lock().contains(token.trim()) {
            Ok(())
        } else {
            Err("InvalidToken: The bearer token is not valid.".into())
        };
    }
    let Some(token) = value.strip_prefix("SharedAccessSignature ") else {
        return Err("InvalidToken: claim is empty or token is invalid.".into());
    };
    verify_sas(
        token,
        &shared.options.key_name,
        &shared.options.key,
        &format!("{host}{path}"),
        SystemTime::now(),
    )
}

/// Verifies a SAS token (`sr=…&sig=…&se=…&skn=…`) for a request to `resource`
/// (`host/path`). Written apart from the client's signer, from the token format.
pub fn verify_sas(
    token: &str,
    key_name: &str,
    key: &str,
    resource: &str,
    now: SystemTime,
) -> Result<(), String> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for pair in token.trim().split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k, v);
        }
    }
    let field = |name: &str| {
        fields
            .get(name)
            .copied()
            .ok_or_else(|| format!("InvalidToken: the token has no `{name}`."))
    };
    let (sr, sig, se, skn) = (field("sr")?, field("sig")?, field("se")?, field("skn")?);
    let decode = |v: &str| {
        percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    if decode(skn) != key_name {
        return Err(
            "InvalidSignature: The token has an invalid signature (unknown key name).".into(),
        );
    }
    let expiry: u64 = se
        .parse()
        .map_err(|_| "InvalidToken: the expiry is not a number.".to_string())?;
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if expiry <= now {
        return Err(format!(
            "ExpiredToken: The token is expired. Expiration time: {expiry}."
        ));
    }
    // The audience covers the request when it is the resource or one of its parents.
    let audience = decode(sr).to_lowercase();
    let audience = ["https://", "http://", "sb://"]
        .iter()
        .find_map(|s| audience.strip_prefix(s))
        .unwrap_or(&audience)
        .trim_end_matches('/')
        .to_string();
    let target = resource.to_lowercase().trim_end_matches('/').to_string();
    if audience.is_empty() || !(target == audience || target.starts_with(&format!("{audience}/"))) {
        return Err("InvalidAudience: The token audience does not cover this resource.".into());
    }
    // The signature is over the `sr` exactly as it appears in the token.
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(decode(sig)) else {
        return Err("InvalidSignature: The token has an invalid signature.".into());
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()) else {
        return Err("InvalidSignature: The token has an invalid signature.".into());
    };
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(se.as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| "InvalidSignature: The token has an invalid signature.".to_string())
}

pub(super) fn token_endpoint(shared: &Shared, path: &str, body: &[u8]) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let o = &shared.options;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let refuse = |status: StatusCode, error: &str, description: &str| {
        let body = serde_json::json!({
            "error": error,
            "error_description": format!("{description}\r\nTrace ID: {}", uuid()),
        });
        (status, axum::Json(body)).into_response()
    };
    let tenant = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    if tenant != o.tenant_id {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "AADSTS90002: Tenant not found.",
        );
    }
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain a valid grant.",
        );
    }
    if field("scope") != AAD_SCOPE {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided scope is not valid.",
        );
    }
    if field("client_id") != o.client_id {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    if field("client_assertion") != o.federated_token {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700213: No matching federated identity record found for the presented assertion.",
        );
    }
    let n = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("double-access-token-{n}-{}", uuid());
    shared.bearer.lock().insert(token.clone());
    let secs = o.token_lifetime.as_secs();
    axum::Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": token,
    }))
    .into_response()
}
