//! The adapter's authentication and authorisation as `serve` runs them, against the test
//! kit's Kubernetes API double through the real `kube` client: the front-proxy CA and allowed
//! names from `kube-system/extension-apiserver-authentication` (and their rotation), a
//! SubjectAccessReview per read, and the `v1beta1.external.metrics.k8s.io` owner check.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/keda.rs"]
mod keda;
#[path = "support/kube.rs"]
mod kube_support;

use std::sync::Arc;
use std::time::Duration;

use blend_scaler::engine::EngineConfig;
use blend_scaler::external_metrics::adapter::{self, Adapter, AdapterFiles};
use blend_scaler::external_metrics::authz::CacheTtl;
use blend_scaler::external_metrics::cluster::ClusterOptions;
use blend_scaler::metrics::Metrics;
use blend_scaler::server::{Running, ServerConfig};
use blend_scaler_testkit::KubeApi;
use blend_scaler_testkit::kube_api::{Decision, Kind};
use certs::{Ca, ca, front_proxy_client, serving_certificate};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

const OURS: &str = "blend-scaler/blend-scaler-adapter";
const VALUE_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/production/blended-replicas?labelSelector=blend-scaler.io%2Fname%3Dorder-processor";
const DISCOVERY: &str = "/apis/external.metrics.k8s.io/v1beta1";

fn auth_configmap(ca_pem: Option<&str>, allowed_names: &str) -> Value {
    let mut data = json!({
        "client-ca-file": "unrelated",
        "requestheader-allowed-names": allowed_names,
        "requestheader-username-headers": "[\"X-Remote-User\"]",
        "requestheader-group-headers": "[\"X-Remote-Group\"]",
        "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
    });
    if let Some(pem) = ca_pem {
        data["requestheader-client-ca-file"] = json!(pem);
    }
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": data,
    })
}

fn apiservice(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
        "spec": {
            "group": "external.metrics.k8s.io", "version": "v1beta1",
            "service": {"namespace": namespace, "name": name, "port": 443},
            "groupPriorityMinimum": 100, "versionPriority": 100,
        },
    })
}

struct Fixture {
    api: Option<KubeApi>,
    front_proxy: Ca,
    serving_ca: String,
    base: String,
    adapter: Adapter,
    running: Running,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn api(&self) -> &KubeApi {
        self.api.as_ref().unwrap()
    }

    async fn stop(self) {
        self.adapter.abort();
        self.running.shutdown().await.unwrap();
    }
}

/// The double holds the auth ConfigMap, the BlendedMetric and `apiservice` (if any) before
/// the adapter starts.
async fn start(apiservice_value: Option<Value>) -> Fixture {
    let api = KubeApi::start().await.unwrap();
    let front_proxy = ca("front-proxy-ca");
    api.apply(auth_configmap(
        Some(&front_proxy.pem),
        r#"["front-proxy-client"]"#,
    ));
    if let Some(a) = apiservice_value {
        api.apply(a);
    }
    api.apply(json!({
        "apiVersion": "blend-scaler.io/v1alpha1", "kind": "BlendedMetric",
        "metadata": {"name": "order-processor", "namespace": "production"},
        "spec": {"metadata": {
            "timezone": "Europe/Berlin", "start": "0 8 * * 1-5", "end": "0 20 * * 1-5",
            "desiredReplicas": "4",
        }},
    }));
    let client = kube_support::client(&api.kubeconfig("default")).await;
    start_adapter(
        Some(api),
        client,
        front_proxy,
        Trust::ConfigMap,
        ClusterOptions {
            status_interval: Duration::from_millis(200),
        },
    )
    .await
}

/// Where the adapter learns the front-proxy CA.
enum Trust {
    /// `kube-system/extension-apiserver-authentication`, as `serve` reads it by default.
    ConfigMap,
    /// A fixed client CA file holding `front_proxy`'s certificate.
    File,
}

