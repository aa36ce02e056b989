//! TLS 1.3 server configuration (rustls, ring) and the client identity.
//!
//! The handshake requires a client certificate that chains to the configured
//! client CA and is within its validity period (webpki); anything else fails
//! the handshake. The identity is the certificate's Subject CN; the role is
//! its Subject OU (`admin` or `readonly`). A certificate with no OU or another
//! OU passes the handshake (it is signed by our CA) but every request gets 403.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ProxyError;

/// OID arcs, DER-encoded contents (2.5.4.3, 2.5.4.10, 2.5.4.11).
pub const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
pub const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
pub const OID_OU: &[u8] = &[0x55, 0x04, 0x0b];

/// What a client certificate allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    ReadOnly,
    /// Ships stacks and services; nothing that reaches the host ([`crate::policy`]).
    Deploy,
    /// Reads state that holds no secrets.
    Monitor,
}

impl Role {
    /// The built-in roles.
    pub const ALL: [Role; 4] = [Role::Admin, Role::ReadOnly, Role::Deploy, Role::Monitor];

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "readonly" => Some(Role::ReadOnly),
            "deploy" => Some(Role::Deploy),
            "monitor" => Some(Role::Monitor),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "readonly",
            Role::Deploy => "deploy",
            Role::Monitor => "monitor",
        }
    }
}

/// The authenticated peer of one connection.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Subject CN (or `-` when absent).
    pub name: String,
    /// `None`: no OU or an unknown one; every request is denied. The built-in role whose
    /// rules apply (a `[roles.NAME]` role: its `base`).
    pub role: Option<Role>,
    /// The configured role named by the OU, with its settings.
    pub policy: Option<std::sync::Arc<crate::policy::RolePolicy>>,
    /// The OU as found, for the audit log.
    pub ou: String,
}

impl Identity {
    /// The identity with the built-in roles only.
    pub fn from_cert(der: &[u8]) -> Identity {
        Identity::from_cert_with(der, &crate::policy::Roles::builtin())
    }

    /// The identity, its role looked up among `roles` (the OU names it).
    pub fn from_cert_with(der: &[u8], roles: &crate::policy::Roles) -> Identity {
        let attrs = subject_attrs(der).unwrap_or_default();
        let get = |oid: &[u8]| attrs.iter().find(|(o, _)| o.as_slice() == oid).map(|(_, v)| v.clone());
        let name = get(OID_CN).unwrap_or_else(|| "-".into());
        // Exactly one OU is accepted: two OUs (e.g. admin and readonly) are ambiguous.
        let ous: Vec<&String> = attrs.iter().filter(|(o, _)| o.as_slice() == OID_OU).map(|(_, v)| v).collect();
        let (policy, ou) = match ous.as_slice() {
            [one] => (roles.get(one), (*one).clone()),
            [] => (None, "-".into()),
            _ => (None, "(several)".into()),
        };
        Identity { name, role: policy.as_ref().map(|p| p.kind), policy, ou }
    }
    /// The role's name (the OU), `none` without a known role.
    pub fn role_str(&self) -> &str {
        self.policy.as_ref().map(|p| p.name.as_str()).unwrap_or("none")
    }
}

/// Parse all certificates of a PEM buffer.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let v: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let v = v.map_err(|e| format!("invalid PEM: {e}"))?;
    if v.is_empty() {
        return Err("no certificate in PEM".into());
    }
    Ok(v)
}

