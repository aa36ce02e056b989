//! Image updates: a signed release received through the proxy, verified before anything is
//! written, staged, then installed into the inactive A/B slot by the privileged apply service
//! (see `/work/shared-notes/fleet-contract.md`, issue 7).
//!
//! A release (`scripts/build-image --release`) is a ustar archive `swarmseal_V.tar` whose
//! members are, in this order:
//! ```text
//! SHA256SUMS                             `sha256sum` lines for the three files below
//! SHA256SUMS.sig                         `openssl dgst -sha256 -sign pcr-signing.key SHA256SUMS`
//! swarmseal_V.efi                        the UKI
//! swarmseal_V_<UUID>.root.raw            the root partition image
//! swarmseal_V_<UUID>.root-verity.raw     its dm-verity partition image
//! ```
//! (the three files in any order; no directories, no other members).
//!
//! It arrives as the body of `POST /swarmseal/v1/update`, or, with `?version=V` and no body,
//! is fetched by the agent from `[update] source` over HTTPS ([`source`]); both go through
//! [`receive`].
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
use crate::pcrsig::PcrPublicKey;

pub mod source;

/// The manifest's name in a release.
pub const SUMS: &str = "SHA256SUMS";
/// The manifest signature's name in a release.
pub const SIG: &str = "SHA256SUMS.sig";
/// The staged release, under the staging dir.
pub const STAGED: &str = "staged";
/// The line `swarmseal update apply` prints once systemd-sysupdate installed a release
/// (followed by the version).
pub const APPLIED: &str = "installed by systemd-sysupdate: version";
/// Largest `SHA256SUMS` accepted (three lines are about 400 bytes).
const MAX_SUMS: u64 = 64 << 10;
/// Largest `SHA256SUMS.sig` accepted (an RSA 4096 signature is 512 bytes).
const MAX_SIG: u64 = 4 << 10;
/// How long the agent waits for the apply service (systemd-sysupdate copies ~0.5 GB).
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Why a release was refused or could not be staged or installed. `Display` is the operator
/// sentence; [`UpdateError::http_status`] and [`UpdateError::exit`] the codes.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// `SHA256SUMS.sig` does not verify with `[update] public_key`.
    #[error("release not signed by this fleet's key: {0}")]
    NotSigned(String),
    /// The release is malformed, has an unknown member, or lacks a file.
    #[error("not a valid release: {0}")]
    Invalid(String),
    /// A file's SHA-256 differs from its `SHA256SUMS` line.
    #[error("release file {name} does not match SHA256SUMS (sha256 {actual}): altered or truncated in transit")]
    HashMismatch { name: String, actual: String },
    /// The upload exceeds `[update] max_bytes`.
    #[error("the release is larger than this manager accepts ([update] max_bytes = {max} bytes)")]
    TooLarge { max: u64 },
    /// Another update holds the staging area.
    #[error("another update is in progress on this manager; try again when it has finished")]
    Busy,
    /// The upload broke off or could not be read.
    #[error("cannot read the upload: {0}")]
    Body(String),
    /// This manager's own release key is missing or unusable.
    #[error("this manager cannot check releases: [update] public_key {path}: {message}")]
    Key { path: PathBuf, message: String },
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
    /// The HTTP status of `POST /swarmseal/v1/update` for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            UpdateError::NotSigned(_) | UpdateError::Invalid(_) | UpdateError::HashMismatch { .. } => 422,
            UpdateError::TooLarge { .. } => 413,
            UpdateError::Busy => 409,
            UpdateError::Body(_) | UpdateError::Request(_) | UpdateError::NoSource => 400,
            UpdateError::ApplyUnavailable(_) => 503,
            UpdateError::Tool { .. } | UpdateError::Source { .. } => 502,
            UpdateError::Key { .. } | UpdateError::Io { .. } | UpdateError::SourceSetup(_) => 500,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io { path: path.to_path_buf(), source }
}

// ------------------------------------------------------------------ the manifest

