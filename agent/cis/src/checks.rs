//! The catalogue: each check is data (CIS Docker Benchmark v1.6.0 ID and
//! title as docker-bench-security v1.6.0 writes them, remediation, impact)
//! plus one pure evaluation over a [`Snapshot`] gathered once.
//!
//! Titles ending in "(Automated)" are scored (+1 PASS, −1 WARN); "(Manual)"
//! ones are counted but not scored, as in docker-bench-security (one exception
//! there, 5.9: [`Check::scored`]). Every PASS names its evidence.
//! Appliance checks use the `A` prefix.

use bollard::models::{ContainerInspectResponse, RestartPolicyNameEnum};

use crate::host::{self, HostFacts, Read, Settings};
use crate::report::{Outcome, Status};
use crate::{ApplianceFacts, EngineFacts};

/// Everything the evaluations see: the engine, the host and the appliance, read once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub engine: EngineFacts,
    pub host: HostFacts,
    pub appliance: ApplianceFacts,
    /// Host path of the engine socket (3.15, 3.16).
    pub docker_socket: String,
}

/// One check: data plus one evaluation.
pub struct Check {
    pub id: &'static str,
    pub desc: &'static str,
    pub remediation: &'static str,
    pub impact: &'static str,
    pub eval: fn(&Snapshot) -> Outcome,
}

impl Check {
    /// Scored as docker-bench-security v1.6.0 scores it: it scores per call, not by
    /// title (`functions/output_lib.sh`: `pass -s`/`warn -s` are scored, `pass -c`,
    /// `info -c`, `note -c` are only counted), and its `tests/*.sh` call `-s` for
    /// every Automated check and `-c` for every Manual one, except 5.9 "Ensure that
    /// only needed ports are open on the container (Manual)", whose PASS and WARN
    /// are `pass -s`/`warn -s` (`tests/5_container_runtime.sh`,
    /// github.com/docker/docker-bench-security). Appliance checks: Automated ones.
    /// Section 5 IDs are the same in v1.6.0 and v1.8.0.
    pub fn scored(&self) -> bool {
        self.desc.ends_with("(Automated)") || self.id == "5.9"
    }
}

/// Section IDs and titles, in report order.
pub const SECTIONS: &[(&str, &str)] = &[
    ("1", "Host Configuration"),
    ("2", "Docker daemon configuration"),
    ("3", "Docker daemon configuration files"),
    ("4", "Container Images and Build File"),
    ("5", "Container Runtime"),
    ("6", "Docker Security Operations"),
    ("7", "Docker Swarm Configuration"),
    ("A", "Swarm Manager Appliance"),
];

const AUDIT_IMPACT: &str = "Audit can generate large log files. So you need to make sure that they are rotated and archived periodically. Create a separate partition for audit logs to avoid filling up other critical partitions.";
const NO_CONTAINERS: &str = "No containers";

macro_rules! check {
    ($id:literal, $desc:literal, $rem:expr, $imp:expr, $eval:expr) => {
        Check { id: $id, desc: $desc, remediation: $rem, impact: $imp, eval: $eval }
    };
}

macro_rules! audit {
    ($id:literal, $desc:literal, $path:literal, $needs_file:literal) => {
        Check {
            id: $id,
            desc: $desc,
            remediation: concat!("Install auditd. Add -w ", $path, " -k docker to the /etc/audit/rules.d/audit.rules file. Then restart the audit daemon using command service auditd restart."),
            impact: AUDIT_IMPACT,
            eval: |s| audit_rule(s, $path, $needs_file),
        }
    };
}

macro_rules! audit_unit {
    ($id:literal, $desc:literal, $unit:literal) => {
        Check {
            id: $id,
            desc: $desc,
            remediation: concat!("Install auditd. Add -w <path of ", $unit, "> -k docker to the /etc/audit/rules.d/audit.rules file. Then restart the audit daemon using command service auditd restart."),
            impact: AUDIT_IMPACT,
            eval: |s| match s.host.units.get($unit) {
                Some(p) => audit_present(s, p).with_remediation(format!("Install auditd. Add -w {p} -k docker to the /etc/audit/rules.d/audit.rules file. Then restart the audit daemon using command service auditd restart.")),
                None => Outcome::info("File not found"),
            },
        }
    };
}

/// v1.8.0's 2.7 (not in v1.6.0): the storage driver from `GET /info` (`Driver`).
/// [`crate::benchmark::catalogue`] places it after 2.6.
pub fn devicemapper() -> Check {
    check!(
        "2.7",
        "Ensure devicemapper storage driver is not used (Automated)",
        "Do not use devicemapper as the storage driver: use overlay2 (\"storage-driver\": \"overlay2\" in daemon.json, or no setting: it is the default where supported).",
        "Images and containers stored by devicemapper are not visible under another driver: they must be pulled or re-created after the change.",
        |s| driver_is_not(s, "devicemapper")
    )
}

/// 2.6/2.7: the storage driver (`GET /info` `Driver`) is not `bad`.
fn driver_is_not(s: &Snapshot, bad: &str) -> Outcome {
    match s.engine.info.driver.as_deref() {
        Some(d) if d == bad => Outcome::warn(format!("Storage driver is {d}")),
        Some(d) => Outcome::pass_with(format!("Storage driver is {d}")),
        None => Outcome::note("The engine did not report its storage driver (GET /info Driver)"),
    }
}

