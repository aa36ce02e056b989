//! Host facts, gathered once: configuration files, ownership and permissions,
//! audit rules, the dockerd command line and its TCP listeners, mounts,
//! device-mapper targets and the Secure Boot variable.
//!
//! Files are read under a root directory (`--root`, default `/`) so tests can
//! point the checks at fixture trees; running processes are read from the real
//! `/proc` (`proc_dir`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Where host facts come from.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Root of the host file system for configuration files, `proc/mounts`,
    /// `sys/block` and `sys/firmware/efi/efivars`.
    pub root: PathBuf,
    /// The live `/proc`, for the dockerd process, its command line and sockets.
    pub proc_dir: PathBuf,
    /// The engine socket (checked by 3.15/3.16 at its real path).
    pub docker_socket: PathBuf,
    /// Use `auditctl -l` when it is installed (only meaningful with root `/`).
    pub use_auditctl: bool,
}

impl HostOptions {
    pub fn new(root: impl Into<PathBuf>, docker_socket: impl Into<PathBuf>) -> HostOptions {
        let root = root.into();
        let use_auditctl = root == Path::new("/");
        HostOptions { root, proc_dir: "/proc".into(), docker_socket: docker_socket.into(), use_auditctl }
    }

    /// `path` (absolute, as on the host) under the root.
    pub fn under(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

/// Owner and mode of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub is_dir: bool,
}

/// The running dockerd: its flags feed section 2 (daemon configuration) and the
/// file paths of section 3; its listeners 7.2 and A.3 (CIS Docker Benchmark v1.6.0).
#[derive(Debug, Clone, Default)]
pub struct Dockerd {
    pub pid: u32,
    /// argv, including argv[0].
    pub args: Vec<String>,
    /// TCP sockets the dockerd process listens on (`/proc/<pid>/net/tcp*`
    /// matched with its socket fds); `None` when they could not be read.
    pub listeners: Option<Vec<Listener>>,
}

/// A listening TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub ip: String,
    pub port: u16,
    pub wildcard: bool,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ip.contains(':') {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
        }
    }
}

/// One line of the mount table (1.1.1 separate partition; A.5 dm-verity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub device: String,
    pub target: String,
    pub fstype: String,
}

/// A device-mapper device from `/sys/block/dm-N/dm/` (A.5: a `CRYPT-VERITY-` uuid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmDevice {
    /// `dm-N`
    pub kname: String,
    pub name: String,
    pub uuid: String,
}

/// Audit rules in effect (or configured), for 1.1.3–1.1.18.
#[derive(Debug, Clone, Default)]
pub struct AuditRules {
    /// `auditctl -l`, or the rule files read.
    pub source: String,
    /// Non-comment rule lines.
    pub lines: Vec<String>,
}

impl AuditRules {
    /// A rule mentions `path` (as docker-bench-security: grep on non-comment lines).
    pub fn covers(&self, path: &str) -> bool {
        self.rule_for(path).is_some()
    }

    /// The first rule line that mentions `path`.
    pub fn rule_for(&self, path: &str) -> Option<&str> {
        self.lines.iter().find(|l| l.contains(path)).map(|l| l.as_str())
    }

    /// The paths the rules watch: `-w PATH` and `-F path=PATH` / `-F dir=PATH`.
    pub fn watched_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.lines {
            let t: Vec<&str> = l.split_whitespace().collect();
            for (i, w) in t.iter().enumerate() {
                if *w == "-w" {
                    out.extend(t.get(i + 1).map(|p| p.to_string()));
                } else if let Some(p) = w.strip_prefix("path=").or_else(|| w.strip_prefix("dir=")) {
                    out.push(p.to_string());
                }
            }
        }
        out
    }
}

