//! Which Kubernetes namespaces may use what (docs/security.md, "Namespaces: who may use what").
//!
//! One scaler serves every ScaledObject of a cluster, so each ScaledObject author is a tenant.
//! Whatever the scaler holds on their behalf is authorised by the caller's Kubernetes namespace
//! (`ScaledObjectRef.namespace`, which KEDA fills in from the ScaledObject itself; see
//! docs/security.md for why the gRPC port must be reachable by KEDA only):
//!
//! - a named Service Bus credential (`credential`), through
//!   `BLEND_SCALER_CREDENTIAL_<NAME>_NAMESPACES`;
//! - a named Prometheus credential (`prometheusCredential`), through
//!   `BLEND_SCALER_PROMETHEUS_CREDENTIAL_<NAME>_NAMESPACES`;
//! - the scaler's own workload identity (a Service Bus trigger with no credential of its own),
//!   through `BLEND_SCALER_WORKLOAD_IDENTITY_NAMESPACES`: opt-in, no namespace by default;
//! - Prometheus servers, through `BLEND_SCALER_PROMETHEUS_SERVER_<NAME>` (the server's URL),
//!   `_NAMESPACES` and `_HEADERS` (headers the scaler sets itself, such as
//!   `X-Scope-OrgID={namespace}`, which a tenant cannot set or change).
//!
//! A name nobody configured and a name configured for other namespaces get the same answer,
//! so a tenant cannot probe which credentials exist.

use std::collections::{BTreeSet, HashMap};

use url::Url;

use crate::metadata::{Credentials, Plan, ServiceBusAuth, keys};
use crate::secret::Secret;

/// A refusal for the caller's namespace: `PERMISSION_DENIED`, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("metadata key `{key}`: {message}")]
pub struct Refused {
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

/// A set of Kubernetes namespaces: a comma-separated list, `*` for every namespace, empty for
/// none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Namespaces {
    every: bool,
    names: BTreeSet<String>,
}

impl Namespaces {
    pub(crate) fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                out.every = true;
            } else {
                out.names.insert(name.to_string());
            }
        }
        out
    }

    pub(crate) fn allows(&self, namespace: &str) -> bool {
        self.every || self.names.contains(namespace)
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.every && self.names.is_empty()
    }
}

/// A Prometheus server the operator configured: who may query it, and the headers the scaler
/// sends to it on the tenant's behalf.
#[derive(Clone, Debug)]
pub(crate) struct PrometheusServer {
    pub(crate) name: String,
    /// Scheme, host, port and an optional path prefix.
    pub(crate) url: Url,
    pub(crate) namespaces: Namespaces,
    /// Values may hold `{namespace}`, replaced by the caller's namespace.
    pub(crate) headers: Vec<(String, String)>,
}

impl PrometheusServer {
    /// True when `address` is this server: the same origin, and a path at or below its own.
    fn serves(&self, address: &Url) -> bool {
        if address.origin() != self.url.origin() {
            return false;
        }
        let own = self.url.path().trim_end_matches('/');
        let path = address.path().trim_end_matches('/');
        path == own || path.starts_with(&format!("{own}/"))
    }
}

pub(crate) const WORKLOAD_IDENTITY_NAMESPACES: &str = "BLEND_SCALER_WORKLOAD_IDENTITY_NAMESPACES";
pub(crate) const PROMETHEUS_SERVER_PREFIX: &str = "BLEND_SCALER_PROMETHEUS_SERVER_";
pub(crate) const NAMESPACES_SUFFIX: &str = "_NAMESPACES";
pub(crate) const HEADERS_SUFFIX: &str = "_HEADERS";

/// The operator's namespace rules, besides the per-credential ones kept with [`Credentials`].
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Namespaces whose Service Bus triggers may use the scaler pod's workload identity.
    pub(crate) workload_identity: Namespaces,
    /// Empty: any server the upstream allowlist admits, for every namespace, with no headers
    /// of the scaler's own (`serve` warns about it). Otherwise only these.
    pub(crate) prometheus_servers: Vec<PrometheusServer>,
}

