//! Server TLS material from PEM files, re-read when the files change. cert-manager's
//! csi-driver and kubelet's Secret volumes renew certificates in place (an atomic swap of the
//! `..data` symlink), so a server that read them once would serve an expired certificate
//! until restarted. New handshakes use the newest material that parsed; established
//! connections keep the session they have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// PEM files for TLS on gRPC; with `client_ca`, client certificates are required (mTLS).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Where the CA that client certificates must chain to comes from.
#[derive(Clone, Debug)]
pub enum ClientCa {
    /// No client certificate asked for.
    None,
    /// A PEM bundle file, re-read with the certificate.
    File(PathBuf),
    /// A verifier the caller keeps current (the External Metrics front-proxy CA, which
    /// follows a ConfigMap rather than a file).
    Verifier(Arc<dyn rustls::server::danger::ClientCertVerifier>),
}

/// The files' contents as last read, to tell a change from a poll that found nothing new.
#[derive(PartialEq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// A rustls server configuration that follows its files. See the module docs.
pub struct ReloadingTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: ClientCa,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<rustls::ServerConfig>>,
    loaded: Mutex<Material>,
}

impl ReloadingTls {
    /// Reads and checks the material once; a problem here stops the server from starting.
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: ClientCa,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Arc<Self>> {
        let material = read(cert, key, &client_ca)?;
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = build(&material, &client_ca, &alpn, cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca,
            alpn,
            current: RwLock::new(Arc::new(config)),
            loaded: Mutex::new(material),
        }))
    }

    /// The gRPC listener's material: h2 only, as tonic's own TLS setup offers.
    pub fn for_grpc(files: &TlsFiles) -> anyhow::Result<Arc<Self>> {
        let client_ca = files
            .client_ca
            .clone()
            .map_or(ClientCa::None, ClientCa::File);
        Self::load(&files.cert, &files.key, client_ca, &[b"h2"])
    }

    /// The HTTP listener's material (`serve --http-tls`): the gRPC certificate, h2 and
    /// http/1.1, and no client certificate asked for, whatever `files.client_ca` says:
    /// Prometheus scrapes and kubelet probes present none (docs/operations.md, "TLS on the
    /// HTTP port").
    pub fn for_http(files: &TlsFiles) -> anyhow::Result<Arc<Self>> {
        Self::load(
            &files.cert,
            &files.key,
            ClientCa::None,
            &[b"h2", b"http/1.1"],
        )
    }

    /// An acceptor with the newest material, for one handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().clone())
    }

    /// Re-reads the files; `Ok(true)` when new material is now served. On an error (a file
    /// half-written by a non-atomic writer, a key that does not match the certificate) the
    /// previous material stays.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let material = read(&self.cert, &self.key, &self.client_ca)?;
        let mut loaded = self.loaded.lock();
        if *loaded == material {
            return Ok(false);
        }
        let config = build(
            &material,
            &self.client_ca,
            &self.alpn,
            &self.cert,
            &self.key,
        )?;
        *self.current.write() = Arc::new(config);
        *loaded = material;
        Ok(true)
    }

    /// Checks the files every `interval` until the last holder of `tls` drops it.
    pub fn watch(tls: &Arc<Self>, interval: Duration) {
        let weak: Weak<Self> = Arc::downgrade(tls);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(tls) = weak.upgrade() else { break };
                let cert = tls.cert.clone();
                match tokio::task::spawn_blocking(move || tls.reload()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(cert = %cert.display(), "TLS material reloaded");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(error)) => tracing::warn!(
                        cert = %cert.display(),
                        error = format!("{error:#}"),
                        "TLS material not reloaded; still serving the previous certificate"
                    ),
                    Err(error) => tracing::warn!(%error, "TLS reload task failed"),
                }
            }
        });
    }
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read(cert: &Path, key: &Path, client_ca: &ClientCa) -> anyhow::Result<Material> {
    Ok(Material {
        cert: read_file(cert)?,
        key: read_file(key)?,
        client_ca: match client_ca {
            ClientCa::None | ClientCa::Verifier(_) => None,
            ClientCa::File(path) => Some(read_file(path)?),
        },
    })
}

fn build(
    material: &Material,
    client_ca: &ClientCa,
    alpn: &[Vec<u8>],
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&material.cert)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key)
        .with_context(|| format!("parsing the private key in {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&material.client_ca, client_ca) {
        (_, ClientCa::Verifier(verifier)) => builder.with_client_cert_verifier(verifier.clone()),
        (None, _) => builder.with_no_client_auth(),
        (Some(pem), _) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(ca.context("parsing the client CA bundle")?)
                    .context("adding a client CA certificate")?;
            }
            // No client certificate, no TLS session: there is no anonymous path.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("the client CA bundle")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "using the certificate in {} with the key in {}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}
