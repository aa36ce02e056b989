//! Test fixtures shared by the workspace's integration tests (a dev-dependency only): a real
//! software TPM (swtpm), a real dockerd in a network namespace of its own, a private LAN for
//! several of them, a small tmpfs that fills up, free ports, a seeded RNG. Each fixture is
//! private to one test and torn down on drop.
//!
//! A missing dependency (swtpm, dockerd, unshare) is a test failure, never a skip.
//! Not `forbid(unsafe_code)` like the library crates: [`cmd`] needs `pre_exec`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod sbom;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Ports for children to listen on come from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default). A port taken from `bind(0)` and
/// handed to a child is in that range, and any outgoing connection of a parallel test (to
/// dockerd, swtpm, a proxy) can take it as its local port before the child binds it: CI saw
/// swtpm fail with "Address already in use" that way.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A free loopback TCP port for a child process to listen on (a proxy, QEMU, a server),
/// never handed out twice in this process.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// `n` consecutive free loopback ports, the first returned; never handed out twice in this
/// process (parallel tests would otherwise race for the same ports). The search starts at a
/// point derived from the process id and the clock, so two test processes rarely meet.
fn free_ports(n: u16) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let span = PORTS.end - PORTS.start;
    let start = ((std::process::id().wrapping_mul(7919) ^ nanos) % u32::from(span)) as u16;
    for i in 0..span {
        let p = PORTS.start + (start + i) % span;
        if p + n > PORTS.end {
            continue;
        }
        let ports = p..p + n;
        if ports.clone().any(|q| given.contains(&q)) {
            continue;
        }
        if ports.clone().all(|q| TcpListener::bind(("127.0.0.1", q)).is_ok()) {
            given.extend(ports);
            return p;
        }
    }
    panic!("no {n} free consecutive ports in {PORTS:?}");
}

/// A swtpm (TPM 2.0) on two loopback ports with its own state dir.
pub struct Swtpm {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Swtpm {
    /// Start a fresh TPM (new state: a "new machine").
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Swtpm { dir, port: 0, child: None };
        s.spawn();
        s
    }

