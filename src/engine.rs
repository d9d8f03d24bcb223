//! The engine: from a KEDA `ScaledObjectRef` to a decision, through the parsed plan, the
//! allowlist, the signal caches and [`blend::decide`].

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::access::{Access, Refused};
use crate::binding::HostRules;
use crate::blend::{self, Decision, Inputs, Missing};
use crate::cache::{CacheEntry, RefreshConfig, SignalCache};
use crate::metadata::{self, Credentials, MetadataErrors, Plan, PrometheusPlan, ServiceBusPlan};
use crate::metrics::{Metrics, ObjectLabels};
use crate::signal::{SignalError, SignalKind};

/// Errors of the engine layer; `error.rs` maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid trigger metadata: {0}")]
    Metadata(#[from] MetadataErrors),
    #[error("metadata key `{key}`: upstream host `{host}` is not allowed by --allow-upstream")]
    NotAllowed { key: &'static str, host: String },
    /// Not for the caller's Kubernetes namespace (a credential, the scaler's identity, a server).
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("metadata key `query`: {0}")]
    InvalidQuery(String),
    #[error("{signal} signal has no usable value: {reason}")]
    Unavailable { signal: SignalKind, reason: String },
    #[error("the {0} signal is not enabled in this scaler")]
    NotEnabled(SignalKind),
}

/// The signal caches, one per signal kind that reads an upstream.
#[derive(Clone, Default)]
pub struct SignalCaches {
    pub servicebus: Option<Arc<dyn SignalCache<ServiceBusPlan>>>,
    pub prometheus: Option<Arc<dyn SignalCache<PrometheusPlan>>>,
}

/// Where wall-clock time comes from (cron windows); `demo` runs a faster one.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Clone)]
pub struct EngineConfig {
    pub refresh: RefreshConfig,
    /// Host globs that metadata may point at; `None` allows all.
    pub allow_upstream: Option<Vec<String>>,
    /// Where credentials may be sent beyond their own hosts (loopback doubles, private clouds).
    pub hosts: HostRules,
    /// ScaledObjects KEDA stopped asking about for this long are forgotten.
    pub object_idle_ttl: Duration,
    pub credentials: Credentials,
    /// Which namespaces may use the scaler's identity and which Prometheus servers.
    pub access: Access,
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            refresh: RefreshConfig::default(),
            allow_upstream: None,
            hosts: HostRules::default(),
            object_idle_ttl: Duration::from_secs(600),
            credentials: Credentials::default(),
            access: Access::default(),
            clock: Arc::new(Utc::now),
        }
    }
}

/// A ScaledObject as KEDA names it.
#[derive(Clone, Copy, Debug)]
pub struct ObjectRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub metadata: &'a HashMap<String, String>,
}

/// One ScaledObject the engine knows: its plan, where its signals are in their caches, and its
/// last answer.
pub struct Tracked {
    fingerprint: u64,
    pub plan: Arc<Plan>,
    pub labels: ObjectLabels,
    /// The plan's entries in the signal caches, keyed once here rather than on every call.
    servicebus: Option<Arc<dyn CacheEntry>>,
    prometheus: Option<Arc<dyn CacheEntry>>,
    previous: Mutex<Option<u32>>,
}

impl Tracked {
    pub fn previous(&self) -> Option<u32> {
        *self.previous.lock()
    }
}

