//! The fleet's signing public key: the one key that signs both the PCR 11 policies of a UKI
//! (`systemd-measure sign`, the `.pcrpkey` section) and the releases (`SHA256SUMS.sig`).
//! Read once here for both users: `swarmseal-tpm` loads it into the TPM
//! (TPM2_LoadExternal), `swarmseal-release` checks release signatures in software.
//!
//! Shape: a PEM `-----BEGIN PUBLIC KEY-----` block, i.e. a DER SubjectPublicKeyInfo
//! (RFC 5280, 4.1), holding an RSA key (signatures RSASSA-PKCS1-v1_5 with SHA-256) or an ECC
//! NIST P-256 key (DER ECDSA with SHA-256), as `openssl dgst -sha256 -sign KEY` makes them.

use std::path::Path;

use sha2::{Digest as _, Sha256};

/// What kind of key it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA (ukify's default is 2048 bits); signatures RSASSA-PKCS1-v1_5/SHA-256.
    Rsa,
    /// ECC NIST P-256; signatures ECDSA/SHA-256, DER-encoded.
    EccP256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    /// Modulus and exponent, big-endian, no leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The SEC 1 point as the key holds it (uncompressed: `04 || x || y`).
    EccP256 { point: Vec<u8> },
}

/// A parsed signing public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    der: Vec<u8>,
    /// The subjectPublicKey BIT STRING's content as it is in `der`: what OpenSSL's
    /// `i2d_PublicKey` writes (PKCS#1 RSAPublicKey, or the EC point), which systemd's `pkfp` hashes.
    key_bits: Vec<u8>,
    material: Material,
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    &b[b.iter().position(|&x| x != 0).unwrap_or(b.len())..]
}

impl SigningKey {
    /// Read a PEM file. Errors: the file's name and what is wrong with it, as one sentence
    /// (unreadable; not PEM; not an RSA or ECC P-256 key).
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let name = path.display();
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        SigningKey::from_pem(&pem).map_err(|m| format!("{name} is not usable: {m}"))
    }

    /// Parse the first `PUBLIC KEY` block of a PEM text (other blocks around it are ignored).
    /// Errors: a sentence saying what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        let not_pem = |why: String| format!("not a PEM public key (`-----BEGIN PUBLIC KEY-----`): {why}");
        let blocks = pem::parse_many(pem).map_err(|e| not_pem(e.to_string()))?;
        let block = blocks.iter().find(|b| b.tag() == "PUBLIC KEY").ok_or_else(|| not_pem("no such block".into()))?;
        SigningKey::from_der(block.contents())
    }

    /// Parse a DER SubjectPublicKeyInfo (RFC 5280, 4.1). Errors: a sentence saying what is wrong.
    pub fn from_der(der: &[u8]) -> Result<SigningKey, String> {
        use picky_asn1_x509::{oids, AlgorithmIdentifierParameters, EcParameters, PublicKey, SubjectPublicKeyInfo};
        let spki: SubjectPublicKeyInfo =
            picky_asn1_der::from_bytes(der).map_err(|e| format!("not a DER SubjectPublicKeyInfo: {e}"))?;
        let material = match &spki.subject_public_key {
            PublicKey::Rsa(key) => Material::Rsa {
                n: strip_zeros(key.0.modulus.as_unsigned_bytes_be()).to_vec(),
                e: strip_zeros(key.0.public_exponent.as_unsigned_bytes_be()).to_vec(),
            },
            PublicKey::Ec(point) => {
                let named_p256 = matches!(spki.algorithm.parameters(),
                    AlgorithmIdentifierParameters::Ec(EcParameters::NamedCurve(c)) if c.0 == oids::secp256r1());
                if !named_p256 {
                    return Err("an ECC key on a curve other than NIST P-256; use RSA 2048 (ukify's default) or P-256".into());
                }
                Material::EccP256 { point: point.0.payload_view().to_vec() }
            }
            _ => return Err("neither an RSA nor an ECC P-256 key".into()),
        };
        let key_bits = spki_key_bits(der).ok_or("the SubjectPublicKeyInfo has no plain subjectPublicKey BIT STRING")?;
        Ok(SigningKey { der: der.to_vec(), key_bits, material })
    }

    /// Whether `sig` is this key's signature over `msg` with SHA-256, as `openssl dgst -sha256
    /// -sign KEY` makes it: RSASSA-PKCS1-v1_5 (RSA 2048–8192 bits) or DER ECDSA (P-256).
    /// Checked in software (ring).
    pub fn verify_sha256(&self, msg: &[u8], sig: &[u8]) -> bool {
        use ring::signature;
        match &self.material {
            Material::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig).is_ok(),
            Material::EccP256 { point } => signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point).verify(msg, sig).is_ok(),
        }
    }

    /// systemd's `pkfp` (32 bytes): SHA-256 of `i2d_PublicKey` (systemd's `pubkey_fingerprint`),
    /// i.e. of the PKCS#1 RSAPublicKey for RSA or the EC point for ECC — not of the whole
    /// SubjectPublicKeyInfo (`systemd-measure sign` output checked: it is the former).
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.key_bits).into()
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn kind(&self) -> KeyKind {
        match self.material {
            Material::Rsa { .. } => KeyKind::Rsa,
            Material::EccP256 { .. } => KeyKind::EccP256,
        }
    }

    /// RSA: the modulus and the exponent (big-endian, no leading zeros).
    pub fn rsa(&self) -> Option<(&[u8], &[u8])> {
        match &self.material {
            Material::Rsa { n, e } => Some((n, e)),
            Material::EccP256 { .. } => None,
        }
    }

    /// ECC P-256: the SEC 1 point as the key holds it.
    pub fn ecc_point(&self) -> Option<&[u8]> {
        match &self.material {
            Material::EccP256 { point } => Some(point),
            Material::Rsa { .. } => None,
        }
    }
}

