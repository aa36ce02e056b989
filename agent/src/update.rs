//! Image updates: a signed release received through the proxy, verified before anything is
//! written, staged, then installed into the inactive A/B slot by the privileged apply service
//! (see `docs/updates.md`).
//!
//! The release format — names, `SHA256SUMS`, its signature, the ustar archive — is
//! [`swarmseal_release`]'s (re-exported here); this module is the agent's side: receive a
//! release (the body of `POST /swarmseal/v1/update`, or, with `?version=V` and no body, fetched
//! from `[update] source` over HTTPS by [`source`]; both go through [`receive`]), stage it,
//! hand it to the apply service.
//!
//! Trust: `SHA256SUMS.sig` must verify with `[update] public_key` (the fleet's PCR-signing key,
//! pinned in the image) before a byte is written; each file must be listed in `SHA256SUMS` and
//! hash to its line while it is written to `<staging_dir>/V.partial/`. Only a complete, verified
//! release is moved to `<staging_dir>/staged/` (replacing the previous one). The root-only apply
//! service (`swarmseal update apply`) verifies it all again — it does not trust the sandboxed
//! agent — before `systemd-sysupdate update V`. Past that point the boot chain itself holds the
//! line: firmware boots only a UKI signed with the fleet's Secure Boot key, and that UKI
//! mounts only the root image matching its dm-verity root hash.

use std::fmt::Write as _;
use std::future::Future as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::config::Config;
use swarmseal_release::tar::Reader as Tar;
use swarmseal_release::verify::{check_hash, Members};
pub use swarmseal_release::{
    classify, load_key, read_manifest, valid_version, verify_dir, verify_manifest, verify_tar, Manifest, Part, ReleaseError, ReleaseKey, SIG,
    SUMS,
};

pub mod source;

/// The staged release, under the staging dir.
pub const STAGED: &str = "staged";
/// The line `swarmseal update apply` prints once systemd-sysupdate installed a release
/// (followed by the version).
pub const APPLIED: &str = "installed by systemd-sysupdate: version";
/// How long the agent waits for the apply service (systemd-sysupdate copies ~0.5 GB).
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Why a release was refused or could not be staged or installed. `Display` is the operator
/// sentence; [`UpdateError::exit`] the exit code (the HTTP answer is mapped where the proxy's
/// API is implemented: `From<&UpdateError> for ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The release itself (signature, names, hashes, size) or its key: see [`ReleaseError`].
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// Another update holds the staging area.
    #[error("another update is in progress on this manager; try again when it has finished")]
    Busy,
    /// Reading or writing the staging area failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The apply service could not be reached or gave no answer.
    #[error("{0}")]
    ApplyUnavailable(String),
    /// systemd-sysupdate or systemctl failed.
    #[error("{what} failed ({status}): {output}")]
    Tool { what: String, status: String, output: String },
    /// The request itself is wrong (a bad `?version=`, a body and `?version=` together).
    #[error("{0}")]
    Request(String),
    /// `?version=V` asked for, but `[update] source` is not set.
    #[error("no [update] source configured: upload the release as the body instead")]
    NoSource,
    /// The update source could not be reached, failed TLS verification, answered anything but
    /// 200, or broke off the download. `url` is the release's URL (never with credentials).
    #[error("the update source {url}: {message}")]
    Source { url: String, message: String },
    /// This manager's `[update] source` or `source_ca` is unusable.
    #[error("this manager cannot fetch releases: {0}")]
    SourceSetup(String),
}

impl UpdateError {
    /// A release refused as malformed (422, exit 15), with this sentence.
    pub fn invalid(message: String) -> UpdateError {
        UpdateError::Release(ReleaseError::Invalid(message))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io { path: path.to_path_buf(), source }
}

// ------------------------------------------------------------------ the upload

/// An upload that sends nothing for this long is abandoned (it would hold the staging lock).
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// An [`AsyncRead`] over an HTTP body (the upload), so the release is parsed as it arrives.
/// A read fails with `TimedOut` when no bytes came for [`UPLOAD_IDLE`].
pub struct BodyReader<B> {
    body: B,
    pending: Bytes,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl<B> BodyReader<B> {
    pub fn new(body: B) -> BodyReader<B> {
        BodyReader { body, pending: Bytes::new(), idle: Box::pin(tokio::time::sleep(UPLOAD_IDLE)) }
    }
}

impl<B> AsyncRead for BodyReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    std::task::ready!(self.idle.as_mut().poll(cx));
                    let msg = format!("no data for {} s", UPLOAD_IDLE.as_secs());
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, msg)));
                }
            };
            match frame {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e.to_string()))),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.pending = d;
                        let next = tokio::time::Instant::now() + UPLOAD_IDLE;
                        self.idle.as_mut().reset(next);
                    }
                }
            }
        }
    }
}

