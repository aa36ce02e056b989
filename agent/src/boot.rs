//! The boot flow and the key commands: init, seal, unlock, rotate, status, agent.
//!
//! Every TPM operation opens its own context on a blocking thread, so no TPM
//! state outlives a command (see [`crate::tpm`]). Every mutation of the
//! state dir holds an exclusive `flock` on `<state_dir>/lock`.
//!
//! Phase lock: after the boot's unlock decision the agent extends
//! `tpm.phase_pcr` (default PCR 11) with SHA-256(`swarmseal:unlocked:v1`),
//! so the sealed key cannot be unsealed again until the next boot. The PCR
//! values before and after are recorded in `<runtime_dir>/phase.json` and
//! `<state_dir>/phase.json` (not secret): sealing later in the same boot uses
//! the recorded "before" values, which are what the next boot will show again.
//!
//! Key custody: a command that changes the engine's key (`init`, `rotate`, the
//! agent's autolock re-enable) first prepares the seal ([`Ctx::prepare_seal`]:
//! room on disk, policy, TPM session) and writes a write-ahead marker; if the
//! seal still fails after the change, the key is escrowed and shown
//! ([`Ctx::keep_reachable`]); a marker left by a killed command is resolved by
//! the next one ([`repair_pending`]).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cli::{Command, Exit};
use crate::config::{Config, PolicyKind};
use crate::escrow::EscrowError;
use crate::keystore::{pcrs_from_hex, pcrs_to_hex, Keystore, KeystoreError, PendingChange, PhaseRecord, Reservation, Slot, SlotFile};
use crate::pcrsig::{PcrPublicKey, PcrSigError, PcrSignatures};
use crate::proxy::{ApiError, ApiErrorKind};
use crate::secret::UnlockKey;
use crate::swarm::{Engine, NodeState, SwarmError};
use crate::tpm::{PcrValues, Policy, SealedObject, Tpm, TpmError};

/// What the phase PCR is extended with (its SHA-256 is the extend digest).
pub const PHASE_MARKER: &[u8] = b"swarmseal:unlocked:v1";
/// How often the agent checks the engine for a changed unlock key.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Boot-flow errors. `Display` is the operator sentence; [`BootError::exit`] the exit code.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error(transparent)]
    Escrow(#[from] EscrowError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("the swarm is {state}: {advice}")]
    State { state: String, advice: String },
    #[error("the key was already unsealed once in this boot (PCR {pcr} carries swarmseal's phase lock); reboot, or unlock by hand with `swarmseal unlock --manual` or `docker swarm unlock`")]
    PhaseLocked { pcr: u8 },
    /// Sealing refused before anything was written: this boot could not unseal a signed policy.
    #[error("not sealing to the signed PCR policy (tpm.policy = \"authorize\"): {reason}. {advice} The sealed key on disk was left as it was.")]
    SealRefused { reason: String, advice: String },
    /// Unsealing a signed-policy slot without a usable signature file for this boot.
    #[error("the unlock key is sealed to a signed PCR policy, but {0}: this boot's image carries no usable PCR signature (systemd-stub copies the UKI's .pcrsig section there); the swarm stays locked")]
    SignatureFile(PcrSigError),
    /// The engine's key changed but could not be sealed; where the operator can read it instead.
    #[error("the engine's unlock key changed but could not be sealed: {cause}. {}", custody_advice(.escrowed.as_deref(), *.shown))]
    NotSealed { cause: String, escrowed: Option<std::path::PathBuf>, shown: bool },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Other(String),
}

impl BootError {
    /// The exit code for this error (see `swarmseal --help`).
    pub fn exit(&self) -> Exit {
        match self {
            BootError::Swarm(SwarmError::Unreachable { .. }) => Exit::DockerUnreachable,
            BootError::Swarm(SwarmError::WrongKey { .. }) => Exit::WrongKey,
            BootError::Swarm(SwarmError::NotLocked { .. } | SwarmError::NotManager { .. }) => Exit::SwarmState,
            BootError::Swarm(SwarmError::Api { .. }) => Exit::Failure,
            BootError::Tpm(TpmError::Unavailable { .. } | TpmError::Busy { .. }) => Exit::TpmUnavailable,
            BootError::NotSealed { .. } => Exit::NotSealed,
            BootError::Tpm(TpmError::PolicyMismatch { .. } | TpmError::NotSigned { .. } | TpmError::BadSignature { .. })
            | BootError::PhaseLocked { .. }
            | BootError::SignatureFile(_) => Exit::PolicyMismatch,
            BootError::SealRefused { .. } => Exit::SealRefused,
            BootError::Tpm(TpmError::SrkMismatch) => Exit::BadSealedKey,
            BootError::Tpm(TpmError::Command { .. }) => Exit::Failure,
            BootError::Keystore(KeystoreError::NoSealedKey { .. }) => Exit::NoSealedKey,
            BootError::Keystore(KeystoreError::Corrupt { .. }) => Exit::BadSealedKey,
            BootError::Keystore(KeystoreError::Io { .. }) => Exit::Failure,
            BootError::Escrow(EscrowError::Recipient(_)) => Exit::Usage,
            BootError::Escrow(_) => Exit::Failure,
            BootError::Proxy(_) => Exit::Proxy,
            BootError::State { .. } => Exit::SwarmState,
            BootError::Input(_) => Exit::Usage,
            BootError::Other(_) => Exit::Failure,
        }
    }
}

fn custody_advice(escrowed: Option<&std::path::Path>, shown: bool) -> String {
    let mut places = Vec::new();
    if shown {
        places.push("shown above".to_string());
    }
    if let Some(p) = escrowed {
        places.push(format!("escrowed in {}", p.display()));
    }
    let held = if places.is_empty() { "It is held only by the engine (and the swarm's other managers): read it now with `docker swarm unlock-key -q` through the proxy".to_string() } else { format!("The new key was {}", places.join(" and ")) };
    format!("{held}. Fix the cause, then run `swarmseal seal` (the next swarmseal command or the agent also seals it)")
}

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

fn state_error(state: NodeState, advice: &str) -> BootError {
    BootError::State { state: state.to_string(), advice: advice.to_string() }
}

/// Everything a command needs: configuration, keystore, TPM address.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub cfg: Config,
    pub ks: Keystore,
    pub tcti: String,
}

