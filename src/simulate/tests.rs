use super::*;

fn shipped(name: &str) -> (Trace, Scenario) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let trace =
        Trace::parse(&std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap()).unwrap();
    let yaml = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
    (
        trace,
        Scenario::from_yaml(&yaml, &Overrides::default()).unwrap(),
    )
}

fn options(phases: usize, seed: u64) -> Options {
    Options {
        objective: 120,
        phases: Phase::draw(seed, phases),
        seed,
        tune: false,
    }
}

fn sides(s: &Scenario) -> model::Sides<'_> {
    model::Sides {
        builtin: &s.builtin,
        builtin_settings: &s.builtin_settings,
        plan: &s.plan,
        blend_settings: &s.settings,
    }
}

#[test]
fn the_same_trace_and_seed_always_give_byte_identical_outputs() {
    let (trace, scenario) = shipped("spiky");
    let s = [scenario];
    let a = report(&trace, &s, "spiky.csv", &options(3, 7)).unwrap();
    let b = report(&trace, &s, "spiky.csv", &options(3, 7)).unwrap();
    assert_eq!(a.text, b.text);
    assert_eq!(a.csv, b.csv);
    assert_eq!(a.svg, b.svg);
    assert!(a.svg.starts_with("<svg") && a.svg.contains("blend-scaler (drainTime)"));
    assert_eq!(a.csv.lines().count(), 1 + 24 * 60);
    assert_eq!(a.compared.builtin.phases, 3);
}

#[test]
fn phases_are_drawn_from_the_seed_and_move_the_results() {
    assert_eq!(Phase::draw(1, 8), Phase::draw(1, 8));
    assert_ne!(Phase::draw(1, 8), Phase::draw(2, 8));
    let phases = Phase::draw(1, 8);
    let distinct: std::collections::BTreeSet<_> = phases.iter().map(|p| p.within(30, 15)).collect();
    assert!(distinct.len() >= 6, "{phases:?}");
    // Over a day, the loops' phase moves the built-in side's results: the spread is real.
    let (trace, scenario) = shipped("diurnal");
    let c = compare::compare(&trace, &scenario, &phases, 120);
    let r = &c.builtin.replica_minutes;
    assert!(r.min < r.max, "{r:?}");
    assert!(r.min <= r.mean && r.mean <= r.max);
    // The same phases again give the same figures.
    let again = compare::compare(&trace, &scenario, &phases, 120);
    assert_eq!(c.builtin, again.builtin);
    assert_eq!(c.blend, again.blend);
}

#[test]
fn every_message_is_accounted_for_on_both_sides() {
    for name in ["diurnal", "spiky", "business-hours"] {
        let (trace, scenario) = shipped(name);
        let out = model::simulate(&trace, &sides(&scenario), Phase::draw(3, 1)[0]);
        let total = |w: &[u64]| w.iter().sum::<u64>();
        assert_eq!(total(&out.builtin.waits), total(&out.blend.waits), "{name}");
        assert!(total(&out.builtin.waits) > 0, "{name}");
    }
}

#[test]
fn the_shipped_scaledobjects_give_their_spec_and_annotations_to_the_model() {
    let (trace, diurnal) = shipped("diurnal");
    assert_eq!(trace.timezone, chrono_tz::Europe::London);
    assert_eq!(diurnal.name, "production/order-processor");
    assert_eq!(diurnal.trigger_type, "external");
    let s = &diurnal.settings;
    assert_eq!(s.workload.messages_per_second_per_replica, 5.0);
    assert_eq!(s.workload.pod_start_seconds, 30);
    assert_eq!((s.keda.min_replicas, s.keda.max_replicas), (1, 60));
    assert!(!s.blend.push);
    assert_eq!(diurnal.builtin_settings, diurnal.settings);
    let (_, spiky) = shipped("spiky");
    assert!(spiky.settings.blend.push);
    assert_eq!(spiky.settings.keda.min_replicas, 0);
    assert_eq!(spiky.blend_label(), "blend-scaler (drainTime)");
}

