//! `swarmseal --context NAME …` from the operator's machine: a real dockerd with an autolocked
//! swarm, the real agent and its mutual-TLS proxy, real docker CLI contexts (`docker context
//! create`) for an admin and a readonly bundle. Every remote command, and the errors: a context
//! that does not exist, a manager that does not answer, a readonly certificate asking for an
//! admin action, a command with no remote form.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use support::update::{make_keys, make_release, serve_apply, Slots};
use support::*;

fn text(o: &Output) -> String {
    format!("exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn every_remote_command_through_a_docker_context_and_each_error_with_its_exit_code() {
    let d = Dockerd::start();
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let st = path_str(s);
    let host = d.host();
    let local = |args: &[&str]| -> Output {
        let mut all = vec!["--docker-host", host.as_str(), "--state-dir", st];
        all.extend_from_slice(args);
        swarmseal(&all, &[], None)
    };
    let o = local(&["certs", "init"]);
    assert!(o.status.success(), "{}", text(&o));
    for (name, role) in [("alice", "admin"), ("bob", "readonly")] {
        let o = local(&["certs", "issue", name, "--role", role, "--out", &format!("{st}/{name}")]);
        assert!(o.status.success(), "{}", text(&o));
    }
    // The escrow recipient, and the identity the operator keeps offline.
    let o = Command::new("age-keygen").arg("-o").arg(s.join("identity.txt")).output().expect("age-keygen (apt-get install age) must be installed");
    assert!(o.status.success(), "{}", text(&o));
    let recipient = String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("Public key: ").to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let port = free_port();
    let cfg = s.join("agent.toml");
    // Updates: the fleet's keys, image slots whose sysupdate and reboot are stand-ins, and the
    // socket-activated `swarmseal update apply` (support::update).
    let (keys, other_keys) = (s.join("keys"), s.join("other-keys"));
    make_keys(&keys);
    make_keys(&other_keys);
    let slots = Slots::new(s.join("slots"), "1.0.0");
    let socket = s.join("update.sock");
    // The image's SBOM (docs/sbom.md): status names its digest.
    let sbom = s.join("sbom.cdx.json");
    std::fs::write(&sbom, b"{\"bomFormat\": \"CycloneDX\"}\n").unwrap();
    let sbom_digest = format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&sbom).unwrap())));
    let update = format!(
        "[update]\npublic_key = \"{}\"\nsocket = \"{}\"\nsysupdate = \"{}\"\nsystemctl = \"{}\"\nos_release = \"{}\"\nsbom = \"{}\"\n",
        path_str(&keys.join("pcr-signing.pem")),
        path_str(&socket),
        path_str(&slots.dir.join("sysupdate")),
        path_str(&slots.dir.join("systemctl")),
        path_str(&slots.dir.join("os-release")),
        path_str(&sbom)
    );
    std::fs::write(&cfg, format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n[bench]\nat_boot = false\n[escrow]\nrecipient = \"{recipient}\"\n[swarm]\ninit = true\nadvertise_addr = \"{}\"\n{update}", d.addr)).unwrap();
    serve_apply(socket, vec!["--config".into(), path_str(&cfg).into(), "--state-dir".into(), st.into()]);
    let log = s.join("agent.log");
    let _agent = AgentProcess(
        cmd(swarmseal_bin())
            .args(["--config", path_str(&cfg), "--docker-host", &d.host(), "--state-dir", st, "--tcti", &tpm.tcti(), "agent"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("the agent inits the swarm and seals", Duration::from_secs(120), || d.swarm_state() == "active" && s.join("keys/current.json").exists());

    // Docker CLI contexts, as an operator makes them.
    let docker_config = tempfile::tempdir().unwrap();
    let docker = |args: &[&str]| -> Output { Command::new("docker").env("DOCKER_CONFIG", docker_config.path()).env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT").args(args).output().unwrap() };
    let dead = free_port();
    for (ctx, bundle, p) in [("adm", "alice", port), ("ro", "bob", port), ("gone", "alice", dead)] {
        let b = s.join(bundle);
        let ep = format!("host=tcp://127.0.0.1:{p},ca={},cert={},key={}", path_str(&b.join("ca.pem")), path_str(&b.join("cert.pem")), path_str(&b.join("key.pem")));
        let o = docker(&["context", "create", ctx, "--docker", &ep]);
        assert!(o.status.success(), "{}", text(&o));
    }
    wait_until("the proxy serves", Duration::from_secs(30), || docker(&["--context", "adm", "version"]).status.success());
    let remote = |ctx: &str, args: &[&str], stdin: Option<&str>| -> Output {
        let mut all = vec!["--context", ctx];
        all.extend_from_slice(args);
        swarmseal(&all, &[("DOCKER_CONFIG", path_str(docker_config.path()))], stdin)
    };

    // status: the manager's document, as JSON and as the table `status` prints on the manager.
    let o = remote("adm", &["status", "--json"], None);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["swarm"]["state"], "active", "{v}");
    assert_eq!(v["sealed_key_stale"], false, "{v}");
    assert_eq!(v["image"]["sbom_sha256"], sbom_digest.as_str(), "{v}");
    let o = remote("ro", &["status"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!(" sbom {sbom_digest}")), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("swarm      state active (manager true, autolock true)"), "{}", text(&o));

    // reseal: admin yes; readonly refused with the proxy's reason and exit 20.
    let o = remote("adm", &["reseal"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"sealed\":true"), "{}", text(&o));
    let o = remote("ro", &["reseal"], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 403"), "{}", text(&o));

    // escrow get: the age-encrypted copy, 0600, and it decrypts to the swarm's key.
    let out = s.join("fetched.age");
    let o = remote("adm", &["escrow", "get", "--out", path_str(&out)], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let plain = Command::new("age").arg("-d").arg("-i").arg(s.join("identity.txt")).arg(&out).output().unwrap();
    assert!(plain.status.success(), "{}", text(&plain));
    let engine_key = docker(&["--context", "adm", "swarm", "unlock-key", "-q"]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), String::from_utf8_lossy(&engine_key.stdout).trim());
    let o = remote("ro", &["escrow", "get", "--out", path_str(&s.join("ro.age"))], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    assert!(!s.join("ro.age").exists());
    // No /var recovery key off the appliance image: the manager's 404, named.
    let o = remote("adm", &["escrow", "get", "--var-recovery-key", "--out", path_str(&s.join("var.age"))], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 404"), "{}", text(&o));

    // bench: the manager's last report (none yet: refused, named; then one made on the manager).
    let o = remote("ro", &["bench"], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no bench report yet"), "{}", text(&o));
    let report = s.join("bench/latest.json");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    let o = local(&["bench", "--format", "json", "--output", path_str(&report)]);
    assert!(o.status.code() == Some(0), "{}", text(&o));
    let o = remote("ro", &["bench"], None);
    assert!(o.status.success(), "{}", text(&o));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(b["checks"].as_u64().unwrap() > 100, "{b}");

    // metrics: Prometheus text format 0.0.4 that the real promtool accepts, for admin, readonly
    // and monitor; the state gauges are right, and the counters move after a rotation.
    let o = local(&["certs", "issue", "carol", "--role", "monitor", "--out", &format!("{st}/carol")]);
    assert!(o.status.success(), "{}", text(&o));
    let scrape = |bundle: &str| -> String {
        let b = s.join(bundle);
        let o = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "20", "--cacert", path_str(&b.join("ca.pem")), "--cert", path_str(&b.join("cert.pem")), "--key", path_str(&b.join("key.pem"))])
            .arg(format!("https://127.0.0.1:{port}/swarmseal/v1/metrics"))
            .output()
            .unwrap();
        assert!(o.status.success(), "GET /swarmseal/v1/metrics as {bundle}: {}", text(&o));
        let body = String::from_utf8(o.stdout).unwrap();
        let mut lint = Command::new("promtool").args(["check", "metrics"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("promtool (scripts/install-deps installs it) must be installed");
        std::io::Write::write_all(&mut lint.stdin.take().unwrap(), body.as_bytes()).unwrap();
        let lint = lint.wait_with_output().unwrap();
        assert!(lint.status.success(), "promtool check metrics: {}\n{body}", text(&lint));
        body
    };
    let value = |body: &str, series: &str| -> Option<f64> { body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()) };
    let before = scrape("alice");
    assert_eq!(value(&before, "swarmseal_swarm_state{state=\"active\"}"), Some(1.0), "{before}");
    assert_eq!(value(&before, "swarmseal_swarm_state{state=\"locked\"}"), Some(0.0), "{before}");
    assert_eq!(value(&before, "swarmseal_key_sealed"), Some(1.0), "{before}");
    assert_eq!(value(&before, "swarmseal_phase_locked"), Some(1.0), "{before}");
    assert!(value(&before, "swarmseal_boot_decision_age_seconds").is_some_and(|a| a >= 0.0), "{before}");
    assert_eq!(value(&before, "swarmseal_bench_reported"), Some(1.0), "the report made above: {before}");
    assert!(value(&before, "swarmseal_bench_score").is_some(), "{before}");
    assert!(value(&before, "swarmseal_bench_warnings").is_some_and(|v| v >= 1.0), "{before}");
    assert!(value(&before, "swarmseal_proxy_requests_total{role=\"admin\",status=\"200\"}").is_some_and(|v| v >= 1.0), "{before}");
    assert!(value(&before, "swarmseal_proxy_requests_total{role=\"readonly\",status=\"403\"}").is_some_and(|v| v >= 1.0), "{before}");
    let seals = value(&before, "swarmseal_seals_total").unwrap_or(0.0);
    assert!(seals >= 2.0, "the init's seal and the reseal above: {before}");
    let o = docker(&["--context", "adm", "swarm", "unlock-key", "--rotate", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until("the metrics show the rotation resealed", Duration::from_secs(60), || value(&scrape("bob"), "swarmseal_seals_total").unwrap_or(0.0) > seals);
    let after = scrape("carol");
    let key_changes = |body: &str| -> f64 { body.lines().filter(|l| l.starts_with("swarmseal_key_changes_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum() };
    assert!(key_changes(&after) > key_changes(&before), "a rotation is a key change:\n{before}\n---\n{after}");

    // The errors: each a sentence and its exit code.
    let o = remote("nosuch", &["status"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("docker context nosuch"), "{}", text(&o));
    let o = remote("gone", &["status"], None);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not answer"), "{}", text(&o));
    let o = remote("adm", &["seal"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("with --context"), "{}", text(&o));
    let o = remote("adm", &["recover"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = remote("ro", &["recover", "--force-new-cluster"], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    // Without --context, the new commands say what they need.
    let o = swarmseal(&["reseal"], &[], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = swarmseal(&["update", "swarmseal_1.0.1.tar"], &[], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--context"), "{}", text(&o));

    // update: what the operator gives is checked before anything is sent (exit 2)…
    let rels = s.join("releases");
    let other = make_release(&s.join("other"), "1.0.1", &other_keys);
    let good = make_release(&rels, "1.0.1", &keys);
    std::fs::write(s.join("notes.txt"), "not a release").unwrap();
    for bad in [vec!["update"], vec!["update", "--version", "1.0 ; reboot"], vec!["update", path_str(&s.join("notes.txt"))], vec!["update", path_str(&rels.join("swarmseal_9.9.tar"))], vec!["update", path_str(&good), "--version", "1.0.1"]] {
        let o = remote("adm", &bad, None);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
    // … a readonly certificate may not, a release signed by another key is refused by the
    // manager before anything is written, a version with no [update] source is refused (20)…
    let o = remote("ro", &["update", path_str(&good)], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 403"), "{}", text(&o));
    let o = remote("adm", &["update", path_str(&other), "--reboot"], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 422"), "{}", text(&o));
    assert!(slots.log("sysupdate").is_empty(), "sysupdate ran for a release signed by another key: {}", slots.log("sysupdate"));
    let o = remote("adm", &["update", "--version", "1.0.2"], None);
    assert_eq!(o.status.code(), Some(20), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("source"), "{}", text(&o));
    assert!(!slots.take_reboot());
    // … and the fleet's release is uploaded, verified, installed into the other slot, rebooted.
    let o = remote("adm", &["update", path_str(&good), "--reboot"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(slots.log("sysupdate").contains("update 1.0.1"), "{}", slots.log("sysupdate"));
    wait_until("the apply service asks for the reboot", Duration::from_secs(30), || slots.take_reboot());
    assert_eq!(d.swarm_state(), "active");
}
