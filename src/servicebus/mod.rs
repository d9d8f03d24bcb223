//! The `servicebus` signal: `ActiveMessageCount` of a queue or topic subscription, read from
//! the management (ATOM) API, one read per namespace per refresh shared by every ScaledObject
//! that watches it (docs/servicebus.md).
//!
//! The cache groups by [`NamespaceKey`] (endpoint + credentials) and keeps one [`Watched`]
//! item per distinct entity (or pattern). Each refresh of a namespace plans its requests:
//! - queues: one GET when a single queue is watched; otherwise the paged queue list
//!   (`$Resources/Queues`, 100 a page), stopping early once every named queue is seen
//!   unless a pattern needs the whole list;
//! - per topic: one GET when a single subscription is watched; otherwise the paged list of
//!   the topic's subscriptions;
//! - topic names that are patterns (`useRegex`) add the paged topic list.
//!
//! So reads per namespace per refresh stay within `ceil(entities / 100)` plus one per
//! watched topic. A 429/503 stops the refresh's remaining requests and hands `Retry-After`
//! to the cache, which holds the whole namespace back that long; the host is remembered, so
//! groups on the same namespace with other credentials (entity-scoped SAS rules) wait too.
//!
//! Past 600 lines on purpose: the read plan above, its paging and the throttle gate are one
//! algorithm over one request budget, and splitting them would spread that budget over files.

pub mod atom;
pub mod auth;
pub mod client;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use futures::StreamExt as _;
use regex::Regex;

use crate::cache::{GroupRead, Keyed, RefreshConfig, Refresher, SignalSource, Upstream};
use crate::metadata::{Aggregation, Entity, ServiceBusAuth, ServiceBusPlan};
use crate::metrics::Metrics;
use crate::signal::{EntityCounts, Observation, SignalError};

use self::atom::Description;
use self::auth::{Credential, WorkloadIdentity, WorkloadIdentityConfig};
use self::client::{Client, ClientOptions, Connection, PAGE_SIZE};

/// A list is read at most this many pages (10 000 entities, the namespace limit).
const MAX_PAGES: usize = 100;
/// Requests of one refresh in flight at once.
const CONCURRENCY: usize = 4;

/// One namespace as the cache groups it: where it is and who reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceKey {
    /// The management endpoint, normalised (lower-case host, no trailing slash).
    pub endpoint: String,
    pub auth: ServiceBusAuth,
}

/// What one ScaledObject watches inside a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Watched {
    pub entity: Entity,
    /// Names are anchored regular expressions (KEDA's `useRegex`).
    pub use_regex: bool,
    /// How matching entities combine; always `Sum` without `useRegex`, so equal entities
    /// share one item.
    pub operation: Aggregation,
}

/// The cache key of a plan: its namespace and what it watches there.
pub fn key(plan: &ServiceBusPlan) -> (NamespaceKey, Watched) {
    (
        NamespaceKey {
            endpoint: normalise_endpoint(&plan.endpoint),
            auth: plan.auth.clone(),
        },
        Watched {
            entity: plan.entity.clone(),
            use_regex: plan.use_regex,
            operation: if plan.use_regex {
                plan.operation
            } else {
                Aggregation::Sum
            },
        },
    )
}

fn normalise_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    match url::Url::parse(endpoint) {
        Ok(url) => url.as_str().trim_end_matches('/').to_string(),
        Err(_) => endpoint.trim_end_matches('/').to_string(),
    }
}

/// The Service Bus signal as the engine uses it: a background-refreshed cache over a
/// [`ServiceBusUpstream`] that reads workload identity settings from the environment.
pub fn source(config: RefreshConfig, metrics: Metrics) -> Arc<dyn SignalSource<ServiceBusPlan>> {
    source_from(ServiceBusUpstream::new(metrics), config)
}

