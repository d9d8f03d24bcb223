//! Where a credential may travel (docs/security.md, "Credentials go only to their own hosts").
//!
//! Trigger metadata is tenant input, so the host a read goes to is tenant input too. A
//! credential must never follow it: a connection string or named credential goes only to its
//! own `Endpoint`; the scaler's workload-identity token only to `https://<name>.<suffix>` of an
//! Azure cloud (or a private suffix the operator configured); a Prometheus credential only to
//! the servers configured for it; and nothing secret travels over plain http, except to
//! loopback when `serve --allow-loopback-upstreams` says so (local test doubles and demos).
//!
//! The checks run on the parsed plan, after [`metadata::parse`], because they need the
//! operator's settings, which metadata parsing does not see.

use std::collections::HashMap;
use std::net::IpAddr;

use url::{Host, Url};

use crate::allowlist::HostList;
use crate::metadata::{
    Credentials, MetadataError, MetadataErrors, Plan, PrometheusAuth, PrometheusPlan,
    ServiceBusAuth, ServiceBusPlan,
};

/// The Service Bus DNS suffixes of the Azure clouds (`cloud` metadata).
pub(crate) const PUBLIC_SERVICEBUS_SUFFIXES: [&str; 3] = [
    "servicebus.windows.net",
    "servicebus.usgovcloudapi.net",
    "servicebus.chinacloudapi.cn",
];

/// The operator's rules for upstream hosts, from `serve`'s flags.
#[derive(Clone, Debug, Default)]
pub struct HostRules {
    /// `--allow-loopback-upstreams`: loopback hosts may be reached, over plain http too.
    pub allow_loopback: bool,
    /// `--servicebus-private-suffix`: Service Bus DNS suffixes (private clouds) that the
    /// scaler's workload identity and credentials without an `Endpoint` may be sent to.
    pub private_suffixes: Vec<String>,
    /// `--allow-private-upstream`: hosts that may be reached on a non-public address
    /// (RFC 1918, CGNAT, link-local, unique-local; see [`crate::http::AddressClass`]).
    pub private_upstreams: HostList,
    /// The Kubernetes API service's addresses (`KUBERNETES_SERVICE_HOST`): connected to only
    /// for a host `private_upstreams` names without a wildcard.
    pub kubernetes_api: Vec<IpAddr>,
}

impl HostRules {
    /// Loopback upstreams allowed: the rules of local test doubles and `demo`.
    pub fn loopback() -> Self {
        Self {
            allow_loopback: true,
            ..Self::default()
        }
    }

