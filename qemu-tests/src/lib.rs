//! Harness for the QEMU scenario tests: one [`Vm`] is one manager (a VM folder
//! of `scripts/run-qemu`: disk overlay, firmware variables, swtpm state, the
//! operator's admin bundle, serial log). Everything a scenario asserts goes
//! through what an operator has: the docker CLI through the mutual-TLS proxy,
//! the agent's `/swarmseal/v1/` endpoints, and the serial console.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use swarmseal_common::status::{Slot, Status};

pub mod fleet;
pub mod ntp;

pub type Check<T = ()> = Result<T, String>;

/// Fail the current check with a message (a scenario is a list of these).
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond { return Err(format!($($msg)+)); }
    };
}

/// Where things are: the repository, the suite's working folder, and the
/// suite's own copy of the image (a rebuild of `build/` during a run must not
/// change the disk under a VM that is halfway through its story).
#[derive(Clone, Debug)]
pub struct Suite {
    pub repo: PathBuf,
    pub work: PathBuf,
    pub image: PathBuf,
    pub uki: PathBuf,
}

impl Suite {
    /// Check the host tools and the built image; copy the image. Missing
    /// pieces are an error (the suite fails, it never skips).
    pub fn prepare() -> Check<Suite> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo").to_path_buf();
        let mut missing = Vec::new();
        for tool in ["qemu-system-x86_64", "qemu-img", "swtpm", "docker", "curl", "python3", "socat", "jq", "sbsign", "sbattach"] {
            if !on_path(tool) {
                missing.push(format!("`{tool}` not on PATH"));
            }
        }
        for f in ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"] {
            if !Path::new(f).exists() {
                missing.push(format!("{f} missing (package ovmf)"));
            }
        }
        // SWARMSEAL_IMAGE_DIR: boot another build (scripts/test-fleet's v1); default build/.
        let built = std::env::var_os("SWARMSEAL_IMAGE_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("build"));
        for f in ["swarmseal.raw", "swarmseal.efi"] {
            if !built.join(f).exists() {
                missing.push(format!("{}/{f} missing: build the image first (scripts/build-image)", built.display()));
            }
        }
        if !missing.is_empty() {
            return Err(format!("cannot run the QEMU scenarios:\n  - {}\n(scripts/install-deps installs the tools)", missing.join("\n  - ")));
        }
        let work = std::env::var_os("SWARMSEAL_QEMU_TESTS_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target/qemu-tests"));
        let imgdir = work.join("image");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&imgdir).map_err(|e| format!("{}: {e}", imgdir.display()))?;
        let image = imgdir.join("swarmseal.raw");
        let uki = imgdir.join("swarmseal.efi");
        for (from, to) in [(built.join("swarmseal.raw"), &image), (built.join("swarmseal.efi"), &uki)] {
            run(Command::new("cp").arg("--sparse=always").arg(&from).arg(to))?;
        }
        Ok(Suite { repo, work, image, uki })
    }

    /// A release tar named by an environment variable (set by `scripts/test-fleet`). Unset or
    /// missing is an error: the fleet scenarios fail, they never skip.
    ///
    /// With `SWARMSEAL_RELEASES_READY=FILE` (scripts/test, whose second lane of scenarios boots
    /// while the releases are still being built beside it) this first waits up to 60 min for
    /// the release's own marker `<tar>.ready` (written as soon as that release is built), or
    /// for FILE: `ok` once every release is built, `failed: …` if a build failed.
    pub fn release(&self, var: &str) -> Check<(PathBuf, String)> {
        if let (Some(ready), Some(tar)) = (std::env::var_os("SWARMSEAL_RELEASES_READY").map(PathBuf::from), std::env::var_os(var)) {
            let mine = PathBuf::from(format!("{}.ready", PathBuf::from(tar).display()));
            let t = std::time::Instant::now();
            let mut said = false;
            loop {
                if mine.exists() {
                    break;
                }
                match std::fs::read_to_string(&ready) {
                    Ok(s) if s.trim() == "ok" => break,
                    Ok(s) if !s.trim().is_empty() => return Err(format!("the releases could not be built: {}", s.trim())),
                    _ if t.elapsed() > std::time::Duration::from_secs(3600) => return Err(format!("{}: not built within 60 min", mine.display())),
                    _ => {
                        if !said {
                            println!("    waiting for the release ({} is written once scripts/test has built it)", mine.display());
                            said = true;
                        }
                        std::thread::sleep(std::time::Duration::from_secs(5));
                    }
                }
            }
            if said {
                println!("    the release was ready after {:.0} s of waiting", t.elapsed().as_secs_f64());
            }
        }
        let path = std::env::var_os(var).map(PathBuf::from).ok_or_else(|| format!("{var} is not set: run the fleet scenarios with scripts/test-fleet (it builds the releases)"))?;
        ensure!(path.is_file(), "{var}={}: no such release", path.display());
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let version = name.strip_prefix("swarmseal_").and_then(|n| n.strip_suffix(".tar")).ok_or_else(|| format!("{var}={}: not a swarmseal_V.tar", path.display()))?;
        Ok((path.clone(), version.to_string()))
    }

    pub fn run_qemu(&self) -> PathBuf {
        self.repo.join("scripts/run-qemu")
    }

    /// A copy of the UKI whose `.cmdline` carries one extra word: the same OS, a
    /// different boot chain (systemd-stub measures `.cmdline` into PCR 11), which
    /// the fleet's PCR key did not sign. Signed again for Secure Boot with the
    /// fleet's key (`SWARMSEAL_KEYS`, default keys/: what build-image signed with),
    /// so the firmware runs it and the TPM policy is what refuses it.
    pub fn changed_uki(&self, word: &str) -> Check<PathBuf> {
        let mut pe = std::fs::read(&self.uki).map_err(|e| format!("{}: {e}", self.uki.display()))?;
        let old = append_to_cmdline(&mut pe, word)?;
        let dir = self.work.join("image");
        let (unsigned, out) = (dir.join("swarmseal-changed.unsigned.efi"), dir.join("swarmseal-changed.efi"));
        std::fs::write(&unsigned, &pe).map_err(|e| e.to_string())?;
        let keys = std::env::var_os("SWARMSEAL_KEYS").map(PathBuf::from).unwrap_or_else(|| self.repo.join("keys"));
        run(Command::new("sbattach").arg("--remove").arg(&unsigned))?;
        run(Command::new("sbsign").arg("--key").arg(keys.join("secure-boot.key")).arg("--cert").arg(keys.join("secure-boot.crt")).arg("--output").arg(&out).arg(&unsigned))?;
        println!("    changed UKI {}: .cmdline {old:?} + {word:?}, Secure Boot signature renewed with {}", out.display(), keys.display());
        Ok(out)
    }
}

