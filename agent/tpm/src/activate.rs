//! Credential activation, TPM side: TPM2_ActivateCredential (TPM 2.0 Part 3, 12.5) with the
//! attestation key ([`crate::quote::ak_template`]) as activateHandle and the endorsement key
//! (EK) of the TCG default template as keyHandle. A verifier that trusts the EK certificate
//! made the credential for the AK's Name with the EK's public key (TPM2_MakeCredential,
//! Part 3, 12.6, in software); only the TPM holding both that EK and an object of that Name
//! recovers the secret (Part 1, 24 "Credential Protection").
//!
//! The EK is TPM2_CreatePrimary in the endorsement hierarchy of the TCG EK Credential Profile
//! 2.0 template (B.3.3, template L-1: RSA 2048, AES-128-CFB, nameAlg sha256; or L-2: ECC
//! NIST P-256), authPolicy = TPM2_PolicySecret(TPM_RH_ENDORSEMENT) (policy A), no
//! userWithAuth: it is used in a policy session that ran TPM2_PolicySecret with the
//! endorsement hierarchy's (empty) auth. The AK, the EK and the policy session are flushed on
//! every path ([`Scoped`]; no resource manager).

use tss_esapi::abstraction::ek::create_ek_public_from_default_template_2;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, EncryptedSecret, IdObject, Nonce, Public, SymmetricDefinition};
use zeroize::Zeroizing;

use crate::context::{set_session_attributes, Scoped, Tpm};
use crate::error::{failed, TpmError};
use crate::quote::ak_template;

/// Largest credentialBlob accepted (a TPM2B_ID_OBJECT's buffer: Part 2, 10.4.8; 2 + 32 bytes
/// of integrity HMAC and 2 + 32 bytes of encrypted secret here, the TPM allows more).
pub const MAX_CREDENTIAL_BLOB: usize = 256;
/// Largest secret accepted (a TPM2B_ENCRYPTED_SECRET's buffer: Part 2, 11.4.33; 256 bytes for
/// RSA 2048, 2 + 32 + 2 + 32 for an ECC point).
pub const MAX_ENCRYPTED_SECRET: usize = 512;

/// The public key of an EK, as its certificate holds it (the template fixes the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkPublicKey {
    /// RSA 2048, exponent 65537: the modulus, big-endian, 256 bytes.
    Rsa { modulus: Vec<u8> },
    /// ECC NIST P-256: the point's coordinates, big-endian, 32 bytes each.
    Ecc { x: Vec<u8>, y: Vec<u8> },
}

impl EkPublicKey {
    fn kind(&self) -> &'static str {
        match self {
            EkPublicKey::Rsa { .. } => "RSA 2048",
            EkPublicKey::Ecc { .. } => "ECC P-256",
        }
    }
}

impl Tpm {
    /// TPM2_ActivateCredential (TPM 2.0 Part 3, 12.5): recreate the AK ([`ak_template`],
    /// password session, admin role) and the EK of the TCG default template of `ek`'s kind
    /// (TPM2_CreatePrimary, endorsement hierarchy), check that the EK created is `ek` (the
    /// key of the EK certificate), start a policy session (TPM2_StartAuthSession, sha256,
    /// AES-128-CFB), TPM2_PolicySecret(TPM_RH_ENDORSEMENT, empty auth), and activate
    /// `credential_blob` (a TPM2B_ID_OBJECT, Part 2, 10.4.8: size, then integrityHMAC and
    /// encIdentity) with `secret` (a TPM2B_ENCRYPTED_SECRET, Part 2, 11.4.33: size, then the
    /// seed encrypted to the EK). Returns the credential (certInfo): the secret the verifier
    /// chose. Every handle is flushed on every path.
    ///
    /// Errors: `EkMismatch` when the EK of the template is not the certificate's key (the
    /// certificate is for another EK, or the maker used another template); `ActivationRefused`
    /// with the TPM's reason when the blob or secret is malformed or the TPM rejects them
    /// (made for another EK or another AK Name, altered: TPM_RC_INTEGRITY, TPM_RC_VALUE, …);
    /// `Command` for other TPM failures; `Busy`, `Unavailable` as for every command.
    pub fn activate_credential(&mut self, ek: &EkPublicKey, credential_blob: &[u8], secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let result = self.activate_op(ek, credential_blob, secret);
        result.map_err(|e| self.reached_through(e))
    }