/// The gRPC server and the adapter on its engine, with a fresh serving certificate, reading
/// the cluster through `client`.
async fn start_adapter(
    api: Option<KubeApi>,
    client: kube::Client,
    front_proxy: Ca,
    trust: Trust,
    cluster: ClusterOptions,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let serving = serving_certificate(dir.path(), &["localhost"]);
    let client_ca = match trust {
        Trust::ConfigMap => None,
        Trust::File => {
            let path = dir.path().join("ca.crt");
            std::fs::write(&path, &front_proxy.pem).unwrap();
            Some(path)
        }
    };

    // Wednesday 10:00 in Berlin: inside the business-hours window, so the value is 4.
    let now = Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap();
    let mut config = ServerConfig::loopback();
    config.engine = EngineConfig {
        clock: Arc::new(move || now),
        ..EngineConfig::default()
    };
    let (running, _grpc) = keda::start(config, Default::default(), Metrics::new()).await;

    let adapter = adapter::start(
        AdapterFiles {
            addr: ([127, 0, 0, 1], 0).into(),
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca,
            service: Some(OURS.parse().unwrap()),
            apiservice_recheck: Duration::from_millis(100),
            authorization_cache: CacheTtl::default(),
        },
        client,
        running.engine.clone(),
        cluster,
    )
    .await
    .unwrap();
    Fixture {
        base: format!("https://localhost:{}", adapter.listener.addr.port()),
        api,
        front_proxy,
        serving_ca: serving.pem,
        adapter,
        running,
        _dir: dir,
    }
}

fn client(f: &Fixture, identity: Option<(String, String)>) -> reqwest::Client {
    certs::https_client(&f.serving_ca, identity)
}

fn aggregator(f: &Fixture) -> reqwest::Client {
    client(
        f,
        Some(front_proxy_client(&f.front_proxy, "front-proxy-client")),
    )
}

/// GET `path` as `user` in group `devs`: (code, body), or the transport error.
async fn get(
    c: &reqwest::Client,
    f: &Fixture,
    path: &str,
    user: &str,
) -> reqwest::Result<(u16, Value)> {
    let resp = c
        .get(format!("{}{path}", f.base))
        .header("X-Remote-User", user)
        .header("X-Remote-Group", "devs")
        .send()
        .await?;
    let code = resp.status().as_u16();
    Ok((code, resp.json().await.unwrap_or(Value::Null)))
}

/// Polls until `done` holds for the answer (10 s at most; a wait, not a timing claim).
async fn until(
    c: &reqwest::Client,
    f: &Fixture,
    path: &str,
    user: &str,
    done: impl Fn(&reqwest::Result<(u16, Value)>) -> bool,
) -> reqwest::Result<(u16, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(c, f, path, user).await;
        if done(&got) || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code_is(code: u16) -> impl Fn(&reqwest::Result<(u16, Value)>) -> bool {
    move |r| matches!(r, Ok((c, _)) if *c == code)
}

/// The adapter has read the ConfigMap, checked the APIService and seen the BlendedMetric:
/// alice (allowed by [`allow_alice`]) reads the value.
async fn ready(f: &Fixture) {
    let (code, body) = until(&aggregator(f), f, VALUE_PATH, "alice", code_is(200))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
}

fn allow_alice(api: &KubeApi) {
    api.set_policy(|spec| {
        if spec["user"] == "alice" {
            Decision::allow("RBAC: allowed by RoleBinding \"hpa-reader/production\"")
        } else {
            Decision::no_opinion()
        }
    });
}

#[tokio::test]
async fn each_read_posts_one_review_for_list_on_the_metric_in_its_namespace_with_the_callers_identity()
 {
    let f = start(None).await;
    allow_alice(f.api());
    ready(&f).await;
    let before = f.api().reviews().len();
    let c = aggregator(&f);
    let send = || {
        c.get(format!("{}{VALUE_PATH}", f.base))
            .header("X-Remote-User", "alice")
            .header("X-Remote-Group", "devs")
            .header("X-Remote-Group", "oncall")
            .header("X-Remote-Extra-Scopes", "view")
            .header("X-Remote-Extra-Acme.io%2Fteam", "orders")
            .send()
    };
    let resp = send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["items"][0]["value"], "4");

    let reviews = f.api().reviews()[before..].to_vec();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0]["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(reviews[0]["kind"], "SubjectAccessReview");
    assert_eq!(
        reviews[0]["spec"],
        json!({
            "user": "alice",
            "groups": ["devs", "oncall", "system:authenticated"],
            "extra": {"scopes": ["view"], "acme.io/team": ["orders"]},
            "resourceAttributes": {
                "namespace": "production",
                "verb": "list",
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "resource": "blended-replicas",
            },
        })
    );
    // The same read again is answered from the decision cache.
    assert_eq!(send().await.unwrap().status().as_u16(), 200);
    assert_eq!(f.api().reviews().len(), before + 1);
    f.stop().await;
}

