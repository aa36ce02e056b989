//! The update path's stand-ins for the integration tests: image slots whose
//! `systemd-sysupdate` and `systemctl reboot` are scripts (writing partitions needs the
//! appliance), the socket-activated `swarmseal update apply` service, and releases laid out
//! as `scripts/build-image --release` does, signed by keys from `scripts/make-keys`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::{free_port, swarmseal_bin};

/// A manager's simulated image slots: what `systemd-sysupdate` (a stand-in: it writes the
/// next os-release; writing partitions needs the appliance) and `systemctl reboot` (a flag
/// the test turns into a real reboot of engine + agent + TPM) did.
pub struct Slots {
    pub dir: PathBuf,
}

impl Slots {
    pub fn new(dir: PathBuf, version: &str) -> Slots {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("os-release"), format!("IMAGE_ID=swarmseal\nIMAGE_VERSION={version}\n")).unwrap();
        let script = |name: &str, body: String| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho \"$@\" >>{}/{name}.log\n{body}", dir.display())).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        };
        script("sysupdate", format!("[ \"$1\" = update ] && printf 'IMAGE_ID=swarmseal\\nIMAGE_VERSION=%s\\n' \"$2\" >{}/os-release.next\nexit 0\n", dir.display()));
        script("systemctl", format!("[ \"$1\" = reboot ] && touch {}/reboot-requested\nexit 0\n", dir.display()));
        Slots { dir }
    }
    pub fn version(&self) -> String {
        std::fs::read_to_string(self.dir.join("os-release")).unwrap().lines().find_map(|l| l.strip_prefix("IMAGE_VERSION=").map(str::to_string)).unwrap()
    }
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
    /// `systemctl reboot` was called; clears the request.
    pub fn take_reboot(&self) -> bool {
        std::fs::remove_file(self.dir.join("reboot-requested")).is_ok()
    }
    /// The reboot lands in the slot sysupdate wrote.
    pub fn switch(&self) {
        std::fs::rename(self.dir.join("os-release.next"), self.dir.join("os-release")).unwrap();
    }
}

/// What systemd's socket activation (`Accept=yes`) does for `swarmseal-update.socket`: each
/// connection runs `swarmseal update apply --stdin-request` (root, the real binary) with the
/// connection as stdin and stdout.
pub fn serve_apply(socket: PathBuf, args: Vec<String>) {
    let l = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let out = conn.try_clone().unwrap();
            let st = Command::new(swarmseal_bin()).args(&args).args(["update", "apply", "--stdin-request"]).stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(conn))).stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(out))).status();
            eprintln!("update apply: {st:?}");
        }
    });
}

/// A release tar as `scripts/build-image --release` lays it out (small stand-in payloads),
/// SHA256SUMS signed with `keys/pcr-signing.key`.
pub fn make_release(dir: &Path, version: &str, keys: &Path) -> PathBuf {
    let rel = dir.join(version);
    std::fs::create_dir_all(&rel).unwrap();
    let files = [format!("swarmseal_{version}.efi"), format!("swarmseal_{version}_7f3c1a52-5b1e-4c6e-9d7a-0c2b4e6f8a10.root.raw"), format!("swarmseal_{version}_2b8d9e41-3c5f-4a7b-8e6d-1f0a9c3b5d72.root-verity.raw")];
    for (i, f) in files.iter().enumerate() {
        std::fs::write(rel.join(f), format!("{version} payload {i}\n").repeat(1000)).unwrap();
    }
    let sums = Command::new("sha256sum").args(&files).current_dir(&rel).output().unwrap();
    assert!(sums.status.success());
    std::fs::write(rel.join("SHA256SUMS"), &sums.stdout).unwrap();
    let st = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(keys.join("pcr-signing.key")).args(["-out", "SHA256SUMS.sig", "SHA256SUMS"]).current_dir(&rel).status().unwrap();
    assert!(st.success(), "openssl dgst -sign");
    let tar = dir.join(format!("swarmseal_{version}.tar"));
    let st = Command::new("tar").arg("--format=ustar").arg("-cf").arg(&tar).arg("-C").arg(&rel).args(["SHA256SUMS", "SHA256SUMS.sig"]).args(&files).status().unwrap();
    assert!(st.success(), "tar");
    tar
}