    fn activate_op(&mut self, ek: &EkPublicKey, credential_blob: &[u8], secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        const OP: &str = "TPM2_ActivateCredential";
        let refused = |message: String| TpmError::ActivationRefused { message };
        let blob = tpm2b_body(credential_blob, MAX_CREDENTIAL_BLOB, "credential_blob (TPM2B_ID_OBJECT)").map_err(refused)?;
        let seed = tpm2b_body(secret, MAX_ENCRYPTED_SECRET, "secret (TPM2B_ENCRYPTED_SECRET)").map_err(refused)?;
        let blob = IdObject::try_from(blob.to_vec()).map_err(|e| refused(format!("credential_blob: {e}")))?;
        let seed = EncryptedSecret::try_from(seed.to_vec()).map_err(|e| refused(format!("secret: {e}")))?;

        let ak = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.create_primary(Hierarchy::Endorsement, ak_template()?, None, None, None, None))
            .map_err(failed("TPM2_CreatePrimary"))?;
        let mut ak_scope = Scoped::flush(&mut self.ctx, ak.key_handle.into());
        let ek_template = ek_template(ek).map_err(failed("TPM2_CreatePrimary"))?;
        let created = ak_scope
            .execute_with_session(Some(AuthSession::Password), |c| c.create_primary(Hierarchy::Endorsement, ek_template, None, None, None, None))
            .map_err(failed("TPM2_CreatePrimary"))?;
        let mut ek_scope = Scoped::flush(&mut ak_scope, created.key_handle.into());
        let made = public_key(&created.out_public);
        if made.as_ref() != Some(ek) {
            return Err(TpmError::EkMismatch {
                message: format!(
                    "the {} EK this TPM derives from the TCG default template (EK Credential Profile 2.0, B.3.3) is not the key of its EK certificate: the certificate is for another TPM's EK, or the maker used another template",
                    ek.kind()
                ),
            });
        }

        let session = ek_scope
            .execute_without_session(|c| c.start_auth_session(None, None, None, SessionType::Policy, SymmetricDefinition::AES_128_CFB, HashingAlgorithm::Sha256))
            .map_err(failed("TPM2_StartAuthSession"))?
            .ok_or(TpmError::Command { op: "TPM2_StartAuthSession", message: "the TPM returned no session".into() })?;
        let mut tpm = Scoped::flush(&mut ek_scope, SessionHandle::from(session).into());
        set_session_attributes(&mut tpm, session, false, false)?;
        let policy_session = PolicySession::try_from(session).map_err(failed("TPM2_StartAuthSession"))?;
        // The EK's authPolicy (policy A): PolicySecret with the endorsement hierarchy's auth (empty).
        tpm.execute_with_session(Some(AuthSession::Password), |c| {
            c.policy_secret(policy_session, AuthHandle::Endorsement, Nonce::default(), Digest::default(), Nonce::default(), None)
        })
        .map_err(failed("TPM2_PolicySecret"))?;
        let cert_info = tpm
            .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| c.activate_credential(ak.key_handle, created.key_handle, blob, seed))
            .map_err(|e| match failed(OP)(e) {
                TpmError::Command { message, .. } => refused(format!("the TPM refused the credential ({message}): it was made for another EK or another AK Name, or altered")),
                other => other,
            })?;
        Ok(Zeroizing::new(cert_info.value().to_vec()))
    }
}

/// The bytes of a TPM2B (2-byte big-endian size, then exactly that many bytes, at most `max`).
fn tpm2b_body<'a>(b: &'a [u8], max: usize, what: &str) -> Result<&'a [u8], String> {
    match b {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() && !rest.is_empty() && rest.len() <= max => Ok(rest),
        [_, _, rest @ ..] if rest.len() > max => Err(format!("{what} has {} bytes; at most {max}", rest.len())),
        _ => Err(format!("{what} is not a TPM2B: a 2-byte size, then exactly that many bytes (not empty)")),
    }
}

/// The TCG default EK template for `ek`'s kind (EK Credential Profile 2.0, B.3.3: L-1 RSA 2048,
/// L-2 ECC P-256).
fn ek_template(ek: &EkPublicKey) -> tss_esapi::Result<Public> {
    let alg = match ek {
        EkPublicKey::Rsa { .. } => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        EkPublicKey::Ecc { .. } => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
    };
    create_ek_public_from_default_template_2(alg, None)
}

/// The public key of a created RSA 2048 (exponent 65537) or ECC P-256 object.
fn public_key(p: &Public) -> Option<EkPublicKey> {
    match p {
        Public::Rsa { parameters, unique, .. } if matches!(parameters.exponent().value(), 0 | 65537) => Some(EkPublicKey::Rsa { modulus: unique.value().to_vec() }),
        Public::Ecc { unique, .. } => Some(EkPublicKey::Ecc { x: unique.x().value().to_vec(), y: unique.y().value().to_vec() }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_must_be_whole_tpm2bs() {
        assert_eq!(tpm2b_body(&[0, 2, 7, 8], 8, "x"), Ok(&[7u8, 8][..]));
        for bad in [&[][..], &[0], &[0, 0], &[0, 3, 1, 2], &[0, 1, 1, 2]] {
            assert!(tpm2b_body(bad, 8, "x").unwrap_err().contains("not a TPM2B"), "{bad:?}");
        }
        let big = [&[0u8, 9][..], &[1; 9]].concat();
        assert!(tpm2b_body(&big, 8, "x").unwrap_err().contains("at most 8"));
    }

    /// The default template is the profile's: policy A digest, AES-128-CFB, no userWithAuth.
    #[test]
    fn the_ek_template_is_tcg_l1() {
        let t = ek_template(&EkPublicKey::Rsa { modulus: vec![] }).unwrap();
        assert_eq!(hex::encode(t.auth_policy().value()), "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa");
        let a = t.object_attributes();
        assert!(a.fixed_tpm() && a.admin_with_policy() && a.restricted() && a.decrypt() && !a.user_with_auth() && !a.sign_encrypt());
    }
}
