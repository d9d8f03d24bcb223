//! Credentials for the management API: shared access signatures and Azure AD tokens.
//!
//! Nothing here ever formats a key, a signature or a token into an error or a `Debug`
//! string: they are held as [`Secret`]s and only [`Secret::expose`]d into the
//! `Authorization` header.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
#[cfg(test)]
use percent_encoding::percent_decode_str;
use sha2::Sha256;
use tokio::time::Instant;

use crate::http::{self, Limits};
use crate::metadata::{ConnectionAuth, ServiceBusAuth};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::signal::SignalError;

use super::atom::clip;

/// How long a self-signed SAS token is valid.
pub(crate) const SAS_LIFETIME: Duration = Duration::from_secs(3600);
/// A cached token (SAS or Azure AD) is replaced when it has less than this left, so a
/// request never leaves with a token that expires in flight.
pub(crate) const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// The Azure AD scope of Service Bus.
pub(crate) const AAD_SCOPE: &str = "https://servicebus.azure.net/.default";
pub(crate) const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The `upstream` label of the token exchange's request metrics.
const UPSTREAM: &str = "azure_ad";
/// A token response is a few KiB of JSON; anything much larger is not one.
const MAX_TOKEN_BODY_BYTES: usize = 64 * 1024;

/// Percent-encodes a value for a SAS token.
pub(crate) fn token_encode(value: &str) -> String {
    http::escape(value)
}

/// Decodes a percent-encoded SAS token field (`+` is a space, as in a form).
#[cfg(test)]
pub(crate) fn token_decode(value: &str) -> String {
    percent_decode_str(&value.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The base64 HMAC-SHA256 signature of `"{encoded_resource}\n{expiry}"`. The key is the
/// UTF-8 bytes of the `SharedAccessKey` as written in the connection string: Service Bus
/// does not base64-decode it.
pub(crate) fn sas_signature(key: &str, encoded_resource: &str, expiry: u64) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{encoded_resource}\n{expiry}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `SharedAccessSignature sr=…&sig=…&se=…&skn=…` for `resource_uri`, valid until `expiry`
/// (seconds since the Unix epoch).
pub fn sas_token(resource_uri: &str, key_name: &str, key: &Secret, expiry: u64) -> Secret {
    let sr = token_encode(resource_uri);
    let sig = sas_signature(key.expose(), &sr, expiry);
    Secret::new(format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}",
        token_encode(&sig),
        token_encode(key_name)
    ))
}

