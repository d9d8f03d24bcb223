use std::collections::HashMap;

use chrono::TimeZone;

use super::*;
use crate::metadata::{Credentials, Origin, parse};

fn plan() -> Plan {
    let md: HashMap<String, String> = [
        ("timezone", "UTC"),
        ("start", "0 8 * * *"),
        ("end", "0 20 * * *"),
        ("desiredReplicas", "3"),
        ("maxReplicas", "20"),
        ("staleAfter", "60s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    parse(&md, Origin::Keda, &Credentials::default()).expect("valid metadata")
}

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, second).unwrap()
}

fn used(kind: SignalKind, value: f64, replicas: u32, age: Option<u64>) -> SignalOutcome {
    SignalOutcome {
        kind,
        value,
        replicas,
        active: value > 0.0,
        stale: false,
        age: age.map(Duration::from_secs),
    }
}

fn missing(kind: SignalKind, error: Option<SignalError>, age: Option<u64>) -> Missing {
    Missing {
        kind,
        error: error.map(Arc::new),
        age: age.map(Duration::from_secs),
    }
}

fn decision(signals: Vec<SignalOutcome>, missing: Vec<Missing>) -> Decision {
    Decision {
        replicas: signals.iter().map(|s| s.replicas).max().unwrap_or(0),
        any_active: signals.iter().any(|s| s.active),
        decided_by: signals.iter().max_by_key(|s| s.replicas).map(|s| s.kind),
        held: false,
        signals,
        missing,
    }
}

#[test]
fn the_last_answer_is_rebuilt_as_the_decision_it_was() {
    let mut a = Answered::default();
    assert!(a.last().is_none());
    let counts = EntityCounts {
        active: Some(37),
        dead_letter: Some(3),
        ..EntityCounts::default()
    };
    let d = decision(
        vec![
            used(SignalKind::ServiceBus, 37.0, 4, Some(2)),
            used(SignalKind::Cron, 3.0, 3, None),
        ],
        vec![missing(
            SignalKind::Prometheus,
            Some(SignalError::NullResult),
            Some(90),
        )],
    );
    assert_eq!(a.record(at(1), &d, Some(counts)), None);
    let last = a.last().expect("answered");
    assert_eq!(last.decision, d);
    assert_eq!((last.at, last.servicebus), (at(1), Some(counts)));
    assert_eq!(a.last_replicas(), Some(4));
    // The next answer replaces every part, and says what the one before gave KEDA.
    let next = decision(vec![used(SignalKind::Cron, 0.0, 0, None)], vec![]);
    assert_eq!(a.record(at(2), &next, None), Some(4));
    assert_eq!(a.last().expect("answered").decision, next);
}

#[test]
fn a_missing_signal_keeps_its_last_value_on_the_series_and_shows_its_age() {
    let plan = plan();
    let mut a = Answered::default();
    assert_eq!(a.figures(&plan), None, "no series before the first answer");
    a.record(
        at(1),
        &decision(
            vec![
                used(SignalKind::ServiceBus, 37.0, 4, Some(2)),
                used(SignalKind::Cron, 3.0, 3, None),
            ],
            vec![missing(SignalKind::Prometheus, None, None)],
        ),
        None,
    );
    let only_cron = decision(
        vec![used(SignalKind::Cron, 3.0, 3, None)],
        vec![
            missing(SignalKind::ServiceBus, None, Some(90)),
            missing(SignalKind::Prometheus, None, None),
        ],
    );
    a.record(at(2), &only_cron, None);
    let f = a.figures(&plan).expect("answered");
    assert_eq!(f.desired, Some(3.0));
    let sb = f.signals[SignalKind::ServiceBus as usize].expect("kept");
    assert_eq!(
        (sb.value, sb.replicas, sb.age, sb.missing),
        (Some(37.0), Some(4.0), Some(90.0), true)
    );
    // Never read: only the missing flag, no value and no age.
    let prom = f.signals[SignalKind::Prometheus as usize].expect("shown as missing");
    assert_eq!((prom.value, prom.age, prom.missing), (None, None, true));
    let cron = f.signals[SignalKind::Cron as usize].expect("used");
    assert_eq!(
        (cron.value, cron.age, cron.missing),
        (Some(3.0), None, false)
    );
    assert_eq!((f.max_replicas, f.stale_after), (Some(20.0), Some(60.0)));
}

#[test]
fn an_answer_without_a_count_keeps_the_last_count_on_the_series_but_not_as_the_last_answer() {
    let plan = plan();
    let mut a = Answered::default();
    a.record(
        at(1),
        &decision(vec![used(SignalKind::ServiceBus, 10.0, 2, Some(1))], vec![]),
        None,
    );
    let unavailable = decision(
        vec![],
        vec![missing(SignalKind::ServiceBus, None, Some(120))],
    );
    assert_eq!(a.record(at(2), &unavailable, None), Some(2));
    assert_eq!(a.last_replicas(), None, "the last answer had no count");
    assert_eq!(a.figures(&plan).expect("answered").desired, Some(2.0));
}

#[test]
fn a_new_plan_of_the_object_keeps_its_series_but_has_no_answer_of_its_own() {
    let plan = plan();
    let mut a = Answered::default();
    a.record(
        at(1),
        &decision(vec![used(SignalKind::Cron, 3.0, 3, None)], vec![]),
        None,
    );
    let carried = a.carried();
    assert!(carried.last().is_none());
    assert_eq!(carried.last_replicas(), None, "no held answer across plans");
    assert_eq!(carried.figures(&plan), a.figures(&plan));
}
