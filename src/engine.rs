//! The engine: from a KEDA `ScaledObjectRef` to a decision, through the parsed plan, the
//! allowlist, the signal caches and [`blend::decide`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::access::{Access, Refused};
use crate::allowlist::HostList;
use crate::binding::HostRules;
use crate::blend::{self, Decision};
use crate::cache::{CacheEntry, Looked, RefreshConfig, SignalCache, Wait};
use crate::capacity::Capacity;
use crate::metadata::{self, Credentials, MetadataErrors, Plan, PrometheusPlan, ServiceBusPlan};
use crate::metrics::{Metrics, ObjectLabels, ObjectSource};
use crate::signal::{Observation, SignalKind};

mod answered;
mod key;
mod objects;
mod outcome;

use answered::Answered;
pub(crate) use answered::LastAnswer;
use key::{KeyHasher, KeyRef};
use objects::{Objects, Put, weight};
use outcome::{Decided, log_change};
pub(crate) use outcome::{exhausted, unavailable};

/// Errors of the engine layer; `error.rs` maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid trigger metadata: {0}")]
    Metadata(#[from] MetadataErrors),
    #[error("metadata key `{key}`: upstream `{host}` is not allowed by --allow-upstream")]
    NotAllowed { key: &'static str, host: String },
    /// An IP-literal upstream on an address the scaler does not connect to.
    #[error(
        "metadata key `{key}`: `{host}` is a {class} address, which the scaler does not connect \
         to unless an operator allows it (--allow-private-upstream)"
    )]
    AddressRefused {
        key: &'static str,
        host: String,
        class: crate::http::AddressClass,
    },
    /// An upstream whose name resolved only to refused addresses (found when reading).
    #[error("{signal} signal: {reason}")]
    UpstreamRefused { signal: SignalKind, reason: String },
    /// Not for the caller's Kubernetes namespace (a credential, the scaler's identity, a server).
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("metadata key `query`: {0}")]
    InvalidQuery(String),
    #[error("{signal} signal has no usable value: {reason}")]
    Unavailable { signal: SignalKind, reason: String },
    #[error("the {0} signal is not enabled in this scaler")]
    NotEnabled(SignalKind),
    /// Past one of the scaler's capacity limits (crate::capacity): nothing was kept.
    #[error("{0}")]
    Exhausted(String),
}

/// The signal caches, one per signal kind that reads an upstream.
#[derive(Clone, Default)]
pub struct SignalCaches {
    pub servicebus: Option<Arc<dyn SignalCache<ServiceBusPlan>>>,
    pub prometheus: Option<Arc<dyn SignalCache<PrometheusPlan>>>,
}

/// Where wall-clock time comes from (cron windows); `demo` runs a faster one.
pub(crate) type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Clone)]
pub struct EngineConfig {
    pub refresh: RefreshConfig,
    /// `host[:port]` entries metadata may point at (`crate::allowlist`); `None` allows all.
    pub allow_upstream: Option<Vec<String>>,
    /// Where credentials may be sent beyond their own hosts (loopback doubles, private clouds).
    pub hosts: HostRules,
    /// ScaledObjects KEDA stopped asking about for this long are forgotten.
    pub object_idle_ttl: Duration,
    pub credentials: Credentials,
    /// Which namespaces may use the scaler's identity and which Prometheus servers.
    pub access: Access,
    pub clock: Clock,
    pub capacity: Capacity,
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
            capacity: Capacity::default(),
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

/// One ScaledObject the engine knows: its plan and its last answer.
pub struct Tracked {
    fingerprint: u64,
    /// Its metadata's size, counted against `Capacity::max_metadata_bytes`.
    weight: usize,
    pub(crate) plan: Arc<Plan>,
    pub(crate) labels: ObjectLabels,
    /// The trigger's `metricName` (one ScaledObject may have several triggers).
    pub(crate) metric_name: Arc<str>,
    /// The plan's entries in the signal caches, keyed once here rather than on every call.
    servicebus: Option<Arc<dyn CacheEntry>>,
    prometheus: Option<Arc<dyn CacheEntry>>,
    /// The last decision given to a caller, for `/decisions`, the change log and the
    /// object's series; never an input to the next decision (that is the readings' alone,
    /// the same on every replica) but through the safety rule.
    answered: Mutex<Answered>,
    /// When KEDA last asked about it, in [`Objects`]' milliseconds: what its idle time counts
    /// from.
    asked: AtomicU64,
}

impl Tracked {
    /// Its key in the tracked objects' map: namespace, name and metric name.
    fn key(&self) -> KeyRef<'_> {
        KeyRef(
            &self.labels.scaledobject_namespace,
            &self.labels.scaledobject,
            &self.metric_name,
        )
    }

    /// The last decision given to a caller, if any.
    pub(crate) fn last(&self) -> Option<LastAnswer> {
        self.answered.lock().last()
    }
}

