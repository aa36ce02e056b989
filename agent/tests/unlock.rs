//! The operator's story of the agent core, against a real dockerd and a real swtpm:
//! init → reboot → unlocked without a key; changed boot chain → refused, stays
//! locked, says which PCR; manual unlock reseals; rotation and the previous slot;
//! phase lock; bad input gets its own exit code; no secret leaks, no TPM handle leaks.
mod support;

use std::process::Output;
use std::time::Duration;

use support::*;

/// A manager under test: its engine, its TPM, its state dir.
struct Manager {
    d: Dockerd,
    tpm: Swtpm,
    state: tempfile::TempDir,
    /// Everything swarmseal printed, to check for leaked secrets at the end.
    transcript: String,
}

impl Manager {
    fn new() -> Manager {
        let m = Manager { d: Dockerd::start(), tpm: Swtpm::start(), state: tempfile::tempdir().unwrap(), transcript: String::new() };
        m.measure_boot_chain("image-v1");
        m
    }

    /// What firmware and systemd-stub would measure for a boot chain.
    fn measure_boot_chain(&self, chain: &str) {
        self.tpm.extend(7, "secure-boot-state");
        self.tpm.extend(11, &format!("uki {chain}"));
        self.tpm.extend(15, "var-identity");
    }

    /// Reboot: TPM power cycle (PCRs reset), the boot chain measured again, engine restarted (comes back locked).
    fn reboot(&mut self, chain: &str) {
        self.tpm.power_cycle();
        self.measure_boot_chain(chain);
        self.d.restart();
    }

    fn run(&mut self, args: &[&str], stdin: Option<&str>) -> Output {
        let host = self.d.host();
        let tcti = self.tpm.tcti();
        let state = self.state.path().to_str().unwrap().to_string();
        let mut full = vec!["--docker-host", &host, "--state-dir", &state, "--tcti", &tcti];
        full.extend_from_slice(args);
        let out = swarmseal(&full, &[], stdin);
        self.transcript.push_str(&String::from_utf8_lossy(&out.stdout));
        self.transcript.push_str(&String::from_utf8_lossy(&out.stderr));
        assert_eq!(self.tpm.transient_handles(), 0, "swarmseal {args:?} left transient TPM handles behind");
        out
    }