/// The exclusive hold on the staging area (a `flock` on `<staging_dir>.lock`, beside it so a
/// refused upload leaves nothing under the staging dir). Released on drop.
pub struct UpdateLock(std::fs::File);

impl Drop for UpdateLock {
    fn drop(&mut self) {
        // Unlock, not just close: a child forked by another thread (any `Command` spawn) holds a
        // copy of the descriptor until its exec, and the lock would stay held until then.
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

/// Take the staging lock without waiting. Errors: [`UpdateError::Busy`] when held.
pub fn try_lock(staging: &Path) -> Result<UpdateLock, UpdateError> {
    let mut name = staging.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "updates".into());
    name.push(".lock");
    let p = staging.with_file_name(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(UpdateLock(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(UpdateError::Busy),
        Err(e) => Err(UpdateError::Io { path: p, source: e.into() }),
    }
}

/// A release verified and moved to `<staging_dir>/staged/`.
pub struct Staged {
    pub version: String,
    pub dir: PathBuf,
    /// Held until the caller has handed the release to the apply service.
    pub lock: UpdateLock,
}

/// Removes a `V.partial` directory unless disarmed.
struct PartialGuard(Option<PathBuf>);

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

fn fsync_dir(p: &Path) -> Result<(), UpdateError> {
    swarmseal_common::fs::fsync_dir(p).map_err(io_err(p))
}

/// Receive a release tar from `body` (at most `max` bytes), verify it, and stage it under
/// `staging` (`V.partial/` while receiving, then `staged/`, replacing the previous release).
///
/// Nothing is written before `SHA256SUMS.sig` verifies with `key`; on any error the partial
/// release is removed and the previously staged release stays. Errors: [`UpdateError::Busy`]
/// (another upload holds the lock), [`UpdateError::Io`], and as [`UpdateError::Release`]:
/// [`ReleaseError::NotSigned`], [`ReleaseError::Invalid`] (order, names, types, missing
/// files), [`ReleaseError::HashMismatch`], [`ReleaseError::TooLarge`], [`ReleaseError::Body`].
pub async fn receive<R: AsyncRead + Unpin>(key: &ReleaseKey, staging: &Path, max: u64, body: R) -> Result<Staged, UpdateError> {
    receive_from(key, staging, max, body, None).await
}

/// [`receive`] for a release fetched as `swarmseal_<version>.tar` ([`source`]): the signed
/// manifest must be `version` (checked with the signature, before anything is written), not
/// another release the source chose; a refused release is not read to its end (nobody waits
/// for our answer on that connection). Errors: [`receive`]'s.
pub async fn receive_fetched<R: AsyncRead + Unpin>(key: &ReleaseKey, staging: &Path, max: u64, body: R, version: &str) -> Result<Staged, UpdateError> {
    receive_from(key, staging, max, body, Some(version)).await
}

async fn receive_from<R: AsyncRead + Unpin>(key: &ReleaseKey, staging: &Path, max: u64, body: R, fetched: Option<&str>) -> Result<Staged, UpdateError> {
    let dir = staging.to_path_buf();
    let lock = blocking(move || try_lock(&dir)).await?;
    let mut tar = Tar::new(body, max);
    match receive_locked(&mut tar, key, staging, fetched).await {
        Ok(version) => Ok(Staged { version, dir: staging.join(STAGED), lock }),
        Err(e) => {
            if fetched.is_none() && matches!(&e, UpdateError::Release(r) if r.is_refusal()) {
                // Read the rest of the upload (within the cap, for at most a minute) so the
                // client reads our 422 instead of a connection reset in the middle of sending.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), tar.drain()).await;
            }
            Err(e)
        }
    }
}

/// Run blocking file system work (renames, fsync, directory removal) on tokio's blocking pool,
/// off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, UpdateError> + Send + 'static) -> Result<T, UpdateError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(UpdateError::Io { path: PathBuf::new(), source: std::io::Error::other(e) }))
}

async fn receive_locked<R: AsyncRead + Unpin>(tar: &mut Tar<R>, key: &ReleaseKey, staging: &Path, expect: Option<&str>) -> Result<String, UpdateError> {
    let (manifest, sums, sig) = read_manifest(tar, key).await?;
    if let Some(want) = expect.filter(|w| *w != manifest.version) {
        return Err(UpdateError::invalid(format!("the release is version {}, not {want} as asked for", manifest.version)));
    }

    // Verified: now, and only now, write.
    let partial = staging.join(format!("{}.partial", manifest.version));
    let mut guard = PartialGuard(Some(partial.clone()));
    let (dir, p) = (staging.to_path_buf(), partial.clone());
    blocking(move || {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        clean_partials(&dir);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).map_err(io_err(&p))
    })
    .await?;
    let mut members = Members::default();
    while let Some(m) = tar.next().await? {
        let want = *members.admit(&manifest, &m.name)?;
        let path = partial.join(&m.name);
        let mut f = tokio::fs::OpenOptions::new().create_new(true).write(true).open(&path).await.map_err(io_err(&path))?;
        let got = tar.body(&m, Some((&mut f, &path))).await?;
        check_hash(&m.name, &want, &got)?;
        f.sync_all().await.map_err(io_err(&path))?;
    }
    members.complete(&manifest)?;
    tar.drain().await;

    // Swap it in: the previous staged release goes only once the new one is complete.
    let dir = staging.to_path_buf();
    blocking(move || {
        for (name, bytes) in [(SUMS, &sums), (SIG, &sig)] {
            let p = partial.join(name);
            std::fs::write(&p, bytes).map_err(io_err(&p))?;
        }
        fsync_dir(&partial)?;
        let staged = dir.join(STAGED);
        let old = dir.join(".staged.old");
        let _ = std::fs::remove_dir_all(&old);
        if staged.exists() {
            std::fs::rename(&staged, &old).map_err(io_err(&staged))?;
        }
        std::fs::rename(&partial, &staged).map_err(io_err(&staged))?;
        let _ = std::fs::remove_dir_all(&old);
        fsync_dir(&dir)
    })
    .await?;
    guard.0 = None;
    Ok(manifest.version)
}

/// Leftovers of an interrupted upload (a crash or power cut mid-transfer).
fn clean_partials(staging: &Path) {
    if let Ok(rd) = std::fs::read_dir(staging) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

// ------------------------------------------------------------------ the apply service

/// What the agent asks of the apply service: one JSON line on the socket.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ApplyRequest {
    /// The version the agent staged; apply refuses another one.
    pub version: String,
    /// `systemctl reboot` after installing.
    pub reboot: bool,
}

/// Ask the privileged apply service at `socket` (`swarmseal-update.socket`) to install the
/// staged release `version`. Returns its output lines once it says [`APPLIED`].
/// Errors: [`UpdateError::ApplyUnavailable`] (no socket, no answer, timeout),
/// [`UpdateError::Tool`] (it answered with a failure: its lines).
pub async fn apply_via(socket: &Path, version: &str, reboot: bool) -> Result<Vec<String>, UpdateError> {
    use tokio::io::AsyncBufReadExt;
    let mut s = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        UpdateError::ApplyUnavailable(format!("the release is staged, but the apply service at {} cannot be reached: {e} (swarmseal-update.socket exists on the appliance image only)", socket.display()))
    })?;
    let mut req = serde_json::to_vec(&ApplyRequest { version: version.to_string(), reboot }).unwrap_or_default();
    req.push(b'\n');
    s.write_all(&req).await.map_err(|e| UpdateError::ApplyUnavailable(e.to_string()))?;
    s.shutdown().await.map_err(|e| UpdateError::ApplyUnavailable(e.to_string()))?;
    let done = format!("{APPLIED} {version}");
    let read = async {
        let mut lines = tokio::io::BufReader::new(s.take(1 << 20)).lines();
        let mut out = Vec::new();
        // With a reboot the service lingers after its answer: stop at the answer, not at EOF.
        while let Some(l) = lines.next_line().await? {
            let l = l.trim_end().to_string();
            let last = l == done;
            if !l.is_empty() {
                out.push(l);
            }
            if last {
                return Ok::<_, std::io::Error>((out, true));
            }
        }
        Ok((out, false))
    };
    match tokio::time::timeout(APPLY_TIMEOUT, read).await {
        Ok(Ok((lines, true))) => Ok(lines),
        Ok(Ok((lines, false))) if lines.is_empty() => Err(UpdateError::ApplyUnavailable(
            "the release is staged, but the apply service closed the connection without an answer: another update is being installed, or it failed to start (journalctl -u 'swarmseal-update@*')".into(),
        )),
        Ok(Ok((lines, false))) => Err(UpdateError::Tool { what: "swarmseal update apply".into(), status: "no install".into(), output: lines.join("; ") }),
        Ok(Err(e)) => Err(UpdateError::ApplyUnavailable(format!("the apply service: {e}"))),
        Err(_) => Err(UpdateError::ApplyUnavailable(format!("the apply service did not finish within {} s", APPLY_TIMEOUT.as_secs()))),
    }
}