/// `make_release`'s release of `version` with its second file (the root image) replaced by
/// `len` bytes from `seed`, summed, signed and archived again in the same order (the file names
/// are whatever the release format says: read from its SHA256SUMS).
pub fn big_release(dir: &Path, version: &str, keys: &Path, len: usize, seed: u8) -> PathBuf {
    let tar = make_release(dir, version, keys);
    let rel = dir.join(version);
    let sums = std::fs::read_to_string(rel.join("SHA256SUMS")).unwrap();
    let names: Vec<String> = sums.lines().filter_map(|l| l.split_whitespace().nth(1)).map(|n| n.trim_start_matches('*').to_string()).collect();
    let mut x = u32::from(seed) | 1;
    let body: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(rel.join(&names[1]), body).unwrap();
    let list = names.join(" ");
    let o = Command::new("sh")
        .arg("-ec")
        .arg(format!("sha256sum {list} > SHA256SUMS && openssl dgst -sha256 -sign {} -out SHA256SUMS.sig SHA256SUMS && tar --format=ustar -cf {} SHA256SUMS SHA256SUMS.sig {list}", keys.join("pcr-signing.key").display(), tar.display()))
        .current_dir(&rel)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tar
}

pub fn make_keys(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-keys");
    let o = Command::new(script).arg(dir).output().unwrap();
    assert!(o.status.success(), "scripts/make-keys: {}", String::from_utf8_lossy(&o.stderr));
}

/// How long a [`Fault::Cut`] holds the connection open, silent, before it closes it.
pub const CUT_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// What the forwarder does once an upload passed its byte count.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Close both connections (a cut link), after a pause of [`CUT_PAUSE`] in which the
    /// receiver consumes what was forwarded (what sits in socket and TLS buffers at a cut is
    /// lost to it, as on a real link; the pause makes the held offset close to N under load).
    Cut,
    /// `kill -9` the agent (`pid`), then close: once a `*.partial` folder under `staging`
    /// holds a non-empty file (at most [`KILL_WAIT`] after the byte count), so the kill
    /// lands in an upload the agent has begun to keep, however slow the host — bytes
    /// forwarded may still sit in socket and TLS buffers.
    Kill { pid: u32, staging: PathBuf },
    /// Stop forwarding the upload (the connection stays open, silent) for [`STALL_PAUSE`]:
    /// longer than the agent's idle limit, so the agent answers and keeps what it has.
    Stall,
}

/// The longest a [`Fault::Kill`] waits for the agent to hold part of the upload on disk.
pub const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The partial uploads (`*.partial` folders) under the staging dir.
pub fn partials(staging: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(staging).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".partial")).collect()).unwrap_or_default()
}

/// Whether a partial upload under `staging` ([`partials`]) holds a non-empty file.
pub fn holds_partial(staging: &Path) -> bool {
    partials(staging).iter().any(|d| std::fs::read_dir(d).is_ok_and(|rd| rd.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0))))
}

/// How long a [`Fault::Stall`] holds the upload: the agent's 60 s idle limit and a margin.
pub const STALL_PAUSE: std::time::Duration = std::time::Duration::from_secs(75);

/// A TCP forwarder to the proxy that, when armed, applies its fault to the first connection
/// whose client has sent more than N bytes (only an upload does; TLS bytes, so N is close to
/// the tar offset). Each connection runs in its own threads until either side closes.
/// Its port comes from `free_port()`.
pub struct Forwarder {
    pub port: u16,
    armed: Arc<Mutex<Option<(u64, Fault)>>>,
}

impl Forwarder {
    pub fn start(upstream: u16) -> Forwarder {
        let port = free_port();
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let armed: Arc<Mutex<Option<(u64, Fault)>>> = Arc::default();
        let a = armed.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                let a = a.clone();
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, server);
                    let mut buf = [0u8; 16 << 10];
                    let mut sent = 0u64;
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        sent += n as u64;
                        let fault = {
                            let mut g = a.lock().unwrap();
                            match *g {
                                Some((at, _)) if sent > at => g.take().map(|(_, f)| f),
                                _ => None,
                            }
                        };
                        if let Some(f) = fault {
                            eprintln!("forwarder: {f:?} after {sent} bytes of the upload");
                            match f {
                                Fault::Kill { pid, staging } => {
                                    let _ = to.write_all(&buf[..n]);
                                    let t = std::time::Instant::now();
                                    while !holds_partial(&staging) && t.elapsed() < KILL_WAIT {
                                        std::thread::sleep(std::time::Duration::from_millis(20));
                                    }
                                    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
                                }
                                Fault::Cut => {
                                    let _ = to.write_all(&buf[..n]);
                                    std::thread::sleep(CUT_PAUSE);
                                }
                                Fault::Stall => {
                                    let _ = to.write_all(&buf[..n]);
                                    std::thread::sleep(STALL_PAUSE);
                                }
                            }
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            return;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        Forwarder { port, armed }
    }

    pub fn arm(&self, at: u64, fault: Fault) {
        *self.armed.lock().unwrap() = Some((at, fault));
    }

    pub fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}
