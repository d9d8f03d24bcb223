//! Trigger metadata (SPEC section 3) parsed into a typed [`Plan`].
//!
//! One parser serves `serve`, `check` and `explain`. It collects every error rather than
//! stopping at the first, each naming its key, and never puts a secret value in a message.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use chrono_tz::Tz;
use regex::Regex;

use crate::cron::{self, CronPlan, Window};
use crate::secret::Secret;

/// At most this many keys in one trigger's metadata.
pub const MAX_KEYS: usize = 64;
/// At most this many bytes in one value.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// Keys KEDA itself reads for its connection to the scaler; passed through, never ours.
const RESERVED_KEYS: &[&str] = &["scalerAddress", "enableTLS", "unsafeSsl", "tlsCertFile"];

const COMMON_KEYS: &[&str] = &[
    "metricName",
    "policy",
    "minReplicas",
    "maxReplicas",
    "staleAfter",
];
const DRAIN_KEYS: &[&str] = &["targetDrainSeconds", "messagesPerSecondPerReplica"];
const SERVICEBUS_KEYS: &[&str] = &[
    "namespace",
    "cloud",
    "endpointSuffix",
    "endpoint",
    "queueName",
    "topicName",
    "subscriptionName",
    "messageCount",
    "activationMessageCount",
    "useRegex",
    "operation",
    "connectionFromEnv",
    "credential",
];
const PROMETHEUS_KEYS: &[&str] = &[
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "queryParameters",
    "customHeaders",
    "prometheusNamespace",
    "timeout",
    "ignoreNullValues",
    "seriesAggregation",
    "authModes",
    "bearerTokenFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "customAuthHeader",
    "customAuthValueFromEnv",
    "caFromEnv",
    "certFromEnv",
    "keyFromEnv",
    "prometheusCredential",
];
const CRON_KEYS: &[&str] = &["timezone", "start", "end", "desiredReplicas", "windows"];

/// Every key the parser reads, KEDA's reserved ones included (for fuzzing and tooling).
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    [
        RESERVED_KEYS,
        COMMON_KEYS,
        DRAIN_KEYS,
        SERVICEBUS_KEYS,
        PROMETHEUS_KEYS,
        CRON_KEYS,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// A plan from `(key, value)` pairs as KEDA sends them, for tests; panics on invalid metadata.
#[cfg(test)]
pub(crate) fn test_plan(pairs: &[(&str, &str)]) -> Plan {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(&m, Source::Keda, &Credentials::default()).expect("valid metadata")
}

pub const DEFAULT_METRIC_NAME: &str = "blended-replicas";
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// One problem with one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata key `{}`: {}", self.key, self.message)
    }
}

/// Every problem found in one trigger's metadata, in key order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct MetadataErrors(pub Vec<MetadataError>);

impl fmt::Display for MetadataErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

/// How the blended replica count is formed from the signals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// The largest per-signal count: what KEDA gives for separate triggers.
    Max,
    /// The sum of per-signal counts.
    Sum,
    /// Service Bus sized by arrival rate and backlog; the other signals act as floors.
    DrainTime {
        target_drain_seconds: f64,
        messages_per_second_per_replica: f64,
    },
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Max => f.write_str("max"),
            Policy::Sum => f.write_str("sum"),
            Policy::DrainTime {
                target_drain_seconds,
                messages_per_second_per_replica,
            } => write!(
                f,
                "drainTime (clear the backlog within {target_drain_seconds}s at \
                 {messages_per_second_per_replica} messages/s per replica)"
            ),
        }
    }
}

/// How several matching entities or series are combined into one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aggregation {
    Sum,
    Max,
    Avg,
}

impl Aggregation {
    /// Combines values; `None` for an empty input.
    pub fn apply(self, values: &[f64]) -> Option<f64> {
        if values.is_empty() {
            return None;
        }
        let sum: f64 = values.iter().sum();
        Some(match self {
            Aggregation::Sum => sum,
            Aggregation::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Aggregation::Avg => sum / values.len() as f64,
        })
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Aggregation::Sum => "sum",
            Aggregation::Max => "max",
            Aggregation::Avg => "avg",
        })
    }
}

/// A validated trigger.
#[derive(Clone, Debug)]
pub struct Plan {
    pub metric_name: String,
    pub policy: Policy,
    pub min_replicas: Option<u32>,
    pub max_replicas: Option<u32>,
    pub stale_after: Duration,
    pub servicebus: Option<ServiceBusPlan>,
    pub prometheus: Option<PrometheusPlan>,
    pub cron: Option<CronPlan>,
}

/// What a Service Bus trigger watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    Queue(String),
    Subscription { topic: String, subscription: String },
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entity::Queue(q) => write!(f, "queue `{q}`"),
            Entity::Subscription {
                topic,
                subscription,
            } => write!(f, "subscription `{subscription}` of topic `{topic}`"),
        }
    }
}

/// A parsed Service Bus connection string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionString {
    /// `https://<host>` from `Endpoint=sb://<host>/`.
    pub endpoint: Option<String>,
    pub auth: ConnectionAuth,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionAuth {
    /// `SharedAccessKeyName` + `SharedAccessKey`: the scaler signs its own tokens.
    Key { name: String, key: Secret },
    /// `SharedAccessSignature`: a ready token, used as is.
    Signature(Secret),
}

impl ConnectionString {
    /// Parses `Endpoint=sb://…/;SharedAccessKeyName=…;SharedAccessKey=…` or the
    /// `SharedAccessSignature=…` form. Errors never echo the input.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let (mut key_name, mut key, mut signature) = (None, None, None);
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err("is not a connection string (expected `Name=value;…` pairs)".into());
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => {
                    let url = url::Url::parse(value.trim())
                        .map_err(|_| "has an `Endpoint` that is not a URL".to_string())?;
                    let host = url
                        .host_str()
                        .ok_or("has an `Endpoint` with no host")?
                        .to_string();
                    let scheme = if url.scheme() == "http" {
                        "http"
                    } else {
                        "https"
                    };
                    endpoint = Some(match url.port() {
                        Some(port) => format!("{scheme}://{host}:{port}"),
                        None => format!("{scheme}://{host}"),
                    });
                }
                "sharedaccesskeyname" => key_name = Some(value.trim().to_string()),
                "sharedaccesskey" => key = Some(Secret::new(value.trim())),
                "sharedaccesssignature" => signature = Some(Secret::new(value.trim())),
                _ => {}
            }
        }
        let auth = match (key_name, key, signature) {
            (_, _, Some(sig)) => ConnectionAuth::Signature(sig),
            (Some(name), Some(key), None) if !name.is_empty() && !key.expose().is_empty() => {
                ConnectionAuth::Key { name, key }
            }
            _ => {
                return Err("has neither `SharedAccessKeyName`+`SharedAccessKey` nor \
                            `SharedAccessSignature`"
                    .into());
            }
        };
        Ok(Self { endpoint, auth })
    }
}