/// `swarmseal update …`: on the appliance `apply` and `verify`; with `--context NAME`, a release
/// for that manager (`POST /swarmseal/v1/update`, see [`crate::remote`]).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UpdateArgs {
    #[command(subcommand)]
    pub command: Option<UpdateCommand>,
    /// (with --context) The release to upload: swarmseal_V.tar from `scripts/build-image --release`.
    #[arg(value_name = "RELEASE", conflicts_with = "version")]
    pub release: Option<PathBuf>,
    /// (with --context) Have the manager fetch swarmseal_V.tar from its [update] source instead.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// (with --context) Reboot into the new slot once it is installed.
    #[arg(long)]
    pub reboot: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum UpdateCommand {
    /// (appliance, root; run by swarmseal-update@.service) Verify the staged release again and
    /// install it into the inactive slot with `systemd-sysupdate update V`; reboot if asked.
    Apply {
        /// The staged release (default <staging_dir>/staged; systemd-sysupdate reads the Source
        /// Path of its definitions in /usr/lib/sysupdate.d/, which the image points there).
        #[arg(long, value_name = "DIR")]
        staged: Option<PathBuf>,
        /// `systemctl reboot` once installed.
        #[arg(long)]
        reboot: bool,
        /// Read the request {"version": V, "reboot": bool} as one JSON line from stdin (how the
        /// socket-activated service is run); its version must be the staged one.
        #[arg(long)]
        stdin_request: bool,
    },
    /// Check a release (its tar or its directory) against [update] public_key: signature, names,
    /// hashes. Exit 0 when it would be accepted, 15 when not. Then what it changes against the
    /// running image: Debian packages added, removed, upgraded, the agent's version (its SBOM
    /// against [update] sbom, or --against).
    Verify {
        /// swarmseal_V.tar or a directory holding SHA256SUMS, SHA256SUMS.sig and the release files.
        #[arg(value_name = "RELEASE")]
        release: PathBuf,
        /// Compare with this SBOM (e.g. a build's swarmseal.sbom.cdx.json on a workstation)
        /// instead of the running image's ([update] sbom).
        #[arg(long, value_name = "SBOM-FILE")]
        against: Option<PathBuf>,
        /// One JSON document: {"version", "files", "against", "changes", "note"}.
        #[arg(long)]
        json: bool,
    },
}