/// Everything read from the host, once.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The daemon configuration file path used (host path; 3.17, 3.18) and its parse result.
    pub daemon_json_path: String,
    pub daemon_json: Option<Result<Map<String, Value>, String>>,
    /// The engine's own process (found from the socket with SO_PEERCRED).
    pub dockerd: Option<Dockerd>,
    /// Why `dockerd` is `None`: what could not be read (an operator sentence).
    pub dockerd_missing: String,
    /// Host path → stat (`None`: does not exist). Only the paths the checks use.
    pub stats: BTreeMap<String, Option<FileStat>>,
    /// Host path → exists, for the audit checks' targets.
    pub exists: BTreeMap<String, bool>,
    /// Members of the `docker` group (`/etc/group`), and its gid (1.1.2, 3.15).
    pub docker_group: Option<(u32, Vec<String>)>,
    pub audit: AuditRules,
    /// Host path of an audited target → the rule path that names the same file under
    /// another name (same device and inode: `/lib/…` on a merged-/usr host).
    pub audit_aliases: BTreeMap<String, String>,
    pub mounts: Option<Vec<MountEntry>>,
    pub dm: Vec<DmDevice>,
    /// Last byte of the SecureBoot EFI variable (A.6); `None`: not readable.
    pub secure_boot: Option<u8>,
    /// Files under `/etc/docker/certs.d` (host paths) for 3.7/3.8; `None`: no directory.
    pub registry_certs: Option<Vec<String>>,
    /// The docker.service / docker.socket / containerd.socket unit files found (host paths):
    /// 3.1–3.4 (owner, mode) and the audit rules on them (1.1.x).
    pub units: BTreeMap<&'static str, String>,
    /// `DOCKER_CONTENT_TRUST` of this process's environment (4.5).
    pub content_trust: Option<String>,
    /// `DOCKER_CONTENT_TRUST` of dockerd's environment (`/proc/<pid>/environ`), or why it is unknown.
    pub dockerd_content_trust: Read<String>,
    /// Process names (`comm`) in the PID namespace of each running container,
    /// keyed by the container's init PID (`State.Pid`), for 5.7 (sshd); `None`: `/proc` unreadable.
    pub container_procs: Option<BTreeMap<u32, Vec<String>>>,
}

/// Host paths of the files the checks look at.
pub const DOCKER_ETC: &str = "/etc/docker";
pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";
pub const DEFAULT_DOCKER: &str = "/etc/default/docker";
pub const SYSCONFIG_DOCKER: &str = "/etc/sysconfig/docker";
pub const CONTAINERD_SOCK: &str = "/run/containerd/containerd.sock";
pub const CERTS_D: &str = "/etc/docker/certs.d";
const UNIT_DIRS: [&str; 4] = ["/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system", "/run/systemd/system"];
const SECURE_BOOT_VAR: &str = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e98c031dede4";

/// Paths whose existence the audit checks (1.1.3–1.1.18) depend on.
pub const AUDIT_TARGETS: [&str; 11] = [
    "/run/containerd",
    "/var/lib/docker",
    "/etc/docker",
    "/etc/default/docker",
    "/etc/docker/daemon.json",
    "/etc/containerd/config.toml",
    "/etc/sysconfig/docker",
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim",
    "/usr/bin/containerd-shim-runc-v1",
    "/usr/bin/containerd-shim-runc-v2",
];

impl HostFacts {
    /// Read everything the checks need from the host; `init_pids` are the
    /// running containers' `State.Pid` (for 5.7).
    pub fn gather(o: &HostOptions, init_pids: &[u32], engine_pid: Result<u32, String>) -> HostFacts {
        let mut h = HostFacts::default();
        match find_dockerd(&o.proc_dir, engine_pid) {
            Ok(d) => h.dockerd = Some(d),
            Err(why) => h.dockerd_missing = why,
        }
        h.container_procs = container_procs(&o.proc_dir, init_pids);
        h.content_trust = std::env::var("DOCKER_CONTENT_TRUST").ok();
        h.dockerd_content_trust = match &h.dockerd {
            None => Read::Unknown(h.dockerd_missing.clone()),
            Some(d) => {
                let path = o.proc_dir.join(d.pid.to_string()).join("environ");
                match std::fs::read(&path) {
                    Ok(raw) => match raw.split(|&b| b == 0).find_map(|kv| kv.strip_prefix(b"DOCKER_CONTENT_TRUST=")) {
                        Some(v) => Read::Set(String::from_utf8_lossy(v).into_owned(), path.display().to_string()),
                        None => Read::Default,
                    },
                    Err(e) => Read::Unknown(format!("{}: {e}", path.display())),
                }
            }
        };

        // The daemon configuration file: --config-file, else /etc/docker/daemon.json.
        let cfg_file = h.dockerd.as_ref().and_then(|d| flag_values(&d.args, &["--config-file"]).pop()).unwrap_or_else(|| DAEMON_JSON.to_string());
        h.daemon_json_path = cfg_file.clone();
        h.daemon_json = match std::fs::read_to_string(o.under(&cfg_file)) {
            Ok(t) => Some(match serde_json::from_str::<Value>(&t) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err("not a JSON object".into()),
                Err(e) => Err(e.to_string()),
            }),
            Err(_) => None,
        };

