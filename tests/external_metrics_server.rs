//! The External Metrics API over HTTPS as the aggregator calls it: the front-proxy client
//! certificate, `X-Remote-*` headers, the HPA's Accept header; and the value KEDA's gRPC path
//! gives for the same metadata.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/keda.rs"]
mod keda;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use blend_scaler::crd::{BlendedMetricSpec, Fallback};
use blend_scaler::engine::EngineConfig;
use blend_scaler::external_metrics::apiservice::{self, Ownership};
use blend_scaler::external_metrics::authz::{Authorizer, AuthzError, MetricRead};
use blend_scaler::external_metrics::front_proxy::FrontProxy;
use blend_scaler::external_metrics::server::{self, Access, AdapterTls, Registry};
use blend_scaler::metrics::Metrics;
use blend_scaler::server::ServerConfig;
use certs::{Ca, ca, leaf, serving_certificate};
use chrono::{TimeZone, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rcgen::ExtendedKeyUsagePurpose;

/// The test's authorisation policy in place of kube-apiserver's SubjectAccessReview: users
/// allowed, or a failure for every read; every question recorded.
#[derive(Default)]
struct Policy {
    allowed_users: Mutex<Vec<String>>,
    fail: Mutex<bool>,
    asked: Mutex<Vec<MetricRead>>,
}

impl Authorizer for Policy {
    fn allowed<'a>(&'a self, read: &'a MetricRead) -> BoxFuture<'a, Result<bool, AuthzError>> {
        self.asked.lock().push(read.clone());
        let answer = if *self.fail.lock() {
            Err(AuthzError(
                "503 from https://10.0.0.1:443: <html>upstream secret page</html>".into(),
            ))
        } else {
            Ok(self.allowed_users.lock().contains(&read.user.user))
        };
        Box::pin(async move { answer })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: String,
    serving_ca: String,
    front_proxy: Ca,
    trust: Arc<FrontProxy>,
    policy: Arc<Policy>,
    ownership: Arc<apiservice::Guard>,
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
    start_owned(Ownership::Absent).await
}

async fn start_owned(ownership: Ownership) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let serving = serving_certificate(
        dir.path(),
        &["localhost", "blend-scaler-adapter.blend-scaler.svc"],
    );
    let front_proxy = ca("front-proxy-ca");

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
    let trust = FrontProxy::fixed(
        front_proxy.pem.as_bytes(),
        vec!["front-proxy-client".into()],
    )
    .unwrap();
    let policy = Arc::new(Policy::default());
    policy.allowed_users.lock().extend([
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler".to_string(),
        "alice".to_string(),
    ]);
    let ownership = apiservice::Guard::fixed(ownership);
    let listener = server::start(
        ([127, 0, 0, 1], 0).into(),
        AdapterTls {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        },
        Access {
            front_proxy: trust.clone(),
            authorizer: policy.clone(),
            ownership: ownership.clone(),
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
        trust,
        policy,
        ownership,
        grpc,
        running,
        listener,
        _dir: dir,
    }
}

fn client(f: &Fixture, identity: Option<(String, String)>) -> reqwest::Client {
    certs::https_client(&f.serving_ca, identity)
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
            .header("X-Remote-Group", "devs");
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

#[tokio::test]
async fn a_denied_read_is_a_403_status_and_the_policy_is_asked_about_exactly_that_read() {
    let f = start().await;
    let resp = aggregator(&f)
        .get(format!("{}{VALUE_PATH}", f.base))
        .header("X-Remote-User", "mallory")
        .header("X-Remote-Group", "devs")
        .header("X-Remote-Group", "contractors")
        .header("X-Remote-Extra-Scopes", "view")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "blended-replicas.external.metrics.k8s.io is forbidden: User \"mallory\" cannot list resource \"blended-replicas\" in API group \"external.metrics.k8s.io\" in the namespace \"production\""
    );
    let asked = f.policy.asked.lock().clone();
    assert_eq!(asked.len(), 1);
    let read = &asked[0];
    assert_eq!(
        (read.namespace.as_str(), read.metric.as_str()),
        ("production", "blended-replicas")
    );
    assert_eq!(read.user.user, "mallory");
    assert_eq!(
        read.user.groups,
        ["devs", "contractors", "system:authenticated"]
    );
    assert_eq!(read.user.extra["scopes"], ["view"]);
    stop(f).await;
}

#[tokio::test]
async fn a_failed_authorization_check_is_a_500_status_that_leaks_nothing_from_upstream() {
    let f = start().await;
    *f.policy.fail.lock() = true;
    let (code, _, body) = get(&aggregator(&f), &f, VALUE_PATH, Some("alice"))
        .await
        .unwrap();
    assert_eq!(
        (code, body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    let text = body.to_string();
    assert!(text.contains("SubjectAccessReview"), "{text}");
    assert!(
        !text.contains("10.0.0.1") && !text.contains("secret"),
        "{text}"
    );
    stop(f).await;
}

#[tokio::test]
async fn a_rotated_front_proxy_ca_is_accepted_and_the_old_one_refused_even_on_a_kept_alive_connection()
 {
    let f = start().await;
    let old = aggregator(&f);
    let (code, _, _) = get(&old, &f, VALUE_PATH, Some("alice")).await.unwrap();
    assert_eq!(code, 200);

    let rotated = ca("front-proxy-ca-2");
    f.trust
        .set(
            rotated.pem.as_bytes(),
            vec!["front-proxy-client".into()],
            "test",
        )
        .unwrap();
    // The connection the old client keeps open was verified before the rotation: its
    // requests are checked again and carry no identity now.
    let (code, _, body) = get(&old, &f, VALUE_PATH, Some("alice")).await.unwrap();
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")));
    // A new connection with the old CA's certificate is refused in the handshake.
    assert!(
        get(&aggregator(&f), &f, VALUE_PATH, Some("alice"))
            .await
            .is_err()
    );
    let new = client(
        &f,
        Some(leaf(
            &rotated,
            "front-proxy-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )),
    );
    let (code, _, body) = get(&new, &f, VALUE_PATH, Some("alice")).await.unwrap();
    assert_eq!(code, 200, "{body}");
    stop(f).await;
}

#[tokio::test]
async fn with_no_usable_front_proxy_ca_every_client_is_refused() {
    let f = start().await;
    f.trust
        .refuse(blend_scaler::external_metrics::front_proxy::TrustError::MissingConfigMap);
    assert!(
        get(&aggregator(&f), &f, "/apis", Some("system:kube-aggregator"))
            .await
            .is_err()
    );
    stop(f).await;
}

#[tokio::test]
async fn the_group_is_refused_naming_the_owner_while_another_service_owns_the_apiservice() {
    let f = start_owned(Ownership::Other(
        "Service keda/keda-operator-metrics-apiserver".into(),
    ))
    .await;
    let c = aggregator(&f);
    for path in [
        "/apis",
        "/apis/external.metrics.k8s.io",
        "/apis/external.metrics.k8s.io/v1beta1",
        VALUE_PATH,
    ] {
        let (code, _, body) = get(&c, &f, path, Some("alice")).await.unwrap();
        assert_eq!(code, 503, "{path}: {body}");
        assert_eq!(body["reason"], "ServiceUnavailable", "{path}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("keda/keda-operator-metrics-apiserver")
                && message.contains("v1beta1.external.metrics.k8s.io"),
            "{path}: {message}"
        );
    }
    assert!(
        f.policy.asked.lock().is_empty(),
        "no review for a group not served"
    );
    assert_eq!(
        f.ownership.state(),
        Ownership::Other("Service keda/keda-operator-metrics-apiserver".into())
    );
    // Unauthenticated callers learn nothing about the owner.
    let (code, _, _) = get(&c, &f, "/apis", None).await.unwrap();
    assert_eq!(code, 401);
    stop(f).await;
}
