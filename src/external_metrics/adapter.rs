//! The adapter as `serve` runs it: its flags, the Kubernetes client, the `BlendedMetric`
//! watcher and the HTTPS listener, sharing the gRPC scaler's engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::task::JoinHandle;

use super::apiservice::{self, ServiceName};
use super::authz::{CacheTtl, Delegated, SubjectAccessReviews};
use super::cluster::{self, ClusterOptions};
use super::front_proxy::FrontProxy;
use super::server::{self, Access, AdapterTls, Listener, Registry};
use crate::engine::Engine;

/// `serve`'s External Metrics API flags (docs/metrics-adapter.md, "Running it"; the chart renders these names).
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ExternalMetricsArgs {
    /// Serve `external.metrics.k8s.io/v1beta1` over HTTPS on this address (off when unset).
    #[arg(long, env = "BLEND_SCALER_EXTERNAL_METRICS_ADDR")]
    pub(crate) external_metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) listener: ListenerArgs,
}

/// The listener's flags: each means nothing without `--external-metrics-addr`, so clap
/// refuses any of them alone, naming that flag.
#[derive(Args, Clone, Debug, Default)]
#[group(requires = "external_metrics_addr", multiple = true)]
pub(crate) struct ListenerArgs {
    /// PEM serving certificate of the External Metrics listener.
    #[arg(long, env = "BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT")]
    pub(crate) external_metrics_tls_cert: Option<PathBuf>,
    /// PEM private key of the External Metrics listener.
    #[arg(long, env = "BLEND_SCALER_EXTERNAL_METRICS_TLS_KEY")]
    pub(crate) external_metrics_tls_key: Option<PathBuf>,
    /// The Service (`NAMESPACE/NAME`) an APIService must point at for the adapter to serve
    /// the group: anything else is another adapter's registration.
    #[arg(
        long,
        env = "BLEND_SCALER_EXTERNAL_METRICS_SERVICE",
        value_name = "NAMESPACE/NAME",
        value_parser = service_name
    )]
    pub(crate) external_metrics_service: Option<String>,
    /// PEM CA that front-proxy client certificates must chain to, instead of the
    /// `requestheader-client-ca-file` of `kube-system/extension-apiserver-authentication`.
    #[arg(
        long,
        env = "BLEND_SCALER_EXTERNAL_METRICS_CLIENT_CA",
        value_name = "FILE"
    )]
    pub(crate) external_metrics_client_ca: Option<PathBuf>,
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
    /// The Service the APIService must point at to be ours (`--external-metrics-service`).
    pub service: Option<ServiceName>,
    /// How often the APIService's owner is checked again.
    pub apiservice_recheck: std::time::Duration,
    pub authorization_cache: CacheTtl,
}

impl ExternalMetricsArgs {
    /// `None` when the adapter is off; an error naming the missing flag when it is half set.
    pub(crate) fn files(&self) -> anyhow::Result<Option<AdapterFiles>> {
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
                &self.listener.external_metrics_tls_cert,
                "external-metrics-tls-cert",
                "BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT",
            )?,
            key: need(
                &self.listener.external_metrics_tls_key,
                "external-metrics-tls-key",
                "BLEND_SCALER_EXTERNAL_METRICS_TLS_KEY",
            )?,
            client_ca: self.listener.external_metrics_client_ca.clone(),
            service: self
                .listener
                .external_metrics_service
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--external-metrics-service: {e}"))?,
            apiservice_recheck: apiservice::RECHECK,
            authorization_cache: CacheTtl::default(),
        }))
    }
}

/// The running adapter: the listener, the BlendedMetric watcher, and the tasks that follow
/// the front-proxy CA and the APIService's owner.
pub struct Adapter {
    pub listener: Listener,
    watchers: Vec<JoinHandle<()>>,
}

impl Adapter {
    pub fn abort(&self) {
        self.listener.abort();
        for w in &self.watchers {
            w.abort();
        }
    }
}

/// Starts watching `BlendedMetric`s with `client` and serving them on `files.addr`.
pub async fn start(
    files: AdapterFiles,
    client: kube::Client,
    engine: Arc<Engine>,
    options: ClusterOptions,
) -> anyhow::Result<Adapter> {
    let mut watchers = Vec::new();
    let front_proxy = match &files.client_ca {
        Some(ca) => {
            let pem = std::fs::read(ca).with_context(|| {
                format!("--external-metrics-client-ca: reading {}", ca.display())
            })?;
            // A CA given by file is trusted for any name it signs; the ConfigMap's
            // `requestheader-allowed-names` narrows it when read from the cluster.
            FrontProxy::fixed(&pem, Vec::new()).map_err(|e| {
                anyhow::anyhow!("--external-metrics-client-ca {}: {e}", ca.display())
            })?
        }
        None => {
            let fp = FrontProxy::unloaded();
            watchers.push(fp.watch(client.clone()));
            fp
        }
    };
    let ownership = apiservice::Guard::new(files.service.clone());
    watchers.push(ownership.watch(client.clone(), files.apiservice_recheck));
    let access = Access {
        front_proxy,
        authorizer: Arc::new(Delegated::new(
            SubjectAccessReviews::new(client.clone()),
            files.authorization_cache,
        )),
        ownership,
    };
    let registry = Arc::new(Registry::unlisted());
    let tls = AdapterTls {
        cert: files.cert,
        key: files.key,
    };
    let listener = server::start(files.addr, tls, access, engine.clone(), registry.clone()).await?;
    watchers.push(cluster::spawn(client, engine, registry, options));
    Ok(Adapter { listener, watchers })
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
            listener: ListenerArgs {
                external_metrics_tls_key: Some("/k".into()),
                ..Default::default()
            },
        };
        let e = args.files().unwrap_err().to_string();
        assert!(e.contains("--external-metrics-tls-cert"), "{e}");
        assert!(e.contains("BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT"), "{e}");
        assert!(ExternalMetricsArgs::default().files().unwrap().is_none());
    }
}