    /// Refuses a plan that would send a credential anywhere but its own host.
    pub(crate) fn check(
        &self,
        metadata: &HashMap<String, String>,
        plan: &Plan,
        credentials: &Credentials,
    ) -> Result<(), MetadataErrors> {
        let mut errors = Vec::new();
        if let Some(sb) = &plan.servicebus {
            self.check_servicebus(metadata, sb, &mut errors);
        }
        if let Some(p) = &plan.prometheus {
            self.check_prometheus(metadata, p, credentials, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(MetadataErrors(errors))
        }
    }

    fn check_servicebus(
        &self,
        metadata: &HashMap<String, String>,
        sb: &ServiceBusPlan,
        errors: &mut Vec<MetadataError>,
    ) {
        // Offline (`check` of a file) the endpoint comes later, from a string KEDA resolves.
        if sb.endpoint.is_empty() {
            return;
        }
        // The key the tenant used to choose the host, so the error names it.
        let key = if metadata.contains_key("endpoint") {
            "endpoint"
        } else if metadata.get("cloud").map(String::as_str) == Some("Private") {
            "endpointSuffix"
        } else if metadata.contains_key("namespace") {
            "namespace"
        } else if metadata.contains_key("credential") {
            "credential"
        } else {
            "connectionFromEnv"
        };
        let mut refuse = |message: String| {
            errors.push(MetadataError {
                key: key.to_string(),
                message,
            })
        };
        let Ok(url) = Url::parse(&sb.endpoint) else {
            refuse("is not a URL".into());
            return;
        };
        // The test flag relaxes https and the Azure suffixes, never a credential's own host.
        let loopback = self.loopback_allowed(&url);
        if has_more_than_origin(&url) {
            refuse("must be a bare `https://host[:port]`: no user, path, query or fragment".into());
            return;
        }
        let own_endpoint = match &*sb.auth {
            ServiceBusAuth::ConnectionString(cs) => cs.endpoint.as_deref(),
            ServiceBusAuth::WorkloadIdentity => None,
            // Resolved later; nothing to compare yet.
            ServiceBusAuth::ResolvedByKeda { .. } | ServiceBusAuth::NamedCredential(_) => return,
        };
        match own_endpoint {
            Some(own) => {
                // The connection string's `Endpoint` wins; a private suffix naming another
                // host is refused rather than silently ignored.
                if let (Some("Private"), Some(ns), Some(suffix)) = (
                    metadata.get("cloud").map(String::as_str),
                    metadata.get("namespace"),
                    metadata.get("endpointSuffix"),
                ) {
                    let named = format!("https://{ns}.{}", suffix.trim_start_matches('.'));
                    let same = Url::parse(&named)
                        .ok()
                        .zip(Url::parse(own).ok())
                        .is_some_and(|(a, b)| a.origin() == b.origin());
                    if !same {
                        errors.push(MetadataError {
                            key: "endpointSuffix".into(),
                            message: "points away from the credential's own `Endpoint`: a \
                                      connection string or named credential is sent only to \
                                      its own host"
                                .into(),
                        });
                        return;
                    }
                }
                let same = Url::parse(own).is_ok_and(|own| own.origin() == url.origin());
                if !same {
                    refuse(
                        "points away from the credential's own `Endpoint`: a connection string \
                         or named credential is sent only to its own host"
                            .into(),
                    );
                    return;
                }
            }
            None => {
                if !loopback && !self.is_servicebus_host(&url) {
                    refuse(format!(
                        "must be `https://<namespace>.<suffix>` of an Azure cloud ({}) or a \
                         private suffix configured on the scaler: the scaler's token or a \
                         credential without `Endpoint` goes nowhere else",
                        PUBLIC_SERVICEBUS_SUFFIXES.join(", ")
                    ));
                    return;
                }
            }
        }
        if url.scheme() != "https" && !loopback {
            refuse("must use https: every Service Bus read carries a credential".into());
        }
    }

    fn check_prometheus(
        &self,
        metadata: &HashMap<String, String>,
        p: &PrometheusPlan,
        credentials: &Credentials,
        errors: &mut Vec<MetadataError>,
    ) {
        let Ok(url) = Url::parse(&p.server_address) else {
            return;
        };
        if let Some(name) = metadata.get("prometheusCredential") {
            let bound = credentials
                .prometheus_servers(name)
                .iter()
                .any(|s| Url::parse(s).is_ok_and(|s| s.origin() == url.origin()));
            if !bound {
                errors.push(MetadataError {
                    key: "prometheusCredential".into(),
                    message: "is not usable with this `serverAddress`: a scaler credential is \
                              sent only to the servers configured for it"
                        .into(),
                });
            }
        }
        let carries_secret = *p.auth != PrometheusAuth::default() || !p.custom_headers().is_empty();
        if carries_secret && url.scheme() != "https" && !self.loopback_allowed(&url) {
            errors.push(MetadataError {
                key: "serverAddress".into(),
                message: "must use https: credentials or `customHeaders` are attached".into(),
            });
        }
    }

    fn loopback_allowed(&self, url: &Url) -> bool {
        self.allow_loopback && is_loopback(url)
    }

    /// `<namespace>.<suffix>` on the default https port, for a known suffix.
    fn is_servicebus_host(&self, url: &Url) -> bool {
        let Some(Host::Domain(host)) = url.host() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let Some((name, suffix)) = host.split_once('.') else {
            return false;
        };
        let name_ok = !name.is_empty()
            && name.len() <= 50
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let suffix_ok = PUBLIC_SERVICEBUS_SUFFIXES.contains(&suffix)
            || self
                .private_suffixes
                .iter()
                .any(|s| s.trim_start_matches('.').eq_ignore_ascii_case(suffix));
        name_ok && suffix_ok && url.scheme() == "https" && url.port().is_none()
    }
}

/// True when `url` has anything beyond scheme, host and port.
fn has_more_than_origin(url: &Url) -> bool {
    !url.username().is_empty()
        || url.password().is_some()
        || !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
}

/// `localhost` or a loopback IP literal. What a name resolves to is checked when connecting.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{self, Origin, from_pairs};

