//! rcgen CAs and leaves for the External Metrics listener's tests.
//!
//! Include it from a test file with `#[path = "support/certs.rs"] mod certs;`.
#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf signed by `ca`: (certificate PEM, key PEM).
pub fn leaf(ca: &Ca, cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> (String, String) {
    leaf_in_groups(ca, cn, &[], sans, eku)
}

/// A leaf whose subject also names `orgs`: Kubernetes reads each O of a client certificate
/// as one of the user's groups.
pub fn leaf_in_groups(
    ca: &Ca,
    cn: &str,
    orgs: &[&str],
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        p.distinguished_name.push(DnType::OrganizationName, *o);
    }
    p.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A fresh serving CA and the adapter's serving certificate from it for `names`, written as
/// `tls.crt` and `tls.key` in `dir`.
pub fn serving_certificate(dir: &Path, names: &[&str]) -> Ca {
    let serving = ca("serving-ca");
    let (cert, key) = leaf(
        &serving,
        "blend-scaler-adapter",
        names,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    serving
}

/// A front-proxy client certificate with `cn` from `ca`, as the aggregator holds one.
pub fn front_proxy_client(ca: &Ca, cn: &str) -> (String, String) {
    leaf(ca, cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
}

/// An HTTPS client that trusts only `serving_ca_pem`, presenting `identity` (certificate PEM,
/// key PEM) when given.
pub fn https_client(serving_ca_pem: &str, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(serving_ca_pem.as_bytes()).unwrap()])
        .timeout(std::time::Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}
