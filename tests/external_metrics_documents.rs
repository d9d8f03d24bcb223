//! Golden JSON for every document the External Metrics API serves (docs/metrics-adapter.md, "What the API answers").

use std::collections::BTreeMap;

use blend_scaler::engine::EngineError;
use blend_scaler::external_metrics::documents::{self, ExternalMetricValue};
use blend_scaler::external_metrics::{ApiError, selector};
use blend_scaler::signal::SignalKind;
use chrono::TimeZone;
use serde_json::Value;

fn golden(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/external_metrics/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn discovery_documents_match_what_custom_metrics_apiserver_serves() {
    assert_eq!(documents::api_resource_list(), golden("discovery"));
    assert_eq!(documents::api_group_list(), golden("apis"));
    assert_eq!(documents::api_group(), golden("api_group"));
}

#[test]
fn discovery_never_lists_zero_resources() {
    let list = documents::api_resource_list();
    assert_eq!(list["resources"].as_array().unwrap().len(), 1);
}

#[test]
fn the_value_list_has_one_item_an_object_for_labels_and_no_window() {
    let at = chrono::Utc
        .with_ymd_and_hms(2026, 12, 2, 19, 41, 50)
        .unwrap()
        + chrono::Duration::milliseconds(731);
    let labels = BTreeMap::from([(
        "blend-scaler.io/name".to_string(),
        "order-processor".to_string(),
    )]);
    let item = ExternalMetricValue::new("blended-replicas", labels, at, "7".into());
    let list = documents::value_list(&item);
    assert_eq!(list, golden("value_list"));
    assert!(list["items"][0].get("window").is_none());

    let empty = ExternalMetricValue::new("m", BTreeMap::new(), at, "0".into());
    let text = serde_json::to_string(&documents::value_list(&empty)).unwrap();
    assert!(text.contains(r#""metricLabels":{}"#), "{text}");
}

#[test]
fn each_error_is_the_status_document_kubectl_prints() {
    let cases: Vec<(ApiError, u16, &str)> = vec![
        (
            ApiError::NotFound {
                metric: "foo".into(),
            },
            404,
            "status_404",
        ),
        (
            ApiError::MissingReference("app=web".into()),
            400,
            "status_400",
        ),
        (ApiError::Unauthorized, 401, "status_401"),
        (
            ApiError::Forbidden {
                user: "alice".into(),
                metric: "blended-replicas".into(),
                namespace: "production".into(),
            },
            403,
            "status_403",
        ),
        (
            ApiError::Engine {
                namespace: "production".into(),
                name: "order-processor".into(),
                source: EngineError::Unavailable {
                    signal: SignalKind::Prometheus,
                    reason: "no value yet: the first read has not finished".into(),
                },
            },
            503,
            "status_503",
        ),
    ];
    for (error, code, file) in cases {
        let (got_code, body) = error.status();
        assert_eq!(got_code, code, "{file}");
        assert_eq!(body, golden(file), "{file}");
    }
}

#[test]
fn a_malformed_selector_is_a_bad_request() {
    let e = ApiError::from(selector::parse("a in (b").unwrap_err());
    let (code, body) = e.status();
    assert_eq!(code, 400);
    assert_eq!(body["reason"], "BadRequest");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid labelSelector")
    );
}

#[test]
fn a_name_missing_before_the_first_list_is_503_try_again_not_404() {
    let (code, body) = ApiError::NotListed {
        metric: "blended-replicas".into(),
    }
    .status();
    assert_eq!(code, 503);
    assert_eq!(body["reason"], "ServiceUnavailable");
    assert!(
        body["message"].as_str().unwrap().contains("not listed"),
        "{body}"
    );
}