/// Which of the three release files a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// `swarmseal_V.efi`
    Uki,
    /// `swarmseal_V_<UUID>.root.raw`
    Root,
    /// `swarmseal_V_<UUID>.root-verity.raw`
    Verity,
}

/// A version as the contract allows it: 1–64 of `[A-Za-z0-9.~^-]`, starting with an
/// alphanumeric; never `_` or `+` (they would break the file patterns and boot counting).
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".~^-".contains(&b))
}

fn valid_uuid(u: &str) -> bool {
    u.len() == 36
        && u.bytes().enumerate().all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// Which release file `name` is, and its version; `None` for any other name.
pub fn classify(name: &str) -> Option<(Part, &str)> {
    let rest = name.strip_prefix("swarmseal_")?;
    let (part, stem) = if let Some(v) = rest.strip_suffix(".efi") {
        return valid_version(v).then_some((Part::Uki, v));
    } else if let Some(s) = rest.strip_suffix(".root-verity.raw") {
        (Part::Verity, s)
    } else {
        (Part::Root, rest.strip_suffix(".root.raw")?)
    };
    let (v, uuid) = stem.rsplit_once('_')?;
    (valid_version(v) && valid_uuid(uuid)).then_some((part, v))
}

/// A parsed `SHA256SUMS`: one version, the three files and their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    /// (name, sha256), ordered UKI, root, verity.
    pub files: Vec<(String, [u8; 32])>,
}

impl Manifest {
    /// Parse `sha256sum` output (`<64 hex>  <name>` or `<64 hex> *<name>` per line). It must list
    /// exactly the UKI, root and verity image of one version. Errors: [`UpdateError::Invalid`].
    pub fn parse(text: &[u8]) -> Result<Manifest, UpdateError> {
        let bad = |m: String| UpdateError::Invalid(format!("{SUMS}: {m}"));
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text".into()))?;
        let mut files: Vec<(Part, String, [u8; 32])> = Vec::new();
        let mut version: Option<&str> = None;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let n = i + 1;
            let (hash, name) = line.split_at_checked(64).ok_or_else(|| bad(format!("line {n} is not `<sha256>  <name>`")))?;
            let name = name.strip_prefix("  ").or_else(|| name.strip_prefix(" *")).ok_or_else(|| bad(format!("line {n} is not `<sha256>  <name>`")))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash, &mut digest).map_err(|_| bad(format!("line {n}: the hash is not 64 hex digits")))?;
            let (part, v) = classify(name).ok_or_else(|| {
                bad(format!("line {n}: `{}` is not a release file (swarmseal_V.efi, swarmseal_V_<UUID>.root.raw, swarmseal_V_<UUID>.root-verity.raw)", name.escape_debug()))
            })?;
            match version {
                None => version = Some(v),
                Some(first) if first != v => return Err(bad(format!("two versions in one release: {first} and {v}"))),
                Some(_) => {}
            }
            if files.iter().any(|(p, _, _)| *p == part) {
                return Err(bad(format!("line {n}: a second {part:?} file ({name})")));
            }
            files.push((part, name.to_string(), digest));
        }
        let version = version.ok_or_else(|| bad("lists no file".into()))?.to_string();
        for p in [Part::Uki, Part::Root, Part::Verity] {
            if !files.iter().any(|(x, _, _)| *x == p) {
                return Err(bad(format!("lists no {p:?} file for version {version}")));
            }
        }
        files.sort();
        Ok(Manifest { version, files: files.into_iter().map(|(_, n, d)| (n, d)).collect() })
    }

    fn digest_of(&self, name: &str) -> Option<&[u8; 32]> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }
}

/// Load `[update] public_key`. Errors: [`UpdateError::Key`].
pub fn load_key(path: &Path) -> Result<PcrPublicKey, UpdateError> {
    PcrPublicKey::load(path).map_err(|e| UpdateError::Key { path: path.to_path_buf(), message: e.to_string() })
}