    fn check(rules: &HostRules, creds: &Credentials, pairs: &[(&str, &str)]) -> Vec<String> {
        let m = from_pairs(pairs);
        let plan = metadata::parse(&m, Origin::Keda, creds).expect("the metadata parses");
        match rules.check(&m, &plan, creds) {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.key).collect(),
        }
    }

    const CS: &str = "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=k;\
                      SharedAccessKey=c2VjcmV0";

    #[test]
    fn an_endpoint_away_from_the_connection_strings_host_is_refused() {
        let rules = HostRules::default();
        let creds = Credentials::default();
        let base = [("queueName", "q"), ("connectionFromEnv", CS)];
        assert!(check(&rules, &creds, &base).is_empty());
        let mut away = base.to_vec();
        away.push(("endpoint", "https://attacker.example"));
        assert_eq!(check(&rules, &creds, &away), ["endpoint"]);
        let mut own = base.to_vec();
        own.push(("endpoint", "https://orders.servicebus.windows.net"));
        assert!(check(&rules, &creds, &own).is_empty());
    }

    #[test]
    fn a_named_credential_keeps_to_its_own_host() {
        let rules = HostRules::default();
        let creds = Credentials::from_vars([("BLEND_SCALER_CREDENTIAL_B".into(), CS.into())]);
        let away = [
            ("queueName", "q"),
            ("credential", "b"),
            ("endpoint", "https://x.servicebus.windows.net"),
        ];
        assert_eq!(check(&rules, &creds, &away), ["endpoint"]);
    }

    #[test]
    fn workload_identity_goes_only_to_a_service_bus_suffix_over_https() {
        let rules = HostRules::default();
        let creds = Credentials::default();
        let ok = [("queueName", "q"), ("namespace", "orders")];
        assert!(check(&rules, &creds, &ok).is_empty());
        for endpoint in [
            "https://127.0.0.1:18003",
            "http://orders.servicebus.windows.net",
            "https://orders.servicebus.windows.net:8443",
            "https://orders.servicebus.windows.net.evil.io",
            "https://a.b.servicebus.windows.net",
            "https://orders.servicebus.windows.net/latest/meta-data",
            "https://user@orders.servicebus.windows.net",
        ] {
            let pairs = [("queueName", "q"), ("endpoint", endpoint)];
            assert_eq!(check(&rules, &creds, &pairs), ["endpoint"], "{endpoint}");
        }
        let private = [
            ("queueName", "q"),
            ("namespace", "orders"),
            ("cloud", "Private"),
            ("endpointSuffix", "x@127.0.0.1:18003"),
        ];
        assert_eq!(check(&rules, &creds, &private), ["endpointSuffix"]);
        let private = [
            ("queueName", "q"),
            ("namespace", "orders"),
            ("cloud", "Private"),
            ("endpointSuffix", "sb.corp.example"),
        ];
        assert_eq!(check(&rules, &creds, &private), ["endpointSuffix"]);
        let configured = HostRules {
            private_suffixes: vec!["sb.corp.example".into()],
            ..HostRules::default()
        };
        assert!(check(&configured, &creds, &private).is_empty());
    }

    #[test]
    fn loopback_over_http_needs_the_operators_flag() {
        let creds = Credentials::default();
        let pairs = [("queueName", "q"), ("endpoint", "http://127.0.0.1:8080")];
        assert_eq!(check(&HostRules::default(), &creds, &pairs), ["endpoint"]);
        let test_flag = HostRules {
            allow_loopback: true,
            ..HostRules::default()
        };
        assert!(check(&test_flag, &creds, &pairs).is_empty());
        let elsewhere = [("queueName", "q"), ("endpoint", "http://10.0.0.1:8080")];
        assert_eq!(check(&test_flag, &creds, &elsewhere), ["endpoint"]);
        // The flag never lets a connection string leave its own host, loopback or not.
        let double =
            "Endpoint=http://127.0.0.1:8080/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0";
        let own = [("queueName", "q"), ("connectionFromEnv", double)];
        assert!(check(&test_flag, &creds, &own).is_empty());
        let sink = [
            ("queueName", "q"),
            ("connectionFromEnv", double),
            ("endpoint", "http://127.0.0.1:18003"),
        ];
        assert_eq!(check(&test_flag, &creds, &sink), ["endpoint"]);
    }

    #[test]
    fn a_prometheus_credential_goes_only_to_its_servers() {
        let creds = Credentials::from_vars([
            (
                "BLEND_SCALER_PROMETHEUS_CREDENTIAL_CENTRAL".into(),
                "bearer:tok".into(),
            ),
            (
                "BLEND_SCALER_PROMETHEUS_CREDENTIAL_CENTRAL_SERVERS".into(),
                "https://prom.monitoring:9090".into(),
            ),
        ]);
        let rules = HostRules::default();
        let at = |server: &str| {
            check(
                &rules,
                &creds,
                &[
                    ("serverAddress", server),
                    ("query", "up"),
                    ("threshold", "1"),
                    ("prometheusCredential", "central"),
                ],
            )
        };
        assert!(at("https://prom.monitoring:9090/prefix").is_empty());
        assert_eq!(at("https://attacker.example"), ["prometheusCredential"]);
        assert_eq!(at("https://prom.monitoring:9091"), ["prometheusCredential"]);
    }

    #[test]
    fn prometheus_secrets_and_headers_need_https() {
        let creds = Credentials::default();
        let rules = HostRules::default();
        let base = [
            ("serverAddress", "http://prom.monitoring:9090"),
            ("query", "up"),
            ("threshold", "1"),
        ];
        assert!(check(&rules, &creds, &base).is_empty());
        let mut headers = base.to_vec();
        headers.push(("customHeaders", "X-Scope-OrgID=a"));
        assert_eq!(check(&rules, &creds, &headers), ["serverAddress"]);
        let mut bearer = base.to_vec();
        bearer.extend([("authModes", "bearer"), ("bearerTokenFromEnv", "t")]);
        assert_eq!(check(&rules, &creds, &bearer), ["serverAddress"]);
    }
}
