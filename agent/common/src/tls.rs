//! Client TLS configuration (rustls, ring provider): the roots or verifier that judge the
//! server, the protocol versions, and the client certificate when mutual TLS asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A client TLS configuration that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file unreadable or malformed.
    #[error("{}: {source}", path.display())]
    Pem { path: PathBuf, source: rustls_pki_types::pem::Error },
    /// A CA certificate rustls does not accept as a trust anchor.
    #[error("{}: {source}", path.display())]
    Anchor { path: PathBuf, source: rustls::Error },
    /// The protocol versions are not available in the ring provider.
    #[error("TLS setup: {0}")]
    Versions(rustls::Error),
    /// The client certificate and key do not form a usable identity (e.g. key mismatch).
    #[error("client certificate: {0}")]
    ClientCert(rustls::Error),
}

/// Which TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 only (the proxy's protocol).
    Tls13,
    /// rustls' safe defaults (TLS 1.3 and 1.2): for servers swarmseal does not run.
    SafeDefault,
}

/// How the server's certificate is judged.
pub enum Verify {
    /// WebPKI path validation to these roots, and the name the client asks for.
    Roots(RootCertStore),
    /// A custom check (a pinned certificate, a probe that only needs the ServerHello).
    Custom(Arc<dyn ServerCertVerifier>),
}

/// The client's certificate chain (leaf first) and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Read a PEM chain (`cert`, leaf first) and a PEM private key (`key`: PKCS#8, PKCS#1 or
    /// SEC1). Errors: [`TlsError::Pem`] naming the file.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert).and_then(|it| it.collect::<Result<Vec<_>, _>>()).map_err(|source| TlsError::Pem { path: cert.into(), source })?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem { path: key.into(), source })?;
        Ok(Identity { chain, key })
    }
}

/// Every certificate of the PEM file `ca` as a trust anchor. Errors: [`TlsError::Pem`]
/// (unreadable, malformed PEM) or [`TlsError::Anchor`] (a certificate rustls refuses), naming
/// the file.
pub fn roots_from_pem_file(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|source| TlsError::Pem { path: ca.into(), source })? {
        let c = c.map_err(|source| TlsError::Pem { path: ca.into(), source })?;
        roots.add(c).map_err(|source| TlsError::Anchor { path: ca.into(), source })?;
    }
    Ok(roots)
}

/// A rustls client configuration on the ring provider: `versions` offered, the server judged
/// by `verify`, `identity` presented when given (mutual TLS), else no client certificate.
/// ALPN and resumption are rustls' defaults; set them on the result.
///
/// Errors: [`TlsError::Versions`], [`TlsError::ClientCert`].
pub fn client_config(versions: Versions, verify: Verify, identity: Option<Identity>) -> Result<ClientConfig, TlsError> {
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()));
    let b = match versions {
        Versions::Tls13 => b.with_protocol_versions(&[&rustls::version::TLS13]),
        Versions::SafeDefault => b.with_safe_default_protocol_versions(),
    }
    .map_err(TlsError::Versions)?;
    let b = match verify {
        Verify::Roots(roots) => b.with_root_certificates(roots),
        Verify::Custom(v) => b.dangerous().with_custom_certificate_verifier(v),
    };
    match identity {
        Some(id) => b.with_client_auth_cert(id.chain, id.key).map_err(TlsError::ClientCert),
        None => Ok(b.with_no_client_auth()),
    }
}

/// [`client_config`] from PEM files: the server verified against the CA file `ca`, the
/// client certificate `(cert, key)` when given.
pub fn client_config_from_files(versions: Versions, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, TlsError> {
    let identity = identity.map(|(c, k)| Identity::from_pem_files(c, k)).transpose()?;
    client_config(versions, Verify::Roots(roots_from_pem_file(ca)?), identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: PathBuf,
    }

    /// A CA and a client certificate it signed, as PEM files.
    fn pki(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("swarmseal-common-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("other-key.pem"), rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        Pki { dir }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn builds_with_and_without_a_client_certificate() {
        let p = pki("ok");
        let (ca, cert, key) = (p.dir.join("ca.pem"), p.dir.join("cert.pem"), p.dir.join("key.pem"));
        let c = client_config_from_files(Versions::Tls13, &ca, Some((&cert, &key))).unwrap();
        assert!(c.client_auth_cert_resolver.has_certs());
        let c = client_config_from_files(Versions::SafeDefault, &ca, None).unwrap();
        assert!(!c.client_auth_cert_resolver.has_certs());
        assert_eq!(roots_from_pem_file(&ca).unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_file() {
        let p = pki("bad");
        let (ca, cert) = (p.dir.join("ca.pem"), p.dir.join("cert.pem"));
        let missing = p.dir.join("missing.pem");
        let e = client_config_from_files(Versions::Tls13, &missing, None).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }) && e.to_string().starts_with(&missing.display().to_string()), "{e}");
        let e = client_config_from_files(Versions::Tls13, &ca, Some((&cert, &missing))).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        // A key that is not the certificate's.
        let e = client_config_from_files(Versions::Tls13, &ca, Some((&cert, &p.dir.join("other-key.pem")))).unwrap_err();
        assert!(matches!(e, TlsError::ClientCert(_)) && e.to_string().starts_with("client certificate: "), "{e}");
    }
}
