//! Trigger metadata (README, "Trigger metadata") parsed into a typed [`Plan`].
//!
//! One parser serves `serve`, `check` and `explain`. It collects every error rather than
//! stopping at the first, each naming its key, and never puts a secret value in a message.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;

use crate::cron::CronPlan;
use crate::secret::Secret;

mod cron;
pub mod keys;
mod plan;
mod prometheus;
mod servicebus;
#[cfg(test)]
mod tests;

pub use keys::known_keys;
pub(crate) use plan::*;
pub use plan::{
    Aggregation, ConnectionAuth, ConnectionString, Credentials, Entity, Origin, Plan,
    PrometheusExtras, PrometheusPlan, ServiceBusAuth, ServiceBusPlan,
};

/// At most this many keys in one trigger's metadata.
pub const MAX_KEYS: usize = 64;
/// At most this many bytes in one value.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// At most this many bytes in one key: no key the scaler reads is longer than 30.
pub const MAX_KEY_BYTES: usize = 256;
/// The largest request that can carry valid metadata: every key and value at its cap, with
/// protobuf's per-entry framing, plus the object's name and namespace. The gRPC server refuses
/// a bigger message before decoding it, so an oversized request costs no worker time
/// (docs/security.md, "No tenant can stall another").
pub(crate) const MAX_REQUEST_BYTES: usize =
    MAX_KEYS * (MAX_KEY_BYTES + MAX_VALUE_BYTES + 16) + 4096;
/// An error message lists at most this many problems (`check` prints them all).
pub(crate) const MAX_LISTED_ERRORS: usize = 10;
/// Unknown keys longer than this get no "did you mean": the comparison costs time in the
/// key's length, and a typo of a known key is short.
const MAX_SUGGESTED_KEY_BYTES: usize = 64;

/// Trigger metadata from `(key, value)` pairs, for tests.
#[cfg(test)]
pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A plan from `(key, value)` pairs as KEDA sends them, for tests; panics on invalid metadata.
#[cfg(test)]
pub(crate) fn test_plan(pairs: &[(&str, &str)]) -> Plan {
    parse(&from_pairs(pairs), Origin::Keda, &Credentials::default()).expect("valid metadata")
}

pub(crate) const DEFAULT_METRIC_NAME: &str = "blended-replicas";
pub(crate) const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// One problem with one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataError {
    pub(crate) key: String,
    pub(crate) message: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata key `{}`: {}", self.key, self.message)
    }
}

/// Every problem found in one trigger's metadata, in key order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct MetadataErrors(pub Vec<MetadataError>);

/// The first [`MAX_LISTED_ERRORS`] problems, and how many more there are: the text goes into
/// a gRPC status and KEDA's events, and fixing the first ten shows the rest.
impl fmt::Display for MetadataErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .take(MAX_LISTED_ERRORS)
            .map(ToString::to_string)
            .collect();
        f.write_str(&parts.join("; "))?;
        if self.0.len() > MAX_LISTED_ERRORS {
            write!(f, "; and {} more", self.0.len() - MAX_LISTED_ERRORS)?;
        }
        Ok(())
    }
}

/// Too many keys, or a key too long: one error, found without looking at anything else.
/// Work on metadata (fingerprints, suggestions, parsing) grows with its size, and a caller
/// can send 4 MiB of it, so this comes first, in the engine and in the parser.
pub(crate) fn oversized(m: &HashMap<String, String>) -> Option<MetadataErrors> {
    let message = if m.len() > MAX_KEYS {
        format!("has {} keys; at most {MAX_KEYS} are accepted", m.len())
    } else {
        let long = m.keys().filter(|k| k.len() > MAX_KEY_BYTES).count();
        if long == 0 {
            return None;
        }
        format!("has {long} key(s) longer than {MAX_KEY_BYTES} bytes; no key is that long")
    };
    Some(MetadataErrors(vec![MetadataError {
        key: "metadata".into(),
        message,
    }]))
}