/// The content of the subjectPublicKey BIT STRING of a DER SubjectPublicKeyInfo
/// (RFC 5280, 4.1: `SEQUENCE { AlgorithmIdentifier, BIT STRING }`), without its unused-bits
/// byte, which must be 0. The bits as they are in `der`, not re-encoded: `pkfp` hashes them.
fn spki_key_bits(der: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct RawSpki {
        _algorithm: picky_asn1_der::Asn1RawDer,
        subject_public_key: picky_asn1::wrapper::BitStringAsn1,
    }
    let spki: RawSpki = picky_asn1_der::from_bytes(der).ok()?;
    let bits = &spki.subject_public_key.0;
    (bits.get_num_unused_bits() == 0).then(|| bits.payload_view().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_and_p256_signatures_made_by_openssl_verify_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("m"), b"manifest").unwrap();
        for (alg, name, kind) in [
            ("-algorithm RSA -pkeyopt rsa_keygen_bits:2048", "rsa", KeyKind::Rsa),
            ("-algorithm EC -pkeyopt ec_paramgen_curve:P-256", "ec", KeyKind::EccP256),
        ] {
            let sh = format!("openssl genpkey -quiet {alg} -out {name}.key && openssl pkey -in {name}.key -pubout -out {name}.pem && openssl dgst -sha256 -sign {name}.key -out {name}.sig m && openssl pkey -pubin -in {name}.pem -outform DER -out {name}.der");
            let o = std::process::Command::new("sh").arg("-c").arg(&sh).current_dir(p).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let k = SigningKey::load(&p.join(format!("{name}.pem"))).unwrap();
            assert_eq!(k.kind(), kind);
            let sig = std::fs::read(p.join(format!("{name}.sig"))).unwrap();
            assert!(k.verify_sha256(b"manifest", &sig), "{name}");
            assert!(!k.verify_sha256(b"manifesT", &sig), "{name}");
            assert_eq!(k.der(), std::fs::read(p.join(format!("{name}.der"))).unwrap(), "{name}");
        }
        let e = SigningKey::load(&p.join("none.pem")).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("none.pem"), "{e}");
        std::fs::write(p.join("bad.pem"), b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        assert!(SigningKey::load(&p.join("bad.pem")).unwrap_err().contains("is not usable"));
    }

    #[test]
    fn another_curve_is_named() {
        let d = tempfile::tempdir().unwrap();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg("openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-384 | openssl pkey -pubout -out k.pem")
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(o.status.success());
        let e = SigningKey::load(&d.path().join("k.pem")).unwrap_err();
        assert!(e.contains("other than NIST P-256"), "{e}");
    }
}
