//! Reading KEDA manifests from YAML: the documents of a file, their kind and name, and the
//! triggers of each ScaledObject or ScaledJob with their metadata as KEDA takes it (strings
//! only). `check`, `explain` and `simulate` all read files through this one walk.

use std::collections::HashMap;

use anyhow::Context;
use serde::Deserialize as _;
use serde_yaml::Value;

/// One YAML document of a manifest file.
#[derive(Clone, Debug)]
pub struct Document {
    /// `kind`, empty when absent.
    pub kind: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `metadata.name`, `(unnamed)` when absent.
    pub name: String,
    pub value: Value,
}

/// One entry of `spec.triggers`.
#[derive(Clone, Debug)]
pub struct Trigger<'d> {
    /// Its position in `spec.triggers`, from 1.
    pub position: usize,
    /// `type`, empty when absent.
    pub kind: &'d str,
    /// The metadata's string pairs.
    pub metadata: HashMap<String, String>,
    /// A problem for each value that is not a string (KEDA takes only strings).
    pub problems: Vec<String>,
}

/// Every document of `text`, in order. An unreadable document is an error naming it.
pub fn documents(text: &str) -> anyhow::Result<Vec<Document>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).with_context(|| format!("YAML document {}", i + 1))?;
        let meta = value.get("metadata");
        let field = |f: &str, default: &str| {
            meta.and_then(|m| m.get(f))
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        out.push(Document {
            kind: value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            namespace: field("namespace", "default"),
            name: field("name", "(unnamed)"),
            value,
        });
    }
    Ok(out)
}

impl Document {
    /// A ScaledObject or a ScaledJob.
    pub fn is_scaled(&self) -> bool {
        matches!(self.kind.as_str(), "ScaledObject" | "ScaledJob")
    }

    pub fn spec(&self) -> Option<&Value> {
        self.value.get("spec")
    }

    /// `metadata.annotations[key]`, when it is a string.
    #[cfg(any(test, feature = "simulate"))]
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    }

    /// `spec.triggers`, in order.
    pub fn triggers(&self) -> Vec<Trigger<'_>> {
        self.spec()
            .and_then(|s| s.get("triggers"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| {
                let (metadata, problems) = string_map(t.get("metadata"));
                Trigger {
                    position: i + 1,
                    kind: t.get("type").and_then(Value::as_str).unwrap_or_default(),
                    metadata,
                    problems,
                }
            })
            .collect()
    }
}

impl Trigger<'_> {
    /// blend-scaler's trigger types.
    pub fn is_external(&self) -> bool {
        matches!(self.kind, "external" | "external-push")
    }
}

/// A metadata mapping's string pairs, and a problem for each value that is not a string.
pub fn string_map(map: Option<&Value>) -> (HashMap<String, String>, Vec<String>) {
    let mut metadata = HashMap::new();
    let mut problems = Vec::new();
    if let Some(map) = map.and_then(Value::as_mapping) {
        for (k, v) in map {
            let Some(k) = k.as_str() else {
                problems.push("a metadata key is not a string".to_string());
                continue;
            };
            match v {
                Value::String(s) => {
                    metadata.insert(k.to_string(), s.clone());
                }
                _ => problems.push(format!(
                    "metadata key `{k}`: KEDA takes only strings; quote the value"
                )),
            }
        }
    }
    (metadata, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_give_kind_name_triggers_and_string_metadata() {
        let docs = documents(
            "kind: ConfigMap\n---\n\
             kind: ScaledObject\n\
             metadata: {name: w, namespace: prod, annotations: {a: \"1\"}}\n\
             spec:\n  triggers:\n  - type: cpu\n    metadata: {value: \"50\"}\n\
             \x20 - type: external\n    metadata: {queueName: q, messageCount: 10}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert!(!docs[0].is_scaled());
        let so = &docs[1];
        assert_eq!((so.namespace.as_str(), so.name.as_str()), ("prod", "w"));
        assert_eq!(so.annotation("a"), Some("1"));
        let triggers = so.triggers();
        assert_eq!(triggers.len(), 2);
        assert!(!triggers[0].is_external() && triggers[1].is_external());
        assert_eq!(triggers[1].position, 2);
        assert_eq!(triggers[1].metadata["queueName"], "q");
        assert!(triggers[1].problems[0].contains("`messageCount`"));
    }

    #[test]
    fn an_unreadable_document_is_named() {
        let e = documents("kind: A\n---\n: : :\n").unwrap_err();
        assert!(format!("{e:#}").contains("YAML document 2"), "{e:#}");
    }
}