/// Like [`source`], over a given upstream (tests, `demo`).
pub fn source_from(
    upstream: ServiceBusUpstream,
    config: RefreshConfig,
) -> Arc<dyn SignalSource<ServiceBusPlan>> {
    let upstream = Arc::new(upstream);
    Arc::new(Source {
        keyed: Keyed::new(Refresher::from_arc(upstream.clone(), config), key),
        upstream,
    })
}

/// The cache over the upstream, and the upstream itself for the counts its reads kept.
struct Source {
    keyed: Keyed<ServiceBusUpstream, ServiceBusPlan>,
    upstream: Arc<ServiceBusUpstream>,
}

impl SignalSource<ServiceBusPlan> for Source {
    fn observe<'a>(
        &'a self,
        plan: &'a ServiceBusPlan,
    ) -> Pin<Box<dyn Future<Output = Observation> + Send + 'a>> {
        self.keyed.observe(plan)
    }

    fn watch(
        &self,
        plan: &ServiceBusPlan,
    ) -> (tokio::sync::watch::Receiver<u64>, Box<dyn Send + Sync>) {
        self.keyed.watch(plan)
    }

    fn counts(&self, plan: &ServiceBusPlan) -> Option<EntityCounts> {
        self.upstream.counts.get(&key(plan))
    }
}

/// How long the counts of an entity no read returns any more are kept (the cache drops an
/// item nobody asks about after its idle time; this only bounds the table).
const COUNTS_KEPT: Duration = Duration::from_secs(3600);

fn entity_counts(c: &atom::CountDetails) -> EntityCounts {
    EntityCounts {
        active: c.active,
        dead_letter: c.dead_letter,
        scheduled: c.scheduled,
        transfer: c.transfer,
        transfer_dead_letter: c.transfer_dead_letter,
    }
}

/// Reads namespaces for the cache.
pub struct ServiceBusUpstream {
    client: Client,
    identity: Arc<WorkloadIdentity>,
    /// Connections (and their token caches) by namespace; idle ones are dropped.
    connections: moka::sync::Cache<NamespaceKey, Arc<Connection>>,
    /// Hosts that answered 429/503 with `Retry-After`, until when and with which status.
    /// Throttling is per namespace, so it holds back every group on the host, whatever
    /// its credential (entity-scoped SAS rules give one namespace several groups).
    quiet: parking_lot::Mutex<HashMap<String, (tokio::time::Instant, u16)>>,
    /// The other counts of each watched item's entities, from the same reads that gave its
    /// value (`blend_scaler_servicebus_*_messages`, `/decisions`): no read of their own.
    counts: moka::sync::Cache<(NamespaceKey, Watched), EntityCounts>,
}

impl ServiceBusUpstream {
    /// Default client options; workload identity from `AZURE_*` variables.
    pub fn new(metrics: Metrics) -> Self {
        Self::with_options(
            metrics,
            ClientOptions::default(),
            WorkloadIdentityConfig::from_env(),
        )
    }

