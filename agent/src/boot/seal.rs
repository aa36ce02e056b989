//! The sealing core: [`Ctx`] (configuration, keystore, TPM address), the state-dir lock, TPM
//! work on blocking threads with retries, and seal / unseal of the unlock key.

use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{blocking, BootError};
use crate::config::{Config, PolicyKind};
use crate::keystore::{Keystore, KeystoreError, Reservation, Slot, SlotFile};
use crate::pcrsig::{PcrPublicKey, PcrSignatures};
use crate::secret::UnlockKey;
use crate::swarm::Engine;
use crate::tpm::{PcrValues, Policy, SealedObject, Tpm, TpmError};

/// The PCRs the firmware window's copy of the key binds literally instead of PCR 7 (as
/// `/var`'s window slot, `crate::firmware::WINDOW_PCRS`): option ROMs and drivers (2), the boot
/// applications (4), the command line from outside the UKI (12).
pub const WINDOW_KEY_PCRS: [u8; 3] = [2, 4, 12];

/// Pauses between attempts of a TPM operation that failed transiently (3 s in all).
const TPM_RETRY_DELAYS: [Duration; 5] = [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800), Duration::from_millis(1500)];

/// Where the operator reads a key that could not be sealed: the command's terminal, or (the
/// agent, no terminal) the journal says where the escrow copy is — never the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Custody {
    Terminal,
    Journal,
}

/// A seal made ready before the key exists ([`Ctx::prepare_seal`]).
pub struct PreparedSeal {
    key_tx: tokio::sync::oneshot::Sender<Zeroizing<Vec<u8>>>,
    worker: tokio::task::JoinHandle<Result<Option<SealedObject>, TpmError>>,
    policy: Policy,
    values: PcrValues,
    _room: Reservation,
}

/// A sealed key: the slot written, and when `current` was in place.
pub struct Sealed {
    pub slot: SlotFile,
    pub in_place: Instant,
}

/// Everything a command needs: configuration, keystore, TPM address.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub cfg: Config,
    pub ks: Keystore,
    pub tcti: String,
    /// This process's metrics (`GET /swarmseal/v1/metrics`), shared with its proxy.
    pub metrics: std::sync::Arc<swarmseal_common::metrics::Metrics>,
}

