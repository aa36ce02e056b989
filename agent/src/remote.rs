//! `swarmseal --context NAME …`: the operator's machine asks a manager's agent, through its
//! mutual-TLS proxy, what `swarmseal` would do on the manager itself. The manager is named
//! by a docker CLI context (`docker context create m1 --docker
//! "host=tcp://m1:2376,ca=…,cert=…,key=…"`), read as `fleet update` reads it
//! ([`crate::fleet::Manager`]); no TPM and no libtss2 on this side.
//!
//! | command | request (`/swarmseal/v1`, docs/proxy.md) |
//! |---|---|
//! | `status [--json]` | `GET /status` |
//! | `bench` | `GET /bench` (the manager's last report, docker-bench-security JSON) |
//! | `reseal` | `POST /reseal` (admin) |
//! | `escrow get [--var-recovery-key] --out FILE` | `GET /escrow`, `GET /escrow/var-recovery-key` (admin; age-encrypted) |
//! | `recover --force-new-cluster [--key-stdin]` | `POST /recover` (admin; body: the current unlock key, if given) |
//! | `update RELEASE [--reboot]` | `POST /update[?reboot=1]` (admin; body: the release tar, verified by the manager before a byte is written; a cut upload is resumed: `GET /update/partial`, `POST /update?resume=N&sums=HEX`) |
//! | `update --version V [--reboot]` | `POST /update?version=V[&reboot=1]` (admin; the manager fetches `swarmseal_V.tar` from its `[update] source`) |
//!
//! Errors ([`RemoteError`]): a context that cannot be used (exit 2), a manager that does not
//! answer (3), a manager that refuses (20, its `message` shown).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};

use crate::fleet::{answer_message, empty, is_version, release_version, upload_release, FleetError, Manager, ReqBody, UploadError, UPLOAD_TIMEOUT};