/// How the scaler authenticates to Service Bus.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServiceBusAuth {
    /// From `connectionFromEnv` or a named scaler-side credential.
    ConnectionString(ConnectionString),
    /// `connectionFromEnv` seen offline (`check` of a file): the name of the variable KEDA
    /// resolves at run time.
    ResolvedByKeda { variable: String },
    /// `credential` seen offline: the scaler resolves it at run time.
    NamedCredential(String),
    /// Azure AD through the scaler pod's workload identity.
    WorkloadIdentity,
}

#[derive(Clone, Debug)]
pub struct ServiceBusPlan {
    /// Base URL of the management API, `https://<namespace>.<suffix>` unless overridden.
    /// Empty only offline, when it will come from a connection string KEDA resolves.
    pub endpoint: String,
    pub entity: Entity,
    /// Entity names are anchored regular expressions (KEDA's `useRegex`).
    pub use_regex: bool,
    pub operation: Aggregation,
    pub message_count: f64,
    pub activation_message_count: f64,
    pub auth: ServiceBusAuth,
}

impl ServiceBusPlan {
    /// The compiled pattern for regex entity names, anchored at both ends.
    pub fn name_pattern(name: &str) -> Result<Regex, regex::Error> {
        Regex::new(&format!("^(?:{name})$"))
    }
}

/// How the scaler authenticates to Prometheus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrometheusAuth {
    pub bearer: Option<Secret>,
    /// User and password; the user comes from `usernameFromEnv`, so it is kept secret too.
    pub basic: Option<(Secret, Secret)>,
    pub custom: Option<(String, Secret)>,
    /// PEM client certificate and key, and an optional CA.
    pub tls: Option<PrometheusTls>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrometheusTls {
    pub ca: Option<Secret>,
    pub cert: Secret,
    pub key: Secret,
}

#[derive(Clone, Debug)]
pub struct PrometheusPlan {
    pub server_address: String,
    pub query: String,
    pub threshold: f64,
    pub activation_threshold: f64,
    pub query_parameters: Vec<(String, String)>,
    pub custom_headers: Vec<(String, Secret)>,
    pub namespace: Option<String>,
    pub timeout: Option<Duration>,
    pub ignore_null_values: bool,
    pub series_aggregation: Option<Aggregation>,
    pub auth: PrometheusAuth,
}

/// Credentials configured on the scaler itself, by name.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    servicebus: HashMap<String, Secret>,
    prometheus: HashMap<String, Secret>,
    /// `BLEND_SCALER_PROMETHEUS_CREDENTIAL_<NAME>_SERVERS`: the only servers it is sent to.
    prometheus_servers: HashMap<String, Vec<String>>,
}

/// The suffix of the variable listing a Prometheus credential's servers.
pub const SERVERS_SUFFIX: &str = "_SERVERS";

pub const SERVICEBUS_CREDENTIAL_PREFIX: &str = "BLEND_SCALER_CREDENTIAL_";
pub const PROMETHEUS_CREDENTIAL_PREFIX: &str = "BLEND_SCALER_PROMETHEUS_CREDENTIAL_";

impl Credentials {
    /// Reads `BLEND_SCALER_CREDENTIAL_<NAME>` (Service Bus connection strings) and
    /// `BLEND_SCALER_PROMETHEUS_CREDENTIAL_<NAME>` (`bearer:<token>` or `basic:<user>:<password>`).
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut creds = Self::default();
        for (name, value) in vars {
            if let Some(n) = name.strip_prefix(PROMETHEUS_CREDENTIAL_PREFIX) {
                if let Some(n) = n.strip_suffix(SERVERS_SUFFIX) {
                    let servers = value
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                    creds.prometheus_servers.insert(n.to_string(), servers);
                    continue;
                }
                creds.prometheus.insert(n.to_string(), Secret::new(value));
            } else if let Some(n) = name.strip_prefix(SERVICEBUS_CREDENTIAL_PREFIX) {
                creds.servicebus.insert(n.to_string(), Secret::new(value));
            }
        }
        creds
    }

    /// `orders-bus` is looked up as `ORDERS_BUS`.
    fn env_name(name: &str) -> String {
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    }

    fn servicebus(&self, name: &str) -> Option<&Secret> {
        self.servicebus.get(&Self::env_name(name))
    }

    fn prometheus(&self, name: &str) -> Option<&Secret> {
        self.prometheus.get(&Self::env_name(name))
    }

    /// The servers Prometheus credential `name` may be sent to; none when not configured.
    pub fn prometheus_servers(&self, name: &str) -> &[String] {
        self.prometheus_servers
            .get(&Self::env_name(name))
            .map_or(&[], Vec::as_slice)
    }
}

/// Where metadata comes from, which decides how `*FromEnv` values are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// From KEDA: `*FromEnv` values are already resolved.
    Keda,
    /// From a ScaledObject file (`check`): `*FromEnv` values are variable names, and
    /// scaler-side credentials may not exist on this machine.
    File,
}

/// Parses one trigger's metadata.
pub fn parse(
    metadata: &HashMap<String, String>,
    source: Source,
    credentials: &Credentials,
) -> Result<Plan, MetadataErrors> {
    let mut p = Parser {
        m: metadata,
        source,
        credentials,
        errors: Vec::new(),
    };
    let plan = p.plan();
    if p.errors.is_empty() {
        Ok(plan.expect("a plan exists when no error was found"))
    } else {
        p.errors.sort_by(|a, b| a.key.cmp(&b.key));
        p.errors.dedup();
        Err(MetadataErrors(p.errors))
    }
}

struct Parser<'a> {
    m: &'a HashMap<String, String>,
    source: Source,
    credentials: &'a Credentials,
    errors: Vec<MetadataError>,
}