/// Exclusive lock on the state dir, released on drop.
pub struct StateLock(#[allow(dead_code)] std::fs::File);

impl Ctx {
    pub fn new(cfg: &Config) -> Ctx {
        Ctx { ks: Keystore::new(&cfg.state_dir).with_runtime_dir(&cfg.runtime_dir), tcti: tcti(cfg), cfg: cfg.clone(), metrics: Default::default() }
    }

    /// Take the state-dir lock (`flock` on `<state_dir>/lock`): waits while
    /// another swarmseal process, or another task of this one (the agent's
    /// watch loop vs `POST /swarmseal/v1/reseal`), mutates the state dir. The
    /// wait happens on a blocking thread: a `flock` on a runtime worker can
    /// starve the very task that holds the lock (a deadlock seen on the appliance).
    /// Once held, temp files a killed command left are removed ([`Keystore::clean_temp`]).
    pub async fn lock(&self) -> Result<StateLock, BootError> {
        let dir = self.cfg.state_dir.clone();
        let ks = self.ks.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| KeystoreError::Io { path: dir.clone(), source: e })?;
            let p = dir.join("lock");
            let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(|e| KeystoreError::Io { path: p.clone(), source: e })?;
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| KeystoreError::Io { path: p, source: e.into() })?;
            for t in ks.clean_temp() {
                tracing::warn!(event = "temp_removed", file = %t.display(), "removed a temp file an interrupted swarmseal command left");
            }
            Ok(StateLock(f))
        })
        .await
        .map_err(|e| BootError::Other(format!("state-dir lock: {e}")))?
    }

    /// Run `f` on a fresh TPM context on a blocking thread.
    pub async fn tpm<T: Send + 'static>(&self, f: impl FnOnce(&mut Tpm) -> Result<T, TpmError> + Send + 'static) -> Result<T, TpmError> {
        let tcti = self.tcti.clone();
        tokio::task::spawn_blocking(move || {
            let mut t = Tpm::open(&tcti)?;
            f(&mut t)
        })
        .await
        .map_err(|e| TpmError::Command { op: "worker", message: e.to_string() })?
    }

    /// [`Ctx::tpm`], repeated with back-off ([`TPM_RETRY_DELAYS`], [`retry_transient`]) while
    /// the TPM fails transiently ([`TpmError::is_retryable`]); the last error when it persists.
    pub async fn tpm_retry<T: Send + 'static>(&self, f: impl Fn(&mut Tpm) -> Result<T, TpmError> + Send + 'static) -> Result<T, TpmError> {
        let tcti = self.tcti.clone();
        tokio::task::spawn_blocking(move || retry_transient(|| Tpm::open(&tcti).and_then(|mut t| f(&mut t)), TpmError::is_retryable))
            .await
            .map_err(|e| TpmError::Command { op: "worker", message: e.to_string() })?
    }

    /// Current values of the policy PCRs (literal and signed, [`crate::config::TpmConfig::policy_pcrs`]).
    pub async fn read_policy_pcrs(&self) -> Result<PcrValues, TpmError> {
        let pcrs = self.cfg.tpm.policy_pcrs();
        self.tpm_retry(move |t| t.read_pcrs(&pcrs)).await
    }

    /// Seal `key` into the `current` slot under this boot's PCR values, moving
    /// the old `current` to `previous` if it held another key; then refresh
    /// the escrow copy. TPM 2.0 Part 3, TPM2_Create (see [`Tpm::seal_prepared`]).
    pub async fn seal(&self, key: &UnlockKey) -> Result<SlotFile, BootError> {
        let prep = self.prepare_seal().await?;
        Ok(self.seal_with(prep, key).await?.slot)
    }

    /// Everything a seal needs that does not depend on the key, checked before a command lets
    /// the engine change its key (preflight): room in the state dir for both slot files and
    /// the escrow copy (reserved, [`Keystore::reserve`]), the sealing policy of this boot
    /// ([`Ctx::sealing_policy`]: for `authorize`, a signature for this boot's PCR 11), and a
    /// TPM context with the SRK loaded and the salted session started, on a blocking thread
    /// that then waits for the key. Transient TPM failures are retried ([`TPM_RETRY_DELAYS`]).
    ///
    /// Errors: `Keystore(Io)` (state dir not writable or full), `SealRefused`, `Tpm`.
    pub async fn prepare_seal(&self) -> Result<PreparedSeal, BootError> {
        let escrow = self.cfg.escrow.recipient.as_ref().map(|_| crate::escrow::path(&self.cfg.state_dir));
        let ks = self.ks.clone();
        let room = blocking(move || ks.reserve(escrow.as_deref())).await?;
        let (values, _) = self.boot_pcrs().await?;
        let policy = self.sealing_policy(values.clone()).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), TpmError>>();
        let (key_tx, key_rx) = tokio::sync::oneshot::channel::<Zeroizing<Vec<u8>>>();
        let (tcti, p) = (self.tcti.clone(), policy.clone());
        let worker = tokio::task::spawn_blocking(move || {
            let (mut ready, mut key_rx) = (Some(ready_tx), Some(key_rx));
            // Retried only until the session is ready: once the key was handed over, a failure is the seal's.
            let prepared = std::cell::Cell::new(false);
            let r = retry_transient(
                || {
                    let mut wait = || {
                        if let Some(r) = ready.take() {
                            prepared.set(true);
                            let _ = r.send(Ok(()));
                        }
                        key_rx.take()?.blocking_recv().ok()
                    };
                    Tpm::open(&tcti).and_then(|mut t| t.seal_prepared(&p, &mut wait))
                },
                |e| e.is_retryable() && !prepared.get(),
            );
            match (r, ready) {
                (Err(e), Some(r)) => {
                    let _ = r.send(Err(e));
                    Ok(None)
                }
                (r, _) => r,
            }
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(PreparedSeal { key_tx, worker, policy, values, _room: room }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(BootError::Other("the TPM worker ended before the seal was prepared".into())),
        }
    }

    /// Seal `key` with a prepared seal: TPM2_Create at once, then the slot files (written into
    /// the reserved room), then the escrow copy.
    pub async fn seal_with(&self, prep: PreparedSeal, key: &UnlockKey) -> Result<Sealed, BootError> {
        let PreparedSeal { key_tx, worker, policy, values, _room } = prep;
        let _ = key_tx.send(Zeroizing::new(key.expose().as_bytes().to_vec()));
        let obj = worker
            .await
            .map_err(|e| TpmError::Command { op: "worker", message: e.to_string() })??
            .ok_or(TpmError::Command { op: "TPM2_Create", message: "the prepared seal was abandoned".into() })?;
        let mut salt = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        let slot = SlotFile::new(Slot::Current, &obj, &policy, key.fingerprint(&salt), &salt);
        let (ks, k) = (self.ks.clone(), key.clone());
        let slot = blocking(move || ks.store_current(&slot, &k).map(|()| slot)).await?;
        let in_place = Instant::now();
        tracing::info!(event = "seal", slot = "current", pcrs = %describe_pcrs(&values), "unlock key sealed to the TPM");
        self.metrics.seals.inc();
        if let Some(r) = &self.cfg.escrow.recipient {
            // Into the room reserved for it.
            let p = escrow_write(&self.cfg.state_dir, r, key).await?;
            tracing::info!(event = "escrow", file = %p.display(), "escrow copy of the unlock key written (age-encrypted)");
        }
        drop(_room);
        self.refresh_window(key).await;
        Ok(Sealed { slot, in_place })
    }

    /// The PCRs the firmware window's copy of the key binds: the sealing policy's PCRs
    /// ([`crate::config::TpmConfig::policy_pcrs`]) with PCR 7 swapped for [`WINDOW_KEY_PCRS`]
    /// (with the appliance's `pcrs = [7, 12, 15]`, `signed_pcrs = [11]`: 2, 4, 12, 15 literal
    /// + 11 signed), ascending.
    pub fn window_pcrs(&self) -> Vec<u8> {
        let mut p: Vec<u8> = self.cfg.tpm.policy_pcrs().into_iter().filter(|p| *p != 7).chain(WINDOW_KEY_PCRS).collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Seal `key` as the firmware window's copy (keystore slot `window`, module docs of
    /// `crate::firmware`): [`Ctx::window_pcrs`] at this boot's values (in a phase-locked boot,
    /// the phase record's pre-lock values for the PCRs it holds), under the same kind of policy
    /// as `current` ([`Ctx::sealing_policy`]: for `authorize`, PCR 11 signed). TPM 2.0 Part 3,
    /// TPM2_Create; every handle flushed ([`Tpm::seal`]). `current` and `previous` are not
    /// touched. Refused when this boot is not the one `current` is sealed to (status
    /// `seal_stale`, [`Ctx::sealed_key_fact`]) or nothing is sealed: the copy would accept this
    /// boot chain on the operator's behalf. Errors: `WindowRefused` (the PCRs that differ),
    /// `SealRefused`, `Tpm`, `Keystore(Io | Corrupt)`.
    pub async fn seal_window(&self, key: &UnlockKey) -> Result<SlotFile, BootError> {
        // What status calls `seal_stale` (Ctx::sealed_key_fact), with its errors typed.
        let current = self.ks.load(Slot::Current)?.ok_or_else(|| BootError::WindowRefused { why: "no unlock key is sealed (the current slot is empty)".into() })?;
        let (_, sealed) = current.decode(&self.ks.slot_path(Slot::Current))?;
        let now = self.read_pcrs_now(&sealed).await?;
        let differ = self.policy_mismatches(&sealed, &now);
        if !differ.is_empty() {
            return Err(BootError::WindowRefused { why: format!("PCRs differ from sealing time: {}", differ.join("; ")) });
        }
        let pcrs = self.window_pcrs();
        let mut values = self.tpm_retry(move |t| t.read_pcrs(&pcrs)).await?;
        let (boot, locked) = self.boot_pcrs().await?;
        if locked {
            for (k, v) in boot {
                if let Some(slot) = values.get_mut(&k) {
                    *slot = v;
                }
            }
        }
        let policy = self.sealing_policy(values.clone()).await?;
        let secret = Zeroizing::new(key.expose().as_bytes().to_vec());
        let p = policy.clone();
        let obj = self.tpm_retry(move |t| t.seal(&secret, &p)).await?;
        let mut salt = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        let slot = SlotFile::new(Slot::Window, &obj, &policy, key.fingerprint(&salt), &salt);
        let (ks, s) = (self.ks.clone(), slot.clone());
        blocking(move || ks.store_window(&s)).await?;
        tracing::warn!(event = "firmware_window_key_sealed", security = true, pcrs = %describe_pcrs(&values), "the firmware window's copy of the swarm unlock key was sealed without PCR 7 (until the window closes)");
        Ok(slot)
    }

    /// The arming side of the window copy: read the engine's unlock key (`GET
    /// /swarm/unlockkey`, an active manager with autolock on) and [`Ctx::seal_window`] it, with
    /// the state-dir lock held. Any earlier copy (and its claim) is deleted first, whatever
    /// follows: an arming never leaves an older copy behind. Errors: `State` (not an active
    /// manager, autolock off), `Swarm`, `Keystore(Io)` and [`Ctx::seal_window`]'s.
    pub async fn seal_window_key(&self) -> Result<SlotFile, BootError> {
        let _lock = self.lock().await?;
        let ks = self.ks.clone();
        if blocking(move || ks.drop_window()).await? {
            tracing::warn!(event = "firmware_window_key_dropped", security = true, "the earlier window copy of the unlock key was deleted: the window is being armed again");
        }
        let engine = super::commands::engine(&self.cfg).await?;
        super::commands::active_manager(&engine).await?;
        let key = engine.unlock_key().await?.ok_or_else(|| super::commands::state_error(crate::swarm::NodeState::Active, "autolock is off: there is no unlock key to keep through the window"))?;
        self.seal_window(&key).await
    }

    /// After a seal of `current`: while a window is armed and its copy holds another key (a
    /// rotation, a reseal of a changed key), seal the copy again with `key` — a stale copy would
    /// not unlock the swarm after the change. A failure is logged (the swarm would then stay
    /// locked after the change, as without a copy), not returned: `current` is sealed.
    async fn refresh_window(&self, key: &UnlockKey) {
        let holds = matches!(self.ks.load(Slot::Window), Ok(Some(w)) if key.fingerprint(&w.salt()) == w.key_fingerprint);
        let armed = matches!(crate::firmware::record(&self.cfg.state_dir), Ok(Some(_)));
        if !armed || holds || !self.ks.slot_path(Slot::Window).exists() {
            return;
        }
        match self.seal_window(key).await {
            Ok(_) => tracing::warn!(event = "firmware_window_key_resealed", security = true, "the unlock key changed while a firmware window is armed: its copy was sealed again with the new key"),
            Err(e) => tracing::error!(event = "firmware_window_key_stale", security = true, error = %e, "the unlock key changed while a firmware window is armed, but its copy could not be sealed again: after the firmware change the swarm stays locked (unlock it through the proxy with the escrowed key)"),
        }
    }

    /// This boot's PCR 7 (sha256, hex). TPM 2.0 Part 3, TPM2_PCR_Read. Errors: `Tpm`, also
    /// `Command` when the TPM returns no sha256 PCR 7.
    pub(super) async fn pcr7(&self) -> Result<String, TpmError> {
        let v = self.tpm_retry(|t| t.read_pcrs(&[7])).await?;
        v.get(&7).map(hex::encode).ok_or_else(|| TpmError::Command { op: "TPM2_PCR_Read", message: "the TPM returned no sha256 PCR 7 (is the sha256 bank allocated?)".into() })
    }

    /// Whether the firmware window's copy may be tried in this boot, and for which decision
    /// (what changed, the deciding boot's ID): an `accepted` decision of this boot
    /// (`crate::firmware::accepted_this_boot`); or, after a boot cut short between the window
    /// unlock and the reseal, the accepted decision a claim names
    /// ([`crate::keystore::WindowClaim`]) at the PCR 7 it claimed. Anything else: `None`.
    pub async fn window_permit(&self) -> Option<(String, String)> {
        // A window still armed (or an unreadable record) is not a closed one: its copy waits.
        if !self.ks.slot_path(Slot::Window).exists() || !matches!(crate::firmware::record(&self.cfg.state_dir), Ok(None)) {
            return None;
        }
        let (changed, decided_in) = crate::firmware::accepted(&self.cfg.state_dir)?;
        if crate::firmware::boot_id().as_deref() == Some(decided_in.as_str()) {
            return Some((changed, decided_in));
        }
        let claim = self.ks.load_window_claim().filter(|c| c.boot_id == decided_in)?;
        let now = self.pcr7().await.ok()?;
        if now != claim.pcr7 {
            tracing::warn!(event = "firmware_window_claim_refused", security = true, claimed = %claim.pcr7, pcr7 = %now, "a window copy claimed in an earlier boot is not used: PCR 7 is not the one that boot accepted");
            return None;
        }
        tracing::warn!(event = "firmware_window_claim_resumed", security = true, pcr7 = %now, "an earlier boot claimed the window copy for its accepted firmware change and was cut short: finishing at the same PCR 7");
        Some((changed, decided_in))
    }

    /// Claim the window copy for the accepted decision of boot `decided_in` at this boot's PCR 7
    /// ([`crate::keystore::Keystore::store_window_claim`]), then unseal it. TPM 2.0 Part 3,
    /// TPM2_Unseal ([`Tpm::unseal_signed`]); transient failures retried. Only after
    /// [`Ctx::window_permit`] said so. Errors: `Keystore(NoSealedKey | Corrupt | Io)`,
    /// `SignatureFile`, `Tpm`.
    pub async fn unseal_window_for(&self, decided_in: &str) -> Result<UnlockKey, BootError> {
        let path = self.ks.slot_path(Slot::Window);
        let file = self.ks.load(Slot::Window)?.ok_or_else(|| KeystoreError::NoSealedKey { dir: self.ks.keys_dir() })?;
        let claim = crate::keystore::WindowClaim { boot_id: decided_in.to_string(), pcr7: self.pcr7().await?, copy: file.key_fingerprint.clone(), claimed_in: crate::firmware::boot_id(), unlocked: false };
        let ks = self.ks.clone();
        blocking(move || ks.store_window_claim(&claim)).await?;
        let (obj, policy) = file.decode(&path)?;
        let signatures = match &policy {
            Policy::Pcr { .. } => None,
            Policy::Authorize { .. } => Some(PcrSignatures::load(&self.cfg.tpm.pcr_signature).map_err(BootError::SignatureFile)?),
        };
        let bytes = self.tpm_retry(move |t| t.unseal_signed(&obj, &policy, signatures.as_ref())).await?;
        Ok(UnlockKey::from_bytes(&bytes).map_err(|_| KeystoreError::Corrupt { path, message: "the unsealed data is not an unlock key".into() })?)
    }

    /// Mark the window copy's claim as used: its key unsealed and unlocked the engine in this
    /// boot ([`crate::keystore::WindowClaim::unlocked`]). Only then may a restart in the same
    /// boot finish the window (reseal `current`). Errors: `Keystore(Io)`; `Other` when there
    /// is no claim of the copy written in this boot.
    pub async fn window_unlocked(&self) -> Result<(), BootError> {
        let this = crate::firmware::boot_id();
        let claim = self.ks.load_window_claim().filter(|c| this.is_some() && c.claimed_in == this).ok_or_else(|| BootError::Other("no claim of the window copy was written in this boot".into()))?;
        let ks = self.ks.clone();
        blocking(move || ks.store_window_claim(&crate::keystore::WindowClaim { unlocked: true, ..claim })).await?;
        Ok(())
    }

    /// Whether the window copy unsealed and unlocked the engine in this boot (its claim says
    /// so, [`Ctx::window_unlocked`]): what may finish the window after a restart.
    pub fn window_unlocked_this_boot(&self) -> bool {
        let this = crate::firmware::boot_id();
        self.ks.load_window_claim().is_some_and(|c| c.unlocked && this.is_some() && c.claimed_in == this)
    }

    /// Whether the `current` slot holds `key`.
    pub(super) fn sealed_holds(&self, key: &UnlockKey) -> bool {
        matches!(self.ks.load(Slot::Current), Ok(Some(c)) if key.fingerprint(&c.salt()) == c.key_fingerprint)
    }

    /// The policy a new seal uses (`[tpm] policy`) for this boot's PCR `values`
    /// ([`Ctx::boot_pcrs`]). For `authorize`, this first checks, as systemd-cryptenroll does,
    /// that the boot could unseal it: the signature file holds a signature by the configured
    /// key for this boot's signed PCR values, and the TPM verifies it (TPM 2.0 Part 3,
    /// TPM2_LoadExternal + TPM2_VerifySignature).
    ///
    /// Errors: `SealRefused` (exit 12) naming the file, the PCR value and what to do;
    /// `Tpm` when the TPM fails.
    pub async fn sealing_policy(&self, values: PcrValues) -> Result<Policy, BootError> {
        let t = &self.cfg.tpm;
        if t.policy == PolicyKind::Pcr {
            return Ok(Policy::Pcr { values });
        }
        let refused = |reason: String, advice: &str| BootError::SealRefused { reason, advice: advice.to_string() };
        let key = PcrPublicKey::load(&t.pcr_public_key).map_err(|e| {
            refused(e.to_string(), "It is the fleet's PCR-signing public key, the UKI's .pcrpkey section (ukify --pcr-public-key), which systemd-stub copies to /run/systemd/tpm2-pcr-public-key.pem; set tpm.pcr_public_key to where it is, or tpm.policy = \"pcr\" to seal to the literal PCR values")
        })?;
        let signatures = PcrSignatures::load(&t.pcr_signature).map_err(|e| {
            refused(e.to_string(), "It is the image's PCR signature, the UKI's .pcrsig section (ukify --pcr-private-key), which systemd-stub copies to /run/systemd/tpm2-pcr-signature.json; boot a signed image, set tpm.pcr_signature, or set tpm.policy = \"pcr\"")
        })?;
        let signed_pcrs = t.signed();
        let (signed, literal): (PcrValues, PcrValues) = values.into_iter().partition(|(p, _)| signed_pcrs.contains(p));
        let k = key.clone();
        match self.tpm_retry(move |tpm| tpm.verify_signed_policy(&k, &signed, &signatures)).await {
            Ok(()) => Ok(Policy::Authorize { key, signed_pcrs, values: literal }),
            Err(e @ (TpmError::NotSigned { .. } | TpmError::BadSignature { .. })) => Err(refused(
                e.to_string(),
                &format!(
                    "The next boot of this image could not unseal the key. Sign this image's PCR 11 values with the private key of {} (ukify build --pcr-private-key=… --pcr-public-key=…, or systemd-measure sign), or set tpm.policy = \"pcr\" to seal to the literal PCR values",
                    t.pcr_public_key.display()
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Unseal the key from `current`, then `previous`, and unlock the engine
    /// with it (`POST /swarm/unlock`). Returns the slot that worked and how long the engine's
    /// unlock call took. Transient TPM failures are retried ([`Ctx::tpm_retry`]).
    pub async fn unlock_from_tpm(&self, engine: &Engine) -> Result<(Slot, Duration), BootError> {
        let (slot, engine_time) = self
            .unseal_with(|key| async move {
                let t = Instant::now();
                engine.unlock(&key).await?;
                Ok(t.elapsed())
            })
            .await?;
        tracing::info!(event = "unlock", slot = slot.name(), "swarm unlocked with the TPM-sealed key");
        Ok((slot, engine_time))
    }

    /// Unseal the key from `current`, then `previous`, and hand each to `accept` until one is
    /// accepted (the engine's unlock; recovery's node-key check). Returns that slot and what
    /// `accept` returned. TPM 2.0 Part 3, TPM2_Unseal (see [`Tpm::unseal_signed`]); transient
    /// TPM failures are retried ([`Ctx::tpm_retry`]).
    pub async fn unseal_with<T, F, Fut>(&self, mut accept: F) -> Result<(Slot, T), BootError>
    where
        F: FnMut(UnlockKey) -> Fut,
        Fut: std::future::Future<Output = Result<T, BootError>>,
    {
        // Read both slots first: a missing or unreadable blob is reported as
        // such, before any TPM work (and before the phase-lock check).
        let mut slots = Vec::new();
        let mut first_err: Option<BootError> = None;
        for slot in [Slot::Current, Slot::Previous] {
            let path = self.ks.slot_path(slot);
            match self.ks.load(slot).and_then(|f| f.map(|f| f.decode(&path)).transpose()) {
                Ok(Some(decoded)) => slots.push((slot, path, decoded)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(event = "slot_unreadable", slot = slot.name(), error = %e, "sealed slot unreadable");
                    first_err.get_or_insert(e.into());
                }
            }
        }
        if slots.is_empty() {
            return Err(first_err.unwrap_or_else(|| KeystoreError::NoSealedKey { dir: self.ks.keys_dir() }.into()));
        }
        let (_, locked) = self.boot_pcrs().await?;
        if locked {
            return Err(BootError::PhaseLocked { pcr: self.cfg.tpm.phase_pcr });
        }
        for (slot, path, (obj, policy)) in slots {
            let result: Result<T, BootError> = async {
                // A signed policy needs this boot's signatures (read for each slot: it is small).
                let signatures = match &policy {
                    Policy::Pcr { .. } => None,
                    Policy::Authorize { .. } => Some(PcrSignatures::load(&self.cfg.tpm.pcr_signature).map_err(BootError::SignatureFile)?),
                };
                let bytes = self.tpm_retry(move |t| t.unseal_signed(&obj, &policy, signatures.as_ref())).await?;
                let key = UnlockKey::from_bytes(&bytes).map_err(|_| KeystoreError::Corrupt { path: path.clone(), message: "the unsealed data is not an unlock key".into() })?;
                accept(key).await
            }
            .await;
            match result {
                Ok(t) => return Ok((slot, t)),
                Err(e) => {
                    tracing::warn!(event = "unlock_attempt_failed", slot = slot.name(), error = %e, "could not use the key of this slot");
                    // A TPM refusal says more than an unreadable other slot.
                    if first_err.as_ref().map(|f| matches!(f, BootError::Keystore(_))).unwrap_or(true) {
                        first_err = Some(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| BootError::Other("no slot could unlock the swarm".into())))
    }

}


/// `PCR 7=ab12…, 11=…` with short digests.
pub fn describe_pcrs(v: &PcrValues) -> String {
    v.iter().map(|(k, x)| format!("{k}={}", &hex::encode(x)[..16.min(x.len() * 2)])).collect::<Vec<_>>().join(", ")
}

/// `PCR n sealed X now Y` for every PCR that differs ([`crate::tpm::pcr_diffs`]).
pub fn diff_pcrs(sealed: &PcrValues, now: &PcrValues) -> Vec<String> {
    crate::tpm::pcr_diffs(sealed, now).iter().map(ToString::to_string).collect()
}

/// Run `attempt` until it succeeds or fails for good: while `retryable` says a failure is
/// transient, pause ([`TPM_RETRY_DELAYS`], 3 s in all) and try again. The one retry loop of
/// TPM work; runs on a blocking thread (it sleeps).
fn retry_transient<T>(mut attempt: impl FnMut() -> Result<T, TpmError>, retryable: impl Fn(&TpmError) -> bool) -> Result<T, TpmError> {
    let mut delays = TPM_RETRY_DELAYS.iter();
    loop {
        match attempt() {
            Err(e) if retryable(&e) => match delays.next() {
                Some(d) => {
                    tracing::debug!(event = "tpm_retry", error = %e, "transient TPM failure; retrying");
                    std::thread::sleep(*d);
                }
                None => return Err(e),
            },
            r => return r,
        }
    }
}

/// Write the age-encrypted escrow copy of `key` ([`crate::escrow::write`]) on a blocking thread.
pub(super) async fn escrow_write(state_dir: &std::path::Path, recipient: &str, key: &UnlockKey) -> Result<std::path::PathBuf, crate::escrow::EscrowError> {
    let (dir, r, k) = (state_dir.to_path_buf(), recipient.to_string(), key.clone());
    blocking(move || crate::escrow::write(&dir, &r, &k)).await
}

/// The TCTI to use: `--tcti`/config, then `TPM2TOOLS_TCTI`, `TCTI`, then the kernel resource manager.
pub fn tcti(cfg: &Config) -> String {
    cfg.tpm
        .tcti
        .clone()
        .or_else(|| std::env::var("TPM2TOOLS_TCTI").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("TCTI").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "device:/dev/tpmrm0".into())
}