    /// Start a fresh TPM provisioned as a maker would: `swtpm_setup --create-ek-cert` writes
    /// the EK and its certificate (signed by swtpm-localca) into NV 0x01c00002 (RSA) and the ECC one.
    pub fn start_with_ek_cert() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        let out = cmd("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(dir.path())
            .output()
            .expect("swtpm_setup must be installed (apt-get install swtpm-tools)");
        assert!(out.status.success(), "swtpm_setup --create-ek-cert failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut s = Swtpm { dir, port: 0, child: None };
        s.spawn();
        s
    }

    /// Start swtpm on a fresh port pair. A pair can still be taken between the check and
    /// swtpm's bind (another test process): then swtpm exits at once and a new pair is tried.
    fn spawn(&mut self) {
        for _attempt in 0..5 {
            let port = free_ports(2);
            let mut child = cmd("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", self.dir.path().display()))
                .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
                .args(["--ctrl", &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1)])
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("swtpm must be installed (apt-get install swtpm swtpm-tools); run scripts/install-deps");
            // Listening ports alone do not prove they are swtpm's: it must still be running.
            let t = Instant::now();
            let listening = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            let exited = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                if listening(port) && listening(port + 1) {
                    std::thread::sleep(Duration::from_millis(50));
                    break child.try_wait().ok().flatten();
                }
                assert!(t.elapsed() < Duration::from_secs(10), "swtpm did not listen on ports {port}/{} within 10 s", port + 1);
                std::thread::sleep(Duration::from_millis(20));
            };
            if let Some(status) = exited {
                eprintln!("swtpm on ports {port}/{} exited at start ({status}); trying another pair", port + 1);
                continue;
            }
            self.port = port;
            self.child = Some(child);
            return;
        }
        panic!("swtpm did not start on any of 5 port pairs (see its messages above)");
    }

    /// TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Power cycle: stop swtpm and start it again on the same state. PCRs reset
    /// to their power-on values (a reboot of the same machine).
    pub fn power_cycle(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Power loss: SIGKILL, no state saved beyond what swtpm already wrote. `start_again` brings
    /// it back (new ports: use [`Swtpm::tcti`] again).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a stopped or killed TPM again on its state (PCRs at their power-on values).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "swtpm is still running");
        self.spawn();
    }

    /// Process id of the running swtpm.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether swtpm is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // swtpm saves its state on SIGTERM.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Extend `pcr` in the sha256 bank with the SHA-256 of `what` (a simulated boot-chain measurement).
    pub fn extend(&self, pcr: u8, what: &str) {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(what.as_bytes()).unwrap();
        let digest = String::from_utf8(Command::new("sha256sum").arg(f.path()).output().unwrap().stdout).unwrap();
        let digest = digest.split_whitespace().next().unwrap().to_string();
        self.tpm2(&["pcrextend", &format!("{pcr}:sha256={digest}")]);
    }

    /// Run a tpm2-tools command against this TPM; panics on failure; returns stdout.
    pub fn tpm2(&self, args: &[&str]) -> String {
        let out = cmd(format!("tpm2_{}", args[0]))
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .expect("tpm2-tools must be installed (apt-get install tpm2-tools)");
        assert!(out.status.success(), "tpm2_{} failed: {}", args[0], String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// What the kernel's resource manager (`/dev/tpmrm0`, the appliance's TCTI) does when a
    /// process dies: flush the transient objects and sessions it left loaded. swtpm has no
    /// resource manager, so a test that kills a command (`kill -9`) and then runs the next one
    /// on the same TPM without a power cycle calls this in between.
    pub fn flush_leftovers(&self) {
        self.tpm2(&["flushcontext", "-t"]);
        self.tpm2(&["flushcontext", "-l"]);
    }

    /// Number of transient object handles loaded in the TPM.
    pub fn transient_handles(&self) -> usize {
        self.tpm2(&["getcap", "handles-transient"]).lines().filter(|l| l.trim_start().starts_with("- 0x")).count()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private LAN for several dockerds: a bridge in a network namespace of its
/// own, held open by a sleeping process. Each dockerd started with
/// [`Dockerd::start_on`] plugs a veth into it, so the managers reach each
/// other on every port (2377, 7946, 4789) while the host's own interfaces,
/// routes and iptables stay untouched. Dropping the LAN ends that process,
/// and the kernel removes the namespace with its bridge; drop it after the
/// dockerds on it.
pub struct Lan {
    child: Child,
    /// The LAN's /24, e.g. `10.199.0`; members get `.1`, `.2`, …
    pub prefix: String,
    members: AtomicU32,
}

impl Lan {
    pub fn new() -> Lan {
        let child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", "set -e; ip link set lo up; ip link add br0 type bridge; ip link set br0 up; exec sleep infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) must be installed");
        let lan = Lan { child, prefix: "10.199.0".into(), members: AtomicU32::new(0) };
        wait_until("the LAN bridge", Duration::from_secs(10), || lan.ip(&["link", "show", "br0"]).status.success());
        lan
    }

    /// `/proc/<pid>/ns/net` of the LAN's namespace.
    pub fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.child.id())
    }

    fn ip(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter").arg(format!("--net={}", self.netns())).arg("ip").args(args).output().expect("nsenter (util-linux) must be installed")
    }

    fn next_addr(&self) -> String {
        format!("{}.{}", self.prefix, self.members.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real dockerd in its own network namespace (so several can run at once
/// with swarm mode), reachable on a unix socket in a temp dir.
pub struct Dockerd {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub socket: PathBuf,
    /// Address of the veth interface inside the namespace (swarm advertise address).
    pub addr: String,
    child: Option<Child>,
    n: u32,
    /// The LAN's namespace (`/proc/<pid>/ns/net`) when on a [`Lan`].
    lan: Option<String>,
    /// Spawns so far: each gets its own name for the LAN side of the veth
    /// (the previous namespace's may still be going away).
    spawns: u32,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 200) * 10;
        let addr = format!("10.{}.{}.1", 200 + (n / 250) % 50, n % 250);
        Dockerd::start_with(n, addr, None)
    }

    /// A dockerd whose namespace is plugged into `lan` (next free address on it).
    pub fn start_on(lan: &Lan) -> Dockerd {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 200) * 10;
        Dockerd::start_with(n, lan.next_addr(), Some(lan.netns()))
    }

    fn start_with(n: u32, addr: String, lan: Option<String>) -> Dockerd {
        // Short path: unix socket paths are limited to 108 bytes.
        let tmp = tempfile::Builder::new().prefix("ssd").tempdir_in("/tmp").unwrap();
        let dir = tmp.path().to_path_buf();
        let mut d = Dockerd { socket: dir.join("docker.sock"), dir, _tmp: tmp, addr, child: None, n, lan, spawns: 0 };
        d.spawn();
        d
    }

    /// The engine's network namespace (`/proc/PID/ns/net`): a socket bound there
    /// is on the engine's own loopback.
    pub fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.child.as_ref().expect("dockerd is running").id())
    }

    /// `unix://` URL of the engine socket.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn spawn(&mut self) {
        let d = &self.dir;
        self.spawns += 1;
        // Alone: a veth pair inside the namespace, for an address to advertise.
        // On a LAN: the veth's other end goes into the LAN's namespace, onto its bridge.
        let link = match &self.lan {
            None => "ip link add ss0 type veth peer name ss1; ip link set ss1 up".to_string(),
            Some(ns) => {
                let peer = format!("l{}s{}", self.n, self.spawns);
                format!("ip link add ss0 type veth peer name {peer} netns {ns}; nsenter --net={ns} ip link set {peer} master br0 up")
            }
        };
        let script = format!(
            "set -e; ip link set lo up; {link}; ip addr add {addr}/24 dev ss0; ip link set ss0 up; \
             exec dockerd --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock --pidfile {d}/docker.pid \
             --bip 172.31.{b}.1/24 --default-address-pool base=10.250.0.0/16,size=24 --log-level warn",
            addr = self.addr,
            d = d.display(),
            b = self.n % 250,
        );
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux) must be installed");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if self.docker(&["version", "--format", "{{.Server.Version}}"]).status.success() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("dockerd exited ({st}) — log:\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("dockerd did not answer within 60 s — log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Run the real docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").arg("-H").arg(self.host()).args(args).output().expect("docker CLI must be installed")
    }

    /// Run the docker CLI, assert success, return trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Graceful engine restart (swarm with autolock comes back `locked`).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Graceful stop (SIGTERM, then wait; killed after 60 s): a manager shut down.
    pub fn stop(&mut self) {
        self.signal_stop();
        if let Some(mut c) = self.child.take() {
            let t = Instant::now();
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(60) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Power cut: SIGKILL dockerd and its containerd (dockerd's graceful stop of a swarm
    /// manager takes 6–25 s; a power cut is what a reboot test needs anyway).
    pub fn power_cut(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Everything in the engine's network namespace (dockerd, containerd, shims) dies at once.
            let ns = std::fs::read_link(format!("/proc/{}/ns/net", c.id())).ok();
            let pids: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().chars().all(|ch| ch.is_ascii_digit()))
                .filter(|e| ns.is_some() && std::fs::read_link(e.path().join("ns/net")).ok() == ns)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            if !pids.is_empty() {
                let _ = Command::new("kill").arg("-KILL").args(&pids).status();
            }
            let _ = c.kill();
            let _ = c.wait();
            // The namespace's processes are gone once none of them is left.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) && pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists() && std::fs::read_link(format!("/proc/{p}/ns/net")).ok() == ns) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("grep ' {}/' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l", self.dir.display()))
            .status();
        // A reboot empties /run, where the engine's exec root and pid files live.
        let _ = std::fs::remove_dir_all(self.dir.join("exec"));
        let _ = std::fs::remove_file(self.dir.join("docker.pid"));
    }

    /// Start a stopped engine again on the same data (swarm with autolock comes back `locked`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "dockerd is still running");
        self.spawn();
    }

    /// Send SIGTERM without waiting: several engines then stop side by side (drop waits).
    pub fn signal_stop(&self) {
        if self.child.is_some() {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("docker.pid")) {
                let _ = Command::new("kill").arg("-TERM").arg(pid.trim()).status();
            }
        }
    }

    /// `docker swarm init --autolock` through the CLI; returns the unlock key.
    pub fn swarm_init_autolock(&self) -> String {
        self.docker_ok(&["swarm", "init", "--autolock", "--advertise-addr", &self.addr]);
        self.docker_ok(&["swarm", "unlock-key", "-q"])
    }

    /// `Swarm.LocalNodeState` from `docker info`.
    pub fn swarm_state(&self) -> String {
        self.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
    }

    /// A tiny image made with `docker import` from the host's static busybox.
    pub fn import_busybox(&self, tag: &str) {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static must be installed");
        for l in ["sh", "cat", "echo", "sleep", "ls", "id", "true", "wc", "head", "yes"] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(l));
        }
        let tar = self.dir.join("rootfs.tar");
        let st = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap();
        assert!(st.success());
        self.docker_ok(&["import", "--change", "CMD [\"/bin/sh\"]", tar.to_str().unwrap(), tag]);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Leave swarm state alone; just stop the engine and unmount what it left.
        self.stop();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep ' {}' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .status();
    }
}

