//! The fleet scenario: three managers (OVMF + Secure Boot + swtpm each) form one
//! autolocked swarm and are rolled to a new release by `swarmseal fleet update` while a
//! watcher asks every manager for `docker node ls` every 5 s and asserts Raft quorum the
//! whole time (issue 7's "a rolling update of all three keeps quorum", on the real image).
//!
//! Behind a flag: it runs only when `SWARMSEAL_SCENARIOS` names `fleet` (three TCG VMs
//! take ~35 min of this 2-core machine; docs/benchmarks.md "Fleet update" has the times).
//! The release is `SWARMSEAL_RELEASE_NEXT` (scripts/test-fleet builds it):
//!
//!   SWARMSEAL_SCENARIOS=fleet scripts/test-fleet
//!
//! The VMs reach each other through the host: each forwards `127.0.0.1:P` to its swarm
//! port 2377 (`run-qemu --swarm-port P`) and advertises `10.0.2.2:P`, the host as QEMU's
//! user network shows it; Raft between managers is TCP only. m1 initializes the swarm
//! (autolock on, key sealed); m2 and m3 boot without `swarm init` and join as managers
//! through their proxies, and their agents seal the swarm's unlock key. The operator's
//! docker contexts `fleet-m1..3` live in `DOCKER_CONFIG=<work>/fleet/docker`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{ensure, typed, Check, Status, Suite, Vm};

const MANAGERS: usize = 3;
/// Boots side by side under TCG: three VMs on two cores.
const BOOT: Duration = Duration::from_secs(40 * 60);
/// From `docker swarm join` to the joined manager's agent having sealed the swarm's key.
const JOIN: Duration = Duration::from_secs(15 * 60);
/// `fleet update --timeout`: per manager, upload to back unlocked on the new version.
const ROLL_PER_MANAGER_S: u64 = 2400;
/// How often the watcher asks, and the longest stretch without a leader and 2 of 3
/// managers reachable that still counts as quorum held (an election; `fleet update`
/// allows the same).
const WATCH_EVERY: Duration = Duration::from_secs(5);
const ELECTION_GRACE_S: u64 = 60;

/// One sample of the quorum watcher: seconds since the rollout started, the most
/// managers any manager saw Leader/Reachable, whether any manager saw a leader.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: u64,
    pub reachable: usize,
    pub leader: bool,
}

/// What the watcher saw: (samples, fewest reachable, longest stretch in seconds without
/// a leader and 2 of 3 reachable; a stretch still open at the last sample counts up to it).
pub fn quorum_gaps(samples: &[Sample]) -> (usize, usize, u64) {
    let fewest = samples.iter().map(|s| s.reachable).min().unwrap_or(0);
    let (mut worst, mut gap_start) = (0u64, None::<u64>);
    for s in samples {
        let ok = s.leader && s.reachable >= 2;
        match (ok, gap_start) {
            (false, None) => gap_start = Some(s.at),
            (true, Some(g)) => {
                worst = worst.max(s.at - g);
                gap_start = None;
            }
            _ => {}
        }
    }
    if let (Some(g), Some(last)) = (gap_start, samples.last()) {
        worst = worst.max(last.at - g);
    }
    (samples.len(), fewest, worst)
}

fn status_of(vm: &Vm) -> Option<Status> {
    vm.status().ok().and_then(|v| typed(&v).ok())
}

fn sealed_active(s: &Status) -> bool {
    s.swarm.state() == Some("active") && s.sealed.current.is_some()
}

