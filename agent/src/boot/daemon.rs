//! `swarmseal agent`: wait for the engine, make the boot's unlock decision, lock the phase,
//! then watch for key changes until SIGTERM; `swarmseal proxy`: only the proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::AgentImpl;
use super::custody::{change_key, repair_pending};
use super::notify::{notify, status_line};
use super::{appliance_facts, apply_credentials, BootError, Ctx, Custody, WATCH_INTERVAL};
use crate::config::Config;
use crate::keystore::Slot;
use crate::swarm::{Engine, NodeState};
use crate::tpm::TpmError;

/// `swarmseal proxy`: only the TLS proxy, with the agent endpoints.
pub async fn run_proxy_only(cfg: &Config) -> Result<(), BootError> {
    let ctx = Ctx::new(cfg);
    flush_leftovers(&ctx).await;
    let api = AgentImpl::new(ctx);
    Ok(crate::proxy::serve(cfg, api, shutdown_signal()).await?)
}

/// Flush the transient TPM objects a killed predecessor left loaded (no resource manager:
/// swtpm, `/dev/tpm0`), before this process uses the TPM; said in the journal. A TPM that
/// does not answer is left to the boot decision, which says so.
async fn flush_leftovers(ctx: &Ctx) {
    match ctx.tpm(|t| t.flush_transient_handles()).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(event = "tpm_flushed", count = n, "flushed {n} transient TPM object(s) a previous process left loaded"),
        Err(e) => tracing::warn!(event = "tpm_flush_failed", "could not flush leftover transient TPM objects: {e}"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// The boot decision for one engine state. Returns a one-line STATUS.
pub async fn boot_decision(ctx: &Ctx, engine: &Engine) -> Result<String, BootError> {
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
            let r = match ctx.unlock_from_tpm(engine).await.map(|(slot, _)| slot) {
                Err(e) if window_may_follow(&e) => match ctx.window_permit().await {
                    Some((changed, decided_in)) => match unlock_with_window(ctx, engine, &decided_in).await {
                        // The unlock is consumed (the phase lock follows): a failed reseal of
                        // `current` is left to the watch loop (ensure_sealed, the claim says
                        // the copy unlocked in this boot).
                        Ok(key) => {
                            ctx.metrics.unlock("unlocked", "firmware_window");
                            return Ok(match finish_window(ctx, &key, &changed).await {
                                Ok(()) => format!("swarm unlocked after the accepted firmware change ({changed}); unlock key resealed to the new PCR 7"),
                                Err(f) => {
                                    tracing::warn!(event = "reseal_deferred", error = %f, "unlocked with the window copy after the accepted firmware change, but could not reseal the unlock key to the new PCR 7; the watch loop retries");
                                    format!("swarm unlocked after the accepted firmware change ({changed}); resealing to the new PCR 7 deferred ({f})")
                                }
                            });
                        }
                        // A transient TPM failure: the whole decision is taken again.
                        Err(w @ BootError::Tpm(_)) if matches!(&w, BootError::Tpm(t) if t.is_retryable()) => Err(w),
                        Err(w) => {
                            tracing::error!(event = "firmware_window_unlock_failed", security = true, error = %w, before = %e, "the firmware change of this boot was accepted, but the window copy of the unlock key did not unlock the swarm");
                            Err(w)
                        }
                    },
                    None => Err(e),
                },
                r => r,
            };
            match &r {
                Err(e) => {
                    // A transient TPM failure is decided again (run_agent): not an outcome yet.
                    if !matches!(e, BootError::Tpm(t) if t.is_retryable()) {
                        ctx.metrics.unlock("refused", refusal_reason(e));
                    }
                    log_refusal(e)
                }
                // A manager that was down during a rotation: its engine rewraps its keys under the
                // swarm's new key as soon as it has caught up, often before the unlock returns.
                // Seal that key now, not at the first watch tick, so a power cut in between still
                // finds it in the TPM. Not active yet: the watch loop reseals.
                Ok(_) => {
                    ctx.metrics.unlock("unlocked", "sealed_key");
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

/// Whether a failed unlock from `current` / `previous` leaves room for the window copy: the
/// TPM refused (or something else failed for good), not a transient TPM failure (decided
/// again) nor an already locked phase.
fn window_may_follow(e: &BootError) -> bool {
    !matches!(e, BootError::PhaseLocked { .. }) && !matches!(e, BootError::Tpm(t) if t.is_retryable())
}

/// The boot after an accepted firmware change (`crate::firmware` module docs): claim and
/// unseal the window copy, unlock the engine with it, and mark the claim `unlocked`
/// ([`Ctx::window_unlocked`]; a failure there is logged: the key is in hand, and only a
/// restart would need the mark). Returns the key for [`finish_window`]. Call with the lock
/// held, only when [`Ctx::window_permit`] said so (for the decision of boot `decided_in`).
async fn unlock_with_window(ctx: &Ctx, engine: &Engine, decided_in: &str) -> Result<crate::secret::UnlockKey, BootError> {
    let key = ctx.unseal_window_for(decided_in).await?;
    engine.unlock(&key).await?;
    tracing::info!(event = "unlock", slot = "window", "swarm unlocked with the firmware window's copy of the key");
    if let Err(e) = ctx.window_unlocked().await {
        tracing::warn!(event = "firmware_window_claim_failed", error = %e, "could not mark the window copy's claim as used: a restart before the reseal leaves the swarm to the operator's reseal");
    }
    Ok(key)
}

/// Reseal `key` to `current` under this boot's PCRs (the new PCR 7; the escrow copy refreshed
/// as every seal does), and only then delete the window copy (and its claim): a process killed
/// in between leaves the copy for [`ensure_sealed`] to finish in this boot, a boot cut short
/// leaves it to the next one ([`Ctx::window_permit`]). Logs
/// `firmware_window_unlocked` and says it on the console.
async fn finish_window(ctx: &Ctx, key: &crate::secret::UnlockKey, changed: &str) -> Result<(), BootError> {
    ctx.seal(key).await?;
    let ks = ctx.ks.clone();
    super::blocking(move || ks.drop_window()).await?;
    tracing::warn!(event = "firmware_window_unlocked", security = true, changed = %changed, "the swarm came back unlocked after the firmware change the window accepted: the unlock key is resealed to the new PCR 7 and the window copy is deleted");
    println!("swarmseal: the swarm came back unlocked after the accepted firmware change ({changed}); its key is sealed to the new PCR 7");
    Ok(())
}

/// The `reason` label of a refused unlock (`swarmseal_unlocks_total`): the words of the
/// `unlock_refused` journal event.
fn refusal_reason(e: &BootError) -> &'static str {
    match e {
        BootError::Tpm(TpmError::PolicyMismatch { .. }) => "policy_mismatch",
        BootError::Tpm(TpmError::NotSigned { .. } | TpmError::BadSignature { .. }) => "not_signed",
        other => other.kind(),
    }
}

fn log_refusal(e: &BootError) {
    match e {
        BootError::Tpm(TpmError::PolicyMismatch { changed }) => {
            let pcrs: Vec<u8> = changed.iter().map(|d| d.pcr).collect();
            tracing::error!(event = "unlock_refused", reason = refusal_reason(e), changed_pcrs = ?pcrs, detail = %e, "the boot measurements changed: the swarm stays locked; unlock by hand (`docker swarm unlock` through the proxy), then POST /swarmseal/v1/reseal to accept this boot chain");
        }
        BootError::Tpm(TpmError::NotSigned { signed, .. } | TpmError::BadSignature { signed, .. }) => {
            let pcrs: Vec<u8> = signed.iter().map(|v| v.pcr).collect();
            tracing::error!(event = "unlock_refused", reason = refusal_reason(e), unsigned_pcrs = ?pcrs, detail = %e, "this boot's image is not approved by the fleet's PCR signature: the swarm stays locked; boot a signed image, or unlock by hand (`docker swarm unlock` through the proxy), then POST /swarmseal/v1/reseal");
        }
        other => tracing::error!(event = "unlock_refused", reason = refusal_reason(other), detail = %other, "the swarm stays locked; unlock by hand (`docker swarm unlock` through the proxy)"),
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
    // A closed window's copy (the window ended by a firmware decision, the copy still there).
    // Only when the copy itself unsealed and unlocked the engine in this boot (its claim says
    // so: killed before the reseal, or the reseal failed) is the window finished: `current`
    // resealed to this boot's PCRs. Any other unlock (by hand) never accepts the boot chain on
    // the operator's behalf: the copy is useless now and is deleted with its claim, and
    // `current` is left to the operator's reseal (`seal_stale`).
    if ctx.ks.slot_path(Slot::Window).exists() && matches!(crate::firmware::record(&ctx.cfg.state_dir), Ok(None)) {
        if ctx.window_unlocked_this_boot() {
            let changed = crate::firmware::accepted(&ctx.cfg.state_dir).map(|(c, _)| c).unwrap_or_else(|| "the change the window accepted".into());
            finish_window(ctx, &key, &changed).await?;
            return Ok(true);
        }
        let ks = ctx.ks.clone();
        if super::blocking(move || ks.drop_window()).await? {
            tracing::warn!(event = "firmware_window_key_dropped", security = true, "the window copy of the unlock key was deleted: its window is closed and the swarm was not unlocked with it in this boot (a key without PCR 7 must not linger)");
        }
    }
    if ctx.sealed_holds(&key) {
        // Escrow configured after the key was sealed: the operator's copy is written now.
        if let Some(r) = &ctx.cfg.escrow.recipient {
            if !crate::escrow::path(&ctx.cfg.state_dir).exists() {
                let p = super::seal::escrow_write(&ctx.cfg.state_dir, r, &key).await?;
                tracing::info!(event = "escrow", file = %p.display(), "escrow copy of the unlock key written (age-encrypted)");
            }
        }
        return Ok(false);
    }
    tracing::info!(event = "key_changed", "the engine's unlock key differs from the sealed one (rotated here or on another manager): resealing");
    ctx.metrics.key_change("seen");
    let prep = ctx.prepare_seal().await;
    ctx.seal_changed(prep, &key, Custody::Journal).await?;
    Ok(true)
}

/// `swarmseal agent`: the boot flow, then watch for key changes until SIGTERM.
pub async fn run_agent(ctx: Ctx) -> Result<(), BootError> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    // Installing a PEM credential writes and fsyncs a file: on a blocking thread.
    let mut cfg = ctx.cfg.clone();
    let (cfg, problems) = super::blocking(move || {
        let problems = creds.map(|d| apply_credentials(&mut cfg, &d)).unwrap_or_default();
        (cfg, problems)
    })
    .await;
    for p in problems {
        tracing::error!(event = "bad_credential", "{p}");
        eprintln!("swarmseal: {p}");
    }
    let ctx = Ctx { cfg, ..ctx };
    flush_leftovers(&ctx).await;
    // The unit runs after the bounded wait for the time (swarmseal-time-wait.service): say
    // what the clock is worth before anything here depends on it (TLS, certificate dates).
    let time = super::status::time_sync().await;
    match time.verdict() {
        Ok(line) => tracing::info!(event = "time", offset_seconds = time.offset_seconds.unwrap_or_default(), "{line}"),
        Err(why) => tracing::warn!(event = "time_untrusted", "{why}; TLS and certificate dates depend on the clock (check A.7, docs/time.md)"),
    }
    status_line("waiting for the Docker engine");
    // The console screen shows the boot decision line too; it ends with the process.
    let (decided, decided_rx) = tokio::sync::watch::channel(String::from("waiting for the Docker engine"));
    if !ctx.cfg.console.tty.is_empty() {
        tokio::spawn(crate::console::run(ctx.clone(), ctx.cfg.console.tty.clone().into(), decided_rx));
    }
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

    let api = AgentImpl::new(ctx.clone());
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
                decided.send_replace(format!("waiting for the TPM: {e}"));
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
    if let Err(e) = ctx.lock_phase_if_consumed(&decision).await {
        tracing::error!(event = "phase_lock_failed", error = %e, "could not extend the phase PCR");
    }
    ctx.metrics.decided();
    status_line(&line);
    decided.send_replace(line.clone());
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
                benchmark = r.benchmark.name(),
                checks = s.checks,
                pass = s.pass,
                warn = s.warn,
                info = s.info,
                note = s.note,
                score = s.score,
                elapsed_ms = t.elapsed().as_millis() as u64,
                report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|e| format!("not written: {e}")),
                "{}: {} checks, {} pass, {} warn, score {}", r.benchmark.title(), s.checks, s.pass, s.warn, s.score
            );
        }
        Err(e) => tracing::error!(event = "bench_failed", error = %e, "the CIS checks could not run"),
    }
}

