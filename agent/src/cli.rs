//! Command line: parse, load configuration, run, map the error to an exit code.
//!
//! This is the only place where errors become operator messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "appliance")]
use crate::boot::{BootError, Ctx};
use crate::config::{Config, ConfigError};
#[cfg(feature = "appliance")]
use crate::escrow::EscrowError;
use crate::fleet::FleetError;
use crate::health::Unhealthy;
#[cfg(feature = "appliance")]
use crate::keystore::KeystoreError;
#[cfg(feature = "appliance")]
use crate::recover::RecoverError;
use swarmseal_release::ReleaseError;
use crate::swarm::SwarmError;
#[cfg(feature = "appliance")]
use crate::tpm::TpmError;
use crate::update::UpdateError;
#[cfg(feature = "appliance")]
use crate::var::VarError;

/// Exit codes (stable; documented in `--help` and docs/operating.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Anything not covered below (I/O error, internal error).
    Failure = 1,
    /// Bad command line or configuration file.
    Usage = 2,
    /// The Docker Engine API does not answer on its socket.
    DockerUnreachable = 3,
    /// No TPM at the configured TCTI, or it fails.
    TpmUnavailable = 4,
    /// The TPM refused to unseal: PCRs changed since sealing.
    PolicyMismatch = 5,
    /// No sealed key in the state dir.
    NoSealedKey = 6,
    /// The swarm is not in the state the command needs.
    SwarmState = 7,
    /// A sealed-key file is corrupt, truncated, or from another machine/TPM.
    BadSealedKey = 8,
    /// The engine rejected the unlock key.
    WrongKey = 9,
    /// `bench --fail-on warn` found WARN results.
    BenchWarn = 10,
    /// Proxy/PKI setup: certificates or keys missing or invalid, listener address in use.
    Proxy = 11,
    /// Not sealed: the signed PCR policy (`[tpm] policy = "authorize"`) could not unseal on
    /// this boot (no signature for the current PCR 11, key or signature file missing or invalid).
    SealRefused = 12,
    /// `health`: the swarm is locked.
    Locked = 13,
    /// `health`: the proxy does not complete a TLS handshake on its listen address.
    ProxyDown = 14,
    /// `update`: the release is refused (signature, names, hashes, size).
    BadRelease = 15,
    /// `update apply`: systemd-sysupdate (or the reboot) failed.
    UpdateFailed = 16,
    /// `fleet update` stopped at a manager (quorum, refused release, not back in time, rolled back).
    FleetStopped = 17,
    /// `health --agent-unit`: the agent's unit is not running (failed or stopped).
    AgentDown = 18,
    /// The engine's key changed but could not be sealed; it was shown and/or escrowed.
    NotSealed = 19,
    /// `--context`: the manager refused the request (role, state, or the operation failed).
    Refused = 20,
    /// `fleet attest`: a manager failed a check or did not answer.
    NotAttested = 21,
    /// `var firmware-window`: not armed (Secure Boot off, the firmware log unreadable or not
    /// replaying to PCR 7).
    FirmwareWindow = 22,
}

