//! Atomic file writes: a reader sees the old content or the new, never a part,
//! and a crash leaves at most a temp file `.<name>.tmp-<pid>` beside the target.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The temp file [`write_atomic`] writes before the rename: `.<name>.tmp-<pid>` in the
/// target's directory. A file made there beforehand (a reservation of disk room, e.g.
/// `keystore::Keystore::reserve`) is overwritten in place, so the write needs no new blocks;
/// a leftover of a dead process is recognised by the `.tmp-<pid>` suffix.
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    dir.join(format!(".{}.tmp-{}", path.file_name().and_then(|s| s.to_str()).unwrap_or("f"), std::process::id()))
}

/// Write `bytes` to `path` atomically: temp file [`temp_path`] (created with `mode`, an
/// existing one reused without truncation, then cut to `bytes.len()`), `fsync` it, `rename(2)`
/// over `path`, `fsync` the directory.
///
/// Errors: the `io::Error` of the step that failed (`ENOSPC` while writing or syncing the
/// temp file, `EACCES`, `EXDEV`…), with the OS error kind intact; the caller names the path.
/// On every failure before the rename the temp file is removed, so a full disk keeps no
/// partial file and `path` keeps its old content. Blocking: from async code call it through
/// `tokio::task::spawn_blocking`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_path(path);
    let written = (|| {
        let mut f: File = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.set_len(bytes.len() as u64)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// `fsync` a directory, making a rename or a new entry in it durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("swarmseal-common-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_content_with_mode_and_reuses_a_reserved_temp_file() {
        let d = tmpdir("basic");
        let p = d.join("slot.json");
        write_atomic(&p, b"first version, long", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        // A reservation bigger than the new content: cut to size, not left padded.
        std::fs::write(temp_path(&p), vec![0u8; 4096]).unwrap();
        write_atomic(&p, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(entries(&d), vec!["slot.json"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_rename_removes_the_temp_file() {
        let d = tmpdir("rename");
        // The target is a non-empty directory: rename(2) fails (EISDIR/ENOTEMPTY).
        let p = d.join("target");
        std::fs::create_dir_all(p.join("x")).unwrap();
        assert!(write_atomic(&p, b"data", 0o600).is_err());
        assert_eq!(entries(&d), vec!["target"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// ENOSPC for real: a 64 KiB tmpfs. The write fails with the OS's error, the old content
    /// stays, no temp file is left. Needs root (mount); not being able to mount is a failure.
    #[test]
    fn enospc_on_a_full_tmpfs_keeps_the_old_file_and_leaves_no_temp() {
        let d = tmpdir("enospc");
        let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&d).status().expect("mount(8) runs");
        assert!(st.success(), "cannot mount a tmpfs on {} ({st}): this test needs root", d.display());
        let r = || {
            let p = d.join("keys.json");
            write_atomic(&p, b"old", 0o600).unwrap();
            let e = write_atomic(&p, &vec![7u8; 256 << 10], 0o600).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            assert_eq!(std::fs::read(&p).unwrap(), b"old");
            assert_eq!(entries(&d), vec!["keys.json"]);
            // Room again: the next write goes through.
            write_atomic(&p, b"new", 0o600).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"new");
        };
        let res = std::panic::catch_unwind(r);
        let _ = std::process::Command::new("umount").arg(&d).status();
        let _ = std::fs::remove_dir_all(&d);
        if let Err(p) = res {
            std::panic::resume_unwind(p);
        }
    }
}
