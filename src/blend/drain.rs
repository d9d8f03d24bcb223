//! The `drainTime` policy: the Service Bus signal's count from the backlog, its rate and the
//! previous answer (docs/drain-time.md).

use chrono::{DateTime, Utc};

use super::replicas_for;

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
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

    proptest! {

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

    }
}
