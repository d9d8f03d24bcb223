//! docs/security.md: no secret ever shows in a log line, an error message, `/metrics`, or
//! `check`/`explain` output.
//!
//! One unique token is the Service Bus SharedAccessKey (in `connectionFromEnv`), the
//! Prometheus bearer token (`bearerTokenFromEnv`) and a `customHeaders` value. Every path
//! runs: good reads, a wrong key (401), a Prometheus gateway that refuses and echoes the
//! header it got, metadata errors around the secret keys, and both CLI commands. Logs are
//! captured at TRACE for every crate (the `log` records of the HTTP stack included) by a
//! global subscriber: this file is its own test binary for that reason.

#[path = "support/keda.rs"]
mod keda;
#[path = "support/prometheus.rs"]
mod prometheus_support;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blend_scaler::engine::EngineConfig;
use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::ServerConfig;
use blend_scaler_testkit::servicebus::{DoubleOptions, ServiceBusDouble};
use prometheus_support::{Prometheus, Proxy};
use tokio_stream::StreamExt;
use tonic::Code;

/// Every log line of the test process, as JSON.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(captured.clone())
            .try_init()
            .expect("the only global subscriber of this test binary");
        captured
    })
}

/// Unique to this run: letters and digits only, so it reads the same percent-encoded,
/// in JSON and in a header.
fn secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("Zq7{:x}{:x}Xk9", nanos, std::process::id())
    })
}

/// Everything a secret must not appear in, gathered from every path.
#[derive(Default)]
struct Exposed {
    texts: Vec<(String, String)>,
}

impl Exposed {
    fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.texts.push((place.into(), text.into()));
    }

    fn assert_clean(&self) {
        let s = secret();
        for (place, text) in &self.texts {
            assert!(!text.contains(s), "the secret appears in {place}:\n{text}");
            // The Service Bus SAS token is derived from the key and is a credential too.
            assert!(
                !text.contains("SharedAccessSignature sr="),
                "a SAS token appears in {place}:\n{text}"
            );
        }
    }
}

fn metadata(pairs: &[(&str, String)]) -> HashMap<String, String> {
    keda::metadata(pairs.iter().cloned())
}

fn object(name: &str, md: HashMap<String, String>) -> ScaledObjectRef {
    keda::object("secrets", name, md)
}

/// Service Bus with the secret as its key, Prometheus behind a gateway wanting the secret
/// as bearer token, and the secret in a custom header.
fn trigger(double: &ServiceBusDouble, key: &str, prometheus: &str) -> HashMap<String, String> {
    metadata(&[
        ("endpoint", double.endpoint()),
        ("connectionFromEnv", double.connection_string_with_key(key)),
        ("queueName", "orders".into()),
        ("messageCount", "5".into()),
        ("serverAddress", prometheus.into()),
        ("query", "vector(45)".into()),
        ("threshold", "10".into()),
        ("authModes", "bearer".into()),
        ("bearerTokenFromEnv", secret().into()),
        (
            "customHeaders",
            format!("X-Tenant=shop,X-Api-Key={}", secret()),
        ),
        ("staleAfter", "3s".into()),
    ])
}

