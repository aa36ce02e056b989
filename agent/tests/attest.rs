//! Remote attestation (issue 20) against real swtpms and real agent processes (`swarmseal
//! proxy`, which serves `GET /swarmseal/v1/attest`), through real docker CLI contexts, verified
//! by `swarmseal fleet attest` (the operator's side, no TPM). Each manager's "boot" extends its
//! swtpm the way systemd-stub and systemd would (PCR 11: the UKI's sections, PCR 15: a volume
//! key) and writes the matching `tpm2-measure.log` (JSON-SEQ); the agent's phase lock is the
//! extend of SHA-256(PHASE_MARKER) into PCR 11 (`swarmseal unlock` needs a swarm; `unlock.rs`
//! proves that the agent makes it). The fleet key signs PCR 11 of image v1 in systemd's format.
//!
//! A good manager passes (pinned on first contact, then matches pin); a manager that booted
//! another UKI fails "PCR 11 not signed by the fleet key"; a quote answered for another nonce
//! fails naming the nonce; another TPM under a pinned name fails naming the AK; a measure log
//! with a record removed fails naming the PCR; a boot without the phase marker fails naming it.
//! swtpm, tpm2-tools, openssl, docker CLI are required: missing is a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use support::*;
use swarmseal::attest::{extend, verify, Answer, Expect, Outcome};
use swarmseal::boot::PHASE_MARKER;
use swarmseal::pcrsig::PcrPublicKey;
use swarmseal::tpm::pcr_policy_digest;

fn text(o: &Output) -> String {
    format!("exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = cmd(args[0]).args(&args[1..]).current_dir(dir).output().unwrap_or_else(|e| panic!("{} must be installed: {e}", args[0]));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// What an image's boot measures: (PCR, what) in order; the measure log holds these records.
fn boot_events(image: &str) -> Vec<(u8, String)> {
    vec![(11, format!("{image} .linux")), (11, format!("{image} .initrd")), (15, "var volume key".into()), (11, "enter-initrd".into())]
}

/// PCR 11 after `events` (from zero): what the fleet key signs for the image.
fn pcr11_of(events: &[(u8, String)]) -> Vec<u8> {
    events.iter().filter(|(p, _)| *p == 11).fold(vec![0u8; 32], |v, (_, w)| extend(&v, &Sha256::digest(w.as_bytes())))
}

fn measure_log(events: &[(u8, String)]) -> Vec<u8> {
    let mut log = Vec::new();
    for (i, (pcr, what)) in events.iter().enumerate() {
        let rec = serde_json::json!({"recnum": i, "pcr": pcr, "digests": [{"hashAlg": "sha256", "digest": hex::encode(Sha256::digest(what.as_bytes()))}], "content_type": "systemd", "content": {"string": what}});
        log.push(0x1e);
        log.extend(serde_json::to_vec(&rec).unwrap());
        log.push(b'\n');
    }
    log
}

/// The fleet's PCR-signing key (openssl, as `ukify genkey`), signing the way systemd-measure does.
struct FleetKey {
    dir: tempfile::TempDir,
}

impl FleetKey {
    fn new() -> FleetKey {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"]);
        run(dir.path(), &["openssl", "pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        FleetKey { dir }
    }
    fn public_pem(&self) -> PathBuf {
        self.dir.path().join("pub.pem")
    }
    /// systemd's signature JSON with one entry: PCR 11 = `pcr11`.
    fn signature_file(&self, pcr11: &[u8]) -> Vec<u8> {
        let pol = pcr_policy_digest(&[(11u8, pcr11.to_vec())].into_iter().collect());
        let d = self.dir.path();
        std::fs::write(d.join("pol.bin"), &pol).unwrap();
        run(d, &["openssl", "dgst", "-sha256", "-sign", "key.pem", "-out", "sig.bin", "pol.bin"]);
        let sig = std::fs::read(d.join("sig.bin")).unwrap();
        let pkfp = hex::encode(PcrPublicKey::load(&self.public_pem()).unwrap().fingerprint());
        let entry = serde_json::json!({"pcrs": [11], "pkfp": pkfp, "pol": hex::encode(&pol), "sig": base64::engine::general_purpose::STANDARD.encode(sig)});
        serde_json::to_vec(&serde_json::json!({"sha256": [entry]})).unwrap()
    }
}

/// One manager: a swtpm that booted `image`, its agent's proxy, and a docker context `name`.
struct Manager {
    tpm: Swtpm,
    dir: tempfile::TempDir,
    port: u16,
    _agent: AgentProcess,
}

impl Manager {
    fn boot(name: &str, tpm: Swtpm, image: &str, phase_marker: bool, fleet: &FleetKey, docker_config: &Path) -> Manager {
        let events = boot_events(image);
        for (pcr, what) in &events {
            tpm.extend(*pcr, what);
        }
        if phase_marker {
            tpm.tpm2(&["pcrextend", &format!("11:sha256={}", hex::encode(Sha256::digest(PHASE_MARKER)))]);
        }
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let st = path_str(s);
        std::fs::write(s.join("tpm2-measure.log"), measure_log(&events)).unwrap();
        // The fleet signed image v1 only.
        std::fs::write(s.join("tpm2-pcr-signature.json"), fleet.signature_file(&pcr11_of(&boot_events("image-v1")))).unwrap();
        for args in [&["certs", "init"][..], &["certs", "issue", "ops", "--role", "readonly", "--out", &format!("{st}/ops")]] {
            let mut all = vec!["--state-dir", st];
            all.extend_from_slice(args);
            let o = swarmseal(&all, &[], None);
            assert!(o.status.success(), "{}", text(&o));
        }
        let port = free_port();
        let cfg = s.join("agent.toml");
        std::fs::write(s.join("os-release"), format!("ID=debian\nIMAGE_ID=swarmseal\nIMAGE_VERSION={image}\n")).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[update]\nos_release = \"{}\"\n[tpm]\npcr_signature = \"{}\"\n[attest]\nfirmware_log = \"{}\"\nmeasure_log = \"{}\"\n",
                path_str(&s.join("os-release")),
                path_str(&s.join("tpm2-pcr-signature.json")),
                path_str(&s.join("no-firmware-log")),
                path_str(&s.join("tpm2-measure.log"))
            ),
        )
        .unwrap();
        let agent = start_proxy(s, &cfg, &tpm);
        let b = s.join("ops");
        let ep = format!("host=tcp://127.0.0.1:{port},ca={},cert={},key={}", path_str(&b.join("ca.pem")), path_str(&b.join("cert.pem")), path_str(&b.join("key.pem")));
        let o = docker(docker_config, &["context", "create", name, "--docker", &ep]);
        assert!(o.status.success(), "{}", text(&o));
        wait_until("the proxy listens", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Manager { tpm, dir, port, _agent: agent }
    }

    /// `GET path` with the readonly certificate (curl): (HTTP status, body).
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.request(path, None)
    }

    /// `POST path` with `body` and the readonly certificate (curl): (HTTP status, body).
    fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.request(path, Some(body))
    }

    fn request(&self, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
        let b = self.dir.path().join("ops");
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "60", "-w", "\n%{http_code}", "--cacert", path_str(&b.join("ca.pem")), "--cert", path_str(&b.join("cert.pem")), "--key", path_str(&b.join("key.pem"))]);
        if let Some(body) = body {
            let file = self.dir.path().join("post-body");
            std::fs::write(&file, body).unwrap();
            c.args(["-X", "POST", "-H", "content-type: application/json", "--data-binary", &format!("@{}", path_str(&file))]);
        }
        let o = c.arg(format!("https://127.0.0.1:{}{path}", self.port)).output().expect("curl must be installed");
        assert!(o.status.success(), "curl {path}: {}", text(&o));
        let out = o.stdout;
        let cut = out.iter().rposition(|&c| c == b'\n').unwrap();
        (String::from_utf8_lossy(&out[cut + 1..]).parse().unwrap(), out[..cut].to_vec())
    }
}