pub struct Engine {
    config: EngineConfig,
    allow: Option<HostList>,
    caches: SignalCaches,
    metrics: Metrics,
    /// By namespace, name and metric name, with what they take of the capacity; the
    /// metrics' source of per-object series too (held weakly there).
    objects: Arc<Objects>,
    /// Seeds the metadata fingerprints.
    fingerprints: KeyHasher,
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        caches: SignalCaches,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let allow = match &config.allow_upstream {
            None => None,
            Some(entries) => Some(
                HostList::parse(entries).map_err(|e| anyhow::anyhow!("--allow-upstream: {e}"))?,
            ),
        };
        let objects = Arc::new(Objects::new(
            config.object_idle_ttl,
            config.capacity.clone(),
            metrics.clone(),
        ));
        // A forgotten object's series go with it: they are made from the objects.
        let source: Arc<dyn ObjectSource> = objects.clone();
        metrics.add_object_source(Arc::downgrade(&source));
        Ok(Self {
            config,
            allow,
            caches,
            metrics,
            objects,
            fingerprints: KeyHasher::default(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// How many objects are tracked, once the idle ones are forgotten (a sweep: it brings
    /// their gauge and series up to date too).
    pub fn tracked_count(&self) -> u64 {
        self.objects.count() as u64
    }

    /// The parsed plan of `obj`, parsed again only when its metadata changed. A new object
    /// past a capacity limit is refused before its metadata is parsed; parsing runs off the
    /// async workers ([`crate::offload`]).
    pub async fn track(&self, obj: ObjectRef<'_>) -> Result<Arc<Tracked>, EngineError> {
        // Too many keys is refused before any pass over them; a key too long after the one
        // pass (at most `MAX_KEYS` pairs, in a request whose size is capped).
        if obj.metadata.len() > metadata::MAX_KEYS
            && let Some(e) = metadata::oversized(obj.metadata)
        {
            return Err(e.into());
        }
        let seen = key::read(&self.fingerprints, obj.metadata);
        if seen.longest_key > metadata::MAX_KEY_BYTES
            && let Some(e) = metadata::oversized(obj.metadata)
        {
            return Err(e.into());
        }
        let fingerprint = seen.fingerprint;
        let metric_name = seen.metric_name.unwrap_or(metadata::DEFAULT_METRIC_NAME);
        let lookup = KeyRef(obj.namespace, obj.name, metric_name);
        let current = self.objects.get(lookup);
        if let Some(t) = current.as_ref().filter(|t| t.fingerprint == fingerprint) {
            return Ok(t.clone());
        }
        // Boxed: the future of every call holds room for its largest step and is moved whole
        // through each layer that awaits it; the registration was most of it (`track`'s
        // future was 936 of `is_active`'s 1,992 bytes), and a known object never takes it.
        Box::pin(self.register(obj, lookup, fingerprint, current)).await
    }

    /// `obj`'s plan parsed, checked and tracked under `lookup` (replacing `current`, the
    /// object's plan for other metadata, if there is one).
    async fn register(
        &self,
        obj: ObjectRef<'_>,
        lookup: KeyRef<'_>,
        fingerprint: u64,
        current: Option<Arc<Tracked>>,
    ) -> Result<Arc<Tracked>, EngineError> {
        let access = &self.config.access;
        access.check_names(obj.metadata, obj.namespace, &self.config.credentials)?;
        let weight = weight(obj.metadata);
        let mut reservation =
            self.objects
                .reserve(obj.namespace, weight, current.as_ref().map(|t| t.weight))?;
        let mut plan = self.parse(obj.metadata).await?;
        self.config
            .hosts
            .check(obj.metadata, &plan, &self.config.credentials)?;
        // After the host rules: the headers the scaler adds for a server are its own, not a
        // tenant's secret that would need https.
        access.apply(&mut plan, obj.namespace)?;
        self.check_allowed(&plan)?;
        self.check_enabled(&plan)?;
        if plan.cron.is_some() {
            // The plan holds its expressions now: past the cap, dropping it lets its new ones go.
            let held = crate::cron::held_expressions();
            if held > self.config.capacity.max_cron_expressions {
                return Err(EngineError::Exhausted(format!(
                    "metadata key `windows`: the scaler holds {held} distinct cron expressions, \
                     over its limit of {} (--max-cron-expressions); reuse expressions other \
                     triggers use",
                    self.config.capacity.max_cron_expressions
                )));
            }
        }
        let key = lookup.to_owned();
        let tracked = Arc::new(Tracked {
            fingerprint,
            weight,
            servicebus: entry(
                &self.caches.servicebus,
                &plan.servicebus,
                plan.policy.reads_rate(),
            ),
            prometheus: entry(&self.caches.prometheus, &plan.prometheus, false),
            labels: ObjectLabels {
                scaledobject_namespace: key.0.clone(),
                scaledobject: key.1.clone(),
            },
            metric_name: key.2.clone(),
            plan: Arc::new(plan),
            // A new plan of a known object keeps its series' figures until it answers.
            answered: Mutex::new(
                current
                    .as_ref()
                    .map(|c| c.answered.lock().carried())
                    .unwrap_or_default(),
            ),
            asked: AtomicU64::new(self.objects.now()),
        });
        loop {
            match self.objects.put(&tracked, reservation.new_object()) {
                Put::Kept => {
                    reservation.keep();
                    return Ok(tracked);
                }
                // A concurrent call tracked the same object first: its room is counted already.
                Put::Theirs(theirs) => return Ok(theirs),
                Put::Again(replacing) => {
                    drop(reservation);
                    reservation = self.objects.reserve(obj.namespace, weight, replacing)?;
                }
            }
        }
    }

    /// Parses metadata on a blocking thread: how long a parse takes grows with what a caller
    /// sends (cron windows, patterns), and the async workers serve every tenant.
    async fn parse(&self, metadata: &HashMap<String, String>) -> Result<Plan, EngineError> {
        let (metadata, credentials) = (metadata.clone(), self.config.credentials.clone());
        crate::offload::run(crate::offload::Work::Metadata, move || {
            metadata::parse(&metadata, metadata::Origin::Keda, &credentials)
        })
        .await
        .map_err(EngineError::from)
    }

    /// The allowlist (`host[:port]`), and the address of an IP-literal host: a name is checked
    /// on the address it resolves to when connecting (`http::client_builder`), a literal here,
    /// before anything is read.
    fn check_allowed(&self, plan: &Plan) -> Result<(), EngineError> {
        let mut targets: Vec<(&'static str, &str)> = Vec::new();
        if let Some(sb) = &plan.servicebus {
            targets.push(("endpoint", &sb.endpoint));
        }
        if let Some(p) = &plan.prometheus {
            targets.push(("serverAddress", &p.server_address));
        }
        for (key, address) in targets {
            // Offline plans have no endpoint yet; KEDA's plans always do.
            let Ok(url) = url::Url::parse(address) else {
                continue;
            };
            let shown = match (url.host_str(), url.port_or_known_default()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => String::new(),
            };
            if let Some(allow) = &self.allow
                && !allow.allows(&url)
            {
                // `endpoint` may have come from `namespace` or the connection string.
                return Err(EngineError::NotAllowed { key, host: shown });
            }
            let ip = match url.host() {
                Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
                Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
                _ => continue,
            };
            let host = url.host_str().unwrap_or_default();
            if let Err(class) = crate::http::check_address(&self.config.hosts, host, ip) {
                return Err(EngineError::AddressRefused {
                    key,
                    host: shown,
                    class,
                });
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

    /// Every tracked ScaledObject, by namespace, name and metric name.
    pub(crate) fn tracked(&self) -> Vec<Arc<Tracked>> {
        let mut all = self.objects.all();
        all.sort_by(|a, b| (&a.labels, &a.metric_name).cmp(&(&b.labels, &b.metric_name)));
        all
    }

    /// Reads the signals from the cache and decides, without recording anything (a look at
    /// the answer; [`Engine::answer`] is the one that counts, and the one that counts as KEDA
    /// asking, which keeps the upstream read).
    pub(crate) async fn peek(&self, tracked: &Tracked) -> Decision {
        let decided = self.decision(tracked, false).await;
        let last = tracked.answered.lock().last_replicas();
        blend::hold_while_stale(decided.decision, last, &tracked.plan)
    }

    /// The readings' decision (before the safety rule, which needs the last answer).
    async fn decision(&self, tracked: &Tracked, keda: bool) -> Decided {
        let plan = &tracked.plan;
        // One clock read for both signals' looks; a warm cache answers without a future.
        let asked = tokio::time::Instant::now();
        fn look(
            entry: &Option<Arc<dyn CacheEntry>>,
            keda: bool,
            asked: tokio::time::Instant,
        ) -> Result<Option<Observation>, Wait<'_>> {
            match entry.as_ref().map(|e| e.look(keda, asked)) {
                Some(Looked::Ready(observation)) => Ok(Some(observation)),
                Some(Looked::Waiting(wait)) => Err(wait),
                None => Ok(None),
            }
        }
        async fn settle(looked: Result<Option<Observation>, Wait<'_>>) -> Option<Observation> {
            match looked {
                Ok(ready) => ready,
                Err(wait) => Some(wait.await),
            }
        }
        let (sb, prom) = match (
            look(&tracked.servicebus, keda, asked),
            look(&tracked.prometheus, keda, asked),
        ) {
            (Ok(sb), Ok(prom)) => (sb, prom),
            // A first or lapsed read: boxed, so the future of every call keeps no room for it.
            // Both run at once, so a never-seen object waits for the slower only.
            (sb, prom) => Box::pin(async { tokio::join!(settle(sb), settle(prom)) }).await,
        };
        let now = (self.config.clock)();
        if plan.cron.as_ref().is_some_and(|c| c.needs_search(now)) {
            // The search fills the windows' remembered occurrences; the decision reads them.
            // A search can take milliseconds, too long for an async worker. Boxed with the
            // readings: a future is moved whole through every layer that awaits it, and
            // every call's would otherwise keep room for both readings and the offloaded
            // work (`Engine::is_active`'s future: 728 bytes, 456 with this boxed).
            let searched = tracked.plan.clone();
            return Box::pin(async move {
                crate::offload::run(crate::offload::Work::Metadata, move || {
                    if let Some(cron) = &searched.cron {
                        cron.state(now);
                    }
                })
                .await;
                Decided::new(plan, now, sb, prom)
            })
            .await;
        }
        Decided::new(plan, now, sb, prom)
    }

    /// The answer to a caller: decides, records it for `/decisions` and the metrics, and logs
    /// a change once.
    pub async fn answer(
        &self,
        obj: ObjectRef<'_>,
    ) -> Result<(Arc<Tracked>, Decision), EngineError> {
        let tracked = self.track(obj).await?;
        let Decided {
            decision,
            now,
            servicebus,
        } = self.decision(&tracked, true).await;
        // One lock for the safety rule's look at the last answer and the record of this one
        // (in place, no allocation: KEDA calls this on every answer), so no other call's
        // answer comes between them.
        let (decision, previous) = {
            let mut answered = tracked.answered.lock();
            // The safety rule (README, "Answers to KEDA"), the one use of an earlier answer:
            // only while a value is stale.
            let decision =
                blend::hold_while_stale(decision, answered.last_replicas(), &tracked.plan);
            if let Some(why) = exhausted(&decision) {
                return Err(EngineError::Exhausted(why));
            }
            // The answer is recorded at the moment it was decided for: one wall-clock read.
            let previous = answered.record(now, &decision, servicebus);
            (decision, previous)
        };
        log_change(&tracked, &decision, previous);
        Ok((tracked, decision))
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
    pub(crate) fn watch(
        &self,
        tracked: &Tracked,
    ) -> Vec<(watch::Receiver<u64>, Box<dyn Send + Sync>)> {
        [&tracked.servicebus, &tracked.prometheus]
            .into_iter()
            .flatten()
            .map(|entry| entry.watch())
            .collect()
    }
}

/// `plan`'s entry in `cache`, when the plan has that signal and the scaler that cache; `rate`:
/// the decision reads the value's rate ([`SignalCache::entry`]).
fn entry<P: 'static>(
    cache: &Option<Arc<dyn SignalCache<P>>>,
    plan: &Option<P>,
    rate: bool,
) -> Option<Arc<dyn CacheEntry>> {
    cache
        .as_ref()
        .zip(plan.as_ref())
        .map(|(c, p)| c.entry(p, rate))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use chrono::TimeZone;

    use super::*;

    #[tokio::test]
    async fn an_answer_is_recorded_at_the_moment_it_was_decided_for_with_one_wall_clock_read() {
        // Each read of the clock is one second after the one before, so a second read would
        // record another moment than the one the cron window was decided at.
        let reads = Arc::new(AtomicI64::new(0));
        let counted = reads.clone();
        // Wednesday 2026-06-03 10:00 in Berlin, inside the window.
        let start = Utc.with_ymd_and_hms(2026, 6, 3, 8, 0, 0).unwrap();
        let config = EngineConfig {
            clock: Arc::new(move || {
                start + chrono::Duration::seconds(counted.fetch_add(1, Ordering::SeqCst) + 1)
            }),
            ..EngineConfig::default()
        };
        let engine = Engine::new(config, SignalCaches::default(), Metrics::new()).unwrap();
        let metadata: HashMap<String, String> = [
            ("timezone", "Europe/Berlin"),
            ("start", "0 8 * * 1-5"),
            ("end", "0 20 * * 1-5"),
            ("desiredReplicas", "4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let obj = ObjectRef {
            namespace: "production",
            name: "orders",
            metadata: &metadata,
        };
        engine.answer(obj).await.unwrap();
        let before = reads.load(Ordering::SeqCst);
        let (tracked, decision) = engine.answer(obj).await.unwrap();
        assert_eq!(decision.replicas(), Ok(4));
        assert_eq!(
            reads.load(Ordering::SeqCst),
            before + 1,
            "one clock read per answer"
        );
        let last = tracked.last().expect("the answer was recorded");
        assert_eq!(last.at, start + chrono::Duration::seconds(before + 1));
        assert_eq!(last.decision.replicas, 4);
    }
}