/// Run a `swarmseal update` command (prints to stdout; the apply service's stdout is the socket).
pub async fn run(cfg: &Config, c: UpdateCommand) -> Result<(), UpdateError> {
    let key = load_key(&cfg.update.public_key)?;
    match c {
        UpdateCommand::Verify { release, against, json } => {
            let m = if release.is_dir() {
                // Hashing ~0.5 GB: on the blocking pool, not an async worker.
                let r = release.clone();
                blocking(move || Ok(verify_dir(&key, &r)?)).await?
            } else {
                let f = tokio::fs::File::open(&release).await.map_err(io_err(&release))?;
                verify_tar(&key, tokio::io::BufReader::with_capacity(256 << 10, f)).await?
            };
            let verified = format!("release {} verified: {SUMS} signed by the fleet's key, {} files match", m.version, m.files.len());
            let (against, changes) = release_changes(&cfg.update.sbom, against, &release, &m).await?;
            let note = changes.as_ref().err().cloned();
            if json {
                let doc = serde_json::json!({
                    "version": m.version,
                    "files": m.files.len(),
                    "against": against,
                    "changes": changes.as_ref().ok(),
                    "note": note,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!("{verified}");
                match (&against, &changes) {
                    (Some(a), Ok(d)) => print!("changes against {}:\n{d}", a.display()),
                    _ => println!("{}", note.unwrap_or_default()),
                }
            }
            Ok(())
        }
        UpdateCommand::Apply { staged, reboot, stdin_request } => {
            let cfg = cfg.clone();
            // Reading stdin, hashing the release, systemd-sysupdate and the pause before the
            // reboot all block: the whole command runs on the blocking pool.
            blocking(move || {
                let staged = staged.unwrap_or_else(|| cfg.update_dir().join(STAGED));
                // By hand, hold the staging lock so no upload replaces the release meanwhile;
                // run by the socket, the agent that asked holds it.
                let _lock = if stdin_request { None } else { Some(try_lock(&cfg.update_dir())?) };
                let (want, reboot) = if stdin_request {
                    let mut line = Vec::new();
                    std::io::stdin().take(4096).read_to_end(&mut line).map_err(|e| ReleaseError::Body(e.to_string()))?;
                    let r: ApplyRequest = serde_json::from_slice(&line).map_err(|e| UpdateError::invalid(format!("the request on stdin is not {{\"version\", \"reboot\"}}: {e}")))?;
                    (Some(r.version), r.reboot)
                } else {
                    (None, reboot)
                };
                apply(&cfg, &key, &staged, want.as_deref(), reboot, stdin_request)
            })
            .await
        }
    }
}

/// Verify `staged` again (it was written by the less privileged agent), check it is `want`,
/// run `<sysupdate> update V`, print [`APPLIED`], then `<systemctl> reboot` when asked
/// (after a pause when `answer_first`: the agent relays the answer before it goes down).
pub fn apply(cfg: &Config, key: &ReleaseKey, staged: &Path, want: Option<&str>, reboot: bool, answer_first: bool) -> Result<(), UpdateError> {
    use std::io::Write;
    let m = verify_dir(key, staged)?;
    if let Some(w) = want {
        if w != m.version {
            return Err(UpdateError::invalid(format!("the staged release is {}, not {w}: another upload replaced it", m.version)));
        }
    }
    tracing::info!(event = "update_apply", security = true, version = %m.version, reboot, "installing a verified release with systemd-sysupdate");
    let out = run_tool(&cfg.update.sysupdate, &["update", &m.version])?;
    let mut so = std::io::stdout();
    let mut text = String::new();
    for l in out.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(text, "{l}");
    }
    let _ = write!(so, "{text}");
    let _ = writeln!(so, "{APPLIED} {}", m.version);
    let _ = so.flush();
    if reboot {
        if answer_first {
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        tracing::warn!(event = "update_reboot", security = true, version = %m.version, "rebooting into the new release");
        run_tool(&cfg.update.systemctl, &["reboot"])?;
    }
    Ok(())
}

/// Run `bin args`; stdout and stderr merged into the result or the error.
fn run_tool(bin: &str, args: &[&str]) -> Result<String, UpdateError> {
    use swarmseal_common::tool::{self, Stdout, ToolError};
    let what = format!("{bin} {}", args.join(" "));
    match tool::run(bin, args, None, Stdout::Plain) {
        Ok(o) => Ok(String::from_utf8_lossy(&o.stdout).into_owned() + &o.stderr),
        Err(ToolError::Spawn { source, .. }) => Err(UpdateError::Tool { what, status: "not started".into(), output: source.to_string() }),
        Err(ToolError::Failed { status, output, .. }) => Err(UpdateError::Tool { what, status, output }),
    }
}

// ------------------------------------------------------------------ the running image

/// `sha256:<hex>` of the image's SBOM at `path` (`status`'s `image.sbom_sha256`); `None`
/// when it is absent or unreadable.
pub async fn sbom_digest(path: &Path) -> Option<String> {
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))))
}

