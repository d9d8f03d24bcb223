//! The External Metrics API over HTTPS as the aggregator calls it: the front-proxy client
//! certificate, `X-Remote-*` headers, the HPA's Accept header; and the value KEDA's gRPC path
//! gives for the same metadata.

#[path = "support/keda.rs"]
mod keda;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use blend_scaler::crd::{BlendedMetricSpec, Fallback};
use blend_scaler::engine::EngineConfig;
use blend_scaler::external_metrics::server::{self, AdapterTls, Registry};
use blend_scaler::metrics::Metrics;
use blend_scaler::server::ServerConfig;
use chrono::{TimeZone, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: String,
    serving_ca: String,
    front_proxy: Ca,
    grpc: keda::Client,
    running: blend_scaler::server::Running,
    listener: server::Listener,
}

fn business_hours() -> BTreeMap<String, String> {
    [
        ("timezone", "Europe/Berlin"),
        ("start", "0 8 * * 1-5"),
        ("end", "0 20 * * 1-5"),
        ("desiredReplicas", "4"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let serving = ca("serving-ca");
    let front_proxy = ca("front-proxy-ca");
    let (cert, key) = leaf(
        &serving,
        "blend-scaler-adapter",
        &["localhost", "blend-scaler-adapter.blend-scaler.svc"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();

    // Wednesday 2026-12-02 10:00 in Berlin: inside the business-hours window.
    let now = Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap();
    let mut config = ServerConfig::loopback();
    config.engine = EngineConfig {
        clock: Arc::new(move || now),
        ..EngineConfig::default()
    };
    let (running, grpc) = keda::start(config, Default::default(), Metrics::new()).await;
    let registry = Arc::new(Registry::default());
    registry.upsert(
        "production",
        "order-processor",
        BlendedMetricSpec {
            metadata: business_hours(),
            fallback: Some(Fallback { replicas: 2 }),
        },
    );
    let listener = server::start(
        ([127, 0, 0, 1], 0).into(),
        AdapterTls {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca_pem: front_proxy.pem.clone().into_bytes(),
            allowed_names: vec!["front-proxy-client".into()],
        },
        running.engine.clone(),
        registry,
    )
    .await
    .unwrap();
    Fixture {
        base: format!("https://localhost:{}", listener.addr.port()),
        serving_ca: serving.pem,
        front_proxy,
        grpc,
        running,
        listener,
        _dir: dir,
    }
}

fn client(f: &Fixture, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(f.serving_ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn aggregator(f: &Fixture) -> reqwest::Client {
    client(
        f,
        Some(leaf(
            &f.front_proxy,
            "front-proxy-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )),
    )
}

const VALUE_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/production/blended-replicas?labelSelector=blend-scaler.io%2Fname%3Dorder-processor";

async fn get(
    c: &reqwest::Client,
    f: &Fixture,
    path: &str,
    user: Option<&str>,
) -> reqwest::Result<(u16, String, serde_json::Value)> {
    let mut r = c
        .get(format!("{}{path}", f.base))
        .header("Accept", "application/vnd.kubernetes.protobuf, */*");
    if let Some(u) = user {
        r = r
            .header("X-Remote-User", u)
            .header("X-Remote-Group", "system:masters");
    }
    let resp = r.send().await?;
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((code, ct, body))
}

async fn stop(f: Fixture) {
    f.listener.abort();
    f.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_served_value_equals_what_keda_gets_over_grpc_for_the_same_metadata() {
    let mut f = start().await;
    let mut grpc_metadata: std::collections::HashMap<String, String> =
        business_hours().into_iter().collect();
    grpc_metadata.insert("scalerAddress".into(), "blend-scaler.keda:9090".into());
    let obj = keda::object("production", "order-processor-so", grpc_metadata);
    let (grpc_value, _) = keda::metric_value(&mut f.grpc, &obj, keda::METRIC)
        .await
        .unwrap();
    assert_eq!(grpc_value, 4);

    let c = aggregator(&f);
    let (code, ct, body) = get(
        &c,
        &f,
        VALUE_PATH,
        Some("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(ct, "application/json", "JSON whatever the Accept");
    assert_eq!(body["kind"], "ExternalMetricValueList");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["value"], grpc_value.to_string());
    assert_eq!(items[0]["metricName"], "blended-replicas");
    assert_eq!(
        items[0]["metricLabels"]["blend-scaler.io/name"],
        "order-processor"
    );
    // The HPA's AverageValue arithmetic with target 1: ceil(milli / 1000) replicas.
    let milli =
        blend_scaler::external_metrics::quantity::parse_milli(items[0]["value"].as_str().unwrap())
            .unwrap();
    assert_eq!((milli as f64 / 1000.0).ceil() as i64, grpc_value);
    stop(f).await;
}

#[tokio::test]
async fn the_aggregator_probe_and_discovery_fetch_answer_200_within_five_seconds() {
    let f = start().await;
    let c = aggregator(&f);
    let t = std::time::Instant::now();
    let (code, _, body) = get(
        &c,
        &f,
        "/apis/external.metrics.k8s.io/v1beta1",
        Some("system:kube-aggregator"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["resources"][0]["name"], "externalmetrics");
    let (code, _, body) = get(&c, &f, "/apis", Some("system:kube-aggregator"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "APIGroupList");
    assert!(t.elapsed() < Duration::from_secs(5));
    for path in ["/openapi/v2", "/openapi/v3"] {
        let (code, _, body) = get(&c, &f, path, Some("system:aggregator")).await.unwrap();
        assert_eq!(code, 404, "{path}");
        assert_eq!(body["kind"], "Status");
    }
    stop(f).await;
}

#[tokio::test]
async fn errors_are_status_documents_with_the_mapped_codes() {
    let f = start().await;
    let c = aggregator(&f);
    let user = Some("alice");
    let base = "/apis/external.metrics.k8s.io/v1beta1/namespaces";
    for (path, want) in [
        (
            format!("{base}/production/blended-replicas?labelSelector=app%3Dweb"),
            400,
        ),
        (
            format!("{base}/production/blended-replicas?labelSelector=a%20in%20(b"),
            400,
        ),
        (
            format!(
                "{base}/production/blended-replicas?labelSelector=blend-scaler.io%2Fname%3Dnone"
            ),
            404,
        ),
        (
            format!(
                "{base}/staging/blended-replicas?labelSelector=blend-scaler.io%2Fname%3Dorder-processor"
            ),
            404,
        ),
        (
            format!(
                "{base}/production/other-metric?labelSelector=blend-scaler.io%2Fname%3Dorder-processor"
            ),
            404,
        ),
    ] {
        let (code, _, body) = get(&c, &f, &path, user).await.unwrap();
        assert_eq!(code, want, "{path}: {body}");
        assert_eq!(body["kind"], "Status", "{path}");
        assert_eq!(body["code"], want, "{path}");
    }
    stop(f).await;
}

#[tokio::test]
async fn only_a_verified_front_proxy_certificate_with_an_allowed_name_carries_identity() {
    let f = start().await;
    // No client certificate: no TLS session at all.
    assert!(
        get(&client(&f, None), &f, VALUE_PATH, Some("system:admin"))
            .await
            .is_err()
    );
    // A certificate from a rogue CA with the right CN: refused in the handshake.
    let rogue = ca("rogue");
    let rogue_client = client(
        &f,
        Some(leaf(
            &rogue,
            "front-proxy-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )),
    );
    assert!(
        get(&rogue_client, &f, VALUE_PATH, Some("system:admin"))
            .await
            .is_err()
    );
    // The right CA but a CN not allowed: the X-Remote-* headers are ignored.
    let wrong_cn = client(
        &f,
        Some(leaf(
            &f.front_proxy,
            "someone-else",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )),
    );
    let (code, _, body) = get(&wrong_cn, &f, VALUE_PATH, Some("system:admin"))
        .await
        .unwrap();
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")));
    // A server-auth-only certificate is not a client certificate.
    let server_eku = client(
        &f,
        Some(leaf(
            &f.front_proxy,
            "front-proxy-client",
            &[],
            ExtendedKeyUsagePurpose::ServerAuth,
        )),
    );
    assert!(
        get(&server_eku, &f, VALUE_PATH, Some("system:admin"))
            .await
            .is_err()
    );
    // The verified connection without a user header.
    let (code, _, _) = get(&aggregator(&f), &f, VALUE_PATH, None).await.unwrap();
    assert_eq!(code, 401);
    stop(f).await;
}
