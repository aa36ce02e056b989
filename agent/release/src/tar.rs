//! The release archive: POSIX ustar (IEEE Std 1003.1-1988 `ustar` header, 512-byte blocks),
//! regular files only, read as a stream ([`Reader`]: the agent parses an upload as it
//! arrives) and written ([`write`]: byte for byte what `tar --format=ustar --owner=0 --group=0
//! --numeric-owner --mode=0644 --mtime=@T -cf` (GNU tar) writes).

use std::io::{Read as _, Write as _};
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{io_err, ReleaseError};

const BLOCK: u64 = 512;
/// GNU tar's default record: 20 blocks; the archive is padded to a multiple of it.
const RECORD: u64 = 20 * BLOCK;

/// The tar stream: 512-byte blocks, counted against a size cap.
pub struct Reader<R> {
    r: R,
    consumed: u64,
    max: u64,
}

/// One member header.
pub struct Member {
    pub name: String,
    pub size: u64,
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

/// The header checksum: the sum of its bytes, the checksum field counted as spaces.
fn checksum(h: &[u8; 512]) -> u64 {
    h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum()
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Read an archive from `r`; more than `max` bytes is [`ReleaseError::TooLarge`].
    pub fn new(r: R, max: u64) -> Reader<R> {
        Reader { r, consumed: 0, max }
    }

    /// Fill `buf` completely; a short stream is [`ReleaseError::Invalid`], a failed read
    /// [`ReleaseError::Body`].
    async fn exact(&mut self, buf: &mut [u8]) -> Result<(), ReleaseError> {
        self.consumed += buf.len() as u64;
        if self.consumed > self.max {
            return Err(ReleaseError::TooLarge { max: self.max });
        }
        self.r.read_exact(buf).await.map(|_| ()).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ReleaseError::Invalid("the archive ends in the middle of a member (truncated upload?)".into()),
            _ => ReleaseError::Body(e.to_string()),
        })
    }

    /// The next member's header; `None` at the end-of-archive block (or a clean EOF).
    /// Errors: [`ReleaseError::Invalid`] (not ustar, not a regular file), `TooLarge`, `Body`.
    pub async fn next(&mut self) -> Result<Option<Member>, ReleaseError> {
        let mut h = [0u8; 512];
        // A clean end of the stream between members is taken as the end of the archive.
        let n = self.r.read(&mut h[..1]).await.map_err(|e| ReleaseError::Body(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        self.consumed += 1;
        self.exact(&mut h[1..]).await?;
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let bad = |m: &str| ReleaseError::Invalid(format!("not a ustar archive: {m} (make releases with `tar --format=ustar`)"));
        let stored = octal(&h[148..156]).ok_or_else(|| bad("unreadable header checksum"))?;
        if checksum(&h) != stored {
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
                return Err(ReleaseError::Invalid(format!("member `{}` is {what}; a release holds regular files only", name.escape_debug())));
            }
        }
        if self.consumed.saturating_add(size) > self.max {
            return Err(ReleaseError::TooLarge { max: self.max });
        }
        Ok(Some(Member { name, size }))
    }

    /// A small member, whole, in memory (at most `limit` bytes, else [`ReleaseError::Invalid`]).
    pub async fn small(&mut self, m: &Member, limit: u64) -> Result<Vec<u8>, ReleaseError> {
        if m.size > limit {
            return Err(ReleaseError::Invalid(format!("{} is {} bytes; at most {limit} expected", m.name, m.size)));
        }
        let mut v = vec![0u8; m.size as usize];
        self.exact(&mut v).await?;
        self.skip_padding(m.size).await?;
        Ok(v)
    }

    async fn skip_padding(&mut self, size: u64) -> Result<(), ReleaseError> {
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        let mut p = [0u8; 512];
        self.exact(&mut p[..pad as usize]).await
    }

    /// Stream a member to `out` (when given: the writer and its path, for errors) while hashing
    /// it; returns its SHA-256. A failed write is [`ReleaseError::Io`].
    pub async fn body<W: AsyncWrite + Unpin>(&mut self, m: &Member, mut out: Option<(&mut W, &Path)>) -> Result<[u8; 32], ReleaseError> {
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
    pub async fn drain(&mut self) {
        let mut buf = [0u8; 16 << 10];
        while self.consumed < self.max {
            match self.r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.consumed += n as u64,
            }
        }
    }
}

/// Write `field` as `width - 1` octal digits and a NUL (GNU tar's ustar numbers).
fn put_octal(h: &mut [u8; 512], at: usize, width: usize, v: u64) -> Result<(), String> {
    let s = format!("{v:0w$o}", w = width - 1);
    if s.len() != width - 1 {
        return Err(format!("{v} does not fit a {width}-byte ustar field"));
    }
    h[at..at + width - 1].copy_from_slice(s.as_bytes());
    h[at + width - 1] = 0;
    Ok(())
}

