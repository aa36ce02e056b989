//! `SHA256SUMS`: `sha256sum` output for the three release files, one version.

use crate::name::{classify, Part};
use crate::{ReleaseError, SUMS};

/// A parsed `SHA256SUMS`: one version, the three files and their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    /// (name, sha256), ordered UKI, root, verity.
    pub files: Vec<(String, [u8; 32])>,
}

impl Manifest {
    /// Parse `sha256sum` output (`<64 hex>  <name>` or `<64 hex> *<name>` per line). It must list
    /// exactly the UKI, root and verity image of one version. Errors: [`ReleaseError::Invalid`].
    pub fn parse(text: &[u8]) -> Result<Manifest, ReleaseError> {
        let bad = |m: String| ReleaseError::Invalid(format!("{SUMS}: {m}"));
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
                bad(format!("line {n}: `{}` is not a release file (swarmseal_V.efi, swarmseal_V_<UUID>.root.raw.xz, swarmseal_V_<UUID>.root-verity.raw.xz)", name.escape_debug()))
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

    /// The `SHA256SUMS` text, as `sha256sum UKI ROOT VERITY` prints it: `<64 hex>  <name>\n`
    /// per file, in [`Manifest::files`] order.
    pub fn to_sums(&self) -> String {
        self.files.iter().map(|(n, d)| format!("{}  {n}\n", hex::encode(d))).collect()
    }

    /// The SHA-256 `SHA256SUMS` lists for `name`, if it lists it.
    pub fn digest_of(&self, name: &str) -> Option<&[u8; 32]> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{names, V};

    fn sha(b: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
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
    fn written_sums_are_what_sha256sum_prints_and_parse_back() {
        let d = tempfile::tempdir().unwrap();
        let [efi, root, verity] = names(V);
        for (n, b) in [(&efi, &b"e"[..]), (&root, b"r"), (&verity, b"v")] {
            std::fs::write(d.path().join(n), b).unwrap();
        }
        let out = std::process::Command::new("sha256sum").args([&efi, &root, &verity]).current_dir(d.path()).output().unwrap();
        assert!(out.status.success());
        let m = Manifest::parse(&out.stdout).unwrap();
        assert_eq!(m.to_sums().as_bytes(), &out.stdout[..]);
        assert_eq!(Manifest::parse(m.to_sums().as_bytes()).unwrap(), m);
    }
}
