//! What an answer comes to: the readings' decision, the error a missing signal gives KEDA,
//! and the log line a changed count writes once.

use chrono::{DateTime, Utc};

use super::{EngineError, Tracked};
use crate::blend::{self, Decision, Inputs, Missing};
use crate::metadata::Plan;
use crate::signal::{EntityCounts, Observation, SignalError, SignalKind};

/// Logs `d` once when its count differs from `previous`, the count the answer before it gave
/// (none if that answer had none, which logs the return).
pub(super) fn log_change(tracked: &Tracked, d: &Decision, previous: Option<u32>) {
    let Ok(replicas) = d.replicas() else {
        return;
    };
    if previous == Some(replicas) {
        return;
    }
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

/// The readings' decision, the wall-clock moment it was made for (the cron windows' and the
/// record's), and the Service Bus entity's other counts as read with its value.
pub(super) struct Decided {
    pub(super) decision: Decision,
    pub(super) now: DateTime<Utc>,
    pub(super) servicebus: Option<EntityCounts>,
}

impl Decided {
    pub(super) fn new(
        plan: &Plan,
        now: DateTime<Utc>,
        sb: Option<Observation>,
        prom: Option<Observation>,
    ) -> Self {
        let decision = blend::decide(Inputs {
            plan,
            now,
            servicebus: sb.as_ref(),
            prometheus: prom.as_ref(),
        });
        Self {
            decision,
            now,
            servicebus: sb.and_then(|o| o.counts),
        }
    }
}

/// Why a signal of `d` was refused by a capacity limit, if one was: the caller is told so
/// (`RESOURCE_EXHAUSTED`), not answered without that signal.
pub(crate) fn exhausted(d: &Decision) -> Option<String> {
    d.missing.iter().find_map(|m| match m.error.as_deref() {
        Some(SignalError::Capacity(why)) => Some(why.clone()),
        _ => None,
    })
}

/// Turns a missing signal into the error KEDA sees.
pub(crate) fn unavailable(m: &Missing) -> EngineError {
    match m.error.as_deref() {
        Some(SignalError::InvalidQuery(detail)) => {
            return EngineError::InvalidQuery(detail.clone());
        }
        Some(SignalError::Capacity(why)) => return EngineError::Exhausted(why.clone()),
        _ => {}
    }
    if let Some(SignalError::Refused(reason)) = m.error.as_deref() {
        return EngineError::UpstreamRefused {
            signal: m.kind,
            reason: reason.clone(),
        };
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
