//! [`TpmError`] and the mapping of TSS response codes to it: unreachable TPM, transient
//! warnings (retry), policy refusals, other command failures (TPM 2.0 Part 2, 6.6 response
//! codes; TCG TSS 2.0 Overview, TSS2_RC layers).

use tss_esapi::constants::response_code::Tss2ResponseCodeKind;

use crate::pcr::{PcrDiff, PcrValue};

/// TPM errors. `Display` is the operator sentence.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("cannot reach the TPM through TCTI `{tcti}`: {message}")]
    Unavailable { tcti: String, message: String },
    #[error("the TPM refused to unseal: the boot measurements changed since sealing ({})", describe_diffs(.changed))]
    PolicyMismatch { changed: Vec<PcrDiff> },
    #[error("the storage root key (SRK) differs from the one the key was sealed under: this disk was sealed on a different machine or the TPM was cleared. Unlock with the escrowed key (`age -d -i KEY <state_dir>/escrow/unlock-key.age | swarmseal unlock --manual`) or the operator's copy: that reseals it to this TPM")]
    SrkMismatch,
    /// Signed PCR policy: the signature file has no entry by the key for the current values.
    #[error("{} is not signed: {file} holds no signature by the PCR signing key {key} for it ({})", list_values(.signed), describe_key_entries(*.by_key))]
    NotSigned { file: String, key: String, signed: Vec<PcrValue>, by_key: usize },
    /// Signed PCR policy: the entry is there but the TPM says its signature is not the key's.
    #[error("the signature in {file} for {} does not verify with the PCR signing key {key} (TPM2_VerifySignature: {message}): the file is damaged or forged", list_values(.signed))]
    BadSignature { file: String, key: String, signed: Vec<PcrValue>, message: String },
    /// Credential activation: the EK the TPM derives from the TCG default template is not the
    /// key of its EK certificate.
    #[error("{message}")]
    EkMismatch { message: String },
    /// Credential activation: the TPM refused the credential blob or its secret (or they were
    /// malformed): made for another EK or another AK Name, or altered.
    #[error("credential activation refused: {message}")]
    ActivationRefused { message: String },
    #[error("the TPM operation {op} failed: {message}")]
    Command { op: &'static str, message: String },
    /// A transient TPM condition (TPM 2.0 Part 2, 6.6.3 format-zero warnings: TPM_RC_RETRY,
    /// TPM_RC_YIELDED, TPM_RC_TESTING, TPM_RC_OBJECT_MEMORY, TPM_RC_SESSION_MEMORY, …): the
    /// command did nothing and may succeed when repeated.
    #[error("the TPM is busy: {op} answered {message}; nothing was consumed, retry in a moment (a TPM without a resource manager fills up when another program leaves objects loaded: `tpm2_flushcontext -t`)")]
    Busy { op: &'static str, message: String },
}

impl TpmError {
    /// True when repeating the operation may succeed: the TPM did not answer (`Unavailable`)
    /// or answered with a transient warning (`Busy`). A refusal (policy, signature, SRK) is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TpmError::Unavailable { .. } | TpmError::Busy { .. })
    }
}

fn list_values(v: &[PcrValue]) -> String {
    v.iter().map(PcrValue::to_string).collect::<Vec<_>>().join(", ")
}

fn describe_key_entries(n: usize) -> String {
    match n {
        0 => "it holds no signature by that key at all: the image was signed with another key, or not for this policy".into(),
        n => format!("that key signed {n} other value(s): this boot's image (UKI) is not one it signed, or the PCR was extended since"),
    }
}

fn describe_diffs(d: &[PcrDiff]) -> String {
    if d.is_empty() {
        return "no PCR in the policy differs from its sealed value; the policy digest itself differs".into();
    }
    d.iter().map(PcrDiff::to_string).collect::<Vec<_>>().join("; ")
}


/// Map a TSS error to `TpmError::Command` for the TPM command `op`, or to `Unavailable`
/// when the TPM could not be reached (TCTI layer: device gone, swtpm stopped) or an earlier
/// command lost the connection; the public methods fill in the TCTI string.
pub(crate) fn failed(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |e| match tss_raw_code(&e) {
        Some(rc) if rc >> 16 == TSS2_TCTI_LAYER => TpmError::Unavailable {
            tcti: String::new(),
            message: format!(
                "the TPM stopped answering during {op} (TCTI error {rc:#x}); check the TPM device or the software TPM"
            ),
        },
        // ESAPI refuses every command after a lost connection (TSS2_ESYS_RC_BAD_SEQUENCE).
        Some(TSS2_ESYS_RC_BAD_SEQUENCE) => TpmError::Unavailable {
            tcti: String::new(),
            message: format!("{op} was not sent: the connection to the TPM was lost earlier; open the TPM again"),
        },
        Some(rc) if rc >> 16 == 0 && TPM_RC_TRANSIENT.contains(&(rc & 0xFFFF)) => {
            TpmError::Busy { op, message: format!("{e} (TSS2_RC {rc:#x})") }
        }
        Some(rc) => TpmError::Command { op, message: format!("{e} (TSS2_RC {rc:#x})") },
        None => TpmError::Command { op, message: e.to_string() },
    }
}