const MINIMAL: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: worker
spec:
  scaleTargetRef: {name: worker}
  pollingInterval: 10
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 60
          policies: [{type: Pods, value: 1, periodSeconds: 60}]
  triggers:
    - type: cpu
      metadata: {value: "50"}
    - type: external
      metadata:
        queueName: q
        namespace: ns
        messageCount: "10"
"#;

#[test]
fn spec_fields_flags_and_what_is_not_modelled_are_read() {
    let overrides = Overrides {
        messages_per_second_per_replica: Some(7.5),
        pod_start_seconds: Some(45),
        refresh_interval: Some(2),
        polling_interval: None,
        hpa_sync_period: Some(30),
    };
    let s = Scenario::from_yaml(MINIMAL, &overrides).unwrap();
    assert_eq!(s.name, "default/worker");
    assert_eq!(s.settings.keda.polling_interval, 10);
    assert_eq!(s.settings.keda.cooldown_period, 300);
    assert_eq!(s.settings.hpa.sync_period, 30);
    let behavior = s.settings.hpa.behavior.as_ref().unwrap();
    assert_eq!(behavior.scale_down.stabilization_window, 60);
    assert_eq!(behavior.scale_down.policies[0].value, 1);
    assert_eq!(behavior.scale_up, hpa::Behavior::default_scale_up());
    assert_eq!(s.settings.workload.messages_per_second_per_replica, 7.5);
    assert_eq!(s.settings.workload.pod_start_seconds, 45);
    assert_eq!(s.settings.blend.refresh_interval, 2);
    assert_eq!(s.blend_label(), "blend-scaler (max)");
    let notes = s.notes.join("\n");
    assert!(notes.contains("1 other trigger"), "{notes}");
    // The polling override applies to both sides.
    let o = Overrides {
        polling_interval: Some(60),
        ..overrides
    };
    let s = Scenario::from_yaml(MINIMAL, &o).unwrap();
    assert_eq!(s.settings.keda.polling_interval, 60);
    assert_eq!(s.builtin_settings.keda.polling_interval, 60);
}

#[test]
fn scenario_errors_say_what_is_wrong() {
    let none = Overrides::default();
    let err = |yaml: &str| format!("{:#}", Scenario::from_yaml(yaml, &none).unwrap_err());
    // Without drainTime, nothing says how fast a pod works.
    let e = err(MINIMAL);
    assert!(e.contains("--messages-per-second-per-replica"), "{e}");
    let e = err(&MINIMAL.replace("type: external\n", "type: prometheus\n"));
    assert!(e.contains("no ScaledObject"), "{e}");
    let e = err(&MINIMAL.replace("messageCount: \"10\"", "messageCount: \"ten\""));
    assert!(e.contains("`messageCount`") && e.contains("invalid"), "{e}");
    let e = err(&MINIMAL.replace("pollingInterval: 10", "pollingInterval: soon"));
    assert!(e.contains("pollingInterval"), "{e}");
    let e = err(&MINIMAL.replace("messageCount: \"10\"", "messageCount: 10"));
    assert!(e.contains("quote the value"), "{e}");
    let e = err(&MINIMAL.replace("value: 1, periodSeconds", "value: -1, periodSeconds"));
    assert!(e.contains("behavior.scaleDown.policies[0].value"), "{e}");
}

const BASELINE: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: worker-today, namespace: prod}
spec:
  pollingInterval: 15
  cooldownPeriod: 120
  minReplicaCount: 2
  maxReplicaCount: 20
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          policies: [{type: Percent, value: 10, periodSeconds: 60}]
  triggers:
    - type: azure-servicebus
      metadata: {queueName: q, namespace: ns, messageCount: "40"}
      authenticationRef: {name: sb}
    - type: prometheus
      metadata: {serverAddress: "http://p:9090", query: "x", threshold: "100"}
    - type: cron
      metadata: {timezone: Europe/London, start: "0 8 * * 1-5", end: "0 18 * * 1-5", desiredReplicas: "4"}
    - type: cpu
      metadata: {value: "60"}
"#;

