//! The phase lock: after a boot's unlock decision the agent extends `tpm.phase_pcr` (default
//! PCR 11) with SHA-256([`PHASE_MARKER`]), so the sealed key cannot be unsealed again until the
//! next boot. Whether this boot is locked is decided by [`Ctx::locked_phase`] only; whether an
//! unlock attempt locks it by [`consumes_unlock`] only.

use sha2::{Digest, Sha256};

use super::{BootError, Ctx};
use crate::keystore::{pcrs_from_hex, pcrs_to_hex, KeystoreError, PhaseRecord};
use crate::tpm::{PcrValues, TpmError};

/// What the phase PCR is extended with (its SHA-256 is the extend digest).
pub use swarmseal_common::pcrpolicy::PHASE_MARKER;

/// Whether the outcome of a boot's unlock attempt consumes that boot's unlock (the phase lock
/// follows): success, a TPM refusal (policy, signature, another SRK), a TPM failure that is not
/// transient, an engine that rejected or lost the unsealed key. Not: the TPM did not answer or
/// answered "busy" ([`TpmError::is_retryable`]: retried, the phase stays open), nothing could be
/// tried (no sealed key, unreadable slot files), or the phase is locked already.
/// The one rule for `swarmseal unlock` and the agent.
pub fn consumes_unlock<T>(outcome: &Result<T, BootError>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(BootError::Tpm(e)) => !e.is_retryable(),
        Err(BootError::Keystore(KeystoreError::NoSealedKey { .. } | KeystoreError::Corrupt { .. }) | BootError::PhaseLocked { .. }) => false,
        Err(_) => true,
    }
}

impl Ctx {
    /// The PCR values this boot will show again on the next boot of the same
    /// chain: the current values, unless the phase lock already happened in
    /// this boot, then the recorded pre-lock values. Second: whether this
    /// boot is phase-locked.
    pub async fn boot_pcrs(&self) -> Result<(PcrValues, bool), TpmError> {
        let current = self.read_policy_pcrs().await?;
        Ok(match self.locked_phase(&current) {
            Some(before) => (before, true),
            None => (current, false),
        })
    }

    /// The phase-lock decision, the one place it is made: this boot is locked when the policy
    /// PCRs read now (`current`) equal the "after" values of a phase record (the runtime dir's
    /// or the state dir's). Returns the recorded "before" values then (what the next boot shows
    /// again), or `current` itself when no locked record has readable ones. `None`: not locked.
    pub fn locked_phase(&self, current: &PcrValues) -> Option<PcrValues> {
        let locked: Vec<PhaseRecord> = self.ks.load_phases().into_iter().filter(|rec| pcrs_from_hex(&rec.after).as_ref() == Some(current)).collect();
        if locked.is_empty() {
            return None;
        }
        Some(locked.iter().find_map(|rec| pcrs_from_hex(&rec.before)).unwrap_or_else(|| current.clone()))
    }

    /// After an unlock attempt: extend the phase PCR when the attempt consumed this boot's
    /// unlock ([`consumes_unlock`]). Returns whether it did; errors are [`Ctx::phase_lock`]'s.
    pub async fn lock_phase_if_consumed<T>(&self, outcome: &Result<T, BootError>) -> Result<bool, BootError> {
        if !consumes_unlock(outcome) {
            return Ok(false);
        }
        self.phase_lock().await.map(|()| true)
    }

    /// Extend the phase PCR once per boot. TPM 2.0 Part 3, TPM2_PCR_Extend.
    ///
    /// Fails closed: the record (PCR values before and after) is written first, to the runtime
    /// dir and the state dir, and the PCR is extended whether or not either write worked — a
    /// full state dir cannot leave the key unsealable for the rest of the boot. The record goes
    /// first so that a crash between the two cannot leave an extended PCR without a record
    /// (sealing later in the boot would then seal to the locked value); the `/run` copy keeps
    /// that working when the state dir is full. Errors: the TPM's; a record written nowhere.
    pub async fn phase_lock(&self) -> Result<(), BootError> {
        let current = self.read_policy_pcrs().await?;
        if self.locked_phase(&current).is_some() {
            return Ok(());
        }
        let pcr = self.cfg.tpm.phase_pcr;
        let mut after = current.clone();
        let old = current.get(&pcr).cloned().unwrap_or_else(|| vec![0; 32]);
        let mut h = Sha256::new();
        h.update(&old);
        h.update(Sha256::digest(PHASE_MARKER));
        after.insert(pcr, h.finalize().to_vec());
        let rec = PhaseRecord { format: "swarmseal.phase".into(), version: 1, phase_pcr: pcr, before: pcrs_to_hex(&current), after: pcrs_to_hex(&after) };
        let ks = self.ks.clone();
        let recorded = super::blocking(move || ks.store_phase(&rec)).await;
        // Not retried: an extend that reached the TPM before the connection failed would be doubled.
        self.tpm(move |t| t.extend(pcr, PHASE_MARKER)).await?;
        tracing::info!(event = "phase_lock", pcr, "phase PCR extended: the key cannot be unsealed again until the next boot");
        match recorded {
            Ok(None) => Ok(()),
            Ok(Some(e)) => {
                tracing::warn!(event = "phase_record_partial", error = %e, "the phase record was written to one place only; sealing later in this boot still works");
                Ok(())
            }
            Err(e) => {
                tracing::error!(event = "phase_record_failed", error = %e, "the phase PCR is extended but its record was written nowhere: sealing later in this boot would seal to the locked value; reboot before resealing");
                Err(e.into())
            }
        }
    }}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcrs(v: u8) -> PcrValues {
        [(7u8, vec![1; 32]), (11u8, vec![v; 32])].into_iter().collect()
    }

    /// Locked exactly when a record's "after" values are the PCRs now; its "before" values are
    /// what sealing uses then. A record whose "before" is unreadable still locks (the stricter
    /// reading: no unseal), and sealing falls back to the values now.
    #[test]
    fn the_phase_is_locked_when_a_records_after_values_are_the_pcrs_now() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::default();
        cfg.state_dir = d.path().join("state");
        cfg.runtime_dir = d.path().join("run");
        let ctx = Ctx::new(&cfg);
        assert_eq!(ctx.locked_phase(&pcrs(2)), None, "no record: open");
        let rec = |before: PcrValues, after: PcrValues| PhaseRecord { format: "swarmseal.phase".into(), version: 1, phase_pcr: 11, before: pcrs_to_hex(&before), after: pcrs_to_hex(&after) };
        ctx.ks.store_phase(&rec(pcrs(1), pcrs(2))).unwrap();
        assert_eq!(ctx.locked_phase(&pcrs(2)), Some(pcrs(1)));
        assert_eq!(ctx.locked_phase(&pcrs(3)), None, "another boot's record: open");
        let mut bad = rec(pcrs(1), pcrs(2));
        bad.before.insert("11".into(), "not hex".into());
        ctx.ks.store_phase(&bad).unwrap();
        assert_eq!(ctx.locked_phase(&pcrs(2)), Some(pcrs(2)), "an unreadable 'before' still locks");
    }
}
