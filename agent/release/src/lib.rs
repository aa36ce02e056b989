//! The release format of swarmseal images (see `docs/updates.md`): what
//! `scripts/build-image --release` packs (through this crate's `swarmseal-release pack`), what
//! the agent receives (`POST /swarmseal/v1/update`, or fetched from `[update] source`), and what
//! `swarmseal update verify` and `swarmseal fleet update` check.
//!
//! A release is a ustar archive `swarmseal_V.tar` whose members are, in this order:
//! ```text
//! SHA256SUMS                             `sha256sum` lines for the files below
//! SHA256SUMS.sig                         `openssl dgst -sha256 -sign pcr-signing.key SHA256SUMS`
//! swarmseal_V.efi                        the UKI
//! swarmseal_V_<UUID>.root.raw.xz         the root partition image, xz-compressed
//! swarmseal_V_<UUID>.root-verity.raw.xz  its dm-verity partition image, xz-compressed
//! swarmseal_V.sbom.cdx.json              the image's SBOM ([`sbom`]; optional: older releases lack it)
//! ```
//! (the files in any order; no directories, no other members). The partition images may
//! also be uncompressed (`….root.raw`, `….root-verity.raw`), as releases were before xz: see
//! [`name`].
//!
//! Trust: `SHA256SUMS.sig` must verify with the fleet's PCR-signing public key ([`ReleaseKey`])
//! before a file is believed; each file must be listed in `SHA256SUMS` and hash to its line.
//!
//! - [`name`]: the file names and versions ([`classify`], [`valid_version`]).
//! - [`manifest`]: `SHA256SUMS`, parsed ([`Manifest::parse`]) and written ([`Manifest::to_sums`]).
//! - [`key`]: the signature check ([`ReleaseKey`], [`verify_manifest`]).
//! - [`tar`]: the archive, read as a stream ([`tar::Reader`]) and written ([`tar::write`]).
//! - [`verify`]: a whole release, as a tar stream ([`verify_tar`]) or a directory ([`verify_dir`]).
//! - [`pack`]: a release from a built disk image (`swarmseal-release pack`).
//! - [`sbom`]: the image's SBOM (CycloneDX 1.5 JSON), made (`swarmseal-release sbom`) and compared ([`sbom::diff`]).
//! - [`source_url`]: `[update] source`, where releases are fetched from ([`SourceUrl`]).
//!
//! Pure Rust, no TPM: `fleet` and `build-image` use it on a workstation.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

pub mod key;
pub mod manifest;
pub mod name;
pub mod pack;
pub mod sbom;
pub mod source_url;
pub mod tar;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verify;

pub use key::{load_key, verify_manifest, ReleaseKey};
pub use manifest::Manifest;
pub use name::{classify, valid_version, Part};
pub use source_url::SourceUrl;
pub use verify::{read_manifest, verify_dir, verify_tar};

/// The manifest's name in a release.
pub const SUMS: &str = "SHA256SUMS";
/// The manifest signature's name in a release.
pub const SIG: &str = "SHA256SUMS.sig";
/// Largest `SHA256SUMS` accepted (three lines are about 400 bytes).
pub const MAX_SUMS: u64 = 64 << 10;
/// Largest `SHA256SUMS.sig` accepted (an RSA 4096 signature is 512 bytes).
pub const MAX_SIG: u64 = 4 << 10;

/// Why a release was refused or could not be read. `Display` is the operator sentence; the
/// agent maps these to its exit codes and HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// `SHA256SUMS.sig` does not verify with the fleet's key.
    #[error("release not signed by this fleet's key: {0}")]
    NotSigned(String),
    /// The release is malformed, has an unknown member, or lacks a file.
    #[error("not a valid release: {0}")]
    Invalid(String),
    /// A file's SHA-256 differs from its `SHA256SUMS` line.
    #[error("release file {name} does not match SHA256SUMS (sha256 {actual}): altered or truncated in transit")]
    HashMismatch { name: String, actual: String },
    /// The archive exceeds the size cap (`[update] max_bytes`).
    #[error("the release is larger than this manager accepts ([update] max_bytes = {max} bytes)")]
    TooLarge { max: u64 },
    /// The stream broke off or could not be read.
    #[error("cannot read the upload: {0}")]
    Body(String),
    /// The release key (`[update] public_key`) is missing or unusable.
    #[error("this manager cannot check releases: [update] public_key {path}: {message}")]
    Key { path: PathBuf, message: String },
    /// Reading or writing a release file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// `pack`: the disk image or a tool it runs (sfdisk, openssl) failed.
    #[error("{0}")]
    Pack(String),
}

impl ReleaseError {
    /// Whether the release itself was refused (unsigned, malformed, altered), as opposed to
    /// this side failing to read, write or check it.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ReleaseError::NotSigned(_) | ReleaseError::Invalid(_) | ReleaseError::HashMismatch { .. })
    }
}

/// `map_err` helper: an I/O error on `path`.
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io { path: path.to_path_buf(), source }
}

/// SHA-256 of everything `r` yields (256 KiB reads).
pub fn sha256_reader(mut r: impl std::io::Read, path: &Path) -> Result<[u8; 32], ReleaseError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut d = [0u8; 32];
    d.copy_from_slice(ctx.finish().as_ref());
    Ok(d)
}