    /// `identity` is the workload identity configuration, or why there is none (reported
    /// by reads that need it).
    pub fn with_options(
        metrics: Metrics,
        options: ClientOptions,
        identity: Result<WorkloadIdentityConfig, String>,
    ) -> Self {
        let client = Client::new(metrics.clone(), options);
        let identity = Arc::new(WorkloadIdentity::new(
            identity,
            client.http().clone(),
            metrics,
            client.options().timeout,
        ));
        Self {
            client,
            identity,
            quiet: parking_lot::Mutex::new(HashMap::new()),
            counts: moka::sync::Cache::builder()
                .time_to_live(COUNTS_KEPT)
                .build(),
            connections: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The throttling still in force for `host`, with the time left, if any.
    fn quiet_for(&self, host: &str) -> Option<SignalError> {
        let now = tokio::time::Instant::now();
        let mut quiet = self.quiet.lock();
        quiet.retain(|_, (until, _)| *until > now);
        quiet
            .get(host)
            .map(|(until, status)| SignalError::Throttled {
                status: *status,
                retry_after: Some(until.saturating_duration_since(now)),
            })
    }

    fn hold_quiet(&self, host: String, wait: Duration, status: u16) {
        let until = tokio::time::Instant::now() + wait;
        let mut quiet = self.quiet.lock();
        let entry = quiet.entry(host).or_insert((until, status));
        if until >= entry.0 {
            *entry = (until, status);
        }
    }

    fn connection(&self, key: &NamespaceKey) -> Result<Arc<Connection>, SignalError> {
        if let Some(c) = self.connections.get(key) {
            return Ok(c);
        }
        if key.endpoint.is_empty() {
            return Err(SignalError::Setup(
                "no Service Bus endpoint: set `namespace`, `endpoint`, or a connection string \
                 with `Endpoint`"
                    .into(),
            ));
        }
        let credential = Credential::from_auth(&key.auth, &self.identity)?;
        let conn = Arc::new(Connection::new(&key.endpoint, credential)?);
        self.connections.insert(key.clone(), conn.clone());
        Ok(conn)
    }
}

/// A name as the refresh uses it: exact (case-insensitive, as Service Bus names are) or a
/// pattern (case-sensitive, as KEDA's).
#[derive(Clone, Debug)]
enum Name {
    Exact(String),
    Pattern(Regex),
}

impl Name {
    fn new(text: &str, use_regex: bool) -> Result<Self, SignalError> {
        if !use_regex {
            return Ok(Name::Exact(text.to_string()));
        }
        ServiceBusPlan::name_pattern(text)
            .map(Name::Pattern)
            .map_err(|e| {
                SignalError::InvalidEntity(format!("`{text}` is not a valid pattern: {e}"))
            })
    }

    /// A pattern without regex syntax names exactly one entity: no list of its kind needed.
    fn plain(text: &str, use_regex: bool) -> bool {
        !use_regex || regex::escape(text) == text
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Name::Exact(n) => n.eq_ignore_ascii_case(name),
            Name::Pattern(p) => p.is_match(name),
        }
    }
}

/// What a refresh reads: all queues, one topic's subscriptions, or all topics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Bucket {
    Queues,
    Topics,
    /// By lower-cased topic name.
    Topic(String),
}

/// How a bucket is read: one GET of a named entity, or its paged list.
#[derive(Clone, Debug)]
enum Fetch {
    Get(String),
    /// With the names (lower-cased) that, once all seen, end the paging early; `None` when a
    /// pattern needs every page.
    List(Option<BTreeSet<String>>),
}

/// What the refresh wants from one bucket.
#[derive(Default)]
struct Wants {
    /// The display name of the container (the topic), for requests.
    name: String,
    exact: BTreeSet<String>,
    original: BTreeMap<String, String>,
    patterns: bool,
}

impl Wants {
    fn add(&mut self, name: &Name) {
        match name {
            Name::Exact(n) => {
                let lower = n.to_lowercase();
                self.original
                    .entry(lower.clone())
                    .or_insert_with(|| n.clone());
                self.exact.insert(lower);
            }
            Name::Pattern(_) => self.patterns = true,
        }
    }

    fn fetch(&self) -> Fetch {
        if !self.patterns && self.exact.len() == 1 {
            let only = self.exact.iter().next().cloned().unwrap_or_default();
            Fetch::Get(self.original.get(&only).cloned().unwrap_or(only))
        } else if self.patterns {
            Fetch::List(None)
        } else {
            Fetch::List(Some(self.exact.clone()))
        }
    }
}

/// Stops a refresh's remaining requests once the namespace throttles, and keeps the longest
/// `Retry-After` seen.
#[derive(Default)]
struct Gate {
    throttled: parking_lot::Mutex<Option<SignalError>>,
}

