//! Certificates for the TLS tests, made fresh by rcgen: a CA, a server certificate and KEDA's
//! client certificate, all PEM, the KEDA-side gRPC channel that presents it, a server that
//! re-reads its certificate files quickly, and the certificate a fresh handshake sees.
//!
//! Include it from a test file with `#[path = "support/pki.rs"] mod pki;`.
#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blend_scaler::server::{self, Running, ServerConfig, TlsFiles};
use blend_scaler::transport::TransportLimits;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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

/// A loopback server whose gRPC port requires mTLS from `tls.crt`, `tls.key` and `ca.crt` in
/// `dir` (`--tls-client-ca`), re-read every 100 ms so a test sees a renewal within seconds;
/// `configure` sets the rest of the config first.
pub async fn start_reloading(dir: &Path, configure: impl FnOnce(&mut ServerConfig)) -> Running {
    let mut config = ServerConfig::loopback();
    configure(&mut config);
    config.tls = Some(TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: Some(dir.join("ca.crt")),
    });
    config.transport = TransportLimits {
        tls_reload_interval: Duration::from_millis(100),
        ..TransportLimits::default()
    };
    server::start(
        config,
        Default::default(),
        blend_scaler::metrics::Metrics::new(),
    )
    .await
    .unwrap()
}

/// The certificate the server on `addr` presents in a new handshake for `localhost`, trusting
/// the CAs in `ca_bundle` (PEM) and presenting `client`'s certificate when given.
pub async fn presented(
    addr: SocketAddr,
    ca_bundle: &str,
    client: Option<&Pki>,
) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(client) => config
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(client.client_cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(client.client_key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => config.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
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