fn read_file(p: &Path, what: &'static str) -> Result<Vec<u8>, ProxyError> {
    std::fs::read(p).map_err(|source| ProxyError::Read { what, path: p.to_path_buf(), source, hint: " (create the PKI with `swarmseal certs init`)" })
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> ProxyError {
    ProxyError::Invalid { path: path.to_path_buf(), message: message.to_string() }
}

/// Build the rustls server configuration: TLS 1.3 only, ring, client certificate required.
pub fn server_config(client_ca: &Path, server_cert: &Path, server_key: &Path) -> Result<Arc<ServerConfig>, ProxyError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let ca = pem_certs(&read_file(client_ca, "the client CA")?).map_err(|e| invalid(client_ca, e))?;
    for c in ca {
        // A client certificate configured as the trust anchor would let anyone holding its
        // key mint `OU=admin` certificates: only CA certificates are accepted here.
        if !is_ca_cert(&c) {
            return Err(ProxyError::NotCa { path: client_ca.to_path_buf() });
        }
        roots.add(c).map_err(|e| invalid(client_ca, format!("unusable CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ProxyError::Crypto(format!("client certificate verifier: {e}")))?;
    let chain = pem_certs(&read_file(server_cert, "the server certificate")?).map_err(|e| invalid(server_cert, e))?;
    let key_pem = zeroize::Zeroizing::new(read_file(server_key, "the server key")?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(server_key, format!("invalid private key: {e}")))?;
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ProxyError::Crypto(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ProxyError::Crypto(format!("server certificate/key: {e}")))?;
    Ok(Arc::new(cfg))
}

// --- certificates read with a DER parser (x509-parser, RFC 5280) ---

/// The Subject of a DER certificate as (OID contents, string value) pairs, in order
/// (RFC 5280 §4.1.2.6). Values of UTF8String, PrintableString, IA5String and T61String are
/// read as UTF-8 (lossy), BMPString as UTF-16; attributes of other types are skipped.
/// `None`: not a certificate.
pub fn subject_attrs(cert: &[u8]) -> Option<Vec<(Vec<u8>, String)>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let out = cert
        .subject()
        .iter_attributes()
        .filter_map(|a| {
            let v = a.attr_value();
            let s = match v.tag().0 {
                // UTF8String, PrintableString, IA5String, T61String
                12 | 19 | 22 | 20 => String::from_utf8_lossy(v.data).into_owned(),
                // BMPString
                30 => {
                    let u: Vec<u16> = v.data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
                    String::from_utf16_lossy(&u)
                }
                _ => return None,
            };
            Some((a.attr_type().as_bytes().to_vec(), s))
        })
        .collect();
    Some(out)
}

/// Whether a DER certificate carries basicConstraints with cA = TRUE (RFC 5280 §4.2.1.9).
/// A certificate that does not parse, or whose basicConstraints is malformed or repeated, is not.
pub fn is_ca_cert(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return false };
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

#[cfg(test)]
mod ca_tests {
    use super::*;

    #[test]
    fn only_ca_certificates_are_trust_anchors() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        assert!(is_ca_cert(p.self_signed(&key).unwrap().der()));
        let mut p = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        assert!(!is_ca_cert(p.self_signed(&key).unwrap().der()));
        let p = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        assert!(!is_ca_cert(p.self_signed(&key).unwrap().der()));
        assert!(!is_ca_cert(b"not a certificate"));
    }

    /// The operator's sentences of a broken setup: which file, what to do.
    #[test]
    fn setup_errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let e = server_config(&ca, &cert, &key).unwrap_err();
        assert!(matches!(e, ProxyError::Read { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("cannot read the client CA {}: ", ca.display())) && text.ends_with("(create the PKI with `swarmseal certs init`)"), "{text}");
        let k = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&ca, rcgen::CertificateParams::new(vec!["client".into()]).unwrap().self_signed(&k).unwrap().pem()).unwrap();
        let e = server_config(&ca, &cert, &key).unwrap_err();
        assert!(matches!(e, ProxyError::NotCa { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("{}: not a CA certificate (basicConstraints CA:TRUE missing); point [proxy] client_ca at the CA", ca.display())), "{e}");
        std::fs::write(&ca, "garbage").unwrap();
        assert_eq!(server_config(&ca, &cert, &key).unwrap_err().to_string(), format!("{}: no certificate in PEM", ca.display()));
    }

    /// The Subject as the role decision reads it: O, OU, CN in order, a BMPString CN read as
    /// UTF-16; two OUs are ambiguous (no role).
    #[test]
    fn subject_and_identity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = |ous: &[&str]| {
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::OrganizationName, "swarmseal");
            for (i, ou) in ous.iter().enumerate() {
                // rcgen keeps one value per type: a second OU goes in under its raw OID.
                let ty = if i == 0 { rcgen::DnType::OrganizationalUnitName } else { rcgen::DnType::CustomDnType(vec![2, 5, 4, 11]) };
                dn.push(ty, *ou);
            }
            dn.push(rcgen::DnType::CommonName, rcgen::DnValue::BmpString("jo\u{e9}".try_into().unwrap()));
            p.distinguished_name = dn;
            p.self_signed(&key).unwrap().der().to_vec()
        };
        let der = cert(&["admin"]);
        let attrs = subject_attrs(&der).unwrap();
        let oids: Vec<&[u8]> = attrs.iter().map(|(o, _)| o.as_slice()).collect();
        assert_eq!(oids, [OID_O, OID_OU, OID_CN]);
        let id = Identity::from_cert(&der);
        assert_eq!((id.name.as_str(), id.role, id.ou.as_str()), ("jo\u{e9}", Some(Role::Admin), "admin"));
        let id = Identity::from_cert(&cert(&["admin", "readonly"]));
        assert_eq!((id.role, id.ou.as_str()), (None, "(several)"));
        let id = Identity::from_cert(&cert(&[]));
        assert_eq!((id.role, id.ou.as_str()), (None, "-"));
        assert!(subject_attrs(b"\x30\x03\x02\x01\x00").is_none());
    }
}
