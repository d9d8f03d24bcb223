//! The controller's rule against the examples of the Kubernetes documentation
//! ("Horizontal Pod Autoscaling", section "Configurable scaling behavior"), one sync every 15 s.

use super::*;

fn m(value: f64, target: f64) -> Result<Metric, ()> {
    Ok(Metric { value, target })
}

/// A queue metric that asks for exactly `n` replicas.
fn wants(n: u32) -> [Result<Metric, ()>; 1] {
    [m(f64::from(n), 1.0)]
}

fn behavior(yaml: &str) -> Hpa {
    let value: Value = serde_yaml::from_str(yaml).unwrap();
    Hpa {
        behavior: Some(Behavior::from_yaml(&value, 300).unwrap()),
        ..Hpa::default()
    }
}

/// Syncs every 15 s from `start`, each asking for `want`, and returns the counts set.
fn syncs(
    c: &mut Controller,
    hpa: &Hpa,
    start: u64,
    mut current: u32,
    want: u32,
    n: usize,
) -> Vec<u32> {
    (0..n as u64)
        .map(|i| {
            current = c
                .sync(start + 15 * i, current, &wants(want), hpa, 1, 1000)
                .unwrap();
            current
        })
        .collect()
}

#[test]
fn a_queue_of_20_with_a_target_of_5_gives_4_replicas() {
    // KEDA's documented example for an AverageValue target.
    assert_eq!(
        proposal(
            Metric {
                value: 20.0,
                target: 5.0
            },
            1,
            0.1
        ),
        4
    );
}

#[test]
fn a_metric_within_the_10_percent_tolerance_keeps_the_current_count() {
    assert_eq!(
        proposal(
            Metric {
                value: 4.3,
                target: 1.0
            },
            4,
            0.1
        ),
        4
    );
    assert_eq!(
        proposal(
            Metric {
                value: 4.5,
                target: 1.0
            },
            4,
            0.1
        ),
        5
    );
    // Milli-units: 1.1 / 0.1 is 11, not 12 from floating-point error.
    assert_eq!(
        proposal(
            Metric {
                value: 1.1,
                target: 0.1
            },
            1,
            0.1
        ),
        11
    );
}

#[test]
fn without_behavior_scale_up_is_limited_to_double_or_4_per_sync() {
    let hpa = Hpa::default();
    let mut c = Controller::default();
    assert_eq!(syncs(&mut c, &hpa, 0, 1, 100, 4), [4, 8, 16, 32]);
    // maxReplicas still caps it.
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 20, &wants(100), &hpa, 1, 30), Some(30));
}

#[test]
fn without_behavior_scale_down_takes_the_highest_recommendation_of_the_last_5_minutes() {
    let hpa = Hpa::default();
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 8, &wants(8), &hpa, 1, 100), Some(8));
    assert_eq!(c.sync(15, 8, &wants(2), &hpa, 1, 100), Some(8));
    // The legacy rule keeps a recommendation exactly 300 s old.
    assert_eq!(c.sync(300, 8, &wants(2), &hpa, 1, 100), Some(8));
    assert_eq!(c.sync(315, 8, &wants(2), &hpa, 1, 100), Some(2));
    // The HPA's floor is 1 even when KEDA's minimum is 0.
    assert_eq!(c.sync(900, 2, &wants(0), &hpa, 1, 100), Some(1));
}

#[test]
fn without_behavior_a_rate_limited_recommendation_keeps_scaling_up_after_the_metric_falls() {
    // The legacy window takes the highest recommendation, not the current count: 20 asked
    // at 0 s (limited to 8) still raises the count while the metric says 5.
    let hpa = Hpa::default();
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 4, &wants(20), &hpa, 1, 100), Some(8));
    assert_eq!(c.sync(15, 8, &wants(5), &hpa, 1, 100), Some(16));
    // With behavior, the count is bounded by the current one instead.
    let hpa = behavior("{scaleUp: {}}");
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 4, &wants(20), &hpa, 1, 100), Some(8));
    assert_eq!(c.sync(15, 8, &wants(5), &hpa, 1, 100), Some(8));
}

