//! `blend-scaler check` on a `BlendedMetric` file.

use std::process::Command;

fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bm.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .arg("check")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_accepts_the_example_blendedmetric() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/blendedmetric.yaml"
    ))
    .unwrap();
    let (ok, out) = check(&yaml);
    assert!(ok, "{out}");
    assert!(
        out.contains("BlendedMetric production/order-processor: ok"),
        "{out}"
    );
}

#[test]
fn check_refuses_a_from_env_key_in_a_blendedmetric_naming_it_and_not_its_value() {
    let yaml = r#"
apiVersion: blend-scaler.io/v1alpha1
kind: BlendedMetric
metadata: {name: orders, namespace: shop}
spec:
  metadata:
    queueName: orders
    namespace: bus
    connectionFromEnv: SB_CONNECTION_SECRET_NAME
    messageCount: 5
"#;
    let (ok, out) = check(yaml);
    assert!(!ok, "{out}");
    assert!(out.contains("BlendedMetric shop/orders: invalid"), "{out}");
    assert!(
        out.contains("`connectionFromEnv`: is not allowed in a BlendedMetric"),
        "{out}"
    );
    assert!(
        out.contains("`messageCount`: KEDA takes only strings"),
        "{out}"
    );
    assert!(!out.contains("SB_CONNECTION_SECRET_NAME"), "{out}");
}
