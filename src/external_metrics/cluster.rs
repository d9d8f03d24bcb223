//! The adapter's side of the cluster: a kube-runtime watcher over every `BlendedMetric` keeps
//! the [`Registry`] the listener serves from, and each object's `status` says whether it is
//! served and with what value.
//!
//! Status is computed from the same engine path the metric route takes (the `*FromEnv`
//! refusal, `metadata::parse`, the host and namespace rules, the blended decision) and written
//! with a merge patch only when it differs from what the API server holds. Two replicas
//! compute the same content and keep `lastTransitionTime` from the stored condition while the
//! condition's status holds, so the second replica's write is a no-op the API server does not
//! even store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::quantity;
use super::server::Registry;
use crate::crd::{BlendedMetric, BlendedMetricSpec, BlendedMetricStatus, Condition, KeyError};
use crate::engine::{Engine, EngineError, ObjectRef};
use crate::metadata::MetadataError;

/// The field manager of the adapter's status writes.
pub(crate) const FIELD_MANAGER: &str = "blend-scaler";

/// Per-key errors kept in a status: enough to fix the first ones, bounded in size.
const MAX_STATUS_ERRORS: usize = 20;

/// The name the engine tracks a `BlendedMetric` under: the metric route and the status writer
/// use the same one, so they share one tracked object, one cache entry and one capacity slot.
pub(crate) fn engine_object_name(name: &str) -> String {
    format!("blendedmetric/{name}")
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How often every status is recomputed (values change with the signals, not only with
    /// the object); the HPA reads every 15 s, so a status that lags by this much is current
    /// enough for people.
    pub status_interval: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            status_interval: Duration::from_secs(15),
        }
    }
}

/// What the API server last told us of one object.
struct Known {
    spec: BlendedMetricSpec,
    generation: Option<i64>,
    status: Option<BlendedMetricStatus>,
    /// The last failed status write, logged once until it changes or a write succeeds (a
    /// missing RBAC rule would otherwise log every object every interval).
    write_error: Option<String>,
}

type Key = (String, String);

/// Watches `BlendedMetric`s in every namespace until aborted.
pub fn spawn(
    client: kube::Client,
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    options: ClusterOptions,
) -> JoinHandle<()> {
    tokio::spawn(run(client, engine, registry, options))
}

