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

#[test]
fn simulate_prints_the_table_writes_csv_and_chart_and_repeats_byte_for_byte() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut stdouts = Vec::new();
    for dir in &dirs {
        let out = blend_scaler(&[
            "simulate",
            "--trace",
            "traces/diurnal.csv",
            "--scaledobject",
            "traces/diurnal.yaml",
            "--out",
            dir.path().to_str().unwrap(),
        ]);
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
    assert_eq!(checked, 3);
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
    let out = blend_scaler(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--scaledobject",
        "traces/diurnal.yaml",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("lots"),
        "{stderr}"
    );
    assert!(!dir.path().join("chart.svg").exists());
}