/// TPM format-zero warnings that mean "not now" (TPM 2.0 Part 2, table 16): CONTEXT_GAP,
/// OBJECT_MEMORY, SESSION_MEMORY, MEMORY, SESSION_HANDLES, OBJECT_HANDLES, YIELDED, CANCELED,
/// TESTING, RETRY. TPM layer (bits 16..23 zero) only.
const TPM_RC_TRANSIENT: [u32; 10] = [0x901, 0x902, 0x903, 0x904, 0x905, 0x906, 0x908, 0x909, 0x90A, 0x922];

/// TSS2_RC layer of the TCTI (TCG TSS 2.0 Overview, "TSS2_RC layers": bits 16..23).
const TSS2_TCTI_LAYER: u32 = 10;
/// TSS2_ESYS_RC_BAD_SEQUENCE: ESAPI layer (7), TSS2_BASE_RC_BAD_SEQUENCE (7).
const TSS2_ESYS_RC_BAD_SEQUENCE: u32 = 0x0007_0007;

/// The raw TSS2_RC of a TSS error. tss-esapi 7.7 shows it only in `Debug`
/// (`FormatZeroResponseCode { .0: 655370, … }`), so it is read from there.
fn tss_raw_code(e: &tss_esapi::Error) -> Option<u32> {
    let debug = format!("{e:?}");
    debug.split(".0: ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// True when the TPM refused because the PCRs do not satisfy the policy:
/// TPM_RC_VALUE from TPM2_PolicyPCR (the PCR digest differs), TPM_RC_POLICY_FAIL from
/// TPM2_Unseal (the session digest differs from authPolicy).
fn is_policy_failure(e: &tss_esapi::Error) -> bool {
    match e {
        tss_esapi::Error::Tss2Error(rc) => matches!(rc.kind(), Some(Tss2ResponseCodeKind::Value | Tss2ResponseCodeKind::PolicyFail)),
        tss_esapi::Error::WrapperError(_) => false,
    }
}

/// True for TPM_RC_PCR_CHANGED (TPM 2.0 Part 2, table 16; Part 3, TPM2_Unseal with a policy
/// session): some PCR, in the policy or not, was extended between TPM2_PolicyPCR and the
/// command. Not a refusal: on the appliance the kernel's IMA measures every module load into
/// PCR 10 (dockerd loads modules around the agent's unseal), so a new session succeeds.
fn is_pcr_changed(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::PcrChanged))
}

/// Map a TSS error from a policy command or TPM2_Unseal: a policy refusal becomes
/// `PolicyMismatch` (no diffs yet), TPM_RC_PCR_CHANGED becomes `Busy` (a new session
/// succeeds), anything else as [`failed`].
pub(crate) fn policy_or_command(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |e| {
        if is_policy_failure(&e) {
            TpmError::PolicyMismatch { changed: Vec::new() }
        } else if is_pcr_changed(&e) {
            TpmError::Busy { op, message: "TPM_RC_PCR_CHANGED: a PCR was extended during the policy session (e.g. IMA measuring a kernel module into PCR 10); a new session is started".into() }
        } else {
            failed(op)(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TPM_RC_PCR_CHANGED (0x128) during a policy session is retried with a new session
    /// (`Busy`), never a policy refusal that would consume the boot's unlock; TPM_RC_VALUE
    /// from TPM2_PolicyPCR (format one, parameter 1: 0x1C4) and TPM_RC_POLICY_FAIL from
    /// TPM2_Unseal (session 1: 0x99D) stay refusals.
    #[test]
    fn pcr_changed_is_retried_policy_failures_are_refusals() {
        use tss_esapi::constants::response_code::Tss2ResponseCode;
        let rc = |code: u32| tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(code));
        let e = policy_or_command("TPM2_Unseal")(rc(0x128));
        assert!(matches!(e, TpmError::Busy { .. }) && e.is_retryable(), "{e:?}");
        for code in [0x1C4, 0x99D] {
            let e = policy_or_command("TPM2_Unseal")(rc(code));
            assert!(matches!(e, TpmError::PolicyMismatch { .. }) && !e.is_retryable(), "{code:#x}: {e:?}");
        }
    }
}