/// Check `sig` over `sums` with the fleet's key, then parse the manifest.
/// Errors: [`UpdateError::NotSigned`], then [`UpdateError::Invalid`].
pub fn verify_manifest(key: &PcrPublicKey, sums: &[u8], sig: &[u8]) -> Result<Manifest, UpdateError> {
    if !key.verify_sha256(sums, sig) {
        return Err(UpdateError::NotSigned(format!(
            "{SIG} does not verify over {SUMS} with the key {} (RSASSA-PKCS1-v1_5 or ECDSA, SHA-256; made with `openssl dgst -sha256 -sign pcr-signing.key {SUMS}`)",
            hex::encode(&key.fingerprint()[..8])
        )));
    }
    Manifest::parse(sums)
}

// ------------------------------------------------------------------ the tar stream

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

/// The tar stream: 512-byte blocks, counted against the size cap.
struct Tar<R> {
    r: R,
    consumed: u64,
    max: u64,
}

/// One member header.
struct Member {
    name: String,
    size: u64,
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 for sizes ≥ 8 GiB: never a release this agent accepts.
        return None;
    }
    let s = std::str::from_utf8(field).ok()?.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())]
}

impl<R: AsyncRead + Unpin> Tar<R> {
    /// Fill `buf` completely; a short upload is [`UpdateError::Body`].
    async fn exact(&mut self, buf: &mut [u8]) -> Result<(), UpdateError> {
        self.consumed += buf.len() as u64;
        if self.consumed > self.max {
            return Err(UpdateError::TooLarge { max: self.max });
        }
        self.r.read_exact(buf).await.map(|_| ()).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => UpdateError::Invalid("the archive ends in the middle of a member (truncated upload?)".into()),
            _ => UpdateError::Body(e.to_string()),
        })
    }

    /// The next member's header; `None` at the end-of-archive block (or a clean EOF).
    async fn next(&mut self) -> Result<Option<Member>, UpdateError> {
        let mut h = [0u8; 512];
        // A clean end of the stream between members is taken as the end of the archive.
        let n = self.r.read(&mut h[..1]).await.map_err(|e| UpdateError::Body(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        self.consumed += 1;
        self.exact(&mut h[1..]).await?;
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let bad = |m: &str| UpdateError::Invalid(format!("not a ustar archive: {m} (make releases with `tar --format=ustar`)"));
        let stored = octal(&h[148..156]).ok_or_else(|| bad("unreadable header checksum"))?;
        let sum: u64 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
        if sum != stored {
            return Err(bad("header checksum mismatch"));
        }
        let mut name = cstr(&h[0..100]).to_vec();
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = [prefix, b"/", &name].concat();
            }
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        let name = name.strip_prefix("./").map(str::to_string).unwrap_or(name);
        let size = octal(&h[124..136]).ok_or_else(|| bad("unreadable member size"))?;
        match h[156] {
            b'0' | 0 => {}
            t => {
                let what = match t {
                    b'5' => "a directory",
                    b'1' | b'2' => "a link",
                    b'x' | b'g' | b'L' | b'K' => "a pax/GNU extended header",
                    _ => "not a regular file",
                };
                return Err(UpdateError::Invalid(format!("member `{}` is {what}; a release holds regular files only", name.escape_debug())));
            }
        }
        if self.consumed.saturating_add(size) > self.max {
            return Err(UpdateError::TooLarge { max: self.max });
        }
        Ok(Some(Member { name, size }))
    }

    /// A small member, whole, in memory (at most `limit` bytes).
    async fn small(&mut self, m: &Member, limit: u64) -> Result<Vec<u8>, UpdateError> {
        if m.size > limit {
            return Err(UpdateError::Invalid(format!("{} is {} bytes; at most {limit} expected", m.name, m.size)));
        }
        let mut v = vec![0u8; m.size as usize];
        self.exact(&mut v).await?;
        self.skip_padding(m.size).await?;
        Ok(v)
    }

    async fn skip_padding(&mut self, size: u64) -> Result<(), UpdateError> {
        let pad = (512 - size % 512) % 512;
        let mut p = [0u8; 512];
        self.exact(&mut p[..pad as usize]).await
    }

    /// Stream a member to `out` (when given) while hashing it; returns its SHA-256.
    async fn body(&mut self, m: &Member, mut out: Option<(&mut tokio::fs::File, &Path)>) -> Result<[u8; 32], UpdateError> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 << 10];
        let mut left = m.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.exact(&mut buf[..n]).await?;
            ctx.update(&buf[..n]);
            if let Some((f, p)) = out.as_mut() {
                f.write_all(&buf[..n]).await.map_err(io_err(p))?;
            }
            left -= n as u64;
        }
        self.skip_padding(m.size).await?;
        let mut d = [0u8; 32];
        d.copy_from_slice(ctx.finish().as_ref());
        Ok(d)
    }

    /// After the end-of-archive block: read what the client still sends (tar's record padding),
    /// within the cap, so it sees our answer rather than a reset.
    async fn drain(&mut self) {
        let mut buf = [0u8; 16 << 10];
        while self.consumed < self.max {
            match self.r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.consumed += n as u64,
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
    std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(io_err(p))
}

/// Receive a release tar from `body` (at most `max` bytes), verify it, and stage it under
/// `staging` (`V.partial/` while receiving, then `staged/`, replacing the previous release).
///
/// Nothing is written before `SHA256SUMS.sig` verifies with `key`; on any error the partial
/// release is removed and the previously staged release stays. Errors: [`UpdateError::Busy`]
/// (another upload holds the lock), [`UpdateError::NotSigned`], [`UpdateError::Invalid`]
/// (order, names, types, missing files), [`UpdateError::HashMismatch`],
/// [`UpdateError::TooLarge`], [`UpdateError::Body`], [`UpdateError::Io`].
pub async fn receive<R: AsyncRead + Unpin>(key: &PcrPublicKey, staging: &Path, max: u64, body: R) -> Result<Staged, UpdateError> {
    receive_from(key, staging, max, body, None).await
}

/// [`receive`] for a release fetched as `swarmseal_<version>.tar` ([`source`]): the signed
/// manifest must be `version` (checked with the signature, before anything is written), not
/// another release the source chose; a refused release is not read to its end (nobody waits
/// for our answer on that connection). Errors: [`receive`]'s.
pub async fn receive_fetched<R: AsyncRead + Unpin>(key: &PcrPublicKey, staging: &Path, max: u64, body: R, version: &str) -> Result<Staged, UpdateError> {
    receive_from(key, staging, max, body, Some(version)).await
}

async fn receive_from<R: AsyncRead + Unpin>(key: &PcrPublicKey, staging: &Path, max: u64, body: R, fetched: Option<&str>) -> Result<Staged, UpdateError> {
    let lock = try_lock(staging)?;
    let mut tar = Tar { r: body, consumed: 0, max };
    match receive_locked(&mut tar, key, staging, fetched).await {
        Ok(version) => Ok(Staged { version, dir: staging.join(STAGED), lock }),
        Err(e) => {
            if fetched.is_none() && matches!(e, UpdateError::NotSigned(_) | UpdateError::Invalid(_) | UpdateError::HashMismatch { .. }) {
                // Read the rest of the upload (within the cap, for at most a minute) so the
                // client reads our 422 instead of a connection reset in the middle of sending.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), tar.drain()).await;
            }
            Err(e)
        }
    }
}

async fn receive_locked<R: AsyncRead + Unpin>(tar: &mut Tar<R>, key: &PcrPublicKey, staging: &Path, expect: Option<&str>) -> Result<String, UpdateError> {
    let (manifest, sums, sig) = read_manifest(tar, key).await?;
    if let Some(want) = expect.filter(|w| *w != manifest.version) {
        return Err(UpdateError::Invalid(format!("the release is version {}, not {want} as asked for", manifest.version)));
    }

    // Verified: now, and only now, write.
    std::fs::create_dir_all(staging).map_err(io_err(staging))?;
    clean_partials(staging);
    let partial = staging.join(format!("{}.partial", manifest.version));
    let mut guard = PartialGuard(Some(partial.clone()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir(&partial).map_err(io_err(&partial))?;
    let mut seen: Vec<String> = Vec::new();
    while let Some(m) = tar.next().await? {
        let Some(want) = manifest.digest_of(&m.name) else {
            return Err(UpdateError::Invalid(format!("member `{}` is not listed in {SUMS}", m.name.escape_debug())));
        };
        if seen.contains(&m.name) {
            return Err(UpdateError::Invalid(format!("member {} appears twice", m.name)));
        }
        let path = partial.join(&m.name);
        let mut f = tokio::fs::OpenOptions::new().create_new(true).write(true).open(&path).await.map_err(io_err(&path))?;
        let got = tar.body(&m, Some((&mut f, &path))).await?;
        if &got != want {
            return Err(UpdateError::HashMismatch { name: m.name, actual: hex::encode(got) });
        }
        f.sync_all().await.map_err(io_err(&path))?;
        seen.push(m.name);
    }
    let missing: Vec<&str> = manifest.files.iter().map(|(n, _)| n.as_str()).filter(|n| !seen.iter().any(|s| s == n)).collect();
    if !missing.is_empty() {
        return Err(UpdateError::Invalid(format!("the archive lacks {} (listed in {SUMS})", missing.join(", "))));
    }
    tar.drain().await;
    for (name, bytes) in [(SUMS, &sums), (SIG, &sig)] {
        let p = partial.join(name);
        std::fs::write(&p, bytes).map_err(io_err(&p))?;
    }
    fsync_dir(&partial)?;

    // Swap it in: the previous staged release goes only once the new one is complete.
    let staged = staging.join(STAGED);
    let old = staging.join(".staged.old");
    let _ = std::fs::remove_dir_all(&old);
    if staged.exists() {
        std::fs::rename(&staged, &old).map_err(io_err(&staged))?;
    }
    std::fs::rename(&partial, &staged).map_err(io_err(&staged))?;
    guard.0 = None;
    let _ = std::fs::remove_dir_all(&old);
    fsync_dir(staging)?;
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

/// The first two members: `SHA256SUMS` and its signature, verified.
async fn read_manifest<R: AsyncRead + Unpin>(tar: &mut Tar<R>, key: &PcrPublicKey) -> Result<(Manifest, Vec<u8>, Vec<u8>), UpdateError> {
    let order = || UpdateError::Invalid(format!("a release tar starts with {SUMS}, then {SIG} (scripts/build-image --release)"));
    let m = tar.next().await?.ok_or_else(order)?;
    if m.name != SUMS {
        return Err(order());
    }
    let sums = tar.small(&m, MAX_SUMS).await?;
    let m = tar.next().await?.ok_or_else(order)?;
    if m.name != SIG {
        return Err(order());
    }
    let sig = tar.small(&m, MAX_SIG).await?;
    let manifest = verify_manifest(key, &sums, &sig)?;
    Ok((manifest, sums, sig))
}

/// Verify a release tar without writing anything (`swarmseal update verify FILE`).
pub async fn verify_tar<R: AsyncRead + Unpin>(key: &PcrPublicKey, body: R) -> Result<Manifest, UpdateError> {
    let mut tar = Tar { r: body, consumed: 0, max: u64::MAX };
    let (manifest, _, _) = read_manifest(&mut tar, key).await?;
    let mut seen: Vec<String> = Vec::new();
    while let Some(m) = tar.next().await? {
        let Some(want) = manifest.digest_of(&m.name).copied() else {
            return Err(UpdateError::Invalid(format!("member `{}` is not listed in {SUMS}", m.name.escape_debug())));
        };
        if seen.contains(&m.name) {
            return Err(UpdateError::Invalid(format!("member {} appears twice", m.name)));
        }
        let got = tar.body(&m, None).await?;
        if got != want {
            return Err(UpdateError::HashMismatch { name: m.name, actual: hex::encode(got) });
        }
        seen.push(m.name);
    }
    if let Some((n, _)) = manifest.files.iter().find(|(n, _)| !seen.contains(n)) {
        return Err(UpdateError::Invalid(format!("the archive lacks {n} (listed in {SUMS})")));
    }
    Ok(manifest)
}

/// Verify a release directory (the staged release, or `build/release/V/`): the signature, then
/// each file's hash; no file other than the manifest, its signature and the three listed files.
pub fn verify_dir(key: &PcrPublicKey, dir: &Path) -> Result<Manifest, UpdateError> {
    let read = |n: &str, limit: u64| -> Result<Vec<u8>, UpdateError> {
        let p = dir.join(n);
        let mut v = Vec::new();
        std::fs::File::open(&p).and_then(|f| f.take(limit + 1).read_to_end(&mut v)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => UpdateError::Invalid(format!("{} has no {n}", dir.display())),
            _ => UpdateError::Io { path: p.clone(), source: e },
        })?;
        if v.len() as u64 > limit {
            return Err(UpdateError::Invalid(format!("{} is larger than {limit} bytes", p.display())));
        }
        Ok(v)
    };
    let manifest = verify_manifest(key, &read(SUMS, MAX_SUMS)?, &read(SIG, MAX_SIG)?)?;
    for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n != SUMS && n != SIG && manifest.digest_of(&n).is_none() {
            return Err(UpdateError::Invalid(format!("{} holds {n}, which {SUMS} does not list", dir.display())));
        }
    }
    for (name, want) in &manifest.files {
        let p = dir.join(name);
        let mut f = std::fs::File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => UpdateError::Invalid(format!("{} lacks {name} (listed in {SUMS})", dir.display())),
            _ => UpdateError::Io { path: p.clone(), source: e },
        })?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = f.read(&mut buf).map_err(io_err(&p))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let got = ctx.finish();
        if got.as_ref() != want {
            return Err(UpdateError::HashMismatch { name: name.clone(), actual: hex::encode(got.as_ref()) });
        }
    }
    Ok(manifest)
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

/// `swarmseal update …`
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
    /// hashes. Exit 0 when it would be accepted, 15 when not.
    Verify {
        /// swarmseal_V.tar or a directory holding SHA256SUMS, SHA256SUMS.sig and the three files.
        #[arg(value_name = "RELEASE")]
        release: PathBuf,
    },
}