impl Gate {
    fn check(&self) -> Result<(), SignalError> {
        match &*self.throttled.lock() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn observe<T>(&self, r: Result<T, SignalError>) -> Result<T, SignalError> {
        if let Err(e @ SignalError::Throttled { .. }) = &r {
            let mut t = self.throttled.lock();
            let longer = match &*t {
                Some(old) => e.retry_after() > old.retry_after(),
                None => true,
            };
            if longer {
                *t = Some(e.clone());
            }
        }
        r
    }

    fn retry_after(&self) -> Option<Duration> {
        self.throttled
            .lock()
            .as_ref()
            .and_then(SignalError::retry_after)
    }
}

/// One watched item, compiled.
enum Compiled {
    Queue(Name),
    Subscription { topic: Name, subscription: Name },
}

type Fetched = HashMap<Bucket, Result<Vec<Description>, SignalError>>;

impl ServiceBusUpstream {
    async fn fetch(
        &self,
        conn: &Connection,
        gate: &Gate,
        bucket: &Bucket,
        topic_name: &str,
        how: Fetch,
    ) -> Result<Vec<Description>, SignalError> {
        match how {
            Fetch::Get(name) => {
                gate.check()?;
                let r = match bucket {
                    Bucket::Queues => self.client.queue(conn, &name).await,
                    Bucket::Topic(_) => self.client.subscription(conn, topic_name, &name).await,
                    Bucket::Topics => Err(SignalError::Unreported("topics are only listed")),
                };
                gate.observe(r).map(|d| vec![d])
            }
            Fetch::List(stop_when) => {
                let mut all: Vec<Description> = Vec::new();
                for page in 0..MAX_PAGES {
                    gate.check()?;
                    let skip = all.len();
                    let r = match bucket {
                        Bucket::Queues => self.client.queues_page(conn, skip).await,
                        Bucket::Topics => self.client.topics_page(conn, skip).await,
                        Bucket::Topic(_) => {
                            self.client.subscriptions_page(conn, topic_name, skip).await
                        }
                    };
                    let entries = gate.observe(r)?;
                    let n = entries.len();
                    // A server that ignores `$skip` would page forever: stop at a repeat.
                    if page > 0 && n > 0 && all.iter().any(|d| d.name == entries[0].name) {
                        return Err(SignalError::Malformed(
                            "the list repeats itself: `$skip` was ignored".into(),
                        ));
                    }
                    all.extend(entries);
                    if n < PAGE_SIZE {
                        return Ok(all);
                    }
                    if let Some(needed) = &stop_when
                        && needed
                            .iter()
                            .all(|w| all.iter().any(|d| d.name.to_lowercase() == *w))
                    {
                        return Ok(all);
                    }
                }
                Err(SignalError::OverLimit(format!(
                    "more than {} entities to list; the namespace limit is exceeded",
                    MAX_PAGES * PAGE_SIZE
                )))
            }
        }
    }

    async fn fetch_all(
        &self,
        conn: &Connection,
        gate: &Gate,
        plan: Vec<(Bucket, String, Fetch)>,
    ) -> Fetched {
        futures::stream::iter(plan)
            .map(|(bucket, name, how)| async move {
                let r = self.fetch(conn, gate, &bucket, &name, how).await;
                (bucket, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }
}

/// The entities a list read returned that no item names exactly, as the items that would:
/// after a restart KEDA asks about one ScaledObject after another, and each one whose entity
/// is on a page already read is answered from it instead of costing the namespace a read.
fn seen_in_passing(
    fetched: &Fetched,
    queues: &Wants,
    topics: &BTreeMap<String, Wants>,
) -> HashMap<Watched, f64> {
    let exact = |entity: Entity| Watched {
        entity,
        use_regex: false,
        operation: Aggregation::Sum,
    };
    let unwatched = |bucket: &Bucket, wants: &Wants| {
        let list = match fetched.get(bucket) {
            Some(Ok(list)) => list.as_slice(),
            _ => &[],
        };
        list.iter()
            .filter(|d| !wants.exact.contains(&d.name.to_lowercase()))
            .filter_map(|d| Some((d.name.clone(), d.active().ok()? as f64)))
            .collect::<Vec<_>>()
    };
    let mut seen = HashMap::new();
    for (name, v) in unwatched(&Bucket::Queues, queues) {
        seen.insert(exact(Entity::Queue(name)), v);
    }
    for (lower, w) in topics {
        for (name, v) in unwatched(&Bucket::Topic(lower.clone()), w) {
            let entity = Entity::Subscription {
                topic: w.name.clone(),
                subscription: name,
            };
            seen.insert(exact(entity), v);
        }
    }
    seen
}

fn not_found(what: String) -> SignalError {
    SignalError::NotFound(what)
}

/// The entries of `bucket`, or why there are none.
fn entries<'a>(fetched: &'a Fetched, bucket: &Bucket) -> Result<&'a [Description], SignalError> {
    match fetched.get(bucket) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.clone()),
        None => Err(SignalError::Unreported("the namespace was not read")),
    }
}