        for unit in ["docker.service", "docker.socket", "containerd.socket"] {
            if let Some(p) = UNIT_DIRS.iter().map(|d| format!("{d}/{unit}")).find(|p| o.under(p).exists()) {
                h.units.insert(unit, p);
            }
        }

        let mut paths: Vec<String> = vec![DOCKER_ETC.into(), cfg_file.clone(), DAEMON_JSON.into(), DEFAULT_DOCKER.into(), SYSCONFIG_DOCKER.into(), CONTAINERD_SOCK.into()];
        paths.extend(h.units.values().cloned());
        let settings = Settings::new(&h);
        for k in ["tlscacert", "tlscert", "tlskey"] {
            if let Some(p) = settings.value(k) {
                paths.push(p);
            }
        }
        h.registry_certs = list_files(&o.under(CERTS_D)).map(|v| v.into_iter().map(|rel| format!("{CERTS_D}/{rel}")).collect());
        paths.extend(h.registry_certs.clone().unwrap_or_default());
        for p in paths {
            let st = stat(&o.under(&p));
            h.stats.insert(p, st);
        }
        // The engine socket is live: stat it where it is.
        h.stats.insert(o.docker_socket.to_string_lossy().into_owned(), stat(&o.docker_socket));

        for p in AUDIT_TARGETS.iter().copied().chain(["/usr/bin/runc", "/usr/bin/dockerd"]) {
            h.exists.insert(p.to_string(), o.under(p).exists());
        }

        h.docker_group = read_group(&o.under("/etc/group"), "docker");
        h.audit = read_audit(o);
        let identity = |p: &str| rustix::fs::stat(&o.under(p)).ok().map(|st| (st.st_dev, st.st_ino));
        let watched: Vec<(String, (u64, u64))> = h.audit.watched_paths().into_iter().filter_map(|w| identity(&w).map(|id| (w, id))).collect();
        for target in h.units.values().cloned().chain(AUDIT_TARGETS.iter().map(|s| s.to_string())).chain(["/usr/bin/runc".to_string(), "/usr/bin/dockerd".to_string()]) {
            if let Some(id) = identity(&target) {
                if let Some((w, _)) = watched.iter().find(|(w, wid)| *wid == id && *w != target) {
                    h.audit_aliases.insert(target, w.clone());
                }
            }
        }
        h.mounts = std::fs::read_to_string(o.under("/proc/self/mounts")).or_else(|_| std::fs::read_to_string(o.under("/proc/mounts"))).ok().map(|t| parse_mounts(&t));
        h.dm = read_dm(&o.under("/sys/block"));
        h.secure_boot = std::fs::read(o.under(SECURE_BOOT_VAR)).ok().and_then(|b| b.last().copied());
        h
    }

    pub fn stat_of(&self, path: &str) -> Option<FileStat> {
        self.stats.get(path).copied().flatten()
    }

    /// Why the dockerd command line is unknown (`None` when it was read).
    pub fn dockerd_unknown(&self) -> Option<String> {
        if self.dockerd.is_some() {
            return None;
        }
        Some(if self.dockerd_missing.is_empty() { "the dockerd process was not read".to_string() } else { self.dockerd_missing.clone() })
    }
}

