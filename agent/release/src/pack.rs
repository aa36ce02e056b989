//! A release from a built disk image, as `scripts/build-image --release` makes it:
//! `<out>/V/{swarmseal_V.efi, swarmseal_V_<UUID>.root.raw.xz, swarmseal_V_<UUID>.root-verity.raw.xz,
//! SHA256SUMS, SHA256SUMS.sig}` and `<out>/swarmseal_V.tar`.
//!
//! The root and verity partitions are found in the image's GPT (`sfdisk --json`) by type
//! (UAPI Discoverable Partitions: root x86-64 and its verity) and label (`swarmseal_V`, set by
//! `image/mkosi.repart/1*.conf`), copied byte for byte and compressed by `xz` ([`XZ_ARGS`]);
//! `SHA256SUMS` lists the compressed files, and systemd-sysupdate (systemd-import) decompresses
//! them into the slot. The partition UUID (derived from the root hash) goes in the name:
//! systemd-sysupdate sets it on the slot it writes, and V's UKI finds its root by it. The
//! signature is made by `openssl dgst -sha256 -sign KEY` (the private key never enters this
//! process): RSASSA-PKCS1-v1_5 is deterministic, and so is xz with a fixed preset and thread
//! count, so a rebuild with the same key gives the same release, byte for byte.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use crate::name::{valid_version, Part};
use crate::{io_err, Manifest, ReleaseError, ReleaseKey, SIG, SUMS};

/// The modification time of every archive member (2025-11-29T00:00:00Z, build-image's
/// `SOURCE_DATE_EPOCH`): the archive does not depend on when it was made.
pub const MTIME: u64 = 1_764_374_400;
/// GPT type of the root partition (x86-64), UAPI Discoverable Partitions Specification.
pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// GPT type of the root's dm-verity partition (x86-64).
pub const ROOT_VERITY_X86_64: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";

/// How the partition images are compressed: `xz -1` in multi-threaded mode with exactly two
/// threads. Multi-threaded xz cuts the input into blocks of a fixed size (3 × the 1 MiB
/// dictionary) and its output depends on that block size only, so the bytes are the same on
/// any machine with the same xz (a thread count of 1 would switch to single-threaded mode and
/// give other bytes). Measured 2026-12-07 on this image's 512 MiB root slot (an erofs of
/// ~295 MB, zeros after it), two cores: `-1` 110.6 MB in 55 s, `-3` 107.7 MB in 141 s, `-6`
/// 99.8 MB in 277 s, `gzip -6` 130.0 MB in 15 s (docs/updates.md "Compression").
pub const XZ_ARGS: [&str; 4] = ["-1", "--threads=2", "--format=xz", "--check=crc64"];

/// What [`pack`] packs.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// The disk image (`swarmseal.raw`) holding the partitions labelled `swarmseal_<version>`.
    pub image: PathBuf,
    /// The signed UKI (`swarmseal.efi`).
    pub uki: PathBuf,
    pub version: String,
    /// The PCR-signing private key (PEM), handed to `openssl dgst -sign`.
    pub private_key: PathBuf,
    /// Its public key (PEM): the release is verified with it, as the agent will.
    pub public_key: PathBuf,
    /// The release directory `<out>/V/` and archive `<out>/swarmseal_V.tar` go here.
    pub out: PathBuf,
    /// The image's SBOM (`swarmseal.sbom.cdx.json`), carried as `swarmseal_V.sbom.cdx.json`.
    pub sbom: Option<PathBuf>,
}

/// A packed release.
#[derive(Debug, Clone)]
pub struct Packed {
    pub dir: PathBuf,
    pub tar: PathBuf,
    pub manifest: Manifest,
}

#[derive(serde::Deserialize)]
struct Sfdisk {
    partitiontable: Table,
}

#[derive(serde::Deserialize)]
struct Table {
    #[serde(default = "sector")]
    sectorsize: u64,
    partitions: Vec<Partition>,
}

fn sector() -> u64 {
    512
}

#[derive(serde::Deserialize)]
struct Partition {
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    kind: String,
    uuid: String,
    name: Option<String>,
}

/// One partition to copy out of the image: which part, byte offset, byte length, UUID.
struct Slice {
    part: Part,
    offset: u64,
    len: u64,
    uuid: String,
}

/// The root and verity partitions labelled `swarmseal_<version>`, from `sfdisk --json` output.
fn find_partitions(json: &[u8], version: &str) -> Result<Vec<Slice>, ReleaseError> {
    let t: Sfdisk = serde_json::from_slice(json).map_err(|e| ReleaseError::Pack(format!("sfdisk --json: unexpected output: {e}")))?;
    let label = format!("swarmseal_{version}");
    let ss = t.partitiontable.sectorsize;
    let found: Vec<Slice> = t
        .partitiontable
        .partitions
        .iter()
        .filter(|p| p.name.as_deref() == Some(label.as_str()))
        .filter_map(|p| {
            let part = if p.kind.eq_ignore_ascii_case(ROOT_X86_64) {
                Part::Root
            } else if p.kind.eq_ignore_ascii_case(ROOT_VERITY_X86_64) {
                Part::Verity
            } else {
                return None;
            };
            Some(Slice { part, offset: p.start * ss, len: p.size * ss, uuid: p.uuid.to_ascii_lowercase() })
        })
        .collect();
    let mut parts: Vec<Part> = found.iter().map(|s| s.part).collect();
    parts.sort();
    if parts != [Part::Root, Part::Verity] || !found.iter().all(|s| crate::name::valid_uuid(&s.uuid)) {
        return Err(ReleaseError::Pack(format!("no root and root-verity partitions labelled {label} in the GPT")));
    }
    Ok(found)
}