/// Append ` word` to the `.cmdline` section of a PE image in place: the
/// section's raw data is padded to the file alignment, so a short word fits
/// there; only the section's VirtualSize grows. (`objcopy --update-section`
/// keeps a PE section's old size and silently cuts the new text.)
pub fn append_to_cmdline(pe: &mut [u8], word: &str) -> Check<String> {
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
    ensure!(pe.len() > 0x40 && &pe[..2] == b"MZ", "not a PE image");
    let coff = u32_at(pe, 0x3c) + 4;
    ensure!(pe.get(coff - 4..coff) == Some(&b"PE\0\0"[..]), "no PE signature");
    let sections = u16_at(pe, coff + 2);
    let table = coff + 20 + u16_at(pe, coff + 16);
    for i in 0..sections {
        let h = table + 40 * i;
        if &pe[h..h + 8] != b".cmdline" {
            continue;
        }
        let (vsize, raw_size, raw_at) = (u32_at(pe, h + 8), u32_at(pe, h + 16), u32_at(pe, h + 20));
        let old = String::from_utf8_lossy(&pe[raw_at..raw_at + vsize.min(raw_size)]).trim_end_matches(['\0', ' ', '\n']).to_string();
        let new = format!("{old} {word}");
        ensure!(new.len() <= raw_size, ".cmdline has room for {raw_size} bytes, {} needed", new.len());
        pe[raw_at..raw_at + raw_size].fill(0);
        pe[raw_at..raw_at + new.len()].copy_from_slice(new.as_bytes());
        pe[h + 8..h + 12].copy_from_slice(&(new.len() as u32).to_le_bytes());
        return Ok(old);
    }
    Err("the UKI has no .cmdline section".into())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

/// Run a command; Err with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Check<Output> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(out)
}

/// Each line of `s` with `prefix` before it (output nested under a scenario's lines).
pub fn indent(s: &str, prefix: &str) -> String {
    s.lines().map(|l| format!("{prefix}{l}")).collect::<Vec<_>>().join("\n")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// The result of a docker CLI call.
#[derive(Debug)]
pub struct Cli {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {} stdout {:?} stderr {:?}", if self.ok { "0" } else { "≠0" }, self.stdout, self.stderr)
    }
}

