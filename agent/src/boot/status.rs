//! The status document ([`Status`]: `swarmseal status --json`, `GET /swarmseal/v1/status`)
//! and the facts the bench's appliance checks read.

use swarmseal_common::status::{self as doc, Status};

use super::Ctx;
use crate::config::Config;
use crate::keystore::{pcrs_to_hex, Slot};
use crate::swarm::{Engine, NodeState};
use super::seal::{describe_pcrs, diff_pcrs};
use crate::pcrsig::PcrSignatures;
use crate::tpm::{PcrValues, Policy, TpmError};

/// Gather the status document. Never fails: what cannot be read is `null` or an `error` field.
pub async fn status(ctx: &Ctx) -> Status {
    status_and_engine_error(ctx).await.0
}

/// [`status`], and the engine's error when it did not answer (the document keeps only its
/// text; `swarmseal status` turns the error into its exit code without asking again).
pub async fn status_and_engine_error(ctx: &Ctx) -> (Status, Option<crate::swarm::SwarmError>) {
    // Whether `current` holds the engine's key (None: the engine's key is not readable now).
    let mut stale = None;
    let mut engine_error = None;
    let mut unreachable = |err: crate::swarm::SwarmError| {
        let error = err.to_string();
        engine_error = Some(err);
        doc::Swarm::Unreachable { error }
    };
    let swarm = match Engine::connect(&ctx.cfg.docker_socket()).await {
        Ok(e) => match e.status().await {
            Ok(s) => {
                let autolock = if s.state == NodeState::Active && s.manager { e.autolock().await.ok() } else { None };
                if autolock == Some(true) {
                    if let Ok(Some(k)) = e.unlock_key().await {
                        stale = Some(!ctx.sealed_holds(&k));
                    }
                }
                doc::Swarm::Reached { state: s.state.to_string(), node_id: s.node_id, manager: s.manager, autolock, error: s.error, api_version: e.api_version().to_string() }
            }
            Err(err) => unreachable(err),
        },
        Err(err) => unreachable(err),
    };
    let pcrs = ctx.boot_pcrs().await;
    let mut slots = Vec::new();
    for slot in [Slot::Current, Slot::Previous] {
        slots.push(match ctx.ks.load(slot) {
            Ok(None) => None,
            Err(e) => Some(doc::Slot::Unreadable { error: e.to_string() }),
            Ok(Some(f)) => {
                let differs = match (&pcrs, f.decode(&ctx.ks.slot_path(slot))) {
                    (Ok(_), Ok((_, policy))) => ctx.read_pcrs_now(&policy).await.ok().map(|now| ctx.policy_mismatches(&policy, &now)),
                    _ => None,
                };
                Some(doc::Slot::Sealed { created: f.created, policy: serde_json::to_value(&f.policy).unwrap_or_default(), differs })
            }
        });
    }
    let previous = slots.pop().flatten();
    let current = slots.pop().flatten();
    let (tpm, phase_locked) = match &pcrs {
        Ok((v, locked)) => (doc::Tpm { tcti: ctx.tcti.clone(), reachable: true, pcrs: Some(pcrs_to_hex(v)), error: None }, Some(*locked)),
        Err(e) => (doc::Tpm { tcti: ctx.tcti.clone(), reachable: false, pcrs: None, error: Some(e.to_string()) }, None),
    };
    let st = Status {
        swarm,
        sealed: doc::Slots { current, previous },
        sealed_key_stale: stale,
        change_pending: ctx.ks.load_pending().map(|p| doc::ChangePending { op: p.op, started: p.started }),
        tpm,
        phase_locked,
        phase_pcr: ctx.cfg.tpm.phase_pcr,
        proxy: doc::Proxy { enabled: ctx.cfg.proxy.enabled, listen: ctx.cfg.proxy.listen.to_string() },
        escrow: ctx.cfg.escrow.recipient.as_ref().map(|_| crate::escrow::path(&ctx.cfg.state_dir)),
        bench: last_bench_summary(&ctx.cfg).await,
        image: doc::Image {
            sbom_sha256: crate::update::sbom_digest(&ctx.cfg.update.sbom).await,
            ..serde_json::from_value(crate::update::os_image(&ctx.cfg.update.os_release)).unwrap_or_default()
        },
        time: Some(time_sync().await),
        firmware_window: Some({
            let mut w = serde_json::json!({
                "armed": crate::firmware::record(&ctx.cfg.state_dir).ok().flatten(),
                "last": crate::firmware::last(&ctx.cfg.state_dir),
            });
            // Only when there is one: older documents (and readers) stay as they were.
            if ctx.ks.slot_path(crate::keystore::Slot::Window).exists() {
                w["key_sealed"] = serde_json::Value::Bool(true);
            }
            w
        }),
    };
    (st, engine_error)
}

/// Summary of the last report under `<state_dir>/bench/`, if any.
async fn last_bench_summary(cfg: &Config) -> Option<doc::Bench> {
    let v = serde_json::from_slice::<serde_json::Value>(&latest_bench_report(cfg).await?).ok()?;
    Some(doc::Bench { checks: v.get("checks").cloned(), score: v.get("score").cloned(), end: v.get("end").cloned() })
}

