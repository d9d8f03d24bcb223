//! The `drainTime` policy: the Service Bus signal's count from the backlog and its rate
//! (docs/drain-time.md).

use super::replicas_for;

/// `drainTime`'s count for the Service Bus signal (see `docs/drain-time.md`): the replicas
/// that, each completing `per_replica` messages a second, keep up with the backlog's growth
/// and clear the backlog within `target_drain_seconds`:
///
/// `ceil((max(growth, 0) + backlog / target_drain_seconds) / per_replica)`
///
/// `growth` is the backlog's change per second fitted over the cache's last minute of reads
/// ([`crate::signal::RATE_WINDOW`]). Only readings go in: no previous answer, no call count,
/// so every scaler replica that read the same queue gives the same count, and a queue that
/// is empty and not growing asks for none. A falling backlog lowers the count through
/// `backlog` alone: how fast it falls says how many pods are spare, not how many are needed.
pub fn drain_replicas(
    backlog: f64,
    growth: Option<f64>,
    target_drain_seconds: f64,
    per_replica: f64,
) -> u32 {
    let growth = growth.filter(|g| g.is_finite()).unwrap_or(0.0).max(0.0);
    let backlog = if backlog.is_finite() {
        backlog.max(0.0)
    } else {
        0.0
    };
    replicas_for(growth + backlog / target_drain_seconds, per_replica)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `drain_replicas` with a 100 s target and 2 messages/s per replica.
    fn drain(backlog: f64, growth: Option<f64>) -> u32 {
        drain_replicas(backlog, growth, 100.0, 2.0)
    }

    #[test]
    fn drain_time_asks_for_the_growth_plus_the_drain() {
        // Growing 10/s, plus 1000/100 = 10/s to drain, at 2/s each: 10 replicas.
        assert_eq!(drain(1000.0, Some(10.0)), 10);
        // No second read yet: only the backlog, 1000/100/2 = 5.
        assert_eq!(drain(1000.0, None), 5);
        // A standing backlog: 400/100/2 = 2.
        assert_eq!(drain(400.0, Some(0.0)), 2);
    }

    #[test]
    fn a_falling_backlog_is_sized_by_what_is_left_and_an_empty_queue_asks_for_none() {
        // 500 waiting and falling 30/s: the pods are more than enough; 500/100/2 = 3 clear
        // what is left in time.
        assert_eq!(drain(500.0, Some(-30.0)), 3);
        assert_eq!(drain(0.0, Some(-10.0)), 0);
        assert_eq!(drain(0.0, Some(0.0)), 0);
        assert_eq!(drain(0.0, None), 0);
        // Still growing on average though the last read found it empty: the growth decides.
        assert_eq!(drain(0.0, Some(3.0)), 2);
    }

    #[test]
    fn bad_readings_count_as_nothing_waiting_never_as_a_panic() {
        assert_eq!(drain(f64::NAN, Some(f64::INFINITY)), 0);
        assert_eq!(drain(-5.0, None), 0);
        assert_eq!(drain(f64::INFINITY, None), 0);
        assert_eq!(drain(1e300, None), u32::MAX);
    }

    proptest! {
        #[test]
        fn drain_time_never_panics_and_grows_with_the_backlog_and_the_growth(
            backlog in proptest::num::f64::ANY, growth in proptest::option::of(proptest::num::f64::ANY),
            more in 0.0f64..1e6,
        ) {
            let n = drain_replicas(backlog, growth, 60.0, 5.0);
            if backlog.is_finite() && growth.is_none_or(f64::is_finite) {
                prop_assert!(drain_replicas(backlog + more, growth, 60.0, 5.0) >= n);
                prop_assert!(drain_replicas(backlog, Some(growth.unwrap_or(0.0) + more), 60.0, 5.0) >= n);
            }
        }
    }
}
