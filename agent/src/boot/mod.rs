//! The boot flow and the key commands: init, seal, unlock, rotate, status, agent.
//!
//! One file per concern (docs/architecture.md follows the boot flow through them):
//! - `seal.rs`: the sealing core ([`Ctx`]): state-dir lock, TPM work and its one retry loop,
//!   prepare / seal / unseal.
//! - `phase.rs`: the phase lock: whether this boot is locked, and the one rule that locks it.
//! - `custody.rs`: key changes that always end sealed, escrowed or shown; interrupted ones repaired.
//! - `commands.rs`: `init`, `seal`, `unlock`, `rotate`, `status` (text).
//! - `status.rs`: the status document ([`swarmseal_common::status::Status`]), the bench's facts.
//! - `daemon.rs`: `swarmseal agent` (boot decision, watch loop, signals) and `swarmseal proxy`.
//! - `api.rs`: the agent endpoints behind the proxy ([`crate::proxy::AgentApi`]).
//! - `credentials.rs`: first-boot settings from systemd credentials.
//! - `notify.rs`: `sd_notify(3)`.
//! - `terminal.rs`: the key shown on the terminal, the key read from stdin.
//!
//! Errors are [`BootError`]; their exit codes are chosen in `crate::cli`, their HTTP statuses
//! in `api.rs`.
//!
//! Every TPM operation opens its own context on a blocking thread, so no TPM
//! state outlives a command (see [`crate::tpm`]). Every mutation of the
//! state dir holds an exclusive `flock` on `<state_dir>/lock`.
//!
//! Phase lock (`phase.rs`): after the boot's unlock decision the agent extends
//! `tpm.phase_pcr` (default PCR 11), so the sealed key cannot be unsealed again until the
//! next boot. The PCR values before and after are recorded in `<runtime_dir>/phase.json` and
//! `<state_dir>/phase.json` (not secret): sealing later in the same boot uses the recorded
//! "before" values, which are what the next boot will show again.
//!
//! Key custody: a command that changes the engine's key (`init`, `rotate`, the
//! agent's autolock re-enable) first prepares the seal ([`Ctx::prepare_seal`]:
//! room on disk, policy, TPM session) and writes a write-ahead marker; if the
//! seal still fails after the change, the key is escrowed and shown
//! ([`Ctx::keep_reachable`]); a marker left by a killed command is resolved by
//! the next one ([`repair_pending`]).

mod api;
mod commands;
mod credentials;
mod custody;
mod daemon;
mod notify;
mod phase;
mod seal;
mod status;
mod terminal;

pub use commands::{cmd_init, cmd_rotate, cmd_seal, cmd_status, cmd_unlock};
pub use credentials::apply_credentials;
pub use custody::repair_pending;
pub use daemon::{boot_decision, run_agent, run_proxy_only};
pub use notify::notify;
pub use phase::{consumes_unlock, PHASE_MARKER};
pub use seal::{describe_pcrs, diff_pcrs, tcti, Ctx, Custody, PreparedSeal, Sealed, StateLock, WINDOW_KEY_PCRS};
pub use status::{appliance_facts, latest_bench_report, status, status_and_engine_error};
pub(crate) use terminal::{read_key_from_stdin, show_key_on_terminal};

use std::time::Duration;

use crate::escrow::EscrowError;
use crate::keystore::KeystoreError;
use crate::pcrsig::PcrSigError;
use crate::swarm::SwarmError;
use crate::tpm::TpmError;

/// How often the agent checks the engine for a changed unlock key.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Boot-flow errors. `Display` is the operator sentence; the exit code is chosen in `crate::cli`.
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
    /// The firmware window's copy of the key was not sealed: this boot is not the one the key
    /// is sealed to (`why`: the PCRs that differ), or nothing is sealed.
    #[error("not sealing the firmware window's copy of the unlock key: this boot is not the one the key is sealed to ({why}); the copy would accept this boot chain on the operator's behalf. Reseal first (POST /swarmseal/v1/reseal), then arm the window again")]
    WindowRefused { why: String },
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
    /// What failed, as one word for a log line's `reason` field (the exit code is chosen in
    /// `crate::cli`, the HTTP status in [`api`]).
    pub fn kind(&self) -> &'static str {
        match self {
            BootError::Swarm(_) => "engine",
            BootError::Tpm(_) => "tpm",
            BootError::Keystore(_) => "sealed_key",
            BootError::Escrow(_) => "escrow",
            BootError::Proxy(_) => "proxy",
            BootError::State { .. } => "swarm_state",
            BootError::PhaseLocked { .. } => "phase_locked",
            BootError::SealRefused { .. } => "seal_refused",
            BootError::WindowRefused { .. } => "window_refused",
            BootError::SignatureFile(_) => "signature_file",
            BootError::NotSealed { .. } => "not_sealed",
            BootError::Input(_) => "input",
            BootError::Other(_) => "other",
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

/// Run `f` (a state-dir write with its fsync, an age encryption, a read of stdin) on a blocking
/// thread: the runtime has two workers, and a blocked one stalls the proxy and the watch loop.
/// A panic in `f` is resumed here.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
