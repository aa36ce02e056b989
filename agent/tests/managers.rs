//! Many managers (issue 7), against real dockerds and real swtpms: three managers on a
//! private LAN, each with its own TPM, state dir and `swarmseal agent`. The unlock key is
//! the swarm's, so every agent seals the same key; a rotation on one manager is resealed by
//! all within seconds; a manager that was down during a rotation boots, unlocks with the
//! key it had sealed (its engine's on-disk keys are still encrypted under it) and reseals
//! the new one once it has caught up; the swarm ends with three healthy managers.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use swarmseal::keystore::{Keystore, Slot};
use swarmseal::secret::UnlockKey;
use support::update::{big_release, make_keys, make_release, serve_apply, Fault, Forwarder, Slots};
use support::*;

/// One manager: its engine (on the LAN), its TPM, its state dir, its agent.
struct Member {
    name: &'static str,
    d: Dockerd,
    tpm: Swtpm,
    state: tempfile::TempDir,
    agent: Option<Child>,
    /// What `swarmseal status` printed, checked for leaked keys at the end.
    transcript: String,
}

impl Member {
    fn new(lan: &Lan, name: &'static str) -> Member {
        let m = Member { name, d: Dockerd::start_on(lan), tpm: Swtpm::start(), state: tempfile::tempdir().unwrap(), agent: None, transcript: String::new() };
        m.measure_boot_chain();
        m
    }

    /// What firmware and systemd-stub measure at every boot of the same image.
    fn measure_boot_chain(&self) {
        self.tpm.extend(7, "secure-boot-state");
        self.tpm.extend(11, "uki image-v1");
        self.tpm.extend(15, "var-identity");
    }

    fn state_dir(&self) -> &str {
        self.state.path().to_str().unwrap()
    }

