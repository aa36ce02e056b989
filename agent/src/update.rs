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
use sha2::Digest as _;
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
/// The line `swarmseal update apply --stage` prints once systemd-sysupdate wrote a release's
/// root and root-verity partitions without its UKI (followed by the version): nothing boots it
/// until a later apply of the same version writes the UKI.
pub const PARTITIONS_WRITTEN: &str = "root and root-verity written by systemd-sysupdate, no boot entry yet: version";
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
    /// A resumed upload does not continue what this manager holds (nothing held, another
    /// release, another offset); the sentence says what it holds.
    #[error("{0}")]
    Resume(String),
    /// The staging disk filled up while receiving (ENOSPC); the partial upload was removed.
    #[error("no space left on the staging disk writing {}: the partial upload was removed (the staged release, if any, stays); free space under {} or point [update] staging_dir at a larger disk, then upload again", path.display(), staging.display())]
    NoSpace { path: PathBuf, staging: PathBuf },
    /// The part of an interrupted upload this manager kept no longer verifies (altered on disk,
    /// or the rest came from another file): it was discarded; the sentence names the file.
    #[error("{0}")]
    Altered(String),
    /// `?staged=V` asked to install the release this manager holds, and it holds none, or
    /// another version; the sentence says which.
    #[error("{0}")]
    NotStaged(String),
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

fn fsync_dir(p: &Path) -> Result<(), UpdateError> {
    swarmseal_common::fs::fsync_dir(p).map_err(io_err(p))
}

/// Receive a release tar from `body` (at most `max` bytes), verify it, and stage it under
/// `staging` (`V.partial/` while receiving, then `staged/`, replacing the previous release).
///
/// Nothing is written before `SHA256SUMS.sig` verifies with `key`. An upload cut mid-way
/// ([`ReleaseError::Body`]: the connection broke or went idle; or the request dropped, or the
/// agent killed) keeps what it received in `V.partial/` with its progress record, to be
/// continued by [`receive_resume`] (see [`held`]); on any other error the partial release is
/// removed. The previously staged release stays until a new one is complete. A new upload
/// discards any partial one (at most one is kept). Errors: [`UpdateError::Busy`] (another
/// upload holds the lock), [`UpdateError::Io`], [`UpdateError::NoSpace`] (ENOSPC in the
/// staging dir), and as [`UpdateError::Release`]:
/// [`ReleaseError::NotSigned`], [`ReleaseError::Invalid`] (order, names, types, missing
/// files), [`ReleaseError::HashMismatch`], [`ReleaseError::TooLarge`], [`ReleaseError::Body`].
pub async fn receive<R: AsyncRead + Unpin>(key: &ReleaseKey, staging: &Path, max: u64, body: R) -> Result<Staged, UpdateError> {
    receive_from(key, staging, max, body, Start::Fresh(None)).await
}

/// [`receive`] for a release fetched as `swarmseal_<version>.tar` ([`source`]): the signed
/// manifest must be `version` (checked with the signature, before anything is written), not
/// another release the source chose; a refused release is not read to its end (nobody waits
/// for our answer on that connection). Errors: [`receive`]'s.
pub async fn receive_fetched<R: AsyncRead + Unpin>(key: &ReleaseKey, staging: &Path, max: u64, body: R, version: &str) -> Result<Staged, UpdateError> {
    receive_from(key, staging, max, body, Start::Fresh(Some(version))).await
}

/// Continue an interrupted upload: `body` is the release tar from byte `offset` on (what
/// [`held`] says this manager holds), of the release whose `SHA256SUMS` has SHA-256
/// `sums_sha256` (hex). The kept part is checked again first (the signature over the kept
/// `SHA256SUMS`, each complete file against its line); the file cut mid-way is hashed whole
/// (kept part + the rest) once complete. `max` caps the whole archive (`offset` + the rest).
/// Errors: [`receive`]'s, [`UpdateError::Resume`] (nothing held, another release — then
/// discarded —, another offset), [`UpdateError::Altered`] (the kept part does not verify:
/// discarded, so a fresh upload starts clean).
pub async fn receive_resume<R: AsyncRead + Unpin>(key: &ReleaseKey, staging: &Path, max: u64, body: R, offset: u64, sums_sha256: &str) -> Result<Staged, UpdateError> {
    if offset > max {
        return Err(UpdateError::Release(ReleaseError::TooLarge { max }));
    }
    receive_from(key, staging, max, body, Start::Resume { offset, sums: sums_sha256 }).await
}

