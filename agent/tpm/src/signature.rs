//! Signed PCR policies, the TPM's side: find the signature over this boot's PCR policy in
//! systemd's signature file (`pcrsig`) and have the TPM verify it (TPM 2.0 Part 3, 12.3
//! TPM2_LoadExternal and 20.1 TPM2_VerifySignature), giving the ticket
//! TPM2_PolicyAuthorize needs in `unseal.rs`.

use sha2::{Digest as _, Sha256};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{Digest, Name};

use crate::context::{Scoped, Tpm};
use crate::error::{failed, TpmError};
use crate::pcr::{check_values, pcr_value_list, PcrValues};
use crate::pcrsig::{PcrPublicKey, PcrSignatures};
use crate::policy::pcr_policy_digest;

/// Hierarchy the PCR-signing public key is loaded into (TPM2_LoadExternal). Not the null
/// hierarchy: TPM2_VerifySignature with a key there returns a NULL ticket, which
/// TPM2_PolicyAuthorize rejects (TPM 2.0 Part 3, 20.1 and 23.16). The owner hierarchy needs
/// no authorization to load a public key (systemd does the same).
const SIGNING_KEY_HIERARCHY: Hierarchy = Hierarchy::Owner;

impl Tpm {
    /// Check that `signatures` approve `signed` (the values of the signed PCRs the next boot
    /// will show) for `key`: the entry exists and the TPM verifies its signature (TPM 2.0
    /// Part 3, TPM2_LoadExternal + TPM2_VerifySignature; the key is flushed again). Used before
    /// sealing an `Authorize` policy, so a boot that could never unseal it is refused first.
    ///
    /// Errors: `NotSigned`, `BadSignature`, `Command`, `Unavailable` (see [`Tpm::unseal_signed`]).
    pub fn verify_signed_policy(
        &mut self,
        key: &PcrPublicKey,
        signed: &PcrValues,
        signatures: &PcrSignatures,
    ) -> Result<(), TpmError> {
        let result = self.approve(key, signed, signatures).map(|_| ());
        result.map_err(|e| self.reached_through(e))
    }

    /// Find the signature over the PolicyPCR digest of `signed` and have the TPM verify it.
    pub(crate) fn approve(&mut self, key: &PcrPublicKey, signed: &PcrValues, signatures: &PcrSignatures) -> Result<Approval, TpmError> {
        const OP: &str = "TPM2_VerifySignature";
        check_values(OP, signed)?;
        let pcrs: Vec<u8> = signed.keys().copied().collect();
        let pkfp = key.fingerprint();
        let approved = pcr_policy_digest(signed);
        // No entry: this boot's signed PCR values were never approved by the fleet key.
        let Some(entry) = signatures.find(&pcrs, &pkfp, &approved) else {
            return Err(TpmError::NotSigned {
                file: signatures.source.clone(),
                key: hex::encode(&pkfp),
                signed: pcr_value_list(signed),
                by_key: signatures.count_by_key(&pcrs, &pkfp),
            });
        };
        let bad = |message: String| TpmError::BadSignature {
            file: signatures.source.clone(),
            key: hex::encode(&pkfp),
            signed: pcr_value_list(signed),
            message,
        };
        let signature = key.tpm_signature(&entry.sig).map_err(bad)?;
        // TPM2_VerifySignature checks a signature over a digest: aHash = H(approvedPolicy || policyRef).
        let a_hash = Digest::try_from(Sha256::digest(&approved).to_vec()).map_err(failed(OP))?;

        let handle = self
            .ctx
            .execute_without_session(|c| c.load_external_public(key.tpm_public(), SIGNING_KEY_HIERARCHY))
            .map_err(failed("TPM2_LoadExternal"))?;
        let mut tpm = Scoped::flush(&mut self.ctx, handle.into());
        let name = tpm.tr_get_name(handle.into()).map_err(failed("Esys_TR_GetName"))?;
        // The Name the sealed policy is bound to is computed without a TPM; it must be the TPM's.
        if name.value() != key.name().as_slice() {
            return Err(TpmError::Command {
                op: "TPM2_LoadExternal",
                message: format!(
                    "the TPM names the PCR signing key {} but swarmseal computed {}",
                    hex::encode(name.value()),
                    hex::encode(key.name())
                ),
            });
        }
        let ticket = match tpm.execute_without_session(|c| c.verify_signature(handle, a_hash, signature)) {
            Ok(t) => t,
            // TPM_RC_SIGNATURE (and TPM_RC_VALUE for a malformed one): not the key's signature.
            Err(e @ tss_esapi::Error::Tss2Error(_)) => return Err(bad(e.to_string())),
            Err(e) => return Err(failed(OP)(e)),
        };
        Ok(Approval { approved, key_name: name, ticket, signed: signed.clone() })
    }
}

/// A signature the TPM verified: what TPM2_PolicyAuthorize needs.
pub(crate) struct Approval {
    /// The approved TPM2_PolicyPCR digest (the signature file's `pol`).
    pub(crate) approved: Vec<u8>,
    pub(crate) key_name: Name,
    pub(crate) ticket: tss_esapi::structures::VerifiedTicket,
    /// The signed PCR values `approved` was computed from.
    pub(crate) signed: PcrValues,
}
