//! `blend-scaler check` as a user runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn blend_scaler(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// The first ```yaml block of README.md: the ScaledObject users copy.
fn readme_scaledobject() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```yaml\n").expect("README has a yaml block") + "```yaml\n".len();
    let end = readme[start..].find("```").unwrap() + start;
    readme[start..end].to_string()
}

#[test]
fn check_accepts_the_readme_scaledobject() {
    let yaml = readme_scaledobject();
    let out = blend_scaler(&["check", "-"], Some(&yaml));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stdout.contains("servicebus:"), "{stdout}");
    assert!(stdout.contains("prometheus:"), "{stdout}");
    assert!(stdout.contains("cron (America/New_York)"), "{stdout}");
}

#[test]
fn check_prints_every_error_and_exits_1() {
    let broken = readme_scaledobject()
        .replace("messageCount: \"10\"", "messageCount: \"ten\"")
        .replace("America/New_York", "America/Gotham")
        .replace("threshold: \"200\"", "treshold: \"200\"");
    let out = blend_scaler(&["check", "-"], Some(&broken));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for key in ["`messageCount`", "`timezone`", "`treshold`", "`threshold`"] {
        assert!(stdout.contains(key), "missing {key} in {stdout}");
    }
}

#[test]
fn check_refuses_unquoted_values_as_kubernetes_would() {
    let yaml = "kind: ScaledObject\nmetadata: {name: a}\nspec:\n  triggers:\n  - type: external\n    metadata:\n      start: \"0 8 * * *\"\n      end: \"0 9 * * *\"\n      desiredReplicas: 3\n";
    let out = blend_scaler(&["check", "-"], Some(yaml));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("`desiredReplicas`: KEDA takes only strings"),
        "{stdout}"
    );
}

#[test]
fn check_takes_metadata_flags_and_never_prints_a_secret() {
    let secret = "Endpoint=sb://bus.servicebus.windows.net/;SharedAccessKeyName=scaler;SharedAccessKey=UniqueS3cretValue=";
    let conn = format!("connectionFromEnv={secret}");
    let out = blend_scaler(
        &[
            "check",
            "--metadata",
            "queueName=orders",
            "--metadata",
            &conn,
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("https://bus.servicebus.windows.net"),
        "{stdout}"
    );
    assert!(!stdout.contains("UniqueS3cretValue"), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("UniqueS3cretValue"));
}

#[test]
fn check_without_an_external_trigger_says_so() {
    let yaml = "kind: ScaledObject\nmetadata: {name: a}\nspec:\n  triggers:\n  - type: cpu\n    metadata: {value: \"70\"}\n";
    let out = blend_scaler(&["check", "-"], Some(yaml));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no `external` or `external-push` trigger")
    );
}

#[test]
fn check_and_explain_never_print_a_user_info_password() {
    // docs/security.md "Low findings": the plan and the URL error used to print the address
    // as given.
    let good = [
        "check",
        "--metadata",
        "serverAddress=https://admin:USERINFO-PW@prom.example:9090",
        "--metadata",
        "query=up",
        "--metadata",
        "threshold=1",
    ];
    let out = blend_scaler(&good, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("<redacted>@prom.example:9090"), "{stdout}");
    assert!(
        !stdout.contains("USERINFO-PW") && !stdout.contains("admin"),
        "{stdout}"
    );

    for command in ["check", "explain"] {
        let bad = [
            command,
            "--metadata",
            "serverAddress=http://admin:USERINFO-PW@",
            "--metadata",
            "query=up",
            "--metadata",
            "threshold=1",
        ];
        let out = blend_scaler(&bad, None);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("`serverAddress`"), "{all}");
        assert!(!all.contains("USERINFO-PW"), "{command}: {all}");
    }
}

#[test]
fn check_into_a_pipe_nobody_reads_ends_quietly_with_success() {
    // `blend-scaler check FILE | head -1` once head has its line: the reader is gone before
    // the first write, so every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .args(["check", "-"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(readme_scaledobject().as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert_eq!(stderr, "", "nothing said about the closed pipe");
}
