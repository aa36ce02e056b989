//! Signed PCR policies (`[tpm] policy = "authorize"`, issue 7) against a real swtpm: the key is
//! sealed to TPM2_PolicyAuthorize(fleet key) + TPM2_PolicyPCR(7, 15); PCR 11 is approved by a
//! signature in systemd's format, made here the way systemd-measure makes it (openssl over the
//! binary TPM2_PolicyPCR digest). A new image signed with the same key unseals without a reseal;
//! another key, a forged signature, a changed literal PCR or an unsigned PCR 11 is refused and
//! says why; no TPM handle is left behind on any path.
//!
//! swtpm, tpm2-tools, openssl and (for the CLI story) dockerd are required: missing is a failure.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;
use swarmseal::pcrsig::PcrSignatures;
use swarmseal::tpm::{authorize_policy_digest, pcr_policy_digest, PcrValues, Policy, SealedObject, Tpm, TpmError};

const SECRET: &[u8] = b"SWMKEY-1-7c37Cc8654o6p38HnroywCi19pllOnGtbdZEgtKxZu8";

/// What firmware (7), systemd-stub (11) and systemd (15) measure for an image.
fn measure(tpm: &Swtpm, image: &str) {
    tpm.extend(7, "secure boot policy");
    tpm.extend(11, &format!("uki {image}"));
    tpm.extend(15, "var volume key");
}

fn booted(image: &str) -> Swtpm {
    let tpm = Swtpm::start();
    measure(&tpm, image);
    tpm
}

fn assert_no_handles(tpm: &Swtpm) {
    assert_eq!(tpm.transient_handles(), 0, "a transient object was left loaded");
    let sessions = tpm.tpm2(&["getcap", "handles-loaded-session"]);
    assert!(!sessions.contains("0x"), "a session was left open: {sessions}");
}

fn pcr11(t: &mut Tpm) -> Vec<u8> {
    t.read_pcrs(&[11]).unwrap()[&11].clone()
}

/// Seal SECRET to the fleet key over PCR 11 plus the current literal PCRs 7 and 15,
/// after checking (as the agent does) that the signatures approve the current PCR 11.
fn seal_authorized(t: &mut Tpm, key: &FleetKey, sigs: &PcrSignatures) -> (SealedObject, Policy) {
    let signed: PcrValues = t.read_pcrs(&[11]).unwrap();
    t.verify_signed_policy(&key.public(), &signed, sigs).unwrap();
    let policy = Policy::Authorize { key: key.public(), signed_pcrs: vec![11], values: t.read_pcrs(&[7, 15]).unwrap() };
    let obj = t.seal(SECRET, &policy).unwrap();
    (obj, policy)
}

#[test]
fn seal_to_a_signed_policy_and_unseal() {
    let tpm = booted("v1");
    let key = FleetKey::rsa();
    let work = tempfile::tempdir().unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let file = signature_file(work.path(), "sig.json", vec![key.sign_pcr11(&pcr11(&mut t))]);
    let sigs = PcrSignatures::load(&file).unwrap();

    let (obj, policy) = seal_authorized(&mut t, &key, &sigs);
    assert_no_handles(&tpm);
    assert_eq!(obj.policy_digest, authorize_policy_digest(&key.public().name(), policy.literal_values()));
    assert_ne!(obj.policy_digest, pcr_policy_digest(&t.read_pcrs(&[7, 11, 15]).unwrap()));

    for _ in 0..5 {
        assert_eq!(t.unseal_signed(&obj, &policy, Some(&sigs)).unwrap().as_slice(), SECRET);
    }
    assert_no_handles(&tpm);

    // Without the signatures the object cannot be unsealed, and nothing is left loaded.
    assert!(matches!(t.unseal(&obj, &policy).unwrap_err(), TpmError::Command { .. }));
    assert_no_handles(&tpm);
}

