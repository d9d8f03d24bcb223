//! The decision: signal readings and the time in; replicas out.
//!
//! Pure: no I/O, no clock, no memory of earlier answers, so every scaler replica that read
//! the same upstreams answers the same, however often KEDA calls it. (While an upstream
//! fails, the engine applies the safety rule of README's "Answers to KEDA" on top: [`hold_while_stale`].) The gRPC layer, `explain` and `simulate` all call [`decide`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::metadata::{Plan, Policy};
use crate::signal::{Observation, SignalError, SignalKind};

mod drain;
#[cfg(test)]
mod tests;

pub(crate) use drain::drain_replicas;

/// Everything one decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    /// Wall-clock time, for cron windows.
    pub now: DateTime<Utc>,
    pub servicebus: Option<&'a Observation>,
    pub prometheus: Option<&'a Observation>,
}

/// One signal's part in a decision.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SignalOutcome {
    pub(crate) kind: SignalKind,
    /// The raw value: active messages, query result, or the cron window's replicas.
    pub(crate) value: f64,
    pub(crate) replicas: u32,
    pub(crate) active: bool,
    /// The latest refresh failed and `value` is kept from an earlier one.
    pub(crate) stale: bool,
    pub(crate) age: Option<Duration>,
}

/// A signal that has no usable value: never read, or its last good value is older than
/// `staleAfter`.
#[derive(Clone, Debug, PartialEq)]
pub struct Missing {
    pub kind: SignalKind,
    /// The latest failure, when there was one.
    pub error: Option<Arc<SignalError>>,
    pub(crate) age: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The blended, clamped replica count (meaningful when `missing` is empty).
    pub(crate) replicas: u32,
    /// True when any usable signal is active.
    pub(crate) any_active: bool,
    /// The signal whose count became the answer, if one did.
    pub(crate) decided_by: Option<SignalKind>,
    /// True when a stale signal (a value kept from a failing upstream, within `staleAfter`)
    /// set the answer, or held it at the last answer ([`hold_while_stale`]).
    pub(crate) held: bool,
    pub(crate) signals: Vec<SignalOutcome>,
    pub(crate) missing: Vec<Missing>,
}

impl Decision {
    /// The replica count from the signals that have a usable value (README, "Answers to KEDA": a partial outage is
    /// not a full one). Unknowable only when no configured signal has a value, or when one is
    /// missing because its metadata is wrong: a refused query is a configuration error that must
    /// reach the ScaledObject's author, not an outage to decide around.
    pub fn replicas(&self) -> Result<u32, &Missing> {
        if let Some(m) = self.misconfigured() {
            return Err(m);
        }
        match self.missing.first() {
            Some(m) if self.signals.is_empty() => Err(m),
            _ => Ok(self.replicas),
        }
    }

    /// Active if any usable signal is active; a missing signal cannot make it inactive, so
    /// with one missing and none of the rest active the state is unknown.
    pub fn active(&self) -> Result<bool, &Missing> {
        if let Some(m) = self.misconfigured() {
            return Err(m);
        }
        match (self.any_active, self.missing.first()) {
            (true, _) => Ok(true),
            (false, Some(m)) => Err(m),
            (false, None) => Ok(false),
        }
    }

    fn misconfigured(&self) -> Option<&Missing> {
        self.missing
            .iter()
            .find(|m| matches!(m.error.as_deref(), Some(SignalError::InvalidQuery(_))))
    }
}

/// The safety rule (README, "Answers to KEDA"): while a value kept from a failing upstream is in the decision, the
/// answer may hold or rise but not fall below `last`, the count last answered for this
/// ScaledObject (still within `maxReplicas`, which may have been lowered since). It is the only
/// rule that looks at an earlier answer, and it engages only during an upstream failure: with
/// every signal fresh, the answer is the readings' alone.
pub(crate) fn hold_while_stale(mut d: Decision, last: Option<u32>, plan: &Plan) -> Decision {
    if let Some(last) = last
        && let Some(stale) = d.signals.iter().find(|s| s.stale).map(|s| s.kind)
        && let held_at = plan.max_replicas.map_or(last, |hi| last.min(hi))
        && held_at > d.replicas
    {
        d.replicas = held_at;
        d.held = true;
        d.decided_by = Some(stale);
    }
    d
}