/// What the boot came to, as the status endpoint tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unlocked,
    Locked,
}

/// One manager.
pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    suite: Suite,
    /// Boot this UKI (QEMU -kernel) instead of the disk's own.
    pub uki: Option<PathBuf>,
    /// Extra `scripts/run-qemu` options for every boot (credentials).
    pub options: Vec<String>,
    powered_on: Option<(Instant, String)>,
    /// Every boot: label and power-on → unlocked/locked time.
    pub boots: Vec<(String, Duration)>,
}

/// Appended to a boot's label when it is the retry after a guest kernel panic.
const KERNEL_PANIC_RETRY: &str = " (again after a kernel panic)";

impl Vm {
    /// A brand-new manager (its folder is wiped).
    pub fn new(suite: &Suite, name: &str) -> Check<Vm> {
        let dir = suite.work.join("vms").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(Vm { name: name.into(), dir, port: free_port()?, suite: suite.clone(), uki: None, options: vec![], powered_on: None, boots: vec![] })
    }

    /// This manager's disk in another machine: same disk and operator bundle,
    /// but fresh firmware variables, a new machine UUID and an empty TPM.
    pub fn disk_moved_to_new_machine(&self, name: &str) -> Check<Vm> {
        ensure!(!self.running(), "{}: power it off before moving its disk", self.name);
        let vm = Vm::new(&self.suite, name)?;
        run(Command::new("cp").arg("--sparse=always").arg(self.dir.join("disk.qcow2")).arg(vm.dir.join("disk.qcow2")))?;
        run(Command::new("cp").arg("-a").arg(self.dir.join("pki")).arg(self.dir.join("admin")).arg(&vm.dir))?;
        // The operator keeps their escrow identity when the disk moves.
        if self.dir.join("escrow-recipient").exists() {
            std::fs::copy(self.dir.join("escrow-recipient"), vm.dir.join("escrow-recipient")).map_err(|e| e.to_string())?;
        }
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", vm.dir.join("OVMF_VARS.fd")).map_err(|e| e.to_string())?;
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(|e| e.to_string())?;
        std::fs::write(vm.dir.join("uuid"), uuid).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(vm.dir.join("tpm")).map_err(|e| e.to_string())?;
        Ok(vm)
    }

    /// The guest kernel panicked: seen (rarely) under TCG a few seconds into
    /// the boot, an `int3` Oops in the kernel's own text patching — before any
    /// of the appliance's code runs. Once per power-on, the harness pulls the
    /// plug and boots again, saying so; a second panic fails the scenario.
    pub fn retry_after_kernel_panic(&mut self) -> Check<bool> {
        if !self.console().contains("Kernel panic - not syncing") {
            return Ok(false);
        }
        let label = self.powered_on.as_ref().map(|(_, l)| l.clone()).unwrap_or_default();
        ensure!(!label.ends_with(KERNEL_PANIC_RETRY), "{}: {label}: the guest kernel panicked again; console tail:\n{}", self.name, self.console_tail(30));
        println!("    [{}] {label}: the guest kernel panicked (TCG); console tail:\n{}\n    power cut, booting again", self.name, self.console_tail(8));
        self.power_cut()?;
        self.power_on(&format!("{label}{KERNEL_PANIC_RETRY}"))?;
        Ok(true)
    }

    /// Press the power button: `scripts/run-qemu --no-wait` with this VM's folder.
    pub fn power_on(&mut self, label: &str) -> Check {
        ensure!(!self.running(), "{}: already running", self.name);
        let mut cmd = Command::new(self.suite.run_qemu());
        cmd.arg("--no-wait").arg("--vm-dir").arg(&self.dir).arg("--image").arg(&self.suite.image).arg("--port").arg(self.port.to_string());
        if let Some(u) = &self.uki {
            cmd.arg("--uki").arg(u);
        }
        // SWARMSEAL_QEMU_CPUS=1 (scripts/test-fleet --lanes): two VMs side by side on 2 host
        // cores must not have 4 vCPU threads — a guest spinning on a lock that its other,
        // descheduled vCPU holds stretched a 200 s first boot to 607 s.
        if let Some(n) = std::env::var("SWARMSEAL_QEMU_CPUS").ok().filter(|n| n.parse::<u8>().is_ok_and(|n| n > 0)) {
            cmd.arg("--cpus").arg(n);
        }
        // No time server outside this host: the image's NTS defaults are public servers, which
        // QEMU's user network would reach. A scenario that wants time names its own server.
        if !self.options.iter().any(|o| o.starts_with("swarmseal.ntp-servers=")) {
            cmd.arg("--cred").arg("swarmseal.ntp-servers=none");
        }
        cmd.args(&self.options);
        run(&mut cmd)?;
        println!("    [{}] power on: {label}{}", self.name, self.uki.as_ref().map(|u| format!(" (UKI {})", u.display())).unwrap_or_default());
        self.powered_on = Some((Instant::now(), label.into()));
        Ok(())
    }

