//! The decision: signal readings, the previous answer and the time in; replicas out.
//!
//! Pure: no I/O, no clock. The gRPC layer, `explain` and `simulate` all call [`decide`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::metadata::{Plan, Policy};
use crate::signal::{Observation, SignalError, SignalKind};

/// Everything one decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    /// Wall-clock time, for cron windows.
    pub now: DateTime<Utc>,
    pub servicebus: Option<&'a Observation>,
    pub prometheus: Option<&'a Observation>,
    /// The last replica count answered for this ScaledObject.
    pub previous: Option<u32>,
}

/// One signal's part in a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalOutcome {
    pub kind: SignalKind,
    /// The raw value: active messages, query result, or the cron window's replicas.
    pub value: f64,
    pub replicas: u32,
    pub active: bool,
    /// The latest refresh failed and `value` is kept from an earlier one.
    pub stale: bool,
    pub age: Option<Duration>,
}

/// A signal that has no usable value: never read, or its last good value is older than
/// `staleAfter`.
#[derive(Clone, Debug, PartialEq)]
pub struct Missing {
    pub kind: SignalKind,
    /// The latest failure, when there was one.
    pub error: Option<Arc<SignalError>>,
    pub age: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The blended, clamped replica count (meaningful when `missing` is empty).
    pub replicas: u32,
    /// True when any usable signal is active.
    pub any_active: bool,
    /// The signal whose count became the answer, if one did.
    pub decided_by: Option<SignalKind>,
    /// True when a stale signal held the answer at the previous value.
    pub held: bool,
    pub signals: Vec<SignalOutcome>,
    pub missing: Vec<Missing>,
}

impl Decision {
    /// The replica count, or the first signal that makes it unknowable.
    pub fn replicas(&self) -> Result<u32, &Missing> {
        match self.missing.first() {
            Some(m) => Err(m),
            None => Ok(self.replicas),
        }
    }

    /// Active if any usable signal is active; a missing signal cannot make it inactive.
    pub fn active(&self) -> Result<bool, &Missing> {
        match (self.any_active, self.missing.first()) {
            (true, _) => Ok(true),
            (false, Some(m)) => Err(m),
            (false, None) => Ok(false),
        }
    }
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

/// Replicas that absorb the arrival rate and clear `backlog` within the target.
///
/// The arrival rate is estimated from the backlog's change per second plus what the current
/// replicas were completing. With no backlog there is nothing to estimate from, so the
/// signal asks for nothing and the floors (other signals, `minReplicas`) hold the line.
pub fn drain_replicas(
    backlog: f64,
    backlog_rate: Option<f64>,
    current_replicas: u32,
    target_drain_seconds: f64,
    per_replica: f64,
) -> u32 {
    if backlog <= 0.0 {
        return 0;
    }
    let completing = f64::from(current_replicas) * per_replica;
    let arrivals = (backlog_rate.unwrap_or(0.0) + completing).max(0.0);
    replicas_for(arrivals + backlog / target_drain_seconds, per_replica)
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
                    inputs.previous.unwrap_or(0),
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
    let mut decided_by = leader.map(|s| s.kind);
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

    // A value kept only because its upstream is failing may hold the answer, never lower it.
    let mut held = false;
    if signals.iter().any(|s| s.stale)
        && let Some(prev) = inputs.previous
        && prev > replicas
    {
        replicas = prev;
        held = true;
        decided_by = signals.iter().find(|s| s.stale).map(|s| s.kind);
    }

    Decision {
        replicas,
        any_active: signals.iter().any(|s| s.active),
        decided_by,
        held,
        signals,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Credentials, Source, parse};
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn plan(pairs: &[(&str, &str)]) -> Plan {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&m, Source::Keda, &Credentials::default()).expect("valid metadata")
    }