impl Parser<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(MetadataError {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// The trimmed value, `None` when absent or blank.
    fn get(&self, key: &str) -> Option<&str> {
        self.m.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn required(&mut self, key: &str, why: &str) -> Option<String> {
        let v = self.get(key).map(str::to_string);
        if v.is_none() {
            self.err(key, format!("is required {why}"));
        }
        v
    }

    fn number(&mut self, key: &str, default: Option<f64>, positive: bool) -> Option<f64> {
        let Some(text) = self.get(key) else {
            return default;
        };
        match text.parse::<f64>() {
            Ok(v) if !v.is_finite() => self.err(key, format!("`{text}` is not a finite number")),
            Ok(v) if positive && v <= 0.0 => {
                self.err(key, format!("must be greater than 0, got `{text}`"))
            }
            Ok(v) if v < 0.0 => self.err(key, format!("must not be negative, got `{text}`")),
            Ok(v) => return Some(v),
            Err(_) => self.err(key, format!("`{text}` is not a number")),
        }
        None
    }

    fn whole(&mut self, key: &str) -> Option<u32> {
        let text = self.get(key)?;
        match text.parse::<u32>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.err(key, format!("`{text}` is not a whole number >= 0"));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.get(key).map(str::to_ascii_lowercase).as_deref() {
            None => default,
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                let msg = format!("`{other}` is not `true` or `false`");
                self.err(key, msg);
                default
            }
        }
    }

    fn duration(
        &mut self,
        key: &str,
        default: Option<Duration>,
        bare: Duration,
    ) -> Option<Duration> {
        let Some(text) = self.get(key) else {
            return default;
        };
        // A bare number is read in `bare` units (KEDA's `timeout` is milliseconds).
        let parsed = match text.parse::<u64>() {
            Ok(n) => Some(bare * n as u32),
            Err(_) => humantime::parse_duration(text).ok(),
        };
        match parsed {
            Some(d) if d.is_zero() => self.err(key, "must be longer than 0"),
            Some(d) => return Some(d),
            None => self.err(
                key,
                format!("`{text}` is not a duration such as `30s` or `2m`"),
            ),
        }
        None
    }

    fn aggregation(&mut self, key: &str) -> Option<Aggregation> {
        match self.get(key)?.to_ascii_lowercase().as_str() {
            "sum" => Some(Aggregation::Sum),
            "max" => Some(Aggregation::Max),
            "avg" => Some(Aggregation::Avg),
            other => {
                let msg = format!("`{other}` is not one of `sum`, `max`, `avg`");
                self.err(key, msg);
                None
            }
        }
    }

    fn url(&mut self, key: &str, text: &str) -> Option<String> {
        match url::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                Some(text.trim_end_matches('/').to_string())
            }
            _ => {
                self.err(key, format!("`{text}` is not an http(s) URL with a host"));
                None
            }
        }
    }

    /// A `*FromEnv` value: the secret itself from KEDA, a variable name in a file.
    fn secret(&self, key: &str) -> Option<Secret> {
        let v = self.get(key)?;
        Some(Secret::new(v))
    }

    fn plan(&mut self) -> Option<Plan> {
        self.check_shape();

        let metric_name = self
            .get("metricName")
            .unwrap_or(DEFAULT_METRIC_NAME)
            .to_string();
        if metric_name.len() > 63
            || !metric_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            self.err(
                "metricName",
                "must be at most 63 characters of lowercase letters, digits and `-`",
            );
        }
        let min_replicas = self.whole("minReplicas");
        let max_replicas = self.whole("maxReplicas");
        if let (Some(lo), Some(hi)) = (min_replicas, max_replicas)
            && lo > hi
        {
            self.err("minReplicas", format!("{lo} is more than maxReplicas {hi}"));
        }
        let stale_after = self.duration(
            "staleAfter",
            Some(DEFAULT_STALE_AFTER),
            Duration::from_secs(1),
        );
        let policy = self.policy();

        let servicebus = (self.has("queueName") || self.has("topicName"))
            .then(|| self.servicebus())
            .flatten();
        let prometheus = self
            .has("serverAddress")
            .then(|| self.prometheus())
            .flatten();
        let cron = (self.has("start") || self.has("windows"))
            .then(|| self.cron())
            .flatten();

        let sb_on = self.has("queueName") || self.has("topicName");
        let prom_on = self.has("serverAddress");
        let cron_on = self.has("start") || self.has("windows");
        self.refuse_orphans(
            SERVICEBUS_KEYS,
            sb_on,
            "the Service Bus signal (set `queueName` or `topicName`)",
        );
        self.refuse_orphans(
            PROMETHEUS_KEYS,
            prom_on,
            "the Prometheus signal (set `serverAddress`)",
        );
        self.refuse_orphans(
            CRON_KEYS,
            cron_on,
            "the cron signal (set `start` or `windows`)",
        );
        if !(sb_on || prom_on || cron_on) {
            self.err(
                "queueName",
                "no signal is configured: set `queueName` or `topicName` (Service Bus), \
                 `serverAddress` (Prometheus), or `start` or `windows` (cron)",
            );
        }
        if matches!(policy, Some(Policy::DrainTime { .. })) && !sb_on {
            self.err("policy", "`drainTime` needs the Service Bus signal");
        }

        if !self.errors.is_empty() {
            return None;
        }
        Some(Plan {
            metric_name,
            policy: policy?,
            min_replicas,
            max_replicas,
            stale_after: stale_after?,
            servicebus,
            prometheus,
            cron,
        })
    }

    /// Size limits and unknown keys, before anything is read.
    fn check_shape(&mut self) {
        if self.m.len() > MAX_KEYS {
            let n = self.m.len();
            self.err(
                "metadata",
                format!("has {n} keys; at most {MAX_KEYS} are accepted"),
            );
        }
        let mut keys: Vec<&String> = self.m.keys().collect();
        keys.sort();
        for key in keys {
            let known = [
                COMMON_KEYS,
                DRAIN_KEYS,
                SERVICEBUS_KEYS,
                PROMETHEUS_KEYS,
                CRON_KEYS,
            ]
            .iter()
            .any(|group| group.contains(&key.as_str()))
                || RESERVED_KEYS.contains(&key.as_str());
            if !known {
                let shown: String = key.chars().take(64).collect();
                let hint = suggestion(key)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                self.err(&shown, format!("is not a known key{hint}"));
            } else if self.m[key].len() > MAX_VALUE_BYTES {
                self.err(key, format!("is longer than {MAX_VALUE_BYTES} bytes"));
            }
        }
    }

    fn refuse_orphans(&mut self, keys: &[&str], on: bool, signal: &str) {
        if on {
            return;
        }
        for key in keys {
            if self.m.contains_key(*key) {
                self.err(key, format!("is only used with {signal}"));
            }
        }
    }

    fn policy(&mut self) -> Option<Policy> {
        let name = self.get("policy").unwrap_or("max").to_string();
        let policy = match name.as_str() {
            "max" => Some(Policy::Max),
            "sum" => Some(Policy::Sum),
            "drainTime" => {
                let t = self.number("targetDrainSeconds", None, true);
                let r = self.number("messagesPerSecondPerReplica", None, true);
                for key in DRAIN_KEYS {
                    if !self.has(key) {
                        self.err(key, "is required with policy `drainTime`");
                    }
                }
                return Some(Policy::DrainTime {
                    target_drain_seconds: t?,
                    messages_per_second_per_replica: r?,
                });
            }
            other => {
                let msg = format!("`{other}` is not one of `max`, `sum`, `drainTime`");
                self.err("policy", msg);
                None
            }
        };
        for key in DRAIN_KEYS {
            if self.m.contains_key(*key) {
                self.err(key, "is only used with policy `drainTime`");
            }
        }
        policy
    }

    fn servicebus(&mut self) -> Option<ServiceBusPlan> {
        let entity = match (self.get("queueName"), self.get("topicName")) {
            (Some(_), Some(_)) => {
                self.err("topicName", "cannot be set together with `queueName`");
                None
            }
            (Some(q), None) => {
                let q = q.to_string();
                if self.m.contains_key("subscriptionName") {
                    self.err("subscriptionName", "is only used with `topicName`");
                }
                Some(Entity::Queue(q))
            }
            (None, Some(t)) => {
                let topic = t.to_string();
                let sub = self.required("subscriptionName", "with `topicName`");
                sub.map(|subscription| Entity::Subscription {
                    topic,
                    subscription,
                })
            }
            (None, None) => None,
        };
        let use_regex = self.boolean("useRegex", false);
        if use_regex {
            let names: Vec<(&str, String)> = match &entity {
                Some(Entity::Queue(q)) => vec![("queueName", q.clone())],
                Some(Entity::Subscription {
                    topic,
                    subscription,
                }) => vec![
                    ("topicName", topic.clone()),
                    ("subscriptionName", subscription.clone()),
                ],
                None => vec![],
            };
            for (key, name) in names {
                if let Err(e) = ServiceBusPlan::name_pattern(&name) {
                    self.err(key, format!("is not a valid regular expression: {e}"));
                }
            }
        } else {
            if self.m.contains_key("operation") {
                self.err("operation", "is only used with `useRegex: true`");
            }
            for key in ["queueName", "topicName", "subscriptionName"] {
                if self.get(key).is_some_and(|n| !is_entity_name(n)) {
                    self.err(
                        key,
                        "must be a Service Bus entity name: letters, digits, `.`, `-`, `_` \
                         (no `/`, `..`, `?`, `#`), at most 260 characters",
                    );
                }
            }
        }
        let operation = self.aggregation("operation").unwrap_or(Aggregation::Sum);
        let message_count = self.number("messageCount", Some(5.0), true);
        let activation_message_count = self.number("activationMessageCount", Some(0.0), false);
        let (auth, cs_endpoint) = self.servicebus_auth();
        let endpoint = self.servicebus_endpoint(cs_endpoint, &auth);
        Some(ServiceBusPlan {
            endpoint: endpoint?,
            entity: entity?,
            use_regex,
            operation,
            message_count: message_count?,
            activation_message_count: activation_message_count?,
            auth: auth?,
        })
    }

    fn servicebus_auth(&mut self) -> (Option<ServiceBusAuth>, Option<String>) {
        if let Some(secret) = self.secret("connectionFromEnv") {
            if self.m.contains_key("credential") {
                self.err(
                    "credential",
                    "cannot be set together with `connectionFromEnv`",
                );
            }
            // In a file the value is the variable's name, unless someone pasted the string.
            if self.source == Source::File && !secret.expose().contains('=') {
                let variable = secret.expose().to_string();
                return (Some(ServiceBusAuth::ResolvedByKeda { variable }), None);
            }
            return match ConnectionString::parse(secret.expose()) {
                Ok(cs) => {
                    let ep = cs.endpoint.clone();
                    (Some(ServiceBusAuth::ConnectionString(cs)), ep)
                }
                Err(e) => {
                    self.err("connectionFromEnv", format!("the value {e}"));
                    (None, None)
                }
            };
        }
        if let Some(name) = self.get("credential").map(str::to_string) {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                self.err("credential", "must be letters, digits, `-`, `_` or `.`");
                return (None, None);
            }
            let env = format!(
                "{SERVICEBUS_CREDENTIAL_PREFIX}{}",
                Credentials::env_name(&name)
            );
            return match (self.credentials.servicebus(&name), self.source) {
                (Some(secret), _) => match ConnectionString::parse(secret.expose()) {
                    Ok(cs) => {
                        let ep = cs.endpoint.clone();
                        (Some(ServiceBusAuth::ConnectionString(cs)), ep)
                    }
                    Err(e) => {
                        self.err("credential", format!("the scaler's `{env}` {e}"));
                        (None, None)
                    }
                },
                (None, Source::File) => (Some(ServiceBusAuth::NamedCredential(name)), None),
                (None, Source::Keda) => {
                    self.err(
                        "credential",
                        format!("`{name}` is not configured on the scaler (set `{env}`)"),
                    );
                    (None, None)
                }
            };
        }
        (Some(ServiceBusAuth::WorkloadIdentity), None)
    }

    fn servicebus_endpoint(
        &mut self,
        from_connection: Option<String>,
        auth: &Option<ServiceBusAuth>,
    ) -> Option<String> {
        let suffix = match self.get("cloud").unwrap_or("AzurePublicCloud") {
            "AzurePublicCloud" => Some("servicebus.windows.net".to_string()),
            "AzureUSGovernmentCloud" => Some("servicebus.usgovcloudapi.net".to_string()),
            "AzureChinaCloud" => Some("servicebus.chinacloudapi.cn".to_string()),
            "Private" => {
                let s = self.required("endpointSuffix", "with `cloud: Private`");
                s.map(|s| s.trim_start_matches('.').to_string())
            }
            other => {
                let msg = format!(
                    "`{other}` is not one of `AzurePublicCloud`, `AzureUSGovernmentCloud`, \
                     `AzureChinaCloud`, `Private`"
                );
                self.err("cloud", msg);
                None
            }
        };
        if self.m.contains_key("endpointSuffix") && self.get("cloud") != Some("Private") {
            self.err("endpointSuffix", "is only used with `cloud: Private`");
        }
        if let Some(ep) = self.get("endpoint").map(str::to_string) {
            return self.url("endpoint", &ep);
        }
        if let Some(ep) = from_connection {
            return Some(ep);
        }
        if let Some(ns) = self.get("namespace").map(str::to_string) {
            let valid = !ns.is_empty()
                && ns.len() <= 50
                && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                self.err(
                    "namespace",
                    "must be a Service Bus namespace name (letters, digits, `-`)",
                );
                return None;
            }
            return suffix.map(|s| format!("https://{ns}.{s}"));
        }
        match auth {
            // Auth already failed and said so; a missing endpoint would only repeat it.
            None => None,
            // The connection string KEDA resolves will carry the endpoint.
            Some(ServiceBusAuth::ResolvedByKeda { .. } | ServiceBusAuth::NamedCredential(_)) => {
                Some(String::new())
            }
            Some(ServiceBusAuth::ConnectionString(_)) => {
                self.err(
                    "namespace",
                    "is required: the connection string has no `Endpoint`",
                );
                None
            }
            Some(ServiceBusAuth::WorkloadIdentity) => {
                self.err(
                    "namespace",
                    "is required (or `endpoint`, or a connection string)",
                );
                None
            }
        }
    }

    fn pairs(&mut self, key: &str) -> Vec<(String, String)> {
        let Some(text) = self.get(key).map(str::to_string) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, part) in text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            match part.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    out.push((k.trim().to_string(), v.trim().to_string()))
                }
                _ => self.err(key, format!("entry {} is not `name=value`", i + 1)),
            }
        }
        out
    }

    fn prometheus(&mut self) -> Option<PrometheusPlan> {
        let server = self.get("serverAddress").map(str::to_string)?;
        let server_address = self.url("serverAddress", &server);
        let query = self.required("query", "with `serverAddress`");
        let threshold = if self.has("threshold") {
            self.number("threshold", None, true)
        } else {
            self.err("threshold", "is required with `serverAddress`");
            None
        };
        let activation_threshold = self.number("activationThreshold", Some(0.0), false);
        let query_parameters = self.pairs("queryParameters");
        let custom_headers: Vec<(String, Secret)> = self
            .pairs("customHeaders")
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect();
        for (name, _) in &custom_headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(
                    "customHeaders",
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
        let namespace = self.get("prometheusNamespace").map(str::to_string);
        let timeout = self.duration("timeout", None, Duration::from_millis(1));
        let ignore_null_values = self.boolean("ignoreNullValues", true);
        let series_aggregation = self.aggregation("seriesAggregation");
        let auth = self.prometheus_auth();
        Some(PrometheusPlan {
            server_address: server_address?,
            query: query?,
            threshold: threshold?,
            activation_threshold: activation_threshold?,
            query_parameters,
            custom_headers,
            namespace,
            timeout,
            ignore_null_values,
            series_aggregation,
            auth,
        })
    }

    fn prometheus_auth(&mut self) -> PrometheusAuth {
        let mut auth = PrometheusAuth::default();
        let modes: BTreeSet<String> = self
            .get("authModes")
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_ascii_lowercase())
            .filter(|m| !m.is_empty())
            .collect();
        for mode in &modes {
            if !matches!(mode.as_str(), "bearer" | "basic" | "tls" | "custom") {
                self.err(
                    "authModes",
                    format!("`{mode}` is not one of `bearer`, `basic`, `tls`, `custom`"),
                );
            }
        }
        let mut from_credential = None;
        if let Some(name) = self.get("prometheusCredential").map(str::to_string) {
            let env = format!(
                "{PROMETHEUS_CREDENTIAL_PREFIX}{}",
                Credentials::env_name(&name)
            );
            match (self.credentials.prometheus(&name).cloned(), self.source) {
                (Some(secret), _) => match parse_prometheus_credential(secret.expose()) {
                    Ok(c) => from_credential = Some(c),
                    Err(e) => self.err("prometheusCredential", format!("the scaler's `{env}` {e}")),
                },
                (None, Source::File) => {}
                (None, Source::Keda) => self.err(
                    "prometheusCredential",
                    format!("`{name}` is not configured on the scaler (set `{env}`)"),
                ),
            }
        }
        let later = self.source == Source::File;
        let wants = |m: &str| modes.contains(m);
        let credential_covers = self.has("prometheusCredential");
        if wants("bearer") {
            match (self.secret("bearerTokenFromEnv"), &from_credential) {
                (Some(t), _) => auth.bearer = Some(t),
                (
                    None,
                    Some(PrometheusAuth {
                        bearer: Some(t), ..
                    }),
                ) => auth.bearer = Some(t.clone()),
                (None, _) if credential_covers && later => {}
                _ => self.err("bearerTokenFromEnv", "is required with `authModes: bearer`"),
            }
        }
        if wants("basic") {
            let user = self.secret("usernameFromEnv");
            let pass = self.secret("passwordFromEnv");
            match (user, pass, &from_credential) {
                (Some(u), Some(p), _) => auth.basic = Some((u, p)),
                (None, None, Some(PrometheusAuth { basic: Some(b), .. })) => {
                    auth.basic = Some(b.clone())
                }
                (None, None, _) if credential_covers && later => {}
                (u, p, _) => {
                    if u.is_none() {
                        self.err("usernameFromEnv", "is required with `authModes: basic`");
                    }
                    if p.is_none() {
                        self.err("passwordFromEnv", "is required with `authModes: basic`");
                    }
                }
            }
        }
        if wants("custom") {
            let header = self.required("customAuthHeader", "with `authModes: custom`");
            let value = self.secret("customAuthValueFromEnv");
            if value.is_none() {
                self.err(
                    "customAuthValueFromEnv",
                    "is required with `authModes: custom`",
                );
            }
            if let Some(h) = &header
                && reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                self.err(
                    "customAuthHeader",
                    format!("`{h}` is not a valid header name"),
                );
            }
            auth.custom = header.zip(value);
        }
        if wants("tls") {
            let cert = self.secret("certFromEnv");
            let key = self.secret("keyFromEnv");
            if cert.is_none() {
                self.err("certFromEnv", "is required with `authModes: tls`");
            }
            if key.is_none() {
                self.err("keyFromEnv", "is required with `authModes: tls`");
            }
            let ca = self.secret("caFromEnv");
            if let (Some(cert), Some(key)) = (cert, key) {
                auth.tls = Some(PrometheusTls { ca, cert, key });
            }
        }
        // A credential alone, with no authModes, applies as it is.
        if modes.is_empty()
            && let Some(c) = from_credential
        {
            auth = c;
        }
        for (key, mode) in [
            ("bearerTokenFromEnv", "bearer"),
            ("usernameFromEnv", "basic"),
            ("passwordFromEnv", "basic"),
            ("customAuthHeader", "custom"),
            ("customAuthValueFromEnv", "custom"),
            ("certFromEnv", "tls"),
            ("keyFromEnv", "tls"),
            ("caFromEnv", "tls"),
        ] {
            if self.m.contains_key(key) && !wants(mode) {
                self.err(key, format!("is only used with `authModes: {mode}`"));
            }
        }
        auth
    }

    fn cron(&mut self) -> Option<CronPlan> {
        let tz_text = self.get("timezone").unwrap_or("UTC").to_string();
        let timezone = match tz_text.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.err(
                    "timezone",
                    format!("`{tz_text}` is not an IANA time zone such as `Europe/Berlin`"),
                );
                None
            }
        };
        let windows = if let Some(text) = self.get("windows").map(str::to_string) {
            for key in ["start", "end", "desiredReplicas"] {
                if self.m.contains_key(key) {
                    self.err(key, "cannot be set together with `windows`");
                }
            }
            match cron::parse_windows(&text) {
                Ok(w) => Some(w),
                Err(e) => {
                    self.err("windows", e);
                    None
                }
            }
        } else {
            let start = self.required("start", "for the cron signal");
            let end = self.required("end", "with `start`");
            let replicas = if self.has("desiredReplicas") {
                self.whole("desiredReplicas")
            } else {
                self.err("desiredReplicas", "is required with `start`");
                None
            };
            let (start, end, replicas) = (start?, end?, replicas?);
            let window = match (cron::parse_expression(&start), cron::parse_expression(&end)) {
                (Err(e), _) => {
                    self.err("start", e);
                    return None;
                }
                (_, Err(e)) => {
                    self.err("end", e);
                    return None;
                }
                _ => Window::new(&start, &end, replicas),
            };
            match window {
                Ok(w) => Some(vec![w]),
                Err(e) => {
                    self.err("end", e);
                    None
                }
            }
        };
        Some(CronPlan {
            timezone: timezone?,
            windows: windows?,
        })
    }
}