/// The item's value, and the other counts of the entities it came from (summed over a
/// `useRegex` match).
fn value(
    item: &Watched,
    compiled: &Compiled,
    fetched: &Fetched,
    host: &str,
) -> Result<(f64, EntityCounts), SignalError> {
    let found: Vec<&Description> = match compiled {
        Compiled::Queue(name) => entries(fetched, &Bucket::Queues)?
            .iter()
            .filter(|d| name.matches(&d.name))
            .collect(),
        Compiled::Subscription {
            topic,
            subscription,
        } => {
            let topics: Vec<String> = match topic {
                Name::Exact(t) => vec![t.to_lowercase()],
                Name::Pattern(p) => entries(fetched, &Bucket::Topics)?
                    .iter()
                    .filter(|d| p.is_match(&d.name))
                    .map(|d| d.name.to_lowercase())
                    .collect(),
            };
            let mut found = Vec::new();
            for t in &topics {
                let list = entries(fetched, &Bucket::Topic(t.clone()))?;
                found.extend(list.iter().filter(|d| subscription.matches(&d.name)));
            }
            found
        }
    };
    let v = combine(item, &found, || describe(item, host))?;
    let counts = if item.use_regex {
        let each: Vec<EntityCounts> = found.iter().map(|d| entity_counts(&d.counts)).collect();
        EntityCounts::sum(&each)
    } else {
        entity_counts(&found[0].counts)
    };
    Ok((v, counts))
}

/// How a not-found message names what was watched.
fn describe(item: &Watched, host: &str) -> String {
    match (&item.entity, item.use_regex) {
        (Entity::Queue(q), false) => format!("queue `{q}` in namespace `{host}`"),
        (Entity::Queue(q), true) => format!("a queue matching `{q}` in namespace `{host}`"),
        (
            Entity::Subscription {
                topic,
                subscription,
            },
            false,
        ) => format!("subscription `{subscription}` of topic `{topic}` in namespace `{host}`"),
        (
            Entity::Subscription {
                topic,
                subscription,
            },
            true,
        ) => format!(
            "a subscription matching `{subscription}` of a topic matching `{topic}` in \
             namespace `{host}`"
        ),
    }
}

/// The item's value from the entities that matched it: the one exact entity's active
/// count, or the operation over every match. Nothing matched is "not found", never 0.
fn combine(
    item: &Watched,
    found: &[&Description],
    what: impl FnOnce() -> String,
) -> Result<f64, SignalError> {
    if found.is_empty() {
        return Err(not_found(what()));
    }
    let mut counts = Vec::with_capacity(found.len());
    for d in found {
        counts.push(d.active()? as f64);
    }
    if !item.use_regex {
        // Names are unique per container; with case-insensitive matching take the first.
        return Ok(counts[0]);
    }
    item.operation
        .apply(&counts)
        .ok_or_else(|| not_found(what()))
}

impl Upstream for ServiceBusUpstream {
    type Group = NamespaceKey;
    type Item = Watched;

