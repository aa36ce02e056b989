//! Disaster recovery after a lost quorum, with autolock (moby#36852):
//! `swarmseal recover --force-new-cluster` and `POST /swarmseal/v1/recover`.
//!
//! What the real dockerd 20.10 does (measured, see docs/operating.md, "Disaster recovery: lost quorum"):
//! - `POST /swarm/init {"ForceNewCluster": true}` restarts the node **without** the unlock key
//!   (the request has no field for it), so on an autolocked manager it fails with "Swarm is
//!   encrypted" and leaves the node `inactive` (its swarm data stays on disk); on a locked node
//!   it answers "not a swarm manager".
//! - Turning autolock off (`POST /swarm/update`) needs a Raft commit: without quorum it fails
//!   ("node lost leader status").
//! - `POST /swarm/unlock` on a locked manager without quorum never returns (the node stays
//!   `pending`) and holds the engine's swarm control lock, so every later init hangs too, until
//!   the engine restarts.
//!
//! So "autolock off" is done on disk: the node key `<DockerRootDir>/swarm/certificates/swarm-node.key`
//! (PKCS#8 PBES2 AES-256-CBC under the unlock key, its `raft-dek` header a NaCl secretbox under
//! the same key) is rewritten unencrypted, exactly as swarmkit writes it with autolock off, while
//! the engine is not running the node. Then `init --force-new-cluster` works; the new cluster
//! starts with autolock off (the request's spec); autolock goes on (a new key) and is sealed.
//!
//! Steps, each one skipped when already done, so a killed run is repaired by the next:
//! 1. preflight: the TPM answers and this boot's sealing policy is computable (before the engine changes);
//! 2. the key: given (stdin / request body), else the engine's (active), else unsealed from the TPM;
//!    checked against the node key (a wrong key changes nothing);
//! 3. the node key written without its KEK (skipped if it has none);
//! 4. the engine lets go of the node: an active one by the failing init of moby#36852, a locked or
//!    wedged (`pending`) one by an engine restart (`<[update] systemctl> restart docker.service`);
//! 5. `POST /swarm/init` with `ForceNewCluster` (skipped if this node already is the only manager);
//! 6. autolock on (`POST /swarm/update`), the new key read back and sealed (escrowed, shown);
//!    then the phase lock, so the keys cannot be unsealed again in this boot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::boot::{BootError, Ctx};
use crate::config::Config;
use crate::proxy::{ApiError, ApiErrorKind};
use crate::secret::UnlockKey;
use crate::swarm::{Engine, NodeState, SwarmError};

/// The engine's systemd unit, restarted when a locked or wedged engine must let go of its node.
pub const ENGINE_UNIT: &str = "docker.service";

