//! Seal and unseal the unlock key in a TPM 2.0 (skeleton: the TPM helper fills this in).
//!
//! Interface contract used by `keystore`, `boot` and `cli`; see the docs on each item.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

/// PCR values of one bank: index → digest (32 bytes for sha256).
pub type PcrValues = BTreeMap<u8, Vec<u8>>;

/// One PCR whose current value differs from the value at sealing time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PcrDiff {
    pub pcr: u8,
    /// hex
    pub sealed: String,
    /// hex
    pub current: String,
}

/// What the TPM holds for one sealed unlock key (TPM 2.0 Part 3, TPM2_Create outputs),
/// plus what is needed to load and check it. No secret in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedObject {
    /// Marshalled TPM2B_PUBLIC of the sealed KEYEDHASH object.
    pub public: Vec<u8>,
    /// Marshalled TPM2B_PRIVATE (encrypted by the SRK).
    pub private: Vec<u8>,
    /// Name of the SRK (parent) at sealing time; checked before unsealing.
    pub srk_name: Vec<u8>,
    /// The object's authPolicy digest.
    pub policy_digest: Vec<u8>,
}

/// The policy a key is sealed under. `Pcr` is the only kind implemented;
/// the format reserves `Authorize` for signed PCR policies (TPM2_PolicyAuthorize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// TPM2_PolicyPCR over `values` in the sha256 bank.
    Pcr { values: PcrValues },
}

/// TPM errors. `Display` is the operator sentence.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("cannot reach the TPM through TCTI `{tcti}`: {message}")]
    Unavailable { tcti: String, message: String },
    #[error("the TPM refused to unseal: the boot measurements changed since sealing ({})", describe_diffs(.changed))]
    PolicyMismatch { changed: Vec<PcrDiff> },
    #[error("the storage root key (SRK) differs from the one the key was sealed under: this disk was sealed on a different machine or the TPM was cleared")]
    SrkMismatch,
    #[error("the TPM operation {op} failed: {message}")]
    Command { op: &'static str, message: String },
}

fn describe_diffs(d: &[PcrDiff]) -> String {
    if d.is_empty() {
        return "no PCR in the policy differs from its sealed value; the policy digest itself differs".into();
    }
    d.iter().map(|x| format!("PCR {} sealed {} now {}", x.pcr, x.sealed, x.current)).collect::<Vec<_>>().join("; ")
}

/// An open TPM context.
pub struct Tpm {
    _private: (),
}

impl Tpm {
    pub fn open(_tcti: &str) -> Result<Tpm, TpmError> {
        unimplemented!()
    }
    pub fn read_pcrs(&mut self, _pcrs: &[u8]) -> Result<PcrValues, TpmError> {
        unimplemented!()
    }
    pub fn seal(&mut self, _secret: &[u8], _policy: &Policy) -> Result<SealedObject, TpmError> {
        unimplemented!()
    }
    pub fn unseal(&mut self, _obj: &SealedObject, _policy: &Policy) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        unimplemented!()
    }
    pub fn extend(&mut self, _pcr: u8, _data: &[u8]) -> Result<(), TpmError> {
        unimplemented!()
    }
}

/// PolicyPCR digest starting from the empty policy (TPM 2.0 Part 3, 23.7).
pub fn pcr_policy_digest(_values: &PcrValues) -> Vec<u8> {
    unimplemented!()
}
