//! The decision against plans with all three signals, and its properties.

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

fn run(plan: &Plan, now: DateTime<Utc>, sb: f64, prom: f64) -> Decision {
    decide(Inputs {
        plan,
        now,
        servicebus: Some(&Observation::fresh(sb)),
        prometheus: Some(&Observation::fresh(prom)),
    })
}

#[test]
fn max_takes_the_largest_per_signal_ceiling_and_names_it() {
    let p = all_three("max");
    let d = run(&p, noon(), 41.0, 450.0);
    // 41/10 -> 5, 450/200 -> 3, cron 3.
    assert_eq!(d.replicas(), Ok(5));
    assert_eq!(d.decided_by, Some(SignalKind::ServiceBus));
    assert_eq!(d.active(), Ok(true));
    let d = run(&p, noon(), 0.0, 0.0);
    assert_eq!((d.replicas, d.decided_by), (3, Some(SignalKind::Cron)));
}

#[test]
fn sum_adds_the_per_signal_counts() {
    let d = run(&all_three("sum"), noon(), 41.0, 450.0);
    assert_eq!(d.replicas, 5 + 3 + 3);
}

#[test]
fn activation_follows_each_signals_threshold() {
    let p = all_three("max");
    assert_eq!(run(&p, night(), 2.0, 50.0).active(), Ok(false));
    assert_eq!(run(&p, night(), 3.0, 50.0).active(), Ok(true));
    assert_eq!(run(&p, night(), 0.0, 50.5).active(), Ok(true));
    assert_eq!(run(&p, noon(), 0.0, 0.0).active(), Ok(true));
}

#[test]
fn min_and_max_clamp_the_blend() {
    let mut p = all_three("max");
    p.min_replicas = Some(2);
    p.max_replicas = Some(4);
    assert_eq!(run(&p, night(), 0.0, 0.0).replicas, 2);
    assert_eq!(run(&p, night(), 1000.0, 0.0).replicas, 4);
}

fn timed_out(value: f64, age_secs: u64) -> Observation {
    Observation {
        value: Some(value),
        age: Some(Duration::from_secs(age_secs)),
        error: Some(Arc::new(SignalError::Timeout(Duration::from_secs(2)))),
        rate: None,
        counts: None,
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
    });
    assert_eq!(d.active(), Ok(true));
    // The business-hours window decides while the backlog has no value yet.
    assert_eq!(d.replicas(), Ok(3));
}

#[test]
fn a_stale_value_still_obeys_max_replicas() {
    let mut p = all_three("max");
    p.max_replicas = Some(2);
    let d = decide(Inputs {
        plan: &p,
        now: night(),
        servicebus: Some(&timed_out(1e12, 20)),
        prometheus: Some(&Observation::fresh(0.0)),
    });
    assert_eq!(d.replicas(), Ok(2));
    assert!(!d.held, "maxReplicas set the answer, not the stale value");
}

#[test]
fn a_stale_value_is_a_floor_at_its_own_count_not_at_an_earlier_answer() {
    let p = all_three("max");
    let stale = Observation {
        value: Some(30.0),
        age: Some(Duration::from_secs(20)),
        error: Some(Arc::new(SignalError::Connect("refused".into()))),
        rate: None,
        counts: None,
    };
    let d = decide(Inputs {
        plan: &p,
        now: night(),
        servicebus: Some(&stale),
        prometheus: Some(&Observation::fresh(0.0)),
    });
    // 30 / 10 = 3, whatever was answered before the upstream failed.
    assert_eq!((d.replicas, d.held), (3, true));
    assert_eq!(d.decided_by, Some(SignalKind::ServiceBus));
    // A fresh healthy signal above it decides, and nothing is held.
    let d = decide(Inputs {
        plan: &p,
        now: night(),
        servicebus: Some(&stale),
        prometheus: Some(&Observation::fresh(1000.0)),
    });
    assert_eq!((d.replicas, d.held), (5, false));
}

