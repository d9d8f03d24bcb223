//! The adapter as `serve` runs it: its flags, the Kubernetes client, the `BlendedMetric`
//! watcher and the HTTPS listener, sharing the gRPC scaler's engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use tokio::task::JoinHandle;

use super::cluster::{self, ClusterOptions};
use super::server::{self, AdapterTls, Listener, Registry};
use crate::engine::Engine;

/// `serve`'s External Metrics API flags (SPEC section 8; the chart renders these names).
#[derive(Args, Clone, Debug, Default)]
pub struct ExternalMetricsArgs {
    /// Serve `external.metrics.k8s.io/v1beta1` over HTTPS on this address (off when unset).
    #[arg(long, env = "BLEND_SCALER_EXTERNAL_METRICS_ADDR")]
    pub external_metrics_addr: Option<SocketAddr>,
    /// PEM serving certificate of the External Metrics listener.
    #[arg(
        long,
        env = "BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT",
        requires = "external_metrics_addr"
    )]
    pub external_metrics_tls_cert: Option<PathBuf>,
    /// PEM private key of the External Metrics listener.
    #[arg(
        long,
        env = "BLEND_SCALER_EXTERNAL_METRICS_TLS_KEY",
        requires = "external_metrics_addr"
    )]
    pub external_metrics_tls_key: Option<PathBuf>,
    /// The Service (`NAMESPACE/NAME`) an APIService must point at for the adapter to serve
    /// the group: anything else is another adapter's registration.
    #[arg(
        long,
        env = "BLEND_SCALER_EXTERNAL_METRICS_SERVICE",
        value_name = "NAMESPACE/NAME",
        value_parser = service_name,
        requires = "external_metrics_addr"
    )]
    pub external_metrics_service: Option<String>,
    /// PEM CA that front-proxy client certificates must chain to, instead of the
    /// `requestheader-client-ca-file` of `kube-system/extension-apiserver-authentication`.
    #[arg(
        long,
        env = "BLEND_SCALER_EXTERNAL_METRICS_CLIENT_CA",
        value_name = "FILE",
        requires = "external_metrics_addr"
    )]
    pub external_metrics_client_ca: Option<PathBuf>,
}

/// `NAMESPACE/NAME`, each a DNS label as Kubernetes names Services.
fn service_name(text: &str) -> Result<String, String> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    match text.split_once('/') {
        Some((ns, name)) if label(ns) && label(name) => Ok(text.to_string()),
        _ => Err(format!(
            "`{text}` is not NAMESPACE/NAME (two DNS labels: lower-case letters, digits, `-`)"
        )),
    }
}

/// The listener's files, once the flags are known to be complete.
#[derive(Clone, Debug)]
pub struct AdapterFiles {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ExternalMetricsArgs {
    /// `None` when the adapter is off; an error naming the missing flag when it is half set.
    pub fn files(&self) -> anyhow::Result<Option<AdapterFiles>> {
        let Some(addr) = self.external_metrics_addr else {
            return Ok(None);
        };
        let need = |value: &Option<PathBuf>, flag: &str, env: &str| {
            value.clone().with_context(|| {
                format!(
                    "--external-metrics-addr needs --{flag} ({env}): the listener is HTTPS only"
                )
            })
        };
        Ok(Some(AdapterFiles {
            addr,
            cert: need(
                &self.external_metrics_tls_cert,
                "external-metrics-tls-cert",
                "BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT",
            )?,
            key: need(
                &self.external_metrics_tls_key,
                "external-metrics-tls-key",
                "BLEND_SCALER_EXTERNAL_METRICS_TLS_KEY",
            )?,
            client_ca: self.external_metrics_client_ca.clone(),
        }))
    }
}

/// The running adapter: the listener and the watcher.
pub struct Adapter {
    pub listener: Listener,
    watcher: JoinHandle<()>,
}

impl Adapter {
    pub fn abort(&self) {
        self.listener.abort();
        self.watcher.abort();
    }
}

/// Starts watching `BlendedMetric`s with `client` and serving them on `files.addr`.
pub async fn start(
    files: AdapterFiles,
    client: kube::Client,
    engine: Arc<Engine>,
    options: ClusterOptions,
) -> anyhow::Result<Adapter> {
    let Some(ca) = &files.client_ca else {
        bail!(
            "--external-metrics-addr needs --external-metrics-client-ca \
             (BLEND_SCALER_EXTERNAL_METRICS_CLIENT_CA): reading the front-proxy CA from \
             kube-system/extension-apiserver-authentication is not built yet"
        );
    };
    let client_ca_pem = std::fs::read(ca)
        .with_context(|| format!("--external-metrics-client-ca: reading {}", ca.display()))?;
    let registry = Arc::new(Registry::default());
    let tls = AdapterTls {
        cert: files.cert,
        key: files.key,
        client_ca_pem,
        // A CA given by file is trusted for any name it signs; the ConfigMap's
        // `requestheader-allowed-names` narrows it when read from the cluster.
        allowed_names: Vec::new(),
    };
    let listener = server::start(files.addr, tls, engine.clone(), registry.clone()).await?;
    let watcher = cluster::spawn(client, engine, registry, options);
    Ok(Adapter { listener, watcher })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_must_be_namespace_slash_name() {
        assert!(service_name("blend-scaler/blend-scaler-adapter").is_ok());
        for bad in ["blend-scaler", "/x", "a/", "A/b", "a/b/c", "a/-b"] {
            let e = service_name(bad).unwrap_err();
            assert!(e.contains("NAMESPACE/NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_address_without_its_certificate_names_the_missing_flag() {
        let args = ExternalMetricsArgs {
            external_metrics_addr: Some(([127, 0, 0, 1], 6443).into()),
            external_metrics_tls_key: Some("/k".into()),
            ..Default::default()
        };
        let e = args.files().unwrap_err().to_string();
        assert!(e.contains("--external-metrics-tls-cert"), "{e}");
        assert!(e.contains("BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT"), "{e}");
        assert!(ExternalMetricsArgs::default().files().unwrap().is_none());
    }
}