/// Copy `len` bytes at `offset` of `image` to a new file `out`, leaving all-zero 4 KiB blocks
/// as holes (as `dd conv=sparse`).
fn copy_sparse(image: &Path, offset: u64, len: u64, out: &Path) -> Result<(), ReleaseError> {
    let mut src = File::open(image).map_err(io_err(image))?;
    src.seek(SeekFrom::Start(offset)).map_err(io_err(image))?;
    let mut dst = File::create(out).map_err(io_err(out))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    let mut pos = 0u64;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n]).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ReleaseError::Pack(format!("{}: shorter than its partition table says", image.display())),
            _ => ReleaseError::Io { path: image.to_path_buf(), source: e },
        })?;
        for block in buf[..n].chunks(4096) {
            if block.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(pos)).map_err(io_err(out))?;
                dst.write_all(block).map_err(io_err(out))?;
            }
            pos += block.len() as u64;
        }
        left -= n as u64;
    }
    dst.set_len(len).map_err(io_err(out))
}

/// Compress `raw` into `out` with `xz` ([`XZ_ARGS`]), remove `raw`; returns the SHA-256 of `out`.
fn compress(raw: &Path, out: &Path) -> Result<[u8; 32], ReleaseError> {
    let dst = File::create(out).map_err(io_err(out))?;
    let mut cmd = std::process::Command::new("xz");
    cmd.args(XZ_ARGS).arg("--stdout").arg(raw).stdout(dst);
    run(&mut cmd)?;
    std::fs::remove_file(raw).map_err(io_err(raw))?;
    let f = File::open(out).map_err(io_err(out))?;
    f.sync_all().map_err(io_err(out))?;
    crate::sha256_reader(f, out)
}

