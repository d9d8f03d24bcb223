//! The typed plan a trigger's metadata parses into, and how `check` prints it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use crate::access::{NAMESPACES_SUFFIX, Namespaces};
use crate::cron::CronPlan;
use crate::intern::{Interner, intern};
use crate::secret::Secret;

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

impl Policy {
    /// Whether it decides on the Service Bus backlog's rate, not only its value.
    pub fn reads_rate(&self) -> bool {
        matches!(self, Policy::DrainTime { .. })
    }
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
    pub metric_name: Arc<str>,
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
    Queue(Arc<str>),
    Subscription {
        topic: Arc<str>,
        subscription: Arc<str>,
    },
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
    pub endpoint: Option<Arc<str>>,
    pub auth: ConnectionAuth,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionAuth {
    /// `SharedAccessKeyName` + `SharedAccessKey`: the scaler signs its own tokens.
    Key { name: Arc<str>, key: Secret },
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
                    endpoint = Some(intern(&match url.port() {
                        Some(port) => format!("{scheme}://{host}:{port}"),
                        None => format!("{scheme}://{host}"),
                    }));
                }
                "sharedaccesskeyname" => key_name = Some(intern(value.trim())),
                "sharedaccesskey" => key = Some(Secret::shared(value.trim())),
                "sharedaccesssignature" => signature = Some(Secret::shared(value.trim())),
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

impl ServiceBusAuth {
    /// The one shared copy of `self` (equal credentials only, as [`PrometheusAuth::shared`]).
    pub fn shared(self) -> Arc<Self> {
        static AUTHS: Interner<ServiceBusAuth> = Interner::new();
        AUTHS.share(self)
    }
}

#[derive(Clone, Debug)]
pub struct ServiceBusPlan {
    /// Base URL of the management API, `https://<namespace>.<suffix>` unless overridden.
    /// Empty only offline, when it will come from a connection string KEDA resolves.
    pub endpoint: Arc<str>,
    pub entity: Entity,
    /// Entity names are anchored regular expressions (KEDA's `useRegex`).
    pub use_regex: bool,
    pub operation: Aggregation,
    pub message_count: f64,
    pub activation_message_count: f64,
    /// Shared by every plan with equal credentials ([`ServiceBusAuth::shared`]).
    pub auth: Arc<ServiceBusAuth>,
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

impl PrometheusAuth {
    /// The one shared copy of `self` (equal auths only: two tenants' different credentials
    /// are never one copy).
    pub fn shared(self) -> Arc<Self> {
        static AUTHS: Interner<PrometheusAuth> = Interner::new();
        AUTHS.share(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrometheusTls {
    pub ca: Option<Secret>,
    pub cert: Secret,
    pub key: Secret,
}

#[derive(Clone, Debug)]
pub struct PrometheusPlan {
    pub server_address: Arc<str>,
    pub query: Arc<str>,
    pub threshold: f64,
    pub activation_threshold: f64,
    pub ignore_null_values: bool,
    pub series_aggregation: Option<Aggregation>,
    /// Shared by every plan with equal auth ([`PrometheusAuth::shared`]): most plans have
    /// none, and those that do repeat a few credentials.
    pub auth: Arc<PrometheusAuth>,
    /// What few plans set, boxed and absent when none is set: most plans pay one pointer
    /// for it rather than 88 bytes.
    pub extras: Option<Box<PrometheusExtras>>,
}

/// A Prometheus trigger's `queryParameters`, `customHeaders`, `prometheusNamespace` and
/// `timeout`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrometheusExtras {
    pub query_parameters: Vec<(String, String)>,
    pub custom_headers: Vec<(String, Secret)>,
    pub namespace: Option<String>,
    pub timeout: Option<Duration>,
}

impl PrometheusExtras {
    /// Boxed for a plan, or none when nothing is set.
    pub(crate) fn boxed(self) -> Option<Box<Self>> {
        (self != Self::default()).then(|| Box::new(self))
    }
}

impl PrometheusPlan {
    pub fn query_parameters(&self) -> &[(String, String)] {
        self.extras.as_ref().map_or(&[], |e| &e.query_parameters)
    }

    pub fn custom_headers(&self) -> &[(String, Secret)] {
        self.extras.as_ref().map_or(&[], |e| &e.custom_headers)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.extras.as_ref()?.namespace.as_deref()
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.extras.as_ref()?.timeout
    }

    /// The extras to change (the scaler adds a server's own headers), made if there are none.
    pub(crate) fn extras_mut(&mut self) -> &mut PrometheusExtras {
        self.extras.get_or_insert_with(Box::default)
    }
}

/// Credentials configured on the scaler itself, by name.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    servicebus: HashMap<String, Secret>,
    prometheus: HashMap<String, Secret>,
    /// `BLEND_SCALER_PROMETHEUS_CREDENTIAL_<NAME>_SERVERS`: the only servers it is sent to.
    prometheus_servers: HashMap<String, Vec<String>>,
    /// `BLEND_SCALER_CREDENTIAL_<NAME>_NAMESPACES`: the only Kubernetes namespaces that may
    /// use it. A credential without the variable is usable by none.
    servicebus_namespaces: HashMap<String, Namespaces>,
    /// `BLEND_SCALER_PROMETHEUS_CREDENTIAL_<NAME>_NAMESPACES`, likewise.
    prometheus_namespaces: HashMap<String, Namespaces>,
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
                if let Some(n) = n.strip_suffix(NAMESPACES_SUFFIX) {
                    let namespaces = Namespaces::parse(&value);
                    creds
                        .prometheus_namespaces
                        .insert(n.to_string(), namespaces);
                    continue;
                }
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
                if let Some(n) = n.strip_suffix(NAMESPACES_SUFFIX) {
                    let namespaces = Namespaces::parse(&value);
                    creds
                        .servicebus_namespaces
                        .insert(n.to_string(), namespaces);
                    continue;
                }
                creds.servicebus.insert(n.to_string(), Secret::new(value));
            }
        }
        creds
    }