/// The ustar header of a regular file `name` (at most 100 bytes) of `size` bytes, mode 0644,
/// owner and group 0 without names, modified at `mtime` (seconds since the epoch).
fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512], String> {
    let mut h = [0u8; 512];
    if name.len() > 100 || name.contains('/') {
        return Err(format!("{name}: a release member name has at most 100 bytes and no `/` (ustar)"));
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h, 100, 8, 0o644)?;
    put_octal(&mut h, 108, 8, 0)?;
    put_octal(&mut h, 116, 8, 0)?;
    put_octal(&mut h, 124, 12, size)?;
    put_octal(&mut h, 136, 12, mtime)?;
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_octal(&mut h, 329, 8, 0)?;
    put_octal(&mut h, 337, 8, 0)?;
    let sum = checksum(&h);
    // Six digits, NUL, space.
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    Ok(h)
}

/// Write the ustar archive `out` of the regular files `names` in `dir`, in that order, as
/// `tar --format=ustar --owner=0 --group=0 --numeric-owner --mode=0644 --mtime=@mtime -cf`
/// does (two zero blocks at the end, padded to a 10240-byte record).
/// Errors: [`ReleaseError::Io`], [`ReleaseError::Pack`] (a name that ustar cannot hold).
pub fn write(out: &Path, dir: &Path, names: &[&str], mtime: u64) -> Result<(), ReleaseError> {
    let f = std::fs::File::create(out).map_err(io_err(out))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut written = 0u64;
    for name in names {
        let p = dir.join(name);
        let mut src = std::fs::File::open(&p).map_err(io_err(&p))?;
        let size = src.metadata().map_err(io_err(&p))?.len();
        w.write_all(&header(name, size, mtime).map_err(ReleaseError::Pack)?).map_err(io_err(out))?;
        let copied = std::io::copy(&mut (&mut src).take(size), &mut w).map_err(io_err(&p))?;
        if copied != size {
            return Err(ReleaseError::Pack(format!("{}: changed size while being archived", p.display())));
        }
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        w.write_all(&vec![0u8; pad as usize]).map_err(io_err(out))?;
        written += BLOCK + size + pad;
    }
    written += 2 * BLOCK;
    let total = written.div_ceil(RECORD) * RECORD;
    w.write_all(&vec![0u8; (total - written + 2 * BLOCK) as usize]).map_err(io_err(out))?;
    let f = w.into_inner().map_err(|e| ReleaseError::Io { path: out.to_path_buf(), source: e.into_error() })?;
    f.sync_all().map_err(io_err(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sh;

    #[test]
    fn the_archive_is_byte_for_byte_what_gnu_tar_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        // Sizes around the block and record boundaries; a name of exactly 100 bytes.
        let long = format!("{}.raw", "n".repeat(96));
        let files: Vec<(String, usize)> = vec![("a".into(), 0), ("b.efi".into(), 511), ("c".into(), 512), ("d".into(), 9_729), (long, 70_001)];
        for (i, (n, len)) in files.iter().enumerate() {
            std::fs::write(p.join(n), (0..*len).map(|x| (x * 7 + i) as u8).collect::<Vec<_>>()).unwrap();
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        write(&p.join("ours.tar"), p, &names, 1_764_374_400).unwrap();
        sh(&format!("tar --format=ustar --owner=0 --group=0 --numeric-owner --mode=0644 --mtime=@1764374400 -cf gnu.tar {}", names.join(" ")), p);
        let (ours, gnu) = (std::fs::read(p.join("ours.tar")).unwrap(), std::fs::read(p.join("gnu.tar")).unwrap());
        assert_eq!(ours.len(), gnu.len());
        if let Some(at) = ours.iter().zip(&gnu).position(|(a, b)| a != b) {
            panic!("differs from GNU tar at byte {at} (block {}, offset {})", at / 512, at % 512);
        }
        // And our reader reads it back.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut r = Reader::new(&ours[..], u64::MAX);
        let mut seen = Vec::new();
        rt.block_on(async {
            while let Some(m) = r.next().await.unwrap() {
                r.body::<tokio::io::Sink>(&m, None).await.unwrap();
                seen.push((m.name, m.size as usize));
            }
        });
        assert_eq!(seen, files);
        let too_long = format!("x{}", files[4].0);
        std::fs::write(p.join(&too_long), b"x").unwrap();
        let e = write(&p.join("x.tar"), p, &[&too_long], 0).unwrap_err();
        assert!(e.to_string().contains("at most 100 bytes"), "{e}");
    }
}
