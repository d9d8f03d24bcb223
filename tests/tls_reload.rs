//! Certificates renewed in place under a running server (docs/security.md, "TLS material reloads without a restart"): the files are laid
//! out and swapped the way kubelet and cert-manager's csi-driver do it, a `..data` symlink
//! replaced atomically, and the server is watched through fresh handshakes.

#[path = "support/keda.rs"]
mod keda;
#[path = "support/pki.rs"]
mod pki;

use std::path::Path;
use std::time::{Duration, Instant};

use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::server::Running;
use pki::{Pki, keda_channel, pki, start_reloading};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Writes `pki` into a fresh timestamped directory and points `..data` at it in one rename,
/// as kubelet's AtomicWriter does; `tls.crt`, `tls.key`, `ca.crt` are fixed symlinks into
/// `..data`.
fn publish(dir: &Path, generation: &str, pki: &Pki) {
    let versioned = dir.join(format!("..{generation}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), &pki.server_cert).unwrap();
    std::fs::write(versioned.join("tls.key"), &pki.server_key).unwrap();
    std::fs::write(versioned.join("ca.crt"), &pki.ca).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

/// gRPC with mTLS only, certificates re-read every 100 ms.
async fn scaler(dir: &Path) -> Running {
    start_reloading(dir, |config| config.http_addr = None).await
}

/// The certificate the gRPC port presents in a new handshake (trusting any of `cas`).
async fn presented(running: &Running, cas: &[&Pki], client: &Pki) -> CertificateDer<'static> {
    let bundle: String = cas.iter().map(|pki| pki.ca.as_str()).collect();
    pki::presented(running.grpc_addr, &bundle, Some(client)).await
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn cron_object() -> ScaledObjectRef {
    keda::object(
        "production",
        "orders",
        keda::metadata([
            ("start", "0 8 * * *"),
            ("end", "0 20 * * *"),
            ("desiredReplicas", "2"),
        ]),
    )
}

/// Whether a fresh connection with `client`'s certificate gets an answer from a server
/// whose certificate chains to `ca`.
async fn admitted(running: &Running, client: &Pki, ca: &str) -> bool {
    match keda_channel(running.grpc_addr.port(), ca, client).await {
        Err(_) => false,
        Ok(ch) => ExternalScalerClient::new(ch)
            .is_active(cron_object())
            .await
            .is_ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_and_client_ca_renewed_in_place_serve_new_handshakes_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (pki("old", &["localhost"]), pki("new", &["localhost"]));
    publish(dir.path(), "2026_12_03_old", &old);
    let running = scaler(dir.path()).await;

    // KEDA's long-lived connection, opened with the old material.
    let mut established = ExternalScalerClient::new(
        keda_channel(running.grpc_addr.port(), &old.ca, &old)
            .await
            .unwrap(),
    );
    established.is_active(cron_object()).await.unwrap();
    assert_eq!(
        presented(&running, &[&old, &new], &old).await,
        der(&old.server_cert)
    );

    publish(dir.path(), "2026_12_03_new", &new);
    let deadline = Instant::now() + Duration::from_secs(5);
    while presented(&running, &[&old, &new], &new).await != der(&new.server_cert) {
        assert!(
            Instant::now() < deadline,
            "a fresh handshake still presents the old certificate 5 s after the swap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // New handshakes: the new client CA admits the new client certificate, refuses the old.
    assert!(
        admitted(&running, &new, &new.ca).await,
        "new client refused"
    );
    assert!(
        !admitted(&running, &old, &new.ca).await,
        "a client certificate of the replaced CA is still admitted"
    );
    // The connection made before the swap carries on.
    established.is_active(cron_object()).await.unwrap();
    drop(established);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_whose_key_does_not_fit_keeps_the_previous_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (pki("old", &["localhost"]), pki("new", &["localhost"]));
    publish(dir.path(), "2026_12_03_old", &old);
    let running = scaler(dir.path()).await;

    // A writer that swapped the certificate but kept the old key.
    let broken = Pki {
        server_key: old.server_key.clone(),
        ca: old.ca.clone(),
        server_cert: new.server_cert.clone(),
        client_cert: String::new(),
        client_key: String::new(),
    };
    publish(dir.path(), "2026_12_03_broken", &broken);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        presented(&running, &[&old, &new], &old).await,
        der(&old.server_cert),
        "the mismatched pair must not be served"
    );
    assert!(admitted(&running, &old, &old.ca).await);

    // The next consistent renewal is picked up.
    publish(dir.path(), "2026_12_03_new", &new);
    let deadline = Instant::now() + Duration::from_secs(5);
    while presented(&running, &[&old, &new], &new).await != der(&new.server_cert) {
        assert!(
            Instant::now() < deadline,
            "the fixed renewal was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
}
