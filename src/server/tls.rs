//! The TLS listener's certificate: read from PEM files at start and again on
//! demand (SIGHUP), swapped in without touching open connections.
//!
//! Each new handshake takes the [`ServerConfig`] that is current when its
//! connection is accepted; a connection keeps the config it shook hands
//! with for its whole life, so a reload never drops anyone. A reload that
//! fails (a half-written file, a key that does not match) keeps serving the
//! previous certificate: an expiring certificate is better than none.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsConfig;

/// Why a certificate could not be loaded. Every message names the config
/// key and the file, so an operator knows which of the two to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("config key `{key}`: cannot read {}: {source}", path.display())]
    Read {
        /// `tls.cert` or `tls.key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not PEM.
    #[error("config key `{key}`: {} is not valid PEM: {source}", path.display())]
    Pem {
        /// `tls.cert` or `tls.key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("config key `tls.cert`: {} holds no PEM CERTIFICATE block", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error(
        "config key `tls.key`: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the pair (unsupported key type, key does not match).
    #[error(
        "config keys `tls.cert` and `tls.key`: {} and {} do not make a usable certificate: {source}",
        cert.display(),
        key.display()
    )]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// The TLS listener's current server configuration and where it came from.
pub struct TlsCerts {
    cert: PathBuf,
    key: PathBuf,
    /// Swapped whole by [`TlsCerts::reload`]. A `std` lock is fine: both
    /// sides hold it only to clone or replace an `Arc`, never across `.await`.
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsCerts {
    /// Reads the certificate chain and key named by `[tls]`. Fails with an
    /// error naming the key and the path, so a bad file stops hoard at start.
    pub async fn load(config: &TlsConfig) -> Result<Arc<TlsCerts>, TlsError> {
        let server = build(&config.cert, &config.key).await?;
        Ok(Arc::new(TlsCerts {
            cert: config.cert.clone(),
            key: config.key.clone(),
            current: RwLock::new(Arc::new(server)),
        }))
    }

    /// The configuration a new handshake should use.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a complete Arc: use it.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again and, if they make a usable certificate, serves
    /// it to every handshake from now on. On error the old one stays.
    pub async fn reload(&self) -> Result<(), TlsError> {
        let server = Arc::new(build(&self.cert, &self.key).await?);
        match self.current.write() {
            Ok(mut g) => *g = server,
            Err(poisoned) => *poisoned.into_inner() = server,
        }
        Ok(())
    }

    /// [`reload`](TlsCerts::reload), reporting the outcome in the log (the
    /// only place a SIGHUP can answer).
    pub async fn reload_logged(&self) {
        match self.reload().await {
            Ok(()) => tracing::info!(
                cert = %self.cert.display(),
                key = %self.key.display(),
                "TLS certificate reloaded"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "TLS certificate reload failed; still serving the previous certificate"
            ),
        }
    }
}

/// Builds a rustls server config: ring, TLS 1.2 and 1.3, ALPN h2 then
/// http/1.1 (clients that can do HTTP/2 get it; the rest fall back).
async fn build(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let cert_pem = read("tls.cert", cert_path).await?;
    let key_pem = read("tls.key", key_path).await?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|source| TlsError::Pem {
            key: "tls.cert",
            path: cert_path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Pem {
            key: "tls.key",
            path: key_path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_owned(),
        })?;
    let rejected = |source| TlsError::Rejected {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rejected)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

async fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| TlsError::Read {
            key,
            path: path.to_owned(),
            source,
        })
}