/// Poll the agent's status until `cond` holds; on timeout, the last status and the console.
fn wait_for(vm: &Vm, what: &str, cond: impl Fn(&Status) -> bool, timeout: Duration) -> Check<Duration> {
    let t = Instant::now();
    let mut last = String::from("no answer from the proxy");
    while t.elapsed() < timeout {
        ensure!(vm.running(), "{}: QEMU exited while waiting for {what}; console tail:\n{}", vm.name, vm.console_tail(30));
        if let Some(s) = status_of(vm) {
            if cond(&s) {
                println!("    [{}] {what} after {:.0} s", vm.name, t.elapsed().as_secs_f64());
                return Ok(t.elapsed());
            }
            last = format!("swarm {:?}, sealed {}, phase_locked {:?}", s.swarm.state(), s.sealed.current.is_some(), s.phase_locked);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    Err(format!("{}: not {what} within {} s (last: {last}); console tail:\n{}", vm.name, timeout.as_secs(), vm.console_tail(15)))
}

/// Ask every manager `docker node ls` until `stop`; one [`Sample`] per round.
fn watch_quorum(vms: &[Vm], t0: Instant, stop: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let (mut reachable, mut leader) = (0, false);
        for vm in vms {
            let ls = vm.docker_timeout(15, &["node", "ls", "--format", "{{.ManagerStatus}}"]);
            if !ls.ok {
                continue;
            }
            reachable = reachable.max(ls.stdout.lines().filter(|l| l.contains("Leader") || l.contains("Reachable")).count());
            leader |= ls.stdout.lines().any(|l| l.contains("Leader"));
        }
        samples.push(Sample { at: t0.elapsed().as_secs(), reachable, leader });
        while round.elapsed() < WATCH_EVERY && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    samples
}

/// The `swarmseal` binary the operator runs `fleet update` and `fleet attest` with (built from this tree).
pub fn swarmseal_bin(suite: &Suite) -> Check<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run(Command::new(cargo).current_dir(&suite.repo).args(["build", "--locked", "-p", "swarmseal", "--bin", "swarmseal"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| suite.repo.join("target"));
    let bin = target.join("debug/swarmseal");
    ensure!(bin.is_file(), "{}: not built", bin.display());
    Ok(bin)
}

/// The scenario. Every VM is shut down at the end, pass or fail (a failing [`Vm`] is
/// powered off by its `Drop`).
pub fn rolling_update(suite: &Suite) -> Check {
    let (release, version) = suite.release("SWARMSEAL_RELEASE_NEXT")?;
    let bin = swarmseal_bin(suite)?;
    let keys = std::env::var_os("SWARMSEAL_KEYS").map(PathBuf::from).unwrap_or_else(|| suite.repo.join("keys"));
    let docker_config = suite.work.join("fleet/docker");
    std::fs::create_dir_all(&docker_config).map_err(|e| format!("{}: {e}", docker_config.display()))?;

    let t_boot = Instant::now();
    let mut vms = Vec::new();
    for i in 1..=MANAGERS {
        let mut vm = Vm::new(suite, &format!("fleet-m{i}"))?;
        let swarm_port = crate::free_port()?;
        vm.options = vec!["--swarm-port".into(), swarm_port.to_string(), "--advertise-addr".into(), format!("10.0.2.2:{swarm_port}")];
        if i > 1 {
            vm.options.push("--no-swarm-init".into());
        }
        vm.power_on(&format!("fleet manager {i} of {MANAGERS}, side by side"))?;
        vms.push((vm, swarm_port));
    }
    wait_for(&vms[0].0, "swarm active, key sealed", sealed_active, BOOT)?;
    for (vm, _) in &vms[1..] {
        wait_for(vm, "agent up, no swarm yet", |s| s.phase_locked == Some(true), BOOT)?;
    }
    println!("    three managers up in {:.0} s", t_boot.elapsed().as_secs_f64());

    let t_join = Instant::now();
    let token = vms[0].0.docker(&["swarm", "join-token", "-q", "manager"]);
    ensure!(token.ok, "docker swarm join-token -q manager on m1: {token}");
    let leader_addr = format!("10.0.2.2:{}", vms[0].1);
    for (vm, port) in &vms[1..] {
        let adv = format!("10.0.2.2:{port}");
        let j = vm.docker(&["swarm", "join", "--token", &token.stdout, "--advertise-addr", &adv, "--listen-addr", "0.0.0.0:2377", &leader_addr]);
        ensure!(j.ok, "{}: docker swarm join through its proxy: {j}", vm.name);
    }
    for (vm, _) in &vms[1..] {
        wait_for(vm, "joined, the swarm's unlock key sealed", sealed_active, JOIN)?;
    }
    let ls = vms[0].0.docker(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]);
    let managers = ls.stdout.lines().filter(|l| l.contains("Leader") || l.contains("Reachable")).count();
    ensure!(ls.ok && managers == MANAGERS, "expected {MANAGERS} reachable managers, docker node ls on m1: {ls}");
    println!("    m2, m3 joined and sealed in {:.0} s:\n{}", t_join.elapsed().as_secs_f64(), crate::indent(&ls.stdout, "      | "));

    // The operator's contexts, made with the real docker CLI, as `fleet update` reads them.
    let mut contexts = Vec::new();
    for (i, (vm, _)) in vms.iter().enumerate() {
        let (name, b) = (format!("fleet-m{}", i + 1), vm.bundle());
        let endpoint = format!("host=tcp://127.0.0.1:{},ca={},cert={},key={}", vm.port, b.join("ca.pem").display(), b.join("cert.pem").display(), b.join("key.pem").display());
        crate::run(Command::new("docker").env("DOCKER_CONFIG", &docker_config).args(["context", "create", &name, "--docker", &endpoint]))?;
        contexts.push(name);
    }

    let only: Vec<Vm> = vms.into_iter().map(|(vm, _)| vm).collect();
    let stop = AtomicBool::new(false);
    let t_roll = Instant::now();
    let (update, samples) = std::thread::scope(|sc| {
        let watcher = sc.spawn(|| watch_quorum(&only, t_roll, &stop));
        println!("    swarmseal fleet update --contexts {} {}", contexts.join(","), release.display());
        let update = Command::new(&bin)
            .env("DOCKER_CONFIG", &docker_config)
            .args(["fleet", "update", "--contexts", &contexts.join(","), "--public-key"])
            .arg(keys.join("pcr-signing.pem"))
            // Each manager is attested after its reboot: the fleet's Secure Boot certificate too.
            .arg("--secure-boot-cert")
            .arg(keys.join("secure-boot.crt"))
            .arg("--pin-dir")
            .arg(docker_config.join("ak-pins"))
            .args(["--timeout", &ROLL_PER_MANAGER_S.to_string()])
            // Three managers: writing the next one's slot while one reboots is the operator's
            // choice (--prestage); the benchmark measures it, the watcher checks quorum meanwhile.
            .arg("--prestage")
            .arg(&release)
            .status();
        stop.store(true, Ordering::Relaxed);
        (update, watcher.join().unwrap_or_default())
    });
    let roll = t_roll.elapsed();

    let mut failed = Vec::new();
    match update {
        Ok(s) if s.success() => {}
        Ok(s) => failed.push(format!("swarmseal fleet update exited {s}")),
        Err(e) => failed.push(format!("swarmseal fleet update: {e}")),
    }
    let (n, fewest, worst) = quorum_gaps(&samples);
    println!(
        "    quorum watcher: {n} samples over {} s; fewest managers seen reachable: {fewest} of {MANAGERS}; longest time without a leader and 2 reachable: {worst} s",
        samples.last().map(|s| s.at).unwrap_or(0)
    );
    if n == 0 {
        failed.push("the quorum watcher recorded nothing".into());
    } else if worst > ELECTION_GRACE_S {
        failed.push(format!("quorum lost: {worst} s without a leader and 2 of {MANAGERS} managers reachable (an election may take {ELECTION_GRACE_S} s)"));
    }
    for vm in &only {
        let s = status_of(vm);
        let (v, st) = (s.as_ref().and_then(|s| s.image.version.clone()), s.as_ref().and_then(|s| s.swarm.state().map(str::to_string)));
        println!("    [{}] image {}, swarm {}", vm.name, v.as_deref().unwrap_or("?"), st.as_deref().unwrap_or("?"));
        if v.as_deref() != Some(version.as_str()) || st.as_deref() != Some("active") {
            failed.push(format!("{} is not on {version} with the swarm active (image {v:?}, swarm {st:?})", vm.name));
        }
    }
    println!("    rolling update to {version}: {:.0} s", roll.as_secs_f64());
    for mut vm in only {
        if let Err(e) = vm.shutdown() {
            println!("    {e}");
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: u64, reachable: usize, leader: bool) -> Sample {
        Sample { at, reachable, leader }
    }

    #[test]
    fn an_election_gap_is_measured_from_its_first_bad_sample() {
        let samples = [s(0, 3, true), s(5, 2, false), s(10, 2, false), s(15, 3, true), s(20, 1, true), s(25, 2, true)];
        assert_eq!(quorum_gaps(&samples), (6, 1, 10));
    }

    #[test]
    fn a_gap_open_at_the_end_counts_to_the_last_sample() {
        let samples = [s(0, 3, true), s(5, 1, true), s(100, 1, false)];
        assert_eq!(quorum_gaps(&samples), (3, 1, 95));
        assert_eq!(quorum_gaps(&[]), (0, 0, 0));
    }
}