/// What a verified release changes against an SBOM: `--against FILE` (must be readable), else
/// the running image's (`default`, when it exists). Returns the SBOM compared with, and the
/// diff or the sentence saying why there is nothing to compare.
async fn release_changes(
    default: &Path,
    against: Option<PathBuf>,
    release: &Path,
    m: &Manifest,
) -> Result<(Option<PathBuf>, Result<swarmseal_release::sbom::Diff, String>), UpdateError> {
    use swarmseal_release::sbom::{diff, Inventory, SbomError};
    let sbom_err = |e: SbomError| match e {
        SbomError::Io { path, source } => UpdateError::Io { path, source },
        e @ SbomError::Invalid { .. } => UpdateError::Request(format!("--against: {e}")),
    };
    let against = match against {
        Some(p) => p,
        None if tokio::fs::try_exists(default).await.unwrap_or(false) => default.to_path_buf(),
        None => {
            let why = format!("nothing to compare against: no SBOM of the running image at {} (give --against SBOM-FILE, e.g. a build's swarmseal.sbom.cdx.json)", default.display());
            return Ok((None, Err(why)));
        }
    };
    let old = Inventory::read(&against).map_err(sbom_err)?;
    let Some(bytes) = swarmseal_release::sbom::from_release(release, m).await? else {
        return Ok((Some(against), Err(format!("release {} carries no SBOM (built before SBOMs): nothing to compare", m.version))));
    };
    let new = Inventory::parse(&bytes, release).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    Ok((Some(against), Ok(diff(&old, &new))))
}