    async fn read(&self, group: &NamespaceKey, items: &[Watched]) -> GroupRead<Watched> {
        let conn = match self.connection(group) {
            Ok(c) => c,
            Err(e) => return GroupRead::all_failed(items, e),
        };
        let host = conn.host().to_ascii_lowercase();
        if let Some(throttled) = self.quiet_for(&host) {
            // Another group on this namespace was told to wait: so is this one.
            return GroupRead::all_failed(items, throttled);
        }
        let mut values: HashMap<Watched, Result<f64, SignalError>> = HashMap::new();
        let mut compiled: Vec<(&Watched, Compiled)> = Vec::new();
        let mut queues = Wants::default();
        let mut topics: BTreeMap<String, Wants> = BTreeMap::new();
        let mut topic_patterns: Vec<Regex> = Vec::new();

        for item in items {
            let c = match &item.entity {
                Entity::Queue(q) => Name::new(q, item.use_regex).map(Compiled::Queue),
                Entity::Subscription {
                    topic,
                    subscription,
                } => {
                    // A pattern topic without regex syntax is one topic: no topic list.
                    let t = if Name::plain(topic, item.use_regex) {
                        Ok(Name::Exact(topic.clone()))
                    } else {
                        Name::new(topic, true)
                    };
                    t.and_then(|t| {
                        Name::new(subscription, item.use_regex).map(|s| Compiled::Subscription {
                            topic: t,
                            subscription: s,
                        })
                    })
                }
            };
            let c = match c {
                Ok(c) => c,
                Err(e) => {
                    values.insert(item.clone(), Err(e));
                    continue;
                }
            };
            match (&item.entity, &c) {
                (Entity::Queue(_), Compiled::Queue(name)) => queues.add(name),
                (
                    _,
                    Compiled::Subscription {
                        topic: Name::Exact(t),
                        subscription: s,
                    },
                ) => {
                    let w = topics.entry(t.to_lowercase()).or_default();
                    if w.name.is_empty() {
                        w.name = t.clone();
                    }
                    w.add(s);
                }
                (
                    _,
                    Compiled::Subscription {
                        topic: Name::Pattern(p),
                        ..
                    },
                ) => topic_patterns.push(p.clone()),
                _ => {}
            }
            compiled.push((item, c));
        }

        let gate = Gate::default();
        let mut fetched: Fetched = HashMap::new();
        // Pattern topics first: their matches decide which subscription lists to read.
        if !topic_patterns.is_empty() {
            fetched.extend(
                self.fetch_all(
                    &conn,
                    &gate,
                    vec![(Bucket::Topics, String::new(), Fetch::List(None))],
                )
                .await,
            );
            if let Some(Ok(all)) = fetched.get(&Bucket::Topics) {
                for d in all {
                    if topic_patterns.iter().any(|p| p.is_match(&d.name)) {
                        let w = topics.entry(d.name.to_lowercase()).or_default();
                        if w.name.is_empty() {
                            w.name = d.name.clone();
                        }
                        // Subscriptions of a pattern topic are matched after a full list.
                        w.patterns = true;
                    }
                }
            }
        }
        let mut plan = Vec::new();
        if !queues.exact.is_empty() || queues.patterns {
            plan.push((Bucket::Queues, String::new(), queues.fetch()));
        }
        for (lower, w) in &topics {
            plan.push((Bucket::Topic(lower.clone()), w.name.clone(), w.fetch()));
        }
        fetched.extend(self.fetch_all(&conn, &gate, plan).await);

        for (item, c) in &compiled {
            let v = value(item, c, &fetched, conn.host()).map(|(v, counts)| {
                self.counts.insert((group.clone(), (*item).clone()), counts);
                v
            });
            values.insert((*item).clone(), v);
        }

        if let Some(wait) = gate.retry_after()
            && let Some(SignalError::Throttled { status, .. }) = &*gate.throttled.lock()
        {
            self.hold_quiet(host, wait, *status);
        }
        GroupRead {
            values,
            retry_after: gate.retry_after(),
            // Their counts are kept from the first read that watches them: a page holds up
            // to a hundred entities nobody may ever ask about.
            seen_in_passing: seen_in_passing(&fetched, &queues, &topics),
        }
    }
}

#[cfg(test)]
mod tests;
