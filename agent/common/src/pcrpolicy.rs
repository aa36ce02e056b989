//! Pure TPM policy math and systemd's PCR signature file, usable without a TPM or libtss2
//! (the appliance's `swarmseal-tpm` and the operator's `fleet attest` share them):
//! the TPM2_PolicyPCR digest (TPM 2.0 Part 3, 23.7) and the `tpm2-pcr-signature.json`
//! entries `systemd-measure sign` writes (format: `swarmseal_tpm::pcrsig`).

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// What the agent extends its phase PCR with after a boot's unlock decision (the extend
/// digest is its SHA-256): the key cannot be unsealed again until the next boot.
pub const PHASE_MARKER: &[u8] = b"swarmseal:unlocked:v1";

/// PCR values of one bank: index → digest (32 bytes for sha256).
pub type PcrValues = BTreeMap<u8, Vec<u8>>;

/// Highest PCR index of a PC Client TPM (24 PCRs per bank: 0..=23).
const MAX_PCR: u8 = 23;
/// TPM_CC_PolicyPCR (TPM 2.0 Part 2, table 12).
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// TPM_ALG_SHA256 (TPM 2.0 Part 2, table 9).
pub const TPM_ALG_SHA256: u16 = 0x000B;

/// PolicyPCR digest starting from the empty policy (TPM 2.0 Part 3, 23.7 TPM2_PolicyPCR):
/// `SHA-256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(values in index order))`,
/// the selection being one sha256 entry with a 3-octet bitmap (4 octets if an index is above 23).
/// This is also the `pol` systemd-measure signs for PCR 11.
/// Returns 32 bytes. Pure: no TPM involved.
pub fn pcr_policy_digest(values: &PcrValues) -> Vec<u8> {
    policy_pcr_update(&[0u8; 32], values)
}

/// `SHA-256(previous || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(values))`.
pub fn policy_pcr_update(previous: &[u8], values: &PcrValues) -> Vec<u8> {
    let size_of_select = if values.keys().any(|&p| p > MAX_PCR) { 4 } else { 3 };
    let mut select = vec![0u8; size_of_select];
    for &pcr in values.keys() {
        if let Some(octet) = select.get_mut(usize::from(pcr / 8)) {
            *octet |= 1 << (pcr % 8);
        }
    }
    let mut h = Sha256::new();
    h.update(previous);
    h.update(TPM_CC_POLICY_PCR.to_be_bytes());
    h.update(1u32.to_be_bytes()); // TPML_PCR_SELECTION.count
    h.update(TPM_ALG_SHA256.to_be_bytes()); // TPMS_PCR_SELECTION.hash
    h.update([size_of_select as u8]);
    h.update(&select);
    h.update(pcr_values_digest(values));
    h.finalize().to_vec()
}


/// SHA-256 of the PCR values concatenated in index order (pcrDigest of TPM2_PolicyPCR).
pub fn pcr_values_digest(values: &PcrValues) -> Vec<u8> {
    let mut h = Sha256::new();
    for v in values.values() {
        h.update(v);
    }
    h.finalize().to_vec()
}

/// Errors reading the PCR public key or the signature file. `Display` names the file.
#[derive(Debug, thiserror::Error)]
pub enum PcrSigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not usable: {message}")]
    Invalid { path: String, message: String },
}

/// One signed policy of the signature file (sha256 bank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    /// The PCRs the policy covers (systemd-measure: `[11]`), ascending.
    pub pcrs: Vec<u8>,
    /// SHA-256 fingerprint of the signing key (`PcrPublicKey::fingerprint`, 32 bytes).
    pub pkfp: Vec<u8>,
    /// The signed TPM2_PolicyPCR digest (32 bytes).
    pub pol: Vec<u8>,
    /// The signature over SHA-256(`pol`).
    pub sig: Vec<u8>,
}

/// The sha256 entries of a signature file, and where they came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSignatures {
    /// The file (or other source) the entries were read from.
    pub source: String,
    pub entries: Vec<SignedPolicy>,
}

impl PcrSignatures {
    /// Read a signature file, e.g. `/run/systemd/tpm2-pcr-signature.json`.
    ///
    /// Errors: `Read` when the file cannot be read; `Invalid` when it is not systemd's JSON format.
    pub fn load(path: &Path) -> Result<PcrSignatures, PcrSigError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PcrSigError::Read { path: name.clone(), source })?;
        PcrSignatures::parse(&bytes, &name)
    }

    /// Parse systemd's signature JSON; `source` names it in errors. Entries lacking a field
    /// are skipped (as systemd does); a field that is there but malformed is an error.
    pub fn parse(json: &[u8], source: &str) -> Result<PcrSignatures, PcrSigError> {
        #[derive(serde::Deserialize)]
        struct Entry {
            pcrs: Option<Vec<u8>>,
            pkfp: Option<String>,
            pol: Option<String>,
            sig: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            sha256: Vec<Entry>,
        }
        let bad = |message: String| PcrSigError::Invalid { path: source.to_string(), message };
        let file: File = serde_json::from_slice(json)
            .map_err(|e| bad(format!("not a systemd PCR signature file (JSON {{\"sha256\": [{{\"pcrs\", \"pkfp\", \"pol\", \"sig\"}}]}}): {e}")))?;
        let mut entries = Vec::new();
        for (i, e) in file.sha256.into_iter().enumerate() {
            let (Some(mut pcrs), Some(pkfp), Some(pol), Some(sig)) = (e.pcrs, e.pkfp, e.pol, e.sig) else { continue };
            pcrs.sort_unstable();
            pcrs.dedup();
            let hex_field = |name: &str, v: &str| hex::decode(v).map_err(|_| bad(format!("sha256 entry {i}: `{name}` is not hex")));
            entries.push(SignedPolicy {
                pcrs,
                pkfp: hex_field("pkfp", &pkfp)?,
                pol: hex_field("pol", &pol)?,
                sig: B64.decode(sig.trim()).map_err(|_| bad(format!("sha256 entry {i}: `sig` is not base64")))?,
            });
        }
        Ok(PcrSignatures { source: source.to_string(), entries })
    }

    /// The entry over exactly `pcrs` (ascending) by the key with fingerprint `pkfp` for the
    /// policy digest `pol`, if any.
    pub fn find(&self, pcrs: &[u8], pkfp: &[u8], pol: &[u8]) -> Option<&SignedPolicy> {
        self.entries.iter().find(|e| e.pcrs == pcrs && e.pkfp == pkfp && e.pol == pol)
    }

    /// How many entries over `pcrs` the key with fingerprint `pkfp` signed (any policy).
    pub fn count_by_key(&self, pcrs: &[u8], pkfp: &[u8]) -> usize {
        self.entries.iter().filter(|e| e.pcrs == pcrs && e.pkfp == pkfp).count()
    }
}

