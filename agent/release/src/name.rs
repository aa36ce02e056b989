//! Release file names: `swarmseal_V.efi`, `swarmseal_V_<UUID>.root.raw.xz`,
//! `swarmseal_V_<UUID>.root-verity.raw.xz` (the patterns of the image's
//! `/usr/lib/sysupdate.d/*.transfer`), and the version `V` they carry.
//!
//! The partition images are xz-compressed ([`XZ`]): systemd-import, which systemd-sysupdate runs
//! to write a slot, detects and decompresses xz, gzip and bzip2 (the image's systemd 257 links
//! liblzma, libz and libbz2, not libzstd). Uncompressed `.root.raw` / `.root-verity.raw` names,
//! as releases before 2026-12-07 had, are still accepted: the transfers match both.

/// Which of the three release files a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// `swarmseal_V.efi`
    Uki,
    /// `swarmseal_V_<UUID>.root.raw.xz` (or `.root.raw`)
    Root,
    /// `swarmseal_V_<UUID>.root-verity.raw.xz` (or `.root-verity.raw`)
    Verity,
    /// `swarmseal_V.sbom.cdx.json`: the image's SBOM (docs/sbom.md), optional (releases before
    /// SBOMs lack it); no sysupdate transfer matches it, `update verify` reads it.
    Sbom,
}

/// The suffix of a compressed partition image (xz container format, `xz --format=xz`).
pub const XZ: &str = ".xz";

impl Part {
    /// The file name of this part for `version` (`uuid`: the partition UUID, lowercase; unused
    /// for the UKI), as [`crate::pack`] writes it: partition images xz-compressed.
    pub fn file_name(self, version: &str, uuid: &str) -> String {
        match self {
            Part::Uki => format!("swarmseal_{version}.efi"),
            Part::Root => format!("swarmseal_{version}_{uuid}.root.raw{XZ}"),
            Part::Verity => format!("swarmseal_{version}_{uuid}.root-verity.raw{XZ}"),
            Part::Sbom => format!("swarmseal_{version}.sbom.cdx.json"),
        }
    }
}

/// A version as the contract allows it: 1–64 of `[A-Za-z0-9.~^-]`, starting with an
/// alphanumeric; never `_` or `+` (they would break the file patterns and boot counting).
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".~^-".contains(&b))
}

/// A partition UUID as it appears in a release name: 8-4-4-4-12 hex digits.
pub fn valid_uuid(u: &str) -> bool {
    u.len() == 36
        && u.bytes().enumerate().all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// Which release file `name` is, and its version; `None` for any other name.
pub fn classify(name: &str) -> Option<(Part, &str)> {
    let rest = name.strip_prefix("swarmseal_")?;
    if let Some(v) = rest.strip_suffix(".efi") {
        return valid_version(v).then_some((Part::Uki, v));
    }
    if let Some(v) = rest.strip_suffix(".sbom.cdx.json") {
        return valid_version(v).then_some((Part::Sbom, v));
    }
    let rest = rest.strip_suffix(XZ).unwrap_or(rest);
    let (part, stem) = if let Some(s) = rest.strip_suffix(".root-verity.raw") {
        (Part::Verity, s)
    } else {
        (Part::Root, rest.strip_suffix(".root.raw")?)
    };
    let (v, uuid) = stem.rsplit_once('_')?;
    (valid_version(v) && valid_uuid(uuid)).then_some((part, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{names, U1, U2, V};

    #[test]
    fn release_names_follow_the_contract() {
        let [efi, root, verity] = names(V);
        assert_eq!(efi, "swarmseal_1.2.3.efi");
        assert_eq!(root, format!("swarmseal_1.2.3_{U1}.root.raw.xz"));
        assert_eq!(verity, format!("swarmseal_1.2.3_{U2}.root-verity.raw.xz"));
        assert_eq!(classify(&efi), Some((Part::Uki, V)));
        assert_eq!(classify(&root), Some((Part::Root, V)));
        assert_eq!(classify(&verity), Some((Part::Verity, V)));
        assert_eq!(classify("swarmseal_0.0.41.gdeadbee.efi"), Some((Part::Uki, "0.0.41.gdeadbee")));
        assert_eq!(classify(&Part::Sbom.file_name(V, "")), Some((Part::Sbom, V)));
        // Uncompressed partition images (releases before xz) are still release files.
        assert_eq!(classify(&format!("swarmseal_1.2.3_{U1}.root.raw")), Some((Part::Root, V)));
        assert_eq!(classify(&format!("swarmseal_1.2.3_{U2}.root-verity.raw")), Some((Part::Verity, V)));
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
            &format!("swarmseal_1_{U1}.root.raw.zst"),
            &format!("swarmseal_1_{U1}.root.raw.xz.xz"),
            "swarmseal_1.efi.xz",
        ] {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }
}