/// A daemon setting as read: set (with where), known to be unset (dockerd's
/// command line was read and daemon.json does not set it), or unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<T> {
    /// The value and its source: `dockerd command line` or the daemon.json path.
    Set(T, String),
    /// Not set on the command line that was read, nor in daemon.json: dockerd's default applies.
    Default,
    /// Not in daemon.json, and the command line could not be read: why.
    Unknown(String),
}

impl<T> Default for Read<T> {
    fn default() -> Read<T> {
        Read::Unknown("not read".into())
    }
}

/// The daemon's effective settings: the dockerd command line first, then daemon.json.
pub struct Settings<'a> {
    args: &'a [String],
    json: Option<&'a Map<String, Value>>,
    json_path: &'a str,
    /// Why the command line is unknown (`None`: it was read).
    unknown: Option<String>,
}

/// dockerd flags that take a value (the others are booleans, `--flag` or `--flag=false`).
const VALUE_FLAGS: [&str; 22] = [
    "-H", "--host", "-l", "--log-level", "--insecure-registry", "--default-ulimit", "--userns-remap", "--cgroup-parent", "--storage-opt", "--authorization-plugin",
    "--log-driver", "--seccomp-profile", "--tlscacert", "--tlscert", "--tlskey", "--config-file", "--data-root", "--exec-root", "--pidfile", "--bip", "--default-address-pool", "-p",
];

impl<'a> Settings<'a> {
    pub fn new(h: &'a HostFacts) -> Settings<'a> {
        Settings {
            args: h.dockerd.as_ref().map(|d| d.args.as_slice()).unwrap_or(&[]),
            json: h.daemon_json.as_ref().and_then(|r| r.as_ref().ok()),
            json_path: if h.daemon_json_path.is_empty() { DAEMON_JSON } else { &h.daemon_json_path },
            unknown: h.dockerd_unknown(),
        }
    }

    fn source(&self, on_command_line: bool) -> String {
        if on_command_line {
            "dockerd command line".into()
        } else {
            self.json_path.to_string()
        }
    }

    fn unset<T>(&self, key: &str) -> Read<T> {
        match &self.unknown {
            None => Read::Default,
            Some(why) => Read::Unknown(format!("{why}; {key} is not in {}, so its value is unknown", self.json_path)),
        }
    }

    /// [`Settings::flag`] with its source, or why it is unknown.
    pub fn flag_read(&self, key: &str) -> Read<bool> {
        match self.flag(key) {
            Some(v) => Read::Set(v, self.source(self.arg_flag(key).is_some())),
            None => self.unset(key),
        }
    }

    /// [`Settings::value`] with its source, or why it is unknown.
    pub fn value_read(&self, key: &str) -> Read<String> {
        let names = Self::flag_names(key);
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let on_cl = !flag_values(self.args, &names).is_empty();
        match self.value(key) {
            Some(v) => Read::Set(v, self.source(on_cl)),
            None => self.unset(key),
        }
    }

    /// [`Settings::values`], or why they are unknown when none are set.
    pub fn values_read(&self, key: &str) -> Read<Vec<String>> {
        let names = Self::flag_names(key);
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let on_cl = !flag_values(self.args, &names).is_empty();
        let v = self.values(key);
        if v.is_empty() {
            self.unset(key)
        } else {
            Read::Set(v, self.source(on_cl))
        }
    }

    fn arg_flag(&self, key: &str) -> Option<bool> {
        let name = format!("--{key}");
        for a in self.args.iter().rev() {
            if *a == name {
                return Some(true);
            }
            if let Some(v) = a.strip_prefix(&format!("{name}=")) {
                return Some(v != "false" && v != "0");
            }
        }
        None
    }

    fn flag_names(key: &str) -> Vec<String> {
        let mut v = vec![format!("--{key}")];
        match key {
            "hosts" => v = vec!["-H".into(), "--host".into()],
            "log-level" => v.push("-l".into()),
            "insecure-registries" => v = vec!["--insecure-registry".into()],
            "default-ulimits" => v = vec!["--default-ulimit".into()],
            "storage-opts" => v = vec!["--storage-opt".into()],
            "authorization-plugins" => v = vec!["--authorization-plugin".into()],
            _ => {}
        }
        v
    }

    /// All values of a setting (`hosts`, `storage-opts`…): command line, then daemon.json.
    pub fn values(&self, key: &str) -> Vec<String> {
        let names = Self::flag_names(key);
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let mut v = flag_values(self.args, &names);
        if let Some(j) = self.json.and_then(|j| j.get(key)) {
            match j {
                Value::Array(a) => v.extend(a.iter().map(json_str)),
                Value::Object(o) => v.extend(o.iter().map(|(k, val)| format!("{k}={}", json_str(val)))),
                other => v.push(json_str(other)),
            }
        }
        v
    }

    /// One value: the command line wins over daemon.json.
    pub fn value(&self, key: &str) -> Option<String> {
        self.values(key).into_iter().next()
    }

    /// A boolean setting; `None` when not set anywhere.
    pub fn flag(&self, key: &str) -> Option<bool> {
        if let Some(v) = self.arg_flag(key) {
            return Some(v);
        }
        match self.json.and_then(|j| j.get(key)) {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) => Some(s != "false"),
            _ => None,
        }
    }
}