/// Runs the binary with `--metadata` pairs; its stdout and stderr.
async fn cli(command: &str, md: &HashMap<String, String>) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_blend-scaler"));
    // The doubles listen on loopback over plain http.
    cmd.arg(command).arg("--allow-loopback-upstreams");
    let mut pairs: Vec<_> = md.iter().collect();
    pairs.sort();
    for (k, v) in pairs {
        cmd.arg("--metadata").arg(format!("{k}={v}"));
    }
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        cmd.env("RUST_LOG", "trace").kill_on_drop(true).output(),
    )
    .await
    .expect("the CLI finishes")
    .expect("the CLI runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_secret_in_a_connection_string_a_bearer_token_and_a_header_never_leaks() {
    let logs = logs();
    let mut exposed = Exposed::default();

    let double = ServiceBusDouble::start_with(DoubleOptions {
        key: secret().into(),
        ..DoubleOptions::default()
    })
    .await
    .unwrap();
    double.set_queue("orders", 12);
    let prom = Prometheus::builder().start().await;
    let gateway = Proxy::start(&prom.url(), Some(&format!("Bearer {}", secret()))).await;
    // A gateway that wants another token: it refuses, echoing the header it got.
    let refusing = Proxy::start(&prom.url(), Some("Bearer another-token")).await;

    let mut config = ServerConfig::loopback();
    config.engine = EngineConfig {
        refresh: keda::refresh_every(Duration::from_millis(250)),
        ..EngineConfig::default()
    };
    let (running, mut client) = keda::start_with_default_sources(config).await;

    // The good path: both upstreams accept the secret; 45 / 10 = 5 beats 12 / 5 = 3.
    let good = object("good", trigger(&double, secret(), &gateway.url()));
    let spec = client
        .get_metric_spec(good.clone())
        .await
        .unwrap()
        .into_inner();
    exposed.add("GetMetricSpec", format!("{spec:?}"));
    let (value, _) = keda::metric_value(&mut client, &good, keda::METRIC)
        .await
        .unwrap();
    assert_eq!(value, 5, "the secret was used");
    assert!(
        client
            .is_active(good.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );
    let mut stream = client
        .stream_is_active(good.clone())
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .expect("a first state")
        .expect("a message")
        .expect("no error");
    assert!(first.result);
    drop(stream);
    let forwarded = gateway.requests();
    assert!(
        forwarded
            .iter()
            .any(|r| r.headers.get("x-api-key").map(String::as_str) == Some(secret())),
        "the custom header was sent"
    );

    // Failing paths: a wrong key (the secret is the key sent, the double wants another),
    // and a Prometheus gateway that refuses the secret bearer token and echoes it back.
    let other = ServiceBusDouble::start().await.unwrap();
    other.set_queue("orders", 1);
    // Each failing signal alone: beside a healthy one it would not fail the answer (README, "Answers to KEDA").
    let only = |mut md: HashMap<String, String>, keep_servicebus: bool| {
        let servicebus = ["endpoint", "connectionFromEnv", "queueName", "messageCount"];
        md.retain(|k, _| k == "staleAfter" || servicebus.contains(&k.as_str()) == keep_servicebus);
        md
    };
    let failing = [
        (
            "wrong key",
            only(trigger(&other, secret(), &gateway.url()), true),
            "HTTP 401",
        ),
        (
            "prometheus refusing",
            only(trigger(&double, secret(), &refusing.url()), false),
            "prometheus",
        ),
    ];
    for (what, md, reason) in &failing {
        let obj = object(&what.replace(' ', "-"), md.clone());
        for _ in 0..2 {
            let status = keda::metric_value(&mut client, &obj, keda::METRIC)
                .await
                .expect_err(what);
            assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
            assert!(status.message().contains(reason), "{what}: {status:?}");
            exposed.add(format!("GetMetrics error ({what})"), format!("{status:?}"));
            let answer = client.is_active(obj.clone()).await;
            exposed.add(format!("IsActive ({what})"), format!("{answer:?}"));
        }
    }
    assert!(
        refusing.requests().iter().any(|r| r
            .headers
            .get("authorization")
            .is_some_and(|h| h.contains(secret()))),
        "the refusing gateway got (and echoed) the secret"
    );

    // Metadata errors around each secret key: messages name the key, not the value.
    let invalid = [
        ("connection string without a key", {
            let mut md = trigger(&double, secret(), &gateway.url());
            md.insert("connectionFromEnv".into(), format!("Endpoint;{}", secret()));
            md
        }),
        ("header without a name", {
            let mut md = trigger(&double, secret(), &gateway.url());
            md.insert(
                "customHeaders".into(),
                format!("X-Tenant=shop,{}", secret()),
            );
            md
        }),
        ("bearer token without bearer auth", {
            let mut md = trigger(&double, secret(), &gateway.url());
            md.insert("authModes".into(), "basic".into());
            md
        }),
        ("an unknown auth mode next to the secret", {
            let mut md = trigger(&double, secret(), &gateway.url());
            md.insert("authModes".into(), format!("bearer,{}", "kerberos"));
            md
        }),
    ];
    for (what, md) in &invalid {
        let obj = object("invalid", md.clone());
        let status = keda::metric_value(&mut client, &obj, keda::METRIC)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        exposed.add(format!("GetMetrics error ({what})"), format!("{status:?}"));
        let status = client.get_metric_spec(obj).await.expect_err(what);
        exposed.add(
            format!("GetMetricSpec error ({what})"),
            format!("{status:?}"),
        );
    }

    // /metrics after all of it.
    let (_, text) = keda::http_get(&running, "/metrics").await;
    assert!(text.contains("blend_scaler_grpc_requests_total"), "{text}");
    assert!(
        text.contains(r#"outcome="unauthorized""#),
        "the wrong key was counted: {text}"
    );
    exposed.add("/metrics", text);

    // `check` and `explain`, on the good trigger and on each failing one.
    let good_md = trigger(&double, secret(), &gateway.url());
    let (ok, out) = cli("check", &good_md).await;
    assert!(ok, "check accepts the good trigger: {out}");
    assert!(out.contains("orders"), "check prints the plan: {out}");
    exposed.add("check (good)", out);
    let (ok, out) = cli("explain", &good_md).await;
    assert!(ok, "explain reads both upstreams with the secret: {out}");
    assert!(out.contains("result: 5 replicas"), "{out}");
    exposed.add("explain (good)", out);
    for (what, md, _) in &failing {
        let (ok, out) = cli("explain", md).await;
        assert!(!ok, "explain fails ({what}): {out}");
        exposed.add(format!("explain ({what})"), out);
    }
    for (what, md) in &invalid {
        let (ok, out) = cli("check", md).await;
        assert!(!ok, "check refuses ({what}): {out}");
        exposed.add(format!("check ({what})"), out.clone());
        let (_, out) = cli("explain", md).await;
        exposed.add(format!("explain ({what})"), out);
    }

    running.shutdown().await.unwrap();
    let captured = logs.text();
    // The capture works: the decision log, and TRACE-level lines of the HTTP stack.
    assert!(captured.contains("decision changed"), "INFO lines captured");
    assert!(
        captured.contains("\"level\":\"TRACE\""),
        "TRACE lines captured"
    );
    exposed.add("the logs", captured);
    exposed.assert_clean();
}
