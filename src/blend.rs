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
    /// The replica count from the signals that have a usable value (SPEC 4: a partial outage is
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

/// How often a count held over an empty queue may step down: the HPA's default scale-down
/// window, so the count never falls faster than the deployment is let shrink.
pub const DRAIN_STEP_DOWN_SECONDS: i64 = 300;

/// `drainTime`'s count for the Service Bus signal (see `docs/drain-time.md`).
///
/// `previous` is the last answer for the ScaledObject, which the engine records on every call;
/// KEDA makes two calls (GetMetrics, IsActive) per read. The arrival rate is the backlog's
/// change per second plus what `previous` replicas complete, so the count is
/// `previous + delta` where `delta = (rate + backlog / target) / per_replica`: the replicas
/// short (or spare) for absorbing the arrivals and clearing the backlog within the target.
///
/// - From zero, the whole `delta` (no pod is working, so the rate is the arrival rate).
/// - Otherwise half of `delta` per call (one replica when that rounds to none but `delta` is
///   half a replica or more), so one read moves the count by about `delta`. While new pods
///   are still starting the same deficit is seen again; a rise is capped at twice `delta`
///   (what the queue alone proves is missing, as if no pod were working) or one more than
///   `previous`, whichever is more.
/// - An empty queue that is not shrinking says nothing about the arrival rate: the count
///   holds, stepping down by a tenth (at least one replica) at most once per
///   [`DRAIN_STEP_DOWN_SECONDS`] of `now`. With no clock between calls, the step is made
///   once per interval by its parity: a count whose parity differs from the interval's
///   number steps down by an odd amount, after which it matches and holds.
pub fn drain_replicas(
    backlog: f64,
    backlog_rate: Option<f64>,
    previous: u32,
    target_drain_seconds: f64,
    per_replica: f64,
    now: DateTime<Utc>,
) -> u32 {
    let rate = backlog_rate.filter(|r| r.is_finite()).unwrap_or(0.0);
    let backlog = if backlog.is_finite() {
        backlog.max(0.0)
    } else {
        0.0
    };
    if backlog <= 0.0 && rate >= 0.0 {
        let interval = now.timestamp().div_euclid(DRAIN_STEP_DOWN_SECONDS);
        if (i64::from(previous) + interval).rem_euclid(2) == 1 {
            // Odd, so the parity flips and further calls in this interval hold.
            let step = (previous / 10) | 1;
            return previous - step.min(previous);
        }
        return previous;
    }
    let delta = (rate + backlog / target_drain_seconds) / per_replica;
    if !delta.is_finite() {
        return previous;
    }
    if previous == 0 {
        return replicas_for(delta, 1.0);
    }
    let mut step = (delta / 2.0).trunc();
    if step == 0.0 && delta.abs() >= 0.5 {
        step = delta.signum();
    }
    let previous = f64::from(previous);
    let mut next = previous + step;
    if step > 0.0 {
        next = next.min((previous + 1.0).max((2.0 * delta).ceil()));
    }
    next.clamp(0.0, f64::from(u32::MAX)) as u32
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
                    inputs.now,
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

    // A value kept only because its upstream is failing may hold the answer, never lower it;
    // the held answer still obeys `maxReplicas`, which may have been lowered since.
    let mut held = false;
    if signals.iter().any(|s| s.stale)
        && let Some(prev) = inputs.previous
        && let held_at = plan.max_replicas.map_or(prev, |hi| prev.min(hi))
        && held_at > replicas
    {
        replicas = held_at;
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
    use chrono::TimeZone;
    use proptest::prelude::*;

    use crate::metadata::test_plan as plan;

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

    fn timed_out(value: f64, age_secs: u64) -> Observation {
        Observation {
            value: Some(value),
            age: Some(Duration::from_secs(age_secs)),
            error: Some(Arc::new(SignalError::Timeout(Duration::from_secs(2)))),
            rate: None,
        }
    }

    #[test]
    fn a_value_older_than_stale_after_drops_out_and_the_healthy_signals_decide() {
        let p = all_three("max");
        let d = decide(Inputs {
            plan: &p,
            now: noon(),
            servicebus: Some(&timed_out(100.0, 61)),
            prometheus: Some(&Observation::fresh(450.0)),
            previous: Some(10),
        });
        // Prometheus (ceil(450/200) = 3) and the business-hours floor (3) still decide; the
        // stale backlog's 10 no longer counts, and the missing signal still says why.
        assert_eq!(d.replicas(), Ok(3));
        assert!(!d.held);
        assert_eq!(d.missing.len(), 1);
        assert_eq!(d.missing[0].kind, SignalKind::ServiceBus);
        assert!(matches!(
            d.missing[0].error.as_deref(),
            Some(SignalError::Timeout(_))
        ));
        assert_eq!(d.active(), Ok(true));
    }

    #[test]
    fn within_stale_after_a_failing_signals_last_value_is_a_floor() {
        let p = all_three("max");
        let d = decide(Inputs {
            plan: &p,
            now: noon(),
            servicebus: Some(&timed_out(100.0, 20)),
            prometheus: Some(&Observation::fresh(450.0)),
            previous: Some(10),
        });
        assert_eq!(d.replicas(), Ok(10));
        assert_eq!(d.decided_by, Some(SignalKind::ServiceBus));
    }

    #[test]
    fn only_when_every_configured_signal_is_missing_is_the_answer_unknown() {
        let p = plan(&[
            ("queueName", "orders"),
            ("namespace", "bus"),
            ("serverAddress", "http://prometheus:9090"),
            ("query", "up"),
            ("threshold", "1"),
        ]);
        let d = decide(Inputs {
            plan: &p,
            now: noon(),
            servicebus: Some(&timed_out(100.0, 61)),
            prometheus: Some(&Observation::default()),
            previous: Some(4),
        });
        let m = d.replicas().unwrap_err();
        assert_eq!(m.kind, SignalKind::ServiceBus);
        // Nothing usable is active, and the missing signals might be: unknown, not false.
        assert!(d.active().is_err());
    }

    #[test]
    fn a_refused_query_is_an_error_even_while_other_signals_are_healthy() {
        let p = all_three("max");
        let refused = Observation {
            error: Some(Arc::new(SignalError::InvalidQuery("parse error".into()))),
            ..Observation::default()
        };
        let d = decide(Inputs {
            plan: &p,
            now: noon(),
            servicebus: Some(&Observation::fresh(40.0)),
            prometheus: Some(&refused),
            previous: None,
        });
        assert_eq!(d.replicas().unwrap_err().kind, SignalKind::Prometheus);
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
        // The business-hours window decides while the backlog has no value yet.
        assert_eq!(d.replicas(), Ok(3));
    }

    #[test]
    fn a_held_answer_still_obeys_max_replicas() {
        let mut p = all_three("max");
        p.max_replicas = Some(2);
        let d = decide(Inputs {
            plan: &p,
            now: night(),
            servicebus: Some(&timed_out(0.0, 20)),
            prometheus: Some(&Observation::fresh(0.0)),
            previous: Some(u32::MAX),
        });
        assert_eq!(d.replicas(), Ok(2));
        assert!(d.held);
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

    /// `drain_replicas` at noon with a 100 s target and 2 messages/s per replica.
    fn drain(backlog: f64, rate: Option<f64>, previous: u32) -> u32 {
        drain_replicas(backlog, rate, previous, 100.0, 2.0, noon())
    }

    /// Calls `drain` `n` times with the same observation, as KEDA's repeated calls do.
    fn drain_calls(backlog: f64, rate: Option<f64>, previous: u32, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut p = previous;
        for _ in 0..n {
            p = drain(backlog, rate, p);
            out.push(p);
        }
        out
    }

    #[test]
    fn from_zero_drain_time_asks_for_the_arrivals_plus_the_drain() {
        // No pod is working, so the backlog's growth is the arrival rate: 10/s, plus
        // 1000/100 = 10/s to drain, at 2/s each: 10 replicas.
        assert_eq!(drain(1000.0, Some(10.0), 0), 10);
        // No second read yet: only the backlog, 1000/100/2 = 5.
        assert_eq!(drain(1000.0, None, 0), 5);
    }

    #[test]
    fn steady_arrivals_with_a_standing_backlog_add_the_drain_in_one_read() {
        // 4 replicas complete 8/s and the backlog holds at 400: arrivals are 8/s, and
        // 400/100 = 4/s more clears it in time: 12/s, 6 replicas. KEDA's read is two calls
        // (GetMetrics, IsActive), each recorded; each moves half-way.
        assert_eq!(drain_calls(400.0, Some(0.0), 4, 2), vec![5, 6]);
        // Steady with no backlog: the count that keeps up holds.
        assert_eq!(drain(0.0, Some(0.0), 6), 6);
    }

    #[test]
    fn ramping_arrivals_raise_the_count_and_repeated_calls_are_capped() {
        // The backlog grows 4/s on top of the 8/s 4 replicas complete: 16/s -> 8.
        assert_eq!(drain_calls(400.0, Some(4.0), 4, 2), vec![6, 8]);
        // Pods still starting, the same deficit is seen again: beyond twice what the queue
        // alone proves (2 x 4), one replica a call, not four more each time.
        let calls = drain_calls(400.0, Some(4.0), 4, 6);
        assert_eq!(calls, vec![6, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn a_burst_while_pods_start_stays_near_twice_what_the_queue_proves() {
        // 2000 waiting and growing 80/s, no pod yet: (80 + 20) / 2 = 50 replicas.
        let calls = drain_calls(2000.0, Some(80.0), 0, 6);
        assert_eq!(calls[0], 50);
        // Uncapped, each call would add 25 (half of 50): 175 after six calls.
        assert_eq!(calls, vec![50, 75, 100, 101, 102, 103]);
    }

    #[test]
    fn a_shrinking_backlog_lowers_the_count() {
        // 20 replicas, 500 waiting and falling 30/s: arrivals 10/s, plus 5/s to drain:
        // 7.5 replicas, 12.5 too many; half of that per call.
        assert_eq!(drain(500.0, Some(-30.0), 20), 14);
        // The queue just emptied, falling 10/s: 5 replicas too many.
        assert_eq!(drain(0.0, Some(-10.0), 8), 6);
    }

    #[test]
    fn an_empty_queue_holds_the_count_stepping_down_at_most_once_per_interval() {
        let interval = DRAIN_STEP_DOWN_SECONDS;
        let start = noon().timestamp().div_euclid(interval) * interval;
        let at = |secs: i64| DateTime::from_timestamp(start + secs, 0).unwrap();
        let mut counts = Vec::new();
        let mut p = 40;
        // Calls every 5 s for three intervals.
        for secs in (0..3 * interval).step_by(5) {
            p = drain_replicas(0.0, Some(0.0), p, 100.0, 2.0, at(secs));
            counts.push((secs / interval, p));
        }
        for i in 0..3 {
            let seen: std::collections::BTreeSet<u32> =
                counts.iter().filter(|c| c.0 == i).map(|c| c.1).collect();
            assert!(seen.len() <= 2, "interval {i}: {seen:?}");
        }
        // A tenth (odd: 5) per interval at most: 40 -> 35 -> 32 (3) -> 29 (3), depending on
        // the parity the count starts with.
        let last = counts.last().unwrap().1;
        assert!((29..=35).contains(&last), "{counts:?}");
        assert!(last < 40);
        // Small counts step one replica, and zero stays zero.
        let one = drain_replicas(0.0, None, 1, 100.0, 2.0, at(0));
        let two = drain_replicas(0.0, None, one, 100.0, 2.0, at(interval));
        assert!(one + two <= 1, "{one} {two}");
        assert_eq!(drain_replicas(0.0, Some(0.0), 0, 100.0, 2.0, at(0)), 0);
    }

    #[test]
    fn decide_holds_the_drain_count_over_an_empty_queue_and_reports_it_inactive() {
        let p = plan(&[
            ("queueName", "q"),
            ("namespace", "ns"),
            ("policy", "drainTime"),
            ("targetDrainSeconds", "100"),
            ("messagesPerSecondPerReplica", "2"),
        ]);
        let empty = Observation {
            rate: Some(0.0),
            ..Observation::fresh(0.0)
        };
        let d = decide(Inputs {
            plan: &p,
            now: noon(),
            servicebus: Some(&empty),
            prometheus: None,
            previous: Some(7),
        });
        // Held (or stepped down once this interval), and not active: KEDA may still scale
        // to zero after its cooldown.
        assert!((6..=7).contains(&d.replicas), "{d:?}");
        assert_eq!(d.active(), Ok(false));
        assert_eq!(d.decided_by, Some(SignalKind::ServiceBus));
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
        fn drain_time_never_panics_and_an_empty_queue_never_raises_the_count(
            backlog in proptest::num::f64::ANY, rate in proptest::option::of(proptest::num::f64::ANY),
            previous in 0u32..100_000, secs in 0i64..10_000_000,
        ) {
            let now = DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
            let n = drain_replicas(backlog, rate, previous, 60.0, 5.0, now);
            let waiting = backlog.is_finite() && backlog > 0.0;
            let shrinking = rate.is_some_and(|r| r.is_finite() && r < 0.0);
            if !waiting && !shrinking {
                prop_assert!(n <= previous);
            }
            let r = drain_replicas(0.0, Some(0.0), previous, 60.0, 5.0, now);
            // Within one interval the held count changes at most once.
            prop_assert_eq!(drain_replicas(0.0, Some(0.0), r, 60.0, 5.0, now), r);
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
                error: stale.then(|| Arc::new(SignalError::Connect("down".into()))),
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