#[test]
fn the_documented_default_behavior_is_what_an_empty_behavior_defaults_to() {
    let hpa = behavior("{}");
    let b = hpa.behavior.as_ref().unwrap();
    assert_eq!(b.scale_up, Behavior::default_scale_up());
    assert_eq!(b.scale_down, Behavior::default_scale_down(300));
    // "add 4 pods or 100% of the currently running replicas every 15 seconds".
    let mut c = Controller::default();
    assert_eq!(syncs(&mut c, &hpa, 0, 1, 100, 4), [5, 10, 20, 40]);
    // "there is only a single policy for scaling down which allows a 100% of the currently
    // running replicas to be removed", after the 300 s window.
    assert_eq!(c.sync(60, 40, &wants(3), &hpa, 1, 1000), Some(40));
    // The last recommendation of 100 was made at 45 s.
    assert_eq!(c.sync(330, 40, &wants(3), &hpa, 1, 1000), Some(40));
    assert_eq!(c.sync(345, 40, &wants(3), &hpa, 1, 1000), Some(3));
}

#[test]
fn a_60_second_downscale_window_scales_down_after_a_minute() {
    // Docs: "Example: change downscale stabilization window".
    let hpa = behavior("scaleDown: {stabilizationWindowSeconds: 60}");
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 10, &wants(10), &hpa, 1, 100), Some(10));
    assert_eq!(syncs(&mut c, &hpa, 15, 10, 2, 4), [10, 10, 10, 2]);
}

#[test]
fn pods_and_percent_policies_remove_8_then_8_then_4_at_a_time_as_the_docs_describe() {
    // Docs: "if there are 80 replicas and the target has to be scaled down to 10 replicas
    // then during the first step 8 replicas will be reduced. In the next iteration when the
    // number of replicas is 72, 10% of the pods is 7.2 but the number is rounded up to 8.
    // [...] When the number of replicas falls below 40 the first policy (Pods) is applied
    // and 4 replicas will be reduced at a time."
    let hpa = behavior(
        "scaleDown:
           stabilizationWindowSeconds: 0
           policies:
           - {type: Pods, value: 4, periodSeconds: 60}
           - {type: Percent, value: 10, periodSeconds: 60}",
    );
    let mut c = Controller::default();
    let mut current = 80;
    let mut steps = Vec::new();
    for minute in 0..20u64 {
        // Four syncs a minute; only the first of each minute may remove pods, because the
        // pods removed in the last 60 s count against the period.
        for s in 0..4 {
            let next = c
                .sync(minute * 60 + s * 15, current, &wants(10), &hpa, 1, 100)
                .unwrap();
            if s > 0 {
                assert_eq!(next, current, "a second step within one period");
            }
            current = next;
        }
        steps.push(current);
    }
    assert_eq!(&steps[..3], [72, 64, 57]);
    let below_40 = steps.iter().position(|&r| r < 40).unwrap();
    assert!(
        steps[below_40 + 1..]
            .windows(2)
            .all(|w| w[0] - w[1] == 4 || w[1] == 10)
    );
    assert_eq!(*steps.last().unwrap(), 10);
}

#[test]
fn select_policy_min_removes_no_more_than_5_pods_a_minute() {
    // Docs: "To ensure that no more than 5 Pods are removed per minute, you can add a second
    // scale-down policy with a fixed size of 5, and set selectPolicy to minimum".
    let hpa = behavior(
        "scaleDown:
           stabilizationWindowSeconds: 0
           policies:
           - {type: Percent, value: 10, periodSeconds: 60}
           - {type: Pods, value: 5, periodSeconds: 60}
           selectPolicy: Min",
    );
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 100, &wants(1), &hpa, 1, 100), Some(95));
    assert_eq!(c.sync(15, 95, &wants(1), &hpa, 1, 100), Some(95));
    assert_eq!(c.sync(60, 95, &wants(1), &hpa, 1, 100), Some(90));
    // Below 50 pods, 10% is the smaller change.
    assert_eq!(c.sync(1000, 40, &wants(1), &hpa, 1, 100), Some(36));
    // With Max the larger of the two applies.
    let max = behavior(
        "scaleDown:
           stabilizationWindowSeconds: 0
           policies:
           - {type: Percent, value: 10, periodSeconds: 60}
           - {type: Pods, value: 5, periodSeconds: 60}",
    );
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 100, &wants(1), &max, 1, 100), Some(90));
}

#[test]
fn select_policy_disabled_stops_that_direction_only() {
    // Docs: "Example: disable scale down".
    let hpa = behavior("scaleDown: {selectPolicy: Disabled}");
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 10, &wants(1), &hpa, 1, 100), Some(10));
    assert_eq!(c.sync(3600, 10, &wants(1), &hpa, 1, 100), Some(10));
    assert_eq!(c.sync(3615, 10, &wants(30), &hpa, 1, 100), Some(20));
    let up = behavior("scaleUp: {selectPolicy: Disabled}");
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 10, &wants(30), &up, 1, 100), Some(10));
}

