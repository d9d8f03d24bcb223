//! Certificates for the TLS tests, made fresh by rcgen: a CA, a server certificate and KEDA's
//! client certificate, all PEM, and the KEDA-side gRPC channel that presents it.
//!
//! Include it from a test file with `#[path = "support/pki.rs"] mod pki;`.
#![allow(dead_code)] // Each test binary uses its own part of this module.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// A CA (`ca {generation}`), a server certificate for `server_names` (`server {generation}`)
/// and a client certificate for KEDA (`keda-operator`), all signed by that CA.
pub fn pki(generation: &str, server_names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("ca {generation}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let names: Vec<String> = server_names.iter().map(ToString::to_string).collect();
    let mut server_params = CertificateParams::new(names).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, format!("server {generation}"));
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["keda-operator".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// A channel to the gRPC port on loopback as KEDA opens it: presenting `client`'s
/// certificate, trusting the CA in `ca` (PEM), checking the name `localhost`.
pub async fn keda_channel(
    port: u16,
    ca: &str,
    client: &Pki,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost")
                .identity(Identity::from_pem(&client.client_cert, &client.client_key)),
        )
        .unwrap()
        .connect()
        .await
}