impl Exit {
    /// Every exit code and its meaning: the one source of `--help`'s list and
    /// of the table in docs/operating.md (a unit test keeps it in step).
    pub const ALL: [(Exit, &'static str); 22] = [
        (Exit::Ok, "success"),
        (Exit::Failure, "other failure (I/O, internal); `policy check`: the request is denied"),
        (Exit::Usage, "usage or configuration error (unknown config key, malformed key on `--manual`, bad recovery key)"),
        (Exit::DockerUnreachable, "Docker engine unreachable"),
        (Exit::TpmUnavailable, "TPM unavailable"),
        (Exit::PolicyMismatch, "policy mismatch: the PCRs changed since sealing, or the key was already unsealed in this boot (phase lock); the swarm stays locked"),
        (Exit::NoSealedKey, "no sealed key in the state dir"),
        (Exit::SwarmState, "swarm state wrong for this command (no swarm, worker, pending)"),
        (Exit::BadSealedKey, "sealed key file corrupt, truncated, or sealed on another machine (SRK differs)"),
        (Exit::WrongKey, "the engine rejected the unlock key"),
        (Exit::BenchWarn, "`bench --fail-on warn` found WARN results"),
        (Exit::Proxy, "proxy/PKI error (certificates missing or invalid, address in use)"),
        (Exit::SealRefused, "not sealed: this boot cannot satisfy the signed PCR policy (`policy = \"authorize\"`): no signature for the current PCR 11, or the PCR public key or signature file missing or invalid; the previous seal stays"),
        (Exit::Locked, "`health`: the swarm is locked (not unlocked in this boot)"),
        (Exit::ProxyDown, "`health`: the proxy does not answer a TLS handshake on its listen address (or presents another certificate than the configured one)"),
        (Exit::BadRelease, "`update`: release refused: not signed by this fleet's key, a file missing, unknown or altered, or too large"),
        (Exit::UpdateFailed, "`update apply`: systemd-sysupdate or the reboot failed"),
        (Exit::FleetStopped, "`fleet update` stopped at a manager (would lose quorum, release refused, not back unlocked in time, rolled back, failed its attestation after the reboot); managers after it untouched"),
        (Exit::AgentDown, "`health --agent-unit`: the agent's unit failed or is stopped (the swarm stays locked in this boot)"),
        (Exit::NotSealed, "the engine's unlock key changed but could not be sealed (TPM or disk failed after the change): it was shown on the terminal and written to the escrow file if configured; fix the cause, then `swarmseal seal`"),
        (Exit::Refused, "`--context`: the manager refused the request (this certificate's role may not, the swarm's state, or the operation failed there); its answer is shown"),
        (Exit::NotAttested, "`fleet attest`: a manager failed an attestation check (quote signature, nonce, AK pin or credential activation (--ek-ca), event log replay, PCR 11 not signed by the fleet key, phase marker, Secure Boot) or did not answer; its table says which"),
    ];
}

/// `--help`'s list of exit codes, from [`Exit::ALL`].
fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:");
    for (code, what) in Exit::ALL {
        s.push_str(&format!("\n  {:>2}  {}", code as u8, what.replace('`', "")));
    }
    s
}

