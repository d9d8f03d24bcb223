//! `blend-scaler simulate` as a user runs it, on the traces that ship with the project.

use std::path::Path;
use std::process::{Command, Output};

fn blend_scaler(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `simulate` on `trace` and `scaledobject` writing into `out`, with `args` after them.
fn simulate_in(out: &Path, trace: &str, scaledobject: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "simulate",
        "--trace",
        trace,
        "--scaledobject",
        scaledobject,
        "--out",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    blend_scaler(&all)
}

/// [`simulate_in`] on the shipped diurnal trace and its ScaledObject.
fn simulate_diurnal(out: &Path, args: &[&str]) -> Output {
    simulate_in(out, "traces/diurnal.csv", "traces/diurnal.yaml", args)
}

/// [`simulate_in`] a fresh directory: (stdout, stderr, success).
fn simulate(trace: &str, scaledobject: &str, args: &[&str]) -> (String, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = simulate_in(dir.path(), trace, scaledobject, args);
    (text(&out.stdout), text(&out.stderr), out.status.success())
}

#[test]
fn simulate_prints_the_table_writes_csv_and_chart_and_repeats_byte_for_byte() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut stdouts = Vec::new();
    for dir in &dirs {
        let out = simulate_diurnal(dir.path(), &[]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        for expected in [
            "built-in triggers",
            "blend-scaler (drainTime)",
            "replica-min",
            "p95 age",
            "min > 120 s",
            "scale events",
        ] {
            assert!(stdout.contains(expected), "missing {expected}: {stdout}");
        }
        // The paths differ between the two runs; everything above them does not.
        stdouts.push(stdout[..stdout.find("\nwrote ").unwrap()].to_string());
    }
    assert_eq!(stdouts[0], stdouts[1]);
    for file in ["minutes.csv", "chart.svg"] {
        let a = std::fs::read(dirs[0].path().join(file)).unwrap();
        let b = std::fs::read(dirs[1].path().join(file)).unwrap();
        assert!(!a.is_empty(), "{file} is empty");
        assert!(a == b, "{file} differs between two runs");
    }
}

#[test]
fn the_shipped_scaledobjects_pass_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = blend_scaler(&["check", path.to_str().unwrap()]);
            assert!(out.status.success(), "{}", text(&out.stdout));
            assert!(text(&out.stdout).contains("policy drainTime"));
            assert!(
                path.with_extension("csv").exists(),
                "{} has no trace",
                path.display()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

#[test]
fn simulate_names_a_bad_trace_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.csv");
    std::fs::write(
        &trace,
        "time,messages_per_second,requests_per_second\n2026-06-01T00:00:00,lots,1\n",
    )
    .unwrap();
    let out = simulate_in(
        dir.path(),
        trace.to_str().unwrap(),
        "traces/diurnal.yaml",
        &[],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("lots"),
        "{stderr}"
    );
    assert!(!dir.path().join("chart.svg").exists());
}

#[test]
fn the_phase_count_and_seed_are_reported_and_the_seed_decides_the_figures() {
    let run = |seed: &str| {
        let (stdout, stderr, ok) = simulate(
            "traces/spiky.csv",
            "traces/spiky.yaml",
            &["--phases", "3", "--seed", seed],
        );
        assert!(ok, "{stderr}");
        stdout[..stdout.find("\nwrote ").unwrap()].to_string()
    };
    let (a, b, c) = (run("5"), run("5"), run("6"));
    assert!(a.contains("phases: 3 of KEDA's poll"), "{a}");
    assert_eq!(a, b);
    assert_ne!(a.replace("seed 5", "seed 6"), c);
    let (_, stderr, ok) = simulate("traces/spiky.csv", "traces/spiky.yaml", &["--phases", "0"]);
    assert!(!ok && stderr.contains("--phases"), "{stderr}");
}

#[test]
fn polling_interval_and_pod_start_sweep_print_one_table_per_combination() {
    let (stdout, stderr, ok) = simulate(
        "traces/diurnal.csv",
        "traces/diurnal.yaml",
        &[
            "--phases",
            "2",
            "--polling-interval",
            "10,60",
            "--pod-start-seconds",
            "5,90",
            "--hpa-sync-period",
            "30",
        ],
    );
    assert!(ok, "{stderr}");
    for heading in [
        "== pollingInterval 10 s, pods ready 5 s after creation",
        "== pollingInterval 60 s, pods ready 5 s after creation",
        "== pollingInterval 10 s, pods ready 90 s after creation",
        "== pollingInterval 60 s, pods ready 90 s after creation",
    ] {
        assert!(stdout.contains(heading), "missing {heading}: {stdout}");
    }
    assert_eq!(stdout.matches("built-in triggers  ").count(), 4, "{stdout}");
    assert!(stdout.contains("HPA: sync 30 s"), "{stdout}");
    let (_, stderr, ok) = simulate(
        "traces/diurnal.csv",
        "traces/diurnal.yaml",
        &["--polling-interval", "0"],
    );
    assert!(!ok && stderr.contains("--polling-interval"), "{stderr}");
}

#[test]
fn a_baseline_scaledobject_drives_the_builtin_side() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = dir.path().join("today.yaml");
    std::fs::write(
        &baseline,
        "apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: order-processor-today, namespace: production}
spec:
  pollingInterval: 15
  minReplicaCount: 1
  maxReplicaCount: 60
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          policies: [{type: Percent, value: 10, periodSeconds: 60}]
  triggers:
    - type: azure-servicebus
      metadata: {queueName: orders, namespace: ns, messageCount: \"100\"}
",
    )
    .unwrap();
    let (stdout, stderr, ok) = simulate(
        "traces/diurnal.csv",
        "traces/diurnal.yaml",
        &["--phases", "2", "--baseline", baseline.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(
            "built-in triggers (the baseline production/order-processor-today): KEDA: polling 15 s"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("scaleDown window 300s, Max of [10%/60s]"),
        "{stdout}"
    );
    std::fs::write(&baseline, "kind: ScaledObject\nspec: {triggers: []}\n").unwrap();
    let (_, stderr, ok) = simulate(
        "traces/diurnal.csv",
        "traces/diurnal.yaml",
        &["--baseline", baseline.to_str().unwrap()],
    );
    assert!(!ok && stderr.contains("today.yaml"), "{stderr}");
}

#[test]
fn tune_prints_the_cheapest_builtin_configuration_beside_blend_scaler() {
    // Three hours of the diurnal afternoon, so the search stays quick.
    let dir = tempfile::tempdir().unwrap();
    let day = std::fs::read_to_string("traces/diurnal.csv").unwrap();
    let short: String = day
        .lines()
        .filter(|l| {
            l.starts_with('#')
                || l.starts_with("time,")
                || ("2026-06-03T14:00:00".."2026-06-03T17:00:00").contains(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let trace = dir.path().join("afternoon.csv");
    std::fs::write(&trace, short).unwrap();
    let (stdout, stderr, ok) = simulate(
        trace.to_str().unwrap(),
        "traces/diurnal.yaml",
        &["--phases", "2", "--tune"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("built-in, tuned  "), "{stdout}");
    assert!(
        stdout.contains("built-in, tuned: the cheapest of ") && stdout.contains("messageCount "),
        "{stdout}"
    );
}

#[test]
fn a_fractional_or_zero_simulator_duration_is_refused_naming_its_flag() {
    // Output in a scratch directory: a run that wrongly succeeds must not write into the tree.
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--refresh-interval", "1500ms"),
        ("--refresh-interval", "0s"),
        ("--objective", "500ms"),
    ] {
        let out = simulate_diurnal(dir.path(), &[flag, value]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(stderr.contains(flag) && stderr.contains(value), "{stderr}");
    }
}