/// A command whose child inherits only stdin, stdout and stderr. libtss2's swtpm TCTI opens
/// its socket without O_CLOEXEC: a child started while another test of the same binary holds
/// a TPM connection would keep that connection open after the test closed it — and swtpm
/// serves one connection at a time, so that test's next connection would hang. All other
/// descriptors are marked close-on-exec in the child (close_range(2), CLOSE_RANGE_CLOEXEC;
/// std's own exec-error pipe is close-on-exec already).
pub fn cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    // SAFETY: only an async-signal-safe syscall runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */);
            Ok(())
        });
    }
    c
}

/// A running `swarmseal agent` (or `swarmseal proxy`); killed if a failing test drops it, so
/// no agent outlives its test holding a port and a deleted state dir.
pub struct AgentProcess(pub Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A small tmpfs mounted on a temp dir (a disk that fills up); unmounted on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `size`: tmpfs size option (`256k`, `1m`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(dir.path()).status().expect("mount must be installed");
        assert!(st.success(), "mount -t tmpfs failed (tests run as root)");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill every free block with `filler` (written until ENOSPC).
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0xa5u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        // Small files need inodes and partial blocks too: keep writing tiny ones until refused.
        for i in 0..64 {
            if std::fs::write(self.path().join(format!("filler-{i}")), b"x").is_err() {
                break;
            }
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path().join("filler")).unwrap();
        while f.write_all(b"x").is_ok() {}
    }

    /// Free what [`Tmpfs::fill`] took.
    pub fn unfill(&self) {
        for e in std::fs::read_dir(self.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("filler") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Deterministic pseudo-random numbers (xorshift64*) for fault points: a printed seed replays a run.
pub struct Rng(u64);

impl Rng {
    /// Seed from `SWARMSEAL_FAULT_SEED` if set, else `default`; printed with `what`.
    pub fn from_env(what: &str, default: u64) -> Rng {
        let seed = std::env::var("SWARMSEAL_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        eprintln!("{what}: fault seed {seed} (replay with SWARMSEAL_FAULT_SEED={seed})");
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Whether any file under `dir` contains `needle` (a plaintext key left behind).
pub fn grep_dir(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            grep_dir(&p, needle)
        } else {
            std::fs::read(&p).map(|b| b.windows(needle.len()).any(|w| w == needle)).unwrap_or(false)
        }
    })
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