/// Run a `swarmseal update` command (prints to stdout; the apply service's stdout is the socket).
pub async fn run(cfg: &Config, c: UpdateCommand) -> Result<(), UpdateError> {
    let key = load_key(&cfg.update.public_key)?;
    match c {
        UpdateCommand::Verify { release } => {
            let m = if release.is_dir() {
                verify_dir(&key, &release)?
            } else {
                let f = tokio::fs::File::open(&release).await.map_err(io_err(&release))?;
                verify_tar(&key, tokio::io::BufReader::with_capacity(256 << 10, f)).await?
            };
            println!("release {} verified: {SUMS} signed by the fleet's key, {} files match", m.version, m.files.len());
            Ok(())
        }
        UpdateCommand::Apply { staged, reboot, stdin_request } => {
            let staged = staged.unwrap_or_else(|| cfg.update_dir().join(STAGED));
            // By hand, hold the staging lock so no upload replaces the release meanwhile; run by
            // the socket, the agent that asked holds it.
            let _lock = if stdin_request { None } else { Some(try_lock(&cfg.update_dir())?) };
            let (want, reboot) = if stdin_request {
                let mut line = Vec::new();
                std::io::stdin().take(4096).read_to_end(&mut line).map_err(|e| UpdateError::Body(e.to_string()))?;
                let r: ApplyRequest = serde_json::from_slice(&line).map_err(|e| UpdateError::Invalid(format!("the request on stdin is not {{\"version\", \"reboot\"}}: {e}")))?;
                (Some(r.version), r.reboot)
            } else {
                (None, reboot)
            };
            apply(cfg, &key, &staged, want.as_deref(), reboot, stdin_request)
        }
    }
}

