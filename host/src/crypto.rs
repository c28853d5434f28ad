//! TLS for every connection the gateway makes or takes: one provider, and
//! the client configuration toward the servers it calls.

use anyhow::Context as _;

/// TLS toward the servers evogate calls (PostgreSQL, plugins' outgoing
/// requests): the public roots (webpki), the system's trusted roots (see
/// [`system_roots`]), plus the certificates of `extra_ca`, a PEM file, when given.
pub(crate) fn client_tls(extra_ca: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A system certificate rustls cannot use (an odd algorithm) is left out, not fatal.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
            roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
            added += 1;
        }
        anyhow::ensure!(added > 0, "{} holds no PEM certificate", path.display());
    }
    Ok(rustls::ClientConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The roots the operating system trusts, read once: `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set, else the system's store (`/etc/ssl/certs` on
/// Debian, where `update-ca-certificates` puts a root an operator adds).
/// A store that cannot be read is logged and taken as empty.
fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for err in found.errors.iter().take(3) {
            tracing::warn!(error = %err, "reading the system's trusted certificates");
        }
        tracing::debug!(certificates = found.certs.len(), "the system's trusted certificates");
        found.certs
    })
}

/// The TLS implementation of every listener and client of the gateway:
/// rustls on *ring*, which builds without a C toolchain. rustls deprecates
/// it for lacking post-quantum key exchange (aws-lc-rs has it, and needs
/// cmake and a C compiler to build); classical key exchange is what Evotor's
/// cloud and PostgreSQL offer today.
#[allow(deprecated)]
pub fn tls_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