fn json_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Values of flags `names` in `args` (`--f v`, `--f=v`, `-Hv` not supported).
pub fn flag_values(args: &[String], names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if let Some((n, v)) = a.split_once('=') {
            if names.contains(&n) {
                out.push(v.to_string());
            }
        } else if names.contains(&a.as_str()) && VALUE_FLAGS.contains(&a.as_str()) {
            if let Some(v) = args.get(i + 1) {
                out.push(v.clone());
                i += 1;
            }
        } else if names.contains(&a.as_str()) {
            out.push("true".into());
        } else if VALUE_FLAGS.contains(&a.as_str()) {
            i += 1; // skip another flag's value
        }
        i += 1;
    }
    out
}

fn stat(p: &Path) -> Option<FileStat> {
    let st = rustix::fs::stat(p).ok()?;
    let mode = st.st_mode as u32;
    Some(FileStat { uid: st.st_uid, gid: st.st_gid, mode: mode & 0o7777, is_dir: rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory })
}

/// Files (recursively, relative paths) under `dir`; `None` if it is not a directory.
fn list_files(dir: &Path) -> Option<Vec<String>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>, depth: u32) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && depth < 4 {
                walk(base, &p, out, depth + 1);
            } else if p.is_file() {
                if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    if !dir.is_dir() {
        return None;
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out, 0);
    out.sort();
    Some(out)
}

fn read_group(path: &Path, name: &str) -> Option<(u32, Vec<String>)> {
    let t = std::fs::read_to_string(path).ok()?;
    t.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let gid = f[2].parse().ok()?;
            Some((gid, f[3].split(',').filter(|s| !s.is_empty()).map(String::from).collect()))
        } else {
            None
        }
    })
}

/// `auditctl -l` when installed (and the root is `/`), else the rule files
/// (`/etc/audit/rules.d/*.rules`, `/etc/audit/audit.rules`).
fn read_audit(o: &HostOptions) -> AuditRules {
    if o.use_auditctl {
        if let Ok(out) = std::process::Command::new("auditctl").arg("-l").output() {
            if out.status.success() {
                let t = String::from_utf8_lossy(&out.stdout);
                return AuditRules { source: "auditctl -l".into(), lines: rule_lines(&t) };
            }
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(o.under("/etc/audit/rules.d"))
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "rules")).collect())
        .unwrap_or_default();
    files.sort();
    files.push(o.under("/etc/audit/audit.rules"));
    let mut lines = Vec::new();
    for f in &files {
        if let Ok(t) = std::fs::read_to_string(f) {
            lines.extend(rule_lines(&t));
        }
    }
    AuditRules { source: "/etc/audit/rules.d/*.rules, /etc/audit/audit.rules".into(), lines }
}

fn rule_lines(t: &str) -> Vec<String> {
    t.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';')).map(String::from).collect()
}

