//! What a tracked ScaledObject keeps of its answers: one fixed-size record, written in place on
//! every answer, that is both its last answer (`/decisions`, the change log, the safety rule)
//! and what its `/metrics` series show. No allocation per KEDA call: the record holds no
//! collection, and a signal's error is a clone of the cache's `Arc`.
//!
//! (Each object used to keep a clone of its last [`Decision`] behind an `Arc`, two vectors
//! inside, and the metrics a second record of the same answer in a map by object: about 840
//! bytes per object and three allocations per call, BENCHMARKS.md "Memory".)

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::blend::{Decision, Missing, SignalOutcome};
use crate::metadata::Plan;
use crate::metrics::{Figures, SignalFigures};
use crate::signal::{EntityCounts, SignalError, SignalKind};

/// The kinds in [`SignalKind`]'s order, the order a decision lists its signals in.
const KINDS: [SignalKind; 3] = [
    SignalKind::ServiceBus,
    SignalKind::Prometheus,
    SignalKind::Cron,
];

/// An object's answers as kept: the last one, and the figures its series show.
#[derive(Clone, Debug, Default)]
pub(crate) struct Answered {
    /// When the last answer was given; `None` before the first (or after the plan changed:
    /// the new plan has no answer yet, though its series keep the old figures until it does).
    at: Option<DateTime<Utc>>,
    /// The series exist: some plan of this object answered.
    shown: bool,
    /// The blended count of the last decision ([`Decision::replicas`] when it had one).
    replicas: u32,
    /// What the last answer gave KEDA: `Decision::replicas()`, none for `UNAVAILABLE`.
    answered: Option<u32>,
    /// The latest count answered, kept through answers that had none (`desired_replicas`).
    desired: Option<u32>,
    any_active: bool,
    decided_by: Option<SignalKind>,
    held: bool,
    /// By [`SignalKind`].
    signals: [Part; 3],
    /// The Service Bus entity's other counts, as of the latest answer that had them.
    servicebus: Option<EntityCounts>,
}

/// One signal in the last answer.
#[derive(Clone, Debug, Default)]
struct Part {
    state: State,
    /// Its value and replicas in the latest answer that used it: a signal missing now shows
    /// its last ones on `/metrics`.
    value: Option<(f64, u32)>,
    /// The age of the value used or, when missing, of the last good one.
    age: Option<Duration>,
}

#[derive(Clone, Debug, Default)]
enum State {
    /// Not in the last answer (not in the plan, or no answer yet).
    #[default]
    Absent,
    Used {
        active: bool,
        stale: bool,
    },
    Missing {
        error: Option<Arc<SignalError>>,
    },
}

/// The last answer as it was given: when, and the Service Bus entity's other counts then.
#[derive(Clone, Debug)]
pub(crate) struct LastAnswer {
    pub(crate) at: DateTime<Utc>,
    pub(crate) decision: Decision,
    pub(crate) servicebus: Option<EntityCounts>,
}

impl Answered {
    /// `d` answered at `at`, with the Service Bus counts the cache had then. Returns what the
    /// answer before it gave KEDA (none if there was none, or it had no count).
    pub(crate) fn record(
        &mut self,
        at: DateTime<Utc>,
        d: &Decision,
        servicebus: Option<EntityCounts>,
    ) -> Option<u32> {
        let before = self.last_replicas();
        let answered = d.replicas().ok();
        self.at = Some(at);
        self.shown = true;
        self.replicas = d.replicas;
        self.answered = answered;
        self.desired = answered.or(self.desired);
        self.any_active = d.any_active;
        self.decided_by = d.decided_by;
        self.held = d.held;
        self.servicebus = servicebus.or(self.servicebus);
        for part in &mut self.signals {
            part.state = State::Absent;
        }
        for s in &d.signals {
            let part = &mut self.signals[s.kind as usize];
            part.state = State::Used {
                active: s.active,
                stale: s.stale,
            };
            part.value = Some((s.value, s.replicas));
            part.age = s.age;
        }
        for m in &d.missing {
            let part = &mut self.signals[m.kind as usize];
            part.state = State::Missing {
                error: m.error.clone(),
            };
            part.age = m.age;
        }
        before
    }

    /// What the last answer gave KEDA, if there was one and it had a count: the one earlier
    /// answer the safety rule looks at.
    pub(crate) fn last_replicas(&self) -> Option<u32> {
        self.at.and(self.answered)
    }

    /// The same figures for a new plan of the object (its metadata changed): its series
    /// stay, but it has no answer of its own yet.
    pub(crate) fn carried(&self) -> Self {
        Self {
            at: None,
            ..self.clone()
        }
    }

    /// The last answer, rebuilt as the decision it was (for `/decisions` and `explain`).
    pub(crate) fn last(&self) -> Option<LastAnswer> {
        let at = self.at?;
        let mut signals = Vec::new();
        let mut missing = Vec::new();
        for (kind, part) in KINDS.into_iter().zip(&self.signals) {
            match &part.state {
                State::Absent => {}
                State::Used { active, stale } => {
                    let (value, replicas) = part.value.unwrap_or_default();
                    signals.push(SignalOutcome {
                        kind,
                        value,
                        replicas,
                        active: *active,
                        stale: *stale,
                        age: part.age,
                    });
                }
                State::Missing { error } => missing.push(Missing {
                    kind,
                    error: error.clone(),
                    age: part.age,
                }),
            }
        }
        Some(LastAnswer {
            at,
            decision: Decision {
                replicas: self.replicas,
                any_active: self.any_active,
                decided_by: self.decided_by,
                held: self.held,
                signals,
                missing,
            },
            servicebus: self.servicebus,
        })
    }

    /// What the object's series show, with `plan`'s clamp and `staleAfter`; none before it
    /// first answered. A missing signal keeps its last value and replicas, and shows its age.
    pub(crate) fn figures(&self, plan: &Plan) -> Option<Figures> {
        if !self.shown {
            return None;
        }
        let mut signals = [None; 3];
        for (figures, part) in signals.iter_mut().zip(&self.signals) {
            let missing = match part.state {
                State::Absent if part.value.is_none() => continue,
                State::Absent | State::Used { .. } => false,
                State::Missing { .. } => true,
            };
            *figures = Some(SignalFigures {
                value: part.value.map(|(v, _)| v),
                replicas: part.value.map(|(_, r)| f64::from(r)),
                age: part.age.map(|a| a.as_secs_f64()),
                missing,
            });
        }
        Some(Figures {
            desired: self.desired.map(f64::from),
            max_replicas: plan.max_replicas.map(f64::from),
            stale_after: Some(plan.stale_after.as_secs_f64()),
            signals,
            servicebus: self.servicebus,
        })
    }

    /// When the last answer was given, if there is one.
    pub(crate) fn at(&self) -> Option<DateTime<Utc>> {
        self.at
    }
}

#[cfg(test)]
mod tests;
