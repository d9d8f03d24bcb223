//! The `BlendedMetric` custom resource (`blend-scaler.io/v1alpha1`, docs/metrics-adapter.md): trigger
//! metadata for the External Metrics API, parsed by the same [`metadata::parse`] as KEDA's.

use std::collections::{BTreeMap, HashMap};

use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::metadata::{MetadataError, MetadataErrors};

/// What one `BlendedMetric` asks for.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "blend-scaler.io",
    version = "v1alpha1",
    kind = "BlendedMetric",
    plural = "blendedmetrics",
    singular = "blendedmetric",
    shortname = "bm",
    namespaced,
    status = "BlendedMetricStatus",
    printcolumn = r#"{"name":"Metric","type":"string","jsonPath":".status.metricName"}"#,
    printcolumn = r#"{"name":"Value","type":"string","jsonPath":".status.value"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BlendedMetricSpec {
    /// Trigger metadata exactly as a KEDA `external` trigger's (string values), without
    /// `*FromEnv` keys: credentials are the scaler's named credentials or workload identity.
    pub metadata: BTreeMap<String, String>,
    /// Served while the decision is unavailable (a plain HPA has no KEDA fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    #[schemars(range(min = 0))]
    pub replicas: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlendedMetricStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per metadata key in error, when the metadata is invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<KeyError>,
    /// The name an HPA's `metric.name` uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_name: Option<String>,
    /// The last value served, a canonical Quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub(crate) message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) observed_generation: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyError {
    pub key: String,
    pub(crate) message: String,
}

/// `*FromEnv` keys: KEDA resolves them from the scale target's environment, and nothing does
/// that for a `BlendedMetric`, so each one is an error naming the key.
pub(crate) fn from_env_errors<'a>(
    keys: impl IntoIterator<Item = &'a String>,
) -> Vec<MetadataError> {
    keys.into_iter()
        .filter(|k| k.ends_with("FromEnv"))
        .map(|k| MetadataError {
            key: k.clone(),
            message: "is not allowed in a BlendedMetric: nothing resolves `*FromEnv` without \
                      KEDA; use a scaler-side credential (`credential`, `prometheusCredential`) \
                      or workload identity"
                .into(),
        })
        .collect()
}

impl BlendedMetricSpec {
    /// The metadata as the engine takes it (parsed there like KEDA's), or the
    /// [`from_env_errors`] when it has `*FromEnv` keys: the metric route and the status writer
    /// both serve and report through this.
    pub(crate) fn engine_metadata(&self) -> Result<HashMap<String, String>, MetadataErrors> {
        let from_env = from_env_errors(self.metadata.keys());
        if !from_env.is_empty() {
            return Err(MetadataErrors(from_env));
        }
        Ok(self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The CRD manifest, as shipped in the chart (`charts/blend-scaler/files/blendedmetric-crd.yaml`).
pub fn crd_yaml() -> String {
    let crd = BlendedMetric::crd();
    format!(
        "# Generated from src/crd.rs (`BlendedMetric`); a test checks this file equals it.\n{}",
        serde_yaml::to_string(&crd).expect("a CRD serialises")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{self, Credentials, Origin};

    fn spec(pairs: &[(&str, &str)]) -> BlendedMetricSpec {
        BlendedMetricSpec {
            metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fallback: None,
        }
    }

    #[test]
    fn a_from_env_key_is_refused_by_name_even_when_the_rest_is_valid() {
        let s = spec(&[
            ("serverAddress", "http://prometheus:9090"),
            ("query", "up"),
            ("threshold", "1"),
            ("bearerTokenFromEnv", "TOKEN"),
            ("authModes", "bearer"),
        ]);
        let errs = s.engine_metadata().unwrap_err();
        assert!(
            errs.0.iter().any(|e| e.key == "bearerTokenFromEnv"),
            "{errs}"
        );
        assert!(!errs.to_string().contains("TOKEN"), "{errs}");
    }

    #[test]
    fn valid_metadata_gives_the_same_plan_as_keda_metadata() {
        let s = spec(&[
            ("timezone", "UTC"),
            ("start", "0 8 * * *"),
            ("end", "0 20 * * *"),
            ("desiredReplicas", "4"),
        ]);
        let plan = metadata::parse(
            &s.engine_metadata().unwrap(),
            Origin::Keda,
            &Credentials::default(),
        )
        .unwrap();
        let trigger: HashMap<String, String> = s.metadata.clone().into_iter().collect();
        let keda = metadata::parse(&trigger, Origin::Keda, &Credentials::default()).unwrap();
        assert_eq!(plan.to_string(), keda.to_string());
    }

    #[test]
    fn the_crd_is_namespaced_in_the_blend_scaler_group_with_a_status_subresource() {
        let crd = BlendedMetric::crd();
        assert_eq!(crd.spec.group, "blend-scaler.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "BlendedMetric");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
    }
}