pub struct Engine {
    config: EngineConfig,
    allow: Option<GlobSet>,
    caches: SignalCaches,
    metrics: Metrics,
    /// Keyed by namespace, name and metric name: a ScaledObject with two `external` triggers has
    /// two plans and two answers, which must not share a held answer.
    objects: moka::sync::Cache<(String, String, String), Arc<Tracked>>,
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        caches: SignalCaches,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let allow = match &config.allow_upstream {
            None => None,
            Some(patterns) => {
                let mut b = GlobSetBuilder::new();
                for p in patterns {
                    b.add(Glob::new(&p.to_ascii_lowercase())?);
                }
                Some(b.build()?)
            }
        };
        let forget_metrics = metrics.clone();
        let objects = moka::sync::Cache::builder()
            .time_to_idle(config.object_idle_ttl)
            .eviction_listener(move |_key, tracked: Arc<Tracked>, cause| {
                // A replaced entry keeps its labels; only a forgotten object loses its series.
                if cause != moka::notification::RemovalCause::Replaced {
                    forget_metrics.forget(&tracked.labels);
                }
            })
            .build();
        Ok(Self {
            config,
            allow,
            caches,
            metrics,
            objects,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn tracked_count(&self) -> u64 {
        self.objects.run_pending_tasks();
        self.objects.entry_count()
    }

    /// The parsed plan of `obj`, parsed again only when its metadata changed.
    pub fn track(&self, obj: ObjectRef<'_>) -> Result<Arc<Tracked>, EngineError> {
        let fingerprint = fingerprint(obj.metadata);
        let metric_name = obj
            .metadata
            .get(metadata::keys::METRIC_NAME)
            .map_or(metadata::DEFAULT_METRIC_NAME, String::as_str);
        let key = (
            obj.namespace.to_string(),
            obj.name.to_string(),
            metric_name.to_string(),
        );
        if let Some(t) = self.objects.get(&key)
            && t.fingerprint == fingerprint
        {
            return Ok(t);
        }
        let access = &self.config.access;
        access.check_names(obj.metadata, obj.namespace, &self.config.credentials)?;
        let mut plan = metadata::parse(
            obj.metadata,
            metadata::Origin::Keda,
            &self.config.credentials,
        )?;
        self.config
            .hosts
            .check(obj.metadata, &plan, &self.config.credentials)?;
        // After the host rules: the headers the scaler adds for a server are its own, not a
        // tenant's secret that would need https.
        access.apply(&mut plan, obj.namespace)?;
        self.check_allowed(&plan)?;
        self.check_enabled(&plan)?;
        let tracked = Arc::new(Tracked {
            fingerprint,
            servicebus: entry(&self.caches.servicebus, &plan.servicebus),
            prometheus: entry(&self.caches.prometheus, &plan.prometheus),
            plan: Arc::new(plan),
            labels: ObjectLabels {
                scaledobject_namespace: obj.namespace.to_string(),
                scaledobject: obj.name.to_string(),
            },
            // A new plan starts without a held answer: the old plan's answer (its `maxReplicas`,
            // its signals, or a caller's spoofed metadata) must not hold the new one up.
            previous: Mutex::new(None),
        });
        self.objects.insert(key, tracked.clone());
        self.metrics.set_tracked(self.objects.entry_count());
        Ok(tracked)
    }

    fn check_allowed(&self, plan: &Plan) -> Result<(), EngineError> {
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        let mut targets: Vec<(&'static str, &str)> = Vec::new();
        if let Some(sb) = &plan.servicebus {
            targets.push(("endpoint", &sb.endpoint));
        }
        if let Some(p) = &plan.prometheus {
            targets.push(("serverAddress", &p.server_address));
        }
        for (key, address) in targets {
            let host = url::Url::parse(address)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                .unwrap_or_default();
            if !allow.is_match(&host) {
                // `endpoint` may have come from `namespace` or the connection string.
                return Err(EngineError::NotAllowed { key, host });
            }
        }
        Ok(())
    }

    fn check_enabled(&self, plan: &Plan) -> Result<(), EngineError> {
        if plan.servicebus.is_some() && self.caches.servicebus.is_none() {
            return Err(EngineError::NotEnabled(SignalKind::ServiceBus));
        }
        if plan.prometheus.is_some() && self.caches.prometheus.is_none() {
            return Err(EngineError::NotEnabled(SignalKind::Prometheus));
        }
        Ok(())
    }

    /// Reads the signals from the cache and decides, without recording anything (a look at
    /// the answer; [`Engine::answer`] is the one that counts).
    pub async fn peek(&self, tracked: &Tracked) -> Decision {
        let plan = &tracked.plan;
        let sb = async {
            match &tracked.servicebus {
                Some(entry) => Some(entry.observe().await),
                None => None,
            }
        };
        let prom = async {
            match &tracked.prometheus {
                Some(entry) => Some(entry.observe().await),
                None => None,
            }
        };
        // Both first reads run at once, so a never-seen object waits for the slower only.
        let (sb, prom) = tokio::join!(sb, prom);
        blend::decide(Inputs {
            plan,
            now: (self.config.clock)(),
            servicebus: sb.as_ref(),
            prometheus: prom.as_ref(),
            previous: tracked.previous(),
        })
    }

    /// The answer to a caller: decides, records it as the object's previous answer, and logs
    /// a change once.
    pub async fn answer(
        &self,
        obj: ObjectRef<'_>,
    ) -> Result<(Arc<Tracked>, Decision), EngineError> {
        let tracked = self.track(obj)?;
        let decision = self.peek(&tracked).await;
        self.record(&tracked, &decision);
        Ok((tracked, decision))
    }

    fn record(&self, tracked: &Tracked, d: &Decision) {
        let replicas = d.replicas().ok();
        let signals: Vec<_> = d
            .signals
            .iter()
            .map(|s| (s.kind, s.value, s.replicas, s.age))
            .collect();
        self.metrics
            .record_decision(&tracked.labels, replicas, &signals);
        let Some(replicas) = replicas else { return };
        let previous = tracked.previous.lock().replace(replicas);
        if previous != Some(replicas) {
            let detail: Vec<String> = d
                .signals
                .iter()
                .map(|s| {
                    format!(
                        "{}={}->{}{}{}",
                        s.kind,
                        s.value,
                        s.replicas,
                        if s.active { " active" } else { "" },
                        if s.stale { " stale" } else { "" }
                    )
                })
                .collect();
            tracing::info!(
                scaledobject_namespace = %tracked.labels.scaledobject_namespace,
                scaledobject = %tracked.labels.scaledobject,
                replicas,
                previous = previous.map(i64::from).unwrap_or(-1),
                decided_by = d.decided_by.map_or("none", SignalKind::as_str),
                held = d.held,
                signals = %detail.join(" "),
                "decision changed"
            );
        }
    }

    pub async fn replicas(&self, obj: ObjectRef<'_>) -> Result<(Arc<Tracked>, u32), EngineError> {
        let (tracked, d) = self.answer(obj).await?;
        let r = d.replicas().map_err(unavailable)?;
        Ok((tracked, r))
    }

    pub async fn is_active(&self, obj: ObjectRef<'_>) -> Result<bool, EngineError> {
        let (_, d) = self.answer(obj).await?;
        d.active().map_err(unavailable)
    }

    /// Change notifications for every upstream group `tracked` reads, each held at the fast
    /// interval while the returned guards live.
    pub fn watch(&self, tracked: &Tracked) -> Vec<(watch::Receiver<u64>, Box<dyn Send + Sync>)> {
        [&tracked.servicebus, &tracked.prometheus]
            .into_iter()
            .flatten()
            .map(|entry| entry.watch())
            .collect()
    }
}

/// Turns a missing signal into the error KEDA sees.
pub fn unavailable(m: &Missing) -> EngineError {
    if let Some(SignalError::InvalidQuery(detail)) = m.error.as_deref() {
        return EngineError::InvalidQuery(detail.clone());
    }
    let reason = match (&m.error, m.age) {
        (Some(e), Some(age)) => format!(
            "{e}; the last good value is {}s old, past staleAfter",
            age.as_secs()
        ),
        (Some(e), None) => e.to_string(),
        (None, Some(age)) => format!(
            "the last good value is {}s old, past staleAfter",
            age.as_secs()
        ),
        (None, None) => "no value yet: the first read has not finished".to_string(),
    };
    EngineError::Unavailable {
        signal: m.kind,
        reason,
    }
}

/// `plan`'s entry in `cache`, when the plan has that signal and the scaler that cache.
fn entry<P: 'static>(
    cache: &Option<Arc<dyn SignalCache<P>>>,
    plan: &Option<P>,
) -> Option<Arc<dyn CacheEntry>> {
    cache.as_ref().zip(plan.as_ref()).map(|(c, p)| c.entry(p))
}

fn fingerprint(metadata: &HashMap<String, String>) -> u64 {
    let mut pairs: Vec<_> = metadata.iter().collect();
    pairs.sort();
    let mut h = DefaultHasher::new();
    pairs.hash(&mut h);
    h.finish()
}