/// `ceil(value / per_replica)` as a replica count: negative values give 0, huge ones saturate.
pub fn replicas_for(value: f64, per_replica: f64) -> u32 {
    let r = (value / per_replica).ceil();
    if r.is_nan() || r <= 0.0 {
        0
    } else if r >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        r as u32
    }
}

pub fn decide(inputs: Inputs<'_>) -> Decision {
    let plan = inputs.plan;
    let mut signals = Vec::with_capacity(3);
    let mut missing = Vec::new();

    let mut usable = |kind, obs: Option<&Observation>| -> Option<(f64, bool, Option<Duration>)> {
        let obs = obs?;
        match (obs.value, obs.age) {
            (Some(v), Some(age)) if v.is_finite() && age <= plan.stale_after => {
                Some((v, obs.error.is_some(), Some(age)))
            }
            _ => {
                missing.push(Missing {
                    kind,
                    error: obs.error.clone(),
                    age: obs.age,
                });
                None
            }
        }
    };

    if let Some(sb) = &plan.servicebus {
        if let Some((value, stale, age)) = usable(SignalKind::ServiceBus, inputs.servicebus) {
            let replicas = match plan.policy {
                Policy::DrainTime {
                    target_drain_seconds,
                    messages_per_second_per_replica,
                } => drain_replicas(
                    value,
                    inputs.servicebus.and_then(|o| o.rate),
                    target_drain_seconds,
                    messages_per_second_per_replica,
                ),
                _ => replicas_for(value, sb.message_count),
            };
            signals.push(SignalOutcome {
                kind: SignalKind::ServiceBus,
                value,
                replicas,
                active: value > sb.activation_message_count,
                stale,
                age,
            });
        }
    } else if inputs.servicebus.is_some() {
        debug_assert!(
            false,
            "a Service Bus reading for a plan without Service Bus"
        );
    }
    if let Some(p) = &plan.prometheus
        && let Some((value, stale, age)) = usable(SignalKind::Prometheus, inputs.prometheus)
    {
        signals.push(SignalOutcome {
            kind: SignalKind::Prometheus,
            value,
            replicas: replicas_for(value, p.threshold),
            active: value > p.activation_threshold,
            stale,
            age,
        });
    }
    if let Some(cron) = &plan.cron {
        let state = cron.state(inputs.now);
        signals.push(SignalOutcome {
            kind: SignalKind::Cron,
            value: f64::from(state.replicas),
            replicas: state.replicas,
            active: state.active,
            stale: false,
            age: None,
        });
    }

    let leader = signals
        .iter()
        .filter(|s| s.replicas > 0)
        .max_by_key(|s| (s.replicas, std::cmp::Reverse(s.kind)));
    let decided_by = leader.map(|s| s.kind);
    let blended = match plan.policy {
        Policy::Sum => signals
            .iter()
            .fold(0u32, |acc, s| acc.saturating_add(s.replicas)),
        Policy::Max | Policy::DrainTime { .. } => leader.map_or(0, |s| s.replicas),
    };
    let mut replicas = blended;
    if let Some(lo) = plan.min_replicas {
        replicas = replicas.max(lo);
    }
    if let Some(hi) = plan.max_replicas {
        replicas = replicas.min(hi);
    }

    // A stale value is a floor like any other (its signal's count is in the blend); say so
    // when it is the one that set the answer.
    let held = replicas == blended && leader.is_some_and(|s| s.stale);

    Decision {
        replicas,
        any_active: signals.iter().any(|s| s.active),
        decided_by,
        held,
        signals,
        missing,
    }
}