/// The TPM, the engine and the state dir every command shares.
#[derive(Debug, clap::Args, Clone)]
pub struct Common {
    /// Configuration file (TOML); default /etc/swarmseal/config.toml if present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Engine API socket, unix:///PATH (else DOCKER_HOST, as the docker CLI reads it;
    /// then the configuration file; default unix:///run/docker.sock).
    #[arg(long, global = true, value_name = "unix:///PATH", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// State directory (default /var/lib/swarmseal).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// TPM TCTI (else TPM2TOOLS_TCTI, TCTI, then device:/dev/tpmrm0).
    #[arg(long, global = true, value_name = "TCTI")]
    pub tcti: Option<String>,
    /// Ask the manager of this docker CLI context (its proxy, the context's TLS files) instead
    /// of this machine: status, bench, reseal, escrow get, recover, update.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

#[derive(Debug, Parser)]
#[command(name = "swarmseal", version, about = "Keep Docker Swarm autolock on without a human: the unlock key sealed in the TPM, unlocked at boot only when the boot measurements match.", after_help = exit_codes_help())]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[cfg(feature = "appliance")]
    /// Run the boot flow and stay up (the systemd service).
    Agent,
    #[cfg(feature = "appliance")]
    /// Init a swarm with autolock (or turn autolock on) and seal its unlock key.
    Init {
        /// AdvertiseAddr for the new swarm.
        #[arg(long, value_name = "ADDR")]
        advertise_addr: Option<String>,
    },
    #[cfg(feature = "appliance")]
    /// Seal the current unlock key, read from the local engine.
    Seal,
    #[cfg(feature = "appliance")]
    /// Unseal the key and unlock the swarm.
    Unlock {
        /// Read the key from stdin (no echo), unlock, and reseal it under the current PCRs.
        #[arg(long)]
        manual: bool,
    },
    #[cfg(feature = "appliance")]
    /// Rotate the unlock key through the engine and reseal it (crash-safe).
    Rotate,
    /// Disaster recovery after a lost quorum: make this manager (locked or active) the only
    /// manager of a new cluster built from its own Raft data, autolock on, the key sealed.
    Recover {
        /// Required: say that you mean it (the other managers are dropped from the cluster).
        #[arg(long)]
        force_new_cluster: bool,
        /// Read the current unlock key from stdin (when the TPM cannot unseal it).
        #[arg(long)]
        key_stdin: bool,
    },
    /// Swarm state, sealed slots, policy PCRs vs current PCRs, proxy, last bench.
    Status {
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "appliance")]
    /// Run only the mutual-TLS proxy.
    Proxy,
    /// Appliance PKI: the client CA and client/server certificates.
    #[command(subcommand)]
    Certs(crate::proxy::pki::CertsCommand),
    /// The proxy's roles: dry-run a request against a role's rules.
    #[command(subcommand)]
    Policy(crate::proxy::policy::PolicyCommand),
    /// Run the CIS Docker Benchmark checks (v1.8.0, or v1.6.0 with --benchmark).
    Bench(crate::bench_cmd::BenchArgs),
    #[cfg(feature = "appliance")]
    /// The appliance's encrypted /var: escrow its recovery key, bind it to this TPM again.
    #[command(subcommand)]
    Var(crate::var::VarCommand),
    /// Exit 0 when the swarm is unlocked (active manager) and the proxy serves; else the reason
    /// on stderr and its exit code (3, 7, 13, 14, 18). The boot-assessment gate of an update.
    Health {
        /// Check again every 2 s until healthy or SECS seconds passed.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// The agent's systemd unit (the appliance: swarmseal.service): stop waiting as soon as it
        /// failed (exit 18) or made its boot decision with the swarm locked (exit 13).
        #[arg(long, value_name = "UNIT")]
        agent_unit: Option<String>,
    },
    /// Image updates: verify a release, install the staged one (appliance, root); with
    /// --context, install a release on that manager.
    Update(crate::update::UpdateArgs),
    /// Operate on a swarm's managers from a workstation, through docker CLI contexts.
    #[command(subcommand)]
    Fleet(crate::fleet::FleetCommand),
    /// (with --context) Have the manager reseal its unlock key under its current PCRs.
    Reseal,
    /// (with --context) The manager's escrow copies.
    #[command(subcommand)]
    Escrow(crate::remote::EscrowCommand),
}

