//! Lost quorum with autolock (moby#36852), against real dockerds and a real swtpm: a
//! three-manager autolocked swarm loses two managers for good; the survivor, restarted
//! (locked, TPM power-cycled), is recovered by `swarmseal recover --force-new-cluster` into
//! a one-manager cluster with autolock on and the new key sealed; a reboot then unlocks by
//! itself. Then the same through the proxy (`POST /swarmseal/v1/recover`): refused for a
//! readonly certificate, done for an admin one.
mod support;

use std::path::{Path, PathBuf};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use swarmseal::keystore::{Keystore, Slot};
use swarmseal::secret::UnlockKey;
use support::*;

/// The survivor: engine, TPM, state dir, and a stand-in `systemctl` whose `restart
/// docker.service` the test turns into a real engine restart.
struct Survivor {
    d: Dockerd,
    tpm: Swtpm,
    state: tempfile::TempDir,
}

impl Survivor {
    fn measure_boot_chain(&self) {
        self.tpm.extend(7, "secure-boot-state");
        self.tpm.extend(11, "uki image-v1");
    }
    fn s(&self) -> &str {
        self.state.path().to_str().unwrap()
    }
    fn cfg(&self) -> String {
        self.state.path().join("agent.toml").to_str().unwrap().to_string()
    }
    fn args(&self) -> Vec<String> {
        vec!["--config".into(), self.cfg(), "--docker-host".into(), self.d.host(), "--state-dir".into(), self.s().into(), "--tcti".into(), self.tpm.tcti()]
    }
    fn run(&self, extra: &[&str], stdin: Option<&str>) -> std::process::Output {
        let args = self.args();
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        swarmseal(&a, &[], stdin)
    }
    fn spawn_recover(&self) -> std::process::Child {
        cmd(swarmseal_bin()).args(self.args()).args(["recover", "--force-new-cluster"]).env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }
    /// Serve a restart asked for by a killed run (systemd finishes it without its caller).
    fn finish_pending_restart(&mut self) {
        std::thread::sleep(Duration::from_millis(300));
        self.serve_restart_request();
    }
    /// If a stand-in `systemctl restart` is waiting: restart the engine, then release that very
    /// invocation (by its pid). A release meant for a killed run's orphaned stand-in can
    /// never let the next run's invocation return before its own restart (seen under load:
    /// the next run went on at once and the engine restarted under it).
    fn serve_restart_request(&mut self) -> bool {
        let req = self.flag("restart-requested");
        let Ok(pid) = std::fs::read_to_string(&req) else { return false };
        std::fs::remove_file(&req).unwrap();
        self.d.restart();
        std::fs::write(self.flag(&format!("restart-done.{}", pid.trim())), b"").unwrap();
        true
    }
    /// One manager, autolock on, the key sealed, and the next boot unlocks by itself.
    fn assert_recovered(&mut self, old: &str) -> String {
        assert_eq!(self.d.swarm_state(), "active");
        assert_eq!(managers(&self.d), vec!["Leader".to_string()], "one manager");
        assert!(autolock(&self.d), "autolock on");
        let k = self.d.docker_ok(&["swarm", "unlock-key", "-q"]);
        assert_ne!(k, old, "a new key");
        assert!(self.holds(&k), "the new key is sealed");
        assert!(self.d.docker_ok(&["service", "ls", "--format", "{{.Name}}"]).contains("web"), "services kept");
        k
    }
    fn holds(&self, key: &str) -> bool {
        match Keystore::new(self.state.path()).load(Slot::Current) {
            Ok(Some(f)) => UnlockKey::new(key.to_string()).unwrap().fingerprint(&f.salt()) == f.key_fingerprint,
            _ => false,
        }
    }
    /// Reboot: engine stopped, TPM power cycle, the same chain measured, engine started (locked).
    fn reboot(&mut self) {
        self.d.stop();
        self.tpm.power_cycle();
        self.measure_boot_chain();
        self.d.start_again();
    }
    fn flag(&self, name: &str) -> PathBuf {
        self.state.path().join(name)
    }
    /// Run `swarmseal` (or anything) in `cmd` to its end, serving its engine-restart requests.
    /// Returns the exit status, the number of restarts served and the run's stderr.
    fn serve_restarts(&mut self, mut child: std::process::Child, limit: Duration) -> (std::process::ExitStatus, usize, String) {
        let t = Instant::now();
        let mut restarts = 0;
        loop {
            if child.try_wait().unwrap().is_some() {
                let o = child.wait_with_output().unwrap();
                return (o.status, restarts, String::from_utf8_lossy(&o.stderr).into_owned());
            }
            if self.serve_restart_request() {
                restarts += 1;
            }
            if t.elapsed() > limit {
                let _ = child.kill();
                panic!("no end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn managers(d: &Dockerd) -> Vec<String> {
    d.docker_ok(&["node", "ls", "--format", "{{.ManagerStatus}}"]).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn autolock(d: &Dockerd) -> bool {
    d.docker_ok(&["info", "--format", "{{.Swarm.Cluster.Spec.EncryptionConfig.AutoLockManagers}}"]) == "true"
}

/// Two more managers join the survivor's swarm, the swarm is healthy, then both are lost for
/// good (engines stopped and dropped) and the survivor restarts: locked, no quorum.
fn lose_quorum(lan: &Lan, s: &mut Survivor) {
    let token = s.d.docker_ok(&["swarm", "join-token", "-q", "manager"]);
    let leader = format!("{}:2377", s.d.addr);
    let others: Vec<Dockerd> = (0..2).map(|_| Dockerd::start_on(lan)).collect();
    for o in &others {
        o.docker_ok(&["swarm", "join", "--token", &token, "--advertise-addr", &o.addr, &leader]);
    }
    wait_until("three healthy managers", Duration::from_secs(60), || managers(&s.d).len() == 3 && managers(&s.d).iter().all(|m| m == "Leader" || m == "Reachable"));
    for o in &others {
        o.signal_stop();
    }
    drop(others);
    s.reboot();
    assert_eq!(s.d.swarm_state(), "locked", "the survivor comes back locked");
}

fn stand_in_systemctl(s: &Survivor) -> PathBuf {
    let p = s.state.path().join("systemctl");
    let (req, done) = (s.flag("restart-requested"), s.flag("restart-done"));
    std::fs::write(
        &p,
        // Each invocation asks with its pid and waits for the release of that pid only.
        format!(
            "#!/bin/sh\necho \"$@\" >>{log}\n[ \"$1 $2\" = \"restart docker.service\" ] || exit 3\necho $$ >{req}.$$ && mv {req}.$$ {req}\nwhile [ ! -e {done}.$$ ]; do sleep 0.1; done\nrm -f {done}.$$\n",
            log = s.flag("systemctl.log").display(),
            req = req.display(),
            done = done.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// `curl` with the client certificate in `certs`; prints the body, then the status on its own line.
fn curl_cmd(port: u16, certs: &Path, method: &str, path: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "300", "--cacert"])
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("cert.pem"))
        .arg("--key")
        .arg(certs.join("key.pem"))
        .args(["-X", method, &format!("https://127.0.0.1:{port}{path}")]);
    c
}

fn curl(port: u16, certs: &Path, method: &str, path: &str) -> (u16, String) {
    let o = curl_cmd(port, certs, method, path).output().expect("curl must be installed");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A survivor-to-be on `lan`: engine, TPM with its boot chain measured, configuration with the
/// proxy on `port` and the stand-in `systemctl`.
fn survivor(lan: &Lan, port: u16) -> Survivor {
    let s = Survivor { d: Dockerd::start_on(lan), tpm: Swtpm::start(), state: tempfile::tempdir().unwrap() };
    s.measure_boot_chain();
    let systemctl = stand_in_systemctl(&s);
    std::fs::write(s.cfg(), format!("[proxy]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n[update]\nsystemctl = \"{}\"\n[bench]\nat_boot = false\n", systemctl.display())).unwrap();
    s
}

/// `swarmseal init` (autolock, key sealed) and some swarm state to keep; returns the key.
fn init_with_state(s: &Survivor) -> String {
    let o = s.run(&["init", "--advertise-addr", &s.d.addr.clone()], None);
    assert!(o.status.success(), "init: {}", String::from_utf8_lossy(&o.stderr));
    let k0 = s.d.docker_ok(&["swarm", "unlock-key", "-q"]);
    assert!(s.holds(&k0));
    s.d.docker_ok(&["service", "create", "-d", "--name", "web", "--replicas", "1", "busybox:none"]);
    s.d.docker_ok(&["secret", "create", "s1", s.cfg().as_str()]);
    k0
}

#[test]
fn a_locked_survivor_of_a_lost_quorum_becomes_a_one_manager_cluster_with_its_new_key_sealed() {
    let started = Instant::now();
    let lan = Lan::new();
    let port = free_port();
    let mut s = survivor(&lan, port);

    // Without --force-new-cluster: a usage error that says what the command does; nothing changes.
    let o = s.run(&["recover"], None);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("only manager of a new cluster"), "{}", String::from_utf8_lossy(&o.stderr));
    // Engine unreachable: exit 3.
    let (cfg, st, tcti) = (s.cfg(), s.s().to_string(), s.tpm.tcti());
    let o = swarmseal(&["--config", &cfg, "--docker-host", "unix:///nonexistent/docker.sock", "--state-dir", &st, "--tcti", &tcti, "recover", "--force-new-cluster"], &[], None);
    assert_eq!(o.status.code(), Some(3), "engine unreachable: {}", String::from_utf8_lossy(&o.stderr));
    // No swarm at all: exit 7.
    let o = s.run(&["recover", "--force-new-cluster"], None);
    assert_eq!(o.status.code(), Some(7), "no swarm: {}", String::from_utf8_lossy(&o.stderr));

    let k0 = init_with_state(&s);
    lose_quorum(&lan, &mut s);
    let t_lost = started.elapsed();

    // A wrong key: refused (exit 9), nothing changed.
    let o = s.run(&["recover", "--force-new-cluster", "--key-stdin"], Some("SWMKEY-1-4UmSCqHUO+hsTjdFW0zMy7IgK5R5ud7eHJbyajeJqdc\n"));
    assert_eq!(o.status.code(), Some(9), "wrong key: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.d.swarm_state(), "locked");

    // The recovery, the key unsealed from the TPM.
    let t = Instant::now();
    let child = s.spawn_recover();
    let (st, restarts, err) = s.serve_restarts(child, Duration::from_secs(300));
    let took = t.elapsed();
    let log = std::fs::read_to_string(s.flag("systemctl.log")).unwrap_or_default();
    assert!(st.success(), "recover exited {st}: {err}; systemctl log: {log}; engine log tail: {}", s.d.log().lines().rev().take(20).collect::<Vec<_>>().join("\n"));
    println!("recover --force-new-cluster on the locked survivor: {} ms ({restarts} engine restart)", took.as_millis());
    let k1 = s.assert_recovered(&k0);
    assert!(s.d.docker_ok(&["secret", "ls", "--format", "{{.Name}}"]).contains("s1"), "secrets kept");

    // Again: nothing left to do, still fine (idempotent).
    let o = s.run(&["recover", "--force-new-cluster"], None);
    assert!(o.status.success(), "rerun: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to do: this manager"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("recovered:"), "a rerun claims no recovery: {}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(s.d.docker_ok(&["swarm", "unlock-key", "-q"]), k1);

    // A reboot unlocks by itself with the sealed new key.
    s.reboot();
    assert_eq!(s.d.swarm_state(), "locked");
    let o = s.run(&["unlock"], None);
    assert!(o.status.success(), "unlock after recovery: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.d.swarm_state(), "active");
    let t_cli = started.elapsed();

    // The endpoint: quorum lost again, the survivor locked; only the proxy runs (no agent).
    lose_quorum(&lan, &mut s);
    let o = swarmseal(&["--state-dir", s.s(), "certs", "init", "--san", "127.0.0.1"], &[], None);
    assert!(o.status.success(), "certs init: {}", String::from_utf8_lossy(&o.stderr));
    for (name, role) in [("admin", "admin"), ("reader", "readonly")] {
        let out = s.state.path().join(name);
        let o = swarmseal(&["--state-dir", s.s(), "certs", "issue", name, "--role", role, "--out", out.to_str().unwrap()], &[], None);
        assert!(o.status.success(), "certs issue: {}", String::from_utf8_lossy(&o.stderr));
    }
    let proxy_log = s.flag("proxy.log");
    let log = std::fs::File::create(&proxy_log).unwrap();
    let proxy = AgentProcess(Command::new(swarmseal_bin()).args(s.args()).arg("proxy").env("NO_COLOR", "1").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    wait_until("the proxy listens", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let (code, body) = curl(port, &s.state.path().join("reader"), "POST", "/swarmseal/v1/recover");
    assert_eq!(code, 403, "readonly: {body}");
    assert_eq!(s.d.swarm_state(), "locked", "a refused request changes nothing");

    // The admin's request, served while the test restarts the engine on request.
    let curl_child = curl_cmd(port, &s.state.path().join("admin"), "POST", "/swarmseal/v1/recover").stdout(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    let mut curl_child = curl_child;
    let mut stdout = curl_child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let (st, _, _) = s.serve_restarts(curl_child, Duration::from_secs(300));
    let out = reader.join().unwrap();
    println!("POST /swarmseal/v1/recover (admin): {} ms: {out}", t.elapsed().as_millis());
    assert!(st.success());
    assert!(out.trim_end().ends_with("200"), "admin recover: {out}\nproxy log:\n{}", std::fs::read_to_string(&proxy_log).unwrap_or_default());
    assert_eq!(s.d.swarm_state(), "active");
    assert_eq!(managers(&s.d), vec!["Leader".to_string()]);
    assert!(autolock(&s.d));
    let k2 = s.d.docker_ok(&["swarm", "unlock-key", "-q"]);
    assert_ne!(k2, k1);
    assert!(s.holds(&k2), "the endpoint sealed the new key");
    assert!(!out.contains(&k2) && !out.contains(&k1), "the answer never holds a key");
    drop(proxy);
    let plog = std::fs::read_to_string(&proxy_log).unwrap_or_default();
    assert!(plog.contains("event=\"recover\"") && plog.contains("security=true"), "a flagged security event: {plog}");
    for k in [&k0, &k1, &k2] {
        assert!(!plog.contains(k.as_str()), "a key in the proxy log");
        assert!(!grep_dir(s.state.path(), k.as_bytes()), "a key in plaintext under the state dir");
    }
    s.reboot();
    let o = s.run(&["unlock"], None);
    assert!(o.status.success(), "unlock after the endpoint's recovery: {}", String::from_utf8_lossy(&o.stderr));
    println!("lost quorum: first loss at {} s, CLI part done at {} s, whole test {} s", t_lost.as_secs(), t_cli.as_secs(), started.elapsed().as_secs());
}

/// `kill -9` of `recover` at three points (a random delay in the first 400 ms: key and node key;
/// when it asks for the engine restart; a random delay in the 800 ms after the restart: init,
/// autolock, seal), each on a fresh lost quorum; the next run finishes the recovery and the
/// next boot unlocks by itself. SWARMSEAL_SEED replays a run.
#[test]
fn a_killed_recovery_is_finished_by_the_next_run() {
    let started = Instant::now();
    let seed: u64 = std::env::var("SWARMSEAL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("seed {seed} (SWARMSEAL_SEED={seed} replays it)");
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let lan = Lan::new();
    let port = free_port();
    let mut s = survivor(&lan, port);
    let mut key = init_with_state(&s);
    for point in ["early", "at_restart", "after_restart"] {
        lose_quorum(&lan, &mut s);
        let mut child = s.spawn_recover();
        let t = Instant::now();
        let delay = match point {
            "early" => Duration::from_millis(next(400)),
            _ => Duration::ZERO,
        };
        match point {
            "early" => std::thread::sleep(delay),
            "at_restart" => wait_until("recover asks for the engine restart", Duration::from_secs(60), || s.flag("restart-requested").exists()),
            _ => {
                wait_until("recover asks for the engine restart", Duration::from_secs(60), || s.flag("restart-requested").exists());
                assert!(s.serve_restart_request());
                std::thread::sleep(Duration::from_millis(next(800)));
            }
        }
        let _ = child.kill();
        let st = child.wait().unwrap();
        let killed_at = t.elapsed();
        // The appliance reaches its TPM through the kernel's resource manager, which flushes a
        // dead process's handles; swtpm here has none (seen: the next run's TPM2_Load got
        // TPM_RC_OBJECT_MEMORY, 0x902, from the killed run's leftovers).
        s.tpm.flush_leftovers();
        s.finish_pending_restart();
        println!("{point}: killed {} ms in ({}), engine {}", killed_at.as_millis(), if st.signal() == Some(9) { "by SIGKILL" } else { "it had already ended" }, s.d.swarm_state());
        let (st, restarts, err) = s.serve_restarts(s.spawn_recover(), Duration::from_secs(300));
        assert!(st.success(), "{point}: the run after the kill failed (seed {seed}), {st}: {err}\nengine log tail: {}", s.d.log().lines().rev().take(20).collect::<Vec<_>>().join("\n"));
        println!("{point}: the next run finished it ({restarts} engine restart)");
        key = s.assert_recovered(&key);
        s.reboot();
        let o = s.run(&["unlock"], None);
        assert!(o.status.success(), "{point}: unlock after the repaired recovery (seed {seed}): {}", String::from_utf8_lossy(&o.stderr));
    }
    println!("killed recoveries: {} s", started.elapsed().as_secs());
}
