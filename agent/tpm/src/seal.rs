//! Seal: TPM2_Create (TPM 2.0 Part 3, 12.1) of a KEYEDHASH data object under the SRK, bound
//! to the policy digest of `policy.rs`, in a session salted to the SRK; and the marshalled
//! form of what it returns ([`SealedObject`], stored by `keystore`).

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::SessionHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::structures::{Digest, KeyedHashScheme, Private, Public, PublicBuilder, PublicKeyedHashParameters, SensitiveData};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use crate::context::{set_session_attributes, start_salted_session, Scoped, Tpm};
use crate::error::{failed, TpmError};
use crate::policy::{check_policy, Policy};
use crate::srk::load_srk;

/// Largest secret a sealed KEYEDHASH object holds (MAX_SYM_DATA, TPM 2.0 Part 2), in bytes.
pub const MAX_SECRET_LEN: usize = 128;

/// What the TPM holds for one sealed unlock key (TPM 2.0 Part 3, TPM2_Create outputs),
/// plus what is needed to load and check it. No secret in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedObject {
    /// Marshalled TPM2B_PUBLIC of the sealed KEYEDHASH object (2-byte big-endian size, then TPMT_PUBLIC).
    pub public: Vec<u8>,
    /// Marshalled TPM2B_PRIVATE (2-byte big-endian size, then the blob encrypted by the SRK).
    pub private: Vec<u8>,
    /// Name of the SRK (parent) at sealing time (2-byte nameAlg, then the digest); checked before unsealing.
    pub srk_name: Vec<u8>,
    /// The object's authPolicy digest (32 bytes, sha256).
    pub policy_digest: Vec<u8>,
}

impl Tpm {
    /// Seal `secret` (1 to 128 bytes, from the OS RNG) under `policy` (TPM 2.0 Part 3,
    /// TPM2_Create of a KEYEDHASH object under the SRK, in a session salted to the SRK with
    /// AES-128-CFB encryption of the sensitive parameter).
    ///
    /// The authPolicy is computed from `policy` ([`Policy::digest`]): from the PCR values it
    /// holds, which need not be the current ones (e.g. values recorded before the phase PCR is
    /// extended). Sealing an `Authorize` policy does not check that any signature satisfies
    /// it: call [`Tpm::verify_signed_policy`] first.
    ///
    /// Errors: `Command` for an empty or invalid PCR set, a secret of the wrong size, or a
    /// TPM failure; `Unavailable` when the TPM stops answering.
    pub fn seal(&mut self, secret: &[u8], policy: &Policy) -> Result<SealedObject, TpmError> {
        let mut given = Some(Zeroizing::new(secret.to_vec()));
        let sealed = self.seal_prepared(policy, &mut || given.take())?;
        sealed.ok_or(TpmError::Command { op: "TPM2_Create", message: "no secret to seal".into() })
    }