    fn ok(&mut self, args: &[&str]) -> String {
        let o = self.run(args, None);
        assert!(o.status.success(), "swarmseal {args:?} failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    fn key(&self) -> String {
        self.d.docker_ok(&["swarm", "unlock-key", "-q"])
    }

    /// No unlock key in the state dir (any file) nor in anything swarmseal printed.
    fn assert_no_leak(&self, keys: &[&str]) {
        for k in keys {
            assert!(!self.transcript.contains(k), "an unlock key appeared in swarmseal's output");
            assert!(!grep_dir(self.state.path(), k.as_bytes()), "an unlock key is stored in plaintext under the state dir");
        }
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn reboot_unlocks_by_itself_and_a_changed_boot_chain_is_refused_until_the_operator_accepts_it() {
    let mut m = Manager::new();
    m.ok(&["init", "--advertise-addr", &m.d.addr.clone()]);
    assert_eq!(m.d.swarm_state(), "active");
    let key = m.key();
    assert!(m.state.path().join("keys/current.json").exists());

    // Idempotent: a second init changes nothing.
    let again = m.ok(&["init"]);
    assert!(again.contains("already"), "{again}");

    // Same boot chain → unlocks by itself.
    m.reboot("image-v1");
    assert_eq!(m.d.swarm_state(), "locked");
    m.ok(&["unlock"]);
    assert_eq!(m.d.swarm_state(), "active");

    // Phase lock: the same boot cannot unseal twice (engine restarted, TPM not).
    m.d.restart();
    assert_eq!(m.d.swarm_state(), "locked");
    let o = m.run(&["unlock"], None);
    assert_eq!(code(&o), 5, "second unseal in one boot must be refused: {}", stderr(&o));
    assert!(stderr(&o).contains("already unsealed once in this boot"), "{}", stderr(&o));
    assert_eq!(m.d.swarm_state(), "locked");

    // Changed boot chain (another UKI → PCR 11) → refused, names PCR 11, stays locked.
    m.reboot("image-v2-tampered");
    let o = m.run(&["unlock"], None);
    assert_eq!(code(&o), 5, "policy mismatch exit code: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("PCR 11"), "the refusal names the changed PCR: {err}");
    assert!(!err.contains("PCR 7 ") && !err.contains("PCR 15 "), "only PCR 11 changed: {err}");
    assert_eq!(m.d.swarm_state(), "locked");

    // Wrong key by hand → its own exit code, still locked.
    let o = m.run(&["unlock", "--manual"], Some("SWMKEY-1-thisisnotthekeythisisnotthekey\n"));
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert_eq!(m.d.swarm_state(), "locked");
    // Garbage by hand → usage error.
    let o = m.run(&["unlock", "--manual"], Some("hunter2\n"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));

    // The operator accepts the new chain: manual unlock reseals under it.
    m.run(&["unlock", "--manual"], Some(&format!("{key}\n")));
    assert_eq!(m.d.swarm_state(), "active");
    // Already unlocked: a key typed by hand is still checked (garbage 2, not the key 9, the key 0).
    let o = m.run(&["unlock", "--manual"], Some("hunter2\n"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = m.run(&["unlock", "--manual"], Some("SWMKEY-1-thisisnotthekeythisisnotthekey\n"));
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(stderr(&o).contains("already unlocked"), "{}", stderr(&o));
    let o = m.run(&["unlock", "--manual"], Some(&format!("{key}\n")));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(m.d.swarm_state(), "active");

    // Next boot of the new chain unlocks by itself; the old chain is now refused.
    m.reboot("image-v2-tampered");
    m.ok(&["unlock"]);
    assert_eq!(m.d.swarm_state(), "active");
    m.reboot("image-v1");
    let o = m.run(&["unlock"], None);
    assert_eq!(code(&o), 5, "{}", stderr(&o));

    let status = m.ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["swarm"]["state"], "locked");
    assert!(v["sealed"]["current"]["differs"].as_array().unwrap().iter().any(|d| d.as_str().unwrap().starts_with("PCR 11")), "{status}");
    m.assert_no_leak(&[&key]);
}

#[test]
fn rotation_reseals_and_a_stale_current_slot_falls_back_to_previous() {
    let mut m = Manager::new();
    m.ok(&["init", "--advertise-addr", &m.d.addr.clone()]);
    let k0 = m.key();
    m.ok(&["rotate"]);
    let k1 = m.key();
    assert_ne!(k0, k1);
    assert!(m.state.path().join("keys/previous.json").exists());

    m.reboot("image-v1");
    m.ok(&["unlock"]);
    assert_eq!(m.d.swarm_state(), "active");

    // Make `current` stale: it holds k0, `previous` holds k1 (the engine's key).
    let keys = m.state.path().join("keys");
    let cur = std::fs::read(keys.join("current.json")).unwrap();
    let prev = std::fs::read(keys.join("previous.json")).unwrap();
    std::fs::write(keys.join("current.json"), prev).unwrap();
    std::fs::write(keys.join("previous.json"), cur).unwrap();
    m.reboot("image-v1");
    let o = m.run(&["unlock"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("previous"), "the previous slot unlocked it");
    assert_eq!(m.d.swarm_state(), "active");
    m.assert_no_leak(&[&k0, &k1]);
}

#[test]
fn another_machine_cannot_unseal() {
    let mut m = Manager::new();
    m.ok(&["init", "--advertise-addr", &m.d.addr.clone()]);
    // Disk moved: the same state dir on a machine with a different TPM.
    m.tpm = Swtpm::start();
    m.measure_boot_chain("image-v1");
    m.d.restart();
    let o = m.run(&["unlock"], None);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("different machine"), "{}", stderr(&o));
    assert_eq!(m.d.swarm_state(), "locked");
}

#[test]
fn bad_input_gets_a_clear_message_and_its_own_exit_code() {
    let mut m = Manager::new();
    // Engine without swarm.
    let o = m.run(&["unlock"], None);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    let o = m.run(&["seal"], None);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("swarmseal init"), "{}", stderr(&o));

    m.ok(&["init", "--advertise-addr", &m.d.addr.clone()]);
    m.d.restart();

    // Corrupt (truncated) blob: exit 8, file untouched.
    let cur = m.state.path().join("keys/current.json");
    let good = std::fs::read(&cur).unwrap();
    std::fs::write(&cur, &good[..good.len() / 2]).unwrap();
    let o = m.run(&["unlock"], None);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("current.json"), "names the file: {}", stderr(&o));
    assert_eq!(std::fs::read(&cur).unwrap(), &good[..good.len() / 2], "a corrupt blob is never overwritten silently");

    // Missing blob: exit 6.
    std::fs::remove_file(&cur).unwrap();
    let o = m.run(&["unlock"], None);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert_eq!(m.d.swarm_state(), "locked");

    // TPM unreachable (with a good blob back in place): exit 4.
    std::fs::write(&cur, &good).unwrap();
    let o = swarmseal(&["--docker-host", &m.d.host(), "--state-dir", m.state.path().to_str().unwrap(), "--tcti", "swtpm:host=127.0.0.1,port=1", "status"], &[], None);
    assert!(o.status.success(), "status reports, does not fail, on a missing TPM: {}", stderr(&o));
    let o = swarmseal(&["--docker-host", &m.d.host(), "--state-dir", m.state.path().to_str().unwrap(), "--tcti", "swtpm:host=127.0.0.1,port=1", "unlock"], &[], None);
    assert_eq!(code(&o), 4, "{}", stderr(&o));

    // Engine unreachable: exit 3.
    let o = swarmseal(&["--docker-host", "unix:///nonexistent/docker.sock", "--state-dir", m.state.path().to_str().unwrap(), "--tcti", &m.tpm.tcti(), "unlock"], &[], None);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent/docker.sock"), "{}", stderr(&o));
    // status prints its report all the same (the engine's part says why), then exits 3.
    let o = swarmseal(&["--docker-host", "unix:///nonexistent/docker.sock", "--state-dir", m.state.path().to_str().unwrap(), "--tcti", &m.tpm.tcti(), "status", "--json"], &[], None);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["swarm"]["error"].as_str().is_some_and(|e| e.contains("/nonexistent/docker.sock")), "{v}");

    // Unknown config key: exit 2 naming the key.
    let cfg = m.state.path().join("bad.toml");
    std::fs::write(&cfg, "[tpm]\npcrz = [7]\n").unwrap();
    let o = swarmseal(&["--config", cfg.to_str().unwrap(), "status"], &[], None);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("pcrz"), "{}", stderr(&o));
}

/// `status --json` from the real thing, in each of its shapes (engine up and down, TPM up and
/// down, slots sealed, empty and unreadable, a pending change), through the typed
/// `swarmseal_common::status::Status` and back: the same JSON, byte for byte.
#[test]
fn status_json_round_trips_through_the_typed_status() {
    use swarmseal_common::status::{Slot, Status, Swarm};
    let round_trip = |out: &str| -> Status {
        let v: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        let s: Status = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a Status ({e}): {out}"));
        let again = serde_json::to_value(&s).unwrap();
        assert_eq!(again, v, "the typed status changes the document");
        assert_eq!(format!("{}\n", serde_json::to_string_pretty(&again).unwrap()), out, "not byte for byte");
        s
    };
    let mut m = Manager::new();
    let s = round_trip(&m.ok(&["status", "--json"]));
    assert!(s.sealed.current.is_none() && s.sealed.previous.is_none() && s.sealed_key_stale.is_none(), "{s:?}");
    m.ok(&["init", "--advertise-addr", &m.d.addr.clone()]);
    m.ok(&["rotate"]);
    let s = round_trip(&m.ok(&["status", "--json"]));
    assert!(matches!(&s.swarm, Swarm::Reached { state, manager: true, autolock: Some(true), .. } if state == "active"), "{s:?}");
    assert!(matches!(&s.sealed.previous, Some(Slot::Sealed { differs: Some(d), .. }) if d.is_empty()), "{s:?}");
    assert_eq!((s.sealed_key_stale, s.phase_locked, s.tpm.reachable), (Some(false), Some(false), true));
    // An unreadable slot, a pending change, no TPM, no engine.
    let keys = m.state.path().join("keys");
    std::fs::write(keys.join("previous.json"), "{").unwrap();
    std::fs::write(keys.join("change-pending.json"), r#"{"format":"swarmseal.change-pending","version":1,"op":"rotate","pid":1,"started":1,"old_key_fingerprint":null,"fingerprint_salt":"00"}"#).unwrap();
    let state = m.state.path().to_str().unwrap().to_string();
    let o = swarmseal(&["--docker-host", "unix:///nonexistent/docker.sock", "--state-dir", &state, "--tcti", "swtpm:host=127.0.0.1,port=1", "status", "--json"], &[], None);
    // The document is printed, and the exit code says the engine did not answer (3).
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("does not answer on /nonexistent/docker.sock"), "{}", stderr(&o));
    let s = round_trip(&String::from_utf8_lossy(&o.stdout));
    assert!(matches!(&s.swarm, Swarm::Unreachable { error } if error.contains("/nonexistent/docker.sock")), "{s:?}");
    assert!(matches!(&s.sealed.previous, Some(Slot::Unreadable { .. })), "{s:?}");
    assert!(!s.tpm.reachable && s.tpm.error.is_some() && s.phase_locked.is_none(), "{s:?}");
    assert_eq!(s.change_pending.as_ref().map(|p| p.op.as_str()), Some("rotate"), "{s:?}");
}

#[test]
fn agent_unlocks_at_boot_and_reseals_when_the_key_is_rotated_elsewhere() {
    let mut m = Manager::new();
    m.ok(&["init", "--advertise-addr", &m.d.addr.clone()]);
    let k0 = m.key();
    m.reboot("image-v1");
    let cfg = m.state.path().join("agent.toml");
    std::fs::write(&cfg, "[proxy]\nenabled = false\n").unwrap();
    let log = m.state.path().join("agent.log");
    let mut agent = std::process::Command::new(swarmseal_bin())
        .args(["--config", cfg.to_str().unwrap(), "--docker-host", &m.d.host(), "--state-dir", m.state.path().to_str().unwrap(), "--tcti", &m.tpm.tcti(), "agent"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("the agent unlocks the swarm", Duration::from_secs(60), || m.d.swarm_state() == "active");
    // Then the CIS checks of the boot: the full report on disk, the summary in the log.
    let report = m.state.path().join("bench/latest.json");
    wait_until("the boot bench report", Duration::from_secs(60), || report.exists());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(v["checks"].as_u64().unwrap() > 100, "{v}");

    // Rotation by another client (as on another manager): the agent reseals within seconds.
    let before = std::fs::read(m.state.path().join("keys/current.json")).unwrap();
    m.d.docker_ok(&["swarm", "unlock-key", "--rotate", "-q"]);
    let k1 = m.key();
    wait_until("the agent reseals the rotated key", Duration::from_secs(15), || {
        m.state.path().join("keys/previous.json").exists() && std::fs::read(m.state.path().join("keys/current.json")).unwrap() != before
    });
    let _ = std::process::Command::new("kill").arg("-TERM").arg(agent.id().to_string()).status();
    let st = agent.wait().unwrap();
    assert!(st.success(), "agent exits cleanly on SIGTERM: {st}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("unlock") && text.contains("phase"), "{text}");
    assert!(text.contains("CIS Docker Benchmark v1.8.0") && text.contains("benchmark=\"cis-1.8.0\""), "the bench summary names the benchmark it used: {text}");
    m.transcript.push_str(&text);

    // Next boot unlocks with the new key.
    m.reboot("image-v1");
    m.ok(&["unlock"]);
    assert_eq!(m.d.swarm_state(), "active");
    m.assert_no_leak(&[&k0, &k1]);
}


#[test]
fn no_shell_recovery_through_the_proxy_after_a_changed_boot_chain() {
    let mut m = Manager::new();
    let state = m.state.path().to_str().unwrap().to_string();
    let bundle = m.state.path().join("admin");
    m.ok(&["certs", "init"]);
    m.ok(&["certs", "issue", "alice", "--role", "admin", "--out", bundle.to_str().unwrap()]);
    let port = free_port();
    let cfg = m.state.path().join("agent.toml");
    std::fs::write(&cfg, format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n[bench]\nat_boot = false\n")).unwrap();
    let start_agent = |m: &Manager| {
        std::process::Command::new(swarmseal_bin())
            .args(["--config", cfg.to_str().unwrap(), "--docker-host", &m.d.host(), "--state-dir", &state, "--tcti", &m.tpm.tcti(), "agent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::options().create(true).append(true).open(m.state.path().join("agent.log")).unwrap())
            .spawn()
            .map(AgentProcess)
            .unwrap()
    };
    let log_path = m.state.path().join("agent.log");
    let stop = |mut a: AgentProcess| {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(a.0.id().to_string()).status();
        let st = a.0.wait().unwrap();
        assert!(st.success(), "the agent exited with {st}; its log:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    };
    let tls = |args: &[&str]| -> std::process::Output {
        let b = bundle.to_str().unwrap();
        std::process::Command::new("docker")
            .args(["--tlsverify", "--tlscacert", &format!("{b}/ca.pem"), "--tlscert", &format!("{b}/cert.pem"), "--tlskey", &format!("{b}/key.pem"), "-H", &format!("tcp://127.0.0.1:{port}")])
            .args(args)
            .output()
            .unwrap()
    };
    let api = |method: &str, path: &str| -> String {
        let b = bundle.to_str().unwrap();
        let o = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "60", "--fail-with-body", "-X", method, "--cacert", &format!("{b}/ca.pem"), "--cert", &format!("{b}/cert.pem"), "--key", &format!("{b}/key.pem")])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl must be installed");
        assert!(o.status.success(), "{method} {path}: {} {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };

    // First boot: the agent inits the swarm with autolock and seals.
    let a = start_agent(&m);
    wait_until("the agent inits the swarm", Duration::from_secs(90), || m.d.swarm_state() == "active" && m.state.path().join("keys/current.json").exists());
    wait_until("the proxy serves", Duration::from_secs(30), || tls(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).status.success());
    let key = String::from_utf8_lossy(&tls(&["swarm", "unlock-key", "-q"]).stdout).trim().to_string();
    assert!(key.starts_with("SWMKEY-1-"));
    stop(a);

    // A boot with another UKI: the agent refuses, the swarm stays locked, the status says why.
    m.reboot("image-v2");
    let a = start_agent(&m);
    wait_until("the proxy serves", Duration::from_secs(30), || tls(&["version"]).status.success());
    wait_until("the agent's refusal is visible", Duration::from_secs(30), || {
        let v: serde_json::Value = serde_json::from_str(&api("GET", "/swarmseal/v1/status")).unwrap();
        v["phase_locked"] == true && v["sealed"]["current"]["differs"].as_array().map(|d| d.iter().any(|x| x.as_str().unwrap_or("").starts_with("PCR 11"))).unwrap_or(false)
    });
    assert_eq!(tls(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout, b"locked\n");

    // The operator, with no shell: unlock through the proxy, then accept this boot chain.
    let mut unlock = std::process::Command::new("docker");
    let b = bundle.to_str().unwrap();
    unlock
        .args(["--tlsverify", "--tlscacert", &format!("{b}/ca.pem"), "--tlscert", &format!("{b}/cert.pem"), "--tlskey", &format!("{b}/key.pem"), "-H", &format!("tcp://127.0.0.1:{port}"), "swarm", "unlock"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = unlock.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{key}\n").as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "docker swarm unlock through the proxy: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(m.d.swarm_state(), "active");
    let r = api("POST", "/swarmseal/v1/reseal");
    assert!(r.contains("\"sealed\":true") || r.contains("\"sealed\": true"), "{r}");
    stop(a);

    // The next boot of the new chain unlocks by itself.
    m.reboot("image-v2");
    let a = start_agent(&m);
    wait_until("the agent unlocks the accepted chain", Duration::from_secs(60), || m.d.swarm_state() == "active");
    stop(a);

    // The disk in another machine (another TPM): locked, the status says why;
    // the same recovery through the proxy reseals to the new TPM.
    m.tpm = Swtpm::start();
    m.reboot("image-v2");
    let a = start_agent(&m);
    wait_until("the proxy serves", Duration::from_secs(30), || tls(&["version"]).status.success());
    wait_until("the agent's refusal on another TPM", Duration::from_secs(60), || {
        let v: serde_json::Value = serde_json::from_str(&api("GET", "/swarmseal/v1/status")).unwrap();
        v["phase_locked"] == true
    });
    assert_eq!(m.d.swarm_state(), "locked");
    let agent_log = std::fs::read_to_string(m.state.path().join("agent.log")).unwrap();
    assert!(agent_log.contains("different machine"), "the agent does not say the key was sealed on another machine");
    let mut child = std::process::Command::new("docker")
        .args(["--tlsverify", "--tlscacert", &format!("{b}/ca.pem"), "--tlscert", &format!("{b}/cert.pem"), "--tlskey", &format!("{b}/key.pem"), "-H", &format!("tcp://127.0.0.1:{port}"), "swarm", "unlock"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{key}\n").as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "docker swarm unlock through the proxy on the new machine: {}", String::from_utf8_lossy(&o.stderr));
    // Reseal while the agent's watch loop also looks at the state dir (a lock
    // held across both once hung the reseal on the appliance).
    for _ in 0..3 {
        let r = api("POST", "/swarmseal/v1/reseal");
        assert!(r.contains("\"sealed\":true"), "{r}");
    }
    stop(a);
    m.reboot("image-v2");
    let a = start_agent(&m);
    wait_until("the agent unlocks on the new machine's TPM", Duration::from_secs(60), || m.d.swarm_state() == "active");
    stop(a);
    m.transcript.push_str(&std::fs::read_to_string(m.state.path().join("agent.log")).unwrap());
    m.assert_no_leak(&[&key]);
}