impl Access {
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Reads [`WORKLOAD_IDENTITY_NAMESPACES`] and `BLEND_SCALER_PROMETHEUS_SERVER_<NAME>`
    /// with its `_NAMESPACES` and `_HEADERS` (`Name=value,Name2=value2`).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut access = Self::default();
        let mut urls = HashMap::new();
        let mut namespaces = HashMap::new();
        let mut headers = HashMap::new();
        for (name, value) in vars {
            if name == WORKLOAD_IDENTITY_NAMESPACES {
                access.workload_identity = Namespaces::parse(&value);
            } else if let Some(n) = name.strip_prefix(PROMETHEUS_SERVER_PREFIX) {
                if let Some(n) = n.strip_suffix(NAMESPACES_SUFFIX) {
                    namespaces.insert(n.to_string(), Namespaces::parse(&value));
                } else if let Some(n) = n.strip_suffix(HEADERS_SUFFIX) {
                    headers.insert(n.to_string(), parse_headers(&name, &value)?);
                } else {
                    urls.insert(n.to_string(), value);
                }
            }
        }
        for key in namespaces.keys().chain(headers.keys()) {
            if !urls.contains_key(key) {
                anyhow::bail!(
                    "{PROMETHEUS_SERVER_PREFIX}{key}{{_NAMESPACES,_HEADERS}} is set but \
                     {PROMETHEUS_SERVER_PREFIX}{key} (the server's URL) is not"
                );
            }
        }
        let mut names: Vec<_> = urls.keys().cloned().collect();
        names.sort();
        for name in names {
            let text = &urls[&name];
            let url = Url::parse(text.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .filter(|u| u.username().is_empty() && u.password().is_none())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{PROMETHEUS_SERVER_PREFIX}{name} is not an http(s) URL with a host \
                         and no user-info"
                    )
                })?;
            access.prometheus_servers.push(PrometheusServer {
                namespaces: namespaces.remove(&name).unwrap_or_default(),
                headers: headers.remove(&name).unwrap_or_default(),
                name,
                url,
            });
        }
        Ok(access)
    }

    /// Lines `serve` logs at startup: configurations that leave a door open, or shut.
    pub(crate) fn warnings(&self, credentials: &Credentials) -> Vec<String> {
        let mut out = Vec::new();
        if self.prometheus_servers.is_empty() {
            out.push(format!(
                "no {PROMETHEUS_SERVER_PREFIX}<NAME> is configured: every namespace may query \
                 every Prometheus server the upstream allowlist admits"
            ));
        }
        for s in &self.prometheus_servers {
            if s.namespaces.is_empty() {
                out.push(format!(
                    "Prometheus server {} has no {PROMETHEUS_SERVER_PREFIX}{}_NAMESPACES: no \
                     namespace may query it",
                    s.name, s.name
                ));
            }
        }
        for name in credentials.without_namespaces() {
            out.push(format!(
                "credential {name} has no `{name}_NAMESPACES`: no namespace may use it"
            ));
        }
        out
    }

    /// Before parsing: a named credential must be one the caller's namespace may use. Runs
    /// first so that an unknown name and a forbidden one are refused alike, before the parser
    /// could say which it is.
    pub(crate) fn check_names(
        &self,
        metadata: &HashMap<String, String>,
        namespace: &str,
        credentials: &Credentials,
    ) -> Result<(), Refused> {
        let given = |key: &str| {
            metadata
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        if let Some(name) = given(keys::CREDENTIAL)
            && !credentials.servicebus_usable_by(name, namespace)
        {
            return Err(unknown_credential(keys::CREDENTIAL, name));
        }
        if let Some(name) = given(keys::PROMETHEUS_CREDENTIAL)
            && !credentials.prometheus_usable_by(name, namespace)
        {
            return Err(unknown_credential(keys::PROMETHEUS_CREDENTIAL, name));
        }
        Ok(())
    }

    /// After parsing: the scaler's identity and the Prometheus server for this namespace, and
    /// the server's own headers added to the plan.
    pub(crate) fn apply(&self, plan: &mut Plan, namespace: &str) -> Result<(), Refused> {
        if let Some(sb) = &plan.servicebus
            && *sb.auth == ServiceBusAuth::WorkloadIdentity
            && !self.workload_identity.allows(namespace)
        {
            return Err(Refused {
                key: keys::CREDENTIAL,
                message: "this Kubernetes namespace may not use the scaler's workload identity: \
                          give `connectionFromEnv` or a `credential` this namespace may use"
                    .into(),
            });
        }
        let Some(p) = &mut plan.prometheus else {
            return Ok(());
        };
        if self.prometheus_servers.is_empty() {
            return Ok(());
        }
        let refused = || Refused {
            key: keys::SERVER_ADDRESS,
            message: "is not a Prometheus server this Kubernetes namespace may query".into(),
        };
        let address = Url::parse(&p.server_address).map_err(|_| refused())?;
        let server = self
            .prometheus_servers
            .iter()
            .find(|s| s.serves(&address) && s.namespaces.allows(namespace))
            .ok_or_else(refused)?;
        for (name, value) in &server.headers {
            if p.custom_headers()
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                return Err(Refused {
                    key: keys::CUSTOM_HEADERS,
                    message: format!("sets `{name}`, which the scaler sets itself for this server"),
                });
            }
            let value = value.replace("{namespace}", namespace);
            p.extras_mut()
                .custom_headers
                .push((name.clone(), Secret::shared(&value)));
        }
        Ok(())
    }
}

