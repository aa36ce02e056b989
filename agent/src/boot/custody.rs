//! Key custody: a command that changes the engine's key (`init`, `rotate`, the agent's autolock
//! re-enable) prepares the seal first, writes a write-ahead marker, changes the key and seals it
//! at once; a key that cannot be sealed is escrowed and shown ([`Ctx::keep_reachable`]); a marker
//! a killed command left is finished by the next one ([`repair_pending`]).

use std::time::{Duration, Instant};

use super::seal::escrow_write;
use super::{blocking, BootError, Ctx, Custody, PreparedSeal, Sealed};
use crate::keystore::PendingChange;
use crate::secret::UnlockKey;
use crate::swarm::{Engine, NodeState, SwarmError};

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
pub(super) async fn change_key<F>(ctx: &Ctx, engine: &Engine, op: &str, old: Option<&UnlockKey>, custody: Custody, change: F) -> Result<(UnlockKey, Sealed, Duration), BootError>
where
    F: std::future::Future<Output = Result<(), SwarmError>>,
{
    let prep = ctx.prepare_seal().await?;
    if old.is_some_and(|k| ctx.sealed_holds(k)) {
        let ks = ctx.ks.clone();
        blocking(move || ks.stage_previous()).await?;
    }
    ctx.mark_pending(op, old).await?;
    // Logged once the preflight passed and the marker is on disk: a refused command changed nothing.
    tracing::warn!(event = "unlock_key_change", security = true, op, "changing the swarm unlock key (`{op}`)");
    let t0 = Instant::now();
    if let Err(e) = change.await {
        if matches!(e, SwarmError::Api { .. }) {
            // The engine refused: nothing changed.
            let _ = ctx.clear_pending().await;
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
    ctx.metrics.key_change(op);
    let sealed = ctx.seal_changed(Ok(prep), &key, custody).await?;
    let window = sealed.in_place - t0;
    ctx.clear_pending().await?;
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
                ctx.clear_pending().await?;
                return Ok(());
            }
            NodeState::Locked => return Ok(()),
            NodeState::Pending if Instant::now() < pending_deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            NodeState::Inactive => {
                ctx.clear_pending().await?;
                return Ok(());
            }
            _ => return Ok(()),
        }
    }
}


/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}


impl Ctx {
    /// Seal a key the engine already changed to; if that fails, keep it reachable
    /// ([`Ctx::keep_reachable`]) and return `NotSealed`.
    pub async fn seal_changed(&self, prep: Result<PreparedSeal, BootError>, key: &UnlockKey, custody: Custody) -> Result<Sealed, BootError> {
        let r = match prep {
            Ok(p) => self.seal_with(p, key).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(s) => Ok(s),
            Err(e) => Err(self.keep_reachable(key, &e, custody).await),
        }
    }

    /// The engine holds a key that could not be sealed (`cause`): write the escrow copy if
    /// configured, and show the key on the terminal (`Terminal`: `/dev/tty`, else stderr) or
    /// log `key_unsealed_pending` (`Journal`: never the key). Returns the `NotSealed` error.
    pub async fn keep_reachable(&self, key: &UnlockKey, cause: &BootError, custody: Custody) -> BootError {
        let escrowed = match &self.cfg.escrow.recipient {
            None => None,
            Some(r) => match escrow_write(&self.cfg.state_dir, r, key).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(event = "escrow_failed", error = %e, "the escrow copy of the unsealed key could not be written either");
                    None
                }
            },
        };
        let shown = custody == Custody::Terminal && super::terminal::show_unsealed_key(key, cause, escrowed.as_deref());
        if custody != Custody::Terminal {
            tracing::error!(event = "key_unsealed_pending", security = true, escrowed = %escrowed.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "no".into()), cause = %cause, "the engine's unlock key changed but could not be sealed; retrying at every watch tick");
        }
        BootError::NotSealed { cause: cause.to_string(), escrowed, shown }
    }

    /// Write the write-ahead marker before asking the engine to change its key (`op`).
    async fn mark_pending(&self, op: &str, old: Option<&UnlockKey>) -> Result<(), BootError> {
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
        let ks = self.ks.clone();
        Ok(blocking(move || ks.store_pending(&p)).await?)
    }

    /// Remove the write-ahead marker (on a blocking thread: it fsyncs the directory).
    pub(super) async fn clear_pending(&self) -> Result<(), crate::keystore::KeystoreError> {
        let ks = self.ks.clone();
        blocking(move || ks.clear_pending()).await
    }

}
