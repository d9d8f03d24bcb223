//! Reads namespaces for the cache: connections and their credentials, the per-host throttle,
//! and each refresh's requests within its budget (see the module above for the plan).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt as _;
use regex::Regex;

use crate::binding::HostRules;

use super::atom::Description;
use super::auth::{Credential, WorkloadIdentity, WorkloadIdentityConfig};
use super::client::{Client, ClientOptions, Connection, PAGE_SIZE};
use super::read_plan::{Bucket, Compiled, Fetch, Fetched, Gate, Name, Wants};
use super::values::{seen_in_passing, value};
use super::{NamespaceKey, Watched};
use crate::cache::{GroupRead, Upstream};
use crate::metadata::Entity;
use crate::metrics::Metrics;
use crate::signal::SignalError;

/// A list is read at most this many pages (10 000 entities, the namespace limit).
const MAX_PAGES: usize = 100;
/// Requests of one refresh in flight at once.
const CONCURRENCY: usize = 4;
/// The longest another group's 429/503 on the same host holds a group back (docs/security.md,
/// "Throttling stays fair"). Service Bus throttles per namespace, so a pause is polite; past this long the group
/// asks for itself, and honours the `Retry-After` it gets.
pub const CROSS_CREDENTIAL_HOLD: Duration = Duration::from_secs(30);

/// Reads namespaces for the cache.
pub struct ServiceBusUpstream {
    client: Client,
    identity: Arc<WorkloadIdentity>,
    /// Connections (and their token caches) by namespace; idle ones are dropped.
    connections: moka::sync::Cache<Arc<NamespaceKey>, Arc<Connection>>,
    /// Hosts that answered 429/503 with `Retry-After`, by the group that was told: until
    /// when, since when and with which status. The group told waits the whole time; every
    /// other group on the host (another credential on the same namespace, another tenant)
    /// at most `cross_credential_hold` of it.
    pub(super) quiet: parking_lot::Mutex<HashMap<String, HashMap<u64, Hold>>>,
    cross_credential_hold: Duration,
}

/// One group's throttling on a host.
#[derive(Clone, Copy, Debug)]
pub(super) struct Hold {
    until: Instant,
    since: Instant,
    status: u16,
}

/// A group's identity in the throttle table (endpoint and credential, hashed: the table
/// keeps no secret).
pub(super) fn group_id(key: &NamespaceKey) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl ServiceBusUpstream {
    /// Default client options with `hosts`; workload identity from `AZURE_*` variables.
    pub fn new(metrics: Metrics, hosts: &HostRules) -> Self {
        Self::with_options(
            metrics,
            ClientOptions {
                hosts: hosts.clone(),
                ..ClientOptions::default()
            },
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
            cross_credential_hold: CROSS_CREDENTIAL_HOLD,
            connections: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same upstream with another bound on how long one group's throttling holds the
    /// other groups on its host (tests; `serve` keeps [`CROSS_CREDENTIAL_HOLD`]).
    pub fn with_cross_credential_hold(mut self, hold: Duration) -> Self {
        self.cross_credential_hold = hold;
        self
    }

    /// The throttling still in force for group `me` on `host`, with the time left, if any:
    /// its own in full, another group's for at most `cross_credential_hold` after it came.
    pub(super) fn quiet_for(&self, host: &str, me: u64) -> Option<SignalError> {
        let now = Instant::now();
        let mut quiet = self.quiet.lock();
        quiet.retain(|_, holds| {
            holds.retain(|_, h| h.until > now);
            !holds.is_empty()
        });
        quiet
            .get(host)?
            .iter()
            .map(|(who, h)| {
                let until = if *who == me {
                    h.until
                } else {
                    h.since
                        .checked_add(self.cross_credential_hold)
                        .map_or(h.until, |end| h.until.min(end))
                };
                (until, h.status)
            })
            .filter(|(until, _)| *until > now)
            .max_by_key(|(until, _)| *until)
            .map(|(until, status)| SignalError::Throttled {
                status,
                retry_after: Some(until.saturating_duration_since(now)),
            })
    }

    pub(super) fn hold_quiet(&self, host: String, me: u64, wait: Duration, status: u16) {
        let now = Instant::now();
        // Retry-After is capped where it is read; capped again here, the sum stays in range.
        let until = now + wait.min(crate::http::MAX_RETRY_AFTER);
        let mut quiet = self.quiet.lock();
        let hold = quiet.entry(host).or_default().entry(me).or_insert(Hold {
            until,
            since: now,
            status,
        });
        if until >= hold.until {
            *hold = Hold {
                until,
                since: now,
                status,
            };
        }
    }

    fn connection(&self, key: &Arc<NamespaceKey>) -> Result<Arc<Connection>, SignalError> {
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

impl Upstream for ServiceBusUpstream {
    type Group = Arc<NamespaceKey>;
    type Item = Watched;
    const LISTS: bool = true;

    fn supervision(&self) -> Option<(&Metrics, &'static str)> {
        Some((self.client.metrics(), "servicebus"))
    }

    async fn read(&self, group: &Arc<NamespaceKey>, items: &[Watched]) -> GroupRead<Watched> {
        let conn = match self.connection(group) {
            Ok(c) => c,
            Err(e) => return GroupRead::all_failed(items, e),
        };
        let host = conn.host().to_ascii_lowercase();
        let me = group_id(group);
        if let Some(throttled) = self.quiet_for(&host, me) {
            // This group, or another on this namespace, was told to wait: so is this one.
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
                        Ok(Name::Exact(topic.to_string()))
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

        // The other counts of each item's entities come from the same reads that gave its
        // value (`blend_scaler_servicebus_*_messages`, `/decisions`): no read of their own.
        let mut counts = HashMap::new();
        for (item, c) in &compiled {
            let v = value(item, c, &fetched, conn.host()).map(|(v, c)| {
                counts.insert((*item).clone(), c);
                v
            });
            values.insert((*item).clone(), v);
        }
        if let Some(wait) = gate.retry_after()
            && let Some(SignalError::Throttled { status, .. }) = &*gate.throttled.lock()
        {
            self.hold_quiet(host, me, wait, *status);
        }
        GroupRead {
            values,
            retry_after: gate.retry_after(),
            seen_in_passing: seen_in_passing(&fetched, &queues, &topics),
            counts,
        }
    }
}
