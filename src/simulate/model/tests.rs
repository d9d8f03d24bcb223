use super::*;

use crate::metadata::test_plan as plan;

fn m(value: f64, target: f64) -> Result<Metric, ()> {
    Ok(Metric { value, target })
}

#[test]
fn keda_activates_from_zero_and_waits_the_cooldown_before_returning_to_zero() {
    let k = Keda::default();
    let mut a = Activation::default();
    assert_eq!(a.report(0, false, 0, &k), None);
    assert_eq!(a.report(30, true, 0, &k), Some(1));
    assert_eq!(a.report(60, false, 3, &k), None);
    assert_eq!(a.report(330, false, 3, &k), None);
    assert_eq!(a.report(331, false, 3, &k), Some(0));
    // A floor above zero keeps KEDA from scaling to zero.
    let floor = Keda {
        min_replicas: 2,
        ..k
    };
    assert_eq!(a.report(10_000, false, 2, &floor), None);
    assert_eq!(a.report(10_001, true, 0, &floor), Some(2));
}

#[test]
fn cron_is_a_floor_for_the_builtin_triggers() {
    use chrono::TimeZone;
    let p = plan(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("messageCount", "5"),
        ("timezone", "UTC"),
        ("start", "0 8 * * *"),
        ("end", "0 20 * * *"),
        ("desiredReplicas", "3"),
    ]);
    let mut b = BuiltIns::from_plan(&p);
    let at = |h| World {
        now: Utc.with_ymd_and_hms(2026, 6, 1, h, 0, 0).unwrap(),
        backlog: 6,
        requests: 0.0,
    };
    let mut hpa = Controller::default();
    let (metrics, active) = b.read(0, &at(9));
    assert!(active);
    // 6 messages ask for 2; the window's floor of 3 wins.
    assert_eq!(hpa.sync(0, 1, &metrics, &Hpa::default(), 1, 100), Some(3));
    // Outside the window the cron trigger reports 1 and the queue decides.
    let (metrics, _) = b.read(0, &at(21));
    assert_eq!(hpa.sync(600, 1, &metrics, &Hpa::default(), 1, 100), Some(2));
}

#[test]
fn blend_reads_the_queue_when_keda_asks_and_answers_from_the_cache_between() {
    let p = plan(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("messageCount", "5"),
    ]);
    let mut b = Blend::new(&p, &BlendSettings::default());
    let world = |backlog| World {
        now: Utc::now(),
        backlog,
        requests: 0.0,
    };
    // The first call waits for the first read, made at once.
    assert_eq!(b.read(0, &world(10)).0, vec![m(2.0, 1.0)]);
    b.tick(0, &world(10));
    // 3 s later: the same ask, answered from the cache, which keeps 10.
    let (metrics, active) = b.read(3, &world(100));
    assert_eq!(metrics, vec![m(2.0, 1.0)]);
    assert!(active);
    for t in 3..15 {
        b.tick(t, &world(100));
    }
    // 15 s on, KEDA's next ask (an HPA read): with no gap between calls known yet, KEDA's
    // default polling interval stands for the period, so the 15 s old value has not lapsed
    // and the call is answered from the cache at once; the call makes the queue due, and
    // it is read just after.
    assert_eq!(b.read(15, &world(60)).0, vec![m(2.0, 1.0)]);
    for t in 15..30 {
        b.tick(t, &world(60));
    }
    // Another 15 s, now the period: answered from the read the call at 15 s made due, at
    // 20 s (a period and a refresh after the first read at the latest). KEDA asks at a
    // steady pace, so the queue is read a refresh before its next call (45 s), at 40 s,
    // which is also no later than a period and a refresh after the last read.
    assert_eq!(b.read(30, &world(0)).0, vec![m(12.0, 1.0)]);
    for t in 30..41 {
        b.tick(t, &world(0));
    }
    let ms = Duration::from_millis;
    assert_eq!(
        b.servicebus_log().reads,
        vec![ms(5), ms(20_005), ms(40_000)]
    );
    let seen = b.servicebus.look(secs(41), false, 0.0);
    assert_eq!(seen.value, Some(0.0));
    assert_eq!(seen.rate, None, "nothing here decides on the rate");
}

#[test]
fn a_drain_time_plan_sees_the_rate_of_the_reads_keda_calls_made() {
    let p = plan(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("policy", "drainTime"),
        ("targetDrainSeconds", "60"),
        ("messagesPerSecondPerReplica", "5"),
    ]);
    let mut b = Blend::new(&p, &BlendSettings::default());
    let world = |backlog| World {
        now: Utc::now(),
        backlog,
        requests: 0.0,
    };
    // KEDA's calls of the test above, at 0, 15 and 30 s: the same three reads.
    for (from, to, backlog) in [(0, 15, 10), (15, 30, 60), (30, 41, 0)] {
        b.read(from, &world(backlog));
        for t in from..to {
            b.tick(t, &world(backlog));
        }
    }
    let ms = Duration::from_millis;
    assert_eq!(
        b.servicebus_log().reads,
        vec![ms(5), ms(20_005), ms(40_000)]
    );
    let seen = b.servicebus.look(secs(41), false, 0.0);
    // The least-squares line through 10, 60 and 0 read at those three moments.
    let (x, y) = ([0.005, 20.005, 40.0], [10.0, 60.0, 0.0]);
    let (mx, my) = (x.iter().sum::<f64>() / 3.0, y.iter().sum::<f64>() / 3.0);
    let slope = (0..3).map(|i| (x[i] - mx) * (y[i] - my)).sum::<f64>()
        / x.iter().map(|v| (v - mx).powi(2)).sum::<f64>();
    let rate = seen.rate.unwrap();
    assert!((rate - slope).abs() < 1e-9, "{rate} against {slope}");
}

#[test]
fn external_push_reports_activity_changes_within_a_second() {
    let p = plan(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("activationMessageCount", "0"),
    ]);
    let mut b = Blend::new(
        &p,
        &BlendSettings {
            refresh_interval: 5,
            push: true,
        },
    );
    let world = |backlog| World {
        now: Utc::now(),
        backlog,
        requests: 0.0,
    };
    assert_eq!(b.tick(0, &world(0)), Some(false));
    assert_eq!(b.tick(1, &world(0)), None);
    assert_eq!(b.tick(2, &world(3)), Some(true));
    assert_eq!(b.tick(3, &world(5)), None);
}
