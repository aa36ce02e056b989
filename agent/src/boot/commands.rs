//! The key commands run from a shell: `init`, `seal`, `unlock`, `rotate`, `status` (text).

use super::custody::{change_key, repair_pending};
use super::terminal::{read_key_from_stdin, show_key_on_terminal};
use super::{BootError, Ctx, Custody};
use crate::config::Config;
use crate::keystore::Slot;
use crate::swarm::{Engine, NodeState};

pub(super) fn state_error(state: NodeState, advice: &str) -> BootError {
    BootError::State { state: state.to_string(), advice: advice.to_string() }
}


pub(super) async fn engine(cfg: &Config) -> Result<Engine, BootError> {
    Ok(Engine::connect(&cfg.docker_socket()).await?)
}

pub(super) async fn active_manager(engine: &Engine) -> Result<(), BootError> {
    let st = engine.status().await?;
    match st.state {
        NodeState::Active if st.manager => Ok(()),
        NodeState::Active => Err(state_error(st.state, "this node is a worker; swarmseal runs on managers")),
        NodeState::Locked => Err(state_error(st.state, "unlock it first (`swarmseal unlock`, or `swarmseal unlock --manual`)")),
        NodeState::Inactive => Err(state_error(st.state, "this engine has no swarm; run `swarmseal init`")),
        s => Err(state_error(s, "wait until the node has joined, then retry")),
    }
}

pub async fn cmd_init(ctx: &Ctx, advertise: Option<String>) -> Result<(), BootError> {
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

pub async fn cmd_seal(ctx: &Ctx) -> Result<(), BootError> {
    let engine = engine(&ctx.cfg).await?;
    // The key is read under the lock: a `rotate` in between would otherwise be sealed over.
    // What a killed command left is finished first, whatever state the engine is in now (a
    // killed `init` leaves it `pending` for seconds, then active with an unsealed key).
    let _lock = ctx.lock().await?;
    repair_pending(ctx, &engine, Custody::Terminal).await?;
    active_manager(&engine).await?;
    let key = engine.unlock_key().await?.ok_or_else(|| state_error(NodeState::Active, "autolock is off, so there is no unlock key: run `swarmseal init` to turn it on"))?;
    let slot = ctx.seal(&key).await?;
    let _ = ctx.clear_pending().await;
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

pub async fn cmd_unlock(ctx: &Ctx, manual: bool) -> Result<(), BootError> {
    let engine = engine(&ctx.cfg).await?;
    let st = engine.status().await?;
    match st.state {
        NodeState::Locked => {}
        NodeState::Active => {
            let _lock = ctx.lock().await?;
            repair_pending(ctx, &engine, Custody::Terminal).await?;
            if !manual {
                println!("the swarm is already unlocked");
                return Ok(());
            }
            // The operator typed a key: it is still checked (malformed: exit 2; not the
            // swarm's key: exit 9), so a wrong key on file is found now, not at the next reboot.
            let key = read_key_from_stdin().await?;
            match engine.unlock_key().await? {
                Some(current) if current == key => println!("the swarm is already unlocked; the key given is its current unlock key"),
                Some(_) => {
                    return Err(crate::swarm::SwarmError::WrongKey {
                        message: "the swarm is already unlocked, and the key given is not its current unlock key (`docker swarm unlock-key` through the proxy shows the current one)".into(),
                    }
                    .into())
                }
                None => println!("the swarm is already unlocked (autolock is off: it has no unlock key)"),
            }
            return Ok(());
        }
        s => return Err(state_error(s, "there is nothing to unlock: the engine has no locked swarm")),
    }
    let _lock = ctx.lock().await?;
    if manual {
        let key = read_key_from_stdin().await?;
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
    if !ctx.lock_phase_if_consumed(&result).await? {
        if let Err(BootError::Tpm(e)) = &result {
            eprintln!("swarmseal: the TPM failed transiently ({e}); this boot's unlock was not consumed (no phase lock): run `swarmseal unlock` again once the TPM answers");
        }
    }
    let (slot, engine_time) = result?;
    repair_pending(ctx, &engine, Custody::Terminal).await?;
    println!("swarm unlocked with the sealed key ({} slot; the engine's unlock call took {} ms)", slot.name(), engine_time.as_millis());
    Ok(())
}

pub async fn cmd_rotate(ctx: &Ctx) -> Result<(), BootError> {
    let engine = engine(&ctx.cfg).await?;
    active_manager(&engine).await?;
    let _lock = ctx.lock().await?;
    repair_pending(ctx, &engine, Custody::Terminal).await?;
    let old = engine.unlock_key().await?.ok_or_else(|| state_error(NodeState::Active, "autolock is off: run `swarmseal init` first"))?;
    // Window: from the rotation call to the new key sealed in `current` (README "Rotation").
    let (new, _, window) = change_key(ctx, &engine, "rotate", Some(&old), Custody::Terminal, engine.rotate_unlock_key()).await?;
    println!("unlock key rotated and sealed; the previous key stays sealed in the `previous` slot (window from the engine's rotation call to the sealed slot: {} ms)", window.as_millis());
    show_key_on_terminal(&new, "The swarm unlock key was rotated");
    Ok(())
}


pub async fn cmd_status(ctx: &Ctx, json: bool) -> Result<(), BootError> {
    // Like every command that reaches the engine, finish what an interrupted one left.
    if ctx.ks.load_pending().is_some() {
        if let Ok(engine) = engine(&ctx.cfg).await {
            let _lock = ctx.lock().await?;
            if let Err(e) = repair_pending(ctx, &engine, Custody::Terminal).await {
                eprintln!("swarmseal: {e}");
            }
        }
    }
    let (st, engine_error) = super::status_and_engine_error(ctx).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&st).unwrap_or_default()).unwrap_or_default());
    } else {
        crate::operator::print_status(&st);
    }
    // The report is printed either way; an engine that did not answer is still exit 3 (or 1),
    // as for every command that needs it.
    match engine_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}