/// Bytes of the last bench report (`<state_dir>/bench/latest.json`), if any.
pub async fn latest_bench_report(cfg: &Config) -> Option<Vec<u8>> {
    tokio::fs::read(crate::bench::last_report_path(&cfg.state_dir)).await.ok()
}


/// Facts for the bench's appliance checks.
pub async fn appliance_facts(cfg: &Config) -> crate::bench::ApplianceFacts {
    let ctx = Ctx::new(cfg);
    crate::bench::ApplianceFacts {
        sealed_key: ctx.sealed_key_fact().await,
        proxy: crate::bench_cmd::probe_proxy(cfg).await,
        time: Some(time_sync().await),
    }
}

/// The clock as chronyd keeps it now (a few `chronyc` calls, off the async threads).
pub async fn time_sync() -> swarmseal_common::time::TimeSync {
    use swarmseal_common::time;
    let sources = std::path::Path::new(time::SOURCES_FILE);
    tokio::task::spawn_blocking(move || time::query(sources)).await.unwrap_or_else(|e| time::TimeSync::unknown(format!("the time query failed: {e}")))
}


impl Ctx {
    /// Compare the `current` slot's policy with this boot's PCRs.
    pub async fn sealed_key_fact(&self) -> Option<crate::bench::SealedKeyFact> {
        let slot = match self.ks.load(Slot::Current) {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => return Some(crate::bench::SealedKeyFact { pcrs_match: Some(false), detail: e.to_string() }),
        };
        let path = self.ks.slot_path(Slot::Current);
        let Ok((_, policy)) = slot.decode(&path) else {
            return Some(crate::bench::SealedKeyFact { pcrs_match: Some(false), detail: "the current slot cannot be decoded".into() });
        };
        match self.read_pcrs_now(&policy).await {
            Ok(now) => {
                let diffs = self.policy_mismatches(&policy, &now);
                let sealed = policy.literal_values();
                let what = match &policy {
                    Policy::Pcr { .. } => format!("sealed to {}", describe_pcrs(sealed)),
                    Policy::Authorize { signed_pcrs, key, .. } => format!(
                        "sealed to {} and PCR {signed_pcrs:?} signed by key {}",
                        describe_pcrs(sealed),
                        &hex::encode(key.fingerprint())[..16]
                    ),
                };
                Some(crate::bench::SealedKeyFact {
                    pcrs_match: Some(diffs.is_empty()),
                    detail: if diffs.is_empty() { what } else { format!("PCRs differ from sealing time: {}", diffs.join("; ")) },
                })
            }
            Err(e) => Some(crate::bench::SealedKeyFact { pcrs_match: None, detail: e.to_string() }),
        }
    }

    /// This boot's values (pre-phase-lock, [`Ctx::boot_pcrs`]) of every PCR `policy` covers.
    pub(super) async fn read_pcrs_now(&self, policy: &Policy) -> Result<PcrValues, TpmError> {
        let (mut now, _) = self.boot_pcrs().await?;
        let mut wanted: Vec<u8> = policy.literal_values().keys().copied().collect();
        if let Policy::Authorize { signed_pcrs, .. } = policy {
            wanted.extend(signed_pcrs);
        }
        let missing: Vec<u8> = wanted.iter().copied().filter(|p| !now.contains_key(p)).collect();
        if !missing.is_empty() {
            // A slot sealed under another PCR set than the configured one: read those as they are.
            now.extend(self.tpm_retry(move |t| t.read_pcrs(&missing)).await?);
        }
        now.retain(|p, _| wanted.contains(p));
        Ok(now)
    }

    /// Why `policy` would not unseal with PCR values `now`: each literal PCR that differs
    /// (`PCR n sealed X now Y`), and for a signed policy, signed PCR values that the signature
    /// file does not approve (or that file's problem). Empty: it would unseal. Pure apart
    /// from reading the signature file; the TPM does not check the signature here.
    pub fn policy_mismatches(&self, policy: &Policy, now: &PcrValues) -> Vec<String> {
        let mut out = diff_pcrs(policy.literal_values(), now);
        if let Policy::Authorize { key, signed_pcrs, .. } = policy {
            let signed: PcrValues = now.iter().filter(|(p, _)| signed_pcrs.contains(p)).map(|(p, v)| (*p, v.clone())).collect();
            match PcrSignatures::load(&self.cfg.tpm.pcr_signature) {
                Ok(sigs) => {
                    let pkfp = key.fingerprint();
                    if sigs.find(signed_pcrs, &pkfp, &crate::tpm::pcr_policy_digest(&signed)).is_none() {
                        out.push(
                            TpmError::NotSigned {
                                file: sigs.source.clone(),
                                key: hex::encode(&pkfp),
                                signed: crate::tpm::pcr_value_list(&signed),
                                by_key: sigs.count_by_key(signed_pcrs, &pkfp),
                            }
                            .to_string(),
                        );
                    }
                }
                Err(e) => out.push(format!("no signature for {}: {e}", crate::tpm::pcr_value_list(&signed).iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))),
            }
        }
        out
    }
}