/// Any error a command can end with; mapped to [`Exit`] in [`exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[cfg(feature = "appliance")]
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
    #[cfg(feature = "appliance")]
    #[error(transparent)]
    Var(#[from] VarError),
    #[cfg(feature = "appliance")]
    #[error(transparent)]
    Window(#[from] crate::firmware::WindowError),
    #[error(transparent)]
    Health(#[from] Unhealthy),
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[cfg(feature = "appliance")]
    #[error(transparent)]
    Recover(#[from] RecoverError),
    #[error("{0}")]
    Usage(String),
    /// Finished, but the command wants a non-zero exit (e.g. `bench --fail-on warn`).
    #[error("")]
    Status(Exit),
}

/// Map an error to its exit code.
pub fn exit_code(e: &Error) -> Exit {
    match e {
        Error::Config(_) | Error::Usage(_) => Exit::Usage,
        #[cfg(feature = "appliance")]
        Error::Boot(b) => b.into(),
        Error::Proxy(_) => Exit::Proxy,
        Error::Bench(b) => match b {
            crate::bench::BenchError::Engine { .. } => Exit::DockerUnreachable,
            crate::bench::BenchError::Write { .. } => Exit::Failure,
            crate::bench::BenchError::UnknownCheck(_) | crate::bench::BenchError::EmptySelection => Exit::Usage,
        },
        #[cfg(feature = "appliance")]
        Error::Var(v) => v.into(),
        #[cfg(feature = "appliance")]
        Error::Window(w) => match w {
            crate::firmware::WindowError::Var(v) => v.into(),
            crate::firmware::WindowError::NotArmable(_) => Exit::FirmwareWindow,
            crate::firmware::WindowError::Request(_) => Exit::Usage,
            crate::firmware::WindowError::Io { .. } => Exit::Failure,
        },
        Error::Health(h) => h.into(),
        Error::Update(u) => u.into(),
        Error::Fleet(f) => f.into(),
        Error::Remote(r) => r.into(),
        #[cfg(feature = "appliance")]
        Error::Recover(r) => r.into(),
        Error::Status(x) => *x,
    }
}

// ------------------------------------------------- each module's errors → exit codes (the table)

#[cfg(feature = "appliance")]
impl From<&BootError> for Exit {
    fn from(e: &BootError) -> Exit {
        match e {
            BootError::Swarm(SwarmError::Unreachable { .. }) => Exit::DockerUnreachable,
            BootError::Swarm(SwarmError::WrongKey { .. }) => Exit::WrongKey,
            BootError::Swarm(SwarmError::NotLocked { .. } | SwarmError::NotManager { .. }) => Exit::SwarmState,
            BootError::Swarm(SwarmError::Api { .. }) => Exit::Failure,
            BootError::Tpm(TpmError::Unavailable { .. } | TpmError::Busy { .. }) => Exit::TpmUnavailable,
            BootError::NotSealed { .. } => Exit::NotSealed,
            BootError::Tpm(TpmError::PolicyMismatch { .. } | TpmError::NotSigned { .. } | TpmError::BadSignature { .. })
            | BootError::PhaseLocked { .. }
            | BootError::SignatureFile(_) => Exit::PolicyMismatch,
            BootError::SealRefused { .. } | BootError::WindowRefused { .. } => Exit::SealRefused,
            BootError::Tpm(TpmError::SrkMismatch) => Exit::BadSealedKey,
            BootError::Tpm(TpmError::Command { .. } | TpmError::EkMismatch { .. } | TpmError::ActivationRefused { .. }) => Exit::Failure,
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

#[cfg(feature = "appliance")]
impl From<&RecoverError> for Exit {
    fn from(e: &RecoverError) -> Exit {
        match e {
            RecoverError::Usage => Exit::Usage,
            RecoverError::Boot(b) => b.into(),
            RecoverError::NoSwarm(_) | RecoverError::NotManager => Exit::SwarmState,
            RecoverError::KeyRefused { .. } => Exit::WrongKey,
            RecoverError::PhaseLocked { .. } => Exit::PolicyMismatch,
            RecoverError::NodeKey { .. } | RecoverError::Restart { .. } | RecoverError::Timeout { .. } => Exit::Failure,
        }
    }
}

/// `swarmseal update …`.
impl From<&UpdateError> for Exit {
    fn from(e: &UpdateError) -> Exit {
        match e {
            UpdateError::Release(r) => match r {
                ReleaseError::NotSigned(_) | ReleaseError::Invalid(_) | ReleaseError::HashMismatch { .. } | ReleaseError::TooLarge { .. } => Exit::BadRelease,
                ReleaseError::Key { .. } => Exit::Usage,
                ReleaseError::Body(_) | ReleaseError::Io { .. } | ReleaseError::Pack(_) => Exit::Failure,
            },
            UpdateError::Request(_) | UpdateError::NoSource | UpdateError::SourceSetup(_) => Exit::Usage,
            UpdateError::Tool { .. } => Exit::UpdateFailed,
            _ => Exit::Failure,
        }
    }
}

#[cfg(feature = "appliance")]
/// `swarmseal var …`.
impl From<&VarError> for Exit {
    fn from(e: &VarError) -> Exit {
        match e {
            VarError::NoRecipient | VarError::NoDevice(_) | VarError::BadKey => Exit::Usage,
            VarError::KeyRefused => Exit::WrongKey,
            VarError::Escrow(EscrowError::Recipient(_)) => Exit::Usage,
            _ => Exit::Failure,
        }
    }
}

/// `swarmseal fleet …`.
impl From<&FleetError> for Exit {
    fn from(e: &FleetError) -> Exit {
        match e {
            FleetError::Usage(_) | FleetError::Context { .. } => Exit::Usage,
            FleetError::Stopped { .. } => Exit::FleetStopped,
            FleetError::NotAttested { .. } => Exit::NotAttested,
        }
    }
}

/// `swarmseal --context …`.
impl From<&crate::remote::RemoteError> for Exit {
    fn from(e: &crate::remote::RemoteError) -> Exit {
        use crate::remote::RemoteError as R;
        match e {
            R::Usage(_) => Exit::Usage,
            R::Context(f) => f.into(),
            R::Unreachable { .. } => Exit::DockerUnreachable,
            R::Refused { .. } => Exit::Refused,
            R::Write { .. } => Exit::Failure,
        }
    }
}

/// `swarmseal health` (see `crate::health`'s module doc).
impl From<&Unhealthy> for Exit {
    fn from(e: &Unhealthy) -> Exit {
        match e {
            Unhealthy::Engine(SwarmError::Unreachable { .. }) => Exit::DockerUnreachable,
            Unhealthy::Engine(_) => Exit::Failure,
            Unhealthy::Locked => Exit::Locked,
            Unhealthy::State { .. } => Exit::SwarmState,
            Unhealthy::Proxy { .. } => Exit::ProxyDown,
            Unhealthy::Decided { .. } => Exit::Locked,
            Unhealthy::AgentDown { .. } => Exit::AgentDown,
        }
    }
}

/// Resolve the configuration: file, then command-line overrides.
pub fn resolve_config(c: &Common) -> Result<Config, Error> {
    let mut cfg = Config::load(c.config.as_deref())?;
    if let Some(h) = &c.docker_host {
        cfg.docker_host = h.clone();
    }
    if let Some(d) = &c.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(t) = &c.tcti {
        cfg.tpm.tcti = Some(t.clone());
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // libtss2 prints `ERROR:esys…` lines on expected refusals (policy
    // mismatch); our own errors say it better. TSS2_LOG set by the user wins.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    #[cfg(feature = "appliance")]
    let is_agent = matches!(cli.command, Command::Agent | Command::Proxy);
    #[cfg(not(feature = "appliance"))]
    let is_agent = false;
    crate::logging::init(is_agent);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Status(x)) => ExitCode::from(x as u8),
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("swarmseal: error: {e}");
            if code == Exit::WrongKey {
                eprintln!("swarmseal: the engine holds another unlock key than the one given. The key shown at the last `init`/`rotate`, or the escrow copy (`GET /swarmseal/v1/escrow` through the proxy, decrypted with `age -d -i YOUR-IDENTITY`), is the swarm's; `swarmseal status` says whether the sealed key is stale.");
            }
            if code == Exit::PolicyMismatch {
                eprintln!("swarmseal: the swarm stays locked. If this boot chain is expected, unlock by hand (`swarmseal unlock --manual`, or `docker swarm unlock` through the proxy and then POST /swarmseal/v1/reseal): that reseals the key to it.");
            }
            ExitCode::from(code as u8)
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    if let Some(context) = cli.common.context.clone() {
        return run_remote(&context, cli.command);
    }
    let cfg = resolve_config(&cli.common)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        match cli.command {
            // The synchronous commands (files, stdin, tools) run on the blocking pool.
            Command::Certs(c) => on_blocking_pool(cfg, move |cfg| crate::proxy::pki::run(&cfg, c).map_err(Error::from)).await,
            Command::Policy(c) => on_blocking_pool(cfg, move |cfg| match crate::proxy::policy::run(&cfg, c, std::io::stdin().lock()) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::Status(Exit::Failure)),
                Err(e) => Err(Error::Usage(e.to_string())),
            })
            .await,
            Command::Bench(a) => crate::bench_cmd::run(&cfg, a).await,
            #[cfg(feature = "appliance")]
            Command::Var(crate::var::VarCommand::FirmwareWindow { command }) => on_blocking_pool(cfg, move |cfg| crate::firmware::run_command(&cfg, command).map_err(Error::from)).await,
            #[cfg(feature = "appliance")]
            Command::Var(c) => on_blocking_pool(cfg, move |cfg| crate::var::run(&cfg, c).map_err(Error::from)).await,
            Command::Health { wait, agent_unit } => crate::health::run(&cfg, wait, agent_unit.as_deref()).await.map_err(Error::from),
            Command::Update(crate::update::UpdateArgs { command: Some(c), .. }) => crate::update::run(&cfg, c).await.map_err(Error::from),
            Command::Update(_) => Err(Error::Usage("update RELEASE and update --version V install on a manager: give --context NAME (`fleet update` rolls every manager; on the manager itself: `swarmseal update verify|apply`)".into())),
            Command::Fleet(c) => crate::fleet::run(c).await.map_err(Error::from),
            Command::Reseal | Command::Escrow(_) => Err(Error::Usage("reseal and escrow get ask a manager: give --context NAME (on the manager itself: `swarmseal seal`, the escrow file in the state dir)".into())),
            #[cfg(not(feature = "appliance"))]
            Command::Status { .. } | Command::Recover { .. } => Err(Error::Usage("this build has no TPM commands: ask a manager with --context NAME".into())),
            #[cfg(feature = "appliance")]
            Command::Proxy => crate::boot::run_proxy_only(&cfg).await.map_err(Error::from),
            #[cfg(feature = "appliance")]
            Command::Recover { force_new_cluster, key_stdin } => crate::recover::run_cli(&cfg, force_new_cluster, key_stdin).await.map_err(Error::from),
            #[cfg(feature = "appliance")]
            Command::Agent => crate::boot::run_agent(Ctx::new(&cfg)).await.map_err(Error::from),
            #[cfg(feature = "appliance")]
            Command::Init { advertise_addr } => crate::boot::cmd_init(&Ctx::new(&cfg), advertise_addr.or(cfg.swarm.advertise_addr.clone())).await.map_err(Error::from),
            #[cfg(feature = "appliance")]
            Command::Seal => crate::boot::cmd_seal(&Ctx::new(&cfg)).await.map_err(Error::from),
            #[cfg(feature = "appliance")]
            Command::Unlock { manual } => crate::boot::cmd_unlock(&Ctx::new(&cfg), manual).await.map_err(Error::from),
            #[cfg(feature = "appliance")]
            Command::Rotate => crate::boot::cmd_rotate(&Ctx::new(&cfg)).await.map_err(Error::from),
            #[cfg(feature = "appliance")]
            Command::Status { json } => crate::boot::cmd_status(&Ctx::new(&cfg), json).await.map_err(Error::from),
        }
    })
}

/// Run a synchronous command on the runtime's blocking pool, not on one of its two workers.
async fn on_blocking_pool(cfg: Config, f: impl FnOnce(Config) -> Result<(), Error> + Send + 'static) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || f(cfg)).await.unwrap_or_else(|e| {
        eprintln!("swarmseal: the command's thread ended: {e}");
        Err(Error::Status(Exit::Failure))
    })
}

