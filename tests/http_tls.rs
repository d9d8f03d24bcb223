//! `serve --http-tls`: the HTTP port (`/metrics`, `/decisions`, the probes) over TLS with the
//! gRPC certificate, renewed in place like it, no client certificate asked for there even
//! when gRPC requires one, plain HTTP refused, and `explain --from https://…` reading it.

#[path = "support/keda.rs"]
mod keda;
#[path = "support/pki.rs"]
mod pki;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blend_scaler::decisions::{Decisions, DecisionsOptions};
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::server::Running;
use pki::{Pki, keda_channel, pki, start_reloading};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const POD: &str = "blend-scaler-7d9f-abcde";
/// The Service name the chart's certificates carry; never an address.
const SERVICE: &str = "blend-scaler.blend-scaler.svc";

/// Writes each file beside itself and renames it into place, as a renewal would.
fn publish(dir: &Path, pki: &Pki) {
    for (name, text) in [
        ("tls.crt", &pki.server_cert),
        ("tls.key", &pki.server_key),
        ("ca.crt", &pki.ca),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// gRPC with mTLS and `--http-tls`, certificates re-read every 100 ms.
async fn scaler(dir: &Path) -> Running {
    start_reloading(dir, |config| {
        config.http_tls = true;
        config.decisions = DecisionsOptions {
            pod: POD.to_string(),
            ..DecisionsOptions::default()
        };
    })
    .await
}

fn cron_object() -> ScaledObjectRef {
    keda::object(
        "production",
        "orders",
        keda::metadata([
            ("start", "0 0 * * *"),
            ("end", "59 23 * * *"),
            ("desiredReplicas", "3"),
            ("maxReplicas", "10"),
        ]),
    )
}

/// KEDA's call over mTLS, so the pod has a decision to show.
async fn ask_as_keda(running: &Running, pki: &Pki) {
    let channel = keda_channel(running.grpc_addr.port(), &pki.ca, pki)
        .await
        .unwrap();
    let mut client = ExternalScalerClient::new(channel);
    let spec = client.get_metric_spec(cron_object()).await.unwrap();
    let metric = spec.into_inner().metric_specs[0].metric_name.clone();
    client
        .get_metrics(blend_scaler::proto::GetMetricsRequest {
            scaled_object_ref: Some(cron_object()),
            metric_name: metric,
        })
        .await
        .unwrap();
}

/// A client that presents no certificate, as Prometheus and the kubelet do, trusting `ca`.
fn https_client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn https(running: &Running, path: &str) -> String {
    format!(
        "https://localhost:{}{path}",
        running.http_addr.expect("an HTTP port").port()
    )
}

fn explain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .arg("explain")
        .args(args)
        .output()
        .expect("running blend-scaler explain")
}

/// The certificate the HTTP port presents in a new handshake without a client certificate
/// (trusting `ca`).
async fn presented(running: &Running, ca: &str) -> CertificateDer<'static> {
    pki::presented(running.http_addr.unwrap(), ca, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_serves_decisions_over_tls_without_a_client_certificate_and_refuses_plain_http()
 {
    let dir = tempfile::tempdir().unwrap();
    let first = pki("1", &["localhost", SERVICE]);
    publish(dir.path(), &first);
    let running = scaler(dir.path()).await;
    ask_as_keda(&running, &first).await;

    // No client certificate, though gRPC requires one: Prometheus and the kubelet have none.
    let client = https_client(&first.ca);
    for path in ["/readyz", "/livez", "/metrics"] {
        let r = client.get(https(&running, path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = client
        .get(https(&running, "/decisions/production/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d: Decisions = r.json().await.unwrap();
    assert_eq!(d.pod, POD);
    assert_eq!(d.decisions.len(), 1, "{d:?}");
    assert_eq!(d.decisions[0].replicas, Some(3), "{d:?}");

    // Plain HTTP on the same port gets no answer: the listener speaks only TLS.
    let plain = format!("http://{}/decisions", running.http_addr.unwrap());
    let refused = reqwest::get(&plain).await;
    assert!(refused.is_err(), "plain HTTP was answered: {refused:?}");

    // A client that does not trust the serving CA is refused the handshake.
    let stranger = https_client(&pki("other", &["localhost", SERVICE]).ca);
    assert!(
        stranger
            .get(https(&running, "/readyz"))
            .send()
            .await
            .is_err()
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_in_place_is_served_on_the_http_port_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki("1", &["localhost", SERVICE]);
    publish(dir.path(), &first);
    let running = scaler(dir.path()).await;
    let before = presented(&running, &first.ca).await;
    assert_eq!(
        before,
        CertificateDer::from_pem_slice(first.server_cert.as_bytes()).unwrap()
    );

    let second = pki("2", &["localhost", SERVICE]);
    publish(dir.path(), &second);
    let want = CertificateDer::from_pem_slice(second.server_cert.as_bytes()).unwrap();
    // Bounded by count, not asserted on time: the reload is polled, so wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cert = presented_any(&running, &[&first.ca, &second.ca]).await;
        if cert == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
}

/// As [`presented`], trusting any of `cas` (across a CA rotation).
async fn presented_any(running: &Running, cas: &[&str]) -> CertificateDer<'static> {
    let bundle: String = cas.concat();
    presented(running, &bundle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_from_reads_an_https_port_with_the_ca_and_server_name_given() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki("1", &["localhost", SERVICE]);
    publish(dir.path(), &pki);
    let running = scaler(dir.path()).await;
    ask_as_keda(&running, &pki).await;
    let ca = dir.path().join("ca.crt");
    let ca = ca.to_str().unwrap();
    let port = running.http_addr.unwrap().port();

    let out = explain(&[
        "--from",
        &format!("https://localhost:{port}"),
        "--ca",
        ca,
        "production/orders",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("on pod {POD}")), "{text}");
    assert!(text.contains("clamp: min -, max 10"), "{text}");

    // A pod by address: its address is in no certificate, the Service's name is.
    let by_address = format!("https://127.0.0.1:{port}");
    let out = explain(&["--from", &by_address, "--ca", ca, "production/orders"]);
    assert!(
        !out.status.success(),
        "an address the certificate lacks was accepted"
    );
    let out = explain(&[
        "--from",
        &by_address,
        "--ca",
        ca,
        "--tls-server-name",
        SERVICE,
        "production/orders",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8(out.stdout).unwrap().contains("on pod"));

    // Without --ca the system's roots do not know the cluster's CA.
    let out = explain(&[
        "--from",
        &format!("https://localhost:{port}"),
        "production/orders",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("GET https://localhost"), "{err}");

    // --ca on a plain http URL is a mistake, said as such.
    let out = explain(&[
        "--from",
        &format!("http://localhost:{port}"),
        "--ca",
        ca,
        "production/orders",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("need an https:// --from"), "{err}");
    running.shutdown().await.unwrap();
}

#[test]
fn http_tls_without_a_certificate_is_refused_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .args(["serve", "--http-tls"])
        .env_remove("BLEND_SCALER_TLS_CERT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--tls-cert"), "{err}");
}