/// The release `version` this manager already holds in `<staging>/staged` (received by an
/// earlier upload, e.g. `?stage=1`), taken under the staging lock so no upload replaces it until
/// the caller has handed it to the apply service. Only its `SHA256SUMS` is read here (the version
/// line); the apply service verifies the signature and every file again before installing.
/// Errors: [`UpdateError::Busy`], [`UpdateError::NotStaged`] (none staged, another version, an
/// unreadable manifest: upload the release instead).
pub async fn held_staged(staging: &Path, version: &str) -> Result<Staged, UpdateError> {
    let dir = staging.to_path_buf();
    let lock = blocking(move || try_lock(&dir)).await?;
    let staged = staging.join(STAGED);
    let sums = staged.join(SUMS);
    let held = match tokio::fs::read(&sums).await {
        Ok(text) => Manifest::parse(&text).map(|m| m.version).map_err(|e| format!("its {SUMS} does not parse ({e})")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("none".to_string()),
        Err(e) => Err(format!("{}: {e}", sums.display())),
    };
    match held {
        Ok(v) if v == version => Ok(Staged { version: v, dir: staged, lock }),
        Ok(v) => Err(UpdateError::NotStaged(format!("this manager's staged release is {v}, not {version}: upload release {version} instead"))),
        Err(why) => Err(UpdateError::NotStaged(format!("this manager holds no staged release ({why}): upload release {version} instead"))),
    }
}

/// Where a receive starts.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// At byte 0; `Some(V)`: fetched as version V.
    Fresh(Option<&'a str>),
    /// At byte `offset` of the release whose `SHA256SUMS` hashes to `sums`.
    Resume { offset: u64, sums: &'a str },
}

async fn receive_from<R: AsyncRead + Unpin>(key: &ReleaseKey, staging: &Path, max: u64, body: R, start: Start<'_>) -> Result<Staged, UpdateError> {
    let dir = staging.to_path_buf();
    let lock = blocking(move || try_lock(&dir)).await?;
    let (fetched, offset) = match start {
        Start::Fresh(f) => (f.is_some(), 0),
        Start::Resume { offset, .. } => (false, offset),
    };
    let mut tar = Tar::new(body, max - offset);
    match receive_locked(&mut tar, key, staging, start).await {
        Ok(version) => Ok(Staged { version, dir: staging.join(STAGED), lock }),
        Err(e) => {
            let e = no_space(e, staging);
            if !fetched && !keeps_partial(&e) {
                // Read the rest of the upload (within the cap, for at most a minute) so the
                // client reads our answer (a 422, a full disk) instead of a connection reset in
                // the middle of sending (which it would take for a cut, and resume).
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

/// The progress record of an upload, `V.partial/.progress` (JSON, replaced atomically at each
/// member boundary): what [`held`] and [`receive_resume`] continue from. Offsets are bytes of
/// the release tar.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Progress {
    version: String,
    /// SHA-256 (hex) of the release's `SHA256SUMS`: which release this is.
    sums_sha256: String,
    /// Where the member after the complete ones starts (its header).
    next: u64,
    /// The members received, verified and synced, in archive order.
    done: Vec<String>,
    /// The member being written.
    current: Option<Current>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Current {
    name: String,
    size: u64,
    /// Where its data starts (after its header).
    data_at: u64,
}

const PROGRESS: &str = ".progress";
const BLOCK: u64 = 512;

/// `n` bytes rounded up to whole 512-byte tar blocks.
fn blocks(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// What this manager holds of an interrupted upload (`GET /swarmseal/v1/update/partial`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub version: String,
    /// SHA-256 (hex) of the release's `SHA256SUMS`.
    pub sums_sha256: String,
    /// Bytes of the release tar held: resume by sending the tar from this byte on.
    pub offset: u64,
}

impl Progress {
    /// The resume offset: after the complete members, or inside the current one at the last
    /// whole 512-byte block on disk (so the rest's tar padding is the member's own).
    fn offset(&self, partial: &Path) -> u64 {
        match &self.current {
            None => self.next,
            Some(c) => {
                let len = std::fs::metadata(partial.join(&c.name)).map(|m| m.len()).unwrap_or(0);
                c.data_at + len.min(c.size) / BLOCK * BLOCK
            }
        }
    }

    fn save(&self, partial: &Path) -> Result<(), UpdateError> {
        let p = partial.join(PROGRESS);
        let text = serde_json::to_vec(self).unwrap_or_default();
        swarmseal_common::fs::write_atomic(&p, &text, 0o600).map_err(io_err(&p))
    }
}

/// The one `V.partial/` under `staging` with a readable progress record, if any.
fn load_partial(staging: &Path) -> Option<(PathBuf, Progress)> {
    std::fs::read_dir(staging).ok()?.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".partial")).find_map(|e| {
        let p: Progress = serde_json::from_slice(&std::fs::read(e.path().join(PROGRESS)).ok()?).ok()?;
        Some((e.path(), p))
    })
}

/// What this manager holds of an interrupted upload, if anything (taking the staging lock for
/// the look: [`UpdateError::Busy`] while an upload runs). Errors: `Busy`, [`UpdateError::Io`].
pub async fn held(staging: &Path) -> Result<Option<Held>, UpdateError> {
    let dir = staging.to_path_buf();
    blocking(move || {
        let _lock = try_lock(&dir)?;
        Ok(load_partial(&dir).map(|(partial, p)| Held { offset: p.offset(&partial), version: p.version, sums_sha256: p.sums_sha256 }))
    })
    .await
}

/// A full staging disk said as such ([`UpdateError::NoSpace`]), other errors as they are.
fn no_space(e: UpdateError, staging: &Path) -> UpdateError {
    let full = |s: &std::io::Error| s.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error());
    match e {
        UpdateError::Io { path, source } | UpdateError::Release(ReleaseError::Io { path, source }) if full(&source) => UpdateError::NoSpace { path, staging: staging.to_path_buf() },
        e => e,
    }
}

/// Whether an error leaves the partial release for a resume: the upload was cut, nothing in it
/// was refused.
fn keeps_partial(e: &UpdateError) -> bool {
    matches!(e, UpdateError::Release(ReleaseError::Body(_)))
}

async fn receive_locked<R: AsyncRead + Unpin>(tar: &mut Tar<R>, key: &ReleaseKey, staging: &Path, start: Start<'_>) -> Result<String, UpdateError> {
    // The partial directory, and what is kept in it (or why the kept part is refused).
    let (partial, kept) = match start {
        Start::Fresh(expect) => {
            let (manifest, sums, sig) = read_manifest(tar, key).await?;
            if let Some(want) = expect.filter(|w| *w != manifest.version) {
                return Err(UpdateError::invalid(format!("the release is version {}, not {want} as asked for", manifest.version)));
            }
            // Verified: now, and only now, write.
            let partial = staging.join(format!("{}.partial", manifest.version));
            let progress = Progress {
                version: manifest.version.clone(),
                sums_sha256: hex::encode(sha2::Sha256::digest(&sums)),
                next: BLOCK + blocks(sums.len() as u64) + BLOCK + blocks(sig.len() as u64),
                done: Vec::new(),
                current: None,
            };
            let (dir, p, rec) = (staging.to_path_buf(), partial.clone(), progress.clone());
            let made = blocking(move || {
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                clean_partials(&dir);
                std::fs::create_dir(&p).map_err(io_err(&p))?;
                // On disk before the progress record that says they are: after a power cut a
                // resume must find them, not an empty file it would call unsigned.
                for (name, bytes) in [(SUMS, &sums), (SIG, &sig)] {
                    let f = p.join(name);
                    let mut file = std::fs::File::create(&f).map_err(io_err(&f))?;
                    std::io::Write::write_all(&mut file, bytes).and_then(|()| file.sync_all()).map_err(io_err(&f))?;
                }
                rec.save(&p)
            })
            .await;
            if let Err(e) = made {
                discard(&partial).await;
                return Err(e);
            }
            (partial, Ok((progress, manifest, Members::default())))
        }
        Start::Resume { offset, sums } => {
            let dir = staging.to_path_buf();
            let nothing = || UpdateError::Resume("this manager holds no interrupted upload to resume (none was cut, or it was discarded or completed): upload the release from the start".into());
            let (partial, progress) = blocking(move || Ok(load_partial(&dir))).await?.ok_or_else(nothing)?;
            if progress.sums_sha256 != sums {
                discard(&partial).await;
                return Err(UpdateError::Resume(format!(
                    "the interrupted upload this manager held is of another release (version {}, SHA256SUMS {}); it was discarded, not mixed with this one: upload the release from the start",
                    progress.version,
                    &progress.sums_sha256[..progress.sums_sha256.len().min(16)]
                )));
            }
            let (p, rec) = (partial.clone(), progress.clone());
            let at = blocking(move || Ok(rec.offset(&p))).await?;
            if at != offset {
                return Err(UpdateError::Resume(format!("this manager holds {at} bytes of release {}, not {offset}: resume from byte {at} (GET /swarmseal/v1/update/partial)", progress.version)));
            }
            let kept = resume_kept(tar, key, &partial, progress, offset).await;
            (partial, kept)
        }
    };
    let r = async {
        let (progress, manifest, members) = kept?;
        receive_members(tar, &manifest, &partial, progress, members).await?;
        finish(staging, &partial).await?;
        Ok(manifest.version)
    }
    .await;
    // A refusal discards the partial; a cut keeps it for a resume. (Not on a cancelled request,
    // the future dropped: that is a cut, kept as one.)
    if let Err(e) = &r {
        if !keeps_partial(e) {
            discard(&partial).await;
        }
    }
    r
}

/// Check what is kept of an interrupted upload again and receive the rest of the member that
/// was cut. Returns the progress after it, the manifest, and the members seen.
async fn resume_kept<R: AsyncRead + Unpin>(tar: &mut Tar<R>, key: &ReleaseKey, partial: &Path, mut progress: Progress, offset: u64) -> Result<(Progress, Manifest, Members), UpdateError> {
    let read = |name: &str| {
        let p = partial.join(name);
        std::fs::read(&p).map_err(io_err(&p))
    };
    let (sums, sig) = (read(SUMS)?, read(SIG)?);
    // The signature still checks before a byte is written.
    let manifest = verify_manifest(key, &sums, &sig)?;
    let altered = |what: String| UpdateError::Altered(format!("{what}: the part of release {} kept from the interrupted upload was altered on disk or came from another file; it was discarded: upload the release again in full", progress.version));
    if hex::encode(sha2::Sha256::digest(&sums)) != progress.sums_sha256 || manifest.version != progress.version {
        return Err(altered(format!("{SUMS} is not the one the upload started with")));
    }
    let mut members = Members::default();
    for name in &progress.done {
        let want = *members.admit(&manifest, name)?;
        if rehash(partial.join(name)).await? != want {
            return Err(altered(format!("{name} no longer matches {SUMS}")));
        }
    }
    if let Some(c) = progress.current.take() {
        let want = *members.admit(&manifest, &c.name)?;
        let kept = offset - c.data_at;
        let path = partial.join(&c.name);
        let mut f = tokio::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).await.map_err(io_err(&path))?;
        f.set_len(kept).await.map_err(io_err(&path))?;
        tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(kept)).await.map_err(io_err(&path))?;
        let rest = swarmseal_release::tar::Member { name: c.name.clone(), size: c.size - kept };
        if let Err(e) = tar.body(&rest, Some((&mut f, &path))).await {
            settle(&mut f).await;
            return Err(e.into());
        }
        f.sync_all().await.map_err(io_err(&path))?;
        drop(f);
        // Hashed whole as it is on disk: the kept part and the rest together.
        if rehash(path).await? != want {
            return Err(altered(format!("{}: its first {kept} bytes (kept) and the {} sent now do not hash to its {SUMS} line", c.name, c.size - kept)));
        }
        progress.next = c.data_at + blocks(c.size);
        progress.done.push(c.name);
        let (p, rec) = (partial.to_path_buf(), progress.clone());
        blocking(move || rec.save(&p)).await?;
    }
    Ok((progress, manifest, members))
}

/// Wait for a cut member file's last write: tokio's `File` writes on the blocking pool, and a
/// write still running after the staging lock is released would grow the file under the next
/// `GET /update/partial` or resume. (A request future dropped outright cannot wait: then the
/// resume's whole-file hash still refuses whatever landed late.)
async fn settle(f: &mut tokio::fs::File) {
    let _ = f.flush().await;
}

/// SHA-256 of a file, on the blocking pool.
async fn rehash(path: PathBuf) -> Result<[u8; 32], UpdateError> {
    blocking(move || {
        let f = std::fs::File::open(&path).map_err(io_err(&path))?;
        Ok(swarmseal_release::sha256_reader(std::io::BufReader::with_capacity(256 << 10, f), &path)?)
    })
    .await
}

/// The members after the manifest, each written to `partial` while hashed, the progress record
/// updated at each member boundary; then the end of the archive.
async fn receive_members<R: AsyncRead + Unpin>(tar: &mut Tar<R>, manifest: &Manifest, partial: &Path, mut progress: Progress, mut members: Members) -> Result<(), UpdateError> {
    while let Some(m) = tar.next().await? {
        let want = *members.admit(manifest, &m.name)?;
        progress.current = Some(Current { name: m.name.clone(), size: m.size, data_at: progress.next + BLOCK });
        let (p, rec) = (partial.to_path_buf(), progress.clone());
        blocking(move || rec.save(&p)).await?;
        let path = partial.join(&m.name);
        let mut f = tokio::fs::OpenOptions::new().create_new(true).write(true).open(&path).await.map_err(io_err(&path))?;
        let got = match tar.body(&m, Some((&mut f, &path))).await {
            Ok(got) => got,
            Err(e) => {
                settle(&mut f).await;
                return Err(e.into());
            }
        };
        check_hash(&m.name, &want, &got)?;
        f.sync_all().await.map_err(io_err(&path))?;
        progress.current = None;
        progress.next += BLOCK + blocks(m.size);
        progress.done.push(m.name);
        let (p, rec) = (partial.to_path_buf(), progress.clone());
        blocking(move || rec.save(&p)).await?;
    }
    members.complete(manifest)?;
    tar.drain().await;
    Ok(())
}

/// Swap the complete release in: the previous staged release goes only once the new one is
/// complete; the progress record is removed first (the staged directory is the release only).
async fn finish(staging: &Path, partial: &Path) -> Result<(), UpdateError> {
    let (dir, partial) = (staging.to_path_buf(), partial.to_path_buf());
    blocking(move || {
        // The progress record, and any temporary file of it that a kill -9 during its atomic
        // rewrite left behind (`..progress.tmp-<pid>`): no release file starts with a dot, and
        // `staged/` must hold only the release (the apply service refuses anything unlisted).
        for e in std::fs::read_dir(&partial).map_err(io_err(&partial))?.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
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
    .await
}

/// Remove a partial release (refused, or of another release).
async fn discard(partial: &Path) {
    let p = partial.to_path_buf();
    let _ = blocking(move || {
        let _ = std::fs::remove_dir_all(&p);
        Ok(())
    })
    .await;
}

/// Leftovers of an interrupted upload, removed when a new one starts (at most one is kept).
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
    /// Write only the root and root-verity partitions (`[update] stage_definitions`), not the
    /// UKI; never with `reboot`. Absent in requests of older agents: false.
    #[serde(default)]
    pub stage: bool,
}

/// Ask the privileged apply service at `socket` (`swarmseal-update.socket`) to install the
/// staged release `version` (only its partitions when `stage`). Returns its output lines once it
/// says [`APPLIED`] (with `stage`: [`PARTITIONS_WRITTEN`]).
/// Errors: [`UpdateError::ApplyUnavailable`] (no socket, no answer, timeout),
/// [`UpdateError::Tool`] (it answered with a failure: its lines).
pub async fn apply_via(socket: &Path, version: &str, reboot: bool, stage: bool) -> Result<Vec<String>, UpdateError> {
    use tokio::io::AsyncBufReadExt;
    let mut s = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        UpdateError::ApplyUnavailable(format!("the release is staged, but the apply service at {} cannot be reached: {e} (swarmseal-update.socket exists on the appliance image only)", socket.display()))
    })?;
    let mut req = serde_json::to_vec(&ApplyRequest { version: version.to_string(), reboot, stage }).unwrap_or_default();
    req.push(b'\n');
    s.write_all(&req).await.map_err(|e| UpdateError::ApplyUnavailable(e.to_string()))?;
    s.shutdown().await.map_err(|e| UpdateError::ApplyUnavailable(e.to_string()))?;
    let done = format!("{} {version}", if stage { PARTITIONS_WRITTEN } else { APPLIED });
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
        #[arg(long, conflicts_with = "stage")]
        reboot: bool,
        /// Write only the root and root-verity partitions ([update] stage_definitions), not the
        /// UKI: nothing boots the release until a later apply of the same version.
        #[arg(long)]
        stage: bool,
        /// Read the request {"version": V, "reboot": bool, "stage": bool} as one JSON line from
        /// stdin (how the socket-activated service is run); its version must be the staged one.
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
        UpdateCommand::Apply { staged, reboot, stage, stdin_request } => {
            let cfg = cfg.clone();
            // Reading stdin, hashing the release, systemd-sysupdate and the pause before the
            // reboot all block: the whole command runs on the blocking pool.
            blocking(move || {
                let staged = staged.unwrap_or_else(|| cfg.update_dir().join(STAGED));
                // By hand, hold the staging lock so no upload replaces the release meanwhile;
                // run by the socket, the agent that asked holds it.
                let _lock = if stdin_request { None } else { Some(try_lock(&cfg.update_dir())?) };
                let (want, reboot, stage) = if stdin_request {
                    let mut line = Vec::new();
                    std::io::stdin().take(4096).read_to_end(&mut line).map_err(|e| ReleaseError::Body(e.to_string()))?;
                    let r: ApplyRequest = serde_json::from_slice(&line).map_err(|e| UpdateError::invalid(format!("the request on stdin is not {{\"version\", \"reboot\", \"stage\"}}: {e}")))?;
                    (Some(r.version), r.reboot, r.stage)
                } else {
                    (None, reboot, stage)
                };
                let install = match (stage, reboot) {
                    (true, true) => return Err(UpdateError::Request("stage writes the partitions only and never reboots: ask for one or the other".into())),
                    (true, false) => Install::PartitionsOnly,
                    (false, reboot) => Install::Full { reboot },
                };
                apply(&cfg, &key, &staged, want.as_deref(), install, stdin_request)
            })
            .await
        }
    }
}

