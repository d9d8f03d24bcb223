//! `GET /decisions` and `GET /decisions/{namespace}/{name}`: what this replica last answered
//! for each tracked ScaledObject and why, as JSON (docs/operations.md). `explain` prints the
//! same table from a local decision or, with `--from`, from a pod's endpoint.
//!
//! Built at request time from the last decision the engine keeps per ScaledObject, so an
//! answer to KEDA costs one clone of the decision and nothing else. No secret is in it (no
//! connection string, header, credential or address); the Prometheus query text only when
//! `serve --decisions-show-queries` is set, since a query can name things the ScaledObject's
//! author did not mean every reader of the metrics port to see.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::blend::Decision;
use crate::engine::{Engine, LastAnswer, Tracked, unavailable};
use crate::signal::EntityCounts;

/// How `/decisions` answers.
#[derive(Clone, Debug)]
pub struct DecisionsOptions {
    /// Show each Prometheus trigger's query text (`--decisions-show-queries`).
    pub show_queries: bool,
    /// The pod named in every answer: each replica has its own cache and its own answers.
    pub pod: String,
}

impl Default for DecisionsOptions {
    fn default() -> Self {
        Self {
            show_queries: false,
            pod: pod_name(),
        }
    }
}

/// `POD_NAME` (the chart sets it from the downward API), else the host name.
pub(crate) fn pod_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .chain(std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The body of `/decisions` and `/decisions/{namespace}/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    /// The replica that answered (its cache, its answers).
    pub pod: String,
    pub decisions: Vec<DecisionView>,
}

/// One trigger's last answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionView {
    pub scaledobject_namespace: String,
    pub scaledobject: String,
    pub metric_name: String,
    /// When the answer was given; `None` while the object is tracked but not yet answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// The replica count answered; `None` when the caller got `UNAVAILABLE` (see `error`).
    pub replicas: Option<u32>,
    /// What `IsActive` answered; `None` when it was unknown.
    pub active: Option<bool>,
    /// What the caller was told instead of a replica count.
    pub error: Option<String>,
    /// The signal whose count became the answer.
    pub decided_by: Option<String>,
    /// The answer is a value kept from a failing upstream (within `staleAfter`).
    pub(crate) held: bool,
    pub policy: String,
    pub clamp: Clamp,
    pub stale_after_seconds: f64,
    pub signals: Vec<SignalView>,
    /// The Service Bus entity and its counts from the same read that gave the value.
    pub servicebus: Option<ServiceBusView>,
    /// The query text, only with `--decisions-show-queries`.
    pub prometheus_query: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clamp {
    pub min: Option<u32>,
    pub max: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalState {
    /// Read by the latest refresh.
    Fresh,
    /// The latest refresh failed; the value is kept from an earlier one, within staleAfter.
    Held,
    /// No usable value: never read, or the last good one is past staleAfter.
    Missing,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalView {
    pub signal: String,
    pub state: SignalState,
    pub value: Option<f64>,
    pub replicas: Option<u32>,
    pub active: Option<bool>,
    /// Age of the value used (or, when missing, of the last good one).
    pub age_seconds: Option<f64>,
    /// Why a signal is held or missing.
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceBusView {
    /// `queue `orders`` or `subscription `s` of topic `t``, as the trigger names it.
    pub entity: String,
    pub counts: Option<EntityCounts>,
}

const HELD_REASON: &str = "the latest refresh failed; the value is kept from an earlier read";

/// The view of `tracked` and its last answer (`None`: tracked, not answered yet).
pub(crate) fn view(
    tracked: &Tracked,
    last: Option<&LastAnswer>,
    show_queries: bool,
) -> DecisionView {
    let plan = &tracked.plan;
    let mut v = DecisionView {
        scaledobject_namespace: tracked.labels.scaledobject_namespace.to_string(),
        scaledobject: tracked.labels.scaledobject.to_string(),
        metric_name: tracked.metric_name.to_string(),
        answered_at: last.map(|l| l.at),
        replicas: None,
        active: None,
        error: None,
        decided_by: None,
        held: false,
        policy: plan.policy.to_string(),
        clamp: Clamp {
            min: plan.min_replicas,
            max: plan.max_replicas,
        },
        stale_after_seconds: plan.stale_after.as_secs_f64(),
        signals: Vec::new(),
        servicebus: plan.servicebus.as_ref().map(|sb| ServiceBusView {
            entity: sb.entity.to_string(),
            counts: last.and_then(|l| l.servicebus),
        }),
        prometheus_query: plan
            .prometheus
            .as_ref()
            .filter(|_| show_queries)
            .map(|p| p.query.trim().to_string()),
    };
    if let Some(last) = last {
        fill(&mut v, &last.decision);
    }
    v
}

fn fill(v: &mut DecisionView, d: &Decision) {
    match d.replicas() {
        Ok(r) => v.replicas = Some(r),
        Err(m) => v.error = Some(unavailable(m).to_string()),
    }
    v.active = d.active().ok();
    v.decided_by = d.decided_by.map(|k| k.as_str().to_string());
    v.held = d.held;
    let secs = |a: Option<Duration>| a.map(|a| a.as_secs_f64());
    for s in &d.signals {
        v.signals.push(SignalView {
            signal: s.kind.as_str().to_string(),
            state: if s.stale {
                SignalState::Held
            } else {
                SignalState::Fresh
            },
            value: Some(s.value),
            replicas: Some(s.replicas),
            active: Some(s.active),
            age_seconds: secs(s.age),
            reason: s.stale.then(|| HELD_REASON.to_string()),
        });
    }
    for m in &d.missing {
        v.signals.push(SignalView {
            signal: m.kind.as_str().to_string(),
            state: SignalState::Missing,
            value: None,
            replicas: None,
            active: None,
            age_seconds: secs(m.age),
            reason: Some(unavailable(m).to_string()),
        });
    }
}

/// The signal table and result line `explain` prints; true when a signal is missing.
pub(crate) fn render_table(v: &DecisionView, out: &mut String) -> bool {
    let _ = writeln!(
        out,
        "  {:<11} {:>12} {:>9} {:>7} {:>8}",
        "signal", "value", "replicas", "active", "age"
    );
    let mut missing = false;
    for s in &v.signals {
        if s.state == SignalState::Missing {
            continue;
        }
        let age = s.age_seconds.map_or("-".into(), |a| format!("{a:.1}s"));
        let note = if s.state == SignalState::Held {
            " (stale: upstream failing)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:<11} {:>12} {:>9} {:>7} {:>8}{note}",
            s.signal,
            s.value.map_or("-".into(), |x| x.to_string()),
            s.replicas.map_or("-".into(), |x| x.to_string()),
            if s.active == Some(true) { "yes" } else { "no" },
            age
        );
    }
    for s in v.signals.iter().filter(|s| s.state == SignalState::Missing) {
        missing = true;
        let _ = writeln!(
            out,
            "  {:<11} error: {}",
            s.signal,
            s.reason.as_deref().unwrap_or("no usable value")
        );
    }
    if let Some(sb) = &v.servicebus
        && let Some(c) = &sb.counts
    {
        let n = |c: Option<u64>| c.map_or("-".into(), |c| c.to_string());
        let _ = writeln!(
            out,
            "  servicebus {}: dead-lettered {}, scheduled {}, transfer {}, transfer dead-lettered {}",
            sb.entity,
            n(c.dead_letter),
            n(c.scheduled),
            n(c.transfer),
            n(c.transfer_dead_letter)
        );
    }
    if !missing && let Some(replicas) = v.replicas {
        let by = v
            .decided_by
            .clone()
            .unwrap_or_else(|| "no signal (all zero)".into());
        let _ = writeln!(
            out,
            "  result: {replicas} replicas, decided by {by}{}; active: {}",
            if v.held {
                " (held by a stale value)"
            } else {
                ""
            },
            match v.active {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            }
        );
    }
    missing
}

/// What `explain --from` prints for one decision a pod reported: the plan's summary (the
/// endpoint has no addresses or credentials to show), then the same table as `explain`.
pub(crate) fn render_remote(
    pod: &str,
    v: &DecisionView,
    now: DateTime<Utc>,
    out: &mut String,
) -> bool {
    let _ = writeln!(
        out,
        "ScaledObject {}/{} ({}) on pod {pod}",
        v.scaledobject_namespace, v.scaledobject, v.metric_name
    );
    let _ = writeln!(
        out,
        "metric {} (target 1), policy {}",
        v.metric_name, v.policy
    );
    if v.clamp.min.is_some() || v.clamp.max.is_some() {
        let n = |c: Option<u32>| c.map_or("-".into(), |c| c.to_string());
        let _ = writeln!(
            out,
            "  clamp: min {}, max {}",
            n(v.clamp.min),
            n(v.clamp.max)
        );
    }
    let _ = writeln!(
        out,
        "  stale after: {}",
        humantime::format_duration(Duration::from_secs_f64(v.stale_after_seconds.max(0.0)))
    );
    if let Some(q) = &v.prometheus_query {
        let _ = writeln!(out, "  prometheus query: {q}");
    }
    match v.answered_at {
        Some(at) => {
            let ago = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
            let _ = writeln!(out, "  answered at {} ({ago:.1}s ago)", at.to_rfc3339());
        }
        None => {
            let _ = writeln!(out, "  not answered yet");
            return true;
        }
    }
    let missing = render_table(v, out);
    if let Some(e) = &v.error
        && !missing
    {
        let _ = writeln!(out, "  error: {e}");
    }
    missing || v.error.is_some()
}

/// The routes, merged into the HTTP port's router.
pub(crate) fn router(engine: Arc<Engine>, options: DecisionsOptions) -> Router {
    let state = Arc::new((engine, options));
    Router::new()
        .route("/decisions", get(all))
        .route("/decisions/{namespace}/{name}", get(one))
        .with_state(state)
}

type Shared = Arc<(Arc<Engine>, DecisionsOptions)>;

fn collect(state: &Shared, keep: impl Fn(&Tracked) -> bool) -> Decisions {
    let (engine, options) = &**state;
    let decisions = engine
        .tracked()
        .iter()
        .filter(|t| keep(t))
        .map(|t| view(t, t.last().as_ref(), options.show_queries))
        .collect();
    Decisions {
        pod: options.pod.clone(),
        decisions,
    }
}

async fn all(State(state): State<Shared>) -> Response {
    axum::Json(collect(&state, |_| true)).into_response()
}

async fn one(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let found = collect(&state, |t| {
        *t.labels.scaledobject_namespace == *namespace && *t.labels.scaledobject == *name
    });
    if found.decisions.is_empty() {
        let body = serde_json::json!({
            "pod": found.pod,
            "error": "this pod tracks no such ScaledObject (each replica answers from its own \
                      cache: ask the pod KEDA is connected to, or every pod)",
        });
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    axum::Json(found).into_response()
}

/// The largest `/decisions` answer `explain --from` reads.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How `explain --from https://…` checks the pod's certificate.
#[derive(Clone, Debug, Default)]
pub(crate) struct FetchTls {
    /// Trust only the CAs in this PEM bundle (`--ca`); `None`: the system's roots.
    pub(crate) ca: Option<std::path::PathBuf>,
    /// The name the certificate must carry, when the URL names the pod by address
    /// (`--tls-server-name`).
    pub(crate) server_name: Option<String>,
}

/// `explain --from URL NAMESPACE/NAME`: the pod's decisions for one ScaledObject.
pub(crate) async fn fetch(
    base: &str,
    namespace: &str,
    name: &str,
    tls: &FetchTls,
) -> anyhow::Result<Decisions> {
    let mut url = url::Url::parse(base).with_context(|| format!("--from `{base}` is not a URL"))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => anyhow::bail!("--from `{base}`: scheme `{other}` is neither http nor https"),
    };
    if !https && (tls.ca.is_some() || tls.server_name.is_some()) {
        anyhow::bail!("--ca and --tls-server-name need an https:// --from");
    }
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("--from `{base}` cannot take a path"))?
        .pop_if_empty()
        .extend(["decisions", namespace, name]);
    // The operator typed this URL (often a port-forward on loopback or a pod address): not
    // a tenant's upstream, so no address guard.
    let mut builder = crate::http::operator_client_builder(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(path) = &tls.ca {
        let pem =
            std::fs::read(path).with_context(|| format!("--ca: reading {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca: {} is not a PEM CA bundle", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("--ca: {} holds no PEM certificate", path.display());
        }
        builder = builder.tls_certs_only(certs);
    }
    if let Some(server_name) = &tls.server_name {
        // Connect where --from points, check the certificate for `server_name`: a pod's
        // address is in no certificate, the Service's name is.
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| format!("--from `{base}`: cannot resolve `{host}`"))?;
        url.set_host(Some(server_name))
            .with_context(|| format!("--tls-server-name `{server_name}` is not a host name"))?;
        builder = builder.resolve(server_name, addr);
    }
    let client = builder.build()?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::http::error_chain(&e)))
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        anyhow::bail!(
            "{url}: this pod tracks no ScaledObject {namespace}/{name} (each replica answers \
             from its own cache: ask the pod KEDA is connected to, or every pod)"
        );
    }
    if !status.is_success() {
        anyhow::bail!("{url}: HTTP {status}");
    }
    // A pod tracking thousands of objects answers a few MB; more is not a /decisions answer.
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("GET {url}"))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            anyhow::bail!("{url}: the answer is larger than {MAX_ANSWER_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).with_context(|| format!("{url}: not a /decisions answer"))
}