/// Verify `staged` again (it was written by the less privileged agent), check it is `want`,
/// run `<sysupdate> update V`, print [`APPLIED`], then `<systemctl> reboot` when asked
/// (after a pause when `answer_first`: the agent relays the answer before it goes down).
pub fn apply(cfg: &Config, key: &PcrPublicKey, staged: &Path, want: Option<&str>, reboot: bool, answer_first: bool) -> Result<(), UpdateError> {
    use std::io::Write;
    let m = verify_dir(key, staged)?;
    if let Some(w) = want {
        if w != m.version {
            return Err(UpdateError::Invalid(format!("the staged release is {}, not {w}: another upload replaced it", m.version)));
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
    let what = format!("{bin} {}", args.join(" "));
    let o = std::process::Command::new(bin)
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| UpdateError::Tool { what: what.clone(), status: "not started".into(), output: e.to_string() })?;
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        let output = text.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; ");
        return Err(UpdateError::Tool { what, status: o.status.to_string(), output });
    }
    Ok(text)
}

// ------------------------------------------------------------------ the running image

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

    const V: &str = "1.2.3";
    const U1: &str = "0b8e2b1e-3c3a-4a6e-9c71-3a3f2b7c9d10";
    const U2: &str = "7f2a1c55-1d2e-4f3a-8b9c-0a1b2c3d4e5f";

    fn names(v: &str) -> [String; 3] {
        [format!("swarmseal_{v}.efi"), format!("swarmseal_{v}_{U1}.root.raw"), format!("swarmseal_{v}_{U2}.root-verity.raw")]
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
    }

    #[test]
    fn release_names_follow_the_contract() {
        let [efi, root, verity] = names(V);
        assert_eq!(classify(&efi), Some((Part::Uki, V)));
        assert_eq!(classify(&root), Some((Part::Root, V)));
        assert_eq!(classify(&verity), Some((Part::Verity, V)));
        assert_eq!(classify("swarmseal_0.0.41.gdeadbee.efi"), Some((Part::Uki, "0.0.41.gdeadbee")));
        for bad in [
            "swarmseal_.efi",
            "swarmseal_1+2.efi",
            "swarmseal_../x.efi",
            "swarmseal_1/2.efi",
            "other_1.efi",
            "swarmseal_1_notauuid.root.raw",
            "swarmseal_1.root.raw",
            "SHA256SUMS",
            &format!("swarmseal_1_{U1}.root.img"),
        ] {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }

    #[test]
    fn manifest_needs_the_three_files_of_one_version() {
        let [efi, root, verity] = names(V);
        let ok = format!("{}  {verity}\n{} *{efi}\n{}  {root}\n", sha(b"v"), sha(b"e"), sha(b"r"));
        let m = Manifest::parse(ok.as_bytes()).unwrap();
        assert_eq!(m.version, V);
        assert_eq!(m.files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), vec![efi.clone(), root.clone(), verity.clone()]);
        let missing = format!("{}  {efi}\n{}  {root}\n", sha(b"e"), sha(b"r"));
        assert!(Manifest::parse(missing.as_bytes()).unwrap_err().to_string().contains("Verity"));
        let [efi2, ..] = names("2.0");
        let mixed = format!("{}  {efi2}\n{}  {root}\n{}  {verity}\n", sha(b"e"), sha(b"r"), sha(b"v"));
        assert!(Manifest::parse(mixed.as_bytes()).unwrap_err().to_string().contains("two versions"));
        let unknown = format!("{ok}{}  evil.sh\n", sha(b"x"));
        assert!(Manifest::parse(unknown.as_bytes()).unwrap_err().to_string().contains("evil.sh"));
        let twice = format!("{ok}{}  {efi}\n", sha(b"x"));
        assert!(Manifest::parse(twice.as_bytes()).is_err());
    }

    #[test]
    fn os_release_image_fields() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("os-release");
        std::fs::write(&p, "ID=debian\nIMAGE_ID=\"swarmseal\"\nIMAGE_VERSION='0.0.7.gabc'\n").unwrap();
        assert_eq!(os_image(&p), serde_json::json!({"id": "swarmseal", "version": "0.0.7.gabc"}));
        assert_eq!(os_image(&d.path().join("none")), serde_json::json!({"id": null, "version": null}));
    }

    /// A release signed with a fresh key (openssl, as scripts/make-keys and build-image do).
    struct Fixture {
        dir: tempfile::TempDir,
        key: PcrPublicKey,
    }

    fn sh(cmd: &str, dir: &Path) {
        let st = std::process::Command::new("sh").arg("-ec").arg(cmd).current_dir(dir).status().unwrap();
        assert!(st.success(), "{cmd}");
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh("openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k.key && openssl pkey -in k.key -pubout -out k.pem", d);
        std::fs::create_dir(d.join("rel")).unwrap();
        let [efi, root, verity] = names(V);
        for (n, body) in [(&efi, vec![1u8; 1000]), (&root, vec![2u8; 70_000]), (&verity, vec![3u8; 512])] {
            std::fs::write(d.join("rel").join(n), body).unwrap();
        }
        sh(&format!("cd rel && sha256sum {efi} {root} {verity} > SHA256SUMS && openssl dgst -sha256 -sign ../k.key -out SHA256SUMS.sig SHA256SUMS"), d);
        sh(&format!("cd rel && tar --format=ustar -cf ../rel.tar SHA256SUMS SHA256SUMS.sig {root} {efi} {verity}"), d);
        let key = PcrPublicKey::load(&d.join("k.pem")).unwrap();
        Fixture { dir, key }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
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
        assert!(matches!(e, UpdateError::TooLarge { .. }), "{e}");
        assert_eq!(e.http_status(), 413);
        assert!(staging.join(STAGED).exists(), "a refused upload keeps the staged release");
    }

    #[test]
    fn another_key_or_a_changed_byte_is_refused_before_or_while_writing() {
        let f = fixture();
        let d = f.dir.path();
        let tar = std::fs::read(d.join("rel.tar")).unwrap();
        sh("openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 | openssl pkey -pubout -out other.pem", d);
        let other = PcrPublicKey::load(&d.join("other.pem")).unwrap();
        let staging = d.join("updates");
        let e = rt().block_on(receive(&other, &staging, 1 << 30, &tar[..])).err().unwrap();
        assert!(e.to_string().starts_with("release not signed by this fleet's key"), "{e}");
        assert_eq!(e.http_status(), 422);
        assert!(!staging.exists(), "nothing written before the signature verified");
        // Fetched as swarmseal_9.9.tar, but a signed release of another version: refused unwritten.
        let e = rt().block_on(receive_fetched(&f.key, &staging, 1 << 30, &tar[..], "9.9")).err().unwrap();
        assert!(e.to_string().contains(&format!("the release is version {V}, not 9.9")), "{e}");
        assert_eq!(e.http_status(), 422);
        assert!(!staging.exists(), "nothing written for another version than asked");

        // One byte of the root image flipped (its header and checksum intact).
        let mut bad = tar.clone();
        let at = bad.windows(4).position(|w| w == [2, 2, 2, 2]).unwrap() + 100;
        bad[at] ^= 1;
        let e = rt().block_on(receive(&f.key, &staging, 1 << 30, &bad[..])).err().unwrap();
        assert!(matches!(e, UpdateError::HashMismatch { .. }), "{e}");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "the partial release is removed");
        assert!(matches!(rt().block_on(verify_tar(&f.key, &bad[..])), Err(UpdateError::HashMismatch { .. })));

        // Truncated after the manifest: the files are missing.
        let e = rt().block_on(receive(&f.key, &staging, 1 << 30, &tar[..3 * 512 + 512])).err().unwrap();
        assert_eq!(e.http_status(), 422, "{e}");
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
        assert!(matches!(verify_dir(&f.key, &s.dir), Err(UpdateError::HashMismatch { .. })));
    }
}