/// How long one request may take (a reseal talks to the TPM; a recovery restarts the engine).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Why a `--context` command did not finish. `Display` is the operator's sentence.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The command has no remote form, or its arguments are wrong.
    #[error("{0}")]
    Usage(String),
    /// The docker context cannot be used (no such context, not tcp://, TLS files missing).
    #[error(transparent)]
    Context(#[from] FleetError),
    /// No answer from the manager's proxy (connection, TLS handshake, timeout).
    #[error("docker context {context}: the manager does not answer: {message}")]
    Unreachable { context: String, message: String },
    /// The manager answered with an error status (role, state, or the operation failed).
    #[error("docker context {context}: {op} refused (HTTP {status}): {message}")]
    Refused { context: String, op: String, status: u16, message: String },
    /// Writing the output file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// `escrow …` (with `--context`).
#[derive(Debug, clap::Subcommand)]
pub enum EscrowCommand {
    /// Fetch the manager's escrow copy (age-encrypted for the fleet's escrow recipient) into FILE.
    Get {
        /// The appliance's `/var` recovery key instead of the swarm unlock key.
        #[arg(long)]
        var_recovery_key: bool,
        /// Where to write it (mode 0600; the copy stays encrypted).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// What a `--context` command asks of the manager.
pub enum Request {
    Status { json: bool },
    Bench,
    Reseal,
    Escrow(EscrowCommand),
    Recover { force_new_cluster: bool, key_stdin: bool },
    /// Install a release into the manager's inactive slot: uploaded from `release`, or fetched
    /// by the manager (`version`); exactly one of the two.
    Update { release: Option<PathBuf>, version: Option<String>, reboot: bool },
}

/// Run `request` against the manager of docker context `context` (`docker` is the docker CLI
/// that reads the context store).
pub async fn run(docker: &Path, context: &str, request: Request) -> Result<(), RemoteError> {
    if let Request::Recover { force_new_cluster: false, .. } = request {
        return Err(RemoteError::Usage("recover makes the manager the only manager of a new cluster: say so with --force-new-cluster".into()));
    }
    // What the manager is asked to install, checked before its context is even read.
    let update = match &request {
        Request::Update { release, version, reboot } => Some(update_path(release.as_deref(), version.as_deref(), *reboot)?),
        _ => None,
    };
    let m = Manager::from_context(docker, context)?;
    let ask_within = |method: Method, path: String, body: ReqBody, timeout: Duration| {
        let m = &m;
        async move {
            let (status, answer) = m.call(method.clone(), &path, body, timeout).await.map_err(|message| RemoteError::Unreachable { context: context.into(), message })?;
            if !status.is_success() {
                return Err(refused(context, &method, &path, status, &answer));
            }
            Ok(answer)
        }
    };
    let ask = |method: Method, path: &'static str, body: ReqBody| ask_within(method, path.to_string(), body, TIMEOUT);
    match request {
        Request::Status { json } => {
            let answer = ask(Method::GET, "/swarmseal/v1/status", empty()).await?;
            let v: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| RemoteError::Usage(format!("docker context {context}: GET /swarmseal/v1/status is not JSON ({e}): is this a swarmseal manager?")))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                let st = serde_json::from_value(v).map_err(|e| RemoteError::Usage(format!("docker context {context}: GET /swarmseal/v1/status is not a swarmseal status document ({e}): is the manager's agent another version?")))?;
                crate::operator::print_status(&st);
            }
        }
        Request::Bench => {
            let answer = ask(Method::GET, "/swarmseal/v1/bench", empty()).await?;
            println!("{}", String::from_utf8_lossy(&answer).trim_end());
        }
        Request::Reseal => {
            let answer = ask(Method::POST, "/swarmseal/v1/reseal", empty()).await?;
            println!("resealed on {context}: {}", String::from_utf8_lossy(&answer).trim());
        }
        Request::Escrow(EscrowCommand::Get { var_recovery_key, out }) => {
            let path = if var_recovery_key { "/swarmseal/v1/escrow/var-recovery-key" } else { "/swarmseal/v1/escrow" };
            let answer = ask(Method::GET, path, empty()).await?;
            let (file, data) = (out.clone(), answer.to_vec());
            tokio::task::spawn_blocking(move || swarmseal_common::fs::write_atomic(&file, &data, 0o600))
                .await
                .map_err(|e| RemoteError::Write { path: out.clone(), source: std::io::Error::other(e) })?
                .map_err(|source| RemoteError::Write { path: out.clone(), source })?;
            println!("wrote {} ({} bytes, age-encrypted; decrypt with `age -d -i YOUR-IDENTITY {}`)", out.display(), answer.len(), out.display());
        }
        Request::Recover { key_stdin, .. } => {
            let body = if key_stdin {
                let key = tokio::task::spawn_blocking(crate::operator::read_key_blocking)
                    .await
                    .map_err(|e| RemoteError::Usage(format!("cannot read the unlock key: {e}")))?
                    .map_err(RemoteError::Usage)?;
                // The buffer is owned by a Zeroizing<Vec>: wiped when hyper drops the body.
                Full::new(Bytes::from_owner(zeroize::Zeroizing::new(key.expose().as_bytes().to_vec()))).map_err(|never| match never {}).boxed()
            } else {
                empty()
            };
            let answer = ask(Method::POST, "/swarmseal/v1/recover", body).await?;
            println!("recovered on {context}: {}", String::from_utf8_lossy(&answer).trim());
        }
        Request::Update { release, reboot, .. } => {
            let path = update.unwrap_or_default();
            let answer = match &release {
                // Resumed when cut (fleet::upload_release), each resume said on stderr.
                Some(r) => {
                    let say = |line: String| eprintln!("{context}: {line}");
                    let (status, answer) = upload_release(&m, &path, r, &say).await.map_err(|e| match e {
                        UploadError::File(message) => RemoteError::Usage(message),
                        UploadError::Cut(message) => RemoteError::Unreachable { context: context.into(), message },
                    })?;
                    if !status.is_success() {
                        return Err(refused(context, &Method::POST, &path, status, &answer));
                    }
                    answer
                }
                None => ask_within(Method::POST, path, empty(), UPLOAD_TIMEOUT).await?,
            };
            println!("{context}: {}", String::from_utf8_lossy(&answer).trim());
            if reboot {
                println!("{context} reboots into the new slot; `swarmseal --context {context} status` shows the version once it is back (a failed health gate boots the previous one)");
            }
        }
    }
    Ok(())
}

/// `POST /swarmseal/v1/update…` for an upload of `release` or a fetch of `version`; a usage
/// error when neither or both are given, the file is not a release, or the version is not one.
fn update_path(release: Option<&Path>, version: Option<&str>, reboot: bool) -> Result<String, RemoteError> {
    let query = match (release, version) {
        (Some(r), None) => {
            release_version(r).ok_or_else(|| RemoteError::Usage(format!("{}: not a release (expected swarmseal_VERSION.tar from `scripts/build-image --release`)", r.display())))?;
            if !r.is_file() {
                return Err(RemoteError::Usage(format!("{}: no such file", r.display())));
            }
            reboot.then(|| "reboot=1".to_string())
        }
        (None, Some(v)) if is_version(v) => Some(format!("version={v}{}", if reboot { "&reboot=1" } else { "" })),
        (None, Some(v)) => return Err(RemoteError::Usage(format!("--version {:?}: a version is letters, digits, '.' and '-' (as `scripts/build-image --version` takes it)", v.escape_debug().to_string()))),
        _ => return Err(RemoteError::Usage("update takes a release (swarmseal_V.tar, uploaded) or --version V (fetched by the manager from its [update] source), one of the two".into())),
    };
    Ok(match query {
        Some(q) => format!("/swarmseal/v1/update?{q}"),
        None => "/swarmseal/v1/update".into(),
    })
}

/// The manager's refusal, with what its answer says ([`answer_message`]).
fn refused(context: &str, method: &Method, path: &str, status: StatusCode, answer: &[u8]) -> RemoteError {
    RemoteError::Refused { context: context.into(), op: format!("{method} {path}"), status: status.as_u16(), message: answer_message(answer) }
}