#[test]
fn a_baseline_gives_the_builtin_side_its_own_triggers_spec_and_behavior() {
    let o = Overrides {
        messages_per_second_per_replica: Some(5.0),
        ..Overrides::default()
    };
    let s = Scenario::from_yaml(MINIMAL, &o)
        .unwrap()
        .with_baseline(BASELINE, &o)
        .unwrap();
    assert_eq!(s.baseline.as_deref(), Some("prod/worker-today"));
    assert_eq!(s.builtin.servicebus, Some((40.0, 0.0)));
    assert_eq!(s.builtin.prometheus, Some((100.0, 0.0)));
    assert_eq!(s.builtin.cron.len(), 1);
    assert_eq!(s.builtin.cron[0].timezone, chrono_tz::Europe::London);
    let k = &s.builtin_settings.keda;
    assert_eq!(
        (
            k.polling_interval,
            k.cooldown_period,
            k.min_replicas,
            k.max_replicas
        ),
        (15, 120, 2, 20)
    );
    let b = s.builtin_settings.hpa.behavior.as_ref().unwrap();
    assert_eq!(b.scale_down.stabilization_window, 300);
    assert_eq!(b.scale_down.policies[0].value, 10);
    // The blend side keeps its own.
    assert_eq!(s.settings.keda.polling_interval, 10);
    assert_eq!(s.builtin_settings.workload, s.settings.workload);
    assert!(
        s.notes.iter().any(|n| n.contains("`cpu` trigger")),
        "{:?}",
        s.notes
    );
    // Errors name the trigger and the key.
    let e = Scenario::from_yaml(MINIMAL, &o)
        .unwrap()
        .with_baseline(&BASELINE.replace("\"40\"", "\"lots\""), &o)
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("spec.triggers[0] (azure-servicebus): metadata.messageCount"),
        "{e:#}"
    );
    let e = Scenario::from_yaml(MINIMAL, &o)
        .unwrap()
        .with_baseline(MINIMAL, &o)
        .unwrap_err();
    assert!(format!("{e:#}").contains("no ScaledObject"), "{e:#}");
}

/// An idle hour with 200 messages arriving over 20 s, 10 minutes in.
fn wake_up_trace() -> Trace {
    let mut csv = String::from("time,messages_per_second,requests_per_second\n");
    csv.push_str("2026-06-01T00:00:00,0,0\n2026-06-01T00:10:00,10,0\n");
    csv.push_str("2026-06-01T00:10:20,0,0\n2026-06-01T01:00:00,0,0\n");
    Trace::parse(&csv).unwrap()
}

#[test]
fn external_push_wakes_the_deployment_sooner_than_polling() {
    let yaml = MINIMAL.replace("pollingInterval: 10", "pollingInterval: 30");
    let overrides = Overrides {
        messages_per_second_per_replica: Some(5.0),
        ..Overrides::default()
    };
    let poll = Scenario::from_yaml(&yaml, &overrides).unwrap();
    let push =
        Scenario::from_yaml(&yaml.replace("external\n", "external-push\n"), &overrides).unwrap();
    assert!(push.settings.blend.push);
    let trace = wake_up_trace();
    let first = |s: &Scenario| {
        let out = model::simulate(&trace, &sides(s), Phase::FIXED);
        let at = |run: &model::Run| run.replicas.iter().position(|&r| r > 0).unwrap();
        (at(&out.builtin), at(&out.blend))
    };
    let (builtin, polled) = first(&poll);
    let (_, pushed) = first(&push);
    // The burst starts at 600 s: the polls at 600 s see nothing yet; push sees the first
    // refresh after it.
    assert_eq!(builtin, 630);
    assert!(polled >= 630, "{polled}");
    assert!((601..=603).contains(&pushed), "{pushed}");
    // Scaled back to zero after the cooldown: nothing active for 300 s.
    let out = model::simulate(&trace, &sides(&push), Phase::FIXED);
    assert_eq!(out.blend.replicas.last(), Some(&0));
    assert_eq!(out.builtin.replicas.last(), Some(&0));
    // KEDA's poll phase moves the built-in side's wake-up within one polling interval.
    let late = Phase {
        poll: 20,
        ..Phase::FIXED
    };
    let out = model::simulate(&trace, &sides(&poll), late);
    assert_eq!(out.builtin.replicas.iter().position(|&r| r > 0), Some(620));
}