/// The whole catalogue in CIS Docker Benchmark v1.6.0 IDs, in report order;
/// [`crate::benchmark::catalogue`] gives it in the IDs of a chosen version.
pub fn catalogue() -> Vec<Check> {
    vec![
        // ---- 1 Host Configuration: host files under --root, audit rules, the mount table; GET /info (DockerRootDir), GET /version ----
        check!(
            "1.1.1",
            "Ensure a separate partition for containers has been created (Automated)",
            "For new installations, you should create a separate partition for the /var/lib/docker mount point. For systems that have already been installed, you should use the Logical Volume Manager (LVM) within Linux to create a new partition.",
            "None.",
            |s| {
                let Some(dir) = s.engine.info.docker_root_dir.clone() else { return Outcome::note("The engine did not report its DockerRootDir") };
                let Some(m) = &s.host.mounts else { return Outcome::note("The mount table could not be read") };
                if m.iter().any(|e| e.target == dir) {
                    Outcome::pass_with(format!("{dir} is a mount point"))
                } else {
                    Outcome::items(Status::Warn, "Not a separate partition", vec![dir])
                }
            }
        ),
        check!(
            "1.1.2",
            "Ensure only trusted users are allowed to control Docker daemon (Automated)",
            "You should remove any untrusted users from the docker group using command sudo gpasswd -d <your-user> docker or add trusted users to the docker group using command sudo usermod -aG docker <your-user>. You should not create a mapping of sensitive directories from the host to container volumes.",
            "Only trust user are allow to build and execute containers as normal user.",
            |s| match &s.host.docker_group {
                Some((_, users)) if !users.is_empty() => Outcome::items(Status::Info, "doubtfulusers", users.clone()),
                Some(_) => Outcome::info("The docker group has no members"),
                None => Outcome::info("No docker group"),
            }
        ),
        audit!("1.1.3", "Ensure auditing is configured for the Docker daemon (Automated)", "/usr/bin/dockerd", false),
        audit!("1.1.4", "Ensure auditing is configured for Docker files and directories -/run/containerd (Automated)", "/run/containerd", true),
        audit!("1.1.5", "Ensure auditing is configured for Docker files and directories - /var/lib/docker (Automated)", "/var/lib/docker", true),
        audit!("1.1.6", "Ensure auditing is configured for Docker files and directories - /etc/docker (Automated)", "/etc/docker", true),
        audit_unit!("1.1.7", "Ensure auditing is configured for Docker files and directories - docker.service (Automated)", "docker.service"),
        audit_unit!("1.1.8", "Ensure auditing is configured for Docker files and directories - containerd.sock (Automated)", "containerd.socket"),
        audit_unit!("1.1.9", "Ensure auditing is configured for Docker files and directories - docker.socket (Automated)", "docker.socket"),
        audit!("1.1.10", "Ensure auditing is configured for Docker files and directories - /etc/default/docker (Automated)", "/etc/default/docker", true),
        audit!("1.1.11", "Ensure auditing is configured for Docker files and directories - /etc/docker/daemon.json (Automated)", "/etc/docker/daemon.json", true),
        audit!("1.1.12", "Ensure auditing is configured for Docker files and directories - /etc/containerd/config.toml (Automated)", "/etc/containerd/config.toml", true),
        audit!("1.1.13", "Ensure auditing is configured for Docker files and directories - /etc/sysconfig/docker (Automated)", "/etc/sysconfig/docker", true),
        audit!("1.1.14", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd (Automated)", "/usr/bin/containerd", true),
        audit!("1.1.15", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd-shim (Automated)", "/usr/bin/containerd-shim", true),
        audit!("1.1.16", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd-shim-runc-v1 (Automated)", "/usr/bin/containerd-shim-runc-v1", true),
        audit!("1.1.17", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd-shim-runc-v2 (Automated)", "/usr/bin/containerd-shim-runc-v2", true),
        audit!("1.1.18", "Ensure auditing is configured for Docker files and directories - /usr/bin/runc (Automated)", "/usr/bin/runc", true),
        check!(
            "1.2.1",
            "Ensure the container host has been Hardened (Manual)",
            "You may consider various Security Benchmarks for your container host.",
            "None.",
            |_| Outcome::note("Review the host against a hardening benchmark for its operating system")
        ),
        check!(
            "1.2.2",
            "Ensure that the version of Docker is up to date (Manual)",
            "You should monitor versions of Docker releases and make sure your software is updated as required.",
            "You should perform a risk assessment regarding Docker version updates and review how they may impact your operations.",
            |s| Outcome::info(format!("Using {}", s.engine.version.version.clone().unwrap_or_else(|| "an unknown version".into())))
        ),
        // ---- 2 Docker daemon configuration: dockerd command line (/proc/<pid>/cmdline), daemon.json, GET /info, GET /version ----
        check!(
            "2.1",
            "Run the Docker daemon as a non-root user, if possible (Manual)",
            "Follow the current Dockerd rootless documentation on how to install and run the Docker daemon as a non-root user.",
            "There are multiple prerequisites depending on which distribution that is in use, and also known limitations regarding networking and resource limitation.",
            |s| {
                if sec_opt(s, "name=rootless") {
                    Outcome::pass_with("The daemon runs rootless (GET /info SecurityOptions: name=rootless)")
                } else {
                    Outcome::info("The daemon runs as root; a swarm manager needs it (overlay networking, raft store)")
                }
            }
        ),
        check!(
            "2.2",
            "Ensure network traffic is restricted between containers on the default bridge (Automated)",
            "Edit the Docker daemon configuration file to ensure that inter-container communication is disabled: \"icc\": false (or run dockerd --icc=false).",
            "Inter-container communication is disabled on the default network bridge. Containers that need to talk must be on a user-defined network or use links.",
            |s| match settings(s).flag_read("icc") {
                Read::Set(false, src) => Outcome::pass_with(format!("icc is false ({src})")),
                Read::Set(true, src) => Outcome::warn(format!("icc is not set to false: true ({src})")),
                Read::Default => Outcome::warn("icc is not set to false: not set, dockerd's default is true"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.3",
            "Ensure the logging level is set to 'info' (Automated)",
            "Ensure that the Docker daemon configuration file has the configuration \"log-level\": \"info\", or start dockerd with --log-level=info.",
            "None.",
            |s| match settings(s).value_read("log-level") {
                Read::Set(l, src) if l == "info" => Outcome::pass_with(format!("log-level is info ({src})")),
                Read::Set(l, _) => Outcome::warn(format!("log-level is {l}")),
                Read::Default => Outcome::pass_with("log-level is not set: dockerd's default is info"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.4",
            "Ensure Docker is allowed to make changes to iptables (Automated)",
            "Do not run the Docker daemon with --iptables=false and do not set \"iptables\": false in daemon.json.",
            "The Docker daemon service requires iptables rules to be enabled before it starts.",
            |s| match settings(s).flag_read("iptables") {
                Read::Set(false, src) => Outcome::warn(format!("iptables is set to false ({src})")),
                Read::Set(true, src) => Outcome::pass_with(format!("iptables is true ({src})")),
                Read::Default => Outcome::pass_with("iptables is not set: dockerd's default is true"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.5",
            "Ensure insecure registries are not used (Automated)",
            "You should ensure that no insecure registries are in use: remove --insecure-registry flags and \"insecure-registries\" from daemon.json.",
            "None.",
            |s| {
                let Some(r) = &s.engine.info.registry_config else { return Outcome::note("The engine did not report its RegistryConfig (GET /info)") };
                let mut bad: Vec<String> = Vec::new();
                let cidrs: Vec<String> = r.insecure_registry_cidrs.clone().unwrap_or_default();
                bad.extend(cidrs.iter().filter(|c| *c != "127.0.0.0/8" && *c != "::1/128").cloned());
                for (name, idx) in r.index_configs.iter().flatten() {
                    if idx.secure == Some(false) {
                        bad.push(name.clone());
                    }
                }
                bad.sort();
                bad.dedup();
                let evidence = format!("GET /info RegistryConfig: every index is secure, insecure CIDRs are loopback only ({})", if cidrs.is_empty() { "none".to_string() } else { cidrs.join(" ") });
                Outcome::warn_if_any("Insecure registries", bad, evidence)
            }
        ),
        check!(
            "2.6",
            "Ensure aufs storage driver is not used (Automated)",
            "Do not explicitly use aufs as storage driver.",
            "aufs is the only storage driver that allows containers to share executable and shared library memory. Its use should be reviewed in line with your organization's security policy.",
            |s| driver_is_not(s, "aufs")
        ),
        check!(
            "2.7",
            "Ensure TLS authentication for Docker daemon is configured (Automated)",
            "Follow the steps mentioned in the Docker documentation or other references. On this appliance remote access goes through the swarmseal mutual-TLS proxy; do not give dockerd a tcp:// host.",
            "You would need to manage and guard certificates and keys for the Docker daemon and Docker clients.",
            |s| {
                let st = settings(s);
                let tcp: Vec<String> = match st.values_read("hosts") {
                    Read::Unknown(why) => return Outcome::note(why),
                    Read::Default => return Outcome::info("Docker daemon not listening on TCP: no -H/hosts set, dockerd's default is the unix socket"),
                    Read::Set(hosts, src) => {
                        let tcp: Vec<String> = hosts.iter().filter(|h| h.starts_with("tcp://")).cloned().collect();
                        if tcp.is_empty() {
                            return Outcome::info(format!("Docker daemon not listening on TCP: hosts {} ({src})", hosts.join(" ")));
                        }
                        tcp
                    }
                };
                let (key, cert, verify) = (st.value_read("tlskey"), st.value_read("tlscert"), st.flag_read("tlsverify"));
                if let Some(why) = [&key, &cert].into_iter().find_map(|r| if let Read::Unknown(w) = r { Some(w.clone()) } else { None }) {
                    return Outcome::note(why);
                }
                if !matches!((&key, &cert), (Read::Set(..), Read::Set(..))) {
                    return Outcome::items(Status::Warn, "Docker daemon currently listening on TCP without TLS", tcp);
                }
                match verify {
                    Read::Set(true, src) => Outcome::pass_with(format!("Docker daemon listening on TCP with TLS and client verification (tlsverify, {src}): {}", tcp.join(" "))),
                    Read::Unknown(why) => Outcome::note(why),
                    _ => Outcome::items(Status::Warn, "Docker daemon currently listening on TCP with TLS, but no verification", tcp),
                }
            }
        ),
        check!(
            "2.8",
            "Ensure the default ulimit is configured appropriately (Manual)",
            "Run Docker in daemon mode and pass --default-ulimit as option with respective ulimits as appropriate in your environment and in line with your security policy.",
            "If ulimits are not set correctly, overutilization by individual containers could make the host system unusable.",
            |s| match settings(s).values_read("default-ulimits") {
                Read::Set(v, src) => Outcome::pass_with(format!("default-ulimits {} ({src})", v.join(" "))),
                Read::Default => Outcome::info("Default ulimit doesn't appear to be set"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.9",
            "Enable user namespace support (Automated)",
            "Please consult the Docker documentation for various ways in which this can be configured depending upon your requirements (\"userns-remap\": \"default\" in daemon.json).",
            "User namespace remapping is incompatible with a number of Docker features and also currently breaks with some of its functionalities.",
            |s| {
                if let Some(o) = sec_opt_of(s, "name=userns") {
                    Outcome::pass_with(format!("User namespace remapping is on (GET /info SecurityOptions: {o})"))
                } else {
                    Outcome::warn("User namespace remapping is not enabled")
                }
            }
        ),
        check!(
            "2.10",
            "Ensure the default cgroup usage has been confirmed (Automated)",
            "The default setting is in line with good security practice and can be left in situ. If you wish to specifically set a non-default cgroup, pass the --cgroup-parent parameter to the Docker daemon when starting it.",
            "None.",
            |s| match settings(s).value_read("cgroup-parent") {
                Read::Set(p, src) => Outcome::info(format!("Confirm cgroup usage: cgroup-parent is {p} ({src})")),
                Read::Default => Outcome::pass_with("cgroup-parent is not set: containers use the default cgroup"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.11",
            "Ensure base device size is not changed until needed (Automated)",
            "Do not set --storage-opt dm.basesize until needed.",
            "Increasing the base device size allows all future images and containers to be of the new base device size, this may cause a denial of service by ending up in file system being over allocated or full.",
            |s| match settings(s).values_read("storage-opts") {
                Read::Set(opts, src) => {
                    let v: Vec<String> = opts.iter().filter(|o| o.contains("dm.basesize")).cloned().collect();
                    if v.is_empty() {
                        Outcome::pass_with(format!("storage-opts do not set dm.basesize: {} ({src})", opts.join(" ")))
                    } else {
                        Outcome::items(Status::Warn, "Base device size changed", v)
                    }
                }
                Read::Default => Outcome::pass_with("No storage-opts set"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.12",
            "Ensure that authorization for Docker client commands is enabled (Automated)",
            "Install/Create an authorization plugin. Configure the authorization policy as desired. Start the docker daemon with --authorization-plugin=<PLUGIN_ID>.",
            "Each Docker command specifically passes through the authorization plugin mechanism. This may introduce a slight performance drop.",
            |s| {
                let plugins = s.engine.info.plugins.as_ref().and_then(|p| p.authorization.clone()).unwrap_or_default();
                if plugins.is_empty() {
                    Outcome::warn("No authorization plugin")
                } else {
                    Outcome::pass_with(format!("Authorization plugins: {}", plugins.join(" ")))
                }
            }
        ),
        check!(
            "2.13",
            "Ensure centralized and remote logging is configured (Automated)",
            "Set up the desired log driver following its documentation, e.g. \"log-driver\": \"syslog\" or \"journald\" in daemon.json.",
            "None.",
            |s| match s.engine.info.logging_driver.as_deref() {
                Some(d @ ("json-file" | "local" | "none")) | Some(d @ "") => Outcome::warn(format!("Logging driver is {d}")),
                Some(d) => Outcome::pass_with(format!("Logging driver is {d}")),
                None => Outcome::note("The engine did not report its logging driver"),
            }
        ),
        check!(
            "2.14",
            "Ensure containers are restricted from acquiring new privileges (Automated)",
            "You should run the Docker daemon with --no-new-privileges, or set \"no-new-privileges\": true in daemon.json.",
            "no_new_priv prevents LSMs such as SELinux from escalating the privileges of individual containers.",
            |s| match settings(s).flag_read("no-new-privileges") {
                Read::Set(true, src) => Outcome::pass_with(format!("no-new-privileges is true ({src})")),
                Read::Set(false, src) => Outcome::warn(format!("no-new-privileges is not set: false ({src})")),
                Read::Default => Outcome::warn("no-new-privileges is not set"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.15",
            "Ensure live restore is enabled (Automated)",
            "Run Docker in daemon mode and pass --live-restore to it as an argument, or set \"live-restore\": true in daemon.json.",
            "None.",
            |s| {
                match s.engine.info.live_restore_enabled {
                    Some(true) => Outcome::pass_with("Live restore is enabled (GET /info LiveRestoreEnabled)"),
                    None => Outcome::note("The engine did not report LiveRestoreEnabled (GET /info)"),
                    Some(false) if s.engine.swarm_active() || s.engine.swarm_state() == "locked" => {
                        Outcome::info(format!("Live restore is off, and dockerd does not allow it in swarm mode, which this node runs (swarm {})", s.engine.swarm_state()))
                    }
                    Some(false) => Outcome::warn("Live restore is not enabled"),
                }
            }
        ),
        check!(
            "2.16",
            "Ensure Userland Proxy is Disabled (Automated)",
            "You should run the Docker daemon with --userland-proxy=false, or set \"userland-proxy\": false in daemon.json.",
            "Some systems with older Linux kernels may not be able to support hairpin NAT and therefore require the userland proxy service.",
            |s| match settings(s).flag_read("userland-proxy") {
                Read::Set(false, src) => Outcome::pass_with(format!("userland-proxy is false ({src})")),
                Read::Set(true, src) => Outcome::warn(format!("userland-proxy is enabled ({src})")),
                Read::Default => Outcome::warn("userland-proxy is enabled: not set, dockerd's default is true"),
                Read::Unknown(why) => Outcome::note(why),
            }
        ),
        check!(
            "2.17",
            "Ensure that a daemon-wide custom seccomp profile is applied if appropriate (Manual)",
            "By default, Docker's default seccomp profile is applied. If this is adequate for your environment, no action is necessary. Otherwise, set \"seccomp-profile\" in daemon.json.",
            "A misconfigured seccomp profile could possibly interrupt your container environment.",
            |s| {
                let opts = s.engine.info.security_options.clone().unwrap_or_default();
                match opts.iter().find(|o| o.starts_with("name=seccomp")) {
                    Some(o) => Outcome::pass_with(format!("{o} (GET /info SecurityOptions)")),
                    None => Outcome::info("Seccomp is not enabled on this engine"),
                }
            }
        ),
        check!(
            "2.18",
            "Ensure that experimental features are not implemented in production (Automated)",
            "You should not pass --experimental as a runtime parameter to the Docker daemon on production systems.",
            "None.",
            |s| {
                match (s.engine.info.experimental_build, s.engine.version.experimental) {
                    (Some(true), _) | (_, Some(true)) => Outcome::warn("Experimental features are enabled"),
                    (None, None) => Outcome::note("The engine did not report whether experimental features are on (GET /info ExperimentalBuild, GET /version Experimental)"),
                    _ => Outcome::pass_with("Experimental features are off (GET /info ExperimentalBuild, GET /version Experimental)"),
                }
            }
        ),
        // ---- 3 Docker daemon configuration files: stat (owner, mode) of host files under --root and of the engine socket ----
        check!("3.1", "Ensure that the docker.service file ownership is set to root:root (Automated)", "Find out the file location: systemctl show -p FragmentPath docker.service. Then run chown root:root <path>.", "None.", |s| owner(s, s.host.units.get("docker.service").map(|x| x.as_str()), "File not found")),
        check!("3.2", "Ensure that docker.service file permissions are appropriately set (Automated)", "Find out the file location: systemctl show -p FragmentPath docker.service. Then run chmod 644 <path>.", "None.", |s| perms(s, s.host.units.get("docker.service").map(|x| x.as_str()), 0o644, "File not found")),
        check!("3.3", "Ensure that docker.socket file ownership is set to root:root (Automated)", "Find out the file location: systemctl show -p FragmentPath docker.socket. Then run chown root:root <path>.", "None.", |s| owner(s, s.host.units.get("docker.socket").map(|x| x.as_str()), "File not found")),
        check!("3.4", "Ensure that docker.socket file permissions are set to 644 or more restrictive (Automated)", "Find out the file location: systemctl show -p FragmentPath docker.socket. Then run chmod 644 <path>.", "None.", |s| perms(s, s.host.units.get("docker.socket").map(|x| x.as_str()), 0o644, "File not found")),
        check!("3.5", "Ensure that the /etc/docker directory ownership is set to root:root (Automated)", "You should run the following command: chown root:root /etc/docker.", "None.", |s| owner(s, Some(host::DOCKER_ETC), "Directory not found")),
        check!("3.6", "Ensure that /etc/docker directory permissions are set to 755 or more restrictively (Automated)", "You should run the following command: chmod 755 /etc/docker.", "None.", |s| perms(s, Some(host::DOCKER_ETC), 0o755, "Directory not found")),
        check!("3.7", "Ensure that registry certificate file ownership is set to root:root (Automated)", "You should run the following command: chown root:root /etc/docker/certs.d/<registry-name>/*.", "None.", |s| match &s.host.registry_certs {
            None => Outcome::info("Directory not found"),
            Some(files) => registry_certs(s, files, "Wrong ownership for", |st| st.uid == 0 && st.gid == 0, |st| format!("{}:{}", st.uid, st.gid)),
        }),
        check!("3.8", "Ensure that registry certificate file permissions are set to 444 or more restrictively (Automated)", "You should run the following command: chmod 444 /etc/docker/certs.d/<registry-name>/*.", "None.", |s| match &s.host.registry_certs {
            None => Outcome::info("Directory not found"),
            Some(files) => registry_certs(s, files, "Wrong permissions for", |st| st.mode & !0o444 == 0, |st| format!("{:o}", st.mode)),
        }),
        check!("3.9", "Ensure that TLS CA certificate file ownership is set to root:root (Automated)", "You should run the following command: chown root:root <path to TLS CA certificate file>.", "None.", |s| tls_file(s, "tlscacert", |p| owner(s, p, "No TLS CA certificate found"))),
        check!("3.10", "Ensure that TLS CA certificate file permissions are set to 444 or more restrictively (Automated)", "You should run the following command: chmod 444 <path to TLS CA certificate file>.", "None.", |s| tls_file(s, "tlscacert", |p| perms(s, p, 0o444, "No TLS CA certificate found"))),
        check!("3.11", "Ensure that Docker server certificate file ownership is set to root:root (Automated)", "You should run the following command: chown root:root <path to Docker server certificate file>.", "None.", |s| tls_file(s, "tlscert", |p| owner(s, p, "No TLS Server certificate found"))),
        check!("3.12", "Ensure that the Docker server certificate file permissions are set to 444 or more restrictively (Automated)", "You should run the following command: chmod 444 <path to Docker server certificate file>.", "None.", |s| tls_file(s, "tlscert", |p| perms(s, p, 0o444, "No TLS Server certificate found"))),
        check!("3.13", "Ensure that the Docker server certificate key file ownership is set to root:root (Automated)", "You should run the following command: chown root:root <path to Docker server certificate key file>.", "None.", |s| tls_file(s, "tlskey", |p| owner(s, p, "No TLS Key found"))),
        check!("3.14", "Ensure that the Docker server certificate key file permissions are set to 400 (Automated)", "You should run the following command: chmod 400 <path to Docker server certificate key file>.", "None.", |s| tls_file(s, "tlskey", |p| perms(s, p, 0o400, "No TLS Key found"))),
        check!("3.15", "Ensure that the Docker socket file ownership is set to root:docker (Automated)", "You should run the following command: chown root:docker <path to the Docker socket>.", "None.", |s| {
            let p = s.docker_socket.as_str();
            let Some(st) = s.host.stat_of(p) else { return Outcome::info("File not found") };
            let docker_gid = s.host.docker_group.as_ref().map(|g| g.0);
            if st.uid == 0 && (st.gid == 0 || Some(st.gid) == docker_gid) {
                Outcome::pass_with(format!("{p} is {}:{} ({})", st.uid, st.gid, if st.gid == 0 { "root:root" } else { "root:docker" }))
            } else {
                Outcome::items(Status::Warn, "Wrong ownership for", vec![format!("{p}({}:{})", st.uid, st.gid)])
            }
        }),
        check!("3.16", "Ensure that the Docker socket file permissions are set to 660 or more restrictively (Automated)", "You should run the following command: chmod 660 <path to the Docker socket>.", "None.", |s| perms(s, Some(s.docker_socket.as_str()), 0o660, "File not found")),
        check!("3.17", "Ensure that the daemon.json file ownership is set to root:root (Automated)", "You should run the following command: chown root:root /etc/docker/daemon.json.", "None.", |s| owner(s, Some(s.host.daemon_json_path.as_str()), "File not found")),
        check!("3.18", "Ensure that daemon.json file permissions are set to 644 or more restrictive (Automated)", "You should run the following command: chmod 644 /etc/docker/daemon.json.", "None.", |s| perms(s, Some(s.host.daemon_json_path.as_str()), 0o644, "File not found")),
        check!("3.19", "Ensure that the /etc/default/docker file ownership is set to root:root (Automated)", "You should run the following command: chown root:root /etc/default/docker.", "None.", |s| owner(s, Some(host::DEFAULT_DOCKER), "File not found")),
        check!("3.20", "Ensure that the /etc/default/docker file permissions are set to 644 or more restrictively (Automated)", "You should run the following command: chmod 644 /etc/default/docker.", "None.", |s| perms(s, Some(host::DEFAULT_DOCKER), 0o644, "File not found")),
        check!("3.21", "Ensure that the /etc/sysconfig/docker file permissions are set to 644 or more restrictively (Automated)", "You should run the following command: chmod 644 /etc/sysconfig/docker.", "None.", |s| perms(s, Some(host::SYSCONFIG_DOCKER), 0o644, "File not found")),
        check!("3.22", "Ensure that the /etc/sysconfig/docker file ownership is set to root:root (Automated)", "You should run the following command: chown root:root /etc/sysconfig/docker.", "None.", |s| owner(s, Some(host::SYSCONFIG_DOCKER), "File not found")),
        check!("3.23", "Ensure that the Containerd socket file ownership is set to root:root (Automated)", "You should run the following command: chown root:root /run/containerd/containerd.sock.", "None.", |s| owner(s, Some(host::CONTAINERD_SOCK), "File not found")),
        check!("3.24", "Ensure that the Containerd socket file permissions are set to 660 or more restrictively (Automated)", "You should run the following command: chmod 660 /run/containerd/containerd.sock.", "None.", |s| perms(s, Some(host::CONTAINERD_SOCK), 0o660, "File not found")),
        // ---- 4 Container Images and Build File: GET /containers/{id}/json (Config.User), GET /images/{id}/json (Config.Healthcheck), GET /images/{id}/history ----
        check!(
            "4.1",
            "Ensure that a user for the container has been created (Automated)",
            "You should ensure that the Dockerfile for each container image contains the USER instruction, or run the container with --user.",
            "Running as a non-root user can present challenges where you wish to bind mount volumes from the underlying host.",
            |s| per_container(s, Status::Warn, "running as root", |c| {
                let u = c.config.as_ref().and_then(|c| c.user.clone()).unwrap_or_default();
                let name = u.split(':').next().unwrap_or("");
                matches!(name, "" | "root" | "0").then(|| cname(c))
            })
        ),
        check!("4.2", "Ensure that containers use only trusted base images (Manual)", "Configure and use Docker Content trust. View the history of each Docker image to evaluate its risk. Scan Docker images for vulnerabilities at regular intervals.", "None.", |_| Outcome::note("Review the provenance of the images in use")),
        check!("4.3", "Ensure that unnecessary packages are not installed in the container (Manual)", "You should not install anything within the container that is not required.", "None.", |_| Outcome::note("Review the packages in each image")),
        check!("4.4", "Ensure images are scanned and rebuilt to include security patches (Manual)", "Pull all images, rebuild them with security patches and restart the containers (or update the services).", "None.", |_| Outcome::note("Scan images with a vulnerability scanner")),
        check!(
            "4.5",
            "Ensure Content trust for Docker is Enabled (Automated)",
            "Add DOCKER_CONTENT_TRUST variable to the /etc/environment file using command echo DOCKER_CONTENT_TRUST=1 | sudo tee -a /etc/environment.",
            "This prevents users from working with tagged images unless they contain a signature.",
            |s| {
                // The CIS audit: `echo $DOCKER_CONTENT_TRUST` in the shell that runs docker.
                let daemon = match &s.host.dockerd_content_trust {
                    Read::Set(v, src) => format!("dockerd's environment has DOCKER_CONTENT_TRUST={v} ({src})"),
                    Read::Default => "dockerd's environment does not set it".to_string(),
                    Read::Unknown(why) => format!("dockerd's environment could not be read: {why}"),
                };
                match s.host.content_trust.as_deref() {
                    Some("1") => Outcome::pass_with(format!("DOCKER_CONTENT_TRUST=1 in this process's environment; {daemon}")),
                    Some(v) => Outcome::warn(format!("DOCKER_CONTENT_TRUST is {v} in this process's environment, not 1; {daemon}")),
                    None => Outcome::warn(format!("DOCKER_CONTENT_TRUST is not set in this process's environment; {daemon}")),
                }
            }
        ),
        check!(
            "4.6",
            "Ensure that HEALTHCHECK instructions have been added to container images (Automated)",
            "You should follow the Docker documentation and rebuild your container images to include the HEALTHCHECK instruction.",
            "None.",
            |s| {
                let bad: Vec<String> = s
                    .engine
                    .image_details
                    .iter()
                    .filter(|i| !has_healthcheck(i.config.as_ref().and_then(|c| c.healthcheck.as_ref())))
                    .map(|i| s.engine.image_label(i.id.as_deref().unwrap_or("")))
                    .collect();
                let n = s.engine.image_details.len();
                Outcome::warn_if_any("Images w/o HEALTHCHECK", bad, format!("Each of the {n} image(s) has a HEALTHCHECK (GET /images/{{id}}/json Config.Healthcheck)"))
            }
        ),
        check!("4.7", "Ensure update instructions are not used alone in the Dockerfile (Manual)", "You should use update instructions together with install instructions and version pinning for packages while installing them.", "None.", |s| {
            history_matches(s, "Update instructions found", |l| l.contains("update") && !l.contains("install"))
        }),
        check!("4.8", "Ensure setuid and setgid permissions are removed (Manual)", "You should allow setuid and setgid permissions only on executables which require them.", "None.", |_| Outcome::note("Review setuid/setgid binaries in each image")),
        check!("4.9", "Ensure that COPY is used instead of ADD in Dockerfiles (Manual)", "You should use COPY rather than ADD instructions in Dockerfiles.", "None.", |s| {
            history_matches(s, "Images using ADD", |l| l.starts_with("ADD ") || l.contains(" ADD "))
        }),
        check!("4.10", "Ensure secrets are not stored in Dockerfiles (Manual)", "Do not store any kind of secrets within Dockerfiles; use docker secrets.", "None.", |_| Outcome::note("Review Dockerfiles for secrets")),
        check!("4.11", "Ensure only verified packages are installed (Manual)", "You should use a secure package distribution mechanism of your choice to ensure the authenticity of software packages.", "None.", |_| Outcome::note("Review package sources in Dockerfiles")),
        check!("4.12", "Ensure all signed artifacts are validated (Manual)", "Validate artifacts signatures before uploading to the package registry.", "None.", |_| Outcome::note("Review artifact signature validation")),
        // ---- 5 Container Runtime: GET /containers/{id}/json (HostConfig, Mounts, Config, NetworkSettings), GET /info ----
        check!(
            "5.1",
            "Ensure swarm mode is not Enabled, if not needed (Automated)",
            "If swarm mode has been enabled on a system in error, you should run the command: docker swarm leave.",
            "Disabling swarm mode will impact the operation of Docker Enterprise components if these are in use.",
            |s| {
                let state = s.engine.swarm_state();
                let manager = s.engine.info.swarm.as_ref().and_then(|w| w.control_available) == Some(true);
                match state.as_str() {
                    "inactive" => Outcome::pass_with("Swarm mode is inactive (GET /info Swarm.LocalNodeState)"),
                    "active" if manager => Outcome::info("Swarm mode is active and this node is a manager: this appliance is a swarm manager, swarm mode is what it is for"),
                    "locked" => Outcome::info("Swarm mode is locked: this appliance is a swarm manager whose keys are not unlocked yet"),
                    other => Outcome::warn(format!("Swarm mode is {other} and this node is not a manager: a swarm manager appliance should not be a worker")),
                }
            }
        ),
        check!(
            "5.2",
            "Ensure that, if applicable, an AppArmor Profile is enabled (Automated)",
            "If AppArmor is applicable for your Linux OS, you should enable it: verify it is installed, create or import a profile, and start containers with --security-opt=\"apparmor:PROFILENAME\".",
            "The container will have the security controls defined in the AppArmor profile.",
            |s| {
                if !sec_opt(s, "name=apparmor") {
                    return Outcome::info("AppArmor is not enabled on this host");
                }
                per_container(s, Status::Warn, "No AppArmorProfile Found", |c| matches!(c.app_armor_profile.as_deref(), None | Some("") | Some("unconfined")).then(|| cname(c)))
            }
        ),
        check!(
            "5.3",
            "Ensure that, if applicable, SELinux security options are set (Automated)",
            "Set the SELinux State and Policy, create or import a SELinux policy template for Docker containers, and start Docker in daemon mode with SELinux enabled (--selinux-enabled); start containers with --security-opt label=...",
            "Any restrictions defined in the SELinux policy will be applied to your containers.",
            |s| {
                if !sec_opt(s, "name=selinux") {
                    return Outcome::info("SELinux is not enabled on this engine");
                }
                per_container(s, Status::Warn, "Containers with no SecurityOptions", |c| (!security_opts(c).iter().any(|o| o.starts_with("label"))).then(|| cname(c)))
            }
        ),
        check!(
            "5.4",
            "Ensure that Linux kernel capabilities are restricted within containers (Automated)",
            "You should execute the command: docker run --cap-add={\"Capability 1\",\"Capability 2\"} only with the capabilities the container needs, and --cap-drop for the others.",
            "Restrictions on processes within a container are based on which Linux capabilities are in force.",
            |s| per_container(s, Status::Warn, "Capabilities added for containers", |c| {
                let added = c.host_config.as_ref().and_then(|h| h.cap_add.clone()).unwrap_or_default();
                added.iter().any(|cap| !DEFAULT_CAPS.contains(&cap.to_uppercase().trim_start_matches("CAP_"))).then(|| cname(c))
            })
        ),
        check!(
            "5.5",
            "Ensure that privileged containers are not used (Automated)",
            "You should not run containers with the --privileged flag.",
            "If you start a container without the --privileged flag, it will not have excessive default capabilities.",
            |s| per_container(s, Status::Warn, "Containers in privileged mode", |c| hc(c, |h| h.privileged).unwrap_or(false).then(|| cname(c)))
        ),
        check!(
            "5.6",
            "Ensure sensitive host system directories are not mounted on containers (Automated)",
            "You should not mount directories which are security sensitive on the host within containers, especially in read-write mode.",
            "None.",
            |s| per_container_items(s, Status::Warn, "Containers with sensitive directories mounted", |c| {
                c.mounts
                    .iter()
                    .flatten()
                    .filter_map(|m| Some((m.source.as_deref()?, m.rw == Some(true))))
                    .filter(|(src, _)| SENSITIVE_DIRS.iter().any(|d| *src == *d || (*d != "/" && src.starts_with(&format!("{d}/")))))
                    // CIS: "especially in read-write mode", not only: read-only mounts are findings too, marked.
                    .map(|(src, rw)| if rw { format!("{}:{src}", cname(c)) } else { format!("{}:{src} (read-only)", cname(c)) })
                    .collect()
            })
        ),
        check!(
            "5.7",
            "Ensure sshd is not run within containers (Automated)",
            "Uninstall the SSH daemon from the container and use docker exec to enter a container on the remote host.",
            "None.",
            |s| {
                // Processes exist only in running containers (the CIS audit runs `ps` in each of `docker ps --quiet`).
                let Some(procs) = &s.host.container_procs else { return Outcome::note("Container processes could not be read from /proc") };
                let running: Vec<(&ContainerInspectResponse, u32)> = s.engine.containers.iter().filter_map(|c| Some((c, c.state.as_ref()?.pid.filter(|p| *p > 0)? as u32))).collect();
                if running.is_empty() {
                    return Outcome::info("No running containers: sshd is looked for among running containers' processes");
                }
                let items: Vec<String> = running.iter().filter(|(_, pid)| procs.get(pid).is_some_and(|names| names.iter().any(|n| n == "sshd"))).map(|(c, _)| cname(c)).collect();
                if items.is_empty() {
                    Outcome::pass_with(format!("No sshd among the processes of the {} running container(s)", running.len()))
                } else {
                    Outcome::items(Status::Warn, "Running containers with sshd", items)
                }
            }
        ),
        check!(
            "5.8",
            "Ensure privileged ports are not mapped within containers (Automated)",
            "You should not map container ports to privileged host ports when starting a container.",
            "None.",
            |s| per_container_items(s, Status::Warn, "Containers using privileged ports", |c| {
                host_ports(c).into_iter().filter(|(_, p)| *p > 0 && *p < 1024).map(|(_, p)| format!("{}:{p}", cname(c))).collect()
            })
        ),
        check!("5.9", "Ensure that only needed ports are open on the container (Manual)", "You should fix the Dockerfile of the container image to expose only needed ports, and publish only those (no -P).", "None.", |s| {
            // Manual: list every host-published port with its address for review; none is a PASS.
            if s.engine.containers.is_empty() {
                return Outcome::info(NO_CONTAINERS);
            }
            let items: Vec<String> = s
                .engine
                .containers
                .iter()
                .flat_map(|c| host_ports(c).into_iter().map(move |(ip, p)| format!("{}:{}:{p}", cname(c), if ip.is_empty() { "0.0.0.0" } else { ip.as_str() })))
                .collect();
            if items.is_empty() {
                Outcome::pass_with(format!("No port published on the host by the {} container(s), running or not", s.engine.containers.len()))
            } else {
                Outcome::items(Status::Info, "Ports published on the host (container:address:port), review each", items)
            }
        }),
        check!(
            "5.10",
            "Ensure that the host's network namespace is not shared (Automated)",
            "You should not pass the --net=host option when starting any container.",
            "None.",
            |s| per_container(s, Status::Warn, "Containers with networking mode 'host'", |c| (hc(c, |h| h.network_mode.clone()).as_deref() == Some("host")).then(|| cname(c)))
        ),
        check!(
            "5.11",
            "Ensure that the memory usage for containers is limited (Automated)",
            "You should run the container with only as much memory as it requires by using the --memory argument.",
            "If correct memory limits are not set on each container, one process can expand its usage and cause other containers to run out of resources.",
            |s| per_container(s, Status::Warn, "Containers without memory restrictions", |c| (hc(c, |h| h.memory).unwrap_or(0) == 0).then(|| cname(c)))
        ),
        check!(
            "5.12",
            "Ensure that CPU priority is set appropriately on containers (Automated)",
            "You should manage the CPU runtime between your containers dependent on their priority within your organization: docker run --cpu-shares.",
            "If you do not correctly assign CPU thresholds, the container process may run out of resources and become unresponsive.",
            |s| per_container(s, Status::Warn, "Containers without CPU restrictions", |c| matches!(hc(c, |h| h.cpu_shares).unwrap_or(0), 0 | 1024).then(|| cname(c)))
        ),
        check!(
            "5.13",
            "Ensure that the container's root filesystem is mounted as read only (Automated)",
            "You should add a --read-only flag at a container's runtime to enforce the container's root filesystem being mounted as read only.",
            "Enabling --read-only at container runtime may break some container OS packages if a data writing strategy is not defined.",
            |s| per_container(s, Status::Warn, "Containers with root FS mounted R/W", |c| (!hc(c, |h| h.readonly_rootfs).unwrap_or(false)).then(|| cname(c)))
        ),
        check!(
            "5.14",
            "Ensure that incoming container traffic is bound to a specific host interface (Automated)",
            "You should bind the container port to a specific host interface on the desired host port: docker run -p <IP>:<host port>:<container port>.",
            "None.",
            |s| per_container_items(s, Status::Warn, "Port being bound to wildcard IP", |c| {
                host_ports(c).into_iter().filter(|(ip, _)| matches!(ip.as_str(), "" | "0.0.0.0" | "::")).map(|(_, p)| format!("{}:{p}", cname(c))).collect()
            })
        ),
        check!(
            "5.15",
            "Ensure that the 'on-failure' container restart policy is set to '5' (Automated)",
            "If you wish a container to be automatically restarted, a sample command is docker run --restart=on-failure:5.",
            "If this option is set, a container will only attempt to restart itself 5 times.",
            |s| per_container(s, Status::Warn, "MaximumRetryCount is not set to 5", |c| {
                let rp = hc(c, |h| h.restart_policy.clone()).unwrap_or_default();
                let bad = match rp.name {
                    Some(RestartPolicyNameEnum::ALWAYS) | Some(RestartPolicyNameEnum::UNLESS_STOPPED) => true,
                    Some(RestartPolicyNameEnum::ON_FAILURE) => !(1..=5).contains(&rp.maximum_retry_count.unwrap_or(0)),
                    _ => false,
                };
                bad.then(|| cname(c))
            })
        ),
        check!(
            "5.16",
            "Ensure that the host's process namespace is not shared (Automated)",
            "You should not start a container with the --pid=host argument.",
            "None.",
            |s| per_container(s, Status::Warn, "Host PID namespace being shared with", |c| (hc(c, |h| h.pid_mode.clone()).as_deref() == Some("host")).then(|| cname(c)))
        ),
        check!(
            "5.17",
            "Ensure that the host's IPC namespace is not shared (Automated)",
            "You should not start a container with the --ipc=host argument.",
            "Shared memory segments are used in order to accelerate interprocess communications, commonly in high-performance applications.",
            |s| per_container(s, Status::Warn, "Host IPC namespace being shared with", |c| (hc(c, |h| h.ipc_mode.clone()).as_deref() == Some("host")).then(|| cname(c)))
        ),
        check!(
            "5.18",
            "Ensure that host devices are not directly exposed to containers (Manual)",
            "You should not directly expose host devices to containers; if you must, use the correct set of permissions (--device=/dev/x:/dev/x:r).",
            "You would not be able to use host devices directly within containers.",
            |s| per_container(s, Status::Info, "Containers with host devices", |c| (!hc(c, |h| h.devices.clone()).unwrap_or_default().is_empty()).then(|| cname(c)))
        ),
        check!(
            "5.19",
            "Ensure that the default ulimit is overwritten at runtime if needed (Manual)",
            "You should only override the default ulimit settings if needed in a specific case: docker run --ulimit nofile=1024:1024.",
            "If ulimits are not set correctly, overutilization by individual containers could make the host system unusable.",
            |s| per_container(s, Status::Info, "Containers with no default ulimit override", |c| hc(c, |h| h.ulimits.clone()).unwrap_or_default().is_empty().then(|| cname(c)))
        ),
        check!(
            "5.20",
            "Ensure mount propagation mode is not set to shared (Automated)",
            "Do not mount volumes in shared mode propagation.",
            "None.",
            |s| per_container(s, Status::Warn, "Mount propagation mode is shared", |c| c.mounts.iter().flatten().any(|m| matches!(m.propagation.as_deref(), Some("shared") | Some("rshared"))).then(|| cname(c)))
        ),
        check!(
            "5.21",
            "Ensure that the host's UTS namespace is not shared (Automated)",
            "You should not start a container with the --uts=host argument.",
            "None.",
            |s| per_container(s, Status::Warn, "Host UTS namespace being shared with", |c| (hc(c, |h| h.uts_mode.clone()).as_deref() == Some("host")).then(|| cname(c)))
        ),
        check!(
            "5.22",
            "Ensure the default seccomp profile is not Disabled (Automated)",
            "By default, seccomp profiles are enabled. You do not need to do anything unless you want to modify and use a modified seccomp profile; never use --security-opt seccomp=unconfined.",
            "With Docker 1.10 and greater, the default seccomp profile blocks syscalls, regardless of --cap-add passed to the container.",
            |s| per_container(s, Status::Warn, "Containers with seccomp disabled", |c| security_opts(c).iter().any(|o| o == "seccomp=unconfined" || o == "seccomp:unconfined").then(|| cname(c)))
        ),
        check!("5.23", "Ensure that docker exec commands are not used with the privileged option (Automated)", "You should not use the --privileged option in docker exec commands.", "If you need enhanced capabilities within a container, run it with all the permissions it requires.", |_| Outcome::note("docker exec history is not visible through the API; review the engine's audit log")),
        check!("5.24", "Ensure that docker exec commands are not used with the user=root option (Manual)", "You should not use the --user=root option in docker exec commands.", "None.", |_| Outcome::note("docker exec history is not visible through the API; review the engine's audit log")),
        check!(
            "5.25",
            "Ensure that cgroup usage is confirmed (Automated)",
            "You should not use the --cgroup-parent option within the docker run command unless strictly required.",
            "None.",
            |s| per_container(s, Status::Warn, "Containers using a non-default cgroup", |c| (!hc(c, |h| h.cgroup_parent.clone()).unwrap_or_default().is_empty()).then(|| cname(c)))
        ),
        check!(
            "5.26",
            "Ensure that the container is restricted from acquiring additional privileges (Automated)",
            "You should start your container with the options: docker run --security-opt=no-new-privileges (or set \"no-new-privileges\": true in daemon.json).",
            "The no_new_priv option prevents LSMs like SELinux from allowing processes to acquire new privileges.",
            |s| {
                if let Read::Set(true, src) = settings(s).flag_read("no-new-privileges") {
                    return if s.engine.containers.is_empty() { Outcome::info(NO_CONTAINERS) } else { Outcome::pass_with(format!("no-new-privileges is set daemon-wide ({src})")) };
                }
                per_container(s, Status::Warn, "Containers without restricted privileges", |c| {
                    (!security_opts(c).iter().any(|o| matches!(o.as_str(), "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"))).then(|| cname(c))
                })
            }
        ),
        check!(
            "5.27",
            "Ensure that container health is checked at runtime (Automated)",
            "You should run the container using the --health-cmd parameter (or a HEALTHCHECK in the image).",
            "None.",
            |s| per_container(s, Status::Warn, "Containers without health check", |c| (!has_healthcheck(c.config.as_ref().and_then(|c| c.healthcheck.as_ref()))).then(|| cname(c)))
        ),
        check!("5.28", "Ensure that Docker commands always make use of the latest version of their image (Manual)", "You should use proper version pinning mechanisms (the \"latest\" tag should be avoided) to ensure that your installation is not vulnerable to cache bugs.", "None.", |_| Outcome::info("Pin images by digest; swarm services resolve tags to digests at deploy time")),
        check!(
            "5.29",
            "Ensure that the PIDs cgroup limit is used (Automated)",
            "Use --pids-limit flag with an appropriate value when launching the container.",
            "Set the PIDs limit value as appropriate. Incorrect values might leave containers unusable.",
            |s| per_container(s, Status::Warn, "Containers without PIDs cgroup limit", |c| (hc(c, |h| h.pids_limit).unwrap_or(0) <= 0).then(|| cname(c)))
        ),
        check!(
            "5.30",
            "Ensure that Docker's default bridge 'docker0' is not used (Manual)",
            "You should follow the Docker documentation and set up a user-defined network. All the containers should be run in this network.",
            "User-defined networks need to be configured and managed in line with organizational security policy.",
            |s| per_container(s, Status::Info, "Containers using docker0 network", |c| {
                c.network_settings.as_ref().and_then(|n| n.networks.as_ref()).is_some_and(|n| n.contains_key("bridge")).then(|| cname(c))
            })
        ),
        check!(
            "5.31",
            "Ensure that the host's user namespaces are not shared (Automated)",
            "You should not share user namespaces between host and containers (no --userns=host).",
            "None.",
            |s| per_container(s, Status::Warn, "Namespace shared", |c| (hc(c, |h| h.userns_mode.clone()).as_deref() == Some("host")).then(|| cname(c)))
        ),
        check!(
            "5.32",
            "Ensure that the Docker socket is not mounted inside any containers (Automated)",
            "You should ensure that no containers mount docker.sock as a volume.",
            "None.",
            |s| per_container(s, Status::Warn, "Docker socket shared", |c| {
                let sock = s.docker_socket.as_str();
                c.mounts
                    .iter()
                    .flatten()
                    .any(|m| [m.source.as_deref(), m.destination.as_deref()].into_iter().flatten().any(|p| p.contains("docker.sock") || (!sock.is_empty() && p == sock)))
                    .then(|| cname(c))
            })
        ),
        // ---- 6 Docker Security Operations: GET /images/json, GET /containers/json?all=1 ----
        check!(
            "6.1",
            "Ensure that image sprawl is avoided (Manual)",
            "You should keep only the images that you actually need and establish a workflow to remove old or stale images from the host (docker image prune).",
            "docker system prune -a removes all exited containers as well as all images and volumes that are not referenced by running containers, including for UCP and DTR.",
            |s| {
                let used: std::collections::BTreeSet<&str> = s.engine.all_containers.iter().filter_map(|c| c.image_id.as_deref()).collect();
                Outcome::info(format!("{} active/{} in use", s.engine.images.len(), used.len()))
            }
        ),
        check!(
            "6.2",
            "Ensure that container sprawl is avoided (Manual)",
            "You should periodically check your container inventory on each host and clean up stopped containers (docker container prune).",
            "You should retain containers that are actively in use, and delete ones which are no longer needed.",
            |s| Outcome::info(format!("{} total/{} running", s.engine.all_containers.len(), s.engine.running()))
        ),
        // ---- 7 Docker Swarm Configuration: GET /info (Swarm), GET /swarm (Spec), GET /networks, dockerd's listeners (/proc/<pid>/net/tcp*) ----
        check!(
            "7.1",
            "Ensure that the minimum number of manager nodes have been created in a swarm (Automated)",
            "If an excessive number of managers is configured, the excess nodes can be demoted to workers using command docker node demote <ID>. Keep an odd number of managers.",
            "None.",
            |s| {
                let Some(sw) = swarm_info(s) else { return no_swarm(s) };
                match sw.managers {
                    Some(n) if n % 2 == 0 => Outcome::warn(format!("{n} managers: an even number adds no fault tolerance")),
                    Some(n) if n > 7 => Outcome::warn(format!("{n} managers: more than 7 slows down consensus")),
                    Some(n) => Outcome::pass_with(format!("{n} manager(s)")),
                    None => Outcome::note("The engine did not report the number of managers"),
                }
            }
        ),
        check!(
            "7.2",
            "Ensure that swarm services are bound to a specific host interface (Automated)",
            "Resolving this issue requires re-initialization of the swarm, specifying a specific interface for the --listen-addr parameter (swarm.listen_addr in the swarmseal configuration).",
            "None.",
            |s| {
                if swarm_info(s).is_none() {
                    return no_swarm(s);
                }
                let Some(d) = &s.host.dockerd else { return Outcome::note(s.host.dockerd_unknown().unwrap_or_default()) };
                let Some(ls) = &d.listeners else { return Outcome::note(format!("The sockets of dockerd (pid {}) could not be read", d.pid)) };
                let swarm: Vec<_> = ls.iter().filter(|l| l.port == SWARM_PORT).collect();
                let wild: Vec<String> = swarm.iter().filter(|l| l.wildcard).map(|l| l.to_string()).collect();
                if !wild.is_empty() {
                    Outcome::items(Status::Warn, "Swarm listens on all interfaces", wild)
                } else if swarm.is_empty() {
                    Outcome::note(format!("No dockerd listener on port {SWARM_PORT}"))
                } else {
                    Outcome::pass_with(format!("Swarm listens on {}", swarm.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" ")))
                }
            }
        ),
        check!(
            "7.3",
            "Ensure that all Docker swarm overlay networks are encrypted (Automated)",
            "You should create overlay networks with the --opt encrypted flag.",
            "None.",
            |s| {
                if swarm_info(s).is_none() {
                    return no_swarm(s);
                }
                let bad: Vec<String> = s
                    .engine
                    .networks
                    .iter()
                    .filter(|n| n.driver.as_deref() == Some("overlay"))
                    .filter(|n| !n.options.as_ref().is_some_and(|o| o.contains_key("encrypted")))
                    .filter_map(|n| n.name.clone())
                    .collect();
                let overlay: Vec<String> = s.engine.networks.iter().filter(|n| n.driver.as_deref() == Some("overlay")).filter_map(|n| n.name.clone()).collect();
                let evidence = if overlay.is_empty() { "No overlay network (GET /networks)".to_string() } else { format!("Every overlay network has the encrypted option (GET /networks): {}", overlay.join(" ")) };
                Outcome::warn_if_any("Unencrypted overlay networks", bad, evidence)
            }
        ),
        check!("7.4", "Ensure that Docker's secret management commands are used for managing secrets in a swarm cluster (Manual)", "You should follow the docker secret documentation and use it to manage secrets effectively.", "None.", |s| {
            if swarm_info(s).is_none() {
                no_swarm(s)
            } else {
                Outcome::note("Review that services take their secrets from docker secret")
            }
        }),
        check!(
            "7.5",
            "Ensure that swarm manager is run in auto-lock mode (Automated)",
            "If you are initializing a swarm, use docker swarm init --autolock; on an existing swarm, docker swarm update --autolock (swarmseal init does this and seals the key).",
            "A swarm in auto-lock mode will not recover from a restart without manual intervention from an administrator to enter the unlock key.",
            |s| {
                if s.engine.swarm_state() == "locked" {
                    return Outcome::pass_with("The swarm is locked: auto-lock is on");
                }
                if swarm_info(s).is_none() {
                    return no_swarm(s);
                }
                match autolock(s) {
                    Some(true) => Outcome::pass_with("Auto-lock is on (GET /swarm Spec.EncryptionConfig.AutoLockManagers)"),
                    Some(false) => Outcome::warn("Swarm manager is not in auto-lock mode"),
                    None => Outcome::note("The swarm specification could not be read (not a manager?)"),
                }
            }
        ),
        check!("7.6", "Ensure that the swarm manager auto-lock key is rotated periodically (Manual)", "You should run the command to rotate the keys: docker swarm unlock-key --rotate (swarmseal rotate reseals the new key).", "None.", |s| {
            if swarm_info(s).is_none() {
                no_swarm(s)
            } else {
                Outcome::note("Key age is not visible through the API; rotate with swarmseal rotate")
            }
        }),
        check!(
            "7.7",
            "Ensure that node certificates are rotated as appropriate (Manual)",
            "You should run the command to set the desired expiry time on the node certificate: docker swarm update --cert-expiry 48h.",
            "None.",
            |s| {
                if swarm_info(s).is_none() {
                    return no_swarm(s);
                }
                let exp = s.engine.swarm.as_ref().and_then(|w| w.spec.as_ref()).and_then(|sp| sp.ca_config.as_ref()).and_then(|c| c.node_cert_expiry);
                match exp {
                    Some(ns) => {
                        let hours = ns / 3_600_000_000_000;
                        if hours <= 90 * 24 {
                            Outcome::pass_with(format!("Node certificates expire after {hours}h"))
                        } else {
                            Outcome::warn(format!("Node certificates expire after {hours}h (more than 90 days)"))
                        }
                    }
                    None => Outcome::note("The swarm specification could not be read (not a manager?)"),
                }
            }
        ),
        check!("7.8", "Ensure that CA certificates are rotated as appropriate (Manual)", "You should run the command to rotate a certificate: docker swarm ca --rotate.", "None.", |s| {
            if swarm_info(s).is_none() {
                return no_swarm(s);
            }
            match s.engine.swarm.as_ref().and_then(|w| w.root_rotation_in_progress) {
                Some(true) => Outcome::info("A root CA rotation is in progress"),
                _ => Outcome::note("The CA certificate's age is not visible through the API; rotate with docker swarm ca --rotate"),
            }
        }),
        check!("7.9", "Ensure that management plane traffic is separated from data plane traffic (Manual)", "You should initialize the swarm with dedicated interfaces for management and data planes respectively: docker swarm init --advertise-addr=<IP> --data-path-addr=<IP>.", "You would need to manage two network interfaces per node.", |s| {
            match swarm_info(s) {
                None => no_swarm(s),
                Some(sw) => Outcome::note(format!("Management plane on {}; the data path address is not visible through the API", sw.node_addr.clone().unwrap_or_default())),
            }
        }),
        // ---- A Swarm Manager Appliance: ApplianceFacts (sealed key, proxy, time), GET /swarm, dockerd's listeners, mount table + /sys/block/dm-*/dm, efivars ----
        check!(
            "A.1",
            "Ensure swarm autolock is on and the unlock key is sealed in the TPM (Automated)",
            "Run swarmseal init (new swarm) or swarmseal seal (existing autolocked swarm) so the agent can unlock the swarm at boot.",
            "None.",
            |s| {
                if s.engine.swarm_state() == "inactive" {
                    return no_swarm(s);
                }
                let locked = s.engine.swarm_state() == "locked";
                if !locked && autolock(s) == Some(false) {
                    return Outcome::warn("Swarm autolock is off: the raft keys sit unencrypted on disk");
                }
                match &s.appliance.sealed_key {
                    None => Outcome::warn("No sealed unlock key in the state directory: the swarm cannot be unlocked at boot without an operator"),
                    Some(_) if locked || autolock(s) == Some(true) => Outcome::pass_with("Autolock on; unlock key sealed"),
                    Some(_) => Outcome::note("Unlock key sealed; the autolock setting could not be read"),
                }
            }
        ),
        check!(
            "A.2",
            "Ensure the sealed key's PCR policy matches the current boot measurements (Automated)",
            "If the change in measurements is expected (firmware, bootloader or kernel update), accept the new boot chain: while the swarm is active, POST /swarmseal/v1/reseal through the proxy (or `swarmseal seal` on the appliance); while it is locked, unlock by hand first (`docker swarm unlock` through the proxy, or `swarmseal unlock --manual`, which also reseals).",
            "None.",
            |s| match &s.appliance.sealed_key {
                None => Outcome::note("No sealed key to compare"),
                Some(k) => match k.pcrs_match {
                    Some(true) => Outcome::pass_with(non_empty(&k.detail, "The policy PCRs match their sealed values")),
                    Some(false) => Outcome::warn(non_empty(&k.detail, "Some policy PCRs differ from their sealed values")),
                    None => Outcome::note(non_empty(&k.detail, "The TPM could not be read")),
                },
            }
        ),
        check!(
            "A.3",
            "Ensure the Docker Engine API does not listen on TCP (Automated)",
            "Remove tcp:// entries from dockerd -H and from \"hosts\" in daemon.json; remote clients use the swarmseal mutual-TLS proxy.",
            "None.",
            |s| {
                let mut bad: Vec<String> = settings(s).values("hosts").into_iter().filter(|h| h.starts_with("tcp://")).collect();
                let Some(d) = &s.host.dockerd else {
                    return if bad.is_empty() { Outcome::note(s.host.dockerd_unknown().unwrap_or_default()) } else { Outcome::items(Status::Warn, "Engine API configured on TCP", bad) };
                };
                let Some(ls) = &d.listeners else { return Outcome::note("The dockerd sockets could not be read") };
                bad.extend(ls.iter().filter(|l| !SWARM_PORTS.contains(&l.port)).map(|l| l.to_string()));
                bad.sort();
                bad.dedup();
                if bad.is_empty() {
                    Outcome::pass_with(format!("dockerd (pid {}) listens on TCP only for swarm ({} socket(s))", d.pid, ls.len()))
                } else {
                    Outcome::items(Status::Warn, "Engine API on TCP", bad)
                }
            }
        ),
        check!(
            "A.4",
            "Ensure the remote API proxy requires client certificates (Automated)",
            "Enable the proxy ([proxy] enabled = true) with a client CA; it refuses connections without a certificate signed by that CA.",
            "None.",
            |s| {
                use crate::appliance::Handshake::*;
                let Some(p) = &s.appliance.proxy else { return Outcome::info("The proxy is disabled: the engine API is reachable only on its unix socket") };
                match (&p.without_cert, &p.with_cert) {
                    (Accepted(how), _) => Outcome::warn(format!("The proxy on {} accepts clients without a certificate ({how})", p.addr)),
                    (Refused(no), Accepted(yes)) => Outcome::pass_with(format!("The proxy on {} refuses a client without a certificate ({no}) and accepts one signed by the appliance CA ({yes})", p.addr)),
                    (Refused(no), Refused(why) | NotProbed(why)) => Outcome::note(format!("The proxy on {} refuses a client without a certificate ({no}), but also the appliance's own client certificate ({why}): its client CA is not the appliance's", p.addr)),
                    (NotProbed(why), _) => Outcome::note(format!("The proxy is enabled but could not be probed on {}: {why}", p.addr)),
                }
            }
        ),
        check!(
            "A.5",
            "Ensure the operating system file system is dm-verity protected (Automated)",
            "Boot the signed appliance image, whose /usr (or root) partition is verified by dm-verity against a signed root hash.",
            "None.",
            verity
        ),
        check!(
            "A.6",
            "Ensure Secure Boot is enabled (Automated)",
            "Enroll the appliance's Secure Boot keys in the firmware and enable Secure Boot.",
            "None.",
            |s| match s.host.secure_boot {
                Some(1) => Outcome::pass_with("Secure Boot is enabled (EFI variable SecureBoot = 1)"),
                Some(v) => Outcome::warn(format!("Secure Boot is disabled (SecureBoot={v})")),
                None => Outcome::note("No SecureBoot EFI variable: not booted with UEFI, or efivarfs is not mounted"),
            }
        ),
        check!(
            "A.7",
            "Ensure the clock is synchronised to an authenticated time source (Automated)",
            "Give the manager NTS servers it can reach (credential swarmseal.ntp-servers, `nts HOST[:PORT]` a line; an internal NTS server's CA as swarmseal.ntp-ca; docs/time.md) and reboot.",
            "None.",
            time_sync
        ),
    ]
}

/// A.7: synchronised, |offset| < 1 s, the selected source authenticated (NTS); the
/// sentence is `TimeSync::verdict`'s (the agent logs the same at boot).
fn time_sync(s: &Snapshot) -> Outcome {
    match s.appliance.time.as_ref().map(|t| t.verdict()) {
        None => Outcome::note("The clock's synchronisation was not asked"),
        Some(Ok(pass)) => Outcome::pass_with(pass),
        Some(Err(why)) => Outcome::warn(why),
    }
}

/// Swarm control-plane port (`--listen-addr` default).
const SWARM_PORT: u16 = 2377;
/// Ports dockerd itself listens on in swarm mode (raft/control, gossip).
const SWARM_PORTS: [u16; 2] = [2377, 7946];
const SENSITIVE_DIRS: [&str; 8] = ["/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr"];
/// Docker's default capability set: adding these back is not a finding.
const DEFAULT_CAPS: [&str; 14] = ["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"];

fn settings(s: &Snapshot) -> Settings<'_> {
    Settings::new(&s.host)
}

/// 3.9–3.14: the TLS file named by `key` (`f(None)` when dockerd is known not to
/// use one); NOTE when the command line that could name it was not read.
fn tls_file(s: &Snapshot, key: &str, f: impl Fn(Option<&str>) -> Outcome) -> Outcome {
    match settings(s).value_read(key) {
        Read::Set(p, _) => f(Some(&p)),
        Read::Default => f(None),
        Read::Unknown(why) => Outcome::note(why),
    }
}

fn sec_opt(s: &Snapshot, prefix: &str) -> bool {
    sec_opt_of(s, prefix).is_some()
}

/// The engine's security option (`GET /info` `SecurityOptions`) starting with `prefix`.
fn sec_opt_of<'a>(s: &'a Snapshot, prefix: &str) -> Option<&'a str> {
    s.engine.info.security_options.iter().flatten().find(|o| o.starts_with(prefix)).map(|o| o.as_str())
}

/// 3.7/3.8: each registry certificate file under /etc/docker/certs.d passes `ok`
/// (its stat shown by `show`); a file that cannot be stat'ed makes the check NOTE.
fn registry_certs(s: &Snapshot, files: &[String], details: &str, ok: impl Fn(&host::FileStat) -> bool, show: impl Fn(&host::FileStat) -> String) -> Outcome {
    let mut seen = Vec::new();
    let mut bad = Vec::new();
    for f in files {
        let Some(st) = s.host.stat_of(f) else { return Outcome::note(format!("{f} could not be stat'ed")) };
        let item = format!("{f}({})", show(&st));
        if ok(&st) {
            seen.push(item);
        } else {
            bad.push(item);
        }
    }
    let evidence = if seen.is_empty() { format!("No registry certificate under {}/certs.d", host::DOCKER_ETC) } else { seen.join(" ") };
    Outcome::warn_if_any(details, bad, evidence)
}

fn swarm_info(s: &Snapshot) -> Option<&bollard::models::SwarmInfo> {
    if s.engine.swarm_active() {
        s.engine.info.swarm.as_ref()
    } else {
        None
    }
}

/// Swarm checks on a node without an active swarm: INFO, or NOTE while it is
/// locked (its settings cannot be read until it is unlocked).
fn no_swarm(s: &Snapshot) -> Outcome {
    match s.engine.swarm_state().as_str() {
        "inactive" => Outcome::info("Swarm mode not enabled"),
        "locked" => Outcome::note("The swarm is locked: its settings cannot be read until it is unlocked"),
        other => Outcome::note(format!("The swarm is {other}")),
    }
}

fn autolock(s: &Snapshot) -> Option<bool> {
    s.engine.swarm.as_ref()?.spec.as_ref()?.encryption_config.as_ref()?.auto_lock_managers.or(Some(false))
}

fn non_empty(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s.to_string()
    }
}

fn cname(c: &ContainerInspectResponse) -> String {
    c.name.as_deref().unwrap_or("").trim_start_matches('/').to_string()
}

/// 4.7/4.9: images whose history (`GET /images/{id}/history`, `CreatedBy`) has a
/// matching layer: INFO listing them, as docker-bench-security does; none: PASS.
fn history_matches(s: &Snapshot, details: &str, f: impl Fn(&str) -> bool) -> Outcome {
    let hits: Vec<String> = s.engine.image_history.iter().filter(|(_, layers)| layers.iter().any(|l| f(l))).map(|(id, _)| s.engine.image_label(id)).collect();
    if hits.is_empty() {
        let layers: usize = s.engine.image_history.iter().map(|(_, l)| l.len()).sum();
        Outcome::pass_with(format!("None of the {layers} layer(s) of the {} image(s) matches (GET /images/{{id}}/history CreatedBy)", s.engine.image_history.len()))
    } else {
        Outcome::items(Status::Info, details, hits)
    }
}

fn hc<T>(c: &ContainerInspectResponse, f: impl Fn(&bollard::models::HostConfig) -> Option<T>) -> Option<T> {
    c.host_config.as_ref().and_then(f)
}

fn security_opts(c: &ContainerInspectResponse) -> Vec<String> {
    hc(c, |h| h.security_opt.clone()).unwrap_or_default()
}

fn has_healthcheck(h: Option<&bollard::models::HealthConfig>) -> bool {
    h.and_then(|h| h.test.as_ref()).and_then(|t| t.first()).is_some_and(|t| t != "NONE")
}

/// Published ports: (host IP, host port).
fn host_ports(c: &ContainerInspectResponse) -> Vec<(String, u16)> {
    let mut v = Vec::new();
    let maps = [c.network_settings.as_ref().and_then(|n| n.ports.as_ref()), c.host_config.as_ref().and_then(|h| h.port_bindings.as_ref())];
    for m in maps.into_iter().flatten() {
        for b in m.values().flatten().flatten() {
            if let Some(p) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) {
                v.push((b.host_ip.clone().unwrap_or_default(), p));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// A runtime rule over every container (running, created or stopped: the
/// configuration is what it runs with): `f` names the offender (or `None`).
/// Offenders make the result `bad` (WARN, or INFO for manual checks); none: PASS.
fn per_container(s: &Snapshot, bad: Status, details: &str, f: impl Fn(&ContainerInspectResponse) -> Option<String>) -> Outcome {
    per_container_items(s, bad, details, |c| f(c).into_iter().collect())
}

fn per_container_items(s: &Snapshot, bad: Status, details: &str, f: impl Fn(&ContainerInspectResponse) -> Vec<String>) -> Outcome {
    if s.engine.containers.is_empty() {
        return Outcome::info(NO_CONTAINERS);
    }
    let items: Vec<String> = s.engine.containers.iter().flat_map(f).collect();
    let n = s.engine.containers.len();
    if items.is_empty() {
        Outcome::pass_with(format!("No offender among the {n} container(s), running or not"))
    } else {
        Outcome::items(bad, format!("{details} (of {n} container(s), running or not)"), items)
    }
}

/// 1.1.x: an audit rule names `path`; with `needs_file`, INFO when it does not exist.
fn audit_rule(s: &Snapshot, path: &str, needs_file: bool) -> Outcome {
    if needs_file && !s.host.exists.get(path).copied().unwrap_or(false) {
        return Outcome::info("File not found");
    }
    audit_present(s, path)
}

/// A rule watches `path`: by name, or by the file's identity (device and inode: on a
/// merged-/usr host `-w /lib/systemd/system/docker.service` watches
/// `/usr/lib/systemd/system/docker.service`).
fn audit_present(s: &Snapshot, path: &str) -> Outcome {
    if let Some(rule) = s.host.audit.rule_for(path) {
        Outcome::pass_with(format!("{} ({})", rule, s.host.audit.source))
    } else if let Some(alias) = s.host.audit_aliases.get(path) {
        Outcome::pass_with(format!("{path} is watched as {alias}, the same file ({})", s.host.audit.source))
    } else {
        Outcome::items(Status::Warn, format!("No audit rule in {}", s.host.audit.source), vec![path.to_string()])
    }
}

/// 3.x ownership: root:root.
fn owner(s: &Snapshot, path: Option<&str>, missing: &str) -> Outcome {
    let Some(p) = path else { return Outcome::info(missing) };
    match s.host.stat_of(p) {
        None => Outcome::info(missing),
        Some(st) if st.uid == 0 && st.gid == 0 => Outcome::pass_with(format!("{p} is root:root")),
        Some(st) => Outcome::items(Status::Warn, "Wrong ownership for", vec![format!("{p}({}:{})", st.uid, st.gid)]),
    }
}

/// 3.x permissions: no bit beyond `max`.
fn perms(s: &Snapshot, path: Option<&str>, max: u32, missing: &str) -> Outcome {
    let Some(p) = path else { return Outcome::info(missing) };
    match s.host.stat_of(p) {
        None => Outcome::info(missing),
        Some(st) if st.mode & !max == 0 => Outcome::pass_with(format!("{p} has mode {:o}", st.mode)),
        Some(st) => Outcome::items(Status::Warn, "Wrong permissions for", vec![format!("{p}({:o})", st.mode)]),
    }
}

/// A.5: `/usr` (when it is its own mount) or `/` sits on a dm-verity target.
fn verity(s: &Snapshot) -> Outcome {
    let Some(mounts) = &s.host.mounts else { return Outcome::note("The mount table could not be read") };
    let mount_of = |t: &str| mounts.iter().rev().find(|m| m.target == t);
    let dm_of = |dev: &str| {
        let dev = dev.trim_start_matches("/dev/");
        s.host.dm.iter().find(|d| match dev.strip_prefix("mapper/") {
            Some(name) => d.name == name,
            None => d.kname == dev,
        })
    };
    let mut seen = Vec::new();
    for t in ["/", "/usr"] {
        if let Some(m) = mount_of(t) {
            match dm_of(&m.device) {
                Some(d) if d.uuid.starts_with("CRYPT-VERITY") => return Outcome::pass_with(format!("{t} is {} on {} (dm-verity {})", m.fstype, m.device, d.name)),
                _ => seen.push(format!("{t}={}:{}", m.device, m.fstype)),
            }
        }
    }
    if seen.is_empty() {
        return Outcome::note("No / or /usr entry in the mount table");
    }
    Outcome::items(Status::Warn, "Not on dm-verity", seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{DmDevice, MountEntry};
    use serde_json::json;

    fn container(v: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(v).unwrap()
    }

    fn eval(id: &str, s: &Snapshot) -> Outcome {
        let c = catalogue().into_iter().find(|c| c.id == id).unwrap();
        (c.eval)(s)
    }

    #[test]
    fn ids_are_unique_and_sections_known() {
        let cs = catalogue();
        let mut ids: Vec<&str> = cs.iter().map(|c| c.id).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(n, ids.len());
        for c in &cs {
            assert!(SECTIONS.iter().any(|(s, _)| *s == crate::report::section_of(c.id)), "{}", c.id);
            assert!(c.desc.ends_with("(Automated)") || c.desc.ends_with("(Manual)"), "{}", c.id);
            assert!(!c.remediation.is_empty(), "{}", c.id);
        }
    }

    #[test]
    fn unknown_dockerd_makes_flag_checks_note_unless_daemon_json_sets_them() {
        let mut s = Snapshot::default();
        s.host.dockerd_missing = "SO_PEERCRED gave no pid".into();
        for id in ["2.2", "2.3", "2.4", "2.7", "2.8", "2.10", "2.11", "2.14", "2.16", "3.9", "3.14", "A.3"] {
            let o = eval(id, &s);
            assert_eq!(o.status, Status::Note, "{id}: {o:?}");
            assert!(o.details.unwrap().starts_with("SO_PEERCRED gave no pid"), "{id}");
        }
        // daemon.json is evidence on its own (dockerd refuses a setting given twice).
        s.host.daemon_json = Some(Ok(serde_json::from_value(json!({"iptables": false, "icc": false})).unwrap()));
        assert_eq!(eval("2.4", &s), Outcome::warn("iptables is set to false (/etc/docker/daemon.json)"));
        assert_eq!(eval("2.2", &s), Outcome::pass_with("icc is false (/etc/docker/daemon.json)"));
        // A command line that was read: unset means dockerd's default.
        s.host.dockerd = Some(host::Dockerd { pid: 7, args: vec!["dockerd".into()], listeners: Some(vec![]) });
        assert_eq!(eval("2.3", &s), Outcome::pass_with("log-level is not set: dockerd's default is info"));
        assert_eq!(eval("2.7", &s).status, Status::Info);
    }

    #[test]
    fn devicemapper_warns_overlay2_passes_unknown_is_note() {
        let mut s = Snapshot::default();
        let dm = devicemapper();
        s.engine.info = serde_json::from_value(json!({"Driver": "devicemapper"})).unwrap();
        assert_eq!((dm.eval)(&s), Outcome::warn("Storage driver is devicemapper"));
        assert_eq!(eval("2.6", &s).status, Status::Pass);
        s.engine.info = serde_json::from_value(json!({"Driver": "overlay2"})).unwrap();
        assert_eq!((dm.eval)(&s), Outcome::pass_with("Storage driver is overlay2"));
        s.engine.info = serde_json::from_value(json!({})).unwrap();
        assert_eq!((dm.eval)(&s).status, Status::Note);
        assert_eq!(eval("2.6", &s).status, Status::Note);
        // Through the v1.8.0 catalogue, under its ID.
        s.engine.info = serde_json::from_value(json!({"Driver": "devicemapper"})).unwrap();
        let sel = crate::Selection { only: vec!["2.7".into()], ..Default::default() };
        let r = crate::evaluate(&s, &sel);
        assert_eq!((r.len(), r[0].id, r[0].outcome.status), (1, "2.7", Status::Warn));
    }

    #[test]
    fn runtime_rule_flags_only_offenders() {
        let mut s = Snapshot::default();
        s.engine.containers = vec![
            container(json!({"Name": "/bad", "HostConfig": {"Privileged": true, "PidMode": "host", "Memory": 0}})),
            container(json!({"Name": "/good", "HostConfig": {"Privileged": false, "Memory": 1048576}})),
        ];
        assert_eq!(eval("5.5", &s).items, vec!["bad"]);
        assert_eq!(eval("5.16", &s).items, vec!["bad"]);
        assert_eq!(eval("5.11", &s).items, vec!["bad"]);
        assert_eq!(eval("5.10", &s).status, Status::Pass);
        s.engine.containers.clear();
        assert_eq!(eval("5.5", &s).status, Status::Info);
    }

    #[test]
    fn swarm_mode_is_info_on_a_manager() {
        let mut s = Snapshot::default();
        s.engine.info = serde_json::from_value(json!({"LiveRestoreEnabled": false, "Swarm": {"LocalNodeState": "active", "ControlAvailable": true, "Managers": 1}})).unwrap();
        assert_eq!(eval("5.1", &s).status, Status::Info);
        assert_eq!(eval("7.1", &s).status, Status::Pass);
        assert_eq!(eval("2.15", &s).status, Status::Info);
        s.engine.info = serde_json::from_value(json!({"Swarm": {"LocalNodeState": "inactive"}})).unwrap();
        assert_eq!(eval("5.1", &s).status, Status::Pass);
        assert_eq!(eval("7.1", &s).status, Status::Info);
        s.engine.info = serde_json::from_value(json!({"Swarm": {"LocalNodeState": "locked"}})).unwrap();
        assert_eq!(eval("5.1", &s).status, Status::Info);
        assert_eq!(eval("7.1", &s).status, Status::Note);
        assert_eq!(eval("7.5", &s).status, Status::Pass);
        // A worker is not what this appliance is for: 5.1 warns there.
        s.engine.info = serde_json::from_value(json!({"Swarm": {"LocalNodeState": "active", "ControlAvailable": false}})).unwrap();
        assert_eq!(eval("5.1", &s).status, Status::Warn);
    }

    #[test]
    fn published_ports_are_listed_with_their_address() {
        let mut s = Snapshot::default();
        assert_eq!(eval("5.9", &s).status, Status::Info);
        s.engine.containers = vec![
            container(json!({"Name": "/web", "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}], "443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8443"}]}}})),
            container(json!({"Name": "/quiet", "HostConfig": {}})),
        ];
        let o = eval("5.9", &s);
        assert_eq!((o.status, o.items), (Status::Info, vec!["web:0.0.0.0:8080".to_string(), "web:127.0.0.1:8443".to_string()]));
        s.engine.containers.remove(0);
        assert_eq!(eval("5.9", &s).status, Status::Pass);
    }

    #[test]
    fn verity_on_usr_passes_and_plain_root_warns() {
        let mut s = Snapshot::default();
        s.host.mounts = Some(vec![
            MountEntry { device: "/dev/sda3".into(), target: "/".into(), fstype: "ext4".into() },
            MountEntry { device: "/dev/mapper/usr".into(), target: "/usr".into(), fstype: "erofs".into() },
        ]);
        s.host.dm = vec![DmDevice { kname: "dm-0".into(), name: "usr".into(), uuid: "CRYPT-VERITY-abc-usr".into() }];
        assert_eq!(eval("A.5", &s).status, Status::Pass);
        s.host.dm[0].uuid = "CRYPT-LUKS2-abc".into();
        let o = eval("A.5", &s);
        assert_eq!(o.status, Status::Warn);
        assert_eq!(o.items, vec!["/=/dev/sda3:ext4", "/usr=/dev/mapper/usr:erofs"]);
    }

    #[test]
    fn appliance_facts_drive_a2_and_a4() {
        let mut s = Snapshot::default();
        assert_eq!(eval("A.2", &s).status, Status::Note);
        assert_eq!(eval("A.4", &s).status, Status::Info);
        s.appliance.sealed_key = Some(crate::SealedKeyFact { pcrs_match: Some(false), detail: "PCR 7 differs".into() });
        assert_eq!(eval("A.2", &s), Outcome::warn("PCR 7 differs"));
        use crate::Handshake::*;
        let probe = |without: crate::Handshake, with: crate::Handshake| Some(crate::ProxyProbe { addr: "127.0.0.1:2376".into(), without_cert: without, with_cert: with });
        s.appliance.proxy = probe(Refused("alert".into()), Accepted("HTTP/1.1 403".into()));
        assert_eq!(eval("A.4", &s).status, Status::Pass);
        s.appliance.proxy = probe(Accepted("HTTP/1.1 200".into()), Accepted("HTTP/1.1 200".into()));
        assert_eq!(eval("A.4", &s).status, Status::Warn);
        s.appliance.proxy = probe(NotProbed("connection refused".into()), NotProbed("connection refused".into()));
        assert_eq!(eval("A.4", &s).status, Status::Note);
        s.appliance.proxy = probe(Refused("alert".into()), Refused("unknown CA".into()));
        assert_eq!(eval("A.4", &s).status, Status::Note);
    }

    /// A.7 over chronyc's real output (swarmseal_common::time parses it; here: what the check says).
    #[test]
    fn a7_passes_only_on_authenticated_time_within_a_second() {
        use swarmseal_common::time::{assess, nts_hosts, parse_sources, parse_tracking};
        let tracking = |offset: &str, leap: &str| parse_tracking(&format!("7F000001,10.0.2.2,4,1796621058.7,{offset},0,0,-0.024,0,1.4,0.00001,0.00001,2.0,{leap}")).unwrap();
        let selected = parse_sources("^,*,10.0.2.2,3,6,377,1,0,0,0").unwrap();
        let nts = nts_hosts("server 10.0.2.2 iburst nts ntsport 4460");
        let mut s = Snapshot::default();
        assert_eq!(eval("A.7", &s).status, Status::Note);
        s.appliance.time = Some(assess(&tracking("-0.000002", "Normal"), &selected, &nts, None));
        assert_eq!(eval("A.7", &s), Outcome::pass_with("Synchronised to 10.0.2.2 (NTS), offset -2.00e-6 s"));
        s.appliance.time = Some(assess(&tracking("2.5", "Normal"), &selected, &nts, None));
        assert_eq!(eval("A.7", &s), Outcome::warn("Synchronised to 10.0.2.2, but the clock is off by 2.500 s (limit 1 s)"));
        s.appliance.time = Some(assess(&tracking("0.001", "Normal"), &selected, &[], None));
        let o = eval("A.7", &s);
        assert_eq!(o.status, Status::Warn);
        assert!(o.details.as_deref().unwrap_or_default().starts_with("Synchronised to 10.0.2.2, not authenticated (not NTS): the selected source 10.0.2.2 is plain NTP"), "{:?}", o.details);
        let unreachable = parse_sources("^,?,10.0.2.2,0,7,0,4294967295,0,0,0").unwrap();
        s.appliance.time = Some(assess(&tracking("0", "Not synchronised"), &unreachable, &nts, None));
        let o = eval("A.7", &s);
        assert_eq!(o.status, Status::Warn);
        assert!(o.details.as_deref().unwrap_or_default().starts_with("Not synchronised: NTS source 10.0.2.2: no authenticated answer (reach 0): its NTS key establishment"), "{:?}", o.details);
        s.appliance.time.as_mut().unwrap().error = Some("chronyd could not be asked: 506 Cannot talk to daemon".into());
        assert_eq!(eval("A.7", &s), Outcome::warn("The clock is not kept: chronyd could not be asked: 506 Cannot talk to daemon"));
    }
}
