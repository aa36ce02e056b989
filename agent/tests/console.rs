//! The console status screen (docs/operating.md "Console"), against a real dockerd and a real
//! swtpm: the agent draws it on `[console] tty` (a file here, which it truncates like a terminal
//! shows only its last screen), with the version, the swarm's state, the proxy certificate's
//! fingerprint as openssl prints it; redraws it after a change and only then; a changed boot
//! chain shows LOCKED, the PCR that differs and the recovery through the proxy.
mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use swarmseal::console::{CLEAR, REFRESH};

fn screen(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn os_release(p: &Path, version: &str) {
    std::fs::write(p, format!("ID=debian\nIMAGE_ID=swarmseal\nIMAGE_VERSION={version}\n")).unwrap();
}

#[test]
fn the_screen_shows_the_manager_and_is_redrawn_when_it_changes() {
    let t0 = std::time::Instant::now();
    let mut d = Dockerd::start();
    let mut tpm = Swtpm::start();
    let boot = |tpm: &Swtpm, chain: &str| {
        tpm.extend(7, "secure-boot-state");
        tpm.extend(11, &format!("uki {chain}"));
        tpm.extend(15, "var-identity");
    };
    boot(&tpm, "image-v1");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let st = state.to_str().unwrap().to_string();
    let o = swarmseal(&["--state-dir", &st, "certs", "init"], &[], None);
    assert!(o.status.success(), "certs init: {}", String::from_utf8_lossy(&o.stderr));
    let tty = dir.path().join("tty1");
    std::fs::write(&tty, "").unwrap();
    let osr = dir.path().join("os-release");
    os_release(&osr, "7.7.7-console");
    let cfg = dir.path().join("agent.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n[bench]\nat_boot = false\n[console]\ntty = \"{}\"\n[update]\nos_release = \"{}\"\n", tty.display(), osr.display()),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let start = |d: &Dockerd, tpm: &Swtpm| {
        std::process::Command::new(swarmseal_bin())
            .args(["--config", cfg.to_str().unwrap(), "--docker-host", &d.host(), "--state-dir", &st, "--tcti", &tpm.tcti(), "agent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::options().create(true).append(true).open(&log).unwrap())
            .spawn()
            .map(AgentProcess)
            .unwrap()
    };
    let stop = |mut a: AgentProcess| {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(a.0.id().to_string()).status();
        let s = a.0.wait().unwrap();
        assert!(s.success(), "the agent exited with {s}; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    };

    // First boot: the agent inits the swarm; the screen shows it with the proxy's fingerprint.
    let a = start(&d, &tpm);
    wait_until("the screen shows an active, sealed manager", Duration::from_secs(90), || {
        let s = screen(&tty);
        s.contains("active, manager, leader") && s.contains("matches this boot") && s.contains("swarm initialized")
    });
    let s = screen(&tty);
    eprintln!("the active manager's screen:\n{}", s.trim_start_matches(CLEAR));
    assert!(s.starts_with(CLEAR), "clear + home before the text: {s:?}");
    assert!(s.contains("image swarmseal 7.7.7-console"), "{s}");
    assert!(s.contains("autolock   on"), "{s}");
    let o = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(state.join("pki/server-cert.pem"))
        .output()
        .expect("openssl must be installed");
    let fp = String::from_utf8_lossy(&o.stdout).trim().split_once('=').map(|(_, f)| f.to_string()).unwrap_or_default();
    assert_eq!(fp.len(), 95, "openssl's fingerprint: {:?} {}", o.stdout, String::from_utf8_lossy(&o.stderr));
    assert!(s.contains(&format!("sha256     {}", &fp[..47])) && s.contains(&fp[48..]), "the screen does not show openssl's fingerprint {fp}:\n{s}");

    // Nothing changed: the device is not written again.
    let written = std::fs::metadata(&tty).unwrap().modified().unwrap();
    std::thread::sleep(REFRESH * 2 + Duration::from_secs(1));
    assert_eq!(std::fs::metadata(&tty).unwrap().modified().unwrap(), written, "an unchanged screen was written again");

    // A rotation elsewhere: the agent reseals; the screen shows the new seal.
    let sealed = |s: &str| s.lines().find(|l| l.starts_with("seal ")).unwrap_or("").to_string();
    let before = sealed(&screen(&tty));
    d.docker_ok(&["swarm", "unlock-key", "--rotate"]);
    wait_until("the screen shows the reseal", Duration::from_secs(30), || {
        let now = sealed(&screen(&tty));
        !now.is_empty() && now != before && now.contains("matches this boot")
    });

    // A hostile version string: escaped, the only escape sequence is the screen's own clear.
    os_release(&osr, "8\x1b[31mred\x1b]0;title\x07");
    wait_until("the screen shows the new version", Duration::from_secs(15), || screen(&tty).contains("image swarmseal 8\\u{1b}[31mred\\u{1b}]0;title\\u{7}"));
    let s = screen(&tty);
    assert_eq!(s.matches('\x1b').count(), 2, "{s:?}");
    assert!(s.lines().all(|l| l.len() <= 80) && s.lines().count() <= 24, "{s}");
    stop(a);

    // A boot with another UKI: locked, the PCR that differs, how to recover.
    tpm.power_cycle();
    boot(&tpm, "image-v2");
    d.restart();
    let a = start(&d, &tpm);
    wait_until("the screen shows the locked manager", Duration::from_secs(60), || {
        let s = screen(&tty);
        s.contains("swarm      locked") && s.contains("boot       locked:") && s.contains("differs    PCR 11 sealed")
    });
    let s = screen(&tty);
    eprintln!("the locked manager's screen:\n{}", s.trim_start_matches(CLEAR));
    assert!(s.contains("does NOT match this boot") && s.contains("LOCKED") && s.contains("swarm unlock"), "{s}");
    stop(a);
    eprintln!("console test: {:.1} s", t0.elapsed().as_secs_f64());
}