async fn run(
    client: kube::Client,
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    options: ClusterOptions,
) {
    let all: Api<BlendedMetric> = Api::all(client.clone());
    let mut events = watcher::watcher(all, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known: HashMap<Key, Known> = HashMap::new();
    // Objects seen in a relist: those not seen again were deleted while the watch was down.
    let mut relisted: Option<HashSet<Key>> = None;
    let mut tick = tokio::time::interval(options.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return };
                match event {
                    Err(e) => tracing::warn!(error = %e, "watching BlendedMetrics"),
                    Ok(Event::Init) => relisted = Some(HashSet::new()),
                    Ok(Event::InitApply(obj)) | Ok(Event::Apply(obj)) => {
                        let Some(key) = key_of(&obj) else { continue };
                        if let Some(seen) = relisted.as_mut() {
                            seen.insert(key.clone());
                        }
                        registry.upsert(&key.0, &key.1, obj.spec.clone());
                        let write_error = known.remove(&key).and_then(|k| k.write_error);
                        known.insert(key.clone(), Known {
                            spec: obj.spec,
                            generation: obj.metadata.generation,
                            status: obj.status,
                            write_error,
                        });
                        reconcile(&client, &engine, &mut known, &key).await;
                    }
                    Ok(Event::InitDone) => {
                        registry.mark_listed();
                        let seen = relisted.take().unwrap_or_default();
                        known.retain(|key, _| {
                            let keep = seen.contains(key);
                            if !keep {
                                registry.remove(&key.0, &key.1);
                            }
                            keep
                        });
                    }
                    Ok(Event::Delete(obj)) => {
                        if let Some(key) = key_of(&obj) {
                            registry.remove(&key.0, &key.1);
                            known.remove(&key);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let keys: Vec<Key> = known.keys().cloned().collect();
                for key in keys {
                    reconcile(&client, &engine, &mut known, &key).await;
                }
            }
        }
    }
}

fn key_of(obj: &BlendedMetric) -> Option<Key> {
    Some((obj.metadata.namespace.clone()?, obj.metadata.name.clone()?))
}

/// Writes the object's status if it differs from the one the API server holds.
async fn reconcile(
    client: &kube::Client,
    engine: &Engine,
    known: &mut HashMap<Key, Known>,
    key: &Key,
) {
    let Some(k) = known.get(key) else { return };
    let (namespace, name) = key;
    let outcome = evaluate(engine, namespace, name, &k.spec).await;
    let now = chrono::Utc::now();
    let desired = status_for(&outcome, k.generation, k.status.as_ref(), now);
    if k.status.as_ref() == Some(&desired) {
        return;
    }
    let api: Api<BlendedMetric> = Api::namespaced(client.clone(), namespace);
    let patch = Patch::Merge(serde_json::json!({ "status": merge_body(&desired) }));
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api.patch_status(name, &params, &patch).await {
        Ok(stored) => {
            if let Some(k) = known.get_mut(key) {
                k.status = stored.status;
                k.write_error = None;
            }
        }
        Err(e) => {
            let error = e.to_string();
            if let Some(k) = known.get_mut(key)
                && k.write_error.as_ref() != Some(&error)
            {
                tracing::warn!(
                    namespace = %namespace,
                    blendedmetric = %name,
                    %error,
                    "writing BlendedMetric status"
                );
                k.write_error = Some(error);
            }
        }
    }
}

/// A merge patch replaces what it names and keeps what it omits, so every field the adapter
/// owns is named, as `null` when it is to be cleared.
fn merge_body(status: &BlendedMetricStatus) -> Value {
    let mut body = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(obj) = body.as_object_mut() {
        for field in [
            "conditions",
            "errors",
            "metricName",
            "value",
            "observedGeneration",
        ] {
            obj.entry(field).or_insert(Value::Null);
        }
    }
    body
}

/// What serving one `BlendedMetric` gives now.
#[derive(Debug)]
pub(crate) enum Outcome {
    Serving {
        metric_name: String,
        replicas: u32,
    },
    /// Every signal is unavailable and `spec.fallback.replicas` is served instead.
    Fallback {
        metric_name: String,
        replicas: u32,
        why: String,
    },
    Failed {
        reason: &'static str,
        message: String,
        errors: Vec<MetadataError>,
    },
}

/// The route's answer for this object, without recording it as an answer: the status writer
/// is not a caller, and must not change what `/decisions` and the metrics show.
pub(crate) async fn evaluate(
    engine: &Engine,
    namespace: &str,
    name: &str,
    spec: &BlendedMetricSpec,
) -> Outcome {
    let metadata = match spec.engine_metadata() {
        Ok(metadata) => metadata,
        Err(errors) => {
            return Outcome::Failed {
                reason: "InvalidMetadata",
                message: errors.to_string(),
                errors: errors.0,
            };
        }
    };
    let object = engine_object_name(name);
    let tracked = match engine
        .track(ObjectRef {
            namespace,
            name: &object,
            metadata: &metadata,
        })
        .await
    {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let decision = engine.peek(&tracked).await;
    let metric_name = tracked.plan.metric_name.to_string();
    if let Some(why) = crate::engine::exhausted(&decision) {
        return failed(EngineError::Exhausted(why));
    }
    match decision.replicas().map_err(crate::engine::unavailable) {
        Ok(replicas) => Outcome::Serving {
            metric_name,
            replicas,
        },
        Err(EngineError::Unavailable { signal, reason }) if spec.fallback.is_some() => {
            Outcome::Fallback {
                metric_name,
                replicas: spec.fallback.as_ref().map_or(0, |f| f.replicas),
                why: format!("{signal} signal has no usable value: {reason}"),
            }
        }
        Err(e) => failed(e),
    }
}

fn failed(e: EngineError) -> Outcome {
    let message = e.to_string();
    let (reason, errors) = match e {
        EngineError::Metadata(errors) => ("InvalidMetadata", errors.0),
        EngineError::InvalidQuery(detail) => (
            "InvalidMetadata",
            vec![MetadataError {
                key: "query".into(),
                message: detail,
            }],
        ),
        EngineError::NotAllowed { key, .. } | EngineError::AddressRefused { key, .. } => (
            "UpstreamRefused",
            vec![MetadataError {
                key: key.into(),
                message: message.clone(),
            }],
        ),
        EngineError::Refused(r) => (
            "Refused",
            vec![MetadataError {
                key: r.key.into(),
                message: r.message,
            }],
        ),
        EngineError::UpstreamRefused { .. } => ("UpstreamRefused", Vec::new()),
        EngineError::Unavailable { .. } => ("SignalUnavailable", Vec::new()),
        EngineError::NotEnabled(_) => ("SignalNotEnabled", Vec::new()),
        EngineError::Exhausted(_) => ("CapacityExhausted", Vec::new()),
    };
    Outcome::Failed {
        reason,
        message,
        errors,
    }
}

/// The status for `outcome`. `lastTransitionTime` is the stored condition's while its status
/// holds, so the content is the same whichever replica writes it.
pub(crate) fn status_for(
    outcome: &Outcome,
    generation: Option<i64>,
    stored: Option<&BlendedMetricStatus>,
    now: chrono::DateTime<chrono::Utc>,
) -> BlendedMetricStatus {
    let (ready, reason, message, metric_name, value, errors) = match outcome {
        Outcome::Serving {
            metric_name,
            replicas,
        } => (
            "True",
            "Serving",
            format!("served as external metric `{metric_name}`"),
            Some(metric_name.clone()),
            Some(quantity::from_replicas(*replicas)),
            Vec::new(),
        ),
        Outcome::Fallback {
            metric_name,
            replicas,
            why,
        } => (
            "True",
            "Fallback",
            format!("serving spec.fallback.replicas: {why}"),
            Some(metric_name.clone()),
            Some(quantity::from_replicas(*replicas)),
            Vec::new(),
        ),
        Outcome::Failed {
            reason,
            message,
            errors,
        } => (
            "False",
            *reason,
            message.clone(),
            None,
            None,
            errors
                .iter()
                .take(MAX_STATUS_ERRORS)
                .map(|e| KeyError {
                    key: e.key.clone(),
                    message: e.message.clone(),
                })
                .collect(),
        ),
    };
    let last_transition_time = stored
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == ready)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    BlendedMetricStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ready.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: generation,
        }],
        errors,
        metric_name,
        value,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn serving(replicas: u32) -> Outcome {
        Outcome::Serving {
            metric_name: "blended-replicas".into(),
            replicas,
        }
    }

    #[test]
    fn a_serving_object_is_ready_with_its_metric_name_and_canonical_value() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap();
        let s = status_for(&serving(7), Some(3), None, now);
        assert_eq!(s.metric_name.as_deref(), Some("blended-replicas"));
        assert_eq!(s.value.as_deref(), Some("7"));
        assert_eq!(s.observed_generation, Some(3));
        let c = &s.conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Ready", "True"));
        assert_eq!(c.last_transition_time, "2026-12-03T10:00:00Z");
    }

    #[test]
    fn the_transition_time_is_kept_while_the_condition_holds_and_renewed_when_it_flips() {
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap();
        let t1 = t0 + chrono::Duration::minutes(5);
        let first = status_for(&serving(7), Some(1), None, t0);
        // Another replica, later, with another value: same transition time.
        let later = status_for(&serving(9), Some(1), Some(&first), t1);
        assert_eq!(
            later.conditions[0].last_transition_time,
            "2026-12-03T10:00:00Z"
        );
        let broken = Outcome::Failed {
            reason: "InvalidMetadata",
            message: "metadata key `desiredReplicas`: is not a whole number".into(),
            errors: vec![MetadataError {
                key: "desiredReplicas".into(),
                message: "is not a whole number".into(),
            }],
        };
        let flipped = status_for(&broken, Some(2), Some(&later), t1);
        assert_eq!(flipped.conditions[0].status, "False");
        assert_eq!(
            flipped.conditions[0].last_transition_time,
            "2026-12-03T10:05:00Z"
        );
        assert_eq!(flipped.value, None);
        assert_eq!(flipped.errors[0].key, "desiredReplicas");
    }

    #[test]
    fn the_same_outcome_gives_the_same_status_on_both_replicas() {
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap();
        let stored = status_for(&serving(4), Some(1), None, t0);
        let a = status_for(
            &serving(4),
            Some(1),
            Some(&stored),
            t0 + chrono::Duration::seconds(3),
        );
        let b = status_for(
            &serving(4),
            Some(1),
            Some(&stored),
            t0 + chrono::Duration::seconds(9),
        );
        assert_eq!(a, stored);
        assert_eq!(a, b);
    }

    #[test]
    fn a_merge_patch_names_every_owned_field_so_cleared_ones_are_removed() {
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap();
        let broken = Outcome::Failed {
            reason: "SignalUnavailable",
            message: "prometheus signal has no usable value: timed out".into(),
            errors: Vec::new(),
        };
        let body = merge_body(&status_for(&broken, Some(1), None, t0));
        assert_eq!(body["value"], Value::Null);
        assert_eq!(body["metricName"], Value::Null);
        assert_eq!(body["errors"], Value::Null);
        assert!(body.as_object().unwrap().contains_key("value"));
        assert_eq!(body["conditions"][0]["reason"], "SignalUnavailable");
    }

    #[test]
    fn too_many_key_errors_are_cut_to_a_bounded_list() {
        let errors = (0..100)
            .map(|i| MetadataError {
                key: format!("k{i}FromEnv"),
                message: "refused".into(),
            })
            .collect();
        let broken = Outcome::Failed {
            reason: "InvalidMetadata",
            message: "many".into(),
            errors,
        };
        let s = status_for(&broken, None, None, chrono::Utc::now());
        assert_eq!(s.errors.len(), MAX_STATUS_ERRORS);
    }
}
