//! Native HTTPS: rustls (the `ring` provider, no OpenSSL), TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`, and a certificate that is replaced while the server runs.
//!
//! **Reload**: the certificate and key files are watched like the campaigns file
//! ([`crate::file_watch`]: a settled change of either file, and SIGHUP). A new pair is read and
//! verified off the request path (both parse, the key is one rustls can sign with, and its public
//! key is the certificate's) before it is published; a broken pair is refused with a log line and
//! the previous one keeps serving. The pair is published in an [`ArcSwap`] that rustls reads at
//! each handshake ([`ResolvesServerCert`]): new connections get the new certificate, connections
//! already open keep theirs (a TLS session never needs the certificate again) and are not dropped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig, version};
use x509_cert::der::Decode;

use crate::file_watch::{self, Cause, ReadError};
use crate::metrics::TlsMetrics;

/// Largest certificate or key file read (a chain of a few certificates is a few KiB).
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The protocols offered in ALPN, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ReadError,
    },
    /// A file is not what it should be (no PEM certificate, no PEM key, not X.509).
    #[error("{}: {problem}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The key is not the certificate's.
    #[error("the key in {} is not the key of the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the settings (not expected with the fixed settings here).
    #[error("TLS settings refused: {0}")]
    Settings(rustls::Error),
}

/// A verified certificate chain and key, ready for handshakes.
pub struct Pair {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// When the leaf certificate expires, seconds since the Unix epoch.
    pub not_after: u64,
}

fn parse_problem(path: &Path, problem: impl fmt::Display) -> TlsError {
    TlsError::Parse {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    file_watch::read_capped(path, MAX_PEM_BYTES).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and verifies the PEM certificate chain at `cert` (leaf first) and the PEM private key
/// (PKCS#8, PKCS#1 or SEC1) at `key`.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_problem(cert, format!("not a PEM certificate chain: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| parse_problem(cert, "no PEM certificate (BEGIN CERTIFICATE) in it"))?;
    let not_after = x509_cert::Certificate::from_der(leaf)
        .map_err(|e| parse_problem(cert, format!("not an X.509 certificate: {e}")))?
        .tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration()
        .as_secs();
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| parse_problem(key, format!("no usable PEM private key: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| parse_problem(key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    // Strict: a key whose public half is unknown is refused too (ring knows all it loads).
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })?;
    Ok(Pair {
        key: Arc::new(certified),
        not_after,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Hands rustls the current pair at every handshake.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The TLS side of one listener: its acceptor, its files, and the pair it serves now.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    cert: PathBuf,
    key: PathBuf,
    /// The listener's name in log lines (`ads`, `admin`).
    listener: &'static str,
    metrics: TlsMetrics,
}

impl Tls {
    /// Loads the pair at `cert` and `key` for `listener` (an error here stops the start: there
    /// is no previous pair to keep serving).
    pub fn load(
        cert: &Path,
        key: &Path,
        listener: &'static str,
        metrics: TlsMetrics,
    ) -> Result<Tls, TlsError> {
        let pair = load_pair(cert, key)?;
        metrics
            .expiry
            .set(i64::try_from(pair.not_after).unwrap_or(i64::MAX));
        let current = Arc::new(Current(ArcSwap::new(pair.key)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(TlsError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            listener,
            metrics,
        })
    }

    /// The acceptor new connections go through.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads and verifies the files again and, if the pair is usable, serves it from the next
    /// handshake on. Returns whether it was published.
    pub async fn reload(&self, why: Cause) -> bool {
        let (cert, key) = (self.cert.clone(), self.key.clone());
        match tokio::task::spawn_blocking(move || load_pair(&cert, &key)).await {
            Ok(Ok(pair)) => {
                self.current.0.store(pair.key);
                self.metrics
                    .expiry
                    .set(i64::try_from(pair.not_after).unwrap_or(i64::MAX));
                self.metrics.reloads_ok.inc();
                tracing::info!(
                    not_after = pair.not_after,
                    "TLS certificate of the {} listener reloaded ({why}) from {}",
                    self.listener,
                    self.cert.display()
                );
                true
            }
            Ok(Err(e)) => {
                self.metrics.reloads_error.inc();
                tracing::error!(
                    "TLS certificate reload of the {} listener ({why}) refused, the previous \
                     certificate keeps serving: {e}",
                    self.listener
                );
                false
            }
            Err(e) => {
                self.metrics.reloads_error.inc();
                tracing::error!(
                    "TLS certificate reload of the {} listener ({why}) failed: {e}",
                    self.listener
                );
                false
            }
        }
    }

    /// Watches the certificate and key files until `shutdown`: reloads when either changed and
    /// settled, and on SIGHUP (registered when this is called).
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> {
        let paths = vec![self.cert.clone(), self.key.clone()];
        file_watch::watch_all(paths, "TLS certificate", interval, shutdown, move |why| {
            let tls = self.clone();
            async move {
                tls.reload(why).await;
            }
        })
    }
}

/// Whether a request arrived over TLS (a request extension set by the server).
#[derive(Debug, Clone, Copy)]
pub struct Secure;