#[test]
fn a_scale_up_window_takes_the_lowest_recommendation_of_the_window() {
    let hpa = behavior("scaleUp: {stabilizationWindowSeconds: 60}");
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 2, &wants(2), &hpa, 1, 100), Some(2));
    assert_eq!(c.sync(15, 2, &wants(6), &hpa, 1, 100), Some(2));
    assert_eq!(c.sync(30, 2, &wants(6), &hpa, 1, 100), Some(2));
    assert_eq!(c.sync(45, 2, &wants(6), &hpa, 1, 100), Some(2));
    // The recommendation of 2 made at 0 s leaves the window.
    assert_eq!(c.sync(60, 2, &wants(6), &hpa, 1, 100), Some(6));
}

#[test]
fn scale_events_of_both_directions_count_against_a_period() {
    // 1 pod a minute up: 1 -> 2 at 0 s, held at 15 s, 3 at 60 s.
    let hpa = behavior("scaleUp: {policies: [{type: Pods, value: 1, periodSeconds: 60}]}");
    let mut c = Controller::default();
    assert_eq!(syncs(&mut c, &hpa, 0, 1, 10, 5), [2, 2, 2, 2, 3]);
    // 4 pods a minute up; scaled 1 -> 5, then down to 3 (window 0): the period started at
    // 3 - 4 + 2 = 1 pod, so 5 is again the limit; at 75 s only the +2 of 30 s counts.
    let hpa = behavior(
        "{scaleUp: {policies: [{type: Pods, value: 4, periodSeconds: 60}]},
          scaleDown: {stabilizationWindowSeconds: 0}}",
    );
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 1, &wants(10), &hpa, 1, 100), Some(5));
    assert_eq!(c.sync(15, 5, &wants(3), &hpa, 1, 100), Some(3));
    assert_eq!(c.sync(30, 3, &wants(10), &hpa, 1, 100), Some(5));
    assert_eq!(c.sync(75, 5, &wants(10), &hpa, 1, 100), Some(7));
}

#[test]
fn percent_scale_up_rounds_up_with_the_controllers_floating_point_steps() {
    // 50 x (1 + 10/100) is 55.00000000000001 in float64, so the controller allows 56.
    let hpa = behavior("scaleUp: {policies: [{type: Percent, value: 10, periodSeconds: 15}]}");
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 50, &wants(100), &hpa, 1, 100), Some(56));
    // Where the product is exact, 10% of 20 is 2.
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 20, &wants(100), &hpa, 1, 100), Some(22));
}

#[test]
fn a_missing_metric_blocks_scale_down_but_not_scale_up() {
    let hpa = Hpa::default();
    let mut c = Controller::default();
    assert_eq!(c.sync(0, 6, &[m(1.0, 1.0), Err(())], &hpa, 1, 100), None);
    assert_eq!(
        c.sync(15, 6, &[m(9.0, 1.0), Err(())], &hpa, 1, 100),
        Some(9)
    );
    assert_eq!(c.sync(30, 9, &[Err(())], &hpa, 1, 100), None);
}

#[test]
fn the_hpa_takes_the_largest_proposal_and_leaves_a_target_at_zero_to_keda() {
    let hpa = Hpa::default();
    let mut c = Controller::default();
    let metrics = [m(20.0, 5.0), m(450.0, 200.0), m(3.0, 1.0)];
    assert_eq!(c.sync(0, 2, &metrics, &hpa, 1, 100), Some(4));
    assert_eq!(c.sync(15, 0, &wants(50), &hpa, 1, 100), Some(0));
    // Outside min..max the controller moves to the bound without reading metrics.
    assert_eq!(c.sync(30, 200, &wants(50), &hpa, 1, 100), Some(100));
}

#[test]
fn bad_behavior_is_refused_with_the_field_named() {
    let err = |yaml: &str| {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        Behavior::from_yaml(&v, 300).unwrap_err()
    };
    assert!(err("scaleDown: {selectPolicy: max}").contains("scaleDown.selectPolicy"));
    assert!(err("scaleUp: {stabilizationWindowSeconds: 4000}").contains("0..=3600"));
    assert!(err("scaleDown: {policies: []}").contains("at least one"));
    let e = err("scaleDown: {policies: [{type: Pod, value: 1, periodSeconds: 60}]}");
    assert!(e.contains("scaleDown.policies[0].type"), "{e}");
    let e = err("scaleUp: {policies: [{type: Pods, value: 0, periodSeconds: 60}]}");
    assert!(e.contains("policies[0].value"), "{e}");
    let e = err("scaleUp: {policies: [{type: Pods, value: 1, periodSeconds: 1801}]}");
    assert!(e.contains("periodSeconds"), "{e}");
}