#[test]
fn tune_finds_the_cheapest_builtin_configuration_within_the_objective() {
    // Two hours of the diurnal day's afternoon.
    let (day, scenario) = shipped("diurnal");
    let trace = Trace {
        messages: day.messages[14 * 3600..16 * 3600].to_vec(),
        requests: day.requests[14 * 3600..16 * 3600].to_vec(),
        ..day
    };
    let phases = Phase::draw(1, 2);
    let tuned = compare::tune(&trace, &scenario, &phases, 120);
    assert!(tuned.tried >= 40, "{}", tuned.tried);
    let (best, avg) = tuned.best.clone().expect("a configuration meets 120 s");
    assert!(avg.p95_age.mean <= 120.0);
    // Nothing tried that meets the objective is cheaper.
    for c in compare::candidates(&scenario) {
        let mut builtin = scenario.builtin.clone();
        if let (Some(n), Some(sb)) = (c.message_count, builtin.servicebus.as_mut()) {
            sb.0 = n;
        }
        let settings = model::Settings {
            hpa: c.hpa.clone(),
            ..scenario.builtin_settings.clone()
        };
        let runs: Vec<_> = phases
            .iter()
            .map(|&p| {
                report::Summary::of(&model::run(&trace, &settings, p, &mut builtin.clone()), 120)
            })
            .collect();
        let a = report::Averaged::of(&runs);
        if a.p95_age.mean <= 120.0 {
            assert!(
                a.replica_minutes.mean >= avg.replica_minutes.mean,
                "{} is cheaper than {}",
                c.label,
                best.label
            );
        }
    }
    // An objective nothing meets says so.
    let none = compare::tune(&trace, &scenario, &phases, 0);
    assert!(none.best.is_none() && none.lowest_p95_age > 0.0);
}

#[test]
fn tune_searches_blend_scalers_side_over_the_drain_target_and_the_same_behaviors() {
    let (day, scenario) = shipped("diurnal");
    let trace = Trace {
        messages: day.messages[14 * 3600..16 * 3600].to_vec(),
        requests: day.requests[14 * 3600..16 * 3600].to_vec(),
        ..day
    };
    let phases = Phase::draw(1, 2);
    let all = compare::blend_candidates(&scenario);
    // Nine targets and the configured 120 s (one of them), each with five behaviors: the
    // built-in side's grid.
    assert_eq!(all.len(), 9 * 5);
    assert!(all.iter().all(|c| c.target_drain_seconds.is_some()));
    let tuned = compare::tune_blend(&trace, &scenario, &phases, 120);
    let (best, avg) = tuned.best.expect("a configuration meets 120 s");
    assert!(avg.p95_age.mean <= 120.0, "{avg:?}");
    // A tighter objective takes a shorter target, and more pods.
    let tight = compare::tune_blend(&trace, &scenario, &phases, 30);
    let (short, tight_avg) = tight.best.expect("a configuration meets 30 s");
    assert!(tight_avg.p95_age.mean <= 30.0);
    assert!(
        short.target_drain_seconds < best.target_drain_seconds,
        "{short:?} {best:?}"
    );
    assert!(tight_avg.replica_minutes.mean > avg.replica_minutes.mean);
}

/// The README's simulate table, recomputed: the built-in, slow scale-down and blend-scaler
/// cells of every row are what the fair setup (8 phases from seed 1) gives. (The `--tune`
/// columns take minutes; `the_readme_tuned_cells_are_what_the_simulator_gives_on_one_day`
/// recomputes one row's, and the command of every row is in the README.)
#[test]
fn the_readme_simulate_table_is_what_the_simulator_gives() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("## Before you switch: `simulate`").unwrap()..];
    let section = &section[..section.find("\n## ").unwrap()];
    let rows: Vec<Vec<&str>> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let names: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("traces"))
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                let stem = p.file_stem()?.to_string_lossy().into_owned();
                (p.extension()? == "csv").then_some(stem)
            })
            .collect();
    assert_eq!(rows.len(), names.len(), "one row per shipped trace");
    let phases = Phase::draw(1, 8);
    for row in rows {
        let name = row[0].trim_matches('`');
        assert!(names.iter().any(|s| s == name), "{name} is not shipped");
        let (trace, scenario) = shipped(name);
        let c = compare::compare(&trace, &scenario, &phases, 120);
        let cell = |a: &report::Averaged| {
            format!("{:.0} / {:.0} s", a.replica_minutes.mean, a.p95_age.mean)
        };
        assert_eq!(row[1], cell(&c.builtin), "{name}: built-in");
        assert_eq!(row[2], cell(&c.builtin_slow), "{name}: slow scale-down");
        assert_eq!(row[3], cell(&c.blend), "{name}: blend-scaler");
        assert_eq!(
            row[4],
            cell(&c.blend_slow),
            "{name}: blend-scaler, slow scale-down"
        );
    }
}

