//! A whole release checked: the signature over `SHA256SUMS`, then every file against its line,
//! and nothing else in it.

use std::path::Path;

use tokio::io::AsyncRead;

use crate::tar::Reader;
use crate::{io_err, verify_manifest, Manifest, ReleaseError, ReleaseKey, MAX_SIG, MAX_SUMS, SIG, SUMS};

/// The first two members of a release tar: `SHA256SUMS` and its signature, verified with
/// `key`; returns the manifest and both as read. Errors: [`ReleaseError::Invalid`] (another
/// order, too large), [`ReleaseError::NotSigned`], the reader's.
pub async fn read_manifest<R: AsyncRead + Unpin>(tar: &mut Reader<R>, key: &ReleaseKey) -> Result<(Manifest, Vec<u8>, Vec<u8>), ReleaseError> {
    let order = || ReleaseError::Invalid(format!("a release tar starts with {SUMS}, then {SIG} (scripts/build-image --release)"));
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

/// Checks the members after the manifest: each listed once, none missing.
#[derive(Default)]
pub struct Members(Vec<String>);

impl Members {
    /// Member `name` is next: its expected SHA-256. Errors: [`ReleaseError::Invalid`] when
    /// `manifest` does not list it or it came before.
    pub fn admit<'m>(&mut self, manifest: &'m Manifest, name: &str) -> Result<&'m [u8; 32], ReleaseError> {
        let Some(want) = manifest.digest_of(name) else {
            return Err(ReleaseError::Invalid(format!("member `{}` is not listed in {SUMS}", name.escape_debug())));
        };
        if self.0.iter().any(|s| s == name) {
            return Err(ReleaseError::Invalid(format!("member {name} appears twice")));
        }
        self.0.push(name.to_string());
        Ok(want)
    }

    /// At the end of the archive. Errors: [`ReleaseError::Invalid`] naming the files missing.
    pub fn complete(&self, manifest: &Manifest) -> Result<(), ReleaseError> {
        let missing: Vec<&str> = manifest.files.iter().map(|(n, _)| n.as_str()).filter(|n| !self.0.iter().any(|s| s == n)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ReleaseError::Invalid(format!("the archive lacks {} (listed in {SUMS})", missing.join(", "))))
        }
    }
}

/// `got` against `want` for member `name`. Errors: [`ReleaseError::HashMismatch`].
pub fn check_hash(name: &str, want: &[u8; 32], got: &[u8; 32]) -> Result<(), ReleaseError> {
    if got == want {
        Ok(())
    } else {
        Err(ReleaseError::HashMismatch { name: name.to_string(), actual: hex::encode(got) })
    }
}

/// Verify a release tar without writing anything (`swarmseal update verify FILE`,
/// `swarmseal fleet update`). Errors: [`read_manifest`]'s, [`ReleaseError::HashMismatch`],
/// [`ReleaseError::Invalid`] (unlisted, repeated or missing members).
pub async fn verify_tar<R: AsyncRead + Unpin>(key: &ReleaseKey, body: R) -> Result<Manifest, ReleaseError> {
    let mut tar = Reader::new(body, u64::MAX);
    let (manifest, _, _) = read_manifest(&mut tar, key).await?;
    let mut members = Members::default();
    while let Some(m) = tar.next().await? {
        let want = members.admit(&manifest, &m.name)?;
        let got = tar.body::<tokio::io::Sink>(&m, None).await?;
        check_hash(&m.name, want, &got)?;
    }
    members.complete(&manifest)?;
    Ok(manifest)
}

/// Verify a release directory (the staged release, or `build/release/V/`): the signature, then
/// each file's hash; no file other than the manifest, its signature and the three listed files.
/// Errors: [`ReleaseError::NotSigned`], [`ReleaseError::Invalid`], [`ReleaseError::HashMismatch`],
/// [`ReleaseError::Io`].
pub fn verify_dir(key: &ReleaseKey, dir: &Path) -> Result<Manifest, ReleaseError> {
    use std::io::Read as _;
    let read = |n: &str, limit: u64| -> Result<Vec<u8>, ReleaseError> {
        let p = dir.join(n);
        let mut v = Vec::new();
        std::fs::File::open(&p).and_then(|f| f.take(limit + 1).read_to_end(&mut v)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReleaseError::Invalid(format!("{} has no {n}", dir.display())),
            _ => ReleaseError::Io { path: p.clone(), source: e },
        })?;
        if v.len() as u64 > limit {
            return Err(ReleaseError::Invalid(format!("{} is larger than {limit} bytes", p.display())));
        }
        Ok(v)
    };
    let manifest = verify_manifest(key, &read(SUMS, MAX_SUMS)?, &read(SIG, MAX_SIG)?)?;
    for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n != SUMS && n != SIG && manifest.digest_of(&n).is_none() {
            return Err(ReleaseError::Invalid(format!("{} holds {n}, which {SUMS} does not list", dir.display())));
        }
    }
    for (name, want) in &manifest.files {
        let p = dir.join(name);
        let f = std::fs::File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReleaseError::Invalid(format!("{} lacks {name} (listed in {SUMS})", dir.display())),
            _ => ReleaseError::Io { path: p.clone(), source: e },
        })?;
        check_hash(name, want, &crate::sha256_reader(f, &p)?)?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, names, rsa_key, rt, V};

    #[test]
    fn a_signed_release_verifies_as_a_tar_and_as_a_directory() {
        let f = fixture();
        let tar = std::fs::read(f.dir.path().join("rel.tar")).unwrap();
        assert_eq!(rt().block_on(verify_tar(&f.key, &tar[..])).unwrap().version, V);
        assert_eq!(verify_dir(&f.key, &f.dir.path().join("rel")).unwrap().version, V);
    }

    #[test]
    fn another_key_a_changed_byte_or_a_changed_directory_is_refused() {
        let f = fixture();
        let d = f.dir.path();
        let tar = std::fs::read(d.join("rel.tar")).unwrap();
        let other = rsa_key(d, "other");
        let e = rt().block_on(verify_tar(&other, &tar[..])).unwrap_err();
        assert!(e.to_string().starts_with("release not signed by this fleet's key"), "{e}");
        assert!(e.is_refusal());

        // One byte of the root image flipped (its header and checksum intact).
        let mut bad = tar.clone();
        let at = bad.windows(4).position(|w| w == [2, 2, 2, 2]).unwrap() + 100;
        bad[at] ^= 1;
        assert!(matches!(rt().block_on(verify_tar(&f.key, &bad[..])), Err(ReleaseError::HashMismatch { .. })));
        // Truncated after the manifest: the files are missing.
        let e = rt().block_on(verify_tar(&f.key, &tar[..4 * 512])).unwrap_err();
        assert!(e.to_string().contains("the archive lacks"), "{e}");
        // Manifest not first.
        let e = rt().block_on(verify_tar(&f.key, &tar[2 * 512..])).unwrap_err();
        assert!(e.to_string().contains("starts with SHA256SUMS"), "{e}");

        let rel = d.join("rel");
        std::fs::write(rel.join("extra"), b"x").unwrap();
        assert!(verify_dir(&f.key, &rel).unwrap_err().to_string().contains("extra"));
        std::fs::remove_file(rel.join("extra")).unwrap();
        let [efi, ..] = names(V);
        std::fs::write(rel.join(&efi), b"changed").unwrap();
        assert!(matches!(verify_dir(&f.key, &rel), Err(ReleaseError::HashMismatch { .. })));
    }
}
