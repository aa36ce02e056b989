//! The operator's story, on the real image in QEMU (OVMF + swtpm).
//!
//! One manager lives through scenarios 1 → 2 → 5 → 6 → 3 → 8 → 9 → 10 → 13 (boots are
//! shared: each one costs minutes under TCG); 4 moves its disk to a new machine;
//! 7, 11 and 12 are managers of their own. 8, 9 and 10 need releases (scripts/test-fleet
//! builds them). Scenarios run in this file's order whatever order SWARMSEAL_SCENARIOS
//! names them in, one VM at a time (scripts/test runs two such processes side by side:
//! `scripts/test-fleet --lanes`); a failed
//! check is reported and the story goes on where it can; the run fails at the
//! end if anything failed. Each scenario's duration and every boot's
//! power-on → unlocked/locked time are printed.
//!
//!   cargo test -p swarmseal-qemu-tests                      all of it (8–10 need scripts/test-fleet's releases)
//!   SWARMSEAL_SCENARIOS=1,2,7 cargo test -p swarmseal-qemu-tests   a subset
//!   SWARMSEAL_SCENARIOS=fleet scripts/test-fleet              three managers rolled by `fleet update`,
//!                                   quorum watched (behind this flag only: ~35 min; not in `all`)
//!   SWARMSEAL_SCENARIO4_TIMES=5 …   scenario 4 five times in a row, each moving the disk
//!                                   the previous one recovered to yet another machine

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use swarmseal_qemu_tests::{ensure, indent, text, typed, Check, Escrow, Outcome, Slot, Suite, Vm};

// Generous: scripts/test boots two lanes side by side beside image builds on 2 cores (a
// boot that takes 200 s alone has taken 520 s there); a hung boot only fails later.
const FIRST_BOOT: Duration = Duration::from_secs(20 * 60);
const BOOT: Duration = Duration::from_secs(15 * 60);

/// What the operator holds across the story.
struct Story {
    suite: Suite,
    manager: Option<Vm>,
    escrow: Escrow,
    /// The current unlock key, as the operator last read it.
    key: Option<String>,
    /// `/var`'s recovery key, decrypted from its escrow copy (scenario 1, then the
    /// one `var/enroll-tpm` escrowed in its place in scenario 4).
    var_key: Option<String>,
    /// Machines the disk was moved to so far (scenario 4).
    moves: usize,
}

impl Story {
    fn manager(&mut self) -> Check<&mut Vm> {
        self.manager.as_mut().ok_or_else(|| "no manager: scenario 1 (first boot) did not bring one up".to_string())
    }
}

/// Independent checks of one scenario: all are tried, all failures reported.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            println!("    FAIL {w}");
            self.0.push(w);
        }
    }
    fn done(self) -> Check {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("\n"))
        }
    }
}