#[test]
fn a_new_image_signed_with_the_same_key_unseals_without_a_reseal() {
    let mut tpm = booted("v1");
    let key = FleetKey::rsa();
    let work = tempfile::tempdir().unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let v1 = pcr11(&mut t);
    let v1_file = signature_file(work.path(), "v1.json", vec![key.sign_pcr11(&v1)]);
    let (obj, policy) = seal_authorized(&mut t, &key, &PcrSignatures::load(&v1_file).unwrap());
    drop(t);

    // Reboot into image v2: PCR 11 differs; v2 ships a signature by the same key.
    tpm.power_cycle();
    measure(&tpm, "v2");
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let v2 = pcr11(&mut t);
    assert_ne!(v1, v2);
    let v2_file = signature_file(work.path(), "v2.json", vec![key.sign_pcr11(&v1), key.sign_pcr11(&v2)]);
    let secret = t.unseal_signed(&obj, &policy, Some(&PcrSignatures::load(&v2_file).unwrap())).unwrap();
    assert_eq!(secret.as_slice(), SECRET);
    assert_no_handles(&tpm);

    // v2 booted with v1's signature file: refused, naming the PCR 11 value nobody signed.
    let err = t.unseal_signed(&obj, &policy, Some(&PcrSignatures::load(&v1_file).unwrap())).unwrap_err();
    match &err {
        TpmError::NotSigned { signed, by_key, file, .. } => {
            assert_eq!(signed.len(), 1);
            assert_eq!((signed[0].pcr, signed[0].value.as_str()), (11, hex::encode(&v2).as_str()));
            assert_eq!(*by_key, 1, "the key signed v1 only");
            assert_eq!(file, &v1_file.display().to_string());
        }
        other => panic!("expected NotSigned, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("PCR 11 = ") && msg.contains(&hex::encode(&v2)) && msg.contains("v1.json"), "{msg}");
    assert!(!msg.contains("SWMKEY"));
    assert_no_handles(&tpm);
}

#[test]
fn a_signature_by_another_key_or_a_forged_one_is_refused() {
    let tpm = booted("v1");
    let (fleet, other) = (FleetKey::rsa(), FleetKey::rsa());
    let work = tempfile::tempdir().unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let v1 = pcr11(&mut t);
    let good = PcrSignatures::load(&signature_file(work.path(), "good.json", vec![fleet.sign_pcr11(&v1)])).unwrap();
    let (obj, policy) = seal_authorized(&mut t, &fleet, &good);

    // Signed by another key: there is no entry for the fleet key.
    let theirs = signature_file(work.path(), "other.json", vec![other.sign_pcr11(&v1)]);
    let err = t.unseal_signed(&obj, &policy, Some(&PcrSignatures::load(&theirs).unwrap())).unwrap_err();
    assert!(matches!(&err, TpmError::NotSigned { by_key: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("another key"), "{err}");
    assert_no_handles(&tpm);

    // Forged: the other key's signature under the fleet key's fingerprint. The TPM says no.
    let mut forged = other.sign_pcr11(&v1);
    forged["pkfp"] = fleet.pkfp().into();
    let forged = signature_file(work.path(), "forged.json", vec![forged]);
    let err = t.unseal_signed(&obj, &policy, Some(&PcrSignatures::load(&forged).unwrap())).unwrap_err();
    assert!(matches!(&err, TpmError::BadSignature { .. }), "{err:?}");
    assert!(err.to_string().contains("forged") && err.to_string().contains(&hex::encode(&v1)), "{err}");
    assert_no_handles(&tpm);

    // Sealing to the other key's signatures is refused before anything is written.
    let signed = t.read_pcrs(&[11]).unwrap();
    let err = t.verify_signed_policy(&fleet.public(), &signed, &PcrSignatures::load(&forged).unwrap()).unwrap_err();
    assert!(matches!(err, TpmError::BadSignature { .. }), "{err:?}");
    assert_no_handles(&tpm);

    // The genuine signature still works afterwards.
    assert_eq!(t.unseal_signed(&obj, &policy, Some(&good)).unwrap().as_slice(), SECRET);
    assert_no_handles(&tpm);
}

#[test]
fn a_changed_literal_pcr_is_refused_and_named() {
    let mut tpm = booted("v1");
    let key = FleetKey::rsa();
    let work = tempfile::tempdir().unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let sigs = PcrSignatures::load(&signature_file(work.path(), "s.json", vec![key.sign_pcr11(&pcr11(&mut t))])).unwrap();
    let (obj, policy) = seal_authorized(&mut t, &key, &sigs);
    drop(t);

    // Same image (PCR 11 still signed), but Secure Boot policy changed (PCR 7).
    tpm.power_cycle();
    tpm.extend(7, "secure boot policy, new db");
    tpm.extend(11, "uki v1");
    tpm.extend(15, "var volume key");
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let now7 = t.read_pcrs(&[7]).unwrap()[&7].clone();
    match t.unseal_signed(&obj, &policy, Some(&sigs)).unwrap_err() {
        TpmError::PolicyMismatch { changed } => {
            assert_eq!(changed.len(), 1, "{changed:?}");
            assert_eq!(changed[0].pcr, 7);
            assert_eq!(changed[0].current, hex::encode(&now7));
        }
        other => panic!("expected PolicyMismatch, got {other:?}"),
    }
    assert_no_handles(&tpm);

    // And PCR 15 (a swapped /var) likewise.
    t.extend(15, b"forged var").unwrap();
    assert!(matches!(t.unseal_signed(&obj, &policy, Some(&sigs)).unwrap_err(), TpmError::PolicyMismatch { .. }));
    assert_no_handles(&tpm);
}

#[test]
fn no_signature_for_the_current_pcr11_refuses_the_seal() {
    let tpm = booted("v1");
    let key = FleetKey::rsa();
    let work = tempfile::tempdir().unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let file = signature_file(work.path(), "s.json", vec![key.sign_pcr11(&[0x11; 32])]);
    let signed = t.read_pcrs(&[11]).unwrap();
    let err = t.verify_signed_policy(&key.public(), &signed, &PcrSignatures::load(&file).unwrap()).unwrap_err();
    assert!(matches!(err, TpmError::NotSigned { by_key: 1, .. }), "{err:?}");
    assert!(err.to_string().contains(&hex::encode(&signed[&11])), "{err}");
    assert_no_handles(&tpm);
}

#[test]
fn the_phase_lock_also_closes_a_signed_policy() {
    let tpm = booted("v1");
    let key = FleetKey::rsa();
    let work = tempfile::tempdir().unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let sigs = PcrSignatures::load(&signature_file(work.path(), "s.json", vec![key.sign_pcr11(&pcr11(&mut t))])).unwrap();
    let (obj, policy) = seal_authorized(&mut t, &key, &sigs);
    t.extend(11, b"swarmseal:unlocked:v1").unwrap();
    assert!(matches!(t.unseal_signed(&obj, &policy, Some(&sigs)).unwrap_err(), TpmError::NotSigned { .. }));
    assert_no_handles(&tpm);
}

#[test]
fn an_ecc_p256_fleet_key_works_too() {
    let mut tpm = booted("v1");
    let key = FleetKey::ecc_p256();
    let work = tempfile::tempdir().unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let sigs = PcrSignatures::load(&signature_file(work.path(), "s.json", vec![key.sign_pcr11(&pcr11(&mut t))])).unwrap();
    let (obj, policy) = seal_authorized(&mut t, &key, &sigs);
    assert_eq!(t.unseal_signed(&obj, &policy, Some(&sigs)).unwrap().as_slice(), SECRET);
    drop(t);
    tpm.power_cycle();
    measure(&tpm, "v2");
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let v2 = PcrSignatures::load(&signature_file(work.path(), "v2.json", vec![key.sign_pcr11(&pcr11(&mut t))])).unwrap();
    assert_eq!(t.unseal_signed(&obj, &policy, Some(&v2)).unwrap().as_slice(), SECRET);
    assert_no_handles(&tpm);
}

/// The policy digest we compute equals the TPM's own trial-session computation with
/// tpm2-tools: TPM2_PolicyAuthorize(name of the loaded key) then TPM2_PolicyPCR(7, 15).
/// And the Name we compute for systemd's public-key template is the TPM's.
#[test]
fn policy_digest_matches_tpm2_policyauthorize_and_policypcr() {
    let tpm = booted("v1");
    let key = FleetKey::rsa();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(key.public_pem(), d.path().join("pub.pem")).unwrap();
    let tool = |args: &[&str]| {
        let out = support::cmd(args[0])
            .args(&args[1..])
            .current_dir(d.path())
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .output()
            .expect("tpm2-tools must be installed");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    tool(&["tpm2_loadexternal", "-C", "o", "-G", "rsa", "-u", "pub.pem", "-c", "key.ctx", "-n", "key.name"]);
    tool(&["tpm2_flushcontext", "-t"]);
    let their_name = std::fs::read(d.path().join("key.name")).unwrap();
    std::fs::write(d.path().join("approved.bin"), [0u8; 32]).unwrap();
    tool(&["tpm2_startauthsession", "-S", "s.ctx"]);
    tool(&["tpm2_policyauthorize", "-S", "s.ctx", "-i", "approved.bin", "-n", "key.name", "-L", "a.pol"]);
    tool(&["tpm2_policypcr", "-S", "s.ctx", "-l", "sha256:7,15", "-L", "full.pol"]);
    tool(&["tpm2_flushcontext", "s.ctx"]);
    assert_no_handles(&tpm);

    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let literal = t.read_pcrs(&[7, 15]).unwrap();
    assert_eq!(
        std::fs::read(d.path().join("a.pol")).unwrap(),
        authorize_policy_digest(&their_name, &PcrValues::new()),
        "PolicyAuthorize alone"
    );
    assert_eq!(std::fs::read(d.path().join("full.pol")).unwrap(), authorize_policy_digest(&their_name, &literal));

    // Our Name of systemd's template (65537 written as 0, decrypt|sign|userWithAuth) is the
    // one the TPM gives the key we load (checked inside verify_signed_policy); tpm2-tools'
    // own template may differ, which only matters for its own digests.
    let sigs = PcrSignatures::parse(
        serde_json::to_vec(&serde_json::json!({"sha256": [key.sign_pcr11(&pcr11(&mut t))]})).unwrap().as_slice(),
        "inline",
    )
    .unwrap();
    let signed = t.read_pcrs(&[11]).unwrap();
    t.verify_signed_policy(&key.public(), &signed, &sigs).unwrap();
    assert_no_handles(&tpm);
}

// ------------------------------------------------------------------ the operator's story (CLI)

/// A manager whose config says `policy = "authorize"`, with its engine, TPM, state dir and
/// the two files systemd-stub would put under /run/systemd.
struct Manager {
    d: Dockerd,
    tpm: Swtpm,
    state: tempfile::TempDir,
    run: tempfile::TempDir,
    config: PathBuf,
}

impl Manager {
    fn new(key: &FleetKey) -> Manager {
        let run = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::copy(key.public_pem(), run.path().join("tpm2-pcr-public-key.pem")).unwrap();
        let config = state.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[tpm]\npolicy = \"authorize\"\nsigned_pcrs = [11]\npcr_public_key = \"{}\"\npcr_signature = \"{}\"\n",
                run.path().join("tpm2-pcr-public-key.pem").display(),
                run.path().join("tpm2-pcr-signature.json").display()
            ),
        )
        .unwrap();
        let m = Manager { d: Dockerd::start(), tpm: Swtpm::start(), state, run, config };
        measure(&m.tpm, "v1");
        m
    }

    fn pcr11(&self) -> Vec<u8> {
        hex::decode(self.tpm.tpm2(&["pcrread", "sha256:11"]).split("0x").nth(1).unwrap().trim()).unwrap()
    }

    /// What systemd-stub copies from the booted UKI's .pcrsig.
    fn ship_signatures(&self, entries: Vec<serde_json::Value>) {
        signature_file(self.run.path(), "tpm2-pcr-signature.json", entries);
    }

    fn swarmseal(&self, args: &[&str]) -> std::process::Output {
        let (host, tcti) = (self.d.host(), self.tpm.tcti());
        let mut full = vec!["--config", path_str(&self.config), "--docker-host", &host, "--state-dir", path_str(self.state.path()), "--tcti", &tcti];
        full.extend_from_slice(args);
        let out = swarmseal(&full, &[], None);
        assert_eq!(self.tpm.transient_handles(), 0, "swarmseal {args:?} left transient TPM handles behind");
        out
    }

    fn reboot(&mut self, image: &str) {
        self.tpm.power_cycle();
        measure(&self.tpm, image);
        self.d.restart();
    }
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn story_signed_image_updates_unlock_without_reseal() {
    let key = FleetKey::rsa();
    let mut m = Manager::new(&key);
    let v1 = m.pcr11();

    // The booted image's signature file has no entry for its PCR 11: nothing is created.
    m.ship_signatures(vec![key.sign_pcr11(&[0x42; 32])]);
    let o = m.swarmseal(&["init", "--advertise-addr", &m.d.addr.clone()]);
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    let msg = text(&o);
    assert!(msg.contains("tpm2-pcr-signature.json") && msg.contains(&hex::encode(&v1)) && msg.contains("PCR 11"), "{msg}");
    assert!(msg.contains("tpm.policy = \"pcr\""), "says what to do: {msg}");
    assert_eq!(m.d.swarm_state(), "inactive", "refused before the swarm was created");

    // Signed properly: init seals to the signed policy.
    m.ship_signatures(vec![key.sign_pcr11(&v1)]);
    let o = m.swarmseal(&["init", "--advertise-addr", &m.d.addr.clone()]);
    assert!(o.status.success(), "{}", text(&o));
    let slot: serde_json::Value = serde_json::from_slice(&std::fs::read(m.state.path().join("keys/current.json")).unwrap()).unwrap();
    assert_eq!(slot["policy"]["kind"], "authorize");
    assert_eq!(slot["policy"]["signed_pcrs"], serde_json::json!([11]));
    assert_eq!(slot["policy"]["public_key_fingerprint"], key.pkfp());
    let literal: Vec<&String> = slot["policy"]["pcrs"].as_object().unwrap().keys().collect();
    assert_eq!(literal, ["15", "7"], "PCR 11 is signed, not literal");

    // Reboot into image v2, signed by the same key: unlocked without a reseal.
    m.reboot("v2");
    let v2 = m.pcr11();
    m.ship_signatures(vec![key.sign_pcr11(&v1), key.sign_pcr11(&v2)]);
    assert_eq!(m.d.swarm_state(), "locked");
    let o = m.swarmseal(&["unlock"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until("swarm active", Duration::from_secs(20), || m.d.swarm_state() == "active");
    let after = std::fs::read(m.state.path().join("keys/current.json")).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&after).unwrap()["created"], slot["created"], "no reseal happened");
    // status compares with this boot's pre-phase-lock values: nothing differs, PCR 11 is signed.
    let st: serde_json::Value = serde_json::from_slice(&m.swarmseal(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["sealed"]["current"]["differs"], serde_json::json!([]), "{st}");
    assert_eq!(st["phase_locked"], true);

    // Reboot into image v3 whose signature file was not signed for it: locked, exit 5, says
    // which PCR 11 value is unsigned.
    m.reboot("v3");
    let v3 = m.pcr11();
    m.ship_signatures(vec![key.sign_pcr11(&v2)]);
    let o = m.swarmseal(&["unlock"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains(&format!("PCR 11 = {}", hex::encode(&v3))), "{}", text(&o));
    assert_eq!(m.d.swarm_state(), "locked");
    let st: serde_json::Value = serde_json::from_slice(&m.swarmseal(&["status", "--json"]).stdout).unwrap();
    let differs = st["sealed"]["current"]["differs"].to_string();
    assert!(differs.contains("not signed") && differs.contains(&hex::encode(&v3)), "{st}");

    // Reboot v3 again, now with no signature file at all: locked, exit 5, names the file.
    m.reboot("v3");
    std::fs::remove_file(m.run.path().join("tpm2-pcr-signature.json")).unwrap();
    let o = m.swarmseal(&["unlock"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("tpm2-pcr-signature.json"), "{}", text(&o));
    assert!(!text(&o).contains("SWMKEY"));
}