    /// `orders-bus` is looked up as `ORDERS_BUS`.
    pub(super) fn env_name(name: &str) -> String {
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    }

    pub(super) fn servicebus(&self, name: &str) -> Option<&Secret> {
        self.servicebus.get(&Self::env_name(name))
    }

    pub(super) fn prometheus(&self, name: &str) -> Option<&Secret> {
        self.prometheus.get(&Self::env_name(name))
    }

    /// True when Service Bus credential `name` exists and `namespace` may use it.
    pub fn servicebus_usable_by(&self, name: &str, namespace: &str) -> bool {
        let key = Self::env_name(name);
        self.servicebus.contains_key(&key)
            && self
                .servicebus_namespaces
                .get(&key)
                .is_some_and(|n| n.allows(namespace))
    }

    /// True when Prometheus credential `name` exists and `namespace` may use it.
    pub fn prometheus_usable_by(&self, name: &str, namespace: &str) -> bool {
        let key = Self::env_name(name);
        self.prometheus.contains_key(&key)
            && self
                .prometheus_namespaces
                .get(&key)
                .is_some_and(|n| n.allows(namespace))
    }

    /// The variables of credentials no namespace may use (no `_NAMESPACES`, or an empty one),
    /// for `serve`'s startup warnings.
    pub fn without_namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (prefix, secrets, namespaces) in [
            (
                SERVICEBUS_CREDENTIAL_PREFIX,
                &self.servicebus,
                &self.servicebus_namespaces,
            ),
            (
                PROMETHEUS_CREDENTIAL_PREFIX,
                &self.prometheus,
                &self.prometheus_namespaces,
            ),
        ] {
            for name in secrets.keys() {
                if namespaces.get(name).is_none_or(Namespaces::is_empty) {
                    out.push(format!("{prefix}{name}"));
                }
            }
        }
        out.sort();
        out
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
pub enum Origin {
    /// From KEDA: `*FromEnv` values are already resolved.
    Keda,
    /// From a ScaledObject file (`check`): `*FromEnv` values are variable names, and
    /// scaler-side credentials may not exist on this machine.
    File,
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
                "from the connection string".to_string()
            } else {
                crate::secret::without_userinfo(&sb.endpoint)
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
            let auth = match &*sb.auth {
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
                crate::secret::without_userinfo(&p.server_address),
                p.threshold,
                p.activation_threshold
            )?;
            let mut extras = Vec::new();
            if !p.query_parameters().is_empty() {
                let params: Vec<String> = p
                    .query_parameters()
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                extras.push(format!("parameters {}", params.join(",")));
            }
            if !p.custom_headers().is_empty() {
                let names: Vec<&str> = p.custom_headers().iter().map(|(k, _)| k.as_str()).collect();
                extras.push(format!("headers {} (values <redacted>)", names.join(",")));
            }
            if let Some(ns) = p.namespace() {
                extras.push(format!("namespace {ns}"));
            }
            if let Some(t) = p.timeout() {
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
