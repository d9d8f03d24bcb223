//! The JSON documents of `external.metrics.k8s.io/v1beta1`: discovery, the value list and
//! `metav1.Status`, shaped as apimachinery serialises them.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};

pub(crate) const GROUP: &str = "external.metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
pub(crate) const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
/// The one placeholder resource discovery lists: the HPA asks for metrics by name without
/// listing them, and an empty list breaks `kubectl api-resources`.
pub(crate) const PLACEHOLDER_RESOURCE: &str = "externalmetrics";

/// `GET /apis/external.metrics.k8s.io/v1beta1`.
pub fn api_resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [{
            "name": PLACEHOLDER_RESOURCE,
            "singularName": "",
            "namespaced": true,
            "kind": "ExternalMetricValueList",
            "verbs": ["get"],
        }],
    })
}

fn group() -> Value {
    let version = json!({"groupVersion": GROUP_VERSION, "version": VERSION});
    json!({
        "name": GROUP,
        "versions": [version.clone()],
        "preferredVersion": version,
    })
}

/// `GET /apis`: the legacy `APIGroupList` (the aggregator and kubectl fall back to it).
pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]})
}

/// `GET /apis/external.metrics.k8s.io`.
pub fn api_group() -> Value {
    let mut g = group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// One `ExternalMetricValue`; `metricLabels` is always an object, never null.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    pub(crate) metric_name: String,
    pub(crate) metric_labels: BTreeMap<String, String>,
    /// RFC 3339, UTC, whole seconds (apimachinery's `metav1.Time`).
    pub(crate) timestamp: String,
    /// A canonical Quantity.
    pub(crate) value: String,
}

impl ExternalMetricValue {
    pub fn new(
        metric_name: &str,
        labels: BTreeMap<String, String>,
        at: DateTime<Utc>,
        value: String,
    ) -> Self {
        Self {
            metric_name: metric_name.to_string(),
            metric_labels: labels,
            timestamp: at.to_rfc3339_opts(SecondsFormat::Secs, true),
            value,
        }
    }
}

/// The answer to a metric read: always exactly one item (zero is an error for the HPA).
pub fn value_list(item: &ExternalMetricValue) -> Value {
    json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": [item],
    })
}

/// A `metav1.Status` failure.
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}