    fn all_three(policy: &str) -> Plan {
        plan(&[
            ("policy", policy),
            ("queueName", "orders"),
            ("namespace", "bus"),
            ("messageCount", "10"),
            ("activationMessageCount", "2"),
            ("serverAddress", "http://prometheus:9090"),
            ("query", "sum(rate(http_requests_total[2m]))"),
            ("threshold", "200"),
            ("activationThreshold", "50"),
            ("timezone", "UTC"),
            ("start", "0 8 * * *"),
            ("end", "0 20 * * *"),
            ("desiredReplicas", "3"),
        ])
    }

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn night() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 23, 0, 0).unwrap()
    }

    fn run(plan: &Plan, now: DateTime<Utc>, sb: f64, prom: f64, previous: Option<u32>) -> Decision {
        decide(Inputs {
            plan,
            now,
            servicebus: Some(&Observation::fresh(sb)),
            prometheus: Some(&Observation::fresh(prom)),
            previous,
        })
    }

    #[test]
    fn max_takes_the_largest_per_signal_ceiling_and_names_it() {
        let p = all_three("max");
        let d = run(&p, noon(), 41.0, 450.0, None);
        // 41/10 -> 5, 450/200 -> 3, cron 3.
        assert_eq!(d.replicas(), Ok(5));
        assert_eq!(d.decided_by, Some(SignalKind::ServiceBus));
        assert_eq!(d.active(), Ok(true));
        let d = run(&p, noon(), 0.0, 0.0, None);
        assert_eq!((d.replicas, d.decided_by), (3, Some(SignalKind::Cron)));
    }

    #[test]
    fn sum_adds_the_per_signal_counts() {
        let d = run(&all_three("sum"), noon(), 41.0, 450.0, None);
        assert_eq!(d.replicas, 5 + 3 + 3);
    }

    #[test]
    fn activation_follows_each_signals_threshold() {
        let p = all_three("max");
        assert_eq!(run(&p, night(), 2.0, 50.0, None).active(), Ok(false));
        assert_eq!(run(&p, night(), 3.0, 50.0, None).active(), Ok(true));
        assert_eq!(run(&p, night(), 0.0, 50.5, None).active(), Ok(true));
        assert_eq!(run(&p, noon(), 0.0, 0.0, None).active(), Ok(true));
    }

    #[test]
    fn min_and_max_clamp_the_blend() {
        let mut p = all_three("max");
        p.min_replicas = Some(2);
        p.max_replicas = Some(4);
        assert_eq!(run(&p, night(), 0.0, 0.0, None).replicas, 2);
        assert_eq!(run(&p, night(), 1000.0, 0.0, None).replicas, 4);
    }

    #[test]
    fn a_value_older_than_stale_after_is_missing_and_says_why() {
        let p = all_three("max");
        let old = Observation {
            value: Some(100.0),
            age: Some(Duration::from_secs(61)),
            error: Some(Arc::new(SignalError::Timeout(Duration::from_secs(2)))),
            rate: None,
        };
        let d = decide(Inputs {
            plan: &p,
            now: night(),
            servicebus: Some(&old),
            prometheus: Some(&Observation::fresh(0.0)),
            previous: Some(4),
        });
        let m = d.replicas().unwrap_err();
        assert_eq!(m.kind, SignalKind::ServiceBus);
        assert!(matches!(m.error.as_deref(), Some(SignalError::Timeout(_))));
        // Nothing usable is active, and the missing signal might be: unknown, not false.
        assert!(d.active().is_err());
    }

    #[test]
    fn a_missing_signal_cannot_hide_an_active_one() {
        let p = all_three("max");
        let never = Observation::default();
        let d = decide(Inputs {
            plan: &p,
            now: noon(),
            servicebus: Some(&never),
            prometheus: Some(&Observation::fresh(0.0)),
            previous: None,
        });
        assert_eq!(d.active(), Ok(true));
        assert!(d.replicas().is_err());
    }

    #[test]
    fn a_stale_value_holds_the_previous_answer_but_a_fresh_one_may_lower_it() {
        let p = all_three("max");
        let stale = Observation {
            value: Some(0.0),
            age: Some(Duration::from_secs(20)),
            error: Some(Arc::new(SignalError::Connect("refused".into()))),
            rate: None,
        };
        let d = decide(Inputs {
            plan: &p,
            now: night(),
            servicebus: Some(&stale),
            prometheus: Some(&Observation::fresh(0.0)),
            previous: Some(7),
        });
        assert_eq!((d.replicas, d.held), (7, true));
        assert_eq!(d.decided_by, Some(SignalKind::ServiceBus));
        let d = run(&p, night(), 0.0, 0.0, Some(7));
        assert_eq!((d.replicas, d.held), (0, false));
    }

    #[test]
    fn drain_time_absorbs_arrivals_and_clears_the_backlog() {
        let p = plan(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("policy", "drainTime"),
            ("targetDrainSeconds", "100"),
            ("messagesPerSecondPerReplica", "2"),
        ]);
        let obs = |backlog: f64, rate: Option<f64>| Observation {
            rate,
            ..Observation::fresh(backlog)
        };
        let go = |o: &Observation, prev| {
            decide(Inputs {
                plan: &p,
                now: noon(),
                servicebus: Some(o),
                prometheus: None,
                previous: prev,
            })
            .replicas
        };
        // Steady: 4 replicas complete 8/s and the backlog holds at 400 -> arrivals 8/s,
        // plus 400/100 = 4/s to drain: 12/s at 2/s each = 6 replicas.
        assert_eq!(go(&obs(400.0, Some(0.0)), Some(4)), 6);
        // Ramping: the backlog grows 4/s on top of it: 16/s -> 8.
        assert_eq!(go(&obs(400.0, Some(4.0)), Some(4)), 8);
        // Bursty from zero: no history, only the backlog: 1000/100 = 10/s -> 5.
        assert_eq!(go(&obs(1000.0, None), None), 5);
        // Empty queue: asks for nothing.
        assert_eq!(go(&obs(0.0, Some(-3.0)), Some(6)), 0);
    }

    #[test]
    fn replicas_for_saturates_and_never_goes_negative() {
        assert_eq!(replicas_for(-5.0, 1.0), 0);
        assert_eq!(replicas_for(f64::NAN, 1.0), 0);
        assert_eq!(replicas_for(1e300, 1.0), u32::MAX);
        assert_eq!(replicas_for(20.0, 5.0), 4);
        assert_eq!(replicas_for(21.0, 5.0), 5);
    }

    proptest! {
        #[test]
        fn max_equals_what_keda_gives_for_separate_triggers(
            sb in 0.0f64..1e7, prom in -1e3f64..1e7, noon_or_night: bool,
        ) {
            let p = all_three("max");
            let now = if noon_or_night { noon() } else { night() };
            let d = run(&p, now, sb, prom, None);
            let keda = [
                (sb / 10.0).ceil().max(0.0) as u32,
                (prom / 200.0).ceil().max(0.0) as u32,
                if noon_or_night { 3 } else { 0 },
            ].into_iter().max().unwrap();
            prop_assert_eq!(d.replicas, keda);
        }

        #[test]
        fn max_is_monotone_in_each_signal(
            sb in 0.0f64..1e6, prom in 0.0f64..1e6, more in 0.0f64..1e6, which: bool,
        ) {
            let p = all_three("max");
            let base = run(&p, night(), sb, prom, None).replicas;
            let raised = if which {
                run(&p, night(), sb + more, prom, None)
            } else {
                run(&p, night(), sb, prom + more, None)
            };
            prop_assert!(raised.replicas >= base);
        }

        #[test]
        fn answers_are_never_negative_nan_or_lowered_by_stale_values(
            sb in proptest::num::f64::ANY, prom in proptest::num::f64::ANY,
            prev in proptest::option::of(0u32..10_000), stale: bool, policy in 0..3usize,
        ) {
            let p = all_three(["max", "sum", "max"][policy]);
            let sb_obs = Observation {
                value: Some(sb),
                age: Some(Duration::from_secs(5)),
                error: stale.then(|| Arc::new(SignalError::Other("down".into()))),
                rate: None,
            };
            let d = decide(Inputs {
                plan: &p, now: night(),
                servicebus: Some(&sb_obs),
                prometheus: Some(&Observation::fresh(prom)),
                previous: prev,
            });
            // A u32 is never negative or NaN; the float sent to KEDA is made from it.
            let as_float = f64::from(d.replicas);
            prop_assert!(as_float.is_finite() && as_float >= 0.0);
            if stale && sb.is_finite() && let Some(prev) = prev {
                prop_assert!(d.replicas >= prev);
            }
        }
    }
}