/// Parses one trigger's metadata.
pub fn parse(
    metadata: &HashMap<String, String>,
    origin: Origin,
    credentials: &Credentials,
) -> Result<Plan, MetadataErrors> {
    let mut p = Parser {
        m: metadata,
        origin,
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
    origin: Origin,
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
            // Refused rather than wrapped: `5000000000` must not read as 705032704.
            Ok(n) => match u32::try_from(n).ok().and_then(|n| bare.checked_mul(n)) {
                Some(d) => Some(d),
                None => {
                    self.err(key, format!("`{text}` is too large"));
                    return None;
                }
            },
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
                let shown = crate::secret::without_userinfo(text);
                self.err(key, format!("`{shown}` is not an http(s) URL with a host"));
                None
            }
        }
    }

    /// A `*FromEnv` value: the secret itself from KEDA, a variable name in a file.
    fn secret(&self, key: &str) -> Option<Secret> {
        let v = self.get(key)?;
        Some(Secret::shared(v))
    }

    fn plan(&mut self) -> Option<Plan> {
        if self.oversized() {
            return None;
        }
        self.check_shape();

        let metric_name =
            crate::intern::intern(self.get(keys::METRIC_NAME).unwrap_or(DEFAULT_METRIC_NAME));
        if metric_name.len() > 63
            || !metric_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            self.err(
                keys::METRIC_NAME,
                "must be at most 63 characters of lowercase letters, digits and `-`",
            );
        }
        let min_replicas = self.whole(keys::MIN_REPLICAS);
        let max_replicas = self.whole(keys::MAX_REPLICAS);
        if let (Some(lo), Some(hi)) = (min_replicas, max_replicas)
            && lo > hi
        {
            self.err(
                keys::MIN_REPLICAS,
                format!("{lo} is more than maxReplicas {hi}"),
            );
        }
        let stale_after = self.duration(
            keys::STALE_AFTER,
            Some(DEFAULT_STALE_AFTER),
            Duration::from_secs(1),
        );
        let policy = self.policy();

        let servicebus = (self.has(keys::QUEUE_NAME) || self.has(keys::TOPIC_NAME))
            .then(|| self.servicebus())
            .flatten();
        let prometheus = self
            .has(keys::SERVER_ADDRESS)
            .then(|| self.prometheus())
            .flatten();
        let cron = (self.has(keys::START) || self.has(keys::WINDOWS))
            .then(|| self.cron())
            .flatten();

        let sb_on = self.has(keys::QUEUE_NAME) || self.has(keys::TOPIC_NAME);
        let prom_on = self.has(keys::SERVER_ADDRESS);
        let cron_on = self.has(keys::START) || self.has(keys::WINDOWS);
        self.refuse_orphans(
            keys::SERVICEBUS,
            sb_on,
            "the Service Bus signal (set `queueName` or `topicName`)",
        );
        self.refuse_orphans(
            keys::PROMETHEUS,
            prom_on,
            "the Prometheus signal (set `serverAddress`)",
        );
        self.refuse_orphans(
            keys::CRON,
            cron_on,
            "the cron signal (set `start` or `windows`)",
        );
        if !(sb_on || prom_on || cron_on) {
            self.err(
                keys::QUEUE_NAME,
                "no signal is configured: set `queueName` or `topicName` (Service Bus), \
                 `serverAddress` (Prometheus), or `start` or `windows` (cron)",
            );
        }
        if matches!(policy, Some(Policy::DrainTime { .. })) && !sb_on {
            self.err(keys::POLICY, "`drainTime` needs the Service Bus signal");
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

    fn oversized(&mut self) -> bool {
        match oversized(self.m) {
            Some(e) => {
                self.errors.extend(e.0);
                true
            }
            None => false,
        }
    }

    /// Value sizes and unknown keys, before anything is read.
    fn check_shape(&mut self) {
        let mut keys: Vec<&String> = self.m.keys().collect();
        keys.sort();
        for key in keys {
            if !keys::is_known(key) {
                let shown: String = key.chars().take(64).collect();
                let hint = (key.len() <= MAX_SUGGESTED_KEY_BYTES)
                    .then(|| keys::suggestion(key))
                    .flatten()
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
        let name = self.get(keys::POLICY).unwrap_or("max").to_string();
        let policy = match name.as_str() {
            "max" => Some(Policy::Max),
            "sum" => Some(Policy::Sum),
            "drainTime" => {
                let t = self.number(keys::TARGET_DRAIN_SECONDS, None, true);
                let r = self.number(keys::MESSAGES_PER_SECOND_PER_REPLICA, None, true);
                for key in keys::DRAIN {
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
                self.err(keys::POLICY, msg);
                None
            }
        };
        for key in keys::DRAIN {
            if self.m.contains_key(*key) {
                self.err(key, "is only used with policy `drainTime`");
            }
        }
        policy
    }
}
