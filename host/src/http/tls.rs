//! Accepting connections for the public and admin listeners, and their
//! HTTPS: rustls (TLS 1.2 and 1.3,
//! ring), HTTP/2 and HTTP/1.1 by ALPN (the admin listener: HTTP/1.1), and a
//! certificate that can be replaced while connections stay open (`SIGHUP`
//! re-reads the files).

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificate in use, swapped whole on reload.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The TLS side of the public listener.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    crate::crypto::tls_provider()
}

/// Reads a PEM certificate chain and its private key, and checks they belong together.
fn load(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the certificate {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let private =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the private key {}", key.display()))?;
    let certified = CertifiedKey::from_der(chain, private, &provider())
        .with_context(|| format!("{} and {} do not form a usable pair", cert.display(), key.display()))?;
    Ok(certified)
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate and key for HTTP/2 and HTTP/1.1; fails with the
    /// reason when they are unusable.
    pub fn new(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Self::with_alpn(cert, key, &[b"h2", b"http/1.1"])
    }

    /// [`Tls::new`] for a listener that speaks HTTP/1.1 only.
    pub fn http1(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Self::with_alpn(cert, key, &[b"http/1.1"])
    }

    fn with_alpn(cert: &Path, key: &Path, alpn: &[&[u8]]) -> anyhow::Result<Self> {
        let current = Arc::new(Current(ArcSwap::from_pointee(load(cert, key)?)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Re-reads the files. On any problem the certificate in use stays and
    /// the error says why. Connections already open are not touched.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load(&self.cert, &self.key)?;
        self.current.0.store(Arc::new(fresh));
        Ok(())
    }

    /// The TLS handshake of a new connection from `peer` with the
    /// certificate in use, within `timeout`; `None` (logged at debug) when
    /// it fails or takes longer.
    pub async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        match tokio::time::timeout(timeout, self.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// Accepts new TLS connections with the certificate in use.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// The next connection on `listener`. A failed accept (usually EMFILE: no
/// descriptor free) is logged and retried after a pause instead of
/// spinning; `which` names the listener in the log.
pub async fn accept(listener: &tokio::net::TcpListener, which: &str) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                tracing::warn!(listener = which, error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