fn main() {
    // SWARMSEAL_SCENARIOS=1,2,7 runs a subset; unset or `all` runs every scenario.
    let only: Option<Vec<String>> = std::env::var("SWARMSEAL_SCENARIOS").ok().filter(|s| s.trim() != "all").map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let t_suite = Instant::now();
    let suite = match Suite::prepare() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qemu-tests: {e}");
            std::process::exit(1);
        }
    };
    let mut story = Story { suite, manager: None, escrow: Escrow::default(), key: None, var_key: None, moves: 0 };
    let s4_times: usize = std::env::var("SWARMSEAL_SCENARIO4_TIMES").ok().and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or(1);
    type Scenario = fn(&mut Story) -> Check;
    let scenarios: [(&str, &str, Scenario); 14] = [
        ("1", "first boot: swarm up with autolock, key sealed, only the admin bundle gets in, bench reported", first_boot),
        ("2", "reboot (a power cut in normal operation): unlocked again with nobody typing a key", reboot),
        ("5", "key rotation through the proxy: resealed, next boot unlocks with the new key", rotation),
        ("6", "power cut right after a rotation (one in normal operation was scenario 2)", power_cut),
        ("3", "boot chain the fleet did not sign: locked, reason named, unlocked by hand, reseal refused, own UKI unlocks", changed_uki),
        ("8", "image update v1 → v2 (same fleet key) through the proxy: A/B slot, reboot, unlocked with no reseal", update_same_key),
        ("9", "a release signed by another fleet key: refused before anything is written, manager untouched", update_other_key),
        ("10", "a release that fails its health gate: its boot tries, then back on the previous version, unlocked with no reseal", update_rolls_back),
        ("13", "a dbx update (a firmware window armed through the proxy first): /var opens with no console, re-bound to the new PCR 7; the swarm comes back unlocked with the window copy of its key, resealed to the new PCR 7; the next boot needs nobody", firmware_window),
        ("4", "disk moved to another machine: nothing opens, console says why", moved_disk),
        ("7", "bad first-boot credentials: boots, says what is wrong, exposes nothing", bad_credentials),
        ("11", "a bond of 2 NICs with a static address and a VLAN, by first-boot credential (network.*): the swarm advertises it, the screen shows both, the proxy answers on it and again through the 2nd NIC once the active one's cable is pulled", static_address),
        ("12", "trusted time: RTC 2 days off, an NTS server on the host by credential: synchronised before ready, A.7 PASS; its CA replaced by another: A.7 WARN naming why, still unlocked", trusted_time),
        ("fleet", "three managers, one autolocked swarm, rolled to the next release by `swarmseal fleet update`: quorum held throughout", fleet),
    ];
    let mut results = Vec::new();
    for (id, title, f) in scenarios {
        // The fleet scenario runs only when named: it is not part of `all`.
        let named = only.as_ref().map(|o| o.iter().any(|x| x == id));
        if named == Some(false) || (named.is_none() && id == "fleet") {
            println!("\n=== scenario {id}: NOT RUN (not in SWARMSEAL_SCENARIOS): {title}");
            continue;
        }
        let times = if id == "4" { s4_times } else { 1 };
        for n in 1..=times {
            let id = if times > 1 { format!("{id} ({n}/{times})") } else { id.to_string() };
            println!("\n=== scenario {id}: {title}");
            let t = Instant::now();
            let r = f(&mut story);
            let took = t.elapsed();
            match &r {
                Ok(()) => println!("=== scenario {id}: PASS in {:.0} s", took.as_secs_f64()),
                Err(e) => println!("=== scenario {id}: FAIL in {:.0} s\n{}", took.as_secs_f64(), indent(e, "    ")),
            }
            let failed = r.is_err();
            results.push((id, title, took, r));
            if failed {
                break;
            }
        }
    }
    if let Some(vm) = story.manager.as_mut() {
        let _ = vm.shutdown();
    }

    println!("\n=== boots (power-on → decision)");
    for (name, boots) in story.manager.iter().map(|v| (&v.name, &v.boots)) {
        for (label, d) in boots {
            println!("  {name:<10} {label:<45} {:>5.0} s", d.as_secs_f64());
        }
    }
    println!("\n=== scenarios");
    let mut failed = 0;
    for (id, title, took, r) in &results {
        println!("  {id:<8}  {:<4}  {:>5.0} s  {title}", if r.is_ok() { "PASS" } else { "FAIL" }, took.as_secs_f64());
        failed += r.is_err() as usize;
    }
    println!("  total {:.0} s; {} of {} scenarios failed", t_suite.elapsed().as_secs_f64(), failed, results.len());
    println!("scenarios: {} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

fn differs(status: &Value) -> Vec<String> {
    match typed(status).map(|s| s.sealed.current) {
        Ok(Some(Slot::Sealed { differs: Some(d), .. })) => d,
        _ => vec![],
    }
}

fn read_key(vm: &Vm) -> Check<String> {
    let k = vm.docker(&["swarm", "unlock-key", "-q"]);
    ensure!(k.ok && k.stdout.starts_with("SWMKEY-1-"), "docker swarm unlock-key -q through the proxy: {k}");
    Ok(k.stdout)
}

fn escrowed_key(vm: &Vm, escrow: &Escrow) -> Check<String> {
    let (code, body) = vm.api("GET", "/swarmseal/v1/escrow")?;
    ensure!(code == 200, "GET /swarmseal/v1/escrow: HTTP {code} {}", text(&body));
    escrow.decrypt(&body)
}

/// The operator unlocks by hand through the proxy and accepts this boot chain.
fn unlock_by_hand_and_reseal(vm: &Vm, key: &str) -> Check {
    let u = vm.docker_stdin(&["swarm", "unlock"], Some(&format!("{key}\n")));
    ensure!(u.ok, "docker swarm unlock through the proxy: {u}");
    let state = vm.swarm_state();
    ensure!(state == "active", "after docker swarm unlock the swarm is {state:?}");
    let (code, body) = vm.api("POST", "/swarmseal/v1/reseal")?;
    ensure!(code == 200, "POST /swarmseal/v1/reseal: HTTP {code} {}", text(&body));
    println!("    unlocked by hand through the proxy and resealed: {}", text(&body).chars().take(120).collect::<String>());
    Ok(())
}

/// Wait (the agent polls every 2 s) until the sealed key and the escrow copy are `key`.
fn wait_resealed(vm: &Vm, escrow: &Escrow, key: &str, created_before: &Value) -> Check {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(30) {
        let st = vm.status()?;
        let created = st.pointer("/sealed/current/created").cloned().unwrap_or(Value::Null);
        let esc = escrowed_key(vm, escrow);
        if created != *created_before && esc.as_deref() == Ok(key) {
            println!("    resealed {:.1} s after the rotation (current slot sealed {created}, escrow copy updated)", t.elapsed().as_secs_f64());
            return Ok(());
        }
        last = format!("current slot sealed {created} (before {created_before}), escrow {}", if esc.as_deref() == Ok(key) { "new key".into() } else { format!("{esc:?}") });
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(format!("the agent did not reseal within 30 s of the rotation: {last}"))
}

// ---------------------------------------------------------------- 1

fn first_boot(s: &mut Story) -> Check {
    let mut vm = Vm::new(&s.suite, "manager")?;
    // The operator's age recipient for the escrow copy, handed over as a credential.
    std::fs::write(vm.dir.join("escrow-recipient"), s.escrow.recipient()).map_err(|e| e.to_string())?;
    vm.power_on("first boot")?;
    let decision = vm.wait_for_decision(FIRST_BOOT);
    let vm = s.manager.insert(vm);
    let (outcome, st) = decision?;
    let mut f = Findings::default();
    f.check(outcome == Outcome::Unlocked, || format!("the swarm is {outcome:?} after the first boot; status {st}"));
    f.check(st.pointer("/swarm/manager") == Some(&json!(true)), || format!("not a manager: {}", st["swarm"]));
    f.check(st.pointer("/swarm/autolock") == Some(&json!(true)), || format!("autolock is not on: {}", st["swarm"]));
    let cur = st.pointer("/sealed/current").cloned().unwrap_or(Value::Null);
    f.check(cur.is_object() && cur.get("differs") == Some(&json!([])), || format!("the key is not sealed to this boot: sealed.current = {cur}"));

    let ls = vm.docker(&["node", "ls"]);
    f.check(ls.ok && ls.stdout.contains("Leader"), || format!("docker node ls with the admin bundle: {ls}"));
    if ls.ok {
        println!("    docker node ls through the proxy:\n{}", ls.stdout.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n"));
    }
    let open = vm.docker_without_bundle(&["node", "ls"]);
    f.check(!open.ok, || format!("docker node ls without TLS worked: {open}"));
    let nocert = vm.docker_tls_without_cert(&["node", "ls"]);
    f.check(!nocert.ok, || format!("docker node ls over TLS without a client certificate worked: {nocert}"));
    let anon = vm.api_without_cert("GET", "/swarmseal/v1/status");
    f.check(!matches!(anon, Ok((200, _))), || "GET /swarmseal/v1/status without a client certificate answered 200".into());

    match read_key(vm) {
        Ok(k) => {
            let esc = escrowed_key(vm, &s.escrow);
            f.check(esc.as_deref() == Ok(k.as_str()), || format!("the escrow copy does not decrypt to the unlock key: {esc:?}"));
            s.key = Some(k);
        }
        Err(e) => f.check(false, || e),
    }

    // /var's recovery key, escrowed by swarmseal-var-recovery.service on first boot.
    let t = Instant::now();
    let mut got = Err("not asked yet".to_string());
    while t.elapsed() < Duration::from_secs(180) {
        got = vm.api("GET", "/swarmseal/v1/escrow/var-recovery-key").and_then(|(c, b)| if c == 200 { s.escrow.decrypt(&b) } else { Err(format!("HTTP {c} {}", text(&b))) });
        if got.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    match got {
        Ok(k) => {
            let groups: Vec<&str> = k.trim().split('-').collect();
            f.check(groups.len() == 8 && groups.iter().all(|g| g.len() == 8), || format!("the escrowed /var recovery key is not a systemd recovery key ({} characters)", k.len()));
            println!("    /var recovery key escrowed after {:.0} s (GET /swarmseal/v1/escrow/var-recovery-key, age-decrypted: {} groups)", t.elapsed().as_secs_f64(), groups.len());
            f.check(!vm.console().contains(k.trim()), || "the /var recovery key appears on the serial console".into());
            s.var_key = Some(k.trim().to_string());
        }
        Err(e) => f.check(false, || format!("GET /swarmseal/v1/escrow/var-recovery-key: {e}")),
    }

    // The bench runs after the unlock decision: give it time.
    let t = Instant::now();
    let mut bench = Err("not asked yet".to_string());
    while t.elapsed() < Duration::from_secs(240) {
        bench = vm.api("GET", "/swarmseal/v1/bench").and_then(|(c, b)| if c == 200 { Ok(b) } else { Err(format!("HTTP {c} {}", text(&b))) });
        if bench.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    match bench.and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| format!("not JSON: {e}"))) {
        Ok(report) => {
            let checks = report.get("checks").and_then(Value::as_u64).unwrap_or(0);
            f.check(checks > 0, || format!("the bench report has no checks: {}", report.to_string().chars().take(300).collect::<String>()));
            println!("    bench report served: {checks} checks, score {}", report.get("score").unwrap_or(&Value::Null));
        }
        Err(e) => f.check(false, || format!("GET /swarmseal/v1/bench: {e}")),
    }
    // The operator checks from outside what the manager says of itself: `fleet attest` passes
    // (the fleet's signed PCR 11, Secure Boot with the fleet's db and signer) and names the version.
    match fleet_attest(&s.suite, vm) {
        Ok((code, out)) => {
            println!("    swarmseal fleet attest (exit {code:?}):\n{}", indent(&out, "      "));
            f.check(code == Some(0), || format!("fleet attest on the first boot exited {code:?}:\n{out}"));
            let version = st.pointer("/image/version").and_then(Value::as_str).unwrap_or("?").to_string();
            f.check(out.starts_with(&format!("{} image {version} (as the manager reports it)", vm.name)), || format!("fleet attest does not name image {version}:\n{out}"));
            f.check(out.lines().any(|l| l.trim_start().starts_with("Secure Boot") && l.contains("PASS") && l.contains("swarmseal fleet Secure Boot key")), || format!("the Secure Boot row does not name the fleet's certificate:\n{out}"));
        }
        Err(e) => f.check(false, || e),
    }
    // The real firmware log, kept for the parser's unit test (agent/src/attest/testdata/).
    match save_firmware_log(&s.suite, vm) {
        Ok(p) => println!("    the firmware event log: {}", p.display()),
        Err(e) => f.check(false, || e),
    }
    let st = vm.status()?;
    f.check(!st["bench"].is_null(), || "the status shows no bench summary".into());
    let summary = vm.console_lines(&["CIS Docker Benchmark"]);
    f.check(!summary.is_empty(), || "the bench summary (\"CIS Docker Benchmark v1.8.0: N checks…\") is not on the console: the agent's journal events do not reach the serial console".into());
    if let Some(l) = summary.first() {
        println!("    console: {}", l.trim());
    }
    f.done()
}

// ---------------------------------------------------------------- 2

/// The reboot is a power cut in normal operation (QEMU killed, no shutdown at all): the
/// harder case, and one boot fewer than a clean reboot and a cut each — clean reboots
/// follow in 5, 3 and 13.
fn reboot(s: &mut Story) -> Check {
    let vm = s.manager()?;
    vm.power_cut()?;
    let st = vm.boot_expect("after a power cut in normal operation", Outcome::Unlocked, BOOT)?;
    let mut f = Findings::default();
    f.check(differs(&st).is_empty(), || format!("the sealed key's PCRs differ from this boot: {:?}", differs(&st)));
    let ls = vm.docker(&["node", "ls"]);
    f.check(ls.ok && ls.stdout.contains("Leader"), || format!("docker node ls after the reboot: {ls}"));
    f.done()
}

// ---------------------------------------------------------------- 5

fn rotation(s: &mut Story) -> Check {
    let escrow = &s.escrow;
    let old = s.key.clone().ok_or("the operator never read the key (scenario 1)")?;
    let vm = s.manager.as_mut().ok_or("no manager")?;
    let before = vm.status()?.pointer("/sealed/current/created").cloned().unwrap_or(Value::Null);
    let r = vm.docker(&["swarm", "unlock-key", "--rotate", "-q"]);
    ensure!(r.ok && r.stdout.starts_with("SWMKEY-1-"), "docker swarm unlock-key --rotate -q through the proxy: {r}");
    let new = r.stdout.lines().last().unwrap_or_default().to_string();
    ensure!(new != old, "the rotation returned the old key");
    s.key = Some(new.clone());
    wait_resealed(vm, escrow, &new, &before)?;
    vm.reboot_expect("reboot after rotation", Outcome::Unlocked, BOOT)?;
    let now = read_key(vm)?;
    ensure!(now == new, "after the reboot the engine's key is not the rotated one");
    Ok(())
}

// ---------------------------------------------------------------- 6

/// A power cut in normal operation is scenario 2's reboot.
fn power_cut(s: &mut Story) -> Check {
    let vm = s.manager.as_mut().ok_or("no manager")?;
    // Right after a rotation: the operator holds the new key the CLI printed.
    let r = vm.docker(&["swarm", "unlock-key", "--rotate", "-q"]);
    ensure!(r.ok && r.stdout.starts_with("SWMKEY-1-"), "docker swarm unlock-key --rotate -q: {r}");
    vm.power_cut()?;
    let new = r.stdout.lines().last().unwrap_or_default().to_string();
    vm.power_on("after a power cut right after a rotation")?;
    let (outcome, st) = vm.wait_for_decision(BOOT)?;
    match outcome {
        Outcome::Unlocked => println!("    came up unlocked by itself"),
        Outcome::Locked => {
            // Inside the documented window: unlock by hand with the key from the
            // rotation, reseal, and the next boot must unlock by itself.
            println!("    locked (inside the rotation window): {:?}; recovering as docs/sealing.md says", differs(&st));
            unlock_by_hand_and_reseal(vm, &new)?;
            vm.reboot_expect("reboot after the recovery", Outcome::Unlocked, BOOT)?;
        }
    }
    let key = read_key(vm)?;
    // The agent reseals within ~2 s if the engine's key is not the sealed one.
    std::thread::sleep(Duration::from_secs(6));
    let st = vm.status()?;
    let esc = escrowed_key(vm, &s.escrow);
    s.key = Some(key.clone());
    let mut f = Findings::default();
    f.check(differs(&st).is_empty(), || format!("after the power cut the sealed key's PCRs differ: {:?}", differs(&st)));
    f.check(esc.as_deref() == Ok(key.as_str()), || format!("the escrow copy is not the engine's key: {esc:?}"));
    f.done()
}

// ---------------------------------------------------------------- 3

fn changed_uki(s: &mut Story) -> Check {
    // The image seals with the fleet's signed PCR policy: a boot chain the fleet's PCR key did
    // not sign (here: one more cmdline word, Secure Boot signature renewed so the firmware runs
    // it) stays locked, and cannot be accepted by a reseal — only a signed image can.
    // /var is bound the same way (PCR 7 + PCR 11 signed by the fleet, systemd-repart's default
    // with a .pcrpkey): the boot first stops at /var's passphrase prompt; the operator types the
    // escrowed /var recovery key on the console.
    let changed = s.suite.changed_uki("swarmseal.test=changed-boot-chain")?;
    let suite = s.suite.clone();
    let key = s.key.clone().ok_or("the operator never read the key")?;
    let var_key = s.var_key.clone().ok_or("no escrowed /var recovery key (scenario 1)")?;
    let escrow = &s.escrow;
    let vm = s.manager.as_mut().ok_or("no manager")?;
    let mut f = Findings::default();
    let sealed_before = vm.status()?.pointer("/sealed/current/created").cloned().unwrap_or(Value::Null);

    vm.shutdown()?;
    vm.uki = Some(changed);
    const PROMPT: &str = "Please enter recovery key for disk var";
    let prompts_before = vm.console().matches(PROMPT).count();
    vm.power_on("changed UKI (one more cmdline word, not PCR-signed)")?;
    let t = Instant::now();
    while vm.console().matches(PROMPT).count() == prompts_before {
        ensure!(t.elapsed() < BOOT, "the changed UKI never asked for /var's recovery key within {} s; tail:\n{}", BOOT.as_secs(), vm.console_tail(30));
        ensure!(vm.running(), "QEMU exited; tail:\n{}", vm.console_tail(30));
        vm.retry_after_kernel_panic()?;
        std::thread::sleep(Duration::from_secs(3));
    }
    println!("    /var asks for its recovery key after {:.0} s (not signed by the fleet: the TPM does not open it)", t.elapsed().as_secs_f64());
    f.check(vm.console().contains("not signed by the fleet's PCR key"), || "the console's recovery hint does not name an unsigned boot chain".into());
    f.check(vm.api("GET", "/swarmseal/v1/status").is_err(), || "the proxy answers before /var is open".into());
    vm.type_console(&var_key)?;
    let (got, st) = vm.wait_for_decision(BOOT)?;
    ensure!(got == Outcome::Locked, "changed UKI with /var opened by its recovery key: expected Locked, the swarm is {got:?}; status {st}");
    // From outside: the quote shows a PCR 11 the fleet key never signed.
    match fleet_attest(&suite, vm) {
        Ok((code, out)) => {
            println!("    swarmseal fleet attest on the unsigned chain (exit {code:?}):\n{}", indent(&out, "      "));
            f.check(code == Some(21), || format!("fleet attest on the unsigned chain exited {code:?}, not 21:\n{out}"));
            f.check(out.contains("PCR 11 not signed by the fleet key"), || format!("fleet attest does not say \"PCR 11 not signed by the fleet key\":\n{out}"));
        }
        Err(e) => f.check(false, || e),
    }
    f.check(!vm.console().contains(&var_key), || "the /var recovery key appears on the serial console (echoed?)".into());
    let d = differs(&st);
    println!("    the agent says: {d:?}");
    f.check(!d.is_empty(), || format!("status shows no differing/unsigned PCR for the changed UKI: {}", st["sealed"]));
    let refusal = vm.console_lines(&["unlock_refused"]);
    let refusal2 = vm.console_lines(&["not approved by the fleet"]);
    f.check(!refusal.is_empty() || !refusal2.is_empty(), || "the console does not say why the swarm stayed locked (no unlock_refused line)".into());
    let ls = vm.docker(&["node", "ls"]);
    f.check(!ls.ok && ls.stderr.to_lowercase().contains("unlock"), || format!("docker node ls on a locked manager: {ls}"));
    let esc = escrowed_key(vm, escrow);
    f.check(esc.as_deref() == Ok(key.as_str()), || format!("the escrow copy served while locked is not the key: {esc:?}"));
    // By hand the swarm opens; the reseal is refused (this boot is not signed), the seal stays.
    let u = vm.docker_stdin(&["swarm", "unlock"], Some(&format!("{key}\n")));
    f.check(u.ok && vm.swarm_state() == "active", || format!("docker swarm unlock through the proxy: {u}"));
    let (code, body) = vm.api("POST", "/swarmseal/v1/reseal")?;
    println!("    POST /swarmseal/v1/reseal on the unsigned chain: HTTP {code} {}", text(&body).chars().take(160).collect::<String>());
    f.check(code == 409, || format!("the reseal of an unsigned boot chain answered HTTP {code} {}", text(&body)));
    let now = vm.status()?.pointer("/sealed/current/created").cloned().unwrap_or(Value::Null);
    f.check(now == sealed_before, || format!("the sealed key changed ({sealed_before} → {now})"));

    // The disk's own (signed) UKI: /var opens and the swarm unlocks by itself, the seal was
    // never replaced.
    vm.uki = None;
    vm.reboot_expect("back to the disk's own UKI", Outcome::Unlocked, BOOT)?;
    f.done()
}

// ---------------------------------------------------------------- 4

fn moved_disk(s: &mut Story) -> Check {
    let key = s.key.clone().ok_or("the operator never read the unlock key (scenario 1)")?;
    let var_key = s.var_key.clone();
    let escrow = &s.escrow;
    let vm = s.manager.as_mut().ok_or("no manager")?;
    vm.shutdown()?;
    s.moves += 1;
    let mut moved = vm.disk_moved_to_new_machine(&if s.moves == 1 { "moved".to_string() } else { format!("moved{}", s.moves) })?;
    moved.power_on("the disk in another machine (empty TPM)")?;
    let t0 = Instant::now();
    let mut f = Findings::default();
    // systemd-cryptsetup cannot unseal /var's volume key from this TPM and asks
    // for a passphrase on the console; swarmseal names the recovery path there.
    let said = loop {
        let c = moved.console();
        let asked = c.lines().any(|l| l.contains("assphrase") && l.contains("var"));
        if (asked && c.contains("swarmseal: recovery")) || t0.elapsed() > Duration::from_secs(420) {
            break c.lines().filter(|l| (l.contains("assphrase") && l.contains("var")) || l.contains("swarmseal:")).map(|l| l.trim().to_string()).collect::<Vec<_>>();
        }
        ensure!(moved.running(), "QEMU exited; console:\n{}", moved.console_tail(30));
        moved.retry_after_kernel_panic()?;
        std::thread::sleep(Duration::from_secs(5));
    };
    println!("    after {:.0} s the console says:\n{}", t0.elapsed().as_secs_f64(), said.iter().map(|l| format!("      | {l}")).collect::<Vec<_>>().join("\n"));
    f.check(said.iter().any(|l| l.contains("assphrase")), || format!("the console does not ask for /var's passphrase; tail:\n{}", moved.console_tail(25)));
    f.check(said.iter().any(|l| l.contains("recovery") && l.contains("var-recovery-key")), || "the console does not name the recovery path (the escrowed /var recovery key)".into());
    // Give a wrongly opened /var time to show itself.
    std::thread::sleep(Duration::from_secs(20));
    let c = moved.console();
    f.check(!c.contains("Mounted var.mount") && !c.contains("Started docker.service"), || "/var was mounted or the engine started on another machine's TPM".into());
    let st = moved.api("GET", "/swarmseal/v1/status");
    f.check(st.is_err(), || format!("the proxy answers on the moved disk before recovery: {st:?}"));
    let ls = moved.docker(&["node", "ls"]);
    f.check(!ls.ok, || format!("docker node ls reached the moved disk: {ls}"));

    // Recovery with the escrowed keys: the /var recovery key at the console…
    let Some(var_key) = var_key else {
        f.check(false, || "no escrowed /var recovery key from scenario 1: the operator cannot get back in".into());
        moved.power_cut()?;
        return f.done();
    };
    moved.type_console(&var_key)?;
    println!("    typed the /var recovery key at the console");
    moved.wait_console(&["Started", "docker.service"], BOOT)?;
    // …then the swarm stays locked: its sealed key belongs to the other TPM.
    let (outcome, st) = moved.wait_for_decision(BOOT)?;
    f.check(outcome == Outcome::Locked, || format!("the swarm is {outcome:?} on another machine's TPM; status {st}"));
    println!("    the agent says: {}", st.pointer("/sealed/current").map(|v| v.to_string()).unwrap_or_default().chars().take(300).collect::<String>());
    f.check(!moved.console().contains(&var_key), || "the /var recovery key appears on the serial console (echoed?)".into());
    // …the unlock key from its escrow copy, through the proxy; reseal to this TPM.
    let esc = escrowed_key(&moved, escrow);
    f.check(esc.as_deref() == Ok(key.as_str()), || format!("the escrow copy served on the moved disk is not the key: {esc:?}"));
    unlock_by_hand_and_reseal(&moved, &key)?;
    // …and /var bound to this machine's TPM again.
    let (code, body) = moved.api_post("/swarmseal/v1/var/enroll-tpm", &var_key)?;
    f.check(code == 200, || format!("POST /swarmseal/v1/var/enroll-tpm: HTTP {code} {}", text(&body)));
    println!("    POST /swarmseal/v1/var/enroll-tpm: HTTP {code} {}", text(&body).chars().take(200).collect::<String>());
    // The key just typed on a console and sent over the network is replaced.
    let new_var_key = moved.api("GET", "/swarmseal/v1/escrow/var-recovery-key").and_then(|(c, b)| if c == 200 { escrow.decrypt(&b) } else { Err(format!("HTTP {c} {}", text(&b))) });
    f.check(matches!(&new_var_key, Ok(k) if k.trim() != var_key && k.trim().len() == var_key.len()), || format!("after var/enroll-tpm the escrowed /var recovery key was not replaced: {}", match &new_var_key { Ok(k) if k.trim() == var_key => "still the old key".to_string(), Ok(_) => "not a recovery key".into(), Err(e) => e.clone() }));
    let (bad, _) = moved.api_post("/swarmseal/v1/var/enroll-tpm", "not-a-recovery-key")?;
    f.check(bad == 400, || format!("enroll-tpm with garbage answered HTTP {bad}, not 400"));
    // The next boot on the new machine needs nobody.
    let t = Instant::now();
    moved.shutdown()?;
    moved.power_on("the moved disk after recovery")?;
    // If the TPM still does not open /var, say so at once (with systemd-cryptsetup's reasons).
    let t1 = Instant::now();
    let asked = loop {
        let c = moved.console();
        if c.contains("for disk var") || c.contains("Mounted var.mount") || t1.elapsed() > BOOT {
            break c.contains("for disk var") && !c.contains("Mounted var.mount");
        }
        ensure!(moved.running(), "QEMU exited; console:\n{}", moved.console_tail(30));
        moved.retry_after_kernel_panic()?;
        std::thread::sleep(Duration::from_secs(3));
    };
    if asked {
        let why: Vec<String> = moved.console().lines().filter(|l| l.contains("cryptsetup") || l.contains("TPM") || l.contains("tpm2")).map(|l| format!("      | {}", l.trim())).collect();
        f.check(false, || format!("the reboot after re-enrolling /var asked for its passphrase again; the console:\n{}", why.join("\n")));
        moved.power_cut()?;
        return f.done();
    }
    let (outcome, st) = moved.wait_for_decision(BOOT)?;
    f.check(outcome == Outcome::Unlocked, || format!("the moved disk after recovery: the swarm is {outcome:?}; status {st}"));
    f.check(differs(&st).is_empty(), || format!("after recovery the sealed key's PCRs differ: {:?}", differs(&st)));
    println!("    reboot after recovery unlocked by itself ({:.0} s incl. shutdown)", t.elapsed().as_secs_f64());
    moved.shutdown()?;
    // The recovered disk is the manager now (SWARMSEAL_SCENARIO4_TIMES moves it again),
    // with the /var recovery key escrowed in place of the one typed.
    if let Ok(k) = new_var_key {
        s.var_key = Some(k.trim().to_string());
    }
    s.manager = Some(moved);
    f.done()
}

// ---------------------------------------------------------------- 7

fn bad_credentials(s: &mut Story) -> Check {
    if let Some(vm) = s.manager.as_mut() {
        vm.shutdown()?;
    }
    let mut vm = Vm::new(&s.suite, "bad-creds")?;
    vm.options = ["--no-credentials", "--cred", "swarmseal.advertise-addr=not an address!", "--cred", "swarmseal.client-ca=not a certificate", "--cred", "swarmseal.escrow-recipient=age1notarecipient"]
        .map(String::from)
        .to_vec();
    vm.power_on("bad credentials")?;
    let mut f = Findings::default();
    let first = vm.wait_console(&["swarmseal.advertise-addr"], BOOT);
    match &first {
        Ok(l) => println!("    console: {}", l.trim()),
        Err(e) => f.check(false, || e.clone()),
    }
    std::thread::sleep(Duration::from_secs(20));
    for name in ["swarmseal.client-ca", "swarmseal.escrow-recipient"] {
        let lines = vm.console_lines(&[name]);
        f.check(!lines.is_empty(), || format!("the console does not mention the bad credential {name}"));
        if let Some(l) = lines.first() {
            println!("    console: {}", l.trim());
        }
    }
    let st = vm.api("GET", "/swarmseal/v1/status");
    f.check(st.is_err(), || format!("the proxy answers with a bad client CA: {st:?}"));
    let ls = vm.docker(&["node", "ls"]);
    f.check(!ls.ok, || format!("docker node ls reached a manager with bad credentials: {ls}"));
    let open = vm.docker_without_bundle(&["info"]);
    f.check(!open.ok, || format!("docker info without TLS reached it: {open}"));
    vm.power_cut()?;
    f.done()
}

// ---------------------------------------------------------------- 11

/// Issue 19, network by credential, with no code of ours: the image's
/// systemd-network-generator (enabled; `ImportCredential=network.netdev.*`, `network.network.*`)
/// writes each credential `network.KIND.NAME` to `/run/systemd/network/NAME.KIND`; `10-…` to
/// `30-…` sort before the image's DHCP `80-ethernet.network`, so networkd applies them. The
/// manager has two NICs (`run-qemu --nics 2`: both on one QEMU hub with the user network, like
/// two ports of one switch), bonded active-backup as `bond0` with the static address, and VLAN
/// 42 on the bond with 192.168.42.10/24. Nothing answers on the VLAN under QEMU: its tagged
/// frames on the wire (`run-qemu --net-dump`) and its address on the status screen show it is
/// there. QEMU forwards the proxy's port to the static address (`run-qemu --guest-addr`); the
/// agent advertises it (`swarmseal.advertise-addr`). Then the active NIC's cable is pulled
/// (`run-qemu --set-link`: QEMU drops every frame to and from it) and the proxy must answer
/// again through the other one: the bond's failover, timed. Issue 20's status screen is on the
/// serial console here (`swarmseal.console-tty`), and networkd's log lines too (a drop-in by
/// credential), to show they name no error. A brand-new manager: the story's is shut down first.
fn static_address(s: &mut Story) -> Check {
    const ADDR: &str = "10.0.2.20";
    const VLAN_ADDR: &str = "192.168.42.10";
    if let Some(vm) = s.manager.as_mut() {
        vm.shutdown()?;
    }
    let mut vm = Vm::new(&s.suite, "static-net")?;
    let dump = vm.dir.join("net");
    let creds = [
        ("network.netdev.10-bond0", "[NetDev]\nName=bond0\nKind=bond\n\n[Bond]\nMode=active-backup\nMIIMonitorSec=100ms\n".to_string()),
        ("network.network.10-bond0-ports", "[Match]\nName=en*\n\n[Network]\nBond=bond0\n".into()),
        ("network.network.20-bond0", format!("[Match]\nName=bond0\n\n[Network]\nAddress={ADDR}/24\nGateway=10.0.2.2\nDNS=10.0.2.3\nVLAN=vlan42\n")),
        ("network.netdev.20-vlan42", "[NetDev]\nName=vlan42\nKind=vlan\n\n[VLAN]\nId=42\n".into()),
        ("network.network.30-vlan42", format!("[Match]\nName=vlan42\n\n[Network]\nAddress={VLAN_ADDR}/24\n")),
        // The test's eyes only: networkd logs to stderr, copied to the journal and the console.
        ("systemd.unit-dropin.systemd-networkd.service", "[Service]\nEnvironment=SYSTEMD_LOG_TARGET=console\nStandardError=journal+console\n".into()),
    ];
    let dump_dir = dump.display().to_string();
    vm.options = ["--nics", "2", "--net-dump", dump_dir.as_str(), "--guest-addr", ADDR, "--cred", "swarmseal.console-tty=/dev/ttyS0"].map(String::from).to_vec();
    for (name, body) in &creds {
        let file = vm.dir.join(name);
        std::fs::write(&file, body).map_err(|e| format!("{}: {e}", file.display()))?;
        vm.options.extend(["--cred-file".to_string(), format!("{name}={}", file.display())]);
    }
    let mut f = Findings::default();
    let st = vm.boot_expect(&format!("bond0 (2 NICs, active-backup) on {ADDR}, VLAN 42 on {VLAN_ADDR}, by credential"), Outcome::Unlocked, BOOT);
    f.check(st.is_ok(), || format!("no unlocked manager reached at {ADDR}: {}", st.as_ref().err().cloned().unwrap_or_default()));
    if let Ok(st) = &st {
        let addr = vm.docker(&["node", "inspect", "self", "--format", "{{.Status.Addr}} {{.ManagerStatus.Addr}}"]);
        println!("    node address, manager address: {}", addr.stdout.trim());
        f.check(addr.ok && addr.stdout.trim() == format!("{ADDR} {ADDR}:2377"), || format!("the swarm does not advertise {ADDR}: {addr}"));
        let screen = console_screen(&vm, st["image"]["version"].as_str().unwrap_or("?"), &[(ADDR, "bond0"), (VLAN_ADDR, "vlan42")]);
        f.check(screen.is_ok(), || format!("the console status screen on the serial console: {}", screen.err().unwrap_or_default()));
        let tagged = sent_frames(&dump).iter().flat_map(|(_, fr)| fr.iter().filter_map(|(_, fr)| swarmseal_qemu_tests::vlan_id(fr))).filter(|&v| v == 42).count();
        println!("    frames the guest sent tagged VLAN 42: {tagged}");
        f.check(tagged > 0, || "no frame tagged VLAN 42 left the guest: the VLAN is not there".into());
        // networkd's lines about the credentials' files and the links they make, before the cut
        // (whose own lines follow it): a file's problem is `/run/systemd/network/NAME:LINE: …`.
        let networkd = vm.console_lines(&["systemd-networkd["]);
        let ours = |l: &str| ["bond0", "vlan42", ": en", "/run/systemd/network/"].iter().any(|w| l.contains(w));
        for l in networkd.iter().filter(|l| ours(l)).take(16) {
            println!("    console: {}", l.trim());
        }
        let file_problem = |l: &str| l.split("/run/systemd/network/").skip(1).any(|rest| rest.split_once(':').is_some_and(|(_, at)| at.starts_with(|c: char| c.is_ascii_digit())));
        let problem = |l: &str| file_problem(l) || (ours(l) && ["rror", "ailed", "Could not", "nvalid", "gnoring", "nknown"].iter().any(|w| l.contains(w)));
        let errors: Vec<&String> = networkd.iter().filter(|l| problem(l)).collect();
        f.check(!networkd.is_empty(), || "no line of systemd-networkd on the console (the drop-in credential did not apply)".into());
        f.check(errors.is_empty(), || format!("systemd-networkd's lines name a problem with the credentials' files or links: {errors:?}"));
        let failover = bond_failover(&vm, &dump, VLAN_ADDR);
        f.check(failover.is_ok(), || format!("the bond's failover: {}", failover.err().unwrap_or_default()));
    }
    let failed = vm.console_lines(&["FAILED", "network"]);
    f.check(failed.is_empty(), || format!("a network unit failed: {failed:?}"));
    vm.shutdown()?;
    f.done()
}

/// Frames one NIC sent, each with its time (µs, QEMU's virtual clock).
type Frames = Vec<(u64, Vec<u8>)>;

/// The frames the guest sent on each NIC so far (`run-qemu --net-dump DIR`: DIR/nicI.pcap),
/// by NIC name.
fn sent_frames(dir: &std::path::Path) -> Vec<(String, Frames)> {
    (0..2)
        .map(|i| {
            let raw = std::fs::read(dir.join(format!("nic{i}.pcap"))).unwrap_or_default();
            let frames = swarmseal_qemu_tests::pcap_frames(&raw).unwrap_or_default();
            (format!("nic{i}"), frames.into_iter().map(|(t, fr)| (t, fr.to_vec())).collect())
        })
        .collect()
}

/// Pull the cable of the NIC the bond sends on (the one whose last frame is the newest, right
/// after a request through the proxy) and time until the proxy answers again: through the other
/// NIC, the only way left. On the wire (the NICs' dumps, one clock), the other NIC's first
/// frame must follow the cut NIC's last by under 5 s (the cut lies between: an upper bound of
/// the bond's failover; MIIMonitorSec=100ms); among the frames since, the bond's gratuitous ARP
/// for the VLAN's address, tagged (printed, not required).
fn bond_failover(vm: &Vm, dump: &std::path::Path, vlan_addr: &str) -> Check {
    let (code, _) = vm.api("GET", "/swarmseal/v1/status")?;
    ensure!(code == 200, "status before the cut: HTTP {code}");
    let before = sent_frames(dump);
    let last = |frames: &Frames| frames.last().map(|(t, _)| *t);
    let counts: Vec<String> = before.iter().map(|(n, fr)| format!("{n} {} frames", fr.len())).collect();
    let (active, sent) = before.iter().max_by_key(|(_, fr)| last(fr)).ok_or("no NIC dump")?;
    ensure!(!sent.is_empty(), "no NIC sent a frame (run-qemu --net-dump {}): cannot tell which one the bond uses", dump.display());
    let (other, other_before) = before.iter().find(|(n, _)| n != active).map(|(n, fr)| (n.clone(), fr.len())).ok_or("one NIC only")?;
    println!("    sent so far: {}; the bond sends on {active}", counts.join(", "));
    vm.set_link(active, false)?;
    let t = Instant::now();
    let mut tries = 0;
    let mut last_err = String::new();
    let answered = loop {
        tries += 1;
        // Long enough for QEMU's user network to resend a SYN lost to the pulled NIC (~3 s).
        match vm.api_within(15, "GET", "/swarmseal/v1/status") {
            Ok((200, _)) => break Some(t.elapsed()),
            Ok((c, b)) => last_err = format!("HTTP {c} {}", text(&b)),
            Err(e) => last_err = e,
        }
        if t.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let after = sent_frames(dump);
    let new: Vec<&(u64, Vec<u8>)> = after.iter().find(|(n, _)| *n == other).map(|(_, fr)| fr.iter().skip(other_before).collect()).unwrap_or_default();
    // A pulled NIC sends nothing more (QEMU drops its frames before the dump): its last frame is the last before the cut.
    let cut_last = after.iter().find(|(n, _)| n == active).and_then(|(_, fr)| last(fr));
    let wire = cut_last.zip(new.first().map(|(t, _)| *t)).map(|(a, b)| b.saturating_sub(a) as f64 / 1e6);
    let garp = new.iter().any(|(_, fr)| swarmseal_qemu_tests::vlan_id(fr) == Some(42) && swarmseal_qemu_tests::arp_sender(fr).is_some_and(|a| a.to_string() == vlan_addr));
    let lost = vm.console_lines(&["systemd-networkd[", "Lost carrier"]);
    println!("    {other} sent {} frames since the cut (a VLAN 42 ARP for {vlan_addr} among them: {garp}); console: {}", new.len(), lost.last().map(|l| l.trim()).unwrap_or("no networkd line on the lost carrier"));
    let took = answered.ok_or_else(|| format!("the proxy did not answer within 60 s of pulling {active}'s cable ({tries} tries): {last_err}"))?;
    println!("    failover: the proxy answered again {:.1} s after {active}'s cable was pulled ({tries} tries); on the wire, {other}'s first frame {} after {active}'s last", took.as_secs_f64(), wire.map(|w| format!("{w:.2} s")).unwrap_or("-".into()));
    ensure!(!new.is_empty(), "the proxy answered, but {other} sent nothing since the cut");
    ensure!(wire.is_some_and(|w| w < 5.0), "{other}'s first frame came {wire:?} s after {active}'s last: the bond did not fail over within 5 s");
    let ls = vm.docker(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]);
    ensure!(ls.ok, "docker node ls through {other}: {ls}");
    println!("    docker node ls through {other}: {}", ls.stdout);
    Ok(())
}

/// The status screen (docs/operating.md "Console") on the serial console: the image version,
/// the active leader, each (address, interface) of `addrs` on its last drawing, and the proxy
/// certificate's SHA-256 fingerprint as openssl prints it (what an operator compares on first
/// contact).
fn console_screen(vm: &Vm, version: &str, addrs: &[(&str, &str)]) -> Check {
    vm.wait_console(&["swarm      active, manager, leader"], Duration::from_secs(60))?;
    let pki = vm.dir.join("pki");
    let cert = [pki.join("pki/server-cert.pem"), pki.join("server-cert.pem")].into_iter().find(|p| p.exists()).ok_or("no server-cert.pem under the VM's pki/")?;
    let o = swarmseal_qemu_tests::run(std::process::Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(&cert))?;
    let fp = text(&o.stdout).trim().split_once('=').map(|(_, f)| f.to_string()).unwrap_or_default();
    ensure!(fp.len() == 95, "openssl's fingerprint of {}: {fp:?}", cert.display());
    let c = vm.console();
    let mut missing = Vec::new();
    for want in [format!("swarmseal manager  image swarmseal {version}"), "autolock   on".into(), format!("sha256     {}", &fp[..47]), format!("           {}", &fp[48..])] {
        if !c.lines().any(|l| l.starts_with(&want)) {
            missing.push(want);
        }
    }
    // The last drawing's address rows (the label's line and those continuing it), as one line.
    let lines: Vec<&str> = c.lines().collect();
    let shown = match lines.iter().rposition(|l| l.starts_with("addresses ")) {
        Some(i) => lines[i..].iter().take_while(|l| l.starts_with("addresses ") || l.starts_with("           ")).copied().collect::<Vec<_>>().join(" "),
        None => String::new(),
    };
    let shown = shown.trim_start_matches("addresses").split_whitespace().collect::<Vec<_>>().join(" ");
    for (a, i) in addrs {
        if !format!(" {shown} ").contains(&format!(" {a} ({i}) ")) {
            missing.push(format!("addresses … {a} ({i})"));
        }
    }
    ensure!(missing.is_empty(), "the screen lacks {missing:?}; console tail:\n{}", vm.console_tail(24));
    println!("    console screen: version {version}, addresses {shown}, leader, fingerprint {fp}");
    Ok(())
}

// ---------------------------------------------------------------- 12

/// The result of check `id` in a docker-bench-security JSON report: (result, details).
fn bench_result(report: &Value, id: &str) -> Option<(String, String)> {
    report["tests"].as_array()?.iter().flat_map(|t| t["results"].as_array().into_iter().flatten()).find(|r| r["id"] == id).map(|r| {
        (r["result"].as_str().unwrap_or_default().to_string(), r["details"].as_str().unwrap_or_default().to_string())
    })
}

/// This boot's bench report (it runs after the unlock decision; up to 240 s).
fn boot_bench(vm: &Vm, after: u64) -> Check<Value> {
    let t = Instant::now();
    let mut last = "not asked yet".to_string();
    while t.elapsed() < Duration::from_secs(240) {
        match vm.api("GET", "/swarmseal/v1/bench") {
            Ok((200, b)) => {
                let v: Value = serde_json::from_slice(&b).map_err(|e| format!("the bench report is not JSON: {e}"))?;
                if v["end"].as_u64().unwrap_or(0) >= after {
                    return Ok(v);
                }
                last = format!("the report is from before this boot (end {})", v["end"]);
            }
            Ok((c, b)) => last = format!("HTTP {c} {}", text(&b)),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    Err(format!("no bench report of this boot within 240 s: {last}"))
}

/// Issue 19, trusted time. The host runs an NTS server (`chronyd -x`: it never sets this
/// host's clock) with a certificate for 10.0.2.2 from a test CA; a new manager boots with its
/// RTC two days behind (`run-qemu --rtc-base`) and the credentials `swarmseal.ntp-servers`
/// (`nts 10.0.2.2:PORT`) and `swarmseal.ntp-ca` (the test CA). Its clock is stepped before the
/// agent starts (swarmseal-time-wait.service): the status shows it synchronised, |offset| < 1 s,
/// and A.7 passes. Then a boot whose `swarmseal.ntp-ca` is another CA: NTS-KE fails, the
/// manager still boots unlocked (its RTC right this time, QEMU's default), A.7 warns naming why and
/// the console says the clock is not synchronised.
fn trusted_time(s: &mut Story) -> Check {
    if let Some(vm) = s.manager.as_mut() {
        vm.shutdown()?;
    }
    let mut vm = Vm::new(&s.suite, "time")?;
    let srv = swarmseal_qemu_tests::ntp::NtsServer::start(&vm.dir.join("nts-server"))?;
    println!("    NTS server on the host: NTS-KE 127.0.0.1:{}, NTP :{} (chronyd -x), guest sees {}", srv.ke_port, srv.ntp_port, swarmseal_qemu_tests::ntp::HOST_FROM_GUEST);
    let servers = vm.dir.join("ntp-servers");
    std::fs::write(&servers, srv.credential()).map_err(|e| e.to_string())?;
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let two_days_ago = text(&run_out(std::process::Command::new("date").args(["-u", "-d", "-2 days", "+%Y-%m-%dT%H:%M:%S"]))?);
    let creds = |ca: &std::path::Path| vec!["--cred-file".to_string(), format!("swarmseal.ntp-servers={}", servers.display()), "--cred-file".into(), format!("swarmseal.ntp-ca={}", ca.display())];
    let mut f = Findings::default();

    vm.options = creds(&srv.ca());
    vm.options.extend(["--rtc-base".to_string(), two_days_ago.clone()]);
    let booted = unix(std::time::SystemTime::now());
    let st = vm.boot_expect(&format!("RTC at {two_days_ago} (2 days behind), NTS server by credential"), Outcome::Unlocked, FIRST_BOOT)?;
    let time = &st["time"];
    println!("    status time: {time}");
    f.check(time["synchronised"] == true, || format!("the clock is not synchronised when the agent reports ready: {time}"));
    let off = time["offset_seconds"].as_f64();
    f.check(off.is_some_and(|o| o.abs() < 1.0), || format!("offset {off:?} s: not under 1 s when the agent reports ready"));
    f.check(time["authenticated"] == true, || format!("the selected source is not authenticated: {time}"));
    if let Some(l) = vm.console_lines(&["swarmseal-time:", "synchronised in"]).first() {
        println!("    console: {}", l.trim());
    }
    match boot_bench(&vm, booted) {
        Ok(r) => {
            let a7 = bench_result(&r, "A.7");
            println!("    A.7: {a7:?}");
            f.check(a7.as_ref().is_some_and(|(res, _)| res == "PASS"), || format!("A.7 is not PASS with a reachable NTS server: {a7:?}"));
        }
        Err(e) => f.check(false, || e),
    }
    let (code, metrics) = vm.api("GET", "/swarmseal/v1/metrics")?;
    let m = text(&metrics);
    f.check(code == 200 && m.contains("swarmseal_time_synchronised 1"), || format!("metrics: HTTP {code}, no `swarmseal_time_synchronised 1`"));
    if let Some(l) = m.lines().find(|l| l.starts_with("swarmseal_time_offset_seconds")) {
        println!("    metrics: {l}");
    }
    vm.shutdown()?;

    // The NTS server's certificate is not from the CA the credential names now.
    let other = swarmseal_qemu_tests::ntp::make_ca(&vm.dir, "other-ca")?;
    vm.options = creds(&other);
    let booted = unix(std::time::SystemTime::now());
    let st = vm.boot_expect("the NTS server's CA replaced by another CA", Outcome::Unlocked, BOOT)?;
    let time = &st["time"];
    println!("    status time: {time}");
    f.check(time["synchronised"] == false, || format!("synchronised although the server's certificate is from an untrusted CA: {time}"));
    for l in vm.console_lines(&["swarmseal-time:"]).iter().rev().take(4).rev() {
        println!("    console: {}", l.trim());
    }
    f.check(!vm.console_lines(&["swarmseal-time:", "NOT synchronised"]).is_empty(), || "the console does not say the clock is not synchronised".into());
    match boot_bench(&vm, booted) {
        Ok(r) => {
            let a7 = bench_result(&r, "A.7");
            println!("    A.7: {a7:?}");
            f.check(
                a7.as_ref().is_some_and(|(res, d)| res == "WARN" && d.contains("Not synchronised") && d.contains("NTS source 10.0.2.2") && d.contains("key establishment")),
                || format!("A.7 does not WARN naming the failed NTS key establishment: {a7:?}"),
            );
        }
        Err(e) => f.check(false, || e),
    }
    vm.shutdown()?;
    drop(srv);
    f.done()
}

fn run_out(cmd: &mut std::process::Command) -> Check<Vec<u8>> {
    swarmseal_qemu_tests::run(cmd).map(|o| o.stdout)
}

// ---------------------------------------------------------------- fleet

/// Three managers of their own (the story's manager is shut down first: four TCG VMs on
/// two cores would thrash). See `swarmseal_qemu_tests::fleet`.
fn fleet(s: &mut Story) -> Check {
    if let Some(vm) = s.manager.as_mut() {
        vm.shutdown()?;
    }
    swarmseal_qemu_tests::fleet::rolling_update(&s.suite)
}

// ---------------------------------------------------------------- 8

/// The running image version and when the current seal was made (`image.version`,
/// `sealed.current.created` of the agent's status): an update must not replace the seal.
fn version_and_seal(st: &Value) -> (String, Value) {
    let doc = typed(st).ok();
    let version = doc.as_ref().and_then(|d| d.image.version.clone()).unwrap_or_else(|| "?".into());
    let created = match doc.and_then(|d| d.sealed.current) {
        Some(Slot::Sealed { created, .. }) => Value::String(created),
        _ => Value::Null,
    };
    (version, created)
}

/// Issue 7: a new image signed by the same fleet PCR key unseals the key sealed under the
/// old one (TPM2_PolicyAuthorize): the update needs no reseal and nobody at the console.
fn update_same_key(s: &mut Story) -> Check {
    let (release, version) = s.suite.release("SWARMSEAL_RELEASE_NEXT")?;
    let vm = s.manager()?;
    let mut f = Findings::default();
    let (old, created) = version_and_seal(&vm.status()?);
    ensure!(old != version, "the manager already runs {version}: the release must be newer than the image under test");
    let size = std::fs::metadata(&release).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let (code, body) = vm.api_post_file("/swarmseal/v1/update?reboot=1", &release)?;
    ensure!(code == 200, "POST /swarmseal/v1/update?reboot=1: HTTP {code} {}", text(&body));
    println!("    {old} → {version}: {} MB uploaded, verified, written to the inactive slot in {:.0} s: {}", size / 1_000_000, t.elapsed().as_secs_f64(), text(&body));
    vm.rebooting(&format!("update {old} → {version}"));
    let (outcome, st) = vm.wait_for_decision_on(Some(&version), BOOT)?;
    f.check(outcome == Outcome::Unlocked, || format!("after the update to {version} the swarm is {outcome:?}: {st}"));
    let (_, now_created) = version_and_seal(&st);
    f.check(now_created == created, || format!("the sealed key was replaced during the update (created {created} → {now_created}): the new image should unseal the old seal"));
    f.check(st.pointer("/sealed/current/policy").map(|p| p.to_string().contains("authorize")).unwrap_or(false), || format!("the seal is not a signed (PolicyAuthorize) policy: {}", st["sealed"]["current"]));
    let ls = vm.docker(&["node", "ls"]);
    f.check(ls.ok && ls.stdout.contains("Leader"), || format!("docker node ls after the update: {ls}"));
    // Boot assessment: boot-complete.target reached → systemd-bless-boot marks the new entry good.
    match vm.wait_console(&["Finished", "systemd-bless-boot"], Duration::from_secs(180)) {
        Ok(l) => println!("    console: {}", l.trim()),
        Err(e) => f.check(false, || format!("the new boot entry was not blessed (systemd-bless-boot): {e}")),
    }
    f.done()
}

// ---------------------------------------------------------------- 9

/// Issue 7: a release signed by another key is refused before anything is written; the
/// manager keeps running its image, unlocked.
fn update_other_key(s: &mut Story) -> Check {
    let (release, version) = s.suite.release("SWARMSEAL_RELEASE_OTHER_KEY")?;
    let vm = s.manager()?;
    let mut f = Findings::default();
    let before = vm.status()?;
    let (code, body) = vm.api_post_file("/swarmseal/v1/update?reboot=1", &release)?;
    println!("    release {version} signed by another key: HTTP {code} {}", text(&body));
    f.check(code == 422, || format!("expected 422 for a release signed by another key, got HTTP {code} {}", text(&body)));
    std::thread::sleep(Duration::from_secs(10));
    let after = vm.status()?;
    f.check(after.pointer("/image/version") == before.pointer("/image/version"), || format!("the image changed: {} → {}", before["image"], after["image"]));
    f.check(after.pointer("/swarm/state") == Some(&json!("active")), || format!("the swarm is not active any more: {}", after["swarm"]));
    f.check(vm.running(), || "the manager is not running any more".into());
    f.done()
}

// ---------------------------------------------------------------- 10

/// Issue 7, boot assessment: a release whose agent refuses its configuration (profile
/// test-bad-release) is installed and booted as `swarmseal_V+N-0.efi` (N: the running image's
/// `TriesLeft=`, 3 as shipped, 1 in the v2 test-fleet builds with profile test-one-try, told by
/// `SWARMSEAL_RELEASE_NEXT_TRIES`); each try fails
/// `swarmseal-boot-health.service` at once (`health --agent-unit`: the agent failed) and
/// reboots; with no tries left systemd-boot boots the previous version, which unseals the
/// seal it already had. Whatever the manager runs when this starts is "previous".
fn update_rolls_back(s: &mut Story) -> Check {
    let (release, version) = s.suite.release("SWARMSEAL_RELEASE_BAD")?;
    let vm = s.manager()?;
    let mut f = Findings::default();
    let (old, created) = version_and_seal(&vm.status()?);
    ensure!(old != version, "the manager already runs {version}");
    const FAILED: &str = "the agent is not running: swarmseal.service is failed";
    let failed_before = vm.console().matches(FAILED).count();
    let want: usize = std::env::var("SWARMSEAL_RELEASE_NEXT_TRIES").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let t = Instant::now();
    let (code, body) = vm.api_post_file("/swarmseal/v1/update?reboot=1", &release)?;
    ensure!(code == 200, "POST /swarmseal/v1/update?reboot=1: HTTP {code} {}", text(&body));
    println!("    {old} → {version} (fails its health gate): uploaded, verified, written in {:.0} s", t.elapsed().as_secs_f64());
    vm.rebooting(&format!("update {old} → {version}, {want} failed tries, back on {old}"));
    let first = vm.wait_console(&[FAILED], BOOT);
    f.check(first.is_ok(), || format!("the first try of {version} did not fail its health gate as expected: {}", first.as_ref().err().cloned().unwrap_or_default()));
    if let Ok(l) = &first {
        println!("    try 1 of {version} failed after {:.0} s: {}", t.elapsed().as_secs_f64(), l.trim());
    }
    let (outcome, st) = vm.wait_for_decision_on(Some(&old), (want as u32 + 1) * BOOT)?;
    let tries = vm.console().matches(FAILED).count() - failed_before;
    println!("    {tries} failed tries of {version} on the console; back on {} ({outcome:?})", st.pointer("/image/version").unwrap_or(&Value::Null));
    f.check(tries == want, || format!("expected {want} failed tries of {version} (swarmseal_{version}+{want}-0.efi), the console shows {tries}"));
    f.check(outcome == Outcome::Unlocked, || format!("back on {old}, the swarm is {outcome:?}: {st}"));
    let (_, now_created) = version_and_seal(&st);
    f.check(now_created == created, || format!("the sealed key was replaced (created {created} → {now_created}): the previous version should unseal its own seal"));
    let ls = vm.docker(&["node", "ls"]);
    f.check(ls.ok && ls.stdout.contains("Leader"), || format!("docker node ls after the rollback: {ls}"));
    f.done()
}

// ---------------------------------------------------------------- 13

/// Boot on with no console visit: `/var` must not ask for its passphrase within `BOOT`.
fn var_opened_without_console(vm: &mut Vm) -> Check<bool> {
    let t = Instant::now();
    loop {
        let c = vm.console();
        if c.contains("for disk var") && !c.contains("Mounted var.mount") {
            return Ok(false);
        }
        if c.contains("Mounted var.mount") || t.elapsed() > BOOT {
            return Ok(c.contains("Mounted var.mount"));
        }
        ensure!(vm.running(), "QEMU exited; console:\n{}", vm.console_tail(30));
        vm.retry_after_kernel_panic()?;
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn firmware_window(s: &mut Story) -> Check {
    let key = s.key.clone().ok_or("the operator never read the unlock key (scenario 1)")?;
    let var_key = s.var_key.clone().ok_or("no escrowed /var recovery key (scenario 1)")?;
    let vm = s.manager.as_mut().ok_or("no manager")?;
    if !vm.running() {
        vm.boot_expect("before the firmware window", Outcome::Unlocked, BOOT)?;
    }
    let mut f = Findings::default();
    // Bad requests first: nothing armed.
    let (bad, body) = vm.api_post("/swarmseal/v1/var/firmware-window?days=99", &var_key)?;
    f.check(bad == 400, || format!("?days=99 answered HTTP {bad} {}, not 400", text(&body)));
    let (bad, body) = vm.api_post("/swarmseal/v1/var/firmware-window", "not-a-recovery-key")?;
    f.check(bad == 400, || format!("a body that is no recovery key answered HTTP {bad} {}, not 400", text(&body)));
    // The operator arms the window before the dbx update.
    let (code, body) = vm.api_post("/swarmseal/v1/var/firmware-window?days=7", &var_key)?;
    ensure!(code == 200, "POST /swarmseal/v1/var/firmware-window?days=7: HTTP {code} {}", text(&body));
    println!("    armed: {}", text(&body).chars().take(300).collect::<String>());
    // The agent sealed a window copy of the swarm key: PCRs 2, 4, 12, 15 literal + 11 signed.
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.check(answer.get("key_sealed") == Some(&Value::Bool(true)), || format!("the arming answer does not say the window copy of the swarm key was sealed: {answer}"));
    let copy_pcrs = answer.pointer("/key_policy/pcrs").and_then(Value::as_object).map(|o| o.keys().cloned().collect::<Vec<_>>());
    f.check(copy_pcrs == Some(vec!["12".into(), "15".into(), "2".into(), "4".into()]) && answer.pointer("/key_policy/signed_pcrs") == Some(&serde_json::json!([11])), || format!("the window copy's policy is not PCRs 2, 4, 12, 15 + 11 signed: {}", answer["key_policy"]));
    let st = vm.status()?;
    let armed = st.pointer("/firmware_window/armed").cloned().unwrap_or(Value::Null);
    f.check(armed.get("expires_at").and_then(Value::as_u64).is_some() && armed.get("pcr7").is_some(), || format!("status does not show the armed window: {}", st.get("firmware_window").cloned().unwrap_or(Value::Null)));
    f.check(st.pointer("/firmware_window/key_sealed") == Some(&Value::Bool(true)), || format!("status does not show the window copy of the swarm key: {}", st.get("firmware_window").cloned().unwrap_or(Value::Null)));
    let pcr7_before = armed.get("pcr7").and_then(Value::as_str).unwrap_or_default().to_string();

    // The dbx update: the firmware measures another dbx into PCR 7 at the next boot.
    vm.shutdown()?;
    vm.add_dbx_entry("5f1e6cf5d3b0e63d8e3a5ff4c6b6a8a0f0b1c2d3e4f5061728394a5b6c7d8e9f")?;
    vm.power_on("after a dbx update, the window armed")?;
    let opened = var_opened_without_console(vm)?;
    f.check(opened, || format!("/var asked for its passphrase after the dbx update although the window was armed; console:\n{}", vm.console_lines(&["cryptsetup"]).join("\n")));
    if !opened {
        vm.power_cut()?;
        return f.done();
    }
    let said = vm.wait_console(&["firmware change accepted"], BOOT);
    f.check(said.is_ok(), || format!("the console does not say the firmware change was accepted: {:?}", vm.console_lines(&["firmware"])));
    if let Ok(l) = &said {
        println!("    console: {}", l.trim());
    }
    // Exactly one TPM2 slot left, bound to PCR 7 (+ PCR 11 signed): the window's slot is gone.
    let slots = vm.wait_console(&["/var's TPM2 slots now:"], BOOT);
    f.check(slots.as_ref().is_ok_and(|l| l.contains("PCRs 7 + signed 11") && !l.contains(';')), || format!("after the accepted change /var's TPM2 slots are not one PCR 7 slot: {slots:?}"));
    if let Ok(l) = &slots {
        println!("    console: {}", l.trim());
    }
    // The swarm's key follows the window: the agent unlocks with the window copy (this boot's
    // accepted decision), reseals the current slot to the new PCR 7 and deletes the copy.
    let back = vm.wait_console(&["the swarm came back unlocked after the accepted firmware change"], BOOT);
    f.check(back.is_ok(), || format!("the console does not say the swarm came back unlocked: {:?}", vm.console_lines(&["swarm"])));
    if let Ok(l) = &back {
        println!("    console: {}", l.trim());
    }
    let (outcome, st) = vm.wait_for_decision(BOOT)?;
    f.check(outcome == Outcome::Unlocked, || format!("after the dbx update the swarm is {outcome:?}, expected unlocked with the window copy of its key"));
    let last = st.pointer("/firmware_window/last").cloned().unwrap_or(Value::Null);
    f.check(last.get("outcome").and_then(Value::as_str) == Some("accepted") && last.get("changed").and_then(Value::as_str).is_some_and(|c| c.starts_with("dbx changed")), || format!("status firmware_window.last: {last}"));
    f.check(last.get("boot_id").and_then(Value::as_str).is_some_and(|b| !b.is_empty()), || format!("the accepted decision carries no boot ID: {last}"));
    f.check(st.pointer("/firmware_window/armed").is_some_and(Value::is_null), || format!("the window is still armed after it was used: {}", st.get("firmware_window").cloned().unwrap_or(Value::Null)));
    f.check(st.pointer("/firmware_window/key_sealed").is_none(), || format!("the window copy of the swarm key is still there after it was used: {}", st.get("firmware_window").cloned().unwrap_or(Value::Null)));
    let sealed7 = st.pointer("/sealed/current/policy/pcrs/7").and_then(Value::as_str).unwrap_or_default().to_string();
    let now7 = st.pointer("/tpm/pcrs/7").and_then(Value::as_str).unwrap_or_default().to_string();
    f.check(!now7.is_empty() && sealed7 == now7 && sealed7 != pcr7_before, || format!("the current slot is not sealed to the new PCR 7: sealed {sealed7:?}, PCR 7 now {now7:?}, armed at {pcr7_before:?}"));
    // `differs` is empty also without a sealed current slot: the slot must be there first.
    let current = typed(&st).map(|s| s.sealed.current);
    f.check(matches!(current, Ok(Some(Slot::Sealed { differs: Some(_), .. }))), || format!("after the window unlock status has no readable sealed.current: {}", st.get("sealed").cloned().unwrap_or(Value::Null)));
    f.check(differs(&st).is_empty(), || format!("after the window unlock the sealed key's PCRs differ: {:?}", differs(&st)));
    f.check(st.get("phase_locked") == Some(&Value::Bool(true)), || format!("after the window unlock this boot is not phase-locked: phase_locked {:?}", st.get("phase_locked")));
    f.check(!pcr7_before.is_empty(), || "no PCR 7 in the armed record".into());
    // The next boot needs nobody: /var bound to the new PCR 7, the key resealed to it.
    vm.shutdown()?;
    vm.power_on("after the dbx update, unlocked with the window copy")?;
    let opened = var_opened_without_console(vm)?;
    f.check(opened, || "the boot after the window asked for /var's passphrase: the re-bound slot does not open /var".into());
    if !opened {
        vm.power_cut()?;
        return f.done();
    }
    let (outcome, st) = vm.wait_for_decision(BOOT)?;
    f.check(outcome == Outcome::Unlocked, || format!("the boot after the window: the swarm is {outcome:?}; status {st}"));
    f.check(differs(&st).is_empty(), || format!("after the reseal the sealed key's PCRs differ: {:?}", differs(&st)));
    f.check(!vm.console().contains(&var_key), || "the /var recovery key appears on the serial console".into());
    f.check(!vm.console().contains(&key), || "the swarm unlock key appears on the serial console".into());
    f.done()
}

// ---------------------------------------------------------------- attestation (1, 3)

/// `swarmseal fleet attest` on this manager, as the operator runs it: a docker context made
/// by the real CLI from the admin bundle, the fleet's PCR-signing key and its Secure Boot
/// certificate (`SWARMSEAL_KEYS`, default keys/: what build-image signed and run-qemu enrolled),
/// the AK pinned in the VM's folder. (exit code, stdout then stderr.)
fn fleet_attest(suite: &Suite, vm: &Vm) -> Check<(Option<i32>, String)> {
    let bin = swarmseal_qemu_tests::fleet::swarmseal_bin(suite)?;
    let keys = std::env::var_os("SWARMSEAL_KEYS").map(PathBuf::from).unwrap_or_else(|| suite.repo.join("keys"));
    let config = vm.dir.join("attest-docker");
    let b = vm.bundle();
    let ep = format!("host=tcp://127.0.0.1:{},ca={},cert={},key={}", vm.port, b.join("ca.pem").display(), b.join("cert.pem").display(), b.join("key.pem").display());
    let docker = |args: &[&str]| Command::new("docker").env("DOCKER_CONFIG", &config).env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT").args(args).output();
    let _ = docker(&["context", "rm", "-f", &vm.name]);
    let o = docker(&["context", "create", &vm.name, "--docker", &ep]).map_err(|e| format!("docker context create: {e}"))?;
    ensure!(o.status.success(), "docker context create {}: {}", vm.name, text(&o.stderr));
    let o = Command::new(&bin)
        .env("DOCKER_CONFIG", &config)
        .args(["fleet", "attest", "--contexts", &vm.name, "--public-key"])
        .arg(keys.join("pcr-signing.pem"))
        .arg("--secure-boot-cert")
        .arg(keys.join("secure-boot.crt"))
        .arg("--pin-dir")
        .arg(vm.dir.join("ak-pins"))
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok((o.status.code(), format!("{}{}", text(&o.stdout), text(&o.stderr))))
}

/// The manager's `binary_bios_measurements` as `GET /swarmseal/v1/attest` returns it, written
/// to the suite's folder (`firmware-log.bin`) with the certificate the firmware trusts and the
/// PCR values quoted with it.
fn save_firmware_log(suite: &Suite, vm: &Vm) -> Check<PathBuf> {
    let (code, body) = vm.api("GET", &format!("/swarmseal/v1/attest?nonce={}", "5a".repeat(16)))?;
    ensure!(code == 200, "GET /swarmseal/v1/attest: HTTP {code} {}", text(&body));
    let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("GET /swarmseal/v1/attest: not JSON: {e}"))?;
    let b64 = answer.pointer("/firmware_log/base64").and_then(Value::as_str).ok_or_else(|| format!("no firmware log in the answer: {}", answer["firmware_log"]))?;
    let out = suite.work.join("firmware-log.bin");
    let mut child = Command::new("base64").args(["-d"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().map_err(|e| format!("base64: {e}"))?;
    std::io::Write::write_all(&mut child.stdin.take().ok_or("base64: no stdin")?, b64.as_bytes()).map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    ensure!(o.status.success() && !o.stdout.is_empty(), "base64 -d of the firmware log failed");
    std::fs::write(&out, &o.stdout).map_err(|e| format!("{}: {e}", out.display()))?;
    let keys = std::env::var_os("SWARMSEAL_KEYS").map(PathBuf::from).unwrap_or_else(|| suite.repo.join("keys"));
    let _ = std::fs::copy(keys.join("secure-boot.crt"), suite.work.join("firmware-log.secure-boot.crt"));
    // The PCRs the TPM quoted beside it: PCRs 0–7 must be the log's replay.
    std::fs::write(suite.work.join("firmware-log.pcrs.json"), answer["pcrs"].to_string()).map_err(|e| e.to_string())?;
    Ok(out)
}
