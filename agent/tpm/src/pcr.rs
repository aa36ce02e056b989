//! PCR values and selections, and the two PCR commands: TPM2_PCR_Read (TPM 2.0 Part 3,
//! 22.4) and TPM2_PCR_Extend (Part 3, 22.2). Only the sha256 bank is used.

use sha2::{Digest as _, Sha256};
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues, PcrSelectSize, PcrSelectionList, PcrSelectionListBuilder, PcrSlot};

use crate::context::Tpm;
use crate::error::{failed, TpmError};

/// PCR values of one bank: index → digest (32 bytes for sha256).
pub use swarmseal_common::pcrpolicy::PcrValues;

/// Highest PCR index accepted (PC Client TPMs have 24 PCRs per bank: 0..=23).
pub const MAX_PCR: u8 = 23;

/// Size of one sha256 PCR value, in bytes.
pub(crate) const SHA256_LEN: usize = 32;

/// One PCR whose current value differs from the value at sealing time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PcrDiff {
    pub pcr: u8,
    /// hex
    pub sealed: String,
    /// hex
    pub current: String,
}

/// `PCR 11 sealed <hex> now <hex>`.
impl std::fmt::Display for PcrDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PCR {} sealed {} now {}", self.pcr, self.sealed, self.current)
    }
}

/// One PCR value, for messages: `PCR 11 = <hex>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PcrValue {
    pub pcr: u8,
    /// hex
    pub value: String,
}

impl std::fmt::Display for PcrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PCR {} = {}", self.pcr, self.value)
    }
}

/// `values` as [`PcrValue`]s, in index order.
pub fn pcr_value_list(values: &PcrValues) -> Vec<PcrValue> {
    values.iter().map(|(pcr, v)| PcrValue { pcr: *pcr, value: hex::encode(v) }).collect()
}

impl Tpm {
    /// Read `pcrs` from the sha256 bank (TPM 2.0 Part 3, TPM2_PCR_Read; at most 8 PCRs per
    /// command, so several commands when needed). Values are 32 bytes each.
    ///
    /// Errors: `Command` when an index is above 23 or the TPM has no sha256 bank for it;
    /// `Unavailable` when the TPM stops answering.
    pub fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<PcrValues, TpmError> {
        let result = self.read_pcrs_op(pcrs);
        result.map_err(|e| self.reached_through(e))
    }

    fn read_pcrs_op(&mut self, pcrs: &[u8]) -> Result<PcrValues, TpmError> {
        const OP: &str = "TPM2_PCR_Read";
        let mut wanted: Vec<u8> = pcrs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        check_indices(OP, &wanted)?;
        let mut out = PcrValues::new();
        while !wanted.is_empty() {
            let (_, selected, digests) =
                self.ctx.execute_without_session(|c| c.pcr_read(pcr_selection(&wanted)?)).map_err(failed(OP))?;
            // The TPM answers with the PCRs it read (at most 8) and their values in index order.
            let read: Vec<u8> = selected
                .get_selections()
                .iter()
                .filter(|s| s.hashing_algorithm() == HashingAlgorithm::Sha256)
                .flat_map(|s| s.selected())
                .map(slot_index)
                .collect();
            // Fail early: a TPM without the sha256 bank allocated cannot hold our policy.
            if read.is_empty() || read.len() != digests.value().len() {
                return Err(TpmError::Command {
                    op: OP,
                    message: format!(
                        "the TPM returned no sha256 value for PCR(s) {wanted:?}: is the sha256 PCR bank allocated?"
                    ),
                });
            }
            for (pcr, digest) in read.iter().zip(digests.value()) {
                out.insert(*pcr, digest.value().to_vec());
            }
            wanted.retain(|p| !read.contains(p));
        }
        Ok(out)
    }