pub fn parse_mounts(t: &str) -> Vec<MountEntry> {
    t.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| MountEntry { device: unescape(f[0]), target: unescape(f[1]), fstype: f[2].to_string() })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn read_dm(sys_block: &Path) -> Vec<DmDevice> {
    let Ok(rd) = std::fs::read_dir(sys_block) else { return vec![] };
    let mut v: Vec<DmDevice> = rd
        .flatten()
        .filter_map(|e| {
            let kname = e.file_name().to_string_lossy().into_owned();
            if !kname.starts_with("dm-") {
                return None;
            }
            let dm = e.path().join("dm");
            let name = std::fs::read_to_string(dm.join("name")).unwrap_or_default().trim().to_string();
            let uuid = std::fs::read_to_string(dm.join("uuid")).unwrap_or_default().trim().to_string();
            Some(DmDevice { kname, name, uuid })
        })
        .collect();
    v.sort_by(|a, b| a.kname.cmp(&b.kname));
    v
}

/// One scan of `/proc`: the `comm` of every process sharing a PID namespace
/// with one of `init_pids`. Containers may share a namespace (`--pid=host`,
/// `--pid=container:X`): each distinct namespace is read once and its processes
/// listed under every container in it. `None` when a container's namespace cannot be read.
fn container_procs(proc_dir: &Path, init_pids: &[u32]) -> Option<BTreeMap<u32, Vec<String>>> {
    let ns_of = |pid: &str| std::fs::read_link(proc_dir.join(pid).join("ns/pid")).ok().map(|l| l.to_string_lossy().into_owned());
    let mut by_ns: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for p in init_pids {
        by_ns.entry(ns_of(&p.to_string())?).or_default().push(*p);
    }
    let mut comms: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    if !by_ns.is_empty() {
        for e in std::fs::read_dir(proc_dir).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some((ns, _)) = ns_of(&name).and_then(|ns| by_ns.get_key_value(&ns)) {
                if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                    comms.entry(ns.as_str()).or_default().push(comm.trim().to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (ns, pids) in &by_ns {
        for p in pids {
            out.insert(*p, comms.get(ns.as_str()).cloned().unwrap_or_default());
        }
    }
    Some(out)
}

/// The engine's process as the socket tells it: `SO_PEERCRED` on a connection to
/// the engine's unix socket gives the pid of the process that listens on it
/// (unix(7)), in this PID namespace (0 when it is not visible from here).
pub async fn engine_peer_pid(socket: &Path) -> Result<u32, String> {
    let s = tokio::net::UnixStream::connect(socket).await.map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let cred = s.peer_cred().map_err(|e| format!("SO_PEERCRED on {} failed: {e}", socket.display()))?;
    match cred.pid() {
        Some(p) if p > 0 => Ok(p as u32),
        _ => Err(format!("SO_PEERCRED on {} gave no pid: the engine runs in a PID namespace this process cannot see", socket.display())),
    }
}

/// The dockerd serving the socket, from the pid [`engine_peer_pid`] found. When
/// the socket is held by another process (systemd socket activation: pid 1), the
/// one dockerd started with `-H fd://` serves it; anything else is an error
/// saying what could not be read.
fn find_dockerd(proc_dir: &Path, peer: Result<u32, String>) -> Result<Dockerd, String> {
    let pid = peer?;
    let cmdline = |pid: u32| -> Result<Vec<String>, String> {
        let path = proc_dir.join(pid.to_string()).join("cmdline");
        let raw = std::fs::read(&path).map_err(|e| format!("the engine's process (pid {pid}, from SO_PEERCRED) cannot be read: {}: {e}", path.display()))?;
        Ok(raw.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
    };
    let is_dockerd = |args: &[String]| args.first().is_some_and(|a0| Path::new(a0).file_name().is_some_and(|n| n == "dockerd"));
    let args = cmdline(pid)?;
    if is_dockerd(&args) {
        return Ok(Dockerd { pid, listeners: read_listeners(proc_dir, pid), args });
    }
    // Socket activation: the listener belongs to systemd; dockerd got it as fd://.
    let holder = args.first().cloned().unwrap_or_default();
    let mut fd_dockerds = Vec::new();
    for e in std::fs::read_dir(proc_dir).map_err(|e| format!("cannot list {}: {e}", proc_dir.display()))?.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(a) = cmdline(p) {
            if is_dockerd(&a) && flag_values(&a, &["-H", "--host"]).iter().any(|h| h.starts_with("fd://")) {
                fd_dockerds.push((p, a));
            }
        }
    }
    match fd_dockerds.len() {
        1 => {
            let (pid, args) = fd_dockerds.remove(0);
            Ok(Dockerd { pid, listeners: read_listeners(proc_dir, pid), args })
        }
        n => Err(format!("the engine socket is held by pid {pid} ({holder}), not by dockerd, and {n} dockerd processes take a socket from it (-H fd://): cannot tell which one serves it")),
    }
}

/// TCP sockets in LISTEN state owned by `pid` (its fds matched against
/// `/proc/<pid>/net/tcp` and `tcp6`, which are in the process's network namespace).
fn read_listeners(proc_dir: &Path, pid: u32) -> Option<Vec<Listener>> {
    let base = proc_dir.join(pid.to_string());
    let mut inodes = BTreeSet::new();
    for e in std::fs::read_dir(base.join("fd")).ok()?.flatten() {
        if let Ok(l) = std::fs::read_link(e.path()) {
            if let Some(n) = l.to_string_lossy().strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse::<u64>().ok()) {
                inodes.insert(n);
            }
        }
    }
    let mut out = Vec::new();
    for (f, v6) in [("tcp", false), ("tcp6", true)] {
        if let Ok(t) = std::fs::read_to_string(base.join("net").join(f)) {
            out.extend(parse_proc_net_tcp(&t, v6).into_iter().filter(|(ino, _)| inodes.contains(ino)).map(|(_, l)| l));
        }
    }
    Some(out)
}

/// LISTEN entries of `/proc/net/tcp{,6}`: (inode, address).
pub fn parse_proc_net_tcp(t: &str, v6: bool) -> Vec<(u64, Listener)> {
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (addr, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = f[9].parse().ok()?;
            let (ip, wildcard) = if v6 {
                let mut b = [0u8; 16];
                for w in 0..4 {
                    let word = u32::from_str_radix(addr.get(w * 8..w * 8 + 8)?, 16).ok()?;
                    b[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
                }
                let ip = Ipv6Addr::from(b);
                (ip.to_string(), ip.is_unspecified())
            } else {
                let ip = Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_le_bytes());
                (ip.to_string(), ip.is_unspecified())
            };
            Some((inode, Listener { ip, port, wildcard }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listen_entries() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0949 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:0CEB 0100007F:1234 01 00000000:00000000 00:00000000 00000000     0        0 98 1 0000000000000000 100 0 0 10 0\n";
        let v = parse_proc_net_tcp(t, false);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], (1234, Listener { ip: "0.0.0.0".into(), port: 2377, wildcard: true }));
        assert_eq!(v[1].1.ip, "127.0.0.1");
        let t6 = "hdr\n   0: 00000000000000000000000000000000:0949 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1\n";
        let v6 = parse_proc_net_tcp(t6, true);
        assert_eq!(v6[0].1.to_string(), "[::]:2377");
        assert!(v6[0].1.wildcard);
    }

    #[test]
    fn flags_from_command_line() {
        let a: Vec<String> = ["dockerd", "-H", "unix:///x.sock", "--icc=false", "--log-level", "warn", "--live-restore", "--host=tcp://0.0.0.0:2375"].iter().map(|s| s.to_string()).collect();
        assert_eq!(flag_values(&a, &["-H", "--host"]), vec!["unix:///x.sock", "tcp://0.0.0.0:2375"]);
        assert_eq!(flag_values(&a, &["--log-level", "-l"]), vec!["warn"]);
        let h = HostFacts { dockerd: Some(Dockerd { pid: 1, args: a, listeners: None }), ..Default::default() };
        let s = Settings::new(&h);
        assert_eq!(s.flag("icc"), Some(false));
        assert_eq!(s.flag("live-restore"), Some(true));
        assert_eq!(s.flag("userland-proxy"), None);
    }
}
