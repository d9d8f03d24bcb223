//! A real kube client for the test kit's Kubernetes API double.
//!
//! Include it from a test file with `#[path = "support/kube.rs"] mod kube_support;`.

use kube::config::{KubeConfigOptions, Kubeconfig};

/// A client for the kubeconfig YAML `KubeApi::kubeconfig` writes. It takes the text, not the
/// double, so a test can keep a client to an API server that has since gone.
pub async fn client(kubeconfig_yaml: &str) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig_yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}