#[tokio::test]
async fn a_review_that_does_not_allow_gives_a_403_status_naming_the_user_and_metric() {
    let f = start(None).await;
    allow_alice(f.api());
    ready(&f).await;
    let (code, body) = get(&aggregator(&f), &f, VALUE_PATH, "mallory")
        .await
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Forbidden");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"mallory\"") && message.contains("\"blended-replicas\""),
        "{message}"
    );
    f.api().set_policy(|_| Decision {
        allowed: false,
        denied: true,
        reason: "denied by policy".into(),
    });
    let (code, _) = get(&aggregator(&f), &f, VALUE_PATH, "dave").await.unwrap();
    assert_eq!(code, 403, "an explicit denial too");
    f.stop().await;
}

#[tokio::test]
async fn a_review_that_cannot_be_made_gives_a_500_status_and_discovery_still_answers() {
    let mut f = start(None).await;
    allow_alice(f.api());
    ready(&f).await;
    drop(f.api.take()); // The API server goes away.
    // bob's read is not in the decision cache, so it needs a review.
    let (code, body) = get(&aggregator(&f), &f, VALUE_PATH, "bob").await.unwrap();
    assert_eq!(
        (code, body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("SubjectAccessReview"), "{message}");
    assert!(
        !message.contains("127.0.0.1") && !message.contains("onnection"),
        "nothing of the failed call reaches the caller: {message}"
    );
    // The ownership already found stays while re-checks fail.
    let (code, _) = get(&aggregator(&f), &f, DISCOVERY, "alice").await.unwrap();
    assert_eq!(code, 200);
    f.stop().await;
}

#[tokio::test]
async fn only_the_configmaps_ca_with_an_allowed_cn_carries_identity() {
    let f = start(None).await;
    allow_alice(f.api());
    ready(&f).await;
    let before = f.api().reviews().len();
    assert!(
        get(&client(&f, None), &f, VALUE_PATH, "alice")
            .await
            .is_err()
    );
    let rogue = ca("rogue");
    let rogue_client = client(&f, Some(front_proxy_client(&rogue, "front-proxy-client")));
    assert!(get(&rogue_client, &f, VALUE_PATH, "alice").await.is_err());
    let wrong_cn = client(&f, Some(front_proxy_client(&f.front_proxy, "intruder")));
    let (code, body) = get(&wrong_cn, &f, VALUE_PATH, "alice").await.unwrap();
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")));
    assert_eq!(
        f.api().reviews().len(),
        before,
        "headers on an unverified connection never reach a review"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_ca_rotated_in_the_configmap_is_accepted_and_the_old_one_refused_without_restart() {
    let f = start(None).await;
    allow_alice(f.api());
    ready(&f).await;
    let old = aggregator(&f);
    assert_eq!(get(&old, &f, VALUE_PATH, "alice").await.unwrap().0, 200);

    let rotated = ca("front-proxy-ca-2");
    f.api().apply(auth_configmap(
        Some(&rotated.pem),
        r#"["front-proxy-client"]"#,
    ));
    let new = client(&f, Some(front_proxy_client(&rotated, "front-proxy-client")));
    let (code, body) = until(&new, &f, VALUE_PATH, "alice", code_is(200))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    // The old client's kept-alive connection is checked again per request.
    let (code, _) = get(&old, &f, VALUE_PATH, "alice").await.unwrap();
    assert_eq!(code, 401);
    assert!(
        get(&aggregator(&f), &f, VALUE_PATH, "alice").await.is_err(),
        "a new connection with the old CA's certificate is refused"
    );

    // The allowed names follow the ConfigMap too.
    f.api()
        .apply(auth_configmap(Some(&rotated.pem), r#"["aggregator"]"#));
    let (code, _) = until(&new, &f, VALUE_PATH, "alice", code_is(401))
        .await
        .unwrap();
    assert_eq!(code, 401);
    f.stop().await;
}

#[tokio::test]
async fn without_the_ca_key_or_the_configmap_every_client_is_refused() {
    let f = start(None).await;
    allow_alice(f.api());
    ready(&f).await;
    f.api()
        .apply(auth_configmap(None, r#"["front-proxy-client"]"#));
    // A kept-alive connection loses its identity; a new one gets no TLS session.
    let refused = |r: &reqwest::Result<(u16, Value)>| matches!(r, Err(_) | Ok((401, _)));
    let kept = aggregator(&f);
    assert!(refused(
        &until(&kept, &f, DISCOVERY, "alice", refused).await
    ));
    assert!(get(&aggregator(&f), &f, DISCOVERY, "alice").await.is_err());
    // Back, then deleted.
    f.api().apply(auth_configmap(
        Some(&f.front_proxy.pem),
        r#"["front-proxy-client"]"#,
    ));
    let (code, _) = until(&aggregator(&f), &f, DISCOVERY, "alice", code_is(200))
        .await
        .unwrap();
    assert_eq!(code, 200);
    f.api()
        .delete(
            Kind::ConfigMap,
            "kube-system",
            "extension-apiserver-authentication",
        )
        .unwrap();
    assert!(refused(
        &until(&kept, &f, DISCOVERY, "alice", refused).await
    ));
    assert!(get(&aggregator(&f), &f, DISCOVERY, "alice").await.is_err());
    f.stop().await;
}

#[tokio::test]
async fn an_apiservice_of_another_service_refuses_the_group_naming_it_and_is_never_written() {
    let f = start(Some(apiservice("keda", "keda-operator-metrics-apiserver"))).await;
    allow_alice(f.api());
    let c = aggregator(&f);
    let names_keda = |r: &reqwest::Result<(u16, Value)>| matches!(r, Ok((503, b)) if b["message"].as_str().is_some_and(|m| m.contains("keda/keda-operator-metrics-apiserver")));
    for path in ["/apis", DISCOVERY, VALUE_PATH] {
        let (code, body) = until(&c, &f, path, "alice", names_keda).await.unwrap();
        assert_eq!(code, 503, "{path}: {body}");
        assert_eq!(body["reason"], "ServiceUnavailable");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("v1beta1.external.metrics.k8s.io"),
            "{body}"
        );
    }

    // Gone: served. Pointing at this adapter: served.
    f.api()
        .delete(Kind::ApiService, "", "v1beta1.external.metrics.k8s.io")
        .unwrap();
    let (code, body) = until(&c, &f, VALUE_PATH, "alice", code_is(200))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (ns, name) = OURS.split_once('/').unwrap();
    f.api()
        .apply(apiservice("keda", "keda-operator-metrics-apiserver"));
    until(&c, &f, DISCOVERY, "alice", names_keda).await.unwrap();
    f.api().apply(apiservice(ns, name));
    let (code, _) = until(&c, &f, DISCOVERY, "alice", code_is(200))
        .await
        .unwrap();
    assert_eq!(code, 200);

    let writes: Vec<_> = f
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("apiservices") && r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert!(
        f.api().requests().iter().any(|r| r.method == "GET"
            && r.path
                == "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.external.metrics.k8s.io"),
        "the owner is read with a GET of that one APIService"
    );
    f.stop().await;
}

#[tokio::test]
async fn an_apiservice_pointing_at_this_adapter_is_served() {
    let (ns, name) = OURS.split_once('/').unwrap();
    let f = start(Some(apiservice(ns, name))).await;
    allow_alice(f.api());
    ready(&f).await;
    let (code, body) = get(&aggregator(&f), &f, VALUE_PATH, "alice").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "4");
    f.stop().await;
}

#[tokio::test]
async fn an_adapter_that_cannot_read_the_apiservice_serves_nothing_of_the_group() {
    // A fixed client CA file, and an API server that is gone before the adapter starts.
    let api = KubeApi::start().await.unwrap();
    let kubeconfig = api.kubeconfig("default");
    drop(api);
    let f = start_adapter(
        None,
        kube_support::client(&kubeconfig).await,
        ca("front-proxy-ca"),
        Trust::File,
        ClusterOptions::default(),
    )
    .await;
    let c = client(
        &f,
        Some(front_proxy_client(
            &f.front_proxy,
            "any-cn-the-file-ca-signed",
        )),
    );
    let resp = c
        .get(format!("{}{DISCOVERY}", f.base))
        .header("X-Remote-User", "system:kube-aggregator")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("not known yet") && message.contains("v1beta1.external.metrics.k8s.io"),
        "{message}"
    );
    f.stop().await;
}