/// `swarmseal proxy` with state dir `dir` and config `cfg` on `tpm`, no engine; its output in `dir/agent.log`.
fn start_proxy(dir: &Path, cfg: &Path, tpm: &Swtpm) -> AgentProcess {
    let st = path_str(dir);
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    AgentProcess(
        cmd(swarmseal_bin())
            .args(["--config", path_str(cfg), "--state-dir", st, "--docker-host", &format!("unix://{st}/no-docker.sock"), "--tcti", &tpm.tcti(), "proxy"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The row of `check` in the table of manager `ctx` of a `fleet attest` run.
fn row(o: &Output, ctx: &str, check: &str) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let table = out.lines().skip_while(|l| l.split(' ').next() != Some(ctx)).skip(1).take_while(|l| l.starts_with(' ')).find(|l| l.trim_start().starts_with(check));
    table.unwrap_or_else(|| panic!("no {check} row for {ctx}: {}", text(o))).to_string()
}

fn docker(config: &Path, args: &[&str]) -> Output {
    Command::new("docker").env("DOCKER_CONFIG", config).env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT").args(args).output().expect("the docker CLI must be installed")
}

#[test]
fn fleet_attest_passes_a_good_manager_and_names_each_failure() {
    let t0 = std::time::Instant::now();
    let fleet = FleetKey::new();
    let docker_config = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    let mut good = Manager::boot("good", Swtpm::start_with_ek_cert(), "image-v1", true, &fleet, docker_config.path());
    let other = Manager::boot("other-uki", Swtpm::start(), "image-v2", true, &fleet, docker_config.path());
    let unlocked_never = Manager::boot("no-marker", Swtpm::start(), "image-v1", false, &fleet, docker_config.path());
    let fleet_pem = fleet.public_pem();
    let attest = |contexts: &str, public_key: bool| -> Output {
        let mut args = vec!["fleet", "attest", "--allow-no-firmware-log", "--contexts", contexts, "--pin-dir", path_str(pins.path())];
        if public_key {
            args.extend(["--public-key", path_str(&fleet_pem)]);
        }
        swarmseal(&args, &[("DOCKER_CONFIG", path_str(docker_config.path()))], None)
    };

    // A good manager: every check passes (Secure Boot n/a: no firmware log here); the AK is
    // pinned on first contact, then matches its pin. The readonly role may attest.
    let o = attest("good", true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(row(&o, "good", "AK identity").contains("pinned on first contact"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("good image image-v1 (as the manager reports it)\n"), "{}", text(&o));
    assert!(row(&o, "good", "PCR 11 signed").contains("PASS"), "{}", text(&o));
    assert!(row(&o, "good", "phase marker").contains("exactly once"), "{}", text(&o));
    assert!(row(&o, "good", "Secure Boot").contains("n/a") && row(&o, "good", "Secure Boot").contains("no firmware event log"), "{}", text(&o));
    let o = attest("good", true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(row(&o, "good", "AK identity").contains("matches pin"), "{}", text(&o));
    // Every handle the quote used was flushed (no resource manager on swtpm).
    assert_eq!(good.tpm.transient_handles(), 0, "the AK was left loaded");
    // A --secure-boot-cert that is not a certificate: the operator's mistake (exit 2), said.
    let not_cert = pins.path().join("not-a-cert.pem");
    std::fs::write(&not_cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let o = swarmseal(&["fleet", "attest", "--contexts", "good", "--secure-boot-cert", path_str(&not_cert)], &[("DOCKER_CONFIG", path_str(docker_config.path()))], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--secure-boot-cert"), "{}", text(&o));
    // Without the fleet key PCR 11 cannot be judged: a failure, never a silent pass.
    let o = attest("good", false);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "good", "PCR 11 signed").contains("--public-key"), "{}", text(&o));

    // Another UKI (PCR 11 extended with another value before the marker): named.
    let o = attest("good,other-uki", true);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "other-uki", "PCR 11 signed").contains("PCR 11 not signed by the fleet key"), "{}", text(&o));
    assert!(row(&o, "good", "PCR 11 signed").contains("PASS"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("other-uki") && !String::from_utf8_lossy(&o.stderr).contains("good"), "{}", text(&o));
    // A manager that fails on first contact is not pinned (its AK is not trusted by a failed run).
    assert!(row(&o, "other-uki", "AK identity").contains("not pinned"), "{}", text(&o));
    assert!(!pins.path().join("other-uki").exists(), "a failed first contact wrote a pin");

    // No phase marker: the agent never unlocked in this boot.
    let o = attest("no-marker", true);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "no-marker", "phase marker").contains("no phase marker in PCR 11"), "{}", text(&o));

    // Another TPM answering under a pinned name: the AK differs from the pin, named.
    std::fs::copy(pins.path().join("good"), pins.path().join("other-uki")).unwrap();
    let o = attest("other-uki", true);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "other-uki", "AK identity").contains("FAIL") && row(&o, "other-uki", "AK identity").contains("not the AK pinned"), "{}", text(&o));

    // A measure log with one record removed (the PCR 15 one): replay fails naming PCR 15.
    let log = good.dir.path().join("tpm2-measure.log");
    let mut events = boot_events("image-v1");
    events.retain(|(p, _)| *p != 15);
    std::fs::write(&log, measure_log(&events)).unwrap();
    let o = attest("good", true);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "good", "event log replay").contains("PCR 15"), "{}", text(&o));
    // …and a removed PCR 11 record: PCR 11 does not replay (nor is its signed value known).
    let mut events = boot_events("image-v1");
    events.remove(1);
    std::fs::write(&log, measure_log(&events)).unwrap();
    let o = attest("good", true);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "good", "event log replay").contains("PCR 11"), "{}", text(&o));
    std::fs::write(&log, measure_log(&boot_events("image-v1"))).unwrap();

    // A replayed quote: the answer to one nonce, verified against this run's nonce.
    let (status, body) = good.get(&format!("/swarmseal/v1/attest?nonce={}", hex::encode([0x11u8; 32])));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Answer = serde_json::from_slice(&body).unwrap();
    let key = swarmseal_common::signing::SigningKey::load(&fleet.public_pem()).unwrap();
    let pin = pins.path().join("good");
    let expect = |nonce: &'static [u8]| Expect { nonce, fleet_key: None, pin: &pin, phase_pcr: 11, allow_no_firmware_log: true, secure_boot_cert: None, allow_any_secure_boot_keys: false, activation: None };
    let rows = verify(&answer, &Expect { fleet_key: Some(&key), ..expect(&[0x22u8; 32]) });
    let nonce = rows.iter().find(|r| r.name == "nonce").unwrap();
    assert!(matches!(&nonce.outcome, Outcome::Fail(t) if t.contains("nonce") && t.contains(&hex::encode([0x11u8; 32]))), "{rows:?}");
    let others_pass = rows.iter().filter(|r| r.name != "nonce" && r.name != "Secure Boot").all(|r| matches!(r.outcome, Outcome::Pass(_)));
    assert!(others_pass, "only the nonce differs: {rows:?}");
    // A quote that covers only the PCRs the manager chose (here PCR 11 alone, with a matching
    // digest): refused, whatever it covers, for not covering 0–7.
    let mut narrow = answer.clone();
    let mut a = base64::engine::general_purpose::STANDARD.decode(&narrow.attest).unwrap();
    let mut at = 6;
    for _ in 0..2 {
        at += 2 + usize::from(u16::from_be_bytes([a[at], a[at + 1]])); // qualifiedSigner, extraData
    }
    at += 17 + 8 + 4; // clockInfo, firmwareVersion, the selection count (1)
    assert_eq!(&a[at..at + 3], &[0x00, 0x0b, 3], "one sha256 selection of 3 bytes");
    a[at + 3..at + 6].copy_from_slice(&[0x00, 0x08, 0x00]);
    narrow.attest = base64::engine::general_purpose::STANDARD.encode(&a);
    narrow.pcrs.retain(|p, _| *p == 11);
    let rows = verify(&narrow, &Expect { fleet_key: Some(&key), ..expect(&[0x11u8; 32]) });
    let digest = rows.iter().find(|r| r.name == "PCR digest").unwrap();
    assert!(matches!(&digest.outcome, Outcome::Fail(t) if t.contains("does not cover PCRs [0, 1, 2, 3, 4, 5, 6, 7]")), "{rows:?}");
    // Without a firmware log and without --allow-no-firmware-log: Secure Boot is a failure.
    let rows = verify(&answer, &Expect { fleet_key: Some(&key), allow_no_firmware_log: false, ..expect(&[0x11u8; 32]) });
    let sb = rows.iter().find(|r| r.name == "Secure Boot").unwrap();
    assert!(matches!(&sb.outcome, Outcome::Fail(t) if t.contains("no firmware event log")), "{rows:?}");
    // --allow-no-firmware-log does not excuse a missing log when the fleet's keys were asked for.
    let cert = b"the fleet's db certificate";
    let rows = verify(&answer, &Expect { fleet_key: Some(&key), secure_boot_cert: Some(cert), ..expect(&[0x11u8; 32]) });
    let sb = rows.iter().find(|r| r.name == "Secure Boot").unwrap();
    assert!(matches!(&sb.outcome, Outcome::Fail(t) if t.contains("--secure-boot-cert")), "{rows:?}");
    // The EK certificate the maker provisioned (DER X.509: a SEQUENCE); a TPM without one says why.
    let ek = answer.ek_certificate.bytes().unwrap();
    assert_eq!((ek[0], answer.ek_certificate.absent.as_deref()), (0x30, None), "{:?}", answer.ek_certificate);
    let (status, body) = unlocked_never.get(&format!("/swarmseal/v1/attest?nonce={}", hex::encode([0x44u8; 16])));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let bare: Answer = serde_json::from_slice(&body).unwrap();
    assert!(bare.ek_certificate.base64.is_none() && bare.ek_certificate.absent.as_deref().unwrap_or_default().contains("0x01c00002"), "{:?}", bare.ek_certificate);

    // The endpoint answers at most 30 quotes a minute (each is a CreatePrimary and a quote on
    // the TPM): the 31st within the minute is 429, through the proxy's error table.
    let mut answered = 2; // the no-marker manager was asked twice above
    let status = loop {
        let (status, body) = unlocked_never.get(&format!("/swarmseal/v1/attest?nonce={}", hex::encode([0x55u8; 16])));
        if status != 200 || answered > 40 {
            assert!(String::from_utf8_lossy(&body).contains("in the last minute"), "{status} {}", String::from_utf8_lossy(&body));
            break status;
        }
        answered += 1;
    };
    // (30 in the last minute: the two earlier answers may have left the window meanwhile.)
    assert!(status == 429 && (30..=32).contains(&answered), "429 after 30 answers in a minute, got {status} after {answered}");

    // A bad or missing nonce is the client's error (400), said.
    for q in ["", "?nonce=abc", "?nonce=00", &format!("?nonce={}", "ab".repeat(65))] {
        let (status, body) = good.get(&format!("/swarmseal/v1/attest{q}"));
        assert_eq!(status, 400, "{q}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("16 to 64"), "{}", String::from_utf8_lossy(&body));
    }
    // The TPM stops answering: 503 with the reason, and `fleet attest` fails that manager.
    good.tpm.kill();
    let (status, body) = good.get(&format!("/swarmseal/v1/attest?nonce={}", hex::encode([0x33u8; 16])));
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("TPM"), "{}", String::from_utf8_lossy(&body));
    let o = attest("good", true);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "good", "answer").contains("HTTP 503"), "{}", text(&o));
    drop((good, other, unlocked_never));
    eprintln!("attestation test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// Transient objects a killed process left in a TPM without a resource manager (here two
/// primaries tpm2-tools made on swtpm and never flushed) are flushed when the agent starts,
/// and it says so.
#[test]
fn the_agent_flushes_transient_objects_left_in_the_tpm() {
    let t0 = std::time::Instant::now();
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    let st = path_str(s);
    tpm.tpm2(&["createprimary", "-C", "o", "-c", path_str(&s.join("o.ctx"))]);
    tpm.tpm2(&["createprimary", "-C", "e", "-c", path_str(&s.join("e.ctx"))]);
    assert_eq!(tpm.transient_handles(), 2, "tpm2-tools left its primaries loaded (no resource manager)");
    let o = swarmseal(&["--state-dir", st, "certs", "init"], &[], None);
    assert!(o.status.success(), "{}", text(&o));
    let port = free_port();
    let cfg = s.join("agent.toml");
    std::fs::write(&cfg, format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    let log = s.join("agent.log");
    let _agent = start_proxy(s, &cfg, &tpm);
    wait_until("the proxy listens", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert_eq!(tpm.transient_handles(), 0, "the leftovers are still loaded: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("flushed 2 transient TPM object(s)"), "{said}");
    eprintln!("flush test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// `fleet attest --ek-ca` (credential activation, issue 20): the EK certificates swtpm_setup
/// provisions are issued by swtpm-localca (`/var/lib/swtpm-localca`, made on its first use).
/// A manager whose EK certificate chains to the CA and whose TPM activates the credential
/// passes; another CA fails "does not chain"; a TPM without an EK certificate fails naming
/// it; a credential made for another TPM's EK, or for another AK Name, is refused by the TPM
/// (422); ours is accepted, and so is tpm2-tools' own TPM2_MakeCredential (`-T none`).
#[test]
fn fleet_attest_with_ek_ca_activates_a_credential_on_the_ek_certificates_tpm() {
    use swarmseal::attest::{check_ek_cert, make_credential, parse_ak_public, Activation};
    let t0 = std::time::Instant::now();
    let fleet = FleetKey::new();
    let docker_config = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    let mut a = Manager::boot("tpm-a", Swtpm::start_with_ek_cert(), "image-v1", true, &fleet, docker_config.path());
    let b = Manager::boot("tpm-b", Swtpm::start_with_ek_cert(), "image-v1", true, &fleet, docker_config.path());
    let bare = Manager::boot("no-ek-cert", Swtpm::start(), "image-v1", true, &fleet, docker_config.path());
    // The maker's CA: swtpm-localca's issuer and root (both trust anchors in one PEM file).
    let localca = Path::new("/var/lib/swtpm-localca");
    let ca = pins.path().join("ek-ca.pem");
    let pem: Vec<u8> = ["issuercert.pem", "swtpm-localca-rootca-cert.pem"].iter().flat_map(|f| std::fs::read(localca.join(f)).unwrap_or_else(|e| panic!("{f} of swtpm-localca: {e}"))).collect();
    std::fs::write(&ca, pem).unwrap();
    // Another maker's CA (openssl).
    run(pins.path(), &["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=another-maker", "-addext", "keyUsage=critical,keyCertSign", "-keyout", "other-key.pem", "-out", "other-ca.pem", "-days", "2"]);
    let other_ca = pins.path().join("other-ca.pem");
    let fleet_pem = fleet.public_pem();
    let attest = |contexts: &str, ek_ca: &Path| -> Output {
        let args = ["fleet", "attest", "--allow-no-firmware-log", "--contexts", contexts, "--pin-dir", path_str(pins.path()), "--public-key", path_str(&fleet_pem), "--ek-ca", path_str(ek_ca)];
        swarmseal(&args, &[("DOCKER_CONFIG", path_str(docker_config.path()))], None)
    };
    let row = |o: &Output, ctx: &str| row(o, ctx, "AK identity");

    // The EK certificate chains to the CA and the TPM activates the credential: PASS, and the
    // AK is pinned on first contact, then matches its pin.
    let o = attest("tpm-a", &ca);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = row(&o, "tpm-a");
    assert!(r.contains("PASS") && r.contains("credential activation: the AK is on the TPM whose EK certificate") && r.contains("chains to \"CN=swtpm-localca\"") && r.contains("pinned on first contact"), "{}", text(&o));
    let o = attest("tpm-a", &ca);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(row(&o, "tpm-a").contains("matches pin"), "{}", text(&o));
    assert_eq!(a.tpm.transient_handles(), 0, "the AK or the EK was left loaded");
    assert_eq!(a.tpm.tpm2(&["getcap", "handles-loaded-session"]).trim(), "", "the policy session was left loaded");
    // Another genuine TPM (its EK certificate chains to the same CA, it activates) answering
    // under a pinned name: activation passes, the pin does not.
    let o = attest("tpm-b", &ca);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::copy(pins.path().join("tpm-a"), pins.path().join("tpm-b")).unwrap();
    let o = attest("tpm-b", &ca);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "tpm-b").contains("FAIL") && row(&o, "tpm-b").contains("not the AK pinned for this manager"), "{}", text(&o));
    // Another maker's CA: the EK certificate does not chain to it.
    let o = attest("tpm-a", &other_ca);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "tpm-a").contains("FAIL") && row(&o, "tpm-a").contains("does not chain to a CA of --ek-ca"), "{}", text(&o));
    // A TPM without an EK certificate: named, not a silent TOFU pass.
    let o = attest("no-ek-cert", &ca);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "no-ek-cert").contains("no EK certificate on the manager"), "{}", text(&o));
    assert!(!pins.path().join("no-ek-cert").exists(), "a failed activation wrote a pin");
    // An --ek-ca file that holds no certificate: the operator's mistake (exit 2).
    let o = attest("tpm-a", &fleet_pem);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ek-ca"), "{}", text(&o));

    // A lying manager: TPM A answers with TPM B's EK certificate. The credential made for B's
    // EK (and A's AK) is refused by A's TPM, as is one for A's EK and B's AK.
    let answer = |m: &Manager| -> Answer {
        let (status, body) = m.get(&format!("/swarmseal/v1/attest?nonce={}", hex::encode([0x66u8; 32])));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    };
    let (ans_a, ans_b) = (answer(&a), answer(&b));
    let cas: Vec<Vec<u8>> = vec![pem_der(&localca.join("issuercert.pem"))];
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ek_a = check_ek_cert(&ans_a.ek_certificate.bytes().unwrap(), &cas, now).unwrap();
    let ek_b = check_ek_cert(&ans_b.ek_certificate.bytes().unwrap(), &cas, now).unwrap();
    // Before the certificate's notBefore (1970): not valid, said with its dates.
    let e = check_ek_cert(&ans_a.ek_certificate.bytes().unwrap(), &cas, 0).unwrap_err();
    assert!(e.contains("is not valid now: valid from"), "{e}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let ak_name = |ans: &Answer| parse_ak_public(&b64.decode(&ans.ak_public).unwrap()).unwrap().name;
    let (ak_a, ak_b) = (ak_name(&ans_a), ak_name(&ans_b));
    assert_ne!((&ek_a.key, &ak_a), (&ek_b.key, &ak_b), "two TPMs, two EKs and AKs");
    let post = |m: &Manager, blob: &[u8], secret: &[u8]| {
        m.post("/swarmseal/v1/attest/activate", serde_json::json!({"credential_blob": b64.encode(blob), "secret": b64.encode(secret)}).to_string().as_bytes())
    };
    let mut rng = rand_core::OsRng;
    for (what, key, name) in [("B's EK", &ek_b.key, &ak_a), ("B's AK", &ek_a.key, &ak_b)] {
        let cred = make_credential(key, name, &mut rng).unwrap();
        let (status, body) = post(&a, &cred.credential_blob, &cred.secret);
        assert_eq!(status, 422, "{what}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("credential activation refused"), "{what}: {}", String::from_utf8_lossy(&body));
    }
    // An altered blob (one bit of the HMAC): refused too.
    let cred = make_credential(&ek_a.key, &ak_a, &mut rng).unwrap();
    let mut altered = cred.credential_blob.clone();
    altered[5] ^= 1;
    let (status, body) = post(&a, &altered, &cred.secret);
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    // Ours, made for A's EK and A's AK: the TPM recovers the secret (TPM2_MakeCredential in
    // software agrees with the TPM's TPM2_ActivateCredential).
    let (status, body) = post(&a, &cred.credential_blob, &cred.secret);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let got: Activation = serde_json::from_slice(&body).unwrap();
    assert_eq!(b64.decode(got.cert_info).unwrap(), *cred.expected);
    // tpm2-tools' TPM2_MakeCredential (offline, -T none) for the same EK and Name: the same
    // structure sizes as ours, and the endpoint activates it.
    let d = pins.path();
    std::fs::write(d.join("ek-a.der"), ans_a.ek_certificate.bytes().unwrap()).unwrap();
    run(d, &["openssl", "x509", "-inform", "DER", "-in", "ek-a.der", "-pubkey", "-noout", "-out", "ek-a.pub.pem"]);
    std::fs::write(d.join("secret.bin"), [0x5au8; 32]).unwrap();
    run(d, &["tpm2_makecredential", "-T", "none", "-G", "rsa", "-u", "ek-a.pub.pem", "-s", "secret.bin", "-n", &hex::encode(&ak_a), "-o", "cred.out"]);
    let out = std::fs::read(d.join("cred.out")).unwrap();
    // tpm2-tools' file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    assert_eq!(&out[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1], "tpm2-tools credential file");
    let blob_len = 2 + usize::from(u16::from_be_bytes([out[8], out[9]]));
    let (blob, secret) = out[8..].split_at(blob_len);
    assert_eq!((blob.len(), secret.len()), (cred.credential_blob.len(), cred.secret.len()), "tpm2-tools' structures and ours differ in size");
    let (status, body) = post(&a, blob, secret);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let got: Activation = serde_json::from_slice(&body).unwrap();
    assert_eq!(b64.decode(got.cert_info).unwrap(), vec![0x5au8; 32]);

    // Bodies that are not an activation request: 400 (malformed) and 413 (too large).
    let (status, body) = a.post("/swarmseal/v1/attest/activate", b"{\"credential_blob\": 1}");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = a.post("/swarmseal/v1/attest/activate", &vec![b' '; 5000]);
    assert_eq!(status, 413);
    // A body the client cut short (Content-Length 100, 10 bytes, then it closes its side): 400
    // saying so, not 413 (it was not too large).
    let ops = a.dir.path().join("ops");
    let answer = post_cut_short(format!("127.0.0.1:{}", a.port).parse().unwrap(), client_config(&ops.join("ca.pem"), Some(&ops)), "/swarmseal/v1/attest/activate", "{\"credenti");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("malformed or was cut short"), "cut short: {answer}");
    // A TPM without an EK certificate: 409, said.
    let (status, body) = post(&bare, &cred.credential_blob, &cred.secret);
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no EK certificate"), "{}", String::from_utf8_lossy(&body));
    // A manager whose NV holds another TPM's EK certificate (A's, written into the bare TPM):
    // the certificate chains, but the EK this TPM derives is not its key — said, and FAIL.
    let der_a = ans_a.ek_certificate.bytes().unwrap();
    std::fs::write(d.join("ek-a.der"), &der_a).unwrap();
    bare.tpm.tpm2(&["nvdefine", "0x01c00002", "-C", "p", "-s", &der_a.len().to_string(), "-a", "ppwrite|ppread|ownerread|authread|no_da|platformcreate"]);
    bare.tpm.tpm2(&["nvwrite", "0x01c00002", "-C", "p", "-i", path_str(&d.join("ek-a.der"))]);
    let o = attest("no-ek-cert", &ca);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    assert!(row(&o, "no-ek-cert").contains("activation refused") && row(&o, "no-ek-cert").contains("is not the key of its EK certificate"), "{}", text(&o));
    assert_eq!(bare.tpm.transient_handles(), 0, "an EK mismatch left the AK or the EK loaded");
    assert_eq!(a.tpm.transient_handles(), 0, "a refused activation left the AK or the EK loaded");
    assert_eq!(a.tpm.tpm2(&["getcap", "handles-loaded-session"]).trim(), "", "a refused activation left its policy session loaded");
    // The TPM stops answering: 503.
    a.tpm.kill();
    let (status, body) = post(&a, &cred.credential_blob, &cred.secret);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    drop((a, b, bare));
    eprintln!("credential activation test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// A lying manager in front of a genuine one (a stub with the manager's server certificate,
/// answering as its agent would): it relays the quote of the real TPM, then answers
/// `POST attest/activate` 200 with a `cert_info` that is not the credential's secret — as a
/// machine would that made its AK in software and cannot activate. The AK identity row FAILs
/// and `fleet attest` exits 21. The same stub clearing the AK's `restricted` attribute: no
/// credential is made for it (no POST), the row says why.
#[test]
fn fleet_attest_with_ek_ca_fails_a_manager_that_lies_about_activation() {
    use http_body_util::{BodyExt as _, Full};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let t0 = std::time::Instant::now();
    let fleet = FleetKey::new();
    let docker_config = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    let real = Manager::boot("genuine", Swtpm::start_with_ek_cert(), "image-v1", true, &fleet, docker_config.path());
    let localca = Path::new("/var/lib/swtpm-localca");
    let ca = pins.path().join("ek-ca.pem");
    std::fs::write(&ca, std::fs::read(localca.join("issuercert.pem")).unwrap()).unwrap();

    // The stub: TLS with the manager's own server certificate (the context's CA trusts it).
    let pki = real.dir.path().join("pki");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.join("server-cert.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.join("server-key.pem")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let clear_restricted = Arc::new(AtomicBool::new(false));
    let ops = real.dir.path().join("ops");
    let real_port = real.port;
    let (seen2, clear2) = (seen.clone(), clear_restricted.clone());
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, seen, clear, ops) = (acceptor.clone(), seen2.clone(), clear2.clone(), ops.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, clear, ops) = (seen.clone(), clear.clone(), ops.clone());
                    async move {
                        let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                        seen.lock().unwrap().push(format!("{} {}", req.method(), req.uri().path()));
                        let _ = req.into_body().collect().await;
                        let body = if target.starts_with("/swarmseal/v1/attest?") {
                            // The genuine TPM's quote, relayed (curl, as the readonly client).
                            let o = Command::new("curl")
                                .args(["-sS", "--max-time", "60", "--fail", "--cacert", path_str(&ops.join("ca.pem")), "--cert", path_str(&ops.join("cert.pem")), "--key", path_str(&ops.join("key.pem"))])
                                .arg(format!("https://127.0.0.1:{real_port}{target}"))
                                .output()
                                .unwrap();
                            assert!(o.status.success(), "relay: {}", text(&o));
                            let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                            if clear.load(Ordering::SeqCst) {
                                // TPM2B_PUBLIC: size, type, nameAlg, objectAttributes (bit 16: restricted).
                                let b64 = base64::engine::general_purpose::STANDARD;
                                let mut ak = b64.decode(v["ak_public"].as_str().unwrap()).unwrap();
                                assert_eq!(ak[7] & 1, 1, "the genuine AK is restricted");
                                ak[7] &= !1;
                                v["ak_public"] = b64.encode(ak).into();
                            }
                            v.to_string()
                        } else {
                            // "Activated": 32 bytes, not the credential's secret.
                            serde_json::json!({"cert_info": base64::engine::general_purpose::STANDARD.encode([0x42u8; 32])}).to_string()
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::builder().status(200).header("content-type", "application/json").body(Full::new(bytes::Bytes::from(body))).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
            });
        }
    });
    let ep = format!("host=tcp://127.0.0.1:{port},ca={},cert={},key={}", path_str(&real.dir.path().join("ops/ca.pem")), path_str(&real.dir.path().join("ops/cert.pem")), path_str(&real.dir.path().join("ops/key.pem")));
    let o = docker(docker_config.path(), &["context", "create", "liar", "--docker", &ep]);
    assert!(o.status.success(), "{}", text(&o));
    let fleet_pem = fleet.public_pem();
    let attest = |context: &str| -> Output {
        let args = ["fleet", "attest", "--allow-no-firmware-log", "--contexts", context, "--pin-dir", path_str(pins.path()), "--public-key", path_str(&fleet_pem), "--ek-ca", path_str(&ca)];
        swarmseal(&args, &[("DOCKER_CONFIG", path_str(docker_config.path()))], None)
    };
    // The genuine manager passes directly (the stub's relayed quote is a good one).
    let o = attest("genuine");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Through the liar: the quote rows pass, the activation answer is wrong: FAIL, exit 21.
    let o = attest("liar");
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    let r = row(&o, "liar", "AK identity");
    assert!(r.contains("FAIL") && r.contains("the manager answered a secret that is not the credential's"), "{}", text(&o));
    assert!(row(&o, "liar", "PCR 11 signed").contains("PASS"), "the relayed quote is genuine, only the activation lies: {}", text(&o));
    assert_eq!(*seen.lock().unwrap(), ["GET /swarmseal/v1/attest", "POST /swarmseal/v1/attest/activate"]);
    // An AK without `restricted`: refused before any credential is made.
    seen.lock().unwrap().clear();
    clear_restricted.store(true, Ordering::SeqCst);
    let o = attest("liar");
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    let r = row(&o, "liar", "AK identity");
    assert!(r.contains("FAIL") && r.contains("the AK is not a restricted, fixedTPM signing key (objectAttributes restricted|sign|fixedTPM): no credential is made for it"), "{}", text(&o));
    assert_eq!(*seen.lock().unwrap(), ["GET /swarmseal/v1/attest"], "a credential was sent for an unrestricted AK");
    drop(rt);
    drop(real);
    eprintln!("lying manager test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// `--ek-ca` with an ECC NIST P-256 EK: swtpm_setup provisions no P-256 EK certificate (its
/// ECC one is P-384 at 0x01c00016), so the test makes one as a maker would: the RSA
/// certificate is removed (platform auth), the EK of the TCG template L-2 is created
/// (tpm2_createek -G ecc), a test CA (openssl, ECDSA) certifies its key, and the certificate
/// is written to NV 0x01c0000a. The agent activates with the ECC EK; the verifier's
/// MakeCredential shares the seed by ECDH (KDFe); the TPM accepts it.
#[test]
fn fleet_attest_with_ek_ca_activates_with_an_ecc_p256_ek() {
    let t0 = std::time::Instant::now();
    let fleet = FleetKey::new();
    let docker_config = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    let d = pins.path();
    let tpm = Swtpm::start_with_ek_cert();
    run(d, &["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=test-ecc-ek-ca", "-addext", "keyUsage=critical,keyCertSign", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
    tpm.tpm2(&["nvundefine", "-C", "p", "0x01c00002"]);
    tpm.tpm2(&["createek", "-G", "ecc", "-c", path_str(&d.join("ek.ctx")), "-u", path_str(&d.join("ek.pem")), "-f", "pem"]);
    tpm.tpm2(&["flushcontext", "-t"]);
    // An EK certificate as the TCG EK Credential Profile 2.0 (3.2) has it, as swtpm-localca
    // writes them: not a CA, keyAgreement (ECC), the EK usage, the TPM attributes in the SAN
    // (openssl's `N.` prefix lets a section repeat a field; it is not part of the OID).
    let ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyAgreement\nextendedKeyUsage=2.23.133.8.1\nsubjectAltName=critical,dirName:tpm\n[tpm]\n1.2.23.133.2.1=id:00001014\n2.2.23.133.2.2=swtpm\n3.2.23.133.2.3=id:20191023\n";
    std::fs::write(d.join("ek.ext"), ext).unwrap();
    let ek_cert = |sig: &str, out: &str| run(d, &["openssl", "x509", "-new", sig, "-subj", "/CN=ecc-ek", "-force_pubkey", "ek.pem", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2", "-extfile", "ek.ext", "-outform", "DER", "-out", out]);
    ek_cert("-sha256", "ek.der");
    // The same certificate signed over SHA-1: refused, said.
    ek_cert("-sha1", "ek-sha1.der");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let e = swarmseal::attest::check_ek_cert(&std::fs::read(d.join("ek-sha1.der")).unwrap(), &[pem_der(&d.join("ca.pem"))], now).unwrap_err();
    assert!(e.contains("is not an EK certificate: it is signed with SHA-1 (1.2.840.10045.4.1)"), "{e}");
    let size = std::fs::metadata(d.join("ek.der")).unwrap().len().to_string();
    tpm.tpm2(&["nvdefine", "0x01c0000a", "-C", "p", "-s", &size, "-a", "ppwrite|ppread|ownerread|authread|no_da|platformcreate"]);
    tpm.tpm2(&["nvwrite", "0x01c0000a", "-C", "p", "-i", path_str(&d.join("ek.der"))]);
    let m = Manager::boot("ecc", tpm, "image-v1", true, &fleet, docker_config.path());
    let (fleet_pem, ca) = (fleet.public_pem(), d.join("ca.pem"));
    let args = ["fleet", "attest", "--allow-no-firmware-log", "--contexts", "ecc", "--pin-dir", path_str(d), "--public-key", path_str(&fleet_pem), "--ek-ca", path_str(&ca)];
    let o = swarmseal(&args, &[("DOCKER_CONFIG", path_str(docker_config.path()))], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = row(&o, "ecc", "AK identity");
    assert!(r.contains("PASS") && r.contains("credential activation") && r.contains("subject \"CN=ecc-ek\"") && r.contains("chains to \"CN=test-ecc-ek-ca\""), "{}", text(&o));
    assert_eq!(m.tpm.transient_handles(), 0, "the AK or the EK was left loaded");
    drop(m);
    eprintln!("ECC credential activation test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// The DER of a PEM certificate file.
fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_vec()
}