/// `swarmseal --context NAME COMMAND`: the commands the manager's agent answers through its proxy.
fn run_remote(context: &str, command: Command) -> Result<(), Error> {
    use crate::remote::Request;
    let request = match command {
        Command::Status { json } => Request::Status { json },
        Command::Bench(_) => Request::Bench,
        Command::Reseal => Request::Reseal,
        Command::Escrow(c) => Request::Escrow(c),
        Command::Recover { force_new_cluster, key_stdin } => Request::Recover { force_new_cluster, key_stdin },
        Command::Update(crate::update::UpdateArgs { command: None, release, version, reboot }) => Request::Update { release, version, reboot },
        _ => return Err(Error::Usage("with --context, swarmseal runs status, bench, reseal, escrow get, recover and update RELEASE|--version V on the manager; the other commands run on the manager itself (`fleet update` rolls a release over every manager)".into())),
    };
    let docker = std::env::var_os("SWARMSEAL_DOCKER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docker"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(crate::remote::run(&docker, context, request)).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_is_listed_once_in_order_and_the_readme_agrees() {
        for (i, (code, _)) in Exit::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "Exit::ALL out of order at {code:?}");
        }
        let readme = include_str!("../../docs/operating.md");
        for (code, what) in Exit::ALL {
            let row = format!("| {} | {} |", code as u8, what);
            assert!(readme.contains(&row), "docs/operating.md's exit-code table lacks or differs from: {row}");
        }
        let help = exit_codes_help();
        assert!(help.contains(" 12  not sealed"), "{help}");
        assert!(help.contains(" 16  update apply"), "{help}");
    }
}
