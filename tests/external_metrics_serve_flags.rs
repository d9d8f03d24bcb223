//! `serve`'s External Metrics flags on the real binary: a half-configured adapter stops
//! `serve` with an error naming what is missing, instead of serving without it.

use std::process::{Command, Output, Stdio};

fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blend-scaler"));
    cmd.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--log-format",
        "text",
    ])
    .args(args)
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env_remove("KUBERNETES_SERVICE_PORT")
    .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the blend-scaler binary runs")
}

#[test]
fn an_adapter_address_without_its_key_stops_serve_naming_the_flag_and_variable() {
    let out = serve(
        &[],
        &[
            ("BLEND_SCALER_EXTERNAL_METRICS_ADDR", "127.0.0.1:0"),
            (
                "BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT",
                "/nonexistent/tls.crt",
            ),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--external-metrics-tls-key")
            && stderr.contains("BLEND_SCALER_EXTERNAL_METRICS_TLS_KEY"),
        "{stderr}"
    );
}

#[test]
fn a_service_that_is_not_namespace_slash_name_is_refused_by_its_flag() {
    let out = serve(
        &[
            "--external-metrics-addr",
            "127.0.0.1:0",
            "--external-metrics-service",
            "blend-scaler-adapter",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--external-metrics-service") && stderr.contains("NAMESPACE/NAME"),
        "{stderr}"
    );
}

#[test]
fn the_adapter_flags_need_the_address() {
    for flag in [
        "--external-metrics-tls-cert",
        "--external-metrics-tls-key",
        "--external-metrics-service",
        "--external-metrics-client-ca",
    ] {
        let value = if flag == "--external-metrics-service" {
            "blend-scaler/blend-scaler-adapter"
        } else {
            "/tls.crt"
        };
        let out = serve(&[flag, value], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}");
        assert!(
            stderr.contains("--external-metrics-addr"),
            "{flag}: {stderr}"
        );
    }
}

#[test]
fn without_a_kubernetes_api_to_reach_serve_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-kubeconfig");
    let out = serve(
        &[
            "--external-metrics-addr",
            "127.0.0.1:0",
            "--external-metrics-tls-cert",
            "/tls.crt",
            "--external-metrics-tls-key",
            "/tls.key",
        ],
        &[("KUBECONFIG", missing.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("needs the Kubernetes API (KUBECONFIG or in-cluster)"),
        "{stderr}"
    );
}
