//! The injector's serving certificate: read from PEM files, and read again
//! when they change (cert-manager renews the Secret; the kubelet swaps the
//! mounted files). A new pair that does not load, or whose key does not match
//! its certificate, keeps the one in use, with a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Why a certificate pair does not load: the certificate, or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// Builds a rustls server configuration from a PEM certificate chain and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1) that belongs to it.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Cert("no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(format!("no PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Key(format!("not the key of the certificate: {e}")))?;
    // The API server speaks HTTP/2 to webhooks when offered, else HTTP/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The certificate in use, and the files it came from.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
    /// The contents last looked at, loaded or not: a bad pair is reported once.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Certificates {
    /// Loads the pair, or says why it cannot.
    pub fn load(cert: &Path, key: &Path) -> Result<Certificates, TlsError> {
        let c = read(cert).map_err(TlsError::Cert)?;
        let k = read(key).map_err(TlsError::Key)?;
        let cfg = server_config(&c, &k)?;
        Ok(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(cfg),
            seen: Mutex::new((c, k)),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again; swaps in the new pair when it differs from the
    /// last one seen and loads. Returns whether the certificate changed.
    pub fn reload(&self) -> bool {
        let pair = read(&self.cert).and_then(|c| Ok((c, read(&self.key)?)));
        let (c, k) = match pair {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "keeping the current TLS certificate");
                return false;
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 == c && seen.1 == k {
            return false;
        }
        let result = server_config(&c, &k);
        *seen = (c, k);
        match result {
            Ok(cfg) => {
                self.current.store(Arc::new(cfg));
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(cert = %self.cert.display(), error = %e, "the new TLS certificate does not load; keeping the current one");
                false
            }
        }
    }

    /// Checks the files every `interval`, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }
}