    /// Seal in two steps, for a secret that exists only later (a rotated unlock key): load the
    /// SRK and start the salted session (TPM 2.0 Part 3, TPM2_CreatePrimary or the persistent
    /// SRK, TPM2_StartAuthSession), then call `secret` — which may block until the secret exists
    /// — and send TPM2_Create at once, with no other TPM round trip in between. `secret`
    /// returning `None` abandons the seal (`Ok(None)`); every handle is flushed on every path.
    ///
    /// Errors: as [`Tpm::seal`]; an error before `secret` was called means nothing was asked of
    /// the caller (the preparation failed: the caller may retry, see [`TpmError::is_retryable`]).
    pub fn seal_prepared(
        &mut self,
        policy: &Policy,
        secret: &mut dyn FnMut() -> Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Option<SealedObject>, TpmError> {
        let result = self.seal_op(policy, secret);
        result.map_err(|e| self.reached_through(e))
    }

    fn seal_op(
        &mut self,
        policy: &Policy,
        secret: &mut dyn FnMut() -> Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Option<SealedObject>, TpmError> {
        const OP: &str = "TPM2_Create";
        check_policy(OP, policy)?;
        let policy_digest = policy.digest();
        let template = sealed_object_template(&policy_digest)?;

        // Each guard releases its handle on every path; `tpm` is the innermost.
        let (mut srk_scope, srk_handle) = load_srk(&mut self.ctx)?;
        let srk_name = srk_scope.tr_get_name(srk_handle.into()).map_err(failed("Esys_TR_GetName"))?.value().to_vec();

        // Salted to the SRK, AES-128-CFB: inSensitive (the secret) is encrypted on the bus.
        let session = start_salted_session(&mut srk_scope, srk_handle, SessionType::Hmac)?;
        let mut tpm = Scoped::flush(&mut srk_scope, SessionHandle::from(session).into());
        set_session_attributes(&mut tpm, session, true, false)?;

        let Some(secret) = secret() else { return Ok(None) };
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(TpmError::Command {
                op: OP,
                message: format!("a sealed object holds 1 to {MAX_SECRET_LEN} bytes; the secret has {}", secret.len()),
            });
        }
        let sensitive = SensitiveData::try_from(secret.to_vec()).map_err(failed(OP))?;
        let created = tpm
            .execute_with_session(Some(session), |c| c.create(srk_handle, template, None, Some(sensitive), None, None))
            .map_err(failed(OP))?;

        // The TPM must have bound the object to exactly the policy we computed.
        if created.out_public.auth_policy().value() != policy_digest.as_slice() {
            return Err(TpmError::Command {
                op: OP,
                message: format!(
                    "the TPM assigned authPolicy {} but the policy is {}",
                    hex::encode(created.out_public.auth_policy().value()),
                    hex::encode(&policy_digest)
                ),
            });
        }
        Ok(Some(SealedObject {
            public: marshal_public(&created.out_public)?,
            private: tpm2b(created.out_private.value()),
            srk_name,
            policy_digest,
        }))
    }
}

/// Sealed data object (TPM 2.0 Part 1, 27.2.5): KEYEDHASH with a null scheme,
/// fixedTPM|fixedParent, no userWithAuth (the policy is the only way to use it),
/// nameAlg sha256, authPolicy = `policy_digest`.
fn sealed_object_template(policy_digest: &[u8]) -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(false)
        .with_admin_with_policy(false)
        .with_sensitive_data_origin(false) // the data comes from the caller
        .build()
        .map_err(failed("TPM2_Create"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(policy_digest.to_vec()).map_err(failed("TPM2_Create"))?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(failed("TPM2_Create"))
}

/// TPM2B framing: 2-byte big-endian size, then the bytes.
fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes inside a TPM2B, which must span exactly `bytes`.
fn untpm2b<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], TpmError> {
    match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => Ok(rest),
        _ => Err(TpmError::Command {
            op: "TPM2_Load",
            message: format!("the sealed object's {what} is damaged (not a TPM2B of {} bytes)", bytes.len()),
        }),
    }
}

fn marshal_public(public: &Public) -> Result<Vec<u8>, TpmError> {
    Ok(tpm2b(&public.marshall().map_err(failed("TPM2_Create"))?))
}

pub(crate) fn unmarshal_public(bytes: &[u8]) -> Result<Public, TpmError> {
    let inner = untpm2b("public area", bytes)?;
    Public::unmarshall(inner).map_err(|e| TpmError::Command {
        op: "TPM2_Load",
        message: format!("the sealed object's public area is damaged: {e}"),
    })
}

pub(crate) fn unmarshal_private(bytes: &[u8]) -> Result<Private, TpmError> {
    let inner = untpm2b("private area", bytes)?;
    Private::try_from(inner.to_vec()).map_err(|e| TpmError::Command {
        op: "TPM2_Load",
        message: format!("the sealed object's private area is damaged: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm2b_roundtrip_and_damage() {
        let b = tpm2b(&[1, 2, 3]);
        assert_eq!(b, vec![0, 3, 1, 2, 3]);
        assert_eq!(untpm2b("x", &b).unwrap(), &[1, 2, 3]);
        assert!(untpm2b("x", &b[..4]).is_err());
        assert!(untpm2b("x", &[]).is_err());
    }

    #[test]
    fn sealed_object_template_has_no_user_auth() {
        let t = sealed_object_template(&[0; 32]).unwrap();
        let a = t.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent() && !a.user_with_auth() && !a.admin_with_policy());
        assert_eq!(t.auth_policy().value(), &[0; 32]);
    }
}