/// Run `cmd` (its stdout captured unless redirected); its stderr in the error when it fails.
fn run(cmd: &mut std::process::Command) -> Result<Vec<u8>, ReleaseError> {
    let what = format!("{cmd:?}");
    let o = cmd.stdin(std::process::Stdio::null()).output().map_err(|e| ReleaseError::Pack(format!("{what}: cannot start: {e}")))?;
    if !o.status.success() {
        return Err(ReleaseError::Pack(format!("{what} failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())));
    }
    Ok(o.stdout)
}

/// Pack the release `o.version` (replacing a previous one of that version in `o.out`), sign
/// its `SHA256SUMS`, verify the result with `o.public_key` (the agent's check), and archive it.
/// Errors: [`ReleaseError::Pack`] (bad version, no such partitions, a tool failed),
/// [`ReleaseError::Io`], and [`crate::verify_dir`]'s when the signature does not verify.
pub fn pack(o: &PackOptions) -> Result<Packed, ReleaseError> {
    if !valid_version(&o.version) {
        return Err(ReleaseError::Pack(format!("bad version '{}' (letters, digits, . ~ ^ - only; no _ or +)", o.version.escape_debug())));
    }
    let key = ReleaseKey::load(&o.public_key)?;
    let dir = o.out.join(&o.version);
    let tar = o.out.join(format!("swarmseal_{}.tar", o.version));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    if tar.exists() {
        std::fs::remove_file(&tar).map_err(io_err(&tar))?;
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;

    let json = run(std::process::Command::new("sfdisk").arg("--json").arg(&o.image))?;
    let mut files = Vec::new();
    for s in find_partitions(&json, &o.version)? {
        let name = s.part.file_name(&o.version, &s.uuid);
        let raw = dir.join(name.strip_suffix(crate::name::XZ).unwrap_or(&name));
        copy_sparse(&o.image, s.offset, s.len, &raw)?;
        let digest = compress(&raw, &dir.join(&name))?;
        files.push((s.part, name, digest));
    }
    for (part, src) in [(Part::Uki, Some(&o.uki)), (Part::Sbom, o.sbom.as_ref())] {
        let Some(src) = src else { continue };
        let name = part.file_name(&o.version, "");
        let p = dir.join(&name);
        std::fs::copy(src, &p).map_err(io_err(src))?;
        files.push((part, name, crate::sha256_reader(File::open(&p).map_err(io_err(&p))?, &p)?));
    }
    files.sort();
    let manifest = Manifest { version: o.version.clone(), files: files.into_iter().map(|(_, n, d)| (n, d)).collect() };
    let sums = dir.join(SUMS);
    std::fs::write(&sums, manifest.to_sums()).map_err(io_err(&sums))?;
    run(std::process::Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(&o.private_key).args(["-out", SIG, SUMS]).current_dir(&dir))?;
    let checked = crate::verify_dir(&key, &dir)?;
    debug_assert_eq!(checked, manifest);

    let mut names = vec![SUMS, SIG];
    names.extend(manifest.files.iter().map(|(n, _)| n.as_str()));
    crate::tar::write(&tar, &dir, &names, MTIME)?;
    Ok(Packed { dir, tar, manifest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rsa_key, rt, sh};

    #[test]
    fn a_release_packed_from_a_gpt_image_is_what_the_bash_packer_made() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let v = "0.0.9.gabc1234";
        let key = rsa_key(p, "k");
        // A 4 MiB disk: an ESP-like partition, then root and verity labelled swarmseal_V, and a
        // root of another version that must not be taken.
        sh(&format!(
            "truncate -s 4M disk.raw && printf 'label: gpt\\n\
             size=512KiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\\n\
             size=1MiB, type={ROOT_X86_64}, name=swarmseal_{v}\\n\
             size=256KiB, type={ROOT_VERITY_X86_64}, name=swarmseal_{v}\\n\
             size=512KiB, type={ROOT_X86_64}, name=swarmseal_0.0.8\\n' | sfdisk -q disk.raw \
             && head -c 3000 /dev/urandom > uki.efi"
        ), p);
        // Data in the partitions (a zero run inside, as a sparse copy must keep it).
        let json = run(std::process::Command::new("sfdisk").arg("--json").arg(p.join("disk.raw"))).unwrap();
        let parts = find_partitions(&json, v).unwrap();
        let mut disk = std::fs::OpenOptions::new().write(true).open(p.join("disk.raw")).unwrap();
        for s in &parts {
            disk.seek(SeekFrom::Start(s.offset + 100)).unwrap();
            disk.write_all(&[0x5a; 10_000]).unwrap();
            disk.seek(SeekFrom::Start(s.offset + s.len - 7)).unwrap();
            disk.write_all(b"the end").unwrap();
        }
        drop(disk);
        let o = PackOptions { image: p.join("disk.raw"), uki: p.join("uki.efi"), version: v.into(), private_key: p.join("k.key"), public_key: p.join("k.pem"), out: p.join("release"), sbom: None };
        let packed = pack(&o).unwrap();
        assert_eq!(packed.tar, p.join(format!("release/swarmseal_{v}.tar")));
        let m = rt().block_on(crate::verify_tar(&key, &std::fs::read(&packed.tar).unwrap()[..])).unwrap();
        assert_eq!(m, packed.manifest);

        // The same release by build-image's former bash (dd, sha256sum, openssl, GNU tar).
        let mut bash = format!("mkdir -p bash/{v} && cd bash/{v} && cp ../../uki.efi swarmseal_{v}.efi\n");
        for s in &parts {
            let f = s.part.file_name(v, &s.uuid);
            let raw = f.strip_suffix(".xz").unwrap();
            bash += &format!("dd if=../../disk.raw of={raw} bs=512 skip={} count={} conv=sparse status=none\n", s.offset / 512, s.len / 512);
            bash += &format!("xz -1 -T2 {raw}\n");
        }
        bash += &format!(
            "files=(swarmseal_{v}.efi swarmseal_{v}_*.root.raw.xz swarmseal_{v}_*.root-verity.raw.xz)\n\
             sha256sum \"${{files[@]}}\" >SHA256SUMS\n\
             openssl dgst -sha256 -sign ../../k.key -out SHA256SUMS.sig SHA256SUMS\n\
             tar --format=ustar --owner=0 --group=0 --numeric-owner --mode=0644 --mtime=@1764374400 -cf ../swarmseal_{v}.tar SHA256SUMS SHA256SUMS.sig \"${{files[@]}}\"\n"
        );
        std::fs::write(p.join("bash.sh"), bash).unwrap();
        sh("bash -e bash.sh", p);
        let ours = std::fs::read(&packed.tar).unwrap();
        let theirs = std::fs::read(p.join(format!("bash/swarmseal_{v}.tar"))).unwrap();
        assert!(ours == theirs, "the archive differs from the bash one ({} and {} bytes)", ours.len(), theirs.len());
        let mut listed: Vec<String> = std::fs::read_dir(&packed.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        listed.sort();
        let mut want = vec![SUMS.to_string(), SIG.to_string()];
        want.extend(packed.manifest.files.iter().map(|(n, _)| n.clone()));
        want.sort();
        assert_eq!(listed, want);

        // No partitions of that version: refused, naming the label.
        let e = pack(&PackOptions { version: "7".into(), ..o.clone() }).unwrap_err();
        assert!(e.to_string().contains("labelled swarmseal_7"), "{e}");
        let e = pack(&PackOptions { version: "1_2".into(), ..o }).unwrap_err();
        assert!(e.to_string().contains("bad version"), "{e}");
    }
}