#[test]
fn while_a_value_is_stale_the_answer_holds_the_last_one_within_max_replicas() {
    let p = all_three("max");
    let stale = Observation {
        value: Some(0.0),
        age: Some(Duration::from_secs(20)),
        error: Some(Arc::new(SignalError::Connect("refused".into()))),
        rate: None,
        counts: None,
    };
    let zero = Observation::fresh(0.0);
    let decided = |p: &Plan| {
        decide(Inputs {
            plan: p,
            now: night(),
            servicebus: Some(&stale),
            prometheus: Some(&zero),
        })
    };
    let d = hold_while_stale(decided(&p), Some(7), &p);
    assert_eq!((d.replicas, d.held), (7, true));
    assert_eq!(d.decided_by, Some(SignalKind::ServiceBus));
    // Raising is allowed; no last answer, nothing to hold.
    let d = hold_while_stale(decided(&p), None, &p);
    assert_eq!((d.replicas, d.held), (0, false));
    // A lowered maxReplicas lowers the held answer too.
    let mut low = p.clone();
    low.max_replicas = Some(2);
    let d = hold_while_stale(decided(&low), Some(u32::MAX), &low);
    assert_eq!((d.replicas, d.held), (2, true));
    // With every signal fresh, an earlier answer is not looked at: the readings decide.
    let fresh = run(&low, night(), 0.0, 0.0);
    assert_eq!(hold_while_stale(fresh.clone(), Some(7), &low), fresh);
}

#[test]
fn decide_sizes_drain_time_from_the_readings_and_asks_for_none_over_an_empty_queue() {
    let p = plan(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("policy", "drainTime"),
        ("targetDrainSeconds", "100"),
        ("messagesPerSecondPerReplica", "2"),
    ]);
    let at = |backlog, rate| Observation {
        rate,
        ..Observation::fresh(backlog)
    };
    let d = |obs: &Observation| {
        decide(Inputs {
            plan: &p,
            now: noon(),
            servicebus: Some(obs),
            prometheus: None,
        })
    };
    // Growing 4/s with 400 waiting: (4 + 4) / 2 = 4, on every call alike.
    let growing = at(400.0, Some(4.0));
    assert_eq!(d(&growing).replicas(), Ok(4));
    assert_eq!(d(&growing), d(&growing));
    // Empty and not growing: nothing is held, and it is not active.
    let empty = d(&at(0.0, Some(0.0)));
    assert_eq!(empty.replicas(), Ok(0));
    assert_eq!(empty.active(), Ok(false));
    assert_eq!(empty.decided_by, None);
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
        let d = run(&p, now, sb, prom);
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
        let base = run(&p, night(), sb, prom).replicas;
        let raised = if which {
            run(&p, night(), sb + more, prom)
        } else {
            run(&p, night(), sb, prom + more)
        };
        prop_assert!(raised.replicas >= base);
    }

    #[test]
    fn answers_are_never_negative_nan_and_a_stale_value_counts_as_a_fresh_one(
        sb in proptest::num::f64::ANY, prom in proptest::num::f64::ANY,
        stale: bool, policy in 0..3usize,
    ) {
        let p = all_three(["max", "sum", "max"][policy]);
        let sb_obs = Observation {
            value: Some(sb),
            age: Some(Duration::from_secs(5)),
            error: stale.then(|| Arc::new(SignalError::Connect("down".into()))),
            rate: None,
            counts: None,
        };
        let d = decide(Inputs {
            plan: &p, now: night(),
            servicebus: Some(&sb_obs),
            prometheus: Some(&Observation::fresh(prom)),
        });
        // A u32 is never negative or NaN; the float sent to KEDA is made from it.
        let as_float = f64::from(d.replicas);
        prop_assert!(as_float.is_finite() && as_float >= 0.0);
        // Within staleAfter a kept value decides as it did when it was read.
        let fresh = decide(Inputs {
            plan: &p, now: night(),
            servicebus: Some(&Observation { error: None, ..sb_obs.clone() }),
            prometheus: Some(&Observation::fresh(prom)),
        });
        prop_assert_eq!(d.replicas, fresh.replicas);
    }
}
