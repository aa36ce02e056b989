//! Unseal: TPM2_Load (TPM 2.0 Part 3, 12.2) of the sealed object under the SRK after its
//! Name is checked, a policy session salted to the SRK replaying the policy (TPM2_PolicyPCR,
//! Part 3 23.7; for a signed policy TPM2_PolicyAuthorize, 23.16, with the ticket from
//! `signature.rs`), then TPM2_Unseal (Part 3, 12.7) with the response encrypted.

use tss_esapi::constants::SessionType;
use tss_esapi::handles::SessionHandle;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, Nonce};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::context::{set_session_attributes, start_salted_session, Scoped, Tpm};
use crate::error::{failed, policy_or_command, TpmError};
use crate::pcr::{pcr_diffs, pcr_selection, PcrValues};
use crate::pcrsig::PcrSignatures;
use crate::policy::{check_policy, pcr_values_digest, Policy};
use crate::seal::{unmarshal_private, unmarshal_public, SealedObject};
use crate::signature::Approval;
use crate::srk::load_srk;

impl Tpm {
    /// Unseal `obj` under a `Pcr` policy (the same PCR values it was sealed with): TPM 2.0
    /// Part 3, TPM2_Load under the SRK, then a policy session salted to the SRK with
    /// AES-128-CFB response encryption, TPM2_PolicyPCR, TPM2_Unseal. An `Authorize` policy
    /// needs the signatures: [`Tpm::unseal_signed`].
    ///
    /// Errors: `SrkMismatch` when the SRK Name differs (other machine, or the TPM was
    /// cleared); `PolicyMismatch` listing every PCR whose current value differs from the
    /// sealed one (possibly none, when the object was sealed under another policy);
    /// `Command` for a damaged blob, an `Authorize` policy, or any other TPM failure;
    /// `Unavailable` when the TPM stops answering.
    pub fn unseal(&mut self, obj: &SealedObject, policy: &Policy) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.unseal_signed(obj, policy, None)
    }

    /// Unseal `obj` under `policy`; for an `Authorize` policy `signatures` must hold a
    /// signature by the policy's key over the current values of its signed PCRs.
    ///
    /// `Authorize` (TPM 2.0 Part 3): read the signed PCRs (TPM2_PCR_Read) and find their
    /// TPM2_PolicyPCR digest in `signatures`; TPM2_LoadExternal of the public key (owner
    /// hierarchy, public part only), TPM2_VerifySignature over SHA-256(digest) → ticket, key
    /// flushed; TPM2_Load of the object; in the salted policy session TPM2_PolicyPCR(signed
    /// PCRs), TPM2_PolicyAuthorize(digest, empty policyRef, key Name, ticket),
    /// TPM2_PolicyPCR(literal PCRs); TPM2_Unseal. Every handle is flushed on every path.
    ///
    /// Errors: as [`Tpm::unseal`], plus `NotSigned` naming the signed PCR values no signature
    /// covers (no `signatures` at all: the same, with an empty source), `BadSignature` when
    /// the TPM rejects the signature found; `PolicyMismatch` lists the literal PCRs that changed.
    pub fn unseal_signed(
        &mut self,
        obj: &SealedObject,
        policy: &Policy,
        signatures: Option<&PcrSignatures>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let result = self.unseal_op(obj, policy, signatures);
        result.map_err(|e| self.reached_through(e))
    }

    fn unseal_op(
        &mut self,
        obj: &SealedObject,
        policy: &Policy,
        signatures: Option<&PcrSignatures>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        check_policy("TPM2_PolicyPCR", policy)?;
        let approval = match policy {
            Policy::Pcr { .. } => None,
            Policy::Authorize { key, signed_pcrs, .. } => {
                let Some(signatures) = signatures else {
                    return Err(TpmError::Command {
                        op: "TPM2_PolicyAuthorize",
                        message: "the key is sealed to a signed PCR policy but no PCR signature file was given".into(),
                    });
                };
                let signed = self.read_pcrs(signed_pcrs)?;
                Some(self.approve(key, &signed, signatures)?)
            }
        };
        match self.unseal_session(obj, policy, approval) {
            Err(TpmError::PolicyMismatch { .. }) => {
                // Tell the operator which measurements changed, sealed vs current value.
                let values = policy.literal_values();
                let pcrs: Vec<u8> = values.keys().copied().collect();
                let current = self.read_pcrs(&pcrs)?;
                Err(TpmError::PolicyMismatch { changed: pcr_diffs(values, &current) })
            }
            other => other,
        }
    }

    /// The unseal sequence proper; a policy failure is returned as `PolicyMismatch` with no
    /// diffs ([`Tpm::unseal_signed`] fills them in once every handle is released).
    fn unseal_session(
        &mut self,
        obj: &SealedObject,
        policy: &Policy,
        approval: Option<Approval>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        // Each guard releases its handle on every path; `tpm` is the innermost.
        let (mut srk_scope, srk_handle) = load_srk(&mut self.ctx)?;
        let srk_name = srk_scope.tr_get_name(srk_handle.into()).map_err(failed("Esys_TR_GetName"))?;
        // A different SRK means a different TPM (the disk moved) or a cleared owner hierarchy.
        if srk_name.value() != obj.srk_name.as_slice() {
            return Err(TpmError::SrkMismatch);
        }

        let public = unmarshal_public(&obj.public)?;
        let private = unmarshal_private(&obj.private)?;
        // The policy we are asked to satisfy must be the one the object is bound to; if not,
        // the TPM would refuse anyway.
        if public.auth_policy().value() != policy.digest().as_slice() {
            return Err(TpmError::PolicyMismatch { changed: Vec::new() });
        }

        // The SRK has an empty auth value (userWithAuth): a password session suffices for Load.
        let object = srk_scope
            .execute_with_session(Some(AuthSession::Password), |c| c.load(srk_handle, private, public))
            .map_err(failed("TPM2_Load"))?;
        let mut object_scope = Scoped::flush(&mut srk_scope, object.into());

        // Salted to the SRK, AES-128-CFB: outData (the secret) is encrypted on the bus.
        let session = start_salted_session(&mut object_scope, srk_handle, SessionType::Policy)?;
        let mut tpm = Scoped::flush(&mut object_scope, SessionHandle::from(session).into());
        set_session_attributes(&mut tpm, session, false, true)?;
        let policy_session = PolicySession::try_from(session).map_err(failed("TPM2_StartAuthSession"))?;

        if let Some(a) = approval {
            // The signed PCRs as they are now; their digest must be the one the key approved.
            policy_pcr(&mut tpm, policy_session, &a.signed)?;
            tpm.execute_without_session(|c| {
                c.policy_authorize(policy_session, Digest::try_from(a.approved)?, Nonce::default(), &a.key_name, a.ticket)
            })
            .map_err(policy_or_command("TPM2_PolicyAuthorize"))?;
        }
        // The TPM compares the digest of the current PCR values with the sealed values' digest.
        let values = policy.literal_values();
        if !values.is_empty() {
            policy_pcr(&mut tpm, policy_session, values)?;
        }

        let data = tpm
            .execute_with_session(Some(session), |c| c.unseal(object.into()))
            .map_err(policy_or_command("TPM2_Unseal"))?;
        Ok(Zeroizing::new(data.value().to_vec()))
    }
}

/// TPM2_PolicyPCR (TPM 2.0 Part 3) over `values`: the TPM compares their digest with the
/// current values of those PCRs.
fn policy_pcr(ctx: &mut Context, session: PolicySession, values: &PcrValues) -> Result<(), TpmError> {
    const OP: &str = "TPM2_PolicyPCR";
    let digest = Digest::try_from(pcr_values_digest(values)).map_err(failed(OP))?;
    let selection = pcr_selection(&values.keys().copied().collect::<Vec<_>>()).map_err(failed(OP))?;
    ctx.execute_without_session(|c| c.policy_pcr(session, digest, selection)).map_err(policy_or_command(OP))
}
