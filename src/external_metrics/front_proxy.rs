//! The front-proxy trust (docs/metrics-adapter.md, "Who may read"): the CA the aggregator's client certificate
//! must chain to and the CNs allowed, read from `kube-system/extension-apiserver-authentication`
//! and followed as kube-apiserver rewrites it. The handshake and every request check the
//! certificate against the trust current at that moment, so a rotated CA is accepted and the
//! old one refused without a restart, even on a connection kept alive across the rotation.
//! With no usable trust (the ConfigMap or its key missing, a malformed CA) every client is
//! refused; nothing falls back to accepting all.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::task::JoinHandle;

pub(crate) const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub(crate) const CONFIGMAP_NAME: &str = "extension-apiserver-authentication";
pub(crate) const CA_KEY: &str = "requestheader-client-ca-file";
pub(crate) const ALLOWED_NAMES_KEY: &str = "requestheader-allowed-names";

/// Why no client is accepted right now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(
        "the front-proxy CA is not read yet (ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}); refusing every client"
    )]
    NotLoaded,
    #[error(
        "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} not found; refusing every client until it exists"
    )]
    MissingConfigMap,
    #[error(
        "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} has no key `{CA_KEY}` (is the aggregation layer enabled?); refusing every client"
    )]
    MissingCa,
    /// `what` names the ConfigMap and key, or the file.
    #[error("{what}: {reason}; refusing every client")]
    Invalid { what: String, reason: String },
}

struct Trust {
    verifier: Result<Arc<dyn ClientCertVerifier>, TrustError>,
    allowed_names: Vec<String>,
}

/// The current front-proxy trust, shared by the TLS acceptor and the request path.
pub struct FrontProxy {
    current: RwLock<Arc<Trust>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for FrontProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.current.read().clone();
        f.debug_struct("FrontProxy")
            .field("usable", &t.verifier.is_ok())
            .field("allowed_names", &t.allowed_names)
            .finish()
    }
}

impl FrontProxy {
    /// Refuses every client until [`FrontProxy::set`] or [`FrontProxy::apply`] succeeds.
    pub(crate) fn unloaded() -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(Trust {
                verifier: Err(TrustError::NotLoaded),
                allowed_names: Vec::new(),
            })),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        })
    }

    /// A fixed trust (`--external-metrics-client-ca`, tests); a bad bundle is an error here.
    pub fn fixed(ca_pem: &[u8], allowed_names: Vec<String>) -> Result<Arc<Self>, TrustError> {
        let fp = Self::unloaded();
        fp.set(ca_pem, allowed_names, "the client CA bundle")?;
        Ok(fp)
    }

    /// Trusts `ca_pem` (one or more PEM certificates) and `allowed_names` (empty: any CN the
    /// CA signed) from now on. On an error every client is refused until the next success.
    pub fn set(
        &self,
        ca_pem: &[u8],
        allowed_names: Vec<String>,
        source_name: &str,
    ) -> Result<(), TrustError> {
        let verifier = self.verifier_for(ca_pem, source_name);
        let result = verifier.as_ref().map(|_| ()).map_err(Clone::clone);
        *self.current.write() = Arc::new(Trust {
            verifier,
            allowed_names,
        });
        result
    }

    /// Refuses every client from now on, for `why`.
    pub fn refuse(&self, why: TrustError) {
        *self.current.write() = Arc::new(Trust {
            verifier: Err(why),
            allowed_names: Vec::new(),
        });
    }

    /// Follows the ConfigMap's latest state (`None`: it does not exist).
    pub(crate) fn apply(&self, configmap: Option<&ConfigMap>) -> Result<(), TrustError> {
        match parse_configmap(configmap) {
            Ok((pem, names)) => self.set(
                pem.as_bytes(),
                names,
                &format!("{} key `{CA_KEY}`", configmap_name()),
            ),
            Err(e) => {
                self.refuse(e.clone());
                Err(e)
            }
        }
    }

    /// Why clients are refused right now, if they are.
    pub(crate) fn problem(&self) -> Option<TrustError> {
        self.current.read().verifier.as_ref().err().cloned()
    }

    fn verifier_for(
        &self,
        ca_pem: &[u8],
        source_name: &str,
    ) -> Result<Arc<dyn ClientCertVerifier>, TrustError> {
        let invalid = |reason: String| TrustError::Invalid {
            what: source_name.to_string(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            let ca = ca.map_err(|e| invalid(format!("not a PEM certificate bundle ({e})")))?;
            roots
                .add(ca)
                .map_err(|e| invalid(format!("a certificate rustls cannot use ({e})")))?;
        }
        if roots.is_empty() {
            return Err(invalid("holds no PEM certificate".into()));
        }
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| invalid(e.to_string()))
    }

    /// The verifier to hand rustls: it asks this trust on every handshake.
    pub(crate) fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Current(self.clone()))
    }

    /// The connection's certificate chain verifies against the current CA (client-auth EKU
    /// included) and its CN is allowed. Checked per request: the handshake may predate a
    /// rotation.
    pub(crate) fn verified(&self, peer: &[CertificateDer<'static>]) -> bool {
        let trust = self.current.read().clone();
        let (Ok(verifier), Some((leaf, intermediates))) = (&trust.verifier, peer.split_first())
        else {
            return false;
        };
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
            && name_allowed(leaf, &trust.allowed_names)
    }

    /// Watches the ConfigMap and applies every change until the returned task is aborted.
    /// Watch errors keep the current trust (the watcher retries with backoff); a deleted
    /// ConfigMap or a bad key refuses clients.
    pub(crate) fn watch(self: &Arc<Self>, client: kube::Client) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, CONFIGMAP_NAMESPACE);
            let mut stream = watcher::watch_object(api, CONFIGMAP_NAME)
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(cm) => match me.apply(cm.as_ref()) {
                        Ok(()) => tracing::info!(
                            configmap = %configmap_name(),
                            "front-proxy client CA loaded"
                        ),
                        Err(error) => tracing::error!(%error, "front-proxy client CA unusable"),
                    },
                    Err(error) => match me.problem() {
                        // RBAC without extension-apiserver-authentication-reader lands here.
                        Some(refusing) => tracing::error!(
                            configmap = %configmap_name(),
                            %error,
                            %refusing,
                            "watching the front-proxy client CA failed"
                        ),
                        None => tracing::warn!(
                            configmap = %configmap_name(),
                            %error,
                            "watching the front-proxy client CA failed; keeping the current one"
                        ),
                    },
                }
            }
        })
    }
}