/// Exclusive lock on the state dir, released on drop.
pub struct StateLock(#[allow(dead_code)] std::fs::File);

impl Ctx {
    pub fn new(cfg: &Config) -> Ctx {
        Ctx { ks: Keystore::new(&cfg.state_dir).with_runtime_dir(&cfg.runtime_dir), tcti: crate::cli::tcti(cfg), cfg: cfg.clone() }
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

    /// [`Ctx::tpm`], repeated with back-off ([`TPM_RETRY_DELAYS`]) while the TPM fails
    /// transiently ([`TpmError::is_retryable`]); the last error when it persists.
    pub async fn tpm_retry<T: Send + 'static>(&self, f: impl Fn(&mut Tpm) -> Result<T, TpmError> + Send + Sync + 'static) -> Result<T, TpmError> {
        let f = Arc::new(f);
        let mut delays = TPM_RETRY_DELAYS.iter();
        loop {
            let g = f.clone();
            match self.tpm(move |t| g(t)).await {
                Err(e) if e.is_retryable() => match delays.next() {
                    Some(d) => {
                        tracing::debug!(event = "tpm_retry", error = %e, "transient TPM failure; retrying");
                        tokio::time::sleep(*d).await;
                    }
                    None => return Err(e),
                },
                r => return r,
            }
        }
    }

    /// Current values of the policy PCRs (literal and signed, [`crate::config::TpmConfig::policy_pcrs`]).
    pub async fn read_policy_pcrs(&self) -> Result<PcrValues, TpmError> {
        let pcrs = self.cfg.tpm.policy_pcrs();
        self.tpm_retry(move |t| t.read_pcrs(&pcrs)).await
    }

    /// The PCR values this boot will show again on the next boot of the same
    /// chain: the current values, unless the phase lock already happened in
    /// this boot, then the recorded pre-lock values. Second: whether this
    /// boot is phase-locked.
    pub async fn boot_pcrs(&self) -> Result<(PcrValues, bool), TpmError> {
        let current = self.read_policy_pcrs().await?;
        for rec in self.ks.load_phases() {
            if pcrs_from_hex(&rec.after).as_ref() == Some(&current) {
                if let Some(before) = pcrs_from_hex(&rec.before) {
                    return Ok((before, true));
                }
            }
        }
        Ok((current, false))
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
        let room = self.ks.reserve(escrow.as_deref())?;
        let (values, _) = self.boot_pcrs().await?;
        let policy = self.sealing_policy(values.clone()).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), TpmError>>();
        let (key_tx, key_rx) = tokio::sync::oneshot::channel::<Zeroizing<Vec<u8>>>();
        let (tcti, p) = (self.tcti.clone(), policy.clone());
        let worker = tokio::task::spawn_blocking(move || {
            let (mut ready, mut key_rx) = (Some(ready_tx), Some(key_rx));
            let mut delays = TPM_RETRY_DELAYS.iter();
            loop {
                let mut wait = || {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                    key_rx.take()?.blocking_recv().ok()
                };
                let r = Tpm::open(&tcti).and_then(|mut t| t.seal_prepared(&p, &mut wait));
                match (r, ready.take()) {
                    (Err(e), Some(r)) if e.is_retryable() => match delays.next() {
                        Some(d) => {
                            ready = Some(r);
                            std::thread::sleep(*d);
                        }
                        None => {
                            let _ = r.send(Err(e));
                            return Ok(None);
                        }
                    },
                    (Err(e), Some(r)) => {
                        let _ = r.send(Err(e));
                        return Ok(None);
                    }
                    (r, _) => return r,
                }
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
        self.ks.store_current(&slot, key)?;
        let in_place = Instant::now();
        tracing::info!(event = "seal", slot = "current", pcrs = %describe_pcrs(&values), "unlock key sealed to the TPM");
        if let Some(r) = &self.cfg.escrow.recipient {
            // Into the room reserved for it.
            let p = crate::escrow::write(&self.cfg.state_dir, r, key)?;
            tracing::info!(event = "escrow", file = %p.display(), "escrow copy of the unlock key written (age-encrypted)");
        }
        drop(_room);
        Ok(Sealed { slot, in_place })
    }

    /// Seal a key the engine already changed to; if that fails, keep it reachable
    /// ([`Ctx::keep_reachable`]) and return `NotSealed`.
    pub async fn seal_changed(&self, prep: Result<PreparedSeal, BootError>, key: &UnlockKey, custody: Custody) -> Result<Sealed, BootError> {
        let r = match prep {
            Ok(p) => self.seal_with(p, key).await,
            Err(e) => Err(e),
        };
        r.map_err(|e| self.keep_reachable(key, &e, custody))
    }

    /// The engine holds a key that could not be sealed (`cause`): write the escrow copy if
    /// configured, and show the key on the terminal (`Terminal`: `/dev/tty`, else stderr) or
    /// log `key_unsealed_pending` (`Journal`: never the key). Returns the `NotSealed` error.
    pub fn keep_reachable(&self, key: &UnlockKey, cause: &BootError, custody: Custody) -> BootError {
        let escrowed = self.cfg.escrow.recipient.as_ref().and_then(|r| match crate::escrow::write(&self.cfg.state_dir, r, key) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(event = "escrow_failed", error = %e, "the escrow copy of the unsealed key could not be written either");
                None
            }
        });
        let shown = custody == Custody::Terminal && show_unsealed_key(key, cause, escrowed.as_deref());
        if custody != Custody::Terminal {
            tracing::error!(event = "key_unsealed_pending", security = true, escrowed = %escrowed.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "no".into()), cause = %cause, "the engine's unlock key changed but could not be sealed; retrying at every watch tick");
        }
        BootError::NotSealed { cause: cause.to_string(), escrowed, shown }
    }

    /// Write the write-ahead marker before asking the engine to change its key (`op`).
    fn mark_pending(&self, op: &str, old: Option<&UnlockKey>) -> Result<(), BootError> {
        let mut salt = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        let p = PendingChange {
            format: "swarmseal.change-pending".into(),
            version: 1,
            op: op.into(),
            pid: std::process::id(),
            started: unix_now(),
            old_key_fingerprint: old.map(|k| k.fingerprint(&salt)),
            fingerprint_salt: hex::encode(salt),
        };
        Ok(self.ks.store_pending(&p)?)
    }

    /// Whether the `current` slot holds `key`.
    fn sealed_holds(&self, key: &UnlockKey) -> bool {
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
        if self.ks.load_phases().iter().any(|rec| pcrs_from_hex(&rec.after).as_ref() == Some(&current)) {
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
        let recorded = self.ks.store_phase(&rec);
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
    }

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
    async fn read_pcrs_now(&self, policy: &Policy) -> Result<PcrValues, TpmError> {
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

/// `PCR 7=ab12…, 11=…` with short digests.
pub fn describe_pcrs(v: &PcrValues) -> String {
    v.iter().map(|(k, x)| format!("{k}={}", &hex::encode(x)[..16.min(x.len() * 2)])).collect::<Vec<_>>().join(", ")
}

/// `PCR n sealed X now Y` for every PCR that differs ([`crate::tpm::pcr_diffs`]).
pub fn diff_pcrs(sealed: &PcrValues, now: &PcrValues) -> Vec<String> {
    crate::tpm::pcr_diffs(sealed, now).iter().map(ToString::to_string).collect()
}

/// Show the operator's copy of the key on the controlling terminal only (never stdout/the journal).
pub(crate) fn show_key_on_terminal(key: &UnlockKey, what: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        Ok(mut tty) => {
            let _ = writeln!(
                tty,
                "\n{what}. The operator's copy of the unlock key (shown once; store it offline, e.g. in a password manager or on paper):\n\n    {}\n\nWithout it, a manager whose boot chain changed can only be unlocked by another manager's key.\n",
                key.expose()
            );
        }
        Err(_) => eprintln!("swarmseal: {what}; no terminal, so the operator's copy of the key is not shown: read it with `docker swarm unlock-key -q` through the proxy, or from the escrow file if `[escrow]` is configured"),
    }
}

/// Show a key that could not be sealed on the controlling terminal, or on stderr when there is
/// none (the command's own output, never a log): the key must not end up only in the engine.
/// Show a key that could not be sealed on the controlling terminal. Without one, stderr (a
/// pipe, a file, the journal under systemd) gets the key only when no escrow copy was written:
/// then it is the last place besides the engine; with an escrow copy it gets only where that is.
/// Returns whether the key was shown.
fn show_unsealed_key(key: &UnlockKey, cause: &BootError, escrowed: Option<&std::path::Path>) -> bool {
    use std::io::Write;
    let text = zeroize::Zeroizing::new(format!(
        "\nswarmseal: THE SWARM'S UNLOCK KEY CHANGED BUT COULD NOT BE SEALED ({cause}).\n{}Store this key offline now (password manager, paper):\n\n    {}\n\nThen fix the cause and run `swarmseal seal`. Until it is sealed, a reboot of this manager needs this key (`swarmseal unlock --manual`).\n",
        escrowed.map(|p| format!("An age-encrypted copy is in {}. ", p.display())).unwrap_or_default(),
        key.expose()
    ));
    match (std::fs::OpenOptions::new().write(true).open("/dev/tty"), escrowed) {
        (Ok(mut tty), _) => tty.write_all(text.as_bytes()).is_ok(),
        (Err(_), Some(p)) => {
            eprintln!("swarmseal: the swarm's unlock key changed but could not be sealed ({cause}); no terminal, so the key is not printed: its age-encrypted copy is in {}", p.display());
            false
        }
        (Err(_), None) => {
            eprint!("{}", *text);
            true
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How long after a write-ahead marker was written its change may still arrive in the engine
/// (a killed command's request goes on in the engine: `POST /swarm/init` takes seconds).
const PENDING_SETTLE: Duration = Duration::from_secs(3);
/// How long [`repair_pending`] waits for an engine in `pending` (joining or initializing: a
/// killed command's `POST /swarm/init` goes on there, dockerd waits up to 20 s for the node)
/// before it leaves the marker to the next command.
const PENDING_STATE_WAIT: Duration = Duration::from_secs(60);

/// Change the engine's key (`change`: init with autolock, autolock on, rotate) under the rule
/// that the new key ends sealed, escrowed or shown: prepare the seal first (a failure there is
/// the command's error and the engine is not touched), write the write-ahead marker, change,
/// read the new key (differs from `old`), seal it at once; a seal failure keeps the key
/// reachable ([`Ctx::keep_reachable`], `NotSealed`) and leaves the marker for the next command.
/// Call with the state-dir lock held. Returns the new key, the seal, and the window from the
/// engine call to `current` in place.
async fn change_key<F>(ctx: &Ctx, engine: &Engine, op: &str, old: Option<&UnlockKey>, custody: Custody, change: F) -> Result<(UnlockKey, Sealed, Duration), BootError>
where
    F: std::future::Future<Output = Result<(), SwarmError>>,
{
    let prep = ctx.prepare_seal().await?;
    if old.is_some_and(|k| ctx.sealed_holds(k)) {
        ctx.ks.stage_previous()?;
    }
    ctx.mark_pending(op, old)?;
    let t0 = Instant::now();
    if let Err(e) = change.await {
        if matches!(e, SwarmError::Api { .. }) {
            // The engine refused: nothing changed.
            let _ = ctx.ks.clear_pending();
        }
        return Err(e.into());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let key = loop {
        match engine.unlock_key().await? {
            Some(k) if old != Some(&k) => break k,
            _ if Instant::now() > deadline => return Err(BootError::Other(format!("the engine reports no new unlock key 10 s after `{op}`; the next swarmseal command seals whatever key it then holds"))),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let sealed = ctx.seal_changed(Ok(prep), &key, custody).await?;
    let window = sealed.in_place - t0;
    ctx.ks.clear_pending()?;
    Ok((key, sealed, window))
}

/// Finish what a killed or failed command left (its write-ahead marker): once the engine is an
/// active manager, seal the key it holds now unless `current` already does, then remove the
/// marker. A marker younger than [`PENDING_SETTLE`] whose change has not shown yet is waited
/// for, and so is an engine in `pending` (up to [`PENDING_STATE_WAIT`]: a killed `init`'s swarm
/// is still being made, and would come up with a key nobody sealed). A locked engine keeps the
/// marker (its key is readable after the unlock).
/// Call with the state-dir lock held.
pub async fn repair_pending(ctx: &Ctx, engine: &Engine, custody: Custody) -> Result<(), BootError> {
    let Some(m) = ctx.ks.load_pending() else { return Ok(()) };
    let salt = hex::decode(&m.fingerprint_salt).unwrap_or_default();
    let age = Duration::from_secs(unix_now().saturating_sub(m.started));
    let deadline = Instant::now() + (PENDING_SETTLE + Duration::from_secs(1)).saturating_sub(age);
    let pending_deadline = Instant::now() + PENDING_STATE_WAIT;
    loop {
        let st = engine.status().await?;
        match st.state {
            NodeState::Active if st.manager => {
                let key = engine.unlock_key().await?;
                let unchanged = match (&key, &m.old_key_fingerprint) {
                    (Some(k), Some(f)) => k.fingerprint(&salt) == *f,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                if unchanged && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                if let Some(k) = key.filter(|k| !ctx.sealed_holds(k)) {
                    tracing::warn!(event = "change_pending_repaired", op = %m.op, "an interrupted `{}` left the engine's unlock key unsealed: sealing it now", m.op);
                    let prep = ctx.prepare_seal().await;
                    ctx.seal_changed(prep, &k, custody).await?;
                }
                ctx.ks.clear_pending()?;
                return Ok(());
            }
            NodeState::Locked => return Ok(()),
            NodeState::Pending if Instant::now() < pending_deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            NodeState::Inactive => {
                ctx.ks.clear_pending()?;
                return Ok(());
            }
            _ => return Ok(()),
        }
    }
}

/// Read the unlock key from stdin; no echo when stdin is a terminal.
pub(crate) fn read_key_from_stdin() -> Result<UnlockKey, BootError> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut saved = None;
    if tty {
        eprint!("Swarm unlock key: ");
        if let Ok(mut t) = rustix::termios::tcgetattr(&stdin) {
            saved = Some(t.clone());
            t.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        }
    }
    let mut line = Zeroizing::new(String::new());
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        eprintln!();
    }
    r.map_err(|e| BootError::Input(format!("cannot read the unlock key from stdin: {e}")))?;
    UnlockKey::new(line.to_string()).map_err(|e| BootError::Input(format!("{e}; pipe the key on stdin, e.g. `swarmseal unlock --manual < key.txt`")))
}

async fn engine(cfg: &Config) -> Result<Engine, BootError> {
    Ok(Engine::connect(&cfg.docker_socket()).await?)
}

/// Run one of the key commands (`init`, `seal`, `unlock`, `rotate`, `status`, `agent`).
pub async fn run_command(cfg: &Config, c: Command) -> Result<(), BootError> {
    let ctx = Ctx::new(cfg);
    match c {
        Command::Init { advertise_addr } => cmd_init(&ctx, advertise_addr.or(cfg.swarm.advertise_addr.clone())).await,
        Command::Seal => cmd_seal(&ctx).await,
        Command::Unlock { manual } => cmd_unlock(&ctx, manual).await,
        Command::Rotate => cmd_rotate(&ctx).await,
        Command::Status { json } => cmd_status(&ctx, json).await,
        Command::Agent => run_agent(ctx).await,
        Command::Recover { .. } | Command::Proxy | Command::Certs(_) | Command::Bench(_) | Command::Var(_) | Command::Health { .. } | Command::Update(_) | Command::Fleet(_) => unreachable!("dispatched in cli"),
    }
}

async fn active_manager(engine: &Engine) -> Result<(), BootError> {
    let st = engine.status().await?;
    match st.state {
        NodeState::Active if st.manager => Ok(()),
        NodeState::Active => Err(state_error(st.state, "this node is a worker; swarmseal runs on managers")),
        NodeState::Locked => Err(state_error(st.state, "unlock it first (`swarmseal unlock`, or `swarmseal unlock --manual`)")),
        NodeState::Inactive => Err(state_error(st.state, "this engine has no swarm; run `swarmseal init`")),
        s => Err(state_error(s, "wait until the node has joined, then retry")),
    }
}

async fn cmd_init(ctx: &Ctx, advertise: Option<String>) -> Result<(), BootError> {
    let engine = engine(&ctx.cfg).await?;
    let _lock = ctx.lock().await?;
    repair_pending(ctx, &engine, Custody::Terminal).await?;
    let st = engine.status().await?;
    let changed = match st.state {
        // Prepared first: a key that cannot be sealed would exist nowhere else.
        NodeState::Inactive => Some(change_key(ctx, &engine, "init", None, Custody::Terminal, async { engine.init_autolock(advertise.as_deref(), ctx.cfg.swarm.listen_addr.as_deref()).await.map(|_| ()) }).await?),
        NodeState::Active if st.manager && !engine.autolock().await? => Some(change_key(ctx, &engine, "autolock", None, Custody::Terminal, engine.enable_autolock()).await?),
        NodeState::Active if st.manager => None,
        _ => return active_manager(&engine).await,
    };
    if let Some((key, _, _)) = changed {
        tracing::info!(event = "swarm_init", "autolock on (swarm initialized or autolock enabled)");
        println!("swarm autolock on; unlock key sealed to the TPM ({})", ctx.ks.slot_path(Slot::Current).display());
        show_key_on_terminal(&key, "Swarm autolock is on");
        return Ok(());
    }
    let key = engine.unlock_key().await?.ok_or_else(|| BootError::Other("the engine reports no unlock key although autolock is on".into()))?;
    if let Some(cur) = ctx.ks.load(Slot::Current)? {
        if key.fingerprint(&cur.salt()) == cur.key_fingerprint {
            println!("swarm already initialized with autolock; its unlock key is already sealed (since {})", cur.created);
            return Ok(());
        }
    }
    ctx.seal(&key).await?;
    println!("swarm autolock on; unlock key sealed to the TPM ({})", ctx.ks.slot_path(Slot::Current).display());
    show_key_on_terminal(&key, "Swarm autolock is on");
    Ok(())
}

async fn cmd_seal(ctx: &Ctx) -> Result<(), BootError> {
    let engine = engine(&ctx.cfg).await?;
    // The key is read under the lock: a `rotate` in between would otherwise be sealed over.
    // What a killed command left is finished first, whatever state the engine is in now (a
    // killed `init` leaves it `pending` for seconds, then active with an unsealed key).
    let _lock = ctx.lock().await?;
    repair_pending(ctx, &engine, Custody::Terminal).await?;
    active_manager(&engine).await?;
    let key = engine.unlock_key().await?.ok_or_else(|| state_error(NodeState::Active, "autolock is off, so there is no unlock key: run `swarmseal init` to turn it on"))?;
    let slot = ctx.seal(&key).await?;
    let _ = ctx.ks.clear_pending();
    let literal = slot.policy.literal_pcrs().keys().cloned().collect::<Vec<_>>().join(",");
    match &slot.policy {
        crate::keystore::StoredPolicy::Pcr { .. } => println!("unlock key sealed to the TPM under PCRs {literal}"),
        crate::keystore::StoredPolicy::Authorize { signed_pcrs, public_key_fingerprint, .. } => println!(
            "unlock key sealed to the TPM under PCRs {literal} and a signed policy over PCR {} (key {public_key_fingerprint})",
            signed_pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
        ),
    }
    Ok(())
}

async fn cmd_unlock(ctx: &Ctx, manual: bool) -> Result<(), BootError> {
    let engine = engine(&ctx.cfg).await?;
    let st = engine.status().await?;
    match st.state {
        NodeState::Locked => {}
        NodeState::Active => {
            let _lock = ctx.lock().await?;
            repair_pending(ctx, &engine, Custody::Terminal).await?;
            println!("the swarm is already unlocked");
            return Ok(());
        }
        s => return Err(state_error(s, "there is nothing to unlock: the engine has no locked swarm")),
    }
    let _lock = ctx.lock().await?;
    if manual {
        let key = read_key_from_stdin()?;
        engine.unlock(&key).await?;
        tracing::warn!(event = "manual_unlock", security = true, "swarm unlocked by hand; resealing under the current measurements (the operator accepted this boot chain)");
        // Phase-lock even when the seal is refused (an unsigned image under policy = "authorize").
        let sealed = ctx.seal(&key).await;
        ctx.phase_lock().await?;
        sealed?;
        repair_pending(ctx, &engine, Custody::Terminal).await?;
        println!("swarm unlocked; key resealed under the current PCRs");
        return Ok(());
    }
    let result = ctx.unlock_from_tpm(&engine).await;
    if consumes_unlock(&result) {
        ctx.phase_lock().await?;
    } else if let Err(BootError::Tpm(e)) = &result {
        eprintln!("swarmseal: the TPM failed transiently ({e}); this boot's unlock was not consumed (no phase lock): run `swarmseal unlock` again once the TPM answers");
    }
    let (slot, engine_time) = result?;
    repair_pending(ctx, &engine, Custody::Terminal).await?;
    println!("swarm unlocked with the sealed key ({} slot; the engine's unlock call took {} ms)", slot.name(), engine_time.as_millis());
    Ok(())
}

async fn cmd_rotate(ctx: &Ctx) -> Result<(), BootError> {
    let engine = engine(&ctx.cfg).await?;
    active_manager(&engine).await?;
    let _lock = ctx.lock().await?;
    repair_pending(ctx, &engine, Custody::Terminal).await?;
    let old = engine.unlock_key().await?.ok_or_else(|| state_error(NodeState::Active, "autolock is off: run `swarmseal init` first"))?;
    tracing::warn!(event = "rotate", security = true, "rotating the swarm unlock key");
    // Window: from the rotation call to the new key sealed in `current` (README "Rotation").
    let (new, _, window) = change_key(ctx, &engine, "rotate", Some(&old), Custody::Terminal, engine.rotate_unlock_key()).await?;
    println!("unlock key rotated and sealed; the previous key stays sealed in the `previous` slot (window from the engine's rotation call to the sealed slot: {} ms)", window.as_millis());
    show_key_on_terminal(&new, "The swarm unlock key was rotated");
    Ok(())
}

/// Gather the status document (`swarmseal status --json`, `GET /swarmseal/v1/status`).
pub async fn status_json(ctx: &Ctx) -> serde_json::Value {
    use serde_json::json;
    // Whether `current` holds the engine's key (null: the engine's key is not readable now).
    let mut stale = serde_json::Value::Null;
    let swarm = match Engine::connect(&ctx.cfg.docker_socket()).await {
        Ok(e) => match e.status().await {
            Ok(s) => {
                let autolock = if s.state == NodeState::Active && s.manager { e.autolock().await.ok() } else { None };
                if autolock == Some(true) {
                    if let Ok(Some(k)) = e.unlock_key().await {
                        stale = json!(!ctx.sealed_holds(&k));
                    }
                }
                json!({"state": s.state, "node_id": s.node_id, "manager": s.manager, "autolock": autolock, "error": s.error, "api_version": e.api_version()})
            }
            Err(err) => json!({"error": err.to_string()}),
        },
        Err(err) => json!({"error": err.to_string()}),
    };
    let pcrs = ctx.boot_pcrs().await;
    let mut slots = serde_json::Map::new();
    for slot in [Slot::Current, Slot::Previous] {
        let v = match ctx.ks.load(slot) {
            Ok(None) => json!(null),
            Err(e) => json!({"error": e.to_string()}),
            Ok(Some(f)) => {
                let diffs = match (&pcrs, f.decode(&ctx.ks.slot_path(slot))) {
                    (Ok(_), Ok((_, policy))) => match ctx.read_pcrs_now(&policy).await {
                        Ok(now) => json!(ctx.policy_mismatches(&policy, &now)),
                        Err(_) => json!(null),
                    },
                    _ => json!(null),
                };
                json!({"created": f.created, "policy": f.policy, "differs": diffs})
            }
        };
        slots.insert(slot.name().into(), v);
    }
    let (tpm, phase_locked) = match &pcrs {
        Ok((v, locked)) => (json!({"tcti": ctx.tcti, "pcrs": pcrs_to_hex(v), "reachable": true}), json!(locked)),
        Err(e) => (json!({"tcti": ctx.tcti, "reachable": false, "error": e.to_string()}), json!(null)),
    };
    let bench = last_bench_summary(&ctx.cfg);
    json!({
        "swarm": swarm,
        "sealed": slots,
        "sealed_key_stale": stale,
        "change_pending": ctx.ks.load_pending().map(|p| json!({"op": p.op, "started": p.started})),
        "tpm": tpm,
        "phase_locked": phase_locked,
        "phase_pcr": ctx.cfg.tpm.phase_pcr,
        "proxy": {"enabled": ctx.cfg.proxy.enabled, "listen": ctx.cfg.proxy.listen.to_string()},
        "escrow": ctx.cfg.escrow.recipient.as_ref().map(|_| crate::escrow::path(&ctx.cfg.state_dir)),
        "bench": bench,
        "image": crate::update::os_image(&ctx.cfg.update.os_release),
    })
}

/// Summary of the newest report under `<state_dir>/bench/`, if any.
fn last_bench_summary(cfg: &Config) -> serde_json::Value {
    let Some(bytes) = latest_bench_report(cfg) else { return serde_json::Value::Null };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return serde_json::Value::Null };
    serde_json::json!({"checks": v.get("checks"), "score": v.get("score"), "end": v.get("end")})
}

/// Bytes of the last bench report (`<state_dir>/bench/latest.json`), if any.
pub fn latest_bench_report(cfg: &Config) -> Option<Vec<u8>> {
    std::fs::read(crate::bench::last_report_path(&cfg.state_dir)).ok()
}

async fn cmd_status(ctx: &Ctx, json: bool) -> Result<(), BootError> {
    // Like every command that reaches the engine, finish what an interrupted one left.
    if ctx.ks.load_pending().is_some() {
        if let Ok(engine) = engine(&ctx.cfg).await {
            let _lock = ctx.lock().await?;
            if let Err(e) = repair_pending(ctx, &engine, Custody::Terminal).await {
                eprintln!("swarmseal: {e}");
            }
        }
    }
    let v = status_json(ctx).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let s = |p: &str| v.pointer(p).map(|x| x.to_string().trim_matches('"').to_string()).unwrap_or_else(|| "-".into());
    println!("swarm      state {} (manager {}, autolock {}){}", s("/swarm/state"), s("/swarm/manager"), s("/swarm/autolock"), v.pointer("/swarm/error").filter(|x| !x.is_null()).map(|e| format!(" — {e}")).unwrap_or_default());
    for slot in ["current", "previous"] {
        match v.pointer(&format!("/sealed/{slot}")) {
            Some(serde_json::Value::Null) | None => println!("{slot:<10} (empty)"),
            Some(x) if x.get("error").is_some() => println!("{slot:<10} unreadable: {}", x["error"]),
            Some(x) => {
                let d = x.get("differs").and_then(|d| d.as_array()).map(|a| a.len());
                println!("{slot:<10} sealed {} — {}", x["created"].as_str().unwrap_or("?"), match d {
                    Some(0) => "policy PCRs match this boot".to_string(),
                    Some(_) => format!("PCRs differ: {}", x["differs"]),
                    None => "TPM not readable".to_string(),
                });
            }
        }
    }
    if v["sealed_key_stale"] == true {
        println!("key        sealed key is stale: the engine's unlock key differs from the sealed one; run `swarmseal seal` (a reboot now would need the operator's or the escrowed key)");
    }
    if let Some(p) = v.get("change_pending").filter(|p| !p.is_null()) {
        println!("pending    an interrupted `{}` is not finished: the next command with the swarm active seals the engine's key", p["op"].as_str().unwrap_or("?"));
    }
    println!("tpm        {} reachable {} phase-locked {}", s("/tpm/tcti"), s("/tpm/reachable"), s("/phase_locked"));
    println!("proxy      enabled {} listen {}", s("/proxy/enabled"), s("/proxy/listen"));
    println!("bench      {}", v.get("bench").map(|b| b.to_string()).unwrap_or_default());
    Ok(())
}

// ---------------------------------------------------------------- the agent

/// systemd notification (`sd_notify(3)`): no-op without `NOTIFY_SOCKET`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = path.to_string_lossy();
    let r = if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &*p)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn status_line(s: &str) {
    notify(&format!("STATUS={s}"));
}

/// First-boot settings from systemd credentials (`$CREDENTIALS_DIRECTORY`):
/// `swarmseal.advertise-addr`, `swarmseal.swarm-init` (`yes`/`no`),
/// `swarmseal.escrow-recipient` (age1…), `swarmseal.client-ca` (PEM: the CA that
/// signs client certificates), `swarmseal.server-cert` and `swarmseal.server-key`
/// (PEM: the proxy's certificate, signed by a CA the operator's clients trust).
/// A malformed credential is reported and ignored; the safe default stays
/// (no swarm init without a valid advertise address).
pub fn apply_credentials(cfg: &mut Config, dir: &std::path::Path) -> Vec<String> {
    let mut problems = Vec::new();
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).ok().map(|s| s.trim().to_string());
    if let Some(a) = read("swarmseal.advertise-addr") {
        let host = a.rsplit_once(':').map(|(h, _)| h).unwrap_or(&a);
        if a.parse::<std::net::IpAddr>().is_ok() || a.parse::<std::net::SocketAddr>().is_ok() || (!host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')) {
            cfg.swarm.advertise_addr = Some(a);
        } else {
            problems.push(format!("credential swarmseal.advertise-addr {a:?} is not an IP address, interface name or host[:port]; the swarm is not initialized until it is fixed"));
            cfg.swarm.init = false;
        }
    }
    if let Some(v) = read("swarmseal.swarm-init") {
        match v.as_str() {
            "yes" | "true" | "1" => cfg.swarm.init = cfg.swarm.init || problems.is_empty(),
            "no" | "false" | "0" => cfg.swarm.init = false,
            other => {
                problems.push(format!("credential swarmseal.swarm-init {other:?} is not yes/no; not initializing a swarm"));
                cfg.swarm.init = false;
            }
        }
    }
    if let Some(r) = read("swarmseal.escrow-recipient") {
        match crate::escrow::parse_recipient(&r) {
            Ok(_) => cfg.escrow.recipient = Some(r),
            Err(e) => problems.push(format!("credential swarmseal.escrow-recipient: {e}; no escrow copy is written")),
        }
    }
    let pki = cfg.pki_dir();
    let pem_creds = [
        ("swarmseal.client-ca", cfg.proxy.client_ca.clone().unwrap_or_else(|| pki.join("ca.pem")), "-----BEGIN CERTIFICATE-----", 0o644),
        ("swarmseal.server-cert", cfg.proxy.server_cert.clone().unwrap_or_else(|| pki.join("server-cert.pem")), "-----BEGIN CERTIFICATE-----", 0o644),
        ("swarmseal.server-key", cfg.proxy.server_key.clone().unwrap_or_else(|| pki.join("server-key.pem")), "PRIVATE KEY-----", 0o600),
    ];
    for (name, target, marker, mode) in pem_creds {
        let Ok(pem) = std::fs::read(dir.join(name)).map(Zeroizing::new) else { continue };
        if !String::from_utf8_lossy(&pem).contains(marker) {
            problems.push(format!("credential {name} is not PEM ({marker}); the proxy will not start until it is fixed"));
        } else if std::fs::read(&target).ok().map(Zeroizing::new).as_deref().map(|v| &v[..]) != Some(&pem[..]) {
            let r = std::fs::create_dir_all(target.parent().expect("parent")).map_err(|e| e.to_string()).and_then(|_| crate::keystore::write_atomic(&target, &pem, mode).map_err(|e| e.to_string()));
            if let Err(e) = r {
                problems.push(format!("cannot install credential {name} as {}: {e}", target.display()));
            }
        }
    }
    problems
}

struct AgentImpl {
    ctx: Ctx,
}

impl crate::proxy::AgentApi for AgentImpl {
    fn status(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send + '_>> {
        Box::pin(status_json(&self.ctx))
    }
    fn bench(&self) -> Option<Vec<u8>> {
        latest_bench_report(&self.ctx.cfg)
    }
    fn reseal(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        Box::pin(async move {
            let r: Result<SlotFile, BootError> = async {
                let engine = engine(&self.ctx.cfg).await?;
                active_manager(&engine).await?;
                let _lock = self.ctx.lock().await?;
                let key = engine.unlock_key().await?.ok_or_else(|| state_error(NodeState::Active, "autolock is off"))?;
                let slot = self.ctx.seal(&key).await?;
                let _ = self.ctx.ks.clear_pending();
                Ok(slot)
            }
            .await;
            match r {
                Ok(slot) => {
                    tracing::warn!(event = "reseal", security = true, "unlock key resealed on request through the proxy");
                    Ok(serde_json::json!({"sealed": true, "created": slot.created, "policy": slot.policy}))
                }
                Err(BootError::State { state, .. }) => Err(ApiError::new(ApiErrorKind::Conflict, format!("the swarm is {state}: unlock it first (`docker swarm unlock` through this proxy), then reseal"))),
                Err(e @ BootError::SealRefused { .. }) => Err(ApiError::new(ApiErrorKind::Conflict, e.to_string())),
                Err(e) => Err(ApiError::new(ApiErrorKind::Internal, e.to_string())),
            }
        })
    }
    fn recover(&self, key: Option<UnlockKey>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        Box::pin(crate::recover::via_proxy(&self.ctx, key))
    }
    fn var_enroll_tpm(&self, recovery_key: Zeroizing<String>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        Box::pin(async move {
            let r = crate::var::enroll_tpm_via(std::path::Path::new(crate::var::ENROLL_SOCKET), &recovery_key).await;
            match r {
                Ok(lines) => {
                    tracing::warn!(event = "var_tpm_enrolled", security = true, "/var re-bound to this machine's TPM on request through the proxy");
                    Ok(serde_json::json!({"enrolled": true, "output": lines}))
                }
                Err((code, msg)) => {
                    tracing::warn!(event = "var_tpm_enroll_failed", security = true, status = code, "{msg}");
                    Err(ApiError::from_status(code, msg))
                }
            }
        })
    }
    fn update(&self, from: crate::proxy::UpdateFrom, reboot: bool) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        Box::pin(async move {
            let r = receive_and_apply(&self.ctx.cfg, from, reboot).await;
            match r {
                Ok(version) => {
                    tracing::warn!(event = "image_update", security = true, version = %version, reboot, "a signed release was staged and installed into the inactive slot on request through the proxy");
                    Ok(serde_json::json!({"version": version, "staged": true, "reboot": reboot}))
                }
                Err(e) => {
                    let refusal = ApiError::from(&e);
                    tracing::warn!(event = "image_update_refused", security = true, status = refusal.status(), "{e}");
                    Err(refusal)
                }
            }
        })
    }
    fn escrow(&self, file: crate::proxy::EscrowFile) -> Option<Vec<u8>> {
        let dir = &self.ctx.cfg.state_dir;
        match file {
            crate::proxy::EscrowFile::UnlockKey => {
                self.ctx.cfg.escrow.recipient.as_ref()?;
                std::fs::read(crate::escrow::path(dir)).ok()
            }
            // Written by the privileged `swarmseal var escrow-recovery-key`.
            crate::proxy::EscrowFile::VarRecoveryKey => std::fs::read(crate::var::escrow_path(dir)).ok(),
        }
    }
}

/// The answer of `POST /swarmseal/v1/update` for this error (the proxy maps the kind to the status).
impl From<&crate::update::UpdateError> for ApiError {
    fn from(e: &crate::update::UpdateError) -> ApiError {
        use crate::update::UpdateError as E;
        use swarmseal_release::ReleaseError as R;
        let kind = match e {
            E::Release(R::NotSigned(_) | R::Invalid(_) | R::HashMismatch { .. }) => ApiErrorKind::Unprocessable,
            E::Release(R::TooLarge { .. }) => ApiErrorKind::PayloadTooLarge,
            E::Release(R::Body(_)) => ApiErrorKind::BadRequest,
            E::Release(R::Key { .. } | R::Io { .. } | R::Pack(_)) => ApiErrorKind::Internal,
            E::Busy => ApiErrorKind::Conflict,
            E::Request(_) | E::NoSource => ApiErrorKind::BadRequest,
            E::ApplyUnavailable(_) => ApiErrorKind::Unavailable,
            E::Tool { .. } | E::Source { .. } => ApiErrorKind::BadGateway,
            E::Io { .. } | E::SourceSetup(_) => ApiErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// `POST /swarmseal/v1/update`: check the size, receive (the upload, or the release fetched
/// from `[update] source`: [`crate::update::source::fetch_and_receive`]), verify and stage it
/// (see [`crate::update::receive`]), then hand it to the apply service, holding the staging
/// lock until it answered. Returns the version.
async fn receive_and_apply(cfg: &Config, from: crate::proxy::UpdateFrom, reboot: bool) -> Result<String, crate::update::UpdateError> {
    use crate::proxy::UpdateFrom;
    use crate::update::{self, UpdateError};
    let max = cfg.update.max_bytes;
    let staged = match from {
        UpdateFrom::Upload { body, content_length } => {
            if content_length.is_some_and(|n| n > max) {
                return Err(UpdateError::Release(update::ReleaseError::TooLarge { max }));
            }
            let key = update::load_key(&cfg.update.public_key)?;
            update::receive(&key, &cfg.update_dir(), max, update::BodyReader::new(body)).await?
        }
        UpdateFrom::Source { version } => {
            let key = update::load_key(&cfg.update.public_key)?;
            update::source::fetch_and_receive(cfg, &key, &version).await?
        }
    };
    tracing::info!(event = "image_update_staged", version = %staged.version, dir = %staged.dir.display(), "release verified and staged; asking the apply service to install it");
    let lines = update::apply_via(&cfg.update.socket, &staged.version, reboot).await?;
    for l in &lines {
        tracing::info!(event = "image_update_apply", version = %staged.version, "{l}");
    }
    Ok(staged.version)
}

/// `swarmseal proxy`: only the TLS proxy, with the agent endpoints.
pub async fn run_proxy_only(cfg: &Config) -> Result<(), BootError> {
    let api = Arc::new(AgentImpl { ctx: Ctx::new(cfg) });
    Ok(crate::proxy::serve(cfg, api, shutdown_signal()).await?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Facts for the bench's appliance checks.
pub async fn appliance_facts(cfg: &Config) -> crate::bench::ApplianceFacts {
    let ctx = Ctx::new(cfg);
    crate::bench::ApplianceFacts {
        sealed_key: ctx.sealed_key_fact().await,
        proxy_requires_client_certs: cfg.proxy.enabled.then_some(true),
        proxy_listen: cfg.proxy.enabled.then(|| cfg.proxy.listen.to_string()),
    }
}

/// The boot decision for one engine state. Returns a one-line STATUS.
async fn boot_decision(ctx: &Ctx, engine: &Engine) -> Result<String, BootError> {
    let _lock = ctx.lock().await?;
    let st = engine.status().await?;
    if st.state != NodeState::Locked {
        // A locked engine's key is readable only after the unlock (then ensure_sealed repairs).
        repair_pending(ctx, engine, Custody::Journal).await?;
    }
    match st.state {
        NodeState::Inactive if ctx.cfg.swarm.init => {
            // Prepared first: a key that cannot be sealed would exist nowhere else.
            let c = &ctx.cfg.swarm;
            change_key(ctx, engine, "init", None, Custody::Journal, async { engine.init_autolock(c.advertise_addr.as_deref(), c.listen_addr.as_deref()).await.map(|_| ()) }).await?;
            tracing::info!(event = "swarm_init", "swarm initialized with autolock on");
            Ok("swarm initialized with autolock; key sealed".into())
        }
        NodeState::Inactive => Ok("no swarm on this engine and swarm init is off; waiting".into()),
        NodeState::Locked => {
            let r = ctx.unlock_from_tpm(engine).await.map(|(slot, _)| slot);
            match &r {
                Err(e) => log_refusal(e),
                // A manager that was down during a rotation: its engine rewraps its keys under the
                // swarm's new key as soon as it has caught up, often before the unlock returns.
                // Seal that key now, not at the first watch tick, so a power cut in between still
                // finds it in the TPM. Not active yet: the watch loop reseals.
                Ok(_) => {
                    if matches!(engine.status().await, Ok(st) if st.state == NodeState::Active && st.manager) {
                        if let Err(e) = ensure_sealed(ctx, engine).await {
                            tracing::warn!(event = "reseal_deferred", error = %e, "could not check the unlock key right after unlocking; the watch loop retries");
                        }
                    }
                }
            }
            r.map(|slot| format!("swarm unlocked with the sealed key ({} slot)", slot.name()))
        }
        NodeState::Active if st.manager => {
            ensure_sealed(ctx, engine).await?;
            match ctx.sealed_key_fact().await {
                Some(crate::bench::SealedKeyFact { pcrs_match: Some(false), detail }) => {
                    // Someone unlocked this boot by hand without resealing: do not accept the
                    // chain on their behalf, but say that the next boot will stay locked.
                    tracing::warn!(event = "seal_stale", detail = %detail, "swarm active, but the sealed key does not match this boot's PCRs: the next boot of this chain stays locked; POST /swarmseal/v1/reseal (or `swarmseal seal`) accepts this boot chain");
                    Ok(format!("swarm active; sealed key does not match this boot ({detail})"))
                }
                _ => Ok("swarm active; sealed key up to date".into()),
            }
        }
        s => Ok(format!("swarm is {s}; waiting")),
    }
}

fn log_refusal(e: &BootError) {
    match e {
        BootError::Tpm(TpmError::PolicyMismatch { changed }) => {
            let pcrs: Vec<u8> = changed.iter().map(|d| d.pcr).collect();
            tracing::error!(event = "unlock_refused", reason = "policy_mismatch", changed_pcrs = ?pcrs, detail = %e, "the boot measurements changed: the swarm stays locked; unlock by hand (`docker swarm unlock` through the proxy), then POST /swarmseal/v1/reseal to accept this boot chain");
        }
        BootError::Tpm(TpmError::NotSigned { signed, .. } | TpmError::BadSignature { signed, .. }) => {
            let pcrs: Vec<u8> = signed.iter().map(|v| v.pcr).collect();
            tracing::error!(event = "unlock_refused", reason = "not_signed", unsigned_pcrs = ?pcrs, detail = %e, "this boot's image is not approved by the fleet's PCR signature: the swarm stays locked; boot a signed image, or unlock by hand (`docker swarm unlock` through the proxy), then POST /swarmseal/v1/reseal");
        }
        other => tracing::error!(event = "unlock_refused", reason = ?other.exit(), detail = %other, "the swarm stays locked; unlock by hand (`docker swarm unlock` through the proxy)"),
    }
}

/// Make sure autolock is on and the sealed key equals the engine's key; reseal if not. First
/// finishes what an interrupted command left ([`repair_pending`]). Turning autolock on goes
/// through [`change_key`]: not at all when the seal cannot be prepared. Call with the lock held.
async fn ensure_sealed(ctx: &Ctx, engine: &Engine) -> Result<bool, BootError> {
    repair_pending(ctx, engine, Custody::Journal).await?;
    let key = match engine.unlock_key().await? {
        Some(k) => k,
        None => {
            tracing::warn!(event = "autolock_enabled", security = true, "autolock was off: turning it on (this appliance keeps every manager autolocked)");
            change_key(ctx, engine, "autolock", None, Custody::Journal, engine.enable_autolock()).await?;
            return Ok(true);
        }
    };
    if ctx.sealed_holds(&key) {
        // Escrow configured after the key was sealed: the operator's copy is written now.
        if let Some(r) = &ctx.cfg.escrow.recipient {
            if !crate::escrow::path(&ctx.cfg.state_dir).exists() {
                let p = crate::escrow::write(&ctx.cfg.state_dir, r, &key)?;
                tracing::info!(event = "escrow", file = %p.display(), "escrow copy of the unlock key written (age-encrypted)");
            }
        }
        return Ok(false);
    }
    tracing::info!(event = "key_changed", "the engine's unlock key differs from the sealed one (rotated here or on another manager): resealing");
    let prep = ctx.prepare_seal().await;
    ctx.seal_changed(prep, &key, Custody::Journal).await?;
    Ok(true)
}

/// `swarmseal agent`: the boot flow, then watch for key changes until SIGTERM.
pub async fn run_agent(ctx: Ctx) -> Result<(), BootError> {
    let mut cfg = ctx.cfg.clone();
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    for p in creds.map(|d| apply_credentials(&mut cfg, &d)).unwrap_or_default() {
        tracing::error!(event = "bad_credential", "{p}");
        eprintln!("swarmseal: {p}");
    }
    let ctx = Ctx { cfg, ..ctx };
    status_line("waiting for the Docker engine");
    let t0 = Instant::now();
    // SIGTERM from here on is handled, not fatal: while waiting for the engine
    // it stops the agent at once; once the boot decision has begun it is held
    // until the phase lock is done, so a stop between unseal and phase lock
    // cannot leave the key unsealable again in this boot.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| BootError::Other(e.to_string()))?;
    let socket = ctx.cfg.docker_socket();
    let engine = tokio::select! {
        e = Engine::wait(&socket, Duration::from_secs(600)) => e?,
        _ = term.recv() => {
            tracing::info!(event = "stopped", "stopped while waiting for the Docker engine");
            return Ok(());
        }
    };
    tracing::info!(event = "engine_up", api = %engine.api_version(), waited_ms = t0.elapsed().as_millis() as u64, "Docker engine answers");

    let api = Arc::new(AgentImpl { ctx: ctx.clone() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let proxy = if ctx.cfg.proxy.enabled {
        let cfg = ctx.cfg.clone();
        let api: Arc<dyn crate::proxy::AgentApi> = api.clone();
        let mut rx = stop_rx.clone();
        Some(tokio::spawn(async move {
            let r = crate::proxy::serve(&cfg, api, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = r {
                tracing::error!(event = "proxy_failed", error = %e, "the TLS proxy is not serving");
            }
        }))
    } else {
        None
    };

    // While the TPM fails transiently (not answering, busy), nothing is consumed: decide again.
    let decision = loop {
        let d = boot_decision(&ctx, &engine).await;
        match &d {
            Err(BootError::Tpm(e)) if e.is_retryable() => {
                tracing::warn!(event = "boot_decision_retry", error = %e, "the TPM failed transiently; the boot's unlock is not consumed, trying again in {} s", WATCH_INTERVAL.as_secs());
                status_line(&format!("waiting for the TPM: {e}"));
                tokio::select! {
                    _ = term.recv() => {
                        tracing::info!(event = "stopped", "stopped while waiting for the TPM");
                        let _ = stop_tx.send(true);
                        return Ok(());
                    }
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                }
            }
            _ => break d,
        }
    };
    let line = match &decision {
        Ok(l) => l.clone(),
        Err(e) => format!("locked: {e}"),
    };
    if consumes_unlock(&decision) {
        if let Err(e) = ctx.phase_lock().await {
            tracing::error!(event = "phase_lock_failed", error = %e, "could not extend the phase PCR");
        }
    }
    status_line(&line);
    tracing::info!(event = "boot_done", elapsed_ms = t0.elapsed().as_millis() as u64, "{line}");

    if ctx.cfg.bench.at_boot {
        run_boot_bench(&ctx.cfg).await;
    }
    notify("READY=1");
    status_line(&line);

    let mut last_state: Option<NodeState> = None;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        match engine.status().await {
            Ok(st) => {
                if last_state != Some(st.state) {
                    tracing::info!(event = "swarm_state", state = %st.state, "swarm state");
                    status_line(&format!("swarm {}", st.state));
                    if st.state == NodeState::Locked && last_state.is_some() {
                        tracing::warn!(event = "locked_again", "the engine restarted and is locked; the phase lock prevents unsealing again in this boot: unlock by hand (`docker swarm unlock` through the proxy) or reboot");
                    }
                    last_state = Some(st.state);
                }
                if st.state == NodeState::Active && st.manager {
                    let _lock = ctx.lock().await;
                    if let Err(e) = ensure_sealed(&ctx, &engine).await {
                        tracing::error!(event = "reseal_failed", error = %e, "could not reseal the changed unlock key");
                    }
                } else if st.state != NodeState::Locked && ctx.ks.load_pending().is_some() {
                    let _lock = ctx.lock().await;
                    if let Err(e) = repair_pending(&ctx, &engine, Custody::Journal).await {
                        tracing::error!(event = "reseal_failed", error = %e, "could not finish an interrupted key change");
                    }
                }
            }
            Err(e) => tracing::warn!(event = "engine_unreachable", error = %e, "engine not answering"),
        }
    }
    notify("STOPPING=1");
    let _ = stop_tx.send(true);
    if let Some(p) = proxy {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    Ok(())
}

/// The CIS checks at boot: full report to `<state_dir>/bench/latest.json`,
/// the summary as one journal event.
async fn run_boot_bench(cfg: &Config) {
    let t = Instant::now();
    let facts = appliance_facts(cfg).await;
    match crate::bench::run_report(&cfg.docker_socket(), facts, &crate::bench::Selection::default()).await {
        Ok(r) => {
            let s = r.summary();
            let path = crate::bench::write_boot_report(&cfg.state_dir, &r);
            tracing::info!(
                event = "bench",
                checks = s.checks,
                pass = s.pass,
                warn = s.warn,
                info = s.info,
                note = s.note,
                score = s.score,
                elapsed_ms = t.elapsed().as_millis() as u64,
                report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|e| format!("not written: {e}")),
                "CIS Docker Benchmark v1.6.0: {} checks, {} pass, {} warn, score {}", s.checks, s.pass, s.warn, s.score
            );
        }
        Err(e) => tracing::error!(event = "bench_failed", error = %e, "the CIS checks could not run"),
    }
}
