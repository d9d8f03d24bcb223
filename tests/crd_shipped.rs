//! The chart ships the `BlendedMetric` CRD generated from the Rust type, byte for byte.

const SHIPPED: &str = "charts/blend-scaler/files/blendedmetric-crd.yaml";

#[test]
fn the_shipped_crd_yaml_equals_the_one_generated_from_the_rust_type() {
    let path = format!("{}/{SHIPPED}", env!("CARGO_MANIFEST_DIR"));
    let generated = blend_scaler::crd::crd_yaml();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == generated,
        "{SHIPPED} is not what src/crd.rs generates; run `BLESS=1 cargo test --test crd_shipped`"
    );
}

#[test]
fn the_shipped_crd_is_valid_yaml_for_the_blendedmetrics_resource() {
    let path = format!("{}/{SHIPPED}", env!("CARGO_MANIFEST_DIR"));
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["kind"], "CustomResourceDefinition");
    assert_eq!(doc["metadata"]["name"], "blendedmetrics.blend-scaler.io");
    let schema = &doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert_eq!(
        schema["properties"]["spec"]["properties"]["metadata"]["additionalProperties"]["type"],
        "string"
    );
}