fn configmap_name() -> String {
    format!("ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}")
}

/// The CA bundle and allowed names in the ConfigMap kube-apiserver writes. A missing
/// allowed-names key means any CN, as in `k8s.io/apiserver` (the CA still has to sign it).
pub(crate) fn parse_configmap(cm: Option<&ConfigMap>) -> Result<(String, Vec<String>), TrustError> {
    let cm = cm.ok_or(TrustError::MissingConfigMap)?;
    let data = cm.data.as_ref();
    let get = |key: &str| data.and_then(|d| d.get(key)).map(String::as_str);
    let pem = get(CA_KEY)
        .filter(|p| !p.trim().is_empty())
        .ok_or(TrustError::MissingCa)?;
    let names = match get(ALLOWED_NAMES_KEY).map(str::trim) {
        None | Some("") => Vec::new(),
        Some(json) => {
            serde_json::from_str::<Vec<String>>(json).map_err(|e| TrustError::Invalid {
                what: format!("{} key `{ALLOWED_NAMES_KEY}`", configmap_name()),
                reason: format!("not a JSON array of strings ({e})"),
            })?
        }
    };
    Ok((pem.to_string(), names))
}

/// The client certificate's CN is in `allowed` (empty: any CN the CA signed).
fn name_allowed(leaf: &CertificateDer<'_>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| allowed.iter().any(|a| a == cn))
}

/// A rustls verifier that defers to the trust current at each handshake. It sends no CA
/// names in its CertificateRequest (they would change under rustls' borrow); Go's and
/// rustls' clients then send the one certificate they hold, which is what the aggregator has.
#[derive(Debug)]
struct Current(Arc<FrontProxy>);

impl ClientCertVerifier for Current {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.0.current.read().clone();
        match &trust.verifier {
            Ok(v) => v.verify_client_cert(end_entity, intermediates, now),
            Err(why) => Err(rustls::Error::General(why.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_missing_configmap_or_ca_key_is_an_error_naming_it() {
        let e = parse_configmap(None).unwrap_err();
        assert!(
            e.to_string()
                .contains("kube-system/extension-apiserver-authentication not found"),
            "{e}"
        );
        let e = parse_configmap(Some(&cm(&[("client-ca-file", "x")]))).unwrap_err();
        assert_eq!(e, TrustError::MissingCa);
        assert!(
            e.to_string().contains("requestheader-client-ca-file"),
            "{e}"
        );
    }

    #[test]
    fn allowed_names_are_a_json_array_and_absent_means_any_name() {
        let (_, names) = parse_configmap(Some(&cm(&[
            (CA_KEY, "pem"),
            (ALLOWED_NAMES_KEY, r#"["front-proxy-client","aggregator"]"#),
        ])))
        .unwrap();
        assert_eq!(names, ["front-proxy-client", "aggregator"]);
        let (_, names) = parse_configmap(Some(&cm(&[(CA_KEY, "pem")]))).unwrap();
        assert!(names.is_empty());
        let e = parse_configmap(Some(&cm(&[
            (CA_KEY, "pem"),
            (ALLOWED_NAMES_KEY, "front-proxy-client"),
        ])))
        .unwrap_err();
        assert!(
            e.to_string().contains("requestheader-allowed-names")
                && e.to_string().contains("JSON array"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_that_is_not_pem_refuses_every_client_instead_of_keeping_the_old_one() {
        assert_eq!(
            FrontProxy::unloaded().problem(),
            Some(TrustError::NotLoaded)
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let fp = FrontProxy::fixed(ca.pem().as_bytes(), vec![]).unwrap();
        assert_eq!(fp.problem(), None);
        let e = fp
            .apply(Some(&cm(&[(CA_KEY, "not a certificate")])))
            .unwrap_err();
        assert!(
            e.to_string().contains("requestheader-client-ca-file"),
            "{e}"
        );
        assert_eq!(fp.problem(), Some(e));
        assert!(!fp.verified(&[]));
    }
}