    /// Extend `pcr` (0..=23) in the sha256 bank with SHA-256(`data`) (TPM 2.0 Part 3,
    /// TPM2_PCR_Extend): new = SHA-256(old || SHA-256(data)). Used to close the phase PCR
    /// after unlocking so the key cannot be unsealed again in this boot.
    ///
    /// Errors: `Command` for an index above 23 or a TPM failure; `Unavailable` when the TPM
    /// stops answering.
    pub fn extend(&mut self, pcr: u8, data: &[u8]) -> Result<(), TpmError> {
        let result = self.extend_op(pcr, data);
        result.map_err(|e| self.reached_through(e))
    }

    fn extend_op(&mut self, pcr: u8, data: &[u8]) -> Result<(), TpmError> {
        const OP: &str = "TPM2_PCR_Extend";
        check_indices(OP, &[pcr])?;
        let handle = PcrHandle::try_from(u32::from(pcr)).map_err(failed(OP))?;
        let mut digests = DigestValues::new();
        digests.set(HashingAlgorithm::Sha256, Digest::try_from(Sha256::digest(data).to_vec()).map_err(failed(OP))?);
        // PCRs have an empty auth value: a password session is the authorization.
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.pcr_extend(handle, digests))
            .map_err(failed(OP))
    }
}

/// Every PCR of `sealed` whose value in `current` differs (or is missing).
pub fn pcr_diffs(sealed: &PcrValues, current: &PcrValues) -> Vec<PcrDiff> {
    sealed
        .iter()
        .filter(|(pcr, value)| current.get(pcr) != Some(value))
        .map(|(pcr, value)| PcrDiff {
            pcr: *pcr,
            sealed: hex::encode(value),
            current: current.get(pcr).map(hex::encode).unwrap_or_else(|| "(unreadable)".into()),
        })
        .collect()
}

pub(crate) fn check_indices(op: &'static str, pcrs: &[u8]) -> Result<(), TpmError> {
    match pcrs.iter().find(|&&p| p > MAX_PCR) {
        Some(p) => {
            Err(TpmError::Command { op, message: format!("PCR {p} does not exist: PCR indices are 0 to {MAX_PCR}") })
        }
        None => Ok(()),
    }
}

pub(crate) fn check_values(op: &'static str, values: &PcrValues) -> Result<(), TpmError> {
    if values.is_empty() {
        return Err(TpmError::Command { op, message: "the PCR policy selects no PCR".into() });
    }
    check_indices(op, &values.keys().copied().collect::<Vec<_>>())?;
    if let Some((pcr, v)) = values.iter().find(|(_, v)| v.len() != SHA256_LEN) {
        return Err(TpmError::Command {
            op,
            message: format!("the value given for PCR {pcr} has {} bytes; a sha256 PCR has {SHA256_LEN}", v.len()),
        });
    }
    Ok(())
}

pub(crate) fn pcr_selection(pcrs: &[u8]) -> tss_esapi::Result<PcrSelectionList> {
    let slots = pcrs.iter().map(|&p| PcrSlot::try_from(1u32 << p)).collect::<tss_esapi::Result<Vec<_>>>()?;
    PcrSelectionListBuilder::new()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
}

fn slot_index(slot: PcrSlot) -> u8 {
    u32::from(slot).trailing_zeros() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_each_changed_pcr_with_both_values() {
        let sealed = PcrValues::from([(7, vec![1; 32]), (11, vec![2; 32])]);
        let current = PcrValues::from([(7, vec![1; 32]), (11, vec![3; 32])]);
        let d = pcr_diffs(&sealed, &current);
        assert_eq!(d, vec![PcrDiff { pcr: 11, sealed: hex::encode([2; 32]), current: hex::encode([3; 32]) }]);
        let msg = TpmError::PolicyMismatch { changed: d }.to_string();
        assert!(msg.contains("PCR 11") && msg.contains(&hex::encode([3; 32])), "{msg}");
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(check_values("t", &PcrValues::new()).is_err());
        assert!(check_values("t", &PcrValues::from([(24, vec![0; 32])])).is_err());
        assert!(check_values("t", &PcrValues::from([(7, vec![0; 20])])).is_err());
        assert!(check_values("t", &PcrValues::from([(7, vec![0; 32])])).is_ok());
    }
}