/// `IMAGE_ID` and `IMAGE_VERSION` of an os-release file (`/etc/os-release`, os-release(5)):
/// `{"id": …, "version": …}`, each `null` when absent or the file is unreadable.
pub fn os_image(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let get = |key: &str| -> Option<String> {
        text.lines().find_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            (k.trim() == key).then(|| unquote(v.trim()))
        })
    };
    serde_json::json!({"id": get("IMAGE_ID"), "version": get("IMAGE_VERSION")})
}

/// A shell-style value of os-release: `"…"` (with `\` escapes), `'…'`, or bare.
fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        let mut out = String::new();
        let mut esc = false;
        for c in inner.chars() {
            if esc || c != '\\' {
                out.push(c);
                esc = false;
            } else {
                esc = true;
            }
        }
        return out;
    }
    v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).unwrap_or(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmseal_release::testing::{fixture, names, rsa_key, rt, sh, V};

    #[test]
    fn os_release_image_fields() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("os-release");
        std::fs::write(&p, "ID=debian\nIMAGE_ID=\"swarmseal\"\nIMAGE_VERSION='0.0.7.gabc'\n").unwrap();
        assert_eq!(os_image(&p), serde_json::json!({"id": "swarmseal", "version": "0.0.7.gabc"}));
        assert_eq!(os_image(&d.path().join("none")), serde_json::json!({"id": null, "version": null}));
    }

    #[test]
    fn the_lock_is_released_on_drop_while_a_copy_of_its_descriptor_is_open() {
        // A copy as a child forked by a concurrent `Command` spawn holds until its exec.
        let d = tempfile::tempdir().unwrap();
        let staging = d.path().join("updates");
        let lock = try_lock(&staging).unwrap();
        let copy = lock.0.try_clone().unwrap();
        assert!(matches!(try_lock(&staging), Err(UpdateError::Busy)));
        drop(lock);
        assert!(try_lock(&staging).is_ok(), "released although the copy is still open");
        drop(copy);
    }

    #[test]
    fn a_signed_release_is_staged_and_verifies_again_as_a_directory() {
        let f = fixture();
        let tar = std::fs::read(f.dir.path().join("rel.tar")).unwrap();
        let staging = f.dir.path().join("updates");
        let s = rt().block_on(receive(&f.key, &staging, 1 << 30, &tar[..])).unwrap();
        assert_eq!(s.version, V);
        assert_eq!(verify_dir(&f.key, &s.dir).unwrap().version, V);
        let [efi, ..] = names(V);
        assert_eq!(std::fs::read(s.dir.join(&efi)).unwrap(), vec![1u8; 1000]);
        assert!(matches!(try_lock(&staging), Err(UpdateError::Busy)), "held until the apply service answered");
        drop(s);
        assert_eq!(rt().block_on(verify_tar(&f.key, &tar[..])).unwrap().version, V);
        // The cap counts every byte of the archive.
        let e = rt().block_on(receive(&f.key, &staging, 10_000, &tar[..])).err().unwrap();
        assert!(matches!(e, UpdateError::Release(ReleaseError::TooLarge { .. })), "{e}");
        assert_eq!(crate::proxy::ApiError::from(&e).status(), 413);
        assert!(staging.join(STAGED).exists(), "a refused upload keeps the staged release");
    }

    #[test]
    fn another_key_or_a_changed_byte_is_refused_before_or_while_writing() {
        let f = fixture();
        let d = f.dir.path();
        let tar = std::fs::read(d.join("rel.tar")).unwrap();
        let other = rsa_key(d, "other");
        let staging = d.join("updates");
        let e = rt().block_on(receive(&other, &staging, 1 << 30, &tar[..])).err().unwrap();
        assert!(e.to_string().starts_with("release not signed by this fleet's key"), "{e}");
        assert_eq!(crate::proxy::ApiError::from(&e).status(), 422);
        assert!(!staging.exists(), "nothing written before the signature verified");
        // Fetched as swarmseal_9.9.tar, but a signed release of another version: refused unwritten.
        let e = rt().block_on(receive_fetched(&f.key, &staging, 1 << 30, &tar[..], "9.9")).err().unwrap();
        assert!(e.to_string().contains(&format!("the release is version {V}, not 9.9")), "{e}");
        assert_eq!(crate::proxy::ApiError::from(&e).status(), 422);
        assert!(!staging.exists(), "nothing written for another version than asked");

        // One byte of the root image flipped (its header and checksum intact).
        let mut bad = tar.clone();
        let at = bad.windows(4).position(|w| w == [2, 2, 2, 2]).unwrap() + 100;
        bad[at] ^= 1;
        let e = rt().block_on(receive(&f.key, &staging, 1 << 30, &bad[..])).err().unwrap();
        assert!(matches!(e, UpdateError::Release(ReleaseError::HashMismatch { .. })), "{e}");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "the partial release is removed");
        assert!(matches!(rt().block_on(verify_tar(&f.key, &bad[..])), Err(ReleaseError::HashMismatch { .. })));

        // Truncated after the manifest: the files are missing.
        let e = rt().block_on(receive(&f.key, &staging, 1 << 30, &tar[..3 * 512 + 512])).err().unwrap();
        assert_eq!(crate::proxy::ApiError::from(&e).status(), 422, "{e}");
        // Manifest not first.
        let e = rt().block_on(receive(&f.key, &staging, 1 << 30, &tar[2 * 512..])).err().unwrap();
        assert!(e.to_string().contains("starts with SHA256SUMS"), "{e}");

        // A staged directory changed afterwards is refused by verify_dir (what apply runs).
        let s = rt().block_on(receive(&f.key, &staging, 1 << 30, &tar[..])).unwrap();
        std::fs::write(s.dir.join("extra"), b"x").unwrap();
        assert!(verify_dir(&f.key, &s.dir).unwrap_err().to_string().contains("extra"));
        std::fs::remove_file(s.dir.join("extra")).unwrap();
        let [efi, ..] = names(V);
        std::fs::write(s.dir.join(&efi), b"changed").unwrap();
        assert!(matches!(verify_dir(&f.key, &s.dir), Err(ReleaseError::HashMismatch { .. })));
    }

    #[test]
    #[cfg(feature = "appliance")]
    fn the_release_key_has_the_fingerprint_of_the_pcr_policy_key() {
        // The NotSigned message names the key by systemd's pkfp, as the PCR policy does.
        let f = fixture();
        let d = f.dir.path();
        sh("openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkey -pubout -out ec.pem", d);
        for pem in ["k.pem", "ec.pem"] {
            let pcr = crate::pcrsig::PcrPublicKey::load(&d.join(pem)).unwrap();
            assert_eq!(load_key(&d.join(pem)).unwrap().fingerprint().to_vec(), pcr.fingerprint(), "{pem}");
        }
    }
}