/// Recovery errors. `Display` is the operator sentence; [`RecoverError::exit`] the exit code.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("refusing to recover without --force-new-cluster. `swarmseal recover --force-new-cluster` makes this manager the only manager of a new cluster built from its own Raft data (services, secrets, networks and nodes kept; every other manager is dropped and must join again): unlock (TPM, or --key-stdin), autolock off on disk, `docker swarm init --force-new-cluster`, autolock on, new key sealed. Use it only when a majority of managers is lost for good")]
    Usage,
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("this engine has no swarm (no {0}): there is nothing to recover; `swarmseal init` creates one")]
    NoSwarm(PathBuf),
    #[error("this node is a worker, not a manager: only a manager holds the Raft data to rebuild the cluster from; run the recovery on a surviving manager")]
    NotManager,
    #[error("the unlock key {source_} does not open this manager's node key ({file}): it is not this swarm's key (a key from before a rotation? try the previous one); nothing was changed")]
    KeyRefused { source_: &'static str, file: PathBuf },
    /// The TPM released the key once in this boot already (phase lock, PCR `pcr`).
    #[error("the TPM already released the unlock key once in this boot (PCR {pcr} carries swarmseal's phase lock), so it cannot open the node key again: give the key instead (`swarmseal recover --force-new-cluster --key-stdin < key.txt`, or as the body of POST /swarmseal/v1/recover; the escrow copy or the operator's copy). Not `docker swarm unlock`: without quorum it never returns")]
    PhaseLocked { pcr: u8 },
    #[error("cannot read or write the engine's node key {file}: {message}")]
    NodeKey { file: PathBuf, message: String },
    #[error("the engine must restart to let go of its locked swarm node, but `{command}` failed: {message}; restart the engine by hand (systemctl restart docker), then run the recovery again")]
    Restart { command: String, message: String },
    #[error("the engine did not {what} within {secs} s (swarm state {state}); run the recovery again (each step is skipped once done)")]
    Timeout { what: &'static str, secs: u64, state: String },
}

/// The answer of `POST /swarmseal/v1/recover` for this error (the proxy maps the kind to the status).
impl From<&RecoverError> for ApiError {
    fn from(e: &RecoverError) -> ApiError {
        let kind = match e {
            RecoverError::NoSwarm(_) | RecoverError::NotManager => ApiErrorKind::Conflict,
            RecoverError::KeyRefused { .. } => ApiErrorKind::Unprocessable,
            RecoverError::Boot(BootError::SealRefused { .. }) => ApiErrorKind::Conflict,
            RecoverError::Boot(BootError::Swarm(SwarmError::Unreachable { .. })) => ApiErrorKind::Unavailable,
            RecoverError::Boot(BootError::Tpm(_) | BootError::PhaseLocked { .. } | BootError::Keystore(_) | BootError::SignatureFile(_)) | RecoverError::PhaseLocked { .. } => ApiErrorKind::Unavailable,
            _ => ApiErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<SwarmError> for RecoverError {
    fn from(e: SwarmError) -> Self {
        RecoverError::Boot(e.into())
    }
}

/// What a recovery did (the endpoint's JSON; never the key).
#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub node_id: Option<String>,
    /// Where the old key came from: `given`, `engine`, `tpm:current`, `tpm:previous`, or none (no step needed it).
    pub key_source: Option<String>,
    /// Steps done in this run (a rerun lists only what was left).
    pub steps: Vec<&'static str>,
    pub managers: usize,
    pub autolock: bool,
    pub sealed: bool,
    pub escrowed: bool,
}

/// `swarmseal recover --force-new-cluster [--key-stdin]`.
pub async fn run_cli(cfg: &Config, force_new_cluster: bool, key_stdin: bool) -> Result<(), RecoverError> {
    if !force_new_cluster {
        return Err(RecoverError::Usage);
    }
    let given = if key_stdin { Some(crate::boot::read_key_from_stdin().await?) } else { None };
    let ctx = Ctx::new(cfg);
    let (out, key) = recover(&ctx, given).await?;
    if out.steps.is_empty() {
        // A rerun after a finished recovery: nothing changed, no new key to show.
        println!(
            "nothing to do: this manager ({}) is already the only manager of its cluster, autolock on, its unlock key {}",
            out.node_id.as_deref().unwrap_or("?"),
            if out.sealed { "sealed to the TPM" } else { "NOT sealed (see above)" }
        );
        return Ok(());
    }
    println!(
        "recovered: this manager ({}) is the only manager of a new cluster built from its Raft data; autolock on; the new unlock key is {}",
        out.node_id.as_deref().unwrap_or("?"),
        if out.sealed { "sealed to the TPM" } else { "NOT sealed (see above)" }
    );
    println!("steps: {}", out.steps.join(", "));
    println!("next: `docker node rm` the lost managers, then join new managers (`docker swarm join-token manager`)");
    crate::boot::show_key_on_terminal(&key, "The swarm was recovered with a new unlock key");
    Ok(())
}

/// `POST /swarmseal/v1/recover` (admin): the same, no terminal. Errors: an [`ApiError`] (its kind from `From<&RecoverError>` above; the proxy picks the status).
pub async fn via_proxy(ctx: &Ctx, given: Option<UnlockKey>) -> Result<serde_json::Value, ApiError> {
    tracing::warn!(event = "recover", security = true, key_given = given.is_some(), "lost-quorum recovery requested through the proxy: this manager becomes the only manager of a new cluster");
    match recover(ctx, given).await {
        Ok((out, _key)) => {
            tracing::warn!(event = "recovered", security = true, steps = ?out.steps, sealed = out.sealed, "lost-quorum recovery done; the new unlock key is sealed (read it with `docker swarm unlock-key` through the proxy, or GET /swarmseal/v1/escrow)");
            Ok(serde_json::to_value(&out).unwrap_or_default())
        }
        Err(e) => {
            let refusal = ApiError::from(&e);
            tracing::error!(event = "recover_failed", security = true, status = refusal.status(), "{e}");
            Err(refusal)
        }
    }
}

/// The recovery itself (see the module doc). Returns what it did and the new key (for the terminal).
pub async fn recover(ctx: &Ctx, given: Option<UnlockKey>) -> Result<(Outcome, UnlockKey), RecoverError> {
    let socket = ctx.cfg.docker_socket();
    let mut engine = Engine::connect(&socket).await?;
    // Custody preflight, before the engine changes: the new key must be sealable in this boot.
    let (pcrs, phase_locked) = ctx.boot_pcrs().await.map_err(BootError::from)?;
    ctx.sealing_policy(pcrs).await?;
    let _lock = ctx.lock().await?;
    let mut out = Outcome::default();
    let st = engine.status().await?;
    let root = engine.docker_root().await?;
    let swarm_dir = root.join("swarm");
    let node_key = swarm_dir.join("certificates/swarm-node.key");
    tracing::info!(event = "recover_start", state = %st.state, manager = st.manager, "lost-quorum recovery");

    let done = st.state == NodeState::Active && st.manager && engine.manager_count().await.ok() == Some(1);
    if !done {
        match st.state {
            NodeState::Active if !st.manager => return Err(RecoverError::NotManager),
            NodeState::Inactive if !node_key.exists() => return Err(RecoverError::NoSwarm(node_key)),
            _ => {}
        }
        let pem = read_node_key(&node_key)?;
        if is_encrypted(&pem) {
            let (plain, source) = open_node_key(ctx, &engine, st.state, given.as_ref(), &pem, &node_key, phase_locked).await?;
            out.key_source = Some(source);
            if st.state == NodeState::Active {
                // moby#36852, on purpose: the engine stops the node (and fails to restart it
                // without the key), so the node key is no longer in use while it is rewritten.
                let r = engine.init_force_new_cluster(None, "0.0.0.0:2377").await;
                tracing::info!(event = "recover_step", step = "node_stopped", engine_answer = ?r.err().map(|e| e.to_string()), "the engine let go of the swarm node");
                out.steps.push("node_stopped");
            }
            crate::keystore::write_atomic(&node_key, plain.as_bytes(), 0o600).map_err(|e| RecoverError::NodeKey { file: node_key.clone(), message: e.to_string() })?;
            tracing::warn!(event = "recover_step", security = true, step = "autolock_off_on_disk", file = %node_key.display(), "the node key was rewritten without its key-encryption key (autolock off, as swarmkit writes it)");
            out.steps.push("autolock_off_on_disk");
        }
        let now = engine.status().await?.state;
        if matches!(now, NodeState::Locked | NodeState::Pending | NodeState::Error) {
            engine = restart_engine(&ctx.cfg, &socket).await?;
            out.steps.push("engine_restarted");
        }
        let (advertise, listen) = addresses(&ctx.cfg, &swarm_dir);
        let id = init_when_node_started(&engine, advertise.as_deref(), &listen).await?;
        tracing::warn!(event = "recover_step", security = true, step = "force_new_cluster", node_id = %id, "this manager is now the only manager of a new cluster");
        out.steps.push("force_new_cluster");
        wait_state(&engine, "become an active manager", Duration::from_secs(60), |s| s.state == NodeState::Active && s.manager).await?;
    }
    if !engine.autolock().await? {
        engine.enable_autolock().await?;
        tracing::warn!(event = "recover_step", security = true, step = "autolock_on", "autolock turned on for the new cluster (a new unlock key)");
        out.steps.push("autolock_on");
    }
    let t = Instant::now();
    let key = loop {
        match engine.unlock_key().await? {
            Some(k) => break k,
            None if t.elapsed() < Duration::from_secs(10) => tokio::time::sleep(Duration::from_millis(200)).await,
            None => return Err(BootError::Other("the engine reports no unlock key although autolock is on".into()).into()),
        }
    };
    let current = ctx.ks.load(crate::keystore::Slot::Current).unwrap_or(None);
    let already = current.map(|c| key.fingerprint(&c.salt()) == c.key_fingerprint).unwrap_or(false);
    match if already { Ok(()) } else { ctx.seal(&key).await.map(|_| out.steps.push("sealed")) } {
        Ok(()) => {
            out.sealed = true;
            out.escrowed = ctx.cfg.escrow.recipient.is_some();
        }
        Err(e) => {
            // Custody: the key must not exist only in the engine.
            let escrowed = ctx.cfg.escrow.recipient.as_ref().map(|r| crate::escrow::write(&ctx.cfg.state_dir, r, &key).is_ok()).unwrap_or(false);
            tracing::error!(event = "key_unsealed_pending", security = true, escrowed, error = %e, "the recovered swarm's new unlock key could not be sealed; it is in the escrow file if escrow is configured, and readable with `docker swarm unlock-key` through the proxy; reseal with POST /swarmseal/v1/reseal");
            crate::boot::show_key_on_terminal(&key, "The swarm was recovered, but its new unlock key could NOT be sealed");
            return Err(e.into());
        }
    }
    // The phase lock (idempotent), as after the boot's unlock: the keys sealed here cannot be
    // unsealed again in this boot. At the end, so that a run killed after the TPM unseal is
    // finished by the next one with the TPM again.
    ctx.phase_lock().await?;
    let st = engine.status().await?;
    out.node_id = st.node_id;
    out.managers = engine.manager_count().await.unwrap_or(0);
    out.autolock = true;
    Ok((out, key))
}

/// The current key that opens `pem`, and the node key without its KEK. Tries the given key,
/// else the engine's (active only), else the TPM's slots (current, previous).
async fn open_node_key(ctx: &Ctx, engine: &Engine, state: NodeState, given: Option<&UnlockKey>, pem: &str, file: &Path, phase_locked: bool) -> Result<(Zeroizing<String>, String), RecoverError> {
    let refused = |source_| RecoverError::KeyRefused { source_, file: file.to_path_buf() };
    if let Some(k) = given {
        return decrypt_node_key(pem, k).map(|p| (p, "given".into())).map_err(|_| refused("given"));
    }
    if state == NodeState::Active {
        if let Ok(Some(k)) = engine.unlock_key().await {
            return decrypt_node_key(pem, &k).map(|p| (p, "engine".into())).map_err(|_| refused("read from the engine"));
        }
    }
    if phase_locked {
        return Err(RecoverError::PhaseLocked { pcr: ctx.cfg.tpm.phase_pcr });
    }
    let f = file.to_path_buf();
    let (slot, plain) = ctx
        .unseal_with(|k| {
            let r = decrypt_node_key(pem, &k).map_err(|_| BootError::Other(format!("the sealed key does not open the node key {}", f.display())));
            async move { r }
        })
        .await?;
    Ok((plain, format!("tpm:{}", slot.name())))
}

fn read_node_key(file: &Path) -> Result<Zeroizing<String>, RecoverError> {
    std::fs::read_to_string(file).map(Zeroizing::new).map_err(|e| RecoverError::NodeKey { file: file.to_path_buf(), message: e.to_string() })
}

/// `systemctl restart docker.service` (through `[update] systemctl`), then wait for the API.
async fn restart_engine(cfg: &Config, socket: &Path) -> Result<Engine, RecoverError> {
    let command = format!("{} restart {ENGINE_UNIT}", cfg.update.systemctl);
    tracing::warn!(event = "recover_step", step = "engine_restart", command = %command, "restarting the engine so that it lets go of its locked swarm node");
    let o = tokio::process::Command::new(&cfg.update.systemctl).args(["restart", ENGINE_UNIT]).output().await.map_err(|e| RecoverError::Restart { command: command.clone(), message: e.to_string() })?;
    if !o.status.success() {
        return Err(RecoverError::Restart { command, message: format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()) });
    }
    // The engine answers again once it has given its swarm node up to 20 s to find a leader.
    let e = Engine::wait(socket, Duration::from_secs(180)).await?;
    wait_state(&e, "start its swarm node after the restart", Duration::from_secs(60), |s| s.state != NodeState::Inactive || s.error.is_some()).await?;
    Ok(e)
}

/// `POST /swarm/init` with `ForceNewCluster`. Right after an engine restart the node is
/// `pending` before swarmkit has started its manager; until then dockerd 20.10 answers 503 "This
/// node is not a swarm manager" (moby `cluster/swarm.go` Init: `nodeState.IsManager()`), which
/// is retried for up to 60 s (seen under load in CI).
async fn init_when_node_started(e: &Engine, advertise: Option<&str>, listen: &str) -> Result<String, RecoverError> {
    let t = Instant::now();
    loop {
        match e.init_force_new_cluster(advertise, listen).await {
            Err(SwarmError::Api { status: 503, message, .. }) if message.contains("not a swarm manager") && t.elapsed() < Duration::from_secs(60) => {
                tracing::info!(event = "recover_step", step = "wait_manager", "the engine's swarm node has not started its manager yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return Ok(r?),
        }
    }
}

async fn wait_state(e: &Engine, what: &'static str, limit: Duration, ok: impl Fn(&crate::swarm::SwarmStatus) -> bool) -> Result<(), RecoverError> {
    let t = Instant::now();
    loop {
        let s = e.status().await?;
        if ok(&s) {
            return Ok(());
        }
        if t.elapsed() > limit {
            return Err(RecoverError::Timeout { what, secs: limit.as_secs(), state: s.state.to_string() });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Advertise and listen addresses for the new cluster: `[swarm]`'s, else the node's own
/// (`<swarm>/docker-state.json`, what the engine saved at its last start).
fn addresses(cfg: &Config, swarm_dir: &Path) -> (Option<String>, String) {
    #[derive(serde::Deserialize, Default)]
    struct State {
        #[serde(rename = "AdvertiseAddr", default)]
        advertise: String,
        #[serde(rename = "ListenAddr", default)]
        listen: String,
    }
    let s: State = std::fs::read(swarm_dir.join("docker-state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let advertise = cfg.swarm.advertise_addr.clone().or_else(|| (!s.advertise.is_empty()).then_some(s.advertise));
    let listen = cfg.swarm.listen_addr.clone().or_else(|| (!s.listen.is_empty()).then_some(s.listen)).unwrap_or_else(|| "0.0.0.0:2377".into());
    (advertise, listen)
}

// ------------------------------------------------------------------ the node key

/// Whether a swarmkit node key PEM is encrypted under a KEK (autolock on).
pub fn is_encrypted(pem: &str) -> bool {
    pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
}

/// The node key cannot be decrypted with this key (or is not what swarmkit writes).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0}")]
pub struct NodeKeyError(&'static str);

/// swarmkit's node key (`ca.KeyReadWriter`, `manager.RaftDEKData`) without its KEK: the
/// PKCS#8 `ENCRYPTED PRIVATE KEY` (PBES2: PBKDF2 with the raw 32-byte KEK as password,
/// AES-256-CBC) becomes a plain `PRIVATE KEY`, and each `raft-dek*` header (a protobuf
/// `MaybeEncryptedRecord` with a NaCl secretbox under the KEK) becomes the record with
/// algorithm NONE. The `kek-version` header becomes 0. The KEK is the unlock key's base64 part.
/// The secretbox authenticates: a wrong key is refused, never turned into garbage.
pub fn decrypt_node_key(pem: &str, key: &UnlockKey) -> Result<Zeroizing<String>, NodeKeyError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let kek = Zeroizing::new(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(key.expose().trim_start_matches("SWMKEY-1-").trim_end_matches('='))
            .map_err(|_| NodeKeyError("the unlock key is not base64"))?,
    );
    if kek.len() != 32 {
        return Err(NodeKeyError("the unlock key does not hold 32 bytes"));
    }
    let (headers, der) = parse_pem(pem).ok_or(NodeKeyError("not a PEM private key"))?;
    let mut out_headers = Vec::new();
    for (k, v) in &headers {
        if k.starts_with("raft-dek") {
            let rec = b64.decode(v).map_err(|_| NodeKeyError("a raft-dek header is not base64"))?;
            let dek = open_record(&rec, &kek)?;
            let mut plain = Zeroizing::new(vec![0x12u8]);
            put_varint(&mut plain, dek.len() as u64);
            plain.extend_from_slice(&dek);
            out_headers.push((k.clone(), Zeroizing::new(b64.encode(&*plain))));
        } else if k == "kek-version" {
            // 0, below any cluster version: the manager then takes the cluster's KEK as newer
            // (swarmkit `compareKEKs`). Kept as it was, it can equal the cluster object's version
            // with another KEK (now none), and the manager stops: "candidate KEK has the same
            // version as the current KEK, but a different KEK value" (seen on 20.10).
            out_headers.push((k.clone(), Zeroizing::new("0".to_string())));
        } else {
            out_headers.push((k.clone(), Zeroizing::new(v.to_string())));
        }
    }
    let plain_der = decrypt_pkcs8(&der, &kek)?;
    let mut s = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for (k, v) in &out_headers {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push('\n');
    }
    s.push('\n');
    let body = Zeroizing::new(b64.encode(&*plain_der));
    for chunk in body.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str("-----END PRIVATE KEY-----\n");
    Ok(s)
}

/// Headers (in order) and the DER of a PEM block.
fn parse_pem(pem: &str) -> Option<(Vec<(String, String)>, Zeroizing<Vec<u8>>)> {
    let mut lines = pem.lines().map(str::trim);
    lines.next().filter(|l| l.starts_with("-----BEGIN "))?;
    let mut headers = Vec::new();
    let mut body = Zeroizing::new(String::new());
    let mut in_body = false;
    for l in lines {
        if l.starts_with("-----END ") {
            break;
        }
        if !in_body {
            if l.is_empty() {
                in_body = true;
                continue;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
                continue;
            }
            in_body = true;
        }
        body.push_str(l);
    }
    let der = base64::engine::general_purpose::STANDARD.decode(body.as_bytes()).ok()?;
    Some((headers, Zeroizing::new(der)))
}

/// `MaybeEncryptedRecord` (swarmkit `api/storeobject` / `manager/encryption`): field 1 the
/// algorithm (1 = NaCl secretbox XSalsa20-Poly1305), 2 the data, 3 the nonce.
fn open_record(rec: &[u8], kek: &[u8]) -> Result<Zeroizing<Vec<u8>>, NodeKeyError> {
    use xsalsa20poly1305::aead::{Aead, KeyInit};
    const BAD: NodeKeyError = NodeKeyError("a raft-dek header is not a swarmkit record");
    let (mut alg, mut data, mut nonce) = (0u64, &[][..], &[][..]);
    let mut i = 0;
    while i < rec.len() {
        let tag = get_varint(rec, &mut i).ok_or(BAD)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => alg = get_varint(rec, &mut i).ok_or(BAD)?,
            (f, 2) => {
                let n = get_varint(rec, &mut i).ok_or(BAD)? as usize;
                let v = rec.get(i..i + n).ok_or(NodeKeyError("a raft-dek header is truncated"))?;
                i += n;
                match f {
                    2 => data = v,
                    3 => nonce = v,
                    _ => {}
                }
            }
            _ => return Err(BAD),
        }
    }
    match alg {
        0 => Ok(Zeroizing::new(data.to_vec())),
        1 if nonce.len() == 24 => {
            let cipher = xsalsa20poly1305::XSalsa20Poly1305::new_from_slice(kek).map_err(|_| NodeKeyError("bad key length"))?;
            cipher.decrypt(xsalsa20poly1305::Nonce::from_slice(nonce), data).map(Zeroizing::new).map_err(|_| NodeKeyError("the key does not open the raft-dek header"))
        }
        _ => Err(NodeKeyError("a raft-dek header uses an algorithm this tool does not know (FIPS mode?)")),
    }
}

fn get_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*i)?;
        *i += 1;
        v |= u64::from(c & 0x7f) << shift;
        if c < 0x80 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One DER TLV: (tag, content, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)?;
    let (len, hdr) = if l0 < 0x80 {
        (l0 as usize, 2)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for k in 0..n {
            len = (len << 8) | *b.get(2 + k)? as usize;
        }
        (len, 2 + n)
    };
    let content = b.get(hdr..hdr + len)?;
    Some((tag, content, &b[hdr + len..]))
}

const OID_PBES2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
const OID_PBKDF2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c];
const OID_HMAC_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// PKCS#8 `EncryptedPrivateKeyInfo` (RFC 5958) with PBES2 (RFC 8018): PBKDF2 (HMAC-SHA1 or
/// -SHA256) and AES-256-CBC, as swarmkit's `keyutils` writes it. Returns the `PrivateKeyInfo` DER.
fn decrypt_pkcs8(der_bytes: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, NodeKeyError> {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    let bad = || NodeKeyError("the node key is not PKCS#8 PBES2 with AES-256-CBC");
    let (_, epki, _) = der(der_bytes).ok_or_else(bad)?;
    let (_, alg, rest) = der(epki).ok_or_else(bad)?;
    let (_, data, _) = der(rest).ok_or_else(bad)?;
    let (_, oid, params) = der(alg).ok_or_else(bad)?;
    if oid != OID_PBES2 {
        return Err(bad());
    }
    let (_, params, _) = der(params).ok_or_else(bad)?;
    let (_, kdf, enc) = der(params).ok_or_else(bad)?;
    let (_, kdf_oid, kdf_params) = der(kdf).ok_or_else(bad)?;
    if kdf_oid != OID_PBKDF2 {
        return Err(bad());
    }
    let (_, kp, _) = der(kdf_params).ok_or_else(bad)?;
    let (_, salt, kp) = der(kp).ok_or_else(bad)?;
    let (_, iter, mut kp) = der(kp).ok_or_else(bad)?;
    let iterations = iter.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
    let mut prf = ring::pbkdf2::PBKDF2_HMAC_SHA1;
    while let Some((tag, v, r)) = der(kp) {
        if tag == 0x30 && der(v).map(|(_, o, _)| o) == Some(OID_HMAC_SHA256) {
            prf = ring::pbkdf2::PBKDF2_HMAC_SHA256;
        }
        kp = r;
    }
    let (_, enc, _) = der(enc).ok_or_else(bad)?;
    let (_, enc_oid, iv) = der(enc).ok_or_else(bad)?;
    if enc_oid != OID_AES256_CBC {
        return Err(bad());
    }
    let (_, iv, _) = der(iv).ok_or_else(bad)?;
    let iterations = std::num::NonZeroU32::new(iterations).ok_or_else(bad)?;
    let mut k = Zeroizing::new([0u8; 32]);
    ring::pbkdf2::derive(prf, iterations, salt, password, &mut k[..]);
    let dec = cbc::Decryptor::<aes::Aes256>::new_from_slices(&k[..], iv).map_err(|_| bad())?;
    let plain = dec.decrypt_padded_vec_mut::<Pkcs7>(data).map_err(|_| NodeKeyError("the key does not open the node key"))?;
    let plain = Zeroizing::new(plain);
    // A PrivateKeyInfo: SEQUENCE { INTEGER 0, … }.
    match der(&plain) {
        Some((0x30, inner, _)) if inner.starts_with(&[0x02, 0x01, 0x00]) => Ok(plain),
        _ => Err(NodeKeyError("the key does not open the node key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase-locked TPM during recovery: exit 5 / HTTP 503, and the advice is the key on
    /// stdin or in the body, never `docker swarm unlock` (it hangs without quorum).
    #[test]
    fn phase_locked_recovery_asks_for_the_key_not_docker_swarm_unlock() {
        let e = RecoverError::PhaseLocked { pcr: 11 };
        assert_eq!((crate::cli::Exit::from(&e) as i32, ApiError::from(&e).status()), (crate::cli::Exit::PolicyMismatch as i32, 503));
        let text = e.to_string();
        assert!(text.contains("--key-stdin") && text.contains("POST /swarmseal/v1/recover") && text.contains("PCR 11"), "{text}");
        assert!(text.contains("Not `docker swarm unlock`"), "{text}");
    }

    /// A node key written by dockerd 20.10 with autolock on (a scratch swarm's, since destroyed),
    /// and what the same file looks like decrypted by an independent implementation (Python
    /// `cryptography` + PyNaCl).
    #[test]
    fn the_node_key_of_a_real_engine_is_opened_by_its_key_and_refused_by_another() {
        let enc = include_str!("../tests/fixtures/recover/swarm-node.key.encrypted");
        let plain = include_str!("../tests/fixtures/recover/swarm-node.key.plain");
        let key = UnlockKey::new(include_str!("../tests/fixtures/recover/unlock-key").to_string()).unwrap();
        assert!(is_encrypted(enc) && !is_encrypted(plain));
        let out = decrypt_node_key(enc, &key).unwrap();
        assert_eq!(parse_pem(&out).unwrap(), parse_pem(plain).unwrap(), "{}", out.as_str());
        assert!(out.starts_with("-----BEGIN PRIVATE KEY-----\nkek-version: 0\nraft-dek: "));
        let other = UnlockKey::new("SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()).unwrap();
        assert!(decrypt_node_key(enc, &other).is_err());
        // A flipped byte in the encrypted key body is refused, not turned into garbage.
        let body_at = enc.find("\n\n").unwrap() + 10;
        let mut bad = enc.to_string();
        let c = if &bad[body_at..body_at + 1] == "A" { "B" } else { "A" };
        bad.replace_range(body_at..body_at + 1, c);
        assert!(decrypt_node_key(&bad, &key).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 40] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut i = 0;
            assert_eq!(get_varint(&b, &mut i), Some(v));
            assert_eq!(i, b.len());
        }
    }
}
