//! The release signature: `SHA256SUMS.sig` is `openssl dgst -sha256 -sign pcr-signing.key
//! SHA256SUMS` — RSASSA-PKCS1-v1_5 with SHA-256 (RSA 2048–8192 bits) or DER ECDSA P-256 with
//! SHA-256 — checked in software (ring) with the fleet's PCR-signing public key, a PEM
//! SubjectPublicKeyInfo (RFC 5280, 4.1.2.7; `/etc/swarmseal/pcr-public-key.pem` on the image).

use std::path::Path;

use crate::{Manifest, ReleaseError, SIG, SUMS};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The SEC 1 uncompressed point.
    EccP256 { point: Vec<u8> },
}

/// The public key releases are signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseKey {
    kind: Kind,
    /// SHA-256 of the subjectPublicKey bits (OpenSSL's `i2d_PublicKey`, systemd's `pkfp`).
    fingerprint: [u8; 32],
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    &b[b.iter().position(|&x| x != 0).unwrap_or(b.len())..]
}

impl ReleaseKey {
    /// Parse a PEM `-----BEGIN PUBLIC KEY-----` block. Errors: a sentence saying what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<ReleaseKey, String> {
        use picky_asn1_x509::{oids, AlgorithmIdentifierParameters, EcParameters, PublicKey, SubjectPublicKeyInfo};
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM public key (`-----BEGIN PUBLIC KEY-----`): {e}"))?;
        let spki: SubjectPublicKeyInfo =
            picky_asn1_der::from_bytes(der.as_ref()).map_err(|e| format!("not a DER SubjectPublicKeyInfo: {e}"))?;
        let (kind, bits) = match &spki.subject_public_key {
            PublicKey::Rsa(key) => {
                let n = strip_zeros(key.0.modulus.as_unsigned_bytes_be()).to_vec();
                let e = strip_zeros(key.0.public_exponent.as_unsigned_bytes_be()).to_vec();
                let bits = picky_asn1_der::to_vec(&key.0).map_err(|e| format!("cannot encode the RSA key: {e}"))?;
                (Kind::Rsa { n, e }, bits)
            }
            PublicKey::Ec(point) => {
                let named_p256 = matches!(spki.algorithm.parameters(),
                    AlgorithmIdentifierParameters::Ec(EcParameters::NamedCurve(c)) if c.0 == oids::secp256r1());
                if !named_p256 {
                    return Err("an ECC key on a curve other than NIST P-256; use RSA 2048 (ukify's default) or P-256".into());
                }
                let p = point.0.payload_view().to_vec();
                (Kind::EccP256 { point: p.clone() }, p)
            }
            _ => return Err("neither an RSA nor an ECC P-256 key".into()),
        };
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &bits).as_ref());
        Ok(ReleaseKey { kind, fingerprint })
    }

    /// Read a PEM public key file. Errors: [`ReleaseError::Key`] (unreadable, or not an RSA or
    /// ECC P-256 public key in PEM).
    pub fn load(path: &Path) -> Result<ReleaseKey, ReleaseError> {
        let name = path.display();
        let err = |message: String| ReleaseError::Key { path: path.to_path_buf(), message };
        let pem = std::fs::read(path).map_err(|e| err(format!("cannot read {name}: {e}")))?;
        ReleaseKey::from_pem(&pem).map_err(|m| err(format!("{name} is not usable: {m}")))
    }

    /// Whether `sig` is this key's signature over `msg` with SHA-256, as `openssl dgst -sha256
    /// -sign KEY` makes it.
    pub fn verify_sha256(&self, msg: &[u8], sig: &[u8]) -> bool {
        use ring::signature;
        match &self.kind {
            Kind::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig).is_ok(),
            Kind::EccP256 { point } => signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point).verify(msg, sig).is_ok(),
        }
    }

    /// systemd's `pkfp` of the key (32 bytes; SHA-256 of `i2d_PublicKey`), to name it in messages.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

/// [`ReleaseKey::load`], the agent's `[update] public_key`.
pub fn load_key(path: &Path) -> Result<ReleaseKey, ReleaseError> {
    ReleaseKey::load(path)
}

/// Check `sig` over `sums` with the fleet's key, then parse the manifest.
/// Errors: [`ReleaseError::NotSigned`], then [`ReleaseError::Invalid`].
pub fn verify_manifest(key: &ReleaseKey, sums: &[u8], sig: &[u8]) -> Result<Manifest, ReleaseError> {
    if !key.verify_sha256(sums, sig) {
        return Err(ReleaseError::NotSigned(format!(
            "{SIG} does not verify over {SUMS} with the key {} (RSASSA-PKCS1-v1_5 or ECDSA, SHA-256; made with `openssl dgst -sha256 -sign pcr-signing.key {SUMS}`)",
            hex::encode(&key.fingerprint()[..8])
        )));
    }
    Manifest::parse(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sh;

    #[test]
    fn rsa_and_p256_signatures_made_by_openssl_verify_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("m"), b"manifest").unwrap();
        for (alg, name) in [("-algorithm RSA -pkeyopt rsa_keygen_bits:2048", "rsa"), ("-algorithm EC -pkeyopt ec_paramgen_curve:P-256", "ec")] {
            sh(&format!("openssl genpkey -quiet {alg} -out {name}.key && openssl pkey -in {name}.key -pubout -out {name}.pem && openssl dgst -sha256 -sign {name}.key -out {name}.sig m"), p);
            let k = ReleaseKey::load(&p.join(format!("{name}.pem"))).unwrap();
            let sig = std::fs::read(p.join(format!("{name}.sig"))).unwrap();
            assert!(k.verify_sha256(b"manifest", &sig), "{name}");
            assert!(!k.verify_sha256(b"manifesT", &sig), "{name}");
        }
        let e = ReleaseKey::load(&p.join("none.pem")).unwrap_err().to_string();
        assert!(e.starts_with("this manager cannot check releases: [update] public_key") && e.contains("cannot read"), "{e}");
        std::fs::write(p.join("bad.pem"), b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        assert!(ReleaseKey::load(&p.join("bad.pem")).unwrap_err().to_string().contains("is not usable"));
    }
}