/// What [`apply`] installs of a staged release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Every transfer of /usr/lib/sysupdate.d (root-verity, root, then the UKI, which makes it
    /// the boot default); `systemctl reboot` after when `reboot`.
    Full { reboot: bool },
    /// Only root-verity and root (`[update] stage_definitions`): the inactive slot holds the
    /// release, nothing boots it. A later `Full` of the same version finds them installed
    /// (systemd-sysupdate: "No need to acquire …, already installed") and writes the UKI only.
    PartitionsOnly,
}

/// Verify `staged` again (it was written by the less privileged agent), check it is `want`,
/// run `<sysupdate> update V` (with `--definitions=<stage_definitions>` for
/// [`Install::PartitionsOnly`]), print [`APPLIED`] (or [`PARTITIONS_WRITTEN`]), then
/// `<systemctl> reboot` when asked (after a pause when `answer_first`: the agent relays the
/// answer before it goes down).
pub fn apply(cfg: &Config, key: &ReleaseKey, staged: &Path, want: Option<&str>, install: Install, answer_first: bool) -> Result<(), UpdateError> {
    use std::io::Write;
    let m = verify_dir(key, staged)?;
    if let Some(w) = want {
        if w != m.version {
            return Err(UpdateError::invalid(format!("the staged release is {}, not {w}: another upload replaced it", m.version)));
        }
    }
    let (reboot, definitions, done) = match install {
        Install::Full { reboot } => (reboot, None, APPLIED),
        Install::PartitionsOnly => (false, Some(format!("--definitions={}", cfg.update.stage_definitions.display())), PARTITIONS_WRITTEN),
    };
    tracing::info!(event = "update_apply", security = true, version = %m.version, reboot, partitions_only = definitions.is_some(), "installing a verified release with systemd-sysupdate");
    let args: Vec<&str> = definitions.iter().map(String::as_str).chain(["update", m.version.as_str()]).collect();
    let out = run_tool(&cfg.update.sysupdate, &args)?;
    let mut so = std::io::stdout();
    let mut text = String::new();
    for l in out.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(text, "{l}");
    }
    let _ = write!(so, "{text}");
    let _ = writeln!(so, "{done} {}", m.version);
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