/// The `--tune` cells of one README row (the quiet day, the cheapest to search), recomputed.
#[test]
fn the_readme_tuned_cells_are_what_the_simulator_gives_on_one_day() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let row: Vec<&str> = readme
        .lines()
        .find(|l| l.starts_with("| `quiet` |"))
        .expect("a quiet row")
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    let (trace, scenario) = shipped("quiet");
    let phases = Phase::draw(1, 8);
    let cell = |t: &compare::Tuned| match &t.best {
        Some((_, a)) => format!("{:.0} / {:.0} s", a.replica_minutes.mean, a.p95_age.mean),
        None => "none meets 120 s".to_string(),
    };
    assert_eq!(
        row[5],
        cell(&compare::tune(&trace, &scenario, &phases, 120))
    );
    assert_eq!(
        row[6],
        cell(&compare::tune_blend(&trace, &scenario, &phases, 120))
    );
}

/// A trace of `segments`: each runs for its seconds at its rate, smooth or (with a period)
/// as one batch per period.
fn segments_trace(segments: &[(usize, f64, Option<usize>)]) -> Trace {
    let mut messages = Vec::new();
    for &(seconds, rate, batch_every) in segments {
        for s in 0..seconds {
            messages.push(match batch_every {
                Some(p) if s % p == 0 => rate * p as f64,
                Some(_) => 0.0,
                None => rate,
            });
        }
    }
    Trace {
        start: chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap(),
        timezone: chrono_tz::UTC,
        requests: vec![0.0; messages.len()],
        messages,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// The answer is the readings' (docs/drain-time.md), so KEDA's call rate cannot move it.
    /// With `minReplicaCount: 1` (KEDA's activation out of the way) the polls are the only
    /// calls that change with `pollingInterval`; with `external-push` the stream holds the
    /// reads at every second whatever KEDA calls (with `external` they follow the calls,
    /// docs/simulate.md, "The model": a faster poll reads the queue more often, and so
    /// answers from fresher reads).
    #[test]
    fn the_same_reads_give_the_same_replicas_at_polling_intervals_10_30_and_60(
        segments in proptest::collection::vec(
            (60usize..900, 0.0f64..60.0, proptest::option::of(4usize..16)), 2..8),
        phase in 0usize..8,
    ) {
        let trace = segments_trace(&segments);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
        let yaml = std::fs::read_to_string(dir.join("bursty.yaml"))
            .unwrap()
            .replace("type: external\n", "type: external-push\n");
        let phase = Phase::draw(5, 8)[phase];
        let runs: Vec<(Vec<u32>, Vec<Duration>)> = [10, 30, 60]
            .into_iter()
            .map(|polling| {
                let overrides = Overrides {
                    polling_interval: Some(polling),
                    ..Overrides::default()
                };
                let s = Scenario::from_yaml(&yaml, &overrides).unwrap();
                let mut blend = model::Blend::new(&s.plan, &s.settings.blend);
                let replicas = model::run(&trace, &s.settings, phase, &mut blend).replicas;
                (replicas, blend.servicebus_log().reads.clone())
            })
            .collect();
        proptest::prop_assert!(runs[0].1 == runs[1].1 && runs[1].1 == runs[2].1);
        let runs: Vec<&Vec<u32>> = runs.iter().map(|r| &r.0).collect();
        for (t, ((a, b), c)) in runs[0].iter().zip(runs[1]).zip(runs[2]).enumerate() {
            let (lo, hi) = (a.min(b).min(c), a.max(b).max(c));
            proptest::prop_assert!(hi - lo <= 1, "at {} s: {} {} {}", t, a, b, c);
        }
    }
}