    pub fn qemu_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("qemu.pid")).ok()?.trim().parse().ok()
    }

    pub fn running(&self) -> bool {
        self.qemu_pid().map(|p| Path::new(&format!("/proc/{p}")).exists()).unwrap_or(false)
    }

    /// Wait until the agent has made this boot's decision (the phase PCR is
    /// extended) and report whether the swarm came up unlocked or locked.
    /// Records and prints the time since power-on.
    pub fn wait_for_decision(&mut self, timeout: Duration) -> Check<(Outcome, Value)> {
        self.wait_for_decision_on(None, timeout)
    }

    /// The guest rebooted by itself (an update): time the boot from now.
    pub fn rebooting(&mut self, label: &str) {
        println!("    [{}] rebooting by itself: {label}", self.name);
        self.powered_on = Some((Instant::now(), label.into()));
    }

    /// [`Vm::wait_for_decision`], counting only a boot of image `version`
    /// (`image.version` in the status): the old system answers until it is down.
    pub fn wait_for_decision_on(&mut self, version: Option<&str>, timeout: Duration) -> Check<(Outcome, Value)> {
        let (t0, label) = self.powered_on.clone().ok_or("not powered on")?;
        let mut last = String::from("no answer from the proxy yet");
        let (mut t0, mut label) = (t0, label);
        while t0.elapsed() < timeout {
            if self.retry_after_kernel_panic()? {
                (t0, label) = self.powered_on.clone().ok_or("not powered on")?;
            }
            ensure!(self.running(), "{}: QEMU exited while booting; console tail:\n{}", self.name, self.console_tail(30));
            match self.status() {
                Ok(s) => {
                    let doc = typed(&s)?;
                    let state = doc.swarm.state().unwrap_or("?").to_string();
                    let on_version = version.is_none_or(|v| doc.image.version.as_deref() == Some(v));
                    let decided = on_version && doc.phase_locked == Some(true);
                    if decided && (state == "active" || state == "locked") {
                        let outcome = if state == "active" { Outcome::Unlocked } else { Outcome::Locked };
                        let took = t0.elapsed();
                        println!("    [{}] {label}: power-on → {} in {:.0} s", self.name, if outcome == Outcome::Unlocked { "unlocked" } else { "locked" }, took.as_secs_f64());
                        self.boots.push((format!("{label} → {outcome:?}"), took));
                        return Ok((outcome, s));
                    }
                    last = format!("swarm {state}, phase_locked {:?}, image {:?}", doc.phase_locked, doc.image.version);
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        Err(format!("{}: {label}: no decision within {} s (last: {last}); console tail:\n{}", self.name, timeout.as_secs(), self.console_tail(30)))
    }

    /// Boot and insist the swarm unlocks by itself.
    pub fn boot_expect(&mut self, label: &str, want: Outcome, timeout: Duration) -> Check<Value> {
        self.power_on(label)?;
        let (got, status) = self.wait_for_decision(timeout)?;
        ensure!(got == want, "{}: {label}: expected {want:?}, the swarm is {got:?}; status {}", self.name, status);
        Ok(status)
    }

    /// A clean shutdown (ACPI power button, `scripts/run-qemu --stop`).
    pub fn shutdown(&mut self) -> Check {
        if !self.running() {
            return Ok(());
        }
        let t = Instant::now();
        run(Command::new(self.suite.run_qemu()).arg("--stop").arg("--vm-dir").arg(&self.dir))?;
        ensure!(!self.running(), "{}: still running after run-qemu --stop", self.name);
        println!("    [{}] clean shutdown in {:.0} s", self.name, t.elapsed().as_secs_f64());
        self.powered_on = None;
        Ok(())
    }

    /// A dbx update on this (stopped) machine: one SHA-256 entry added to the dbx of its OVMF
    /// variable store (`scripts/lib/dbx-add`), so the next boot measures another dbx into PCR 7.
    pub fn add_dbx_entry(&self, sha256_hex: &str) -> Check {
        ensure!(!self.running(), "{}: power it off before changing its firmware variables", self.name);
        run(Command::new(self.suite.repo.join("scripts/lib/dbx-add")).arg(self.dir.join("OVMF_VARS.fd")).arg(sha256_hex))?;
        println!("    [{}] dbx update: SHA-256 {sha256_hex} revoked in OVMF_VARS.fd", self.name);
        Ok(())
    }

    /// Plug in (`up`) or pull the cable of NIC `nic` (`nic0`…): `scripts/run-qemu --set-link`
    /// (QMP set_link). Pulled, QEMU drops every frame to and from that NIC, and the guest sees
    /// its carrier go.
    pub fn set_link(&self, nic: &str, up: bool) -> Check {
        let state = if up { "on" } else { "off" };
        run(Command::new(self.suite.run_qemu()).arg("--vm-dir").arg(&self.dir).arg("--set-link").arg(format!("{nic}={state}")))?;
        println!("    [{}] {nic}: cable {}", self.name, if up { "plugged in" } else { "pulled" });
        Ok(())
    }

    /// Pull the plug: SIGKILL QEMU; the TPM loses power with it.
    pub fn power_cut(&mut self) -> Check {
        if let Some(pid) = self.qemu_pid() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            for _ in 0..50 {
                if !self.running() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Ok(p) = std::fs::read_to_string(self.dir.join("swtpm.pid")) {
            let _ = Command::new("kill").arg(p.trim()).status();
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = std::fs::remove_file(self.dir.join("qemu.pid"));
        let _ = std::fs::remove_file(self.dir.join("swtpm.pid"));
        ensure!(!self.running(), "{}: QEMU survived SIGKILL", self.name);
        println!("    [{}] power cut (QEMU killed)", self.name);
        self.powered_on = None;
        Ok(())
    }

    /// Shut down cleanly and boot again.
    pub fn reboot_expect(&mut self, label: &str, want: Outcome, timeout: Duration) -> Check<Value> {
        self.shutdown()?;
        self.boot_expect(label, want, timeout)
    }

    // ------------------------------------------------------------ the console

    /// The serial console so far (escape sequences removed).
    pub fn console(&self) -> String {
        let raw = std::fs::read(self.dir.join("serial.log")).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }

    pub fn console_tail(&self, n: usize) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        indent(&lines[lines.len().saturating_sub(n)..].join("\n"), "      | ")
    }

    /// Lines of the console containing all of `words`.
    pub fn console_lines(&self, words: &[&str]) -> Vec<String> {
        self.console().lines().filter(|l| words.iter().all(|w| l.contains(w))).map(str::to_string).collect()
    }

    /// Wait until the console shows a line with all of `words`.
    pub fn wait_console(&self, words: &[&str], timeout: Duration) -> Check<String> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Some(l) = self.console_lines(words).into_iter().next() {
                return Ok(l);
            }
            ensure!(self.running(), "{}: QEMU exited; console tail:\n{}", self.name, self.console_tail(30));
            std::thread::sleep(Duration::from_secs(3));
        }
        Err(format!("{}: the console never showed {words:?} within {} s; tail:\n{}", self.name, timeout.as_secs(), self.console_tail(30)))
    }

    // ------------------------------------------------------------ the operator's tools

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("admin")
    }

    fn host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The docker CLI, under `timeout SECS` when given (a call that must not hang the
    /// caller: the quorum watcher asks managers that may be rebooting).
    fn docker_cmd(&self, timeout: Option<u64>) -> Command {
        let mut c = match timeout {
            Some(secs) => {
                let mut t = Command::new("timeout");
                t.arg(secs.to_string()).arg("docker");
                t
            }
            None => Command::new("docker"),
        };
        // The operator's own CLI, not this host's engine or contexts.
        c.env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT").env_remove("DOCKER_TLS_VERIFY").env_remove("DOCKER_CERT_PATH");
        c.env("DOCKER_CONFIG", self.dir.join("docker-config"));
        c
    }

    fn cli(mut cmd: Command, stdin: Option<&str>) -> Cli {
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn();
        let out = child.and_then(|mut ch| {
            if let (Some(input), Some(mut w)) = (stdin, ch.stdin.take()) {
                let _ = w.write_all(input.as_bytes());
            }
            ch.wait_with_output()
        });
        match out {
            Ok(o) => Cli { ok: o.status.success(), stdout: text(&o.stdout), stderr: text(&o.stderr) },
            Err(e) => Cli { ok: false, stdout: String::new(), stderr: e.to_string() },
        }
    }

    /// `docker --tlsverify … -H tcp://127.0.0.1:PORT ARGS` with the admin bundle.
    pub fn docker(&self, args: &[&str]) -> Cli {
        self.docker_stdin(args, None)
    }

    pub fn docker_stdin(&self, args: &[&str], stdin: Option<&str>) -> Cli {
        self.docker_with(None, args, stdin)
    }

    /// [`Vm::docker`] that gives up after `secs` seconds (exit 124, `ok` false).
    pub fn docker_timeout(&self, secs: u64, args: &[&str]) -> Cli {
        self.docker_with(Some(secs), args, None)
    }

    fn docker_with(&self, timeout: Option<u64>, args: &[&str], stdin: Option<&str>) -> Cli {
        let b = self.bundle();
        let mut c = self.docker_cmd(timeout);
        c.arg("--tlsverify")
            .arg("--tlscacert")
            .arg(b.join("ca.pem"))
            .arg("--tlscert")
            .arg(b.join("cert.pem"))
            .arg("--tlskey")
            .arg(b.join("key.pem"))
            .arg("-H")
            .arg(self.host())
            .args(args);
        Self::cli(c, stdin)
    }

    /// The same command with no client certificate (plain TCP, as if the API were open).
    pub fn docker_without_bundle(&self, args: &[&str]) -> Cli {
        let mut c = self.docker_cmd(None);
        c.arg("-H").arg(self.host()).args(args);
        Self::cli(c, None)
    }

    /// The same command over TLS trusting the CA, but without a client certificate.
    pub fn docker_tls_without_cert(&self, args: &[&str]) -> Cli {
        let mut c = self.docker_cmd(None);
        c.arg("--tls").arg("--tlscacert").arg(self.bundle().join("ca.pem")).arg("-H").arg(self.host()).args(args);
        Self::cli(c, None)
    }

    /// `curl` an agent endpoint with the admin bundle: (HTTP status, body).
    pub fn api(&self, method: &str, path: &str) -> Check<(u16, Vec<u8>)> {
        let b = self.bundle();
        self.curl(&["--cacert", &p(&b.join("ca.pem")), "--cert", &p(&b.join("cert.pem")), "--key", &p(&b.join("key.pem"))], method, path)
    }

    /// [`Vm::api`] that gives up after `secs` seconds (curl keeps the last `--max-time`).
    pub fn api_within(&self, secs: u64, method: &str, path: &str) -> Check<(u16, Vec<u8>)> {
        let b = self.bundle();
        self.curl(&["--cacert", &p(&b.join("ca.pem")), "--cert", &p(&b.join("cert.pem")), "--key", &p(&b.join("key.pem")), "--max-time", &secs.to_string()], method, path)
    }

    /// `curl -X POST --data-binary @-` an agent endpoint with the admin bundle,
    /// the body on stdin (a secret never on a command line).
    pub fn api_post(&self, path: &str, body: &str) -> Check<(u16, Vec<u8>)> {
        let b = self.bundle();
        self.curl_stdin(&["--cacert", &p(&b.join("ca.pem")), "--cert", &p(&b.join("cert.pem")), "--key", &p(&b.join("key.pem")), "--data-binary", "@-"], "POST", path, Some(body))
    }

    /// `curl -X POST --data-binary @FILE` an agent endpoint with the admin bundle.
    pub fn api_post_file(&self, path: &str, file: &Path) -> Check<(u16, Vec<u8>)> {
        let b = self.bundle();
        let data = format!("@{}", p(file));
        self.curl(&["--cacert", &p(&b.join("ca.pem")), "--cert", &p(&b.join("cert.pem")), "--key", &p(&b.join("key.pem")), "-H", "content-type: application/x-tar", "--max-time", "900", "--data-binary", &data], "POST", path)
    }

    /// Type `line` and Enter on the serial console (QEMU's `serial.sock`), as an
    /// operator at the machine would.
    pub fn type_console(&self, line: &str) -> Check {
        use std::io::Write as _;
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.join("serial.sock")).map_err(|e| format!("{}: serial.sock: {e}", self.name))?;
        for b in line.bytes().chain([b'\r']) {
            s.write_all(&[b]).map_err(|e| format!("{}: typing on the console: {e}", self.name))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// `curl` an agent endpoint trusting the CA but presenting no client certificate.
    pub fn api_without_cert(&self, method: &str, path: &str) -> Check<(u16, Vec<u8>)> {
        self.curl(&["--cacert", &p(&self.bundle().join("ca.pem"))], method, path)
    }

    fn curl(&self, tls: &[&str], method: &str, path: &str) -> Check<(u16, Vec<u8>)> {
        self.curl_stdin(tls, method, path, None)
    }

    fn curl_stdin(&self, tls: &[&str], method: &str, path: &str, stdin: Option<&str>) -> Check<(u16, Vec<u8>)> {
        let mut child = Command::new("curl")
            .args(["-sS", "--max-time", "120", "-X", method, "-o", "-", "-w", "\n%{http_code}"])
            .args(tls)
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("curl: {e}"))?;
        if let (Some(body), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(body.as_bytes()).map_err(|e| format!("curl stdin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("curl: {e}"))?;
        if !out.status.success() {
            return Err(format!("curl {method} {path}: {}", text(&out.stderr)));
        }
        let body = out.stdout;
        let cut = body.iter().rposition(|&c| c == b'\n').unwrap_or(0);
        let code = text(&body[cut..]).parse().map_err(|_| format!("curl {method} {path}: no status code"))?;
        Ok((code, body[..cut].to_vec()))
    }

    /// `GET /swarmseal/v1/status`.
    pub fn status(&self) -> Check<Value> {
        let (code, body) = self.api("GET", "/swarmseal/v1/status")?;
        ensure!(code == 200, "status: HTTP {code} {}", text(&body));
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("status is not JSON: {e}"))?;
        typed(&v)?;
        Ok(v)
    }

    /// The swarm state as the engine reports it through the proxy.
    pub fn swarm_state(&self) -> String {
        self.docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout
    }
}

impl Drop for Vm {
    /// A failing scenario must not leave a VM eating the CPUs.
    fn drop(&mut self) {
        if self.running() {
            let _ = self.power_cut();
        }
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A free TCP port on 127.0.0.1 for a QEMU host forward (the proxy, the swarm port): free
/// now and not handed out before by this process (VMs made side by side bind theirs only
/// when they power on). Below the kernel's ephemeral range, which outgoing connections use.
/// The 100 ports from `SWARMSEAL_QEMU_PORTS` (default 23760): two test processes side by
/// side (scripts/test's two lanes) get ranges of their own, as neither sees the other's.
pub fn free_port() -> Check<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let base: u16 = std::env::var("SWARMSEAL_QEMU_PORTS").ok().and_then(|p| p.parse().ok()).filter(|&p| (1024..=65000).contains(&p)).unwrap_or(23760);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for port in base..base + 100 {
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    Err(format!("no free port in {base}..{}", base + 100))
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

// ------------------------------------------------------------ frames on the wire

/// The frames of a pcap file as QEMU's `filter-dump` writes it (`run-qemu --net-dump`:
/// little-endian, Ethernet), each with its timestamp in µs of QEMU's virtual clock. A file
/// cut short by a frame being written ends at the last whole frame.
pub fn pcap_frames(pcap: &[u8]) -> Check<Vec<(u64, &[u8])>> {
    let u32_at = |o: usize| pcap.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    ensure!(u32_at(0) == Some(0xa1b2_c3d4), "not a little-endian pcap file");
    ensure!(u32_at(20) == Some(1), "not an Ethernet capture (pcap link type {:?})", u32_at(20));
    let mut frames = Vec::new();
    let mut at = 24;
    while let (Some(sec), Some(usec), Some(len)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let Some(frame) = pcap.get(at + 16..at + 16 + len as usize) else { break };
        frames.push((sec as u64 * 1_000_000 + usec as u64, frame));
        at += 16 + len as usize;
    }
    Ok(frames)
}

/// The 802.1Q VLAN id of an Ethernet frame that carries a tag.
pub fn vlan_id(frame: &[u8]) -> Option<u16> {
    (frame.get(12..14)? == [0x81, 0x00]).then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// The sender's IPv4 address of an ARP frame (tagged or not).
pub fn arp_sender(frame: &[u8]) -> Option<std::net::Ipv4Addr> {
    let l3 = if vlan_id(frame).is_some() { 18 } else { 14 };
    (frame.get(l3 - 2..l3)? == [0x08, 0x06]).then_some(())?;
    let a = frame.get(l3 + 14..l3 + 18)?;
    Some(std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// The operator's age identity for the escrow copy of the unlock key.
pub struct Escrow {
    identity: age::x25519::Identity,
}

impl Default for Escrow {
    fn default() -> Self {
        Escrow { identity: age::x25519::Identity::generate() }
    }
}

impl Escrow {
    pub fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }

    /// `age -d -i key.txt unlock-key.age`
    pub fn decrypt(&self, file: &[u8]) -> Check<String> {
        let d = age::Decryptor::new(file).map_err(|e| format!("escrow file is not age: {e}"))?;
        let mut r = d.decrypt(std::iter::once(&self.identity as &dyn age::Identity)).map_err(|e| format!("cannot decrypt the escrow file: {e}"))?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut r, &mut s).map_err(|e| e.to_string())?;
        Ok(s.trim().to_string())
    }
}

/// The status document `v` as its type ([`Status`]): a field renamed, missing or of another
/// type in the agent's answer fails here, by name.
pub fn typed(v: &Value) -> Check<Status> {
    serde_json::from_value(v.clone()).map_err(|e| format!("the status does not match swarmseal_common::status::Status: {e}: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(strip_ansi("\x1b[0;32m  OK  \x1b[0m] Started docker.service\r"), "  OK  ] Started docker.service");
    }

    #[test]
    fn one_word_is_appended_to_the_cmdline_section() {
        // MZ, e_lfanew = 0x40, PE signature, COFF header (1 section, no
        // optional header), one section header, raw data at 0x100 (0x40 bytes).
        let mut pe = vec![0u8; 0x140];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x40;
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        pe[0x46] = 1;
        let h = 0x44 + 20;
        pe[h..h + 8].copy_from_slice(b".cmdline");
        pe[h + 8] = 12; // VirtualSize
        pe[h + 16] = 0x40; // SizeOfRawData
        pe[h + 21] = 0x01; // PointerToRawData 0x100
        pe[0x100..0x10c].copy_from_slice(b"quiet rw x=1");
        assert_eq!(append_to_cmdline(&mut pe, "extra").unwrap(), "quiet rw x=1");
        assert_eq!(&pe[0x100..0x112], b"quiet rw x=1 extra");
        assert_eq!(pe[h + 8], 18);
        assert!(append_to_cmdline(&mut pe, &"y".repeat(60)).is_err());
    }

    #[test]
    fn frames_tags_and_arp_senders_are_read_from_a_pcap() {
        // An ARP request from 192.168.42.10 tagged VLAN 42, then an untagged IPv4 frame.
        let mut arp = vec![0xff; 6];
        arp.extend([0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x81, 0x00, 0x00, 42, 0x08, 0x06]);
        arp.extend([0, 1, 8, 0, 6, 4, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 192, 168, 42, 10, 0, 0, 0, 0, 0, 0, 192, 168, 42, 1]);
        let mut ip = vec![0u8; 12];
        ip.extend([0x08, 0x00, 0x45]);
        let mut pcap = Vec::new();
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
            pcap.extend(v.to_le_bytes());
        }
        for (t, f) in [(7u32, &arp), (8, &ip)] {
            for v in [t, 5, f.len() as u32, f.len() as u32] {
                pcap.extend(v.to_le_bytes());
            }
            pcap.extend(f.iter());
        }
        pcap.extend([1, 2, 3]); // a record header cut short
        let frames = pcap_frames(&pcap).unwrap();
        assert_eq!(frames.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![7_000_005, 8_000_005]);
        assert_eq!(vlan_id(frames[0].1), Some(42));
        assert_eq!(arp_sender(frames[0].1), Some(std::net::Ipv4Addr::new(192, 168, 42, 10)));
        assert_eq!((vlan_id(frames[1].1), arp_sender(frames[1].1)), (None, None));
        assert!(pcap_frames(b"not a pcap file at all, really").is_err());
    }

    #[test]
    fn escrow_round_trip() {
        let e = Escrow::default();
        let r: age::x25519::Recipient = e.recipient().parse().unwrap();
        let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = vec![];
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(b"SWMKEY-1-abc\n").unwrap();
        w.finish().unwrap();
        assert_eq!(e.decrypt(&out).unwrap(), "SWMKEY-1-abc");
    }
}
