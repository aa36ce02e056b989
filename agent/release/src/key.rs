//! The release signature: `SHA256SUMS.sig` is `openssl dgst -sha256 -sign pcr-signing.key
//! SHA256SUMS` — RSASSA-PKCS1-v1_5 with SHA-256 (RSA 2048–8192 bits) or DER ECDSA P-256 with
//! SHA-256 — checked in software (ring) with the fleet's PCR-signing public key, a PEM
//! SubjectPublicKeyInfo (RFC 5280, 4.1.2.7; `/etc/swarmseal/pcr-public-key.pem` on the image).

use std::path::Path;

use swarmseal_common::signing::SigningKey;

use crate::{Manifest, ReleaseError, SIG, SUMS};

/// The public key releases are signed with: the fleet's signing key (read and checked by
/// [`SigningKey`], the same code that reads it for the TPM's signed PCR policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseKey(SigningKey);

impl ReleaseKey {
    /// Parse a PEM `-----BEGIN PUBLIC KEY-----` block. Errors: a sentence saying what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<ReleaseKey, String> {
        SigningKey::from_pem(pem).map(ReleaseKey)
    }

    /// Read a PEM public key file. Errors: [`ReleaseError::Key`] (unreadable, or not an RSA or
    /// ECC P-256 public key in PEM).
    pub fn load(path: &Path) -> Result<ReleaseKey, ReleaseError> {
        SigningKey::load(path).map(ReleaseKey).map_err(|message| ReleaseError::Key { path: path.to_path_buf(), message })
    }

    /// Whether `sig` is this key's signature over `msg` with SHA-256, as `openssl dgst -sha256
    /// -sign KEY` makes it (see [`SigningKey::verify_sha256`]).
    pub fn verify_sha256(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.0.verify_sha256(msg, sig)
    }

    /// systemd's `pkfp` of the key (32 bytes; SHA-256 of `i2d_PublicKey`), to name it in messages.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.0.fingerprint()
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

    #[test]
    fn a_missing_or_unusable_key_says_the_manager_cannot_check_releases() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let e = ReleaseKey::load(&p.join("none.pem")).unwrap_err().to_string();
        assert!(e.starts_with("this manager cannot check releases: [update] public_key") && e.contains("cannot read"), "{e}");
        std::fs::write(p.join("bad.pem"), b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        assert!(ReleaseKey::load(&p.join("bad.pem")).unwrap_err().to_string().contains("is not usable"));
    }
}