    fn log_path(&self) -> PathBuf {
        self.state.path().join("agent.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The agent's configuration: no proxy, no boot bench; only the first manager inits.
    fn configure(&self, init: bool) {
        self.configure_with(init, "[proxy]\nenabled = false\n");
    }

    /// The configuration with `extra` sections (e.g. `[proxy]`, `[update]`).
    fn configure_with(&self, init: bool, extra: &str) {
        let swarm = if init { format!("init = true\nadvertise_addr = \"{}\"\n", self.d.addr) } else { "init = false\n".into() };
        std::fs::write(self.state.path().join("agent.toml"), format!("{extra}[bench]\nat_boot = false\n[swarm]\n{swarm}")).unwrap();
    }

    fn args<'a>(&'a self, tcti: &'a str, host: &'a str, cfg: &'a str) -> Vec<&'a str> {
        vec!["--config", cfg, "--docker-host", host, "--state-dir", self.state_dir(), "--tcti", tcti]
    }

    fn start_agent(&mut self) {
        assert!(self.agent.is_none());
        let (tcti, host, cfg) = (self.tpm.tcti(), self.d.host(), self.state.path().join("agent.toml").to_str().unwrap().to_string());
        let log = std::fs::File::options().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(swarmseal_bin()).args(self.args(&tcti, &host, &cfg)).arg("agent").env("NO_COLOR", "1").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.agent = Some(child);
    }

    /// SIGTERM; the agent must exit cleanly.
    fn stop_agent(&mut self) {
        let mut a = self.agent.take().expect("agent running");
        let _ = Command::new("kill").arg("-TERM").arg(a.id().to_string()).status();
        let st = a.wait().unwrap();
        assert!(st.success(), "{}'s agent exited with {st}; its log:\n{}", self.name, self.log());
    }

    /// `swarmseal status --json`.
    fn status(&mut self) -> serde_json::Value {
        let (tcti, host, cfg) = (self.tpm.tcti(), self.d.host(), self.state.path().join("agent.toml").to_str().unwrap().to_string());
        let mut args = self.args(&tcti, &host, &cfg);
        args.extend(["status", "--json"]);
        let o = swarmseal(&args, &[], None);
        self.transcript.push_str(&String::from_utf8_lossy(&o.stdout));
        self.transcript.push_str(&String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{}: swarmseal status failed: {}", self.name, String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Whether `slot` holds `key` (compared by the slot's salted fingerprint, as the agent does).
    fn holds(&self, slot: Slot, key: &str) -> bool {
        match Keystore::new(self.state.path()).load(slot) {
            Ok(Some(f)) => UnlockKey::new(key.to_string()).unwrap().fingerprint(&f.salt()) == f.key_fingerprint,
            _ => false,
        }
    }

    /// `kek-version` of the engine's node key (`swarm/certificates/swarm-node.key`): the
    /// Raft index of the unlock key the node's TLS key and Raft DEK are encrypted under.
    /// Only this header is read; the file holds nothing else this test looks at.
    fn kek_version(&self) -> Option<u64> {
        let pem = std::fs::read_to_string(self.d.dir.join("data/swarm/certificates/swarm-node.key")).ok()?;
        pem.lines().find_map(|l| l.strip_prefix("kek-version:")).and_then(|v| v.trim().parse().ok())
    }

    /// How many times the agent unlocked the engine with `slot` (its `unlock` events).
    fn unlocks(&self, slot: &str) -> usize {
        self.log().matches(&format!("event=\"unlock\" slot=\"{slot}\"")).count()
    }

    /// Reboot, first half: agent and engine stop (the engine's swarm data stays on disk).
    fn shut_down(&mut self) -> Duration {
        self.stop_agent();
        let t = Instant::now();
        self.d.stop();
        t.elapsed()
    }

    /// Reboot, second half: TPM power cycle (PCRs reset), the same chain measured again,
    /// the engine starts (locked), then the agent.
    fn boot(&mut self) {
        self.tpm.power_cycle();
        self.measure_boot_chain();
        self.d.start_again();
        assert_eq!(self.d.swarm_state(), "locked", "{}'s engine comes back locked", self.name);
        self.start_agent();
    }

    /// No unlock key in the state dir (sealed slots, agent log, phase record…), the
    /// engine's log, nor in anything `swarmseal status` printed.
    fn assert_no_leak(&self, keys: &[&str]) {
        for k in keys {
            assert!(!self.transcript.contains(k), "{}: an unlock key appeared in swarmseal's output", self.name);
            assert!(!grep_dir(self.state.path(), k.as_bytes()), "{}: an unlock key is in plaintext under the state dir (agent log included)", self.name);
            assert!(!self.d.log().contains(k), "{}: an unlock key is in the engine's log", self.name);
        }
    }
}

/// The managers, then the LAN they share (fields drop in this order).
struct Cluster {
    m: Vec<Member>,
    _lan: Lan,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.m {
            if let Some(mut a) = m.agent.take() {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        // Stop the engines side by side (a swarm manager's graceful stop takes 6–25 s).
        for m in &self.m {
            m.d.signal_stop();
        }
    }
}

/// Wait until `f` holds; the time it took.
fn timed(what: &str, timeout: Duration, f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    wait_until(what, timeout, f);
    t.elapsed()
}

/// `ID STATUS MANAGER-STATUS` per node, as m1's engine sees them.
fn nodes(m: &Member) -> Vec<(String, String, String)> {
    m.d.docker_ok(&["node", "ls", "--format", "{{.ID}} {{.Status}} {{.ManagerStatus}}"])
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace().map(str::to_string);
            (f.next().unwrap_or_default(), f.next().unwrap_or_default(), f.next().unwrap_or_default())
        })
        .collect()
}

fn all_healthy(m: &Member) -> bool {
    let n = nodes(m);
    n.len() == 3 && n.iter().all(|(_, st, ms)| st == "Ready" && (ms == "Leader" || ms == "Reachable"))
}

#[test]
fn every_manager_reseals_a_rotation_and_one_that_missed_it_unlocks_then_catches_up() {
    let started = Instant::now();
    let lan = Lan::new();
    let m: Vec<Member> = ["m1", "m2", "m3"].into_iter().map(|n| Member::new(&lan, n)).collect();
    let mut c = Cluster { m, _lan: lan };
    let bound = Duration::from_secs(30); // catches "never"; speed belongs in the benchmarks

    // m1's agent inits the swarm with autolock; m2 and m3's agents wait for a swarm.
    for (i, m) in c.m.iter_mut().enumerate() {
        m.configure(i == 0);
        m.start_agent();
    }
    wait_until("m1's agent inits the swarm and seals", Duration::from_secs(90), || c.m[0].d.swarm_state() == "active" && c.m[0].state.path().join("keys/current.json").exists());
    let k0 = c.m[0].d.docker_ok(&["swarm", "unlock-key", "-q"]);
    assert!(k0.starts_with("SWMKEY-1-"));

    // m2 and m3 join as managers; each agent seals the swarm's (shared) key.
    let token = c.m[0].d.docker_ok(&["swarm", "join-token", "-q", "manager"]);
    let leader = format!("{}:2377", c.m[0].d.addr);
    for m in &c.m[1..] {
        m.d.docker_ok(&["swarm", "join", "--token", &token, "--advertise-addr", &m.d.addr, &leader]);
        let took = timed(&format!("{}'s agent seals the swarm's key after joining", m.name), bound, || m.holds(Slot::Current, &k0));
        println!("{} joined; its agent sealed the swarm's key {} ms later", m.name, took.as_millis());
    }
    for m in &mut c.m {
        assert!(m.holds(Slot::Current, &k0), "{} sealed the swarm's key", m.name);
        let v = m.status();
        assert_eq!(v["swarm"]["state"], "active", "{}: {v}", m.name);
        assert_eq!(v["swarm"]["manager"], true, "{}: {v}", m.name);
        assert_eq!(v["swarm"]["autolock"], true, "{}: {v}", m.name);
        assert_eq!(v["sealed"]["current"]["differs"], serde_json::json!([]), "{}: sealed to this boot's PCRs: {v}", m.name);
    }
    wait_until("three healthy managers", bound, || all_healthy(&c.m[0]));

    // Rotation on m1: every agent reseals the new key, the old one moves to `previous`.
    let t = Instant::now();
    let k1 = c.m[0].d.docker_ok(&["swarm", "unlock-key", "--rotate", "-q"]);
    assert!(k1.starts_with("SWMKEY-1-") && k1 != k0, "the rotation printed a new key");
    let mut took = vec![None; 3];
    wait_until("every manager reseals the rotated key", bound, || {
        for (i, m) in c.m.iter().enumerate() {
            if took[i].is_none() && m.holds(Slot::Current, &k1) && m.holds(Slot::Previous, &k0) {
                took[i] = Some(t.elapsed());
            }
        }
        took.iter().all(Option::is_some)
    });
    let ms: Vec<String> = c.m.iter().zip(&took).map(|(m, d)| format!("{} {} ms", m.name, d.unwrap().as_millis())).collect();
    println!("rotation on m1 → resealed (current = new key, previous = old): {}", ms.join(", "));

    // m3 is down (agent and engine stopped) while m1 rotates again.
    let stop = c.m[2].shut_down();
    println!("m3's engine stopped gracefully in {} ms", stop.as_millis());
    let kek_before = c.m[2].kek_version();
    let k2 = c.m[0].d.docker_ok(&["swarm", "unlock-key", "--rotate", "-q"]);
    assert!(k2.starts_with("SWMKEY-1-") && k2 != k1 && k2 != k0, "the rotation printed a new key");
    for m in &c.m[..2] {
        wait_until(&format!("{} reseals the second rotation", m.name), bound, || m.holds(Slot::Current, &k2) && m.holds(Slot::Previous, &k1));
    }
    assert!(c.m[2].holds(Slot::Current, &k1) && c.m[2].holds(Slot::Previous, &k0), "m3's slots are as it left them");

    // m3's node key as it is while m3 is down: encrypted under k1 (used below).
    let node_key = c.m[2].d.dir.join("data/swarm/certificates/swarm-node.key");
    let node_key_while_down = std::fs::read(&node_key).unwrap();

    // m3 boots. Its node key (the TLS key, with the Raft DEK in its headers) is still wrapped
    // under k1, the key its `current` slot holds: the agent unlocks with `current`. Once
    // caught up, the engine rewraps under k2 (swarmkit's MaybeUpdateKEK) and the agent reseals
    // k2 right after the unlock; k1 moves to `previous`.
    c.m[2].boot();
    let m3 = &c.m[2];
    // From here on, one clock for three events: unlocked, new key sealed, engine re-encrypted.
    let t = Instant::now();
    let (mut unlocked, mut resealed, mut rekeyed) = (None, None, None);
    while (unlocked.is_none() || resealed.is_none() || rekeyed.is_none()) && t.elapsed() < Duration::from_secs(60) {
        let now = Some(t.elapsed());
        if unlocked.is_none() && m3.log().contains("event=\"unlock\"") {
            unlocked = now;
        }
        if resealed.is_none() && m3.holds(Slot::Current, &k2) && m3.holds(Slot::Previous, &k1) {
            resealed = now;
        }
        if rekeyed.is_none() && m3.kek_version() > kek_before {
            rekeyed = now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ms = |d: Option<Duration>| d.map(|d| format!("{} ms", d.as_millis())).unwrap_or_else(|| "never".into());
    println!(
        "m3 after the missed rotation, from its engine coming up locked: the agent unlocked {}; new key sealed (current = new, previous = missed) {}; engine re-encrypted its node key under the new key (kek-version {kek_before:?} → {:?}) {}",
        ms(unlocked),
        ms(resealed),
        m3.kek_version(),
        ms(rekeyed)
    );
    assert!(unlocked.is_some(), "m3's agent unlocks after the missed rotation; its log:\n{}", m3.log());
    assert_eq!((m3.unlocks("current"), m3.unlocks("previous")), (1, 0), "m3 unlocked with its current slot (the key it missed the rotation with); its log:\n{}", m3.log());
    assert!(resealed.is_some(), "m3's agent reseals the key rotated while it was down; its log:\n{}", m3.log());
    assert!(rekeyed.is_some(), "m3's engine re-encrypts its node key under the new key");
    assert_eq!(m3.d.swarm_state(), "active");
    for l in m3.log().lines().filter(|l| ["event=\"unlock\"", "event=\"key_changed\"", "event=\"seal\"", "event=\"boot_done\"", "event=\"reseal_deferred\"", "event=\"swarm_state\""].iter().any(|e| l.contains(e))).skip_while(|l| !l.contains("event=\"unlock\"")) {
        println!("  m3 agent: {l}");
    }
    wait_until("three healthy managers after m3's return", Duration::from_secs(60), || all_healthy(&c.m[0]));

    // m3's next boot: the key it resealed after catching up opens its engine.
    c.m[2].shut_down();
    c.m[2].boot();
    let m3 = &c.m[2];
    // The agent's verdict, not `docker info`: the engine is active before the agent has said which slot.
    wait_until("m3's agent decides its second boot", Duration::from_secs(60), || m3.log().matches("event=\"boot_done\"").count() == 3);
    assert_eq!((m3.unlocks("current"), m3.unlocks("previous")), (2, 0), "m3's second boot used the key resealed after catching up; its log:\n{}", m3.log());
    assert_eq!(m3.d.swarm_state(), "active");
    wait_until("three healthy managers after m3's second boot", Duration::from_secs(60), || all_healthy(&c.m[0]));

    // The other order: the power goes out after the Raft log caught up and the agent sealed
    // k2, before the engine's rewrite of its node key reached the disk (simulated by putting
    // back m3's node key from while it was down; a rotation leaves the Raft DEK and data as
    // they are, only the node key's wrapping changes). `current` (k2) is refused by the engine,
    // `previous` (k1) opens it; the engine then rewraps under k2, which `current` holds.
    c.m[2].shut_down();
    std::fs::write(&node_key, &node_key_while_down).unwrap();
    assert_eq!(c.m[2].kek_version(), kek_before);
    c.m[2].boot();
    let m3 = &c.m[2];
    wait_until("m3's agent decides its third boot", Duration::from_secs(60), || m3.log().matches("event=\"boot_done\"").count() == 4);
    assert_eq!((m3.unlocks("current"), m3.unlocks("previous")), (2, 1), "m3 fell back to its previous slot; its log:\n{}", m3.log());
    assert_eq!(m3.d.swarm_state(), "active");
    wait_until("m3's engine re-encrypts under k2 again", bound, || m3.kek_version() > kek_before);
    wait_until("three healthy managers at the end", Duration::from_secs(60), || all_healthy(&c.m[0]));
    println!("m1 sees: {:?}", nodes(&c.m[0]).iter().map(|(_, s, m)| format!("{s}/{m}")).collect::<Vec<_>>());

    for m in &mut c.m {
        let v = m.status();
        assert_eq!(v["swarm"]["state"], "active", "{}: {v}", m.name);
        assert!(m.holds(Slot::Current, &k2) && m.holds(Slot::Previous, &k1), "{}: current holds the swarm's key, previous the one before", m.name);
        m.stop_agent();
        assert_eq!(m.tpm.transient_handles(), 0, "{}'s agent left transient TPM handles behind", m.name);
        m.assert_no_leak(&[&k0, &k1, &k2]);
    }
    println!("many managers: {} s", started.elapsed().as_secs());
}


// ------------------------------------------------------------------ fleet update

/// Issue 7: `swarmseal fleet update --contexts m1,m2,m3 RELEASE` against three real
/// managers (dockerds on a private LAN, each with its swtpm, agent and mutual-TLS proxy,
/// reached through real docker CLI contexts). The release goes through each proxy to the
/// real `POST /swarmseal/v1/update` and `swarmseal update apply`; only systemd-sysupdate
/// and the reboot itself are stand-ins (the test reboots engine, TPM and agent for real).
/// A release signed by another key stops at the first manager with nothing written; the
/// signed one updates one manager at a time, leader last, and the swarm keeps quorum —
/// checked by the test from the other managers whenever one is down.
#[test]
fn fleet_update_rolls_one_manager_at_a_time_and_keeps_quorum() {
    let started = Instant::now();
    let lan = Lan::new();
    let m: Vec<Member> = ["m1", "m2", "m3"].into_iter().map(|n| Member::new(&lan, n)).collect();
    let mut c = Cluster { m, _lan: lan };
    let bound = Duration::from_secs(60);
    let work = tempfile::tempdir().unwrap();
    let (keys, other_keys) = (work.path().join("keys"), work.path().join("other-keys"));
    make_keys(&keys);
    make_keys(&other_keys);
    let docker_config = work.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();

    let mut slots = Vec::new();
    // m2 is reached through a forwarder that cuts the upload once (issue 18: fleet update resumes).
    let mut cutter = None;
    for (i, m) in c.m.iter_mut().enumerate() {
        let s = m.state_dir().to_string();
        let o = swarmseal(&["--state-dir", &s, "certs", "init", "--san", "127.0.0.1"], &[], None);
        assert!(o.status.success(), "certs init: {}", String::from_utf8_lossy(&o.stderr));
        let admin = m.state.path().join("admin");
        let o = swarmseal(&["--state-dir", &s, "certs", "issue", "admin", "--role", "admin", "--out", admin.to_str().unwrap()], &[], None);
        assert!(o.status.success(), "certs issue: {}", String::from_utf8_lossy(&o.stderr));
        let sl = Slots::new(m.state.path().join("slots"), "1.0.0");
        let port = free_port();
        let socket = m.state.path().join("update.sock");
        m.configure_with(
            i == 0,
            &format!(
                "[proxy]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n[update]\npublic_key = \"{}\"\nsocket = \"{}\"\nsysupdate = \"{}\"\nsystemctl = \"{}\"\nos_release = \"{}\"\n",
                keys.join("pcr-signing.pem").display(),
                socket.display(),
                sl.dir.join("sysupdate").display(),
                sl.dir.join("systemctl").display(),
                sl.dir.join("os-release").display()
            ),
        );
        let cfg = m.state.path().join("agent.toml").to_str().unwrap().to_string();
        serve_apply(socket, vec!["--config".into(), cfg, "--state-dir".into(), s.clone()]);
        let reach = if i == 1 {
            let f = Forwarder::start(port);
            let p = f.port;
            cutter = Some(f);
            p
        } else {
            port
        };
        let ep = format!("host=tcp://127.0.0.1:{reach},ca={0}/ca.pem,cert={0}/cert.pem,key={0}/key.pem", admin.display());
        let o = Command::new("docker").env("DOCKER_CONFIG", &docker_config).args(["context", "create", m.name, "--docker", &ep]).output().unwrap();
        assert!(o.status.success(), "docker context create: {}", String::from_utf8_lossy(&o.stderr));
        slots.push(sl);
        m.start_agent();
    }
    wait_until("m1's agent inits the swarm", bound, || c.m[0].d.swarm_state() == "active");
    let token = c.m[0].d.docker_ok(&["swarm", "join-token", "-q", "manager"]);
    let leader = format!("{}:2377", c.m[0].d.addr);
    for m in &c.m[1..] {
        m.d.docker_ok(&["swarm", "join", "--token", &token, "--advertise-addr", &m.d.addr, &leader]);
    }
    wait_until("three healthy managers", bound, || all_healthy(&c.m[0]));
    // Everyone sealed the swarm's key (the agents' watch loop), so a reboot unlocks by itself.
    let k = c.m[0].d.docker_ok(&["swarm", "unlock-key", "-q"]);
    for m in &c.m {
        wait_until(&format!("{} seals the swarm's key", m.name), bound, || m.holds(Slot::Current, &k));
    }

    let fleet_with = |release: &Path, extra: &[&str]| {
        Command::new(swarmseal_bin())
            .env("DOCKER_CONFIG", &docker_config)
            .env("NO_COLOR", "1")
            .args(["fleet", "update", "--contexts", "m1,m2,m3", "--poll", "1", "--timeout", "300"])
            .args(extra)
            .arg(release)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let fleet = |release: &Path| fleet_with(release, &[]);

    // A release signed by another fleet's key: the first manager refuses it, nothing is
    // written anywhere, nobody reboots, the run stops there.
    let bad = make_release(work.path(), "1.0.1", &other_keys);
    let o = fleet(&bad).wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    println!("fleet update with another key's release:\n{out}{err}");
    assert_eq!(o.status.code(), Some(17), "exit 17 (stopped); stdout {out} stderr {err}");
    assert!(err.contains("stopped at") && err.contains("422"), "says where and why it stopped: {err}");
    assert!(err.contains("updated: none"), "{err}");
    // With the fleet's public key the operator's machine refuses it before any manager.
    let pk = keys.join("pcr-signing.pem");
    let o = fleet_with(&bad, &["--public-key", pk.to_str().unwrap()]).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "refused locally with exit 2: {err}");
    assert!(err.contains("refused before touching any manager"), "{err}");
    for (m, sl) in c.m.iter().zip(&slots) {
        assert_eq!(sl.version(), "1.0.0", "{}", m.name);
        assert!(sl.log("sysupdate").is_empty() && sl.log("systemctl").is_empty() && !sl.take_reboot(), "{}: nothing applied, no reboot", m.name);
        let staged = m.state.path().join("updates/staged");
        assert!(!staged.exists() || std::fs::read_dir(&staged).unwrap().next().is_none(), "{}: nothing staged", m.name);
    }

    // The fleet's release: one manager at a time. The test plays the reboots and, while a
    // manager is down, checks from the others that the swarm still has a majority and a leader.
    // 2 MiB of root image: a cut at half of it leaves a part received and kept by m2.
    let good = big_release(work.path(), "1.0.2", &keys, 2 << 20, 3);
    // Which member leads: its NodeID is the leader's ID (`node ls` has its own order, not c.m's).
    // (The CLI appends " *" to the ID of the node it asks, so look for the Leader token anywhere.)
    let leader_id = c.m[0].d.docker_ok(&["node", "ls", "--format", "{{.ID}} {{.ManagerStatus}}"])
        .lines()
        .find(|l| l.split_whitespace().any(|t| t == "Leader"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    let leader_before = leader_id.and_then(|id| c.m.iter().position(|m| m.d.docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"]) == id));
    let cutter = cutter.unwrap();
    cutter.arm(std::fs::metadata(&good).unwrap().len() / 2, Fault::Cut);
    let t = Instant::now();
    // Without --public-key the managers are not attested after their reboot (said so); with it,
    // further down, a manager that fails its attestation stops the run.
    let child = fleet_with(&good, &[]);
    let (o, order, reboots) = play_reboots(&mut c, &slots, child, bound);
    let status = o.status;
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    println!("fleet update with the fleet's release ({:.0} s; reboots: {}):\n{out}{err}", t.elapsed().as_secs_f64(), reboots.join(", "));
    assert!(status.success(), "fleet update failed: {status}\n{out}{err}");
    assert_eq!(order.len(), 3, "every manager rebooted once: {order:?}");
    if let Some(l) = leader_before {
        assert_eq!(order.last(), Some(&c.m[l].name), "the leader goes last");
    }
    for (m, sl) in c.m.iter().zip(&slots) {
        assert_eq!(sl.version(), "1.0.2", "{} runs the new version", m.name);
        // The first manager gets the whole release at its turn; each later one had its
        // partitions written (the stage definitions) while the one before it rebooted, then
        // the full install at its turn.
        let want = if order.first() == Some(&m.name) { "update 1.0.2" } else { "--definitions=/usr/lib/swarmseal/sysupdate-stage.d update 1.0.2\nupdate 1.0.2" };
        assert_eq!(sl.log("sysupdate").trim(), want, "{}: sysupdate for the release", m.name);
    }
    for n in &order[1..] {
        assert!(out.contains(&format!("{n}: partitions of 1.0.2 written, no boot entry yet")) && out.contains(&format!("{n}: UKI installed and rebooting")), "{n} pre-staged: {out}");
    }
    assert!(out.contains("quorum kept throughout"), "{out}");
    assert!(out.contains("m1: not attested (no --public-key"), "{out}");
    assert!(cutter.fired() && out.contains("m2: upload cut") && out.contains("m2: resumed at "), "m2's cut upload resumed by itself: {out}");
    wait_until("three healthy managers at the end", bound, || all_healthy(&c.m[0]));
    // Running it again changes nothing: every manager is at the release already.
    let o = fleet(&good).wait_with_output().unwrap();
    let again = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && again.matches("skipped").count() == 3, "second run: {again}{}", String::from_utf8_lossy(&o.stderr));

    // With the fleet's key each manager is attested after its reboot. These managers cannot
    // pass (no measure log, no signed PCR 11 on this host): the first one updated stops the
    // run, named with its failed checks; the others are not touched.
    let next = make_release(work.path(), "1.0.3", &keys);
    let pins = work.path().join("ak-pins");
    // Without --secure-boot-cert (or --allow-any-secure-boot-keys) every attestation would
    // fail its Secure Boot row: refused before any manager is touched.
    let o = fleet_with(&next, &["--public-key", pk.to_str().unwrap(), "--allow-no-firmware-log", "--pin-dir", pins.to_str().unwrap()]).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "usage error up front: {err}");
    assert!(err.contains("--secure-boot-cert") && !err.contains("uploading"), "{err}");
    let child = fleet_with(&next, &["--public-key", pk.to_str().unwrap(), "--allow-no-firmware-log", "--allow-any-secure-boot-keys", "--pin-dir", pins.to_str().unwrap()]);
    let (o, order, _) = play_reboots(&mut c, &slots, child, bound);
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    println!("fleet update with attestation:\n{out}{err}");
    assert_eq!(o.status.code(), Some(17), "exit 17 (stopped): {out}{err}");
    assert_eq!(order.len(), 1, "one manager rebooted, then the run stopped: {order:?}");
    assert!(err.contains(&format!("stopped at {}", order[0])) && err.contains("attestation after the reboot failed") && err.contains("event log replay"), "{err}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("event log replay") && l.contains("FAIL")), "the manager's table is printed: {out}");
    assert_eq!(slots.iter().filter(|s| s.version() == "1.0.3").count(), 1, "only the attested-and-failed manager runs 1.0.3");
    assert!(!pins.join(order[0]).exists(), "a failed attestation pins nothing");
    for m in &mut c.m {
        m.stop_agent();
        m.assert_no_leak(&[&k]);
    }
    println!("fleet update test: {} s", started.elapsed().as_secs());
}

/// Play the managers' reboots while `fleet update` (`child`) runs: a manager whose agent asked
/// for a reboot is shut down, the others are checked to keep a leader and a majority, its
/// slot switched and it boots again. Returns the run's output, the order of the reboots and
/// their durations.
fn play_reboots(c: &mut Cluster, slots: &[Slots], mut child: std::process::Child, bound: Duration) -> (std::process::Output, Vec<&'static str>, Vec<String>) {
    let t = Instant::now();
    let mut order = Vec::new();
    let mut reboots = Vec::new();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "fleet update still running after 10 min");
        for i in 0..3 {
            if !slots[i].take_reboot() {
                continue;
            }
            let tr = Instant::now();
            order.push(c.m[i].name);
            c.m[i].shut_down();
            // Quorum while it is down: the other two still form a majority with a leader.
            let other = c.m.iter().enumerate().find(|&(j, _)| j != i).map(|(_, o)| o).unwrap();
            wait_until("the others elect or keep a leader", bound, || {
                let n = other.d.docker(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"]);
                let text = String::from_utf8_lossy(&n.stdout).to_string();
                n.status.success() && text.lines().filter(|l| l.starts_with("Ready") && (l.contains("Leader") || l.contains("Reachable"))).count() >= 2 && text.contains("Leader")
            });
            slots[i].switch();
            c.m[i].boot();
            reboots.push(format!("{} {:.0} s", c.m[i].name, tr.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (child.wait_with_output().unwrap(), order, reboots)
}