/// What a verified release changes against an SBOM: `--against FILE` (must be readable: else a
/// usage error), else the running image's (`default`, when it exists). Returns the SBOM
/// compared with, and the diff or the sentence saying why there is nothing to compare. Only an
/// explicit `--against` can fail the command: a running image's or a release's SBOM that
/// cannot be read is a note, never a refusal (`receive` accepts a signed release whatever its
/// SBOM holds, and `update verify` says what `receive` would do).
async fn release_changes(
    default: &Path,
    against: Option<PathBuf>,
    release: &Path,
    m: &Manifest,
) -> Result<(Option<PathBuf>, Result<swarmseal_release::sbom::Diff, String>), UpdateError> {
    use swarmseal_release::sbom::{diff, Inventory, SbomError};
    let explicit = against.is_some();
    let against = match against {
        Some(p) => p,
        None if tokio::fs::try_exists(default).await.unwrap_or(false) => default.to_path_buf(),
        None => {
            let why = format!("nothing to compare against: no SBOM of the running image at {} (give --against SBOM-FILE, e.g. a build's swarmseal.sbom.cdx.json)", default.display());
            return Ok((None, Err(why)));
        }
    };
    let old = match Inventory::read(&against) {
        Ok(old) => old,
        Err(e) if explicit => {
            return Err(match e {
                SbomError::Io { path, source } => UpdateError::Io { path, source },
                e @ SbomError::Invalid { .. } => UpdateError::Request(format!("--against: {e}")),
            })
        }
        Err(e) => return Ok((Some(against), Err(format!("the running image's SBOM cannot be read ({e}): nothing to compare against")))),
    };
    let bytes = match swarmseal_release::sbom::from_release(release, m).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok((Some(against), Err(format!("release {} carries no SBOM (built before SBOMs): nothing to compare", m.version)))),
        Err(e) => return Ok((Some(against), Err(format!("release {}'s SBOM cannot be read ({e}): nothing to compare", m.version)))),
    };
    match Inventory::parse(&bytes, release) {
        Ok(new) => Ok((Some(against), Ok(diff(&old, &new)))),
        Err(e) => Ok((Some(against), Err(format!("release {}'s SBOM is not one this agent reads ({e}): nothing to compare", m.version)))),
    }
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

    /// A body that breaks (a connection reset) after `at` bytes.
    struct Cut<'a> {
        data: &'a [u8],
        at: usize,
    }

    impl AsyncRead for Cut<'_> {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            if self.at == 0 {
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut")));
            }
            let n = self.at.min(buf.remaining()).min(self.data.len()).min(4096);
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.at -= n;
            Poll::Ready(Ok(()))
        }
    }

    /// Every file of a staging area's `staged/`, by name.
    fn staged_files(staging: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(staging.join(STAGED)).unwrap().flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())).collect();
        v.sort();
        v
    }

    fn sums_of(tar: &[u8]) -> String {
        let held = rt().block_on(async {
            let mut t = Tar::new(tar, u64::MAX);
            let m = t.next().await.unwrap().unwrap();
            t.small(&m, 1 << 20).await.unwrap()
        });
        hex::encode(sha2::Sha256::digest(&held))
    }

    /// The fixture's release with a root image of 600,000 bytes (more than the 256 KiB the
    /// receiver writes at a time, so a cut in it keeps part of it): `big.tar`.
    fn big_release(f: &swarmseal_release::testing::Fixture) -> Vec<u8> {
        let [efi, root, verity] = names(V);
        let body: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(f.dir.path().join("rel").join(&root), body).unwrap();
        sh(&format!("cd rel && sha256sum {efi} {root} {verity} > SHA256SUMS && openssl dgst -sha256 -sign ../k.key -out SHA256SUMS.sig SHA256SUMS && tar --format=ustar -cf ../big.tar SHA256SUMS SHA256SUMS.sig {root} {efi} {verity}"), f.dir.path());
        std::fs::read(f.dir.path().join("big.tar")).unwrap()
    }

    /// Where the root image's data starts in `big.tar` (after SHA256SUMS, its signature, the
    /// root's header: a block each).
    const ROOT_DATA: usize = 5 * 512;

    #[test]
    fn an_upload_cut_anywhere_is_resumed_to_the_same_staged_release() {
        let f = fixture();
        let tar = big_release(&f);
        let whole = f.dir.path().join("whole");
        drop(rt().block_on(receive(&f.key, &whole, 1 << 30, &tar[..])).unwrap());
        let want = staged_files(&whole);
        let sums = sums_of(&tar);
        // In the manifest, right after it, in the root image (at 50 %, and before its first
        // write), in the next member's header, in its data.
        for at in [700, ROOT_DATA - 512, tar.len() / 2, ROOT_DATA + 8192, ROOT_DATA + 600_064 + 100, ROOT_DATA + 600_064 + 512 + 300] {
            let staging = f.dir.path().join(format!("cut-{at}"));
            let e = rt().block_on(receive(&f.key, &staging, 1 << 30, Cut { data: &tar, at })).err().unwrap();
            assert!(matches!(e, UpdateError::Release(ReleaseError::Body(_))), "{at}: {e}");
            let offset = match rt().block_on(held(&staging)).unwrap() {
                None => {
                    assert_eq!(at, 700, "nothing held only before the manifest verified");
                    let e = rt().block_on(receive_resume(&f.key, &staging, 1 << 30, &tar[at..], at as u64, &sums)).err().unwrap();
                    assert!(matches!(e, UpdateError::Resume(_)) && e.to_string().contains("no interrupted upload"), "{e}");
                    0
                }
                Some(h) => {
                    assert_eq!((h.version.as_str(), h.sums_sha256.as_str()), (V, sums.as_str()));
                    assert!(h.offset as usize <= at && h.offset as usize >= ROOT_DATA - 512, "{at}: held {}", h.offset);
                    if at == tar.len() / 2 {
                        assert_eq!(h.offset as usize, ROOT_DATA + (256 << 10), "the written part of the cut member is kept");
                        // What a kill -9 inside the progress record's atomic rewrite leaves:
                        // its temporary file, under another PID than the next agent's.
                        std::fs::write(staging.join(format!("{V}.partial")).join("..progress.tmp-99999"), b"{").unwrap();
                    }
                    h.offset
                }
            };
            let s = if offset == 0 {
                rt().block_on(receive(&f.key, &staging, 1 << 30, &tar[..])).unwrap()
            } else {
                rt().block_on(receive_resume(&f.key, &staging, 1 << 30, &tar[offset as usize..], offset, &sums)).unwrap()
            };
            assert_eq!(s.version, V);
            drop(s);
            assert_eq!(staged_files(&staging), want, "cut at {at}, resumed at {offset}: staged as uninterrupted");
            assert_eq!(verify_dir(&f.key, &staging.join(STAGED)).unwrap().version, V);
            let left: Vec<_> = std::fs::read_dir(&staging).unwrap().flatten().map(|e| e.file_name()).collect();
            assert_eq!(left, vec![std::ffi::OsString::from(STAGED)], "no partial left");
            assert_eq!(rt().block_on(held(&staging)).unwrap(), None);
        }
    }

    #[test]
    fn a_kept_part_altered_or_of_another_release_is_refused_and_discarded() {
        let f = fixture();
        let d = f.dir.path();
        let tar = big_release(&f);
        let sums = sums_of(&tar);
        let [efi, root, verity] = names(V);
        let staging = d.join("updates");
        let cut = |at: usize| -> u64 {
            let e = rt().block_on(receive(&f.key, &staging, 1 << 30, Cut { data: &tar, at })).err().unwrap();
            assert!(matches!(e, UpdateError::Release(ReleaseError::Body(_))), "{e}");
            rt().block_on(held(&staging)).unwrap().unwrap().offset
        };
        let partial = staging.join(format!("{V}.partial"));
        let flip = |name: &str, at: u64| {
            let p = partial.join(name);
            let mut b = std::fs::read(&p).unwrap();
            b[at as usize] ^= 1;
            std::fs::write(&p, b).unwrap();
        };
        // A byte of the cut member's kept part flipped: refused once it is complete, named.
        let offset = cut(tar.len() / 2);
        flip(&root, 100);
        let e = rt().block_on(receive_resume(&f.key, &staging, 1 << 30, &tar[offset as usize..], offset, &sums)).err().unwrap();
        assert!(matches!(e, UpdateError::Altered(_)) && e.to_string().contains(&root) && e.to_string().contains("upload the release again in full"), "{e}");
        assert_eq!(crate::proxy::ApiError::from(&e).status(), 422);
        assert!(!partial.exists(), "discarded");
        assert_eq!(rt().block_on(held(&staging)).unwrap(), None);
        // A complete member altered: refused before the rest is read.
        let offset = cut(ROOT_DATA + 600_064 + 512 + 300);
        flip(&root, 599_999);
        let e = rt().block_on(receive_resume(&f.key, &staging, 1 << 30, &tar[offset as usize..], offset, &sums)).err().unwrap();
        assert!(e.to_string().starts_with(&format!("{root} no longer matches SHA256SUMS")), "{e}");
        assert!(!partial.exists());
        // The rest taken from another release file of the same version (the UKI's bytes changed,
        // signed by the same key): its SHA256SUMS differ, so it is refused and the kept part
        // discarded, never mixed.
        let offset = cut(tar.len() / 2);
        let other_dir = d.join("other");
        std::fs::create_dir(&other_dir).unwrap();
        std::fs::copy(d.join("k.key"), other_dir.join("k.key")).unwrap();
        sh(&format!("cp -r ../rel rel && cd rel && printf x >> {efi} && sha256sum {root} {efi} {verity} > SHA256SUMS && openssl dgst -sha256 -sign ../k.key -out SHA256SUMS.sig SHA256SUMS && tar --format=ustar -cf ../rel.tar SHA256SUMS SHA256SUMS.sig {root} {efi} {verity}"), &other_dir);
        let other = std::fs::read(other_dir.join("rel.tar")).unwrap();
        let e = rt().block_on(receive_resume(&f.key, &staging, 1 << 30, &other[offset as usize..], offset, &sums_of(&other))).err().unwrap();
        assert!(matches!(e, UpdateError::Resume(_)) && e.to_string().contains("another release"), "{e}");
        assert_eq!(crate::proxy::ApiError::from(&e).status(), 409);
        assert!(!partial.exists(), "a partial of another release is discarded");
        // Another offset than held: refused, the kept part stays; the cap counts the whole tar.
        let offset = cut(tar.len() / 2);
        let e = rt().block_on(receive_resume(&f.key, &staging, 1 << 30, &tar[offset as usize - 512..], offset - 512, &sums)).err().unwrap();
        assert!(e.to_string().contains(&format!("holds {offset} bytes")), "{e}");
        let e = rt().block_on(receive_resume(&f.key, &staging, offset + 100_000, &tar[offset as usize..], offset, &sums)).err().unwrap();
        assert!(matches!(e, UpdateError::Release(ReleaseError::TooLarge { .. })), "{e}");
        assert!(!partial.exists(), "a refused resume discards the kept part");
        // And a fresh upload then goes through.
        drop(rt().block_on(receive(&f.key, &staging, 1 << 30, &tar[..])).unwrap());
        assert_eq!(verify_dir(&f.key, &staging.join(STAGED)).unwrap().version, V);
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