/// The one answer for a credential the caller may not use, whether or not it exists.
fn unknown_credential(key: &'static str, name: &str) -> Refused {
    let shown: String = name.chars().take(64).collect();
    Refused {
        key,
        message: format!("`{shown}` is not a credential this Kubernetes namespace may use"),
    }
}

fn parse_headers(variable: &str, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{variable}: `{part}` is not `Name=value`"))?;
        let name = name.trim();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            anyhow::bail!("{variable}: `{name}` is not a header name");
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{self, Origin, from_pairs};

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CS: &str = "Endpoint=sb://b.servicebus.windows.net/;SharedAccessKeyName=k;\
                      SharedAccessKey=c2VjcmV0";

    #[test]
    fn namespace_lists_read_names_and_the_star() {
        let n = Namespaces::parse(" production, payments ,");
        assert!(n.allows("production") && n.allows("payments"));
        assert!(!n.allows("staging"));
        assert!(Namespaces::parse("*").allows("anything"));
        assert!(Namespaces::parse("").is_empty());
    }

    #[test]
    fn an_unknown_and_a_forbidden_credential_get_the_same_refusal() {
        let creds = Credentials::from_vars(vars(&[
            ("BLEND_SCALER_CREDENTIAL_TENANT_B", CS),
            ("BLEND_SCALER_CREDENTIAL_TENANT_B_NAMESPACES", "tenant-b"),
        ]));
        let access = Access::default();
        let m = |name: &str| from_pairs(&[("queueName", "q"), ("credential", name)]);
        assert!(
            access
                .check_names(&m("tenant-b"), "tenant-b", &creds)
                .is_ok()
        );
        let forbidden = access
            .check_names(&m("tenant-b"), "tenant-a", &creds)
            .unwrap_err();
        let unknown = access
            .check_names(&m("tenant-c"), "tenant-a", &creds)
            .unwrap_err();
        assert_eq!(forbidden.key, "credential");
        assert_eq!(
            forbidden.message.replace("tenant-b", "X"),
            unknown.message.replace("tenant-c", "X")
        );
        assert!(!forbidden.message.contains("BLEND_SCALER"), "{forbidden}");
    }

    #[test]
    fn a_credential_without_a_namespace_list_serves_nobody() {
        let creds = Credentials::from_vars(vars(&[("BLEND_SCALER_CREDENTIAL_ORDERS", CS)]));
        let m = from_pairs(&[("queueName", "q"), ("credential", "orders")]);
        assert!(
            Access::default()
                .check_names(&m, "default", &creds)
                .is_err()
        );
        assert_eq!(
            Access::default().warnings(&creds).len(),
            2,
            "{:?}",
            Access::default().warnings(&creds)
        );
    }

    #[test]
    fn workload_identity_is_opt_in_per_namespace() {
        let m = from_pairs(&[("queueName", "q"), ("namespace", "orders")]);
        let plan = || metadata::parse(&m, Origin::Keda, &Credentials::default()).unwrap();
        let access =
            Access::from_vars(vars(&[(WORKLOAD_IDENTITY_NAMESPACES, "production")])).unwrap();
        assert!(access.apply(&mut plan(), "production").is_ok());
        let refused = access.apply(&mut plan(), "tenant-a").unwrap_err();
        assert_eq!(refused.key, "credential");
        assert!(Access::default().apply(&mut plan(), "production").is_err());
    }

    #[test]
    fn prometheus_servers_are_per_namespace_and_their_headers_are_the_scalers() {
        let access = Access::from_vars(vars(&[
            (
                "BLEND_SCALER_PROMETHEUS_SERVER_MIMIR",
                "http://mimir.monitoring:8080/prometheus",
            ),
            (
                "BLEND_SCALER_PROMETHEUS_SERVER_MIMIR_NAMESPACES",
                "payments,orders",
            ),
            (
                "BLEND_SCALER_PROMETHEUS_SERVER_MIMIR_HEADERS",
                "X-Scope-OrgID={namespace}",
            ),
        ]))
        .unwrap();
        let plan = |server: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("serverAddress", server),
                ("query", "up"),
                ("threshold", "1"),
            ];
            pairs.extend_from_slice(extra);
            metadata::parse(&from_pairs(&pairs), Origin::Keda, &Credentials::default()).unwrap()
        };
        let mut p = plan("http://mimir.monitoring:8080/prometheus", &[]);
        access.apply(&mut p, "payments").unwrap();
        let headers = p.prometheus.unwrap().custom_headers().to_vec();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].0, "X-Scope-OrgID");
        assert_eq!(headers[0].1.expose(), "payments");

        let refused = |server: &str, ns: &str, extra: &[(&str, &str)]| {
            access.apply(&mut plan(server, extra), ns).unwrap_err().key
        };
        let mimir = "http://mimir.monitoring:8080/prometheus";
        assert_eq!(refused(mimir, "tenant-a", &[]), "serverAddress");
        assert_eq!(
            refused("http://mimir.monitoring:8081/prometheus", "payments", &[]),
            "serverAddress"
        );
        assert_eq!(
            refused("http://mimir.monitoring:8080/other", "payments", &[]),
            "serverAddress"
        );
        assert_eq!(
            refused("http://prometheus.monitoring:9090", "payments", &[]),
            "serverAddress"
        );
        assert_eq!(
            refused(
                mimir,
                "payments",
                &[("customHeaders", "x-scope-orgid=orders")]
            ),
            "customHeaders"
        );
    }

    #[test]
    fn a_server_setting_without_its_url_is_a_startup_error() {
        let e = Access::from_vars(vars(&[(
            "BLEND_SCALER_PROMETHEUS_SERVER_X_NAMESPACES",
            "a",
        )]))
        .unwrap_err();
        assert!(
            e.to_string().contains("BLEND_SCALER_PROMETHEUS_SERVER_X"),
            "{e}"
        );
        let e = Access::from_vars(vars(&[(
            "BLEND_SCALER_PROMETHEUS_SERVER_X",
            "http://user:pw@prom",
        )]))
        .unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