/// A name that stays one URL path segment: a tenant cannot pick the request path.
fn is_entity_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 260
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn parse_prometheus_credential(text: &str) -> Result<PrometheusAuth, String> {
    let mut auth = PrometheusAuth::default();
    if let Some(token) = text.strip_prefix("bearer:") {
        auth.bearer = Some(Secret::new(token));
    } else if let Some(rest) = text.strip_prefix("basic:") {
        let (user, pass) = rest
            .split_once(':')
            .ok_or("must be `basic:<user>:<password>`")?;
        auth.basic = Some((Secret::new(user), Secret::new(pass)));
    } else {
        return Err("must start with `bearer:` or `basic:`".into());
    }
    Ok(auth)
}

/// The known key closest to a typo, when one is close.
fn suggestion(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    [
        COMMON_KEYS,
        DRAIN_KEYS,
        SERVICEBUS_KEYS,
        PROMETHEUS_KEYS,
        CRON_KEYS,
    ]
    .iter()
    .flat_map(|g| g.iter().copied())
    .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
    .filter(|(d, k)| *d <= 2.max(k.len() / 5))
    .min_by_key(|(d, _)| *d)
    .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "metric {} (target 1), policy {}",
            self.metric_name, self.policy
        )?;
        if self.min_replicas.is_some() || self.max_replicas.is_some() {
            let lo = self.min_replicas.map_or("-".into(), |v| v.to_string());
            let hi = self.max_replicas.map_or("-".into(), |v| v.to_string());
            writeln!(f, "  clamp: min {lo}, max {hi}")?;
        }
        writeln!(
            f,
            "  stale after: {}",
            humantime::format_duration(self.stale_after)
        )?;
        if let Some(sb) = &self.servicebus {
            let endpoint = if sb.endpoint.is_empty() {
                "from the connection string"
            } else {
                &sb.endpoint
            };
            let regex = if sb.use_regex {
                format!(" (regex, {} of matches)", sb.operation)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  servicebus: {}{regex} at {endpoint}; {} messages per replica, active above {}",
                sb.entity, sb.message_count, sb.activation_message_count
            )?;
            let auth = match &sb.auth {
                ServiceBusAuth::ConnectionString(cs) => match &cs.auth {
                    ConnectionAuth::Key { name, .. } => {
                        format!("shared access key `{name}` (key <redacted>)")
                    }
                    ConnectionAuth::Signature(_) => "shared access signature <redacted>".into(),
                },
                ServiceBusAuth::ResolvedByKeda { variable } => {
                    format!("connection string from the target's `{variable}`, resolved by KEDA")
                }
                ServiceBusAuth::NamedCredential(n) => format!("scaler credential `{n}`"),
                ServiceBusAuth::WorkloadIdentity => "Azure AD workload identity".into(),
            };
            writeln!(f, "    auth: {auth}")?;
        }
        if let Some(p) = &self.prometheus {
            writeln!(
                f,
                "  prometheus: {} at {}; threshold {}, active above {}",
                p.query.trim(),
                p.server_address,
                p.threshold,
                p.activation_threshold
            )?;
            let mut extras = Vec::new();
            if !p.query_parameters.is_empty() {
                let params: Vec<String> = p
                    .query_parameters
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                extras.push(format!("parameters {}", params.join(",")));
            }
            if !p.custom_headers.is_empty() {
                let names: Vec<&str> = p.custom_headers.iter().map(|(k, _)| k.as_str()).collect();
                extras.push(format!("headers {} (values <redacted>)", names.join(",")));
            }
            if let Some(ns) = &p.namespace {
                extras.push(format!("namespace {ns}"));
            }
            if let Some(t) = p.timeout {
                extras.push(format!("timeout {}", humantime::format_duration(t)));
            }
            extras.push(if p.ignore_null_values {
                "empty result counts as 0".into()
            } else {
                "empty result is an error".into()
            });
            if let Some(a) = p.series_aggregation {
                extras.push(format!("{a} of series"));
            }
            let mut auth = Vec::new();
            if p.auth.bearer.is_some() {
                auth.push("bearer <redacted>".to_string());
            }
            if p.auth.basic.is_some() {
                auth.push("basic <redacted>".to_string());
            }
            if let Some((h, _)) = &p.auth.custom {
                auth.push(format!("header {h} <redacted>"));
            }
            if p.auth.tls.is_some() {
                auth.push("client certificate <redacted>".into());
            }
            if !auth.is_empty() {
                extras.push(format!("auth {}", auth.join(", ")));
            }
            writeln!(f, "    {}", extras.join("; "))?;
        }
        if let Some(c) = &self.cron {
            writeln!(f, "  cron ({}):", c.timezone)?;
            for w in &c.windows {
                writeln!(f, "    {w}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keda(pairs: &[(&str, &str)]) -> Result<Plan, MetadataErrors> {
        parse(&md(pairs), Source::Keda, &Credentials::default())
    }

    fn keys(errs: &MetadataErrors) -> Vec<&str> {
        errs.0.iter().map(|e| e.key.as_str()).collect()
    }

    const CS: &str = "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=scaler;SharedAccessKey=c2VjcmV0PT0=";

    #[test]
    fn a_cron_trigger_parses_with_defaults() {
        let plan = keda(&[
            ("scalerAddress", "blend-scaler:9090"),
            ("start", "0 8 * * 1-5"),
            ("end", "0 20 * * 1-5"),
            ("desiredReplicas", "5"),
            ("timezone", "America/New_York"),
        ])
        .unwrap();
        assert_eq!(plan.metric_name, DEFAULT_METRIC_NAME);
        assert_eq!(plan.policy, Policy::Max);
        assert_eq!(plan.stale_after, Duration::from_secs(60));
        let cron = plan.cron.unwrap();
        assert_eq!(cron.timezone, chrono_tz::America::New_York);
        assert_eq!(cron.windows[0].replicas, 5);
    }

    #[test]
    fn unknown_keys_are_refused_with_a_suggestion() {
        let errs = keda(&[
            ("start", "0 8 * * *"),
            ("end", "0 9 * * *"),
            ("desiredReplicas", "1"),
            ("queuName", "x"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["queuName"]);
        assert!(
            errs.to_string().contains("did you mean `queueName`"),
            "{errs}"
        );
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let errs = keda(&[
            ("queueName", "orders"),
            ("namespace", "orders"),
            ("messageCount", "zero"),
            ("serverAddress", "not a url"),
            ("query", "up"),
            ("threshold", "-1"),
            ("timezone", "Mars/Olympus"),
            ("start", "0 8 * * *"),
            ("end", "0 8 * * *"),
            ("desiredReplicas", "2"),
        ])
        .unwrap_err();
        assert_eq!(
            keys(&errs),
            [
                "end",
                "messageCount",
                "serverAddress",
                "threshold",
                "timezone"
            ]
        );
    }

    #[test]
    fn reserved_keda_keys_are_ignored() {
        let plan = keda(&[
            ("scalerAddress", "x:1"),
            ("enableTLS", "true"),
            ("unsafeSsl", "false"),
            ("queueName", "q"),
            ("namespace", "ns"),
        ])
        .unwrap();
        let sb = plan.servicebus.unwrap();
        assert_eq!(sb.endpoint, "https://ns.servicebus.windows.net");
        assert_eq!(sb.auth, ServiceBusAuth::WorkloadIdentity);
        assert_eq!(sb.message_count, 5.0);
    }

    #[test]
    fn no_signal_at_all_is_an_error() {
        let errs = keda(&[("metricName", "x")]).unwrap_err();
        assert!(
            errs.to_string().contains("no signal is configured"),
            "{errs}"
        );
    }

    #[test]
    fn size_limits_are_enforced() {
        let mut m = md(&[("queueName", "q"), ("namespace", "ns")]);
        for i in 0..70 {
            m.insert(format!("k{i}"), "v".into());
        }
        let errs = parse(&m, Source::Keda, &Credentials::default()).unwrap_err();
        assert!(keys(&errs).contains(&"metadata"));
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        let errs = keda(&[("queueName", &big), ("namespace", "ns")]).unwrap_err();
        assert!(
            errs.to_string().contains("longer than 8192 bytes"),
            "{errs}"
        );
    }

    #[test]
    fn a_connection_string_gives_endpoint_and_key_and_never_shows_the_key() {
        let plan = keda(&[("queueName", "q"), ("connectionFromEnv", CS)]).unwrap();
        let sb = plan.servicebus.as_ref().unwrap();
        assert_eq!(sb.endpoint, "https://orders.servicebus.windows.net");
        let ServiceBusAuth::ConnectionString(cs) = &sb.auth else {
            panic!("expected a connection string")
        };
        assert!(
            matches!(&cs.auth, ConnectionAuth::Key { name, key } if name == "scaler" && key.expose() == "c2VjcmV0PT0=")
        );
        for shown in [format!("{plan}"), format!("{plan:?}")] {
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
        }
    }

    #[test]
    fn an_explicit_endpoint_wins_over_the_connection_string() {
        let plan = keda(&[
            ("queueName", "q"),
            ("connectionFromEnv", CS),
            ("endpoint", "http://127.0.0.1:8080/"),
        ])
        .unwrap();
        assert_eq!(plan.servicebus.unwrap().endpoint, "http://127.0.0.1:8080");
    }

    #[test]
    fn a_broken_connection_string_is_named_but_not_echoed() {
        let errs = keda(&[
            ("queueName", "q"),
            ("connectionFromEnv", "SharedAccessKey=topsecret"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["connectionFromEnv"]);
        assert!(!errs.to_string().contains("topsecret"));
    }

    #[test]
    fn in_a_file_connection_from_env_is_a_variable_name() {
        let plan = parse(
            &md(&[
                ("queueName", "q"),
                ("namespace", "bus"),
                ("connectionFromEnv", "SERVICEBUS_CONNECTION"),
            ]),
            Source::File,
            &Credentials::default(),
        )
        .unwrap();
        assert!(plan.to_string().contains("SERVICEBUS_CONNECTION"));
    }

    #[test]
    fn a_named_credential_is_read_from_the_scaler_environment() {
        let creds = Credentials::from_vars([(
            format!("{SERVICEBUS_CREDENTIAL_PREFIX}ORDERS_BUS"),
            CS.to_string(),
        )]);
        let plan = parse(
            &md(&[("queueName", "q"), ("credential", "orders-bus")]),
            Source::Keda,
            &creds,
        )
        .unwrap();
        assert_eq!(
            plan.servicebus.unwrap().endpoint,
            "https://orders.servicebus.windows.net"
        );
        let errs = keda(&[("queueName", "q"), ("credential", "missing")]).unwrap_err();
        assert!(
            errs.to_string().contains("BLEND_SCALER_CREDENTIAL_MISSING"),
            "{errs}"
        );
    }

    #[test]
    fn clouds_pick_their_suffix_and_private_needs_one() {
        let plan = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("cloud", "AzureChinaCloud"),
        ])
        .unwrap();
        assert_eq!(
            plan.servicebus.unwrap().endpoint,
            "https://ns.servicebus.chinacloudapi.cn"
        );
        let errs = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("cloud", "Private"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["endpointSuffix"]);
        let plan = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("cloud", "Private"),
            ("endpointSuffix", "sb.local"),
        ])
        .unwrap();
        assert_eq!(plan.servicebus.unwrap().endpoint, "https://ns.sb.local");
    }

    #[test]
    fn entity_names_cannot_choose_the_request_path() {
        for (key, name) in [
            ("queueName", "latest/meta-data/iam"),
            ("queueName", ".."),
            ("queueName", "a..b"),
            ("queueName", "q?x=1"),
            ("queueName", "q#f"),
            ("queueName", "q%2F"),
        ] {
            let errs = keda(&[(key, name), ("namespace", "ns")]).unwrap_err();
            assert_eq!(keys(&errs), [key], "{name}");
        }
        let errs = keda(&[
            ("topicName", "t/../x"),
            ("subscriptionName", "s?"),
            ("namespace", "ns"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["subscriptionName", "topicName"]);
        assert!(keda(&[("queueName", "orders.v2_x-1"), ("namespace", "ns")]).is_ok());
        // A regex is matched against listed names, never put in a path.
        assert!(
            keda(&[
                ("queueName", "q.*"),
                ("useRegex", "true"),
                ("namespace", "ns")
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_topic_needs_a_subscription() {
        let errs = keda(&[("topicName", "t"), ("namespace", "ns")]).unwrap_err();
        assert_eq!(keys(&errs), ["subscriptionName"]);
        let plan = keda(&[
            ("topicName", "t"),
            ("subscriptionName", "s"),
            ("namespace", "ns"),
        ])
        .unwrap();
        assert_eq!(
            plan.servicebus.unwrap().entity,
            Entity::Subscription {
                topic: "t".into(),
                subscription: "s".into()
            }
        );
    }

    #[test]
    fn regex_names_must_compile_and_operation_needs_regex() {
        let errs = keda(&[
            ("queueName", "orders-("),
            ("namespace", "ns"),
            ("useRegex", "true"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["queueName"]);
        let errs = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("operation", "max"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["operation"]);
        let plan = keda(&[
            ("queueName", "orders-.*"),
            ("namespace", "ns"),
            ("useRegex", "true"),
            ("operation", "max"),
        ])
        .unwrap();
        assert_eq!(plan.servicebus.unwrap().operation, Aggregation::Max);
        assert!(
            ServiceBusPlan::name_pattern("orders-.*")
                .unwrap()
                .is_match("orders-eu")
        );
        assert!(
            !ServiceBusPlan::name_pattern("orders")
                .unwrap()
                .is_match("orders-eu")
        );
    }

    #[test]
    fn keys_of_an_unconfigured_signal_are_refused() {
        let errs = keda(&[
            ("start", "0 8 * * *"),
            ("end", "0 9 * * *"),
            ("desiredReplicas", "1"),
            ("messageCount", "3"),
            ("threshold", "2"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["messageCount", "threshold"]);
    }

    #[test]
    fn prometheus_keys_parse_with_kedas_defaults() {
        let plan = keda(&[
            ("serverAddress", "http://prometheus:9090"),
            ("query", "sum(rate(http_requests_total[2m]))"),
            ("threshold", "200"),
            ("queryParameters", "dedup=true, partial_response=false"),
            ("customHeaders", "X-Scope-OrgID=tenant-a"),
            ("timeout", "1500"),
        ])
        .unwrap();
        let p = plan.prometheus.unwrap();
        assert_eq!(p.threshold, 200.0);
        assert_eq!(p.activation_threshold, 0.0);
        assert!(p.ignore_null_values);
        assert_eq!(p.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.query_parameters.len(), 2);
        assert_eq!(p.custom_headers[0].1.expose(), "tenant-a");
    }

    #[test]
    fn prometheus_auth_modes_need_their_keys() {
        let base = [
            ("serverAddress", "http://p:9090"),
            ("query", "up"),
            ("threshold", "1"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            keda(&v)
        };
        let errs = with(&[("authModes", "bearer,basic")]).unwrap_err();
        assert_eq!(
            keys(&errs),
            ["bearerTokenFromEnv", "passwordFromEnv", "usernameFromEnv"]
        );
        let plan = with(&[("authModes", "bearer"), ("bearerTokenFromEnv", "tok-123")]).unwrap();
        assert_eq!(
            plan.prometheus
                .as_ref()
                .unwrap()
                .auth
                .bearer
                .as_ref()
                .unwrap()
                .expose(),
            "tok-123"
        );
        assert!(!plan.to_string().contains("tok-123"));
        let errs = with(&[("bearerTokenFromEnv", "tok")]).unwrap_err();
        assert_eq!(keys(&errs), ["bearerTokenFromEnv"]);
        let errs = with(&[("authModes", "kerberos")]).unwrap_err();
        assert_eq!(keys(&errs), ["authModes"]);
    }

    #[test]
    fn a_prometheus_credential_supplies_basic_auth() {
        let creds = Credentials::from_vars([(
            format!("{PROMETHEUS_CREDENTIAL_PREFIX}MON"),
            "basic:scaler:pa55".to_string(),
        )]);
        let plan = parse(
            &md(&[
                ("serverAddress", "http://p:9090"),
                ("query", "up"),
                ("threshold", "1"),
                ("prometheusCredential", "mon"),
            ]),
            Source::Keda,
            &creds,
        )
        .unwrap();
        let (user, pass) = plan.prometheus.unwrap().auth.basic.unwrap();
        assert_eq!((user.expose(), pass.expose()), ("scaler", "pa55"));
    }

    #[test]
    fn drain_time_needs_its_keys_and_service_bus() {
        let errs = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("policy", "drainTime"),
        ])
        .unwrap_err();
        assert_eq!(
            keys(&errs),
            ["messagesPerSecondPerReplica", "targetDrainSeconds"]
        );
        let plan = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("policy", "drainTime"),
            ("targetDrainSeconds", "120"),
            ("messagesPerSecondPerReplica", "2.5"),
        ])
        .unwrap();
        assert_eq!(
            plan.policy,
            Policy::DrainTime {
                target_drain_seconds: 120.0,
                messages_per_second_per_replica: 2.5
            }
        );
        let errs = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("targetDrainSeconds", "5"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["targetDrainSeconds"]);
        let errs = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("policy", "fastest"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["policy"]);
    }

    #[test]
    fn min_above_max_is_refused() {
        let errs = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("minReplicas", "5"),
            ("maxReplicas", "2"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["minReplicas"]);
    }

    #[test]
    fn windows_and_start_cannot_be_mixed() {
        let errs = keda(&[
            ("windows", "0 8 * * * -> 0 9 * * * = 1"),
            ("start", "0 8 * * *"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["start"]);
        let plan = keda(&[(
            "windows",
            "0 8 * * * -> 0 9 * * * = 1; 0 9 * * * -> 0 10 * * * = 4",
        )])
        .unwrap();
        assert_eq!(plan.cron.unwrap().windows.len(), 2);
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        let plan = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("staleAfter", "2m"),
        ])
        .unwrap();
        assert_eq!(plan.stale_after, Duration::from_secs(120));
        let plan = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("staleAfter", "90"),
        ])
        .unwrap();
        assert_eq!(plan.stale_after, Duration::from_secs(90));
        let errs = keda(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("staleAfter", "soon"),
        ])
        .unwrap_err();
        assert_eq!(keys(&errs), ["staleAfter"]);
    }
}
