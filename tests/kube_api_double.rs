//! The test kit's Kubernetes API double, driven by the real `kube` client the adapter uses:
//! if the double's JSON drifted from the API's, these calls would fail to decode.

#[path = "support/kube.rs"]
mod kube_support;

use std::time::Duration;

use blend_scaler::crd::{BlendedMetric, BlendedMetricStatus};
use blend_scaler_testkit::KubeApi;
use blend_scaler_testkit::kube_api::{Decision, Kind};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;

async fn client(api: &KubeApi) -> kube::Client {
    kube_support::client(&api.kubeconfig("default")).await
}

fn blended_metric(namespace: &str, name: &str, replicas: &str) -> serde_json::Value {
    json!({
        "apiVersion": "blend-scaler.io/v1alpha1", "kind": "BlendedMetric",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"metadata": {"timezone": "UTC", "start": "0 0 * * *", "end": "59 23 * * *",
                               "desiredReplicas": replicas}},
    })
}

#[tokio::test]
async fn blended_metrics_list_and_get_decode_as_the_crate_type_in_every_namespace() {
    let api = KubeApi::start().await.unwrap();
    api.apply(blended_metric("a", "one", "2"));
    api.apply(blended_metric("b", "two", "3"));
    let client = client(&api).await;

    let all: Api<BlendedMetric> = Api::all(client.clone());
    let list = all.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert!(list.metadata.resource_version.is_some());

    let b: Api<BlendedMetric> = Api::namespaced(client, "b");
    assert_eq!(b.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let two = b.get("two").await.unwrap();
    assert_eq!(two.spec.metadata["desiredReplicas"], "3");
    assert_eq!(two.metadata.generation, Some(1));
    assert!(two.metadata.uid.is_some());
}

#[tokio::test]
async fn a_missing_object_is_a_404_status_the_client_reads_as_not_found() {
    let api = KubeApi::start().await.unwrap();
    let client = client(&api).await;
    let bms: Api<BlendedMetric> = Api::namespaced(client.clone(), "prod");
    match bms.get("nope").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.reason, "NotFound");
            assert_eq!(
                s.message,
                "blendedmetrics.blend-scaler.io \"nope\" not found"
            );
        }
        other => panic!("expected a 404 Status, got {other:?}"),
    }
    let services: Api<APIService> = Api::all(client);
    let err = services
        .get("v1beta1.external.metrics.k8s.io")
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn a_request_without_the_kubeconfig_token_is_unauthorized() {
    let api = KubeApi::start().await.unwrap();
    let config = kube::Config::new(api.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let bms: Api<BlendedMetric> = Api::all(client);
    let err = bms.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 401),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_runtime_watcher_sees_adds_changes_and_deletes_in_order() {
    let api = KubeApi::start().await.unwrap();
    api.apply(blended_metric("prod", "early", "1"));
    let client = client(&api).await;
    let bms: Api<BlendedMetric> = Api::all(client);
    // The watcher is lazy: drive it in a task so its watch request is made while we wait.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = watcher(bms, watcher::Config::default().any_semantic()).boxed();
    let driver = tokio::spawn(async move {
        while let Ok(Some(e)) = events.try_next().await {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a watcher event within 10 s")
            .expect("the watcher goes on")
    };

    let mut seen = Vec::new();
    // The initial list: Init, InitApply(early), InitDone.
    loop {
        match next().await {
            watcher::Event::InitApply(o) => seen.push(format!("init {}", o.metadata.name.unwrap())),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    while api.open_watches() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.apply(blended_metric("prod", "late", "2"));
    api.apply(blended_metric("prod", "late", "5"));
    api.delete(Kind::BlendedMetric, "prod", "early");
    for _ in 0..3 {
        match next().await {
            watcher::Event::Apply(o) => seen.push(format!(
                "apply {} {} gen {}",
                o.metadata.name.clone().unwrap(),
                o.spec.metadata["desiredReplicas"],
                o.metadata.generation.unwrap()
            )),
            watcher::Event::Delete(o) => seen.push(format!("delete {}", o.metadata.name.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    driver.abort();
    assert_eq!(
        seen,
        [
            "init early",
            "apply late 2 gen 1",
            "apply late 5 gen 2",
            "delete early"
        ]
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_a_410_expired_event() {
    let api = KubeApi::start().await.unwrap();
    let first = api.apply(blended_metric("prod", "a", "1"));
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.apply(blended_metric("prod", "b", "1"));
    api.compact();
    let client = client(&api).await;
    let bms: Api<BlendedMetric> = Api::namespaced(client, "prod");
    let mut stream = bms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_with_a_timeout_ends_with_a_bookmark_at_the_current_version() {
    let api = KubeApi::start().await.unwrap();
    let stored = api.apply(blended_metric("prod", "a", "1"));
    let rv = stored["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let client = client(&api).await;
    let bms: Api<BlendedMetric> = Api::namespaced(client, "prod");
    let params = WatchParams::default().timeout(1);
    let events: Vec<_> = bms
        .watch(&params, &rv)
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    match events[0].as_ref().unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn status_patches_are_recorded_and_an_unchanged_status_keeps_the_resource_version() {
    let api = KubeApi::start().await.unwrap();
    api.apply(blended_metric("prod", "a", "1"));
    let client = client(&api).await;
    let bms: Api<BlendedMetric> = Api::namespaced(client, "prod");
    let status = BlendedMetricStatus {
        metric_name: Some("blended-replicas".into()),
        value: Some("1".into()),
        observed_generation: Some(1),
        ..Default::default()
    };
    let patch = Patch::Merge(json!({"status": status}));
    let first = bms
        .patch_status("a", &PatchParams::default(), &patch)
        .await
        .unwrap();
    let again = bms
        .patch_status("a", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(first.status.as_ref(), Some(&status));
    assert_eq!(
        first.metadata.resource_version,
        again.metadata.resource_version
    );
    // The spec and generation are the main resource's, untouched by a status write.
    assert_eq!(again.metadata.generation, Some(1));
    let writes = api.status_writes();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0].content_type, "application/merge-patch+json");
    assert_eq!(writes[0].body["status"]["metricName"], "blended-replicas");

    let missing = bms
        .patch_status("gone", &PatchParams::default(), &patch)
        .await
        .unwrap_err();
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn a_status_put_with_a_stale_resource_version_is_a_409_conflict() {
    let api = KubeApi::start().await.unwrap();
    api.apply(blended_metric("prod", "a", "1"));
    let client = client(&api).await;
    let bms: Api<BlendedMetric> = Api::namespaced(client, "prod");
    let mut old = bms.get("a").await.unwrap();
    api.apply(blended_metric("prod", "a", "2"));
    old.status = Some(BlendedMetricStatus::default());
    let err = bms
        .replace_status("a", &PostParams::default(), &old)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[tokio::test]
async fn the_authentication_configmap_is_read_and_watched_by_field_selector() {
    let api = KubeApi::start().await.unwrap();
    api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {"requestheader-allowed-names": "[\"front-proxy-client\"]"},
    }));
    api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "other", "namespace": "kube-system"}, "data": {},
    }));
    let client = client(&api).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let cm = cms.get("extension-apiserver-authentication").await.unwrap();
    assert_eq!(
        cm.data.unwrap()["requestheader-allowed-names"],
        "[\"front-proxy-client\"]"
    );
    let config = watcher::Config::default()
        .fields("metadata.name=extension-apiserver-authentication")
        .any_semantic();
    let mut events = watcher(cms, config).boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(o) => names.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["extension-apiserver-authentication"]);
}

#[tokio::test]
async fn subject_access_reviews_are_answered_by_the_policy_and_recorded() {
    let api = KubeApi::start().await.unwrap();
    api.set_policy(|spec| {
        if spec["user"] == "hpa" && spec["resourceAttributes"]["verb"] == "list" {
            Decision::allow("RBAC: allowed by test")
        } else {
            Decision::no_opinion()
        }
    });
    let client = client(&api).await;
    let sars: Api<SubjectAccessReview> = Api::all(client);
    let ask = |user: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some("prod".into()),
                verb: Some("list".into()),
                group: Some("external.metrics.k8s.io".into()),
                resource: Some("blended-replicas".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let yes = sars
        .create(&PostParams::default(), &ask("hpa"))
        .await
        .unwrap();
    let no = sars
        .create(&PostParams::default(), &ask("eve"))
        .await
        .unwrap();
    assert!(yes.status.unwrap().allowed);
    assert!(!no.status.unwrap().allowed);
    let reviews = api.reviews();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[1]["spec"]["user"], "eve");
    assert_eq!(
        reviews[0]["spec"]["resourceAttributes"]["resource"],
        "blended-replicas"
    );

    let invalid = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("hpa".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = sars
        .create(&PostParams::default(), &invalid)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_apiservice_the_test_sets_is_served_cluster_scoped() {
    let api = KubeApi::start().await.unwrap();
    api.apply(json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
        "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                 "service": {"namespace": "keda", "name": "keda-operator-metrics-apiserver",
                             "port": 443},
                 "groupPriorityMinimum": 100, "versionPriority": 100},
    }));
    let client = client(&api).await;
    let services: Api<APIService> = Api::all(client);
    let owner = services
        .get("v1beta1.external.metrics.k8s.io")
        .await
        .unwrap();
    let service = owner.spec.unwrap().service.unwrap();
    assert_eq!(
        (service.namespace.unwrap(), service.name.unwrap()),
        (
            "keda".to_string(),
            "keda-operator-metrics-apiserver".to_string()
        )
    );
}