fn unix_now(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signs SAS tokens with a `SharedAccessKey`, one per resource URI, each reused until it
/// is [`RENEW_BEFORE`] from expiry.
pub struct SharedKeySigner {
    key_name: String,
    key: Secret,
    tokens: parking_lot::Mutex<HashMap<String, (Secret, u64)>>,
}

impl std::fmt::Debug for SharedKeySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeySigner")
            .field("key_name", &self.key_name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl SharedKeySigner {
    pub fn new(key_name: impl Into<String>, key: Secret) -> Self {
        Self {
            key_name: key_name.into(),
            key,
            tokens: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// A token for `resource_uri` valid at `now` for at least [`RENEW_BEFORE`].
    pub fn token(&self, resource_uri: &str, now: SystemTime) -> Secret {
        let now = unix_now(now);
        let mut tokens = self.tokens.lock();
        if let Some((token, expiry)) = tokens.get(resource_uri)
            && *expiry > now + RENEW_BEFORE.as_secs()
        {
            return token.clone();
        }
        // Drop what has expired, so resources nobody reads any more do not pile up.
        tokens.retain(|_, (_, expiry)| *expiry > now);
        let expiry = now + SAS_LIFETIME.as_secs();
        let token = sas_token(resource_uri, &self.key_name, &self.key, expiry);
        tokens.insert(resource_uri.to_string(), (token.clone(), expiry));
        token
    }

    /// How many tokens are cached (for tests).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.tokens.lock().len()
    }
}

/// Where the scaler's workload identity comes from (the variables the Azure workload
/// identity webhook injects into the pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentityConfig {
    pub client_id: String,
    pub tenant_id: String,
    /// The projected service account token; re-read for every exchange because the kubelet
    /// rotates it.
    pub token_file: PathBuf,
    pub authority_host: String,
}

impl WorkloadIdentityConfig {
    /// From `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and
    /// `AZURE_AUTHORITY_HOST` (default [`DEFAULT_AUTHORITY_HOST`]).
    pub(crate) fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let missing: Vec<&str> = [
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
        ]
        .into_iter()
        .filter(|n| get(n).is_none())
        .collect();
        if !missing.is_empty() {
            return Err(format!(
                "Azure workload identity is not configured on the scaler: {} not set",
                missing.join(", ")
            ));
        }
        Ok(Self {
            client_id: get("AZURE_CLIENT_ID").unwrap_or_default(),
            tenant_id: get("AZURE_TENANT_ID").unwrap_or_default(),
            token_file: PathBuf::from(get("AZURE_FEDERATED_TOKEN_FILE").unwrap_or_default()),
            authority_host: get("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string()),
        })
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub(crate) fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host.trim_end_matches('/'),
            http::escape(&self.tenant_id)
        )
    }
}

/// Exchanges the pod's federated token for an Azure AD access token to Service Bus, and
/// keeps it until [`RENEW_BEFORE`] its expiry. One per scaler: every namespace read with
/// workload identity shares it.
pub struct WorkloadIdentity {
    config: Result<WorkloadIdentityConfig, String>,
    http: reqwest::Client,
    metrics: Metrics,
    timeout: Duration,
    /// Held across the exchange, so concurrent refreshes wait for one exchange.
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    pub(crate) fn new(
        config: Result<WorkloadIdentityConfig, String>,
        http: reqwest::Client,
        metrics: Metrics,
        timeout: Duration,
    ) -> Self {
        Self {
            config,
            http,
            metrics,
            timeout,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A bearer token for Service Bus, from the cache or a new exchange.
    pub(crate) async fn token(&self) -> Result<Secret, SignalError> {
        let config = self
            .config
            .as_ref()
            .map_err(|e| SignalError::Credential(e.clone()))?;
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let started = Instant::now();
        let result = self.exchange(config).await;
        http::record(&self.metrics, UPSTREAM, started, &result);
        let (token, lifetime) = result?;
        // Renew RENEW_BEFORE ahead, or at half-life for short-lived tokens.
        let margin = RENEW_BEFORE.min(lifetime / 2);
        // (Checked: a token endpoint's absurd `expires_in` means "renew much later", never
        // a panic inside a refresh.)
        let renew_at = Instant::now()
            .checked_add(lifetime.saturating_sub(margin))
            .unwrap_or_else(Instant::now);
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }

    async fn exchange(
        &self,
        config: &WorkloadIdentityConfig,
    ) -> Result<(Secret, Duration), SignalError> {
        let assertion = tokio::fs::read_to_string(&config.token_file)
            .await
            .map_err(|e| {
                SignalError::Credential(format!(
                    "cannot read the federated token file `{}`: {e}",
                    config.token_file.display()
                ))
            })?;
        let assertion = Secret::new(assertion.trim());
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &config.client_id)
            .append_pair("scope", AAD_SCOPE)
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_assertion_type", JWT_BEARER)
            .append_pair("client_assertion", assertion.expose())
            .finish();
        let request = self
            .http
            .post(config.token_url())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body);
        let limits = Limits {
            timeout: self.timeout,
            max_body_bytes: MAX_TOKEN_BODY_BYTES,
        };
        let answer = http::exchange(request, "the Azure AD token endpoint", limits).await?;
        let (status, retry_after, bytes) =
            (answer.status.as_u16(), answer.retry_after, answer.body);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status != 200 {
            let code = json["error"].as_str().unwrap_or("no error code");
            let description = json["error_description"]
                .as_str()
                .and_then(|d| d.lines().next())
                .unwrap_or("");
            // Azure AD's own words (AADSTS codes) help the operator, not the tenant: they go
            // to the log, and the caller gets a fixed cause.
            tracing::warn!(
                upstream = "azure_ad",
                status,
                detail = %clip(
                    &format!("{code}: {description}").replace(assertion.expose(), "<redacted>"),
                    400
                ),
                "Azure AD refused the token exchange"
            );
            let detail = "Azure AD refused the token exchange (its reason is in the scaler's log)"
                .to_string();
            return Err(match status {
                400 | 401 | 403 => SignalError::Unauthorized { status, detail },
                429 | 503 => SignalError::Throttled {
                    status,
                    retry_after,
                },
                _ => SignalError::Http { status, detail },
            });
        }
        let token = json["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                SignalError::Malformed("the Azure AD token response has no access_token".into())
            })?;
        // `expires_in` is a number of seconds, sent as a number or a string.
        let lifetime = json["expires_in"]
            .as_u64()
            .or_else(|| json["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(300);
        // Azure AD access tokens live at most a day; anything claiming longer is renewed daily.
        Ok((
            Secret::new(token),
            Duration::from_secs(lifetime.clamp(1, 24 * 3600)),
        ))
    }
}

/// How one namespace is authenticated.
#[derive(Debug)]
pub enum Credential {
    /// `SharedAccessKeyName` + `SharedAccessKey`: tokens signed here.
    SharedKey(SharedKeySigner),
    /// A ready `SharedAccessSignature`, used as is.
    Signature(Secret),
    /// Azure AD through the scaler's workload identity.
    WorkloadIdentity(Arc<WorkloadIdentity>),
}

impl Credential {
    pub(crate) fn from_auth(
        auth: &ServiceBusAuth,
        identity: &Arc<WorkloadIdentity>,
    ) -> Result<Self, SignalError> {
        match auth {
            ServiceBusAuth::ConnectionString(cs) => Ok(match &cs.auth {
                ConnectionAuth::Key { name, key } => {
                    Credential::SharedKey(SharedKeySigner::new(name.to_string(), key.clone()))
                }
                // Some tools hand out the token without its scheme.
                ConnectionAuth::Signature(sig)
                    if !sig.expose().starts_with("SharedAccessSignature ") =>
                {
                    Credential::Signature(Secret::new(format!(
                        "SharedAccessSignature {}",
                        sig.expose()
                    )))
                }
                ConnectionAuth::Signature(sig) => Credential::Signature(sig.clone()),
            }),
            ServiceBusAuth::WorkloadIdentity => Ok(Credential::WorkloadIdentity(identity.clone())),
            ServiceBusAuth::ResolvedByKeda { variable } => Err(SignalError::Credential(format!(
                "the connection string in `{variable}` has not been resolved"
            ))),
            ServiceBusAuth::NamedCredential(name) => Err(SignalError::Credential(format!(
                "the scaler credential `{name}` has not been resolved"
            ))),
        }
    }

    /// The `Authorization` header value for a request to `resource_uri`.
    pub(crate) async fn authorization(&self, resource_uri: &str) -> Result<Secret, SignalError> {
        match self {
            Credential::SharedKey(signer) => Ok(signer.token(resource_uri, SystemTime::now())),
            Credential::Signature(sig) => Ok(sig.clone()),
            Credential::WorkloadIdentity(identity) => {
                let token = identity.token().await?;
                Ok(Secret::new(format!("Bearer {}", token.expose())))
            }
        }
    }

    /// The key this credential signs with, if any (scrubbed from upstream error text).
    pub(crate) fn key(&self) -> Option<&Secret> {
        match self {
            Credential::SharedKey(s) => Some(&s.key),
            Credential::Signature(s) => Some(s),
            Credential::WorkloadIdentity(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_the_encoded_uri_and_expiry_with_the_raw_key() {
        let token = sas_token("https://ns/", "root", &Secret::new("key"), 1000);
        let text = token.expose();
        assert!(text.starts_with("SharedAccessSignature sr=https%3A%2F%2Fns%2F&sig="));
        assert!(text.ends_with("&se=1000&skn=root"));
        let sig = text
            .split("sig=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let expected = sas_signature("key", "https%3A%2F%2Fns%2F", 1000);
        assert_eq!(token_decode(sig), expected);
        // The key is not base64-decoded: a base64-looking key signs differently from its bytes.
        assert_ne!(sas_signature("a2V5", "x", 1), sas_signature("key", "x", 1));
        assert_eq!(format!("{token:?}"), "<redacted>");
    }

    #[test]
    fn the_token_matches_a_known_answer_computed_elsewhere() {
        // Python: quote_plus(uri); base64(hmac.new(b"c2VjcmV0PT0=", f"{sr}\n1700000000", sha256)).
        let token = sas_token(
            "https://my-ns.servicebus.windows.net/$Resources/Queues",
            "RootManageSharedAccessKey",
            &Secret::new("c2VjcmV0PT0="),
            1_700_000_000,
        );
        assert_eq!(
            token.expose(),
            "SharedAccessSignature \
             sr=https%3A%2F%2Fmy-ns.servicebus.windows.net%2F%24Resources%2FQueues\
             &sig=vgXiPVTeXXmy7gdHdsQnCjzqXNstSRkEUXGSxqCPAzc%3D\
             &se=1700000000&skn=RootManageSharedAccessKey"
        );
    }

    #[test]
    fn tokens_are_reused_until_close_to_expiry() {
        let signer = SharedKeySigner::new("root", Secret::new("sekrit-key-value"));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = signer.token("https://ns/q", t0);
        let b = signer.token("https://ns/q", t0 + Duration::from_secs(3000));
        assert_eq!(a, b);
        let c = signer.token("https://ns/q", t0 + SAS_LIFETIME - RENEW_BEFORE);
        assert_ne!(a, c);
        assert!(c.expose().contains(&format!(
            "se={}",
            1_000_000 + 2 * SAS_LIFETIME.as_secs() - RENEW_BEFORE.as_secs()
        )));
        // Expired entries are dropped as new ones are signed.
        signer.token("https://ns/other", t0 + SAS_LIFETIME * 3);
        assert_eq!(signer.cached(), 1);
        let debug = format!("{signer:?}");
        assert!(
            !debug.contains("sekrit") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn workload_identity_needs_its_three_variables() {
        let none = WorkloadIdentityConfig::from_lookup(|_| None).unwrap_err();
        assert!(none.contains("AZURE_CLIENT_ID"), "{none}");
        assert!(none.contains("AZURE_FEDERATED_TOKEN_FILE"), "{none}");
        let vars = [
            ("AZURE_CLIENT_ID", "cid"),
            ("AZURE_TENANT_ID", "tid"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ];
        let c = WorkloadIdentityConfig::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(
            c.token_url(),
            "https://login.microsoftonline.com/tid/oauth2/v2.0/token"
        );
    }
}
