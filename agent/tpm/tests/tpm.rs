//! The `tpm` module against a real software TPM (swtpm): seal, unseal, reboot, changed
//! measurements, another machine, persistent SRK, and no leaked handles on any path.
//!
//! swtpm and tpm2-tools are required: a missing tool fails the test.

use std::sync::Mutex;

use swarmseal_testkit::*;
use swarmseal_tpm::tpm::{pcr_policy_digest, PcrValues, Policy, SealedObject, Tpm, TpmError};

const PCRS: [u8; 3] = [7, 11, 15];
const SECRET: &[u8] = b"SWMKEY-1-7c37Cc8654o6p38HnroywCi19pllOnGtbdZEgtKxZu8";

/// A TPM with simulated boot measurements in PCRs 7, 11 and 15.
fn booted() -> Swtpm {
    let tpm = Swtpm::start();
    measure_boot(&tpm);
    tpm
}

fn measure_boot(tpm: &Swtpm) {
    tpm.extend(7, "secure boot policy");
    tpm.extend(11, "uki v1");
    tpm.extend(15, "var volume key");
}

/// No transient object and no session left in the TPM (a leak would fill it:
/// TPM_RC_OBJECT_MEMORY / TPM_RC_SESSION_MEMORY without a resource manager).
fn assert_no_handles(tpm: &Swtpm) {
    assert_eq!(tpm.transient_handles(), 0, "a transient object was left loaded");
    let sessions = tpm.tpm2(&["getcap", "handles-loaded-session"]);
    assert!(!sessions.contains("0x"), "a session was left open: {sessions}");
}

fn open(tpm: &Swtpm) -> Tpm {
    Tpm::open(&tpm.tcti()).expect("open swtpm")
}

/// Seal SECRET to the current values of PCRS.
fn seal_current(t: &mut Tpm) -> (SealedObject, Policy) {
    let values = t.read_pcrs(&PCRS).unwrap();
    let policy = Policy::Pcr { values };
    let obj = t.seal(SECRET, &policy).unwrap();
    (obj, policy)
}

/// SHA-256(SHA-256 old || SHA-256(text)) as tpm2_pcrextend does it, for predicting values.
fn extended(old: &[u8], text: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(old);
    h.update(Sha256::digest(text.as_bytes()));
    h.finalize().to_vec()
}

fn tool(args: &[&str], tpm: &Swtpm, dir: &std::path::Path) -> String {
    let out = cmd(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap_or_else(|e| panic!("{} must be installed (tpm2-tools): {e}", args[0]));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn seal_then_unseal_round_trip_without_leaking_handles() {
    let tpm = booted();
    let mut t = open(&tpm);
    let (obj, policy) = seal_current(&mut t);
    assert_no_handles(&tpm);
    assert_eq!(
        obj.policy_digest,
        pcr_policy_digest(policy.literal_values())
    );
    // No secret in what goes to disk or in Debug.
    let dbg = format!("{obj:?}");
    assert!(!dbg.contains("SWMKEY"), "secret in Debug: {dbg}");
    assert!(obj.public.windows(SECRET.len()).all(|w| w != SECRET));
    assert!(obj.private.windows(SECRET.len()).all(|w| w != SECRET));

    let secret = t.unseal(&obj, &policy).unwrap();
    assert_eq!(secret.as_slice(), SECRET);
    assert_no_handles(&tpm);

    // Many operations in a row: a leak would fill the TPM (TPM_RC_OBJECT_MEMORY).
    for _ in 0..10 {
        assert_eq!(t.unseal(&obj, &policy).unwrap().as_slice(), SECRET);
    }
    assert_no_handles(&tpm);
}

#[test]
fn object_carries_the_policy_digest_and_attributes_we_computed() {
    let tpm = booted();
    let mut t = open(&tpm);
    let (obj, policy) = seal_current(&mut t);
    let values = policy.literal_values();

    // What the TPM put in the object's public area, read back by tpm2-tools.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pub.bin"), &obj.public).unwrap();
    let printed = tool(&["tpm2_print", "-t", "TPM2B_PUBLIC", "pub.bin"], &tpm, dir.path());
    let expected = hex::encode(pcr_policy_digest(values));
    assert!(printed.contains(&expected), "authorization policy is not {expected}:\n{printed}");
    assert!(printed.contains("keyedhash"), "{printed}");
    let attrs = printed.lines().skip_while(|l| !l.starts_with("attributes")).nth(1).unwrap().to_string();
    assert!(attrs.contains("fixedtpm") && attrs.contains("fixedparent"), "{attrs}");
    assert!(!attrs.contains("userwithauth"), "sealed object must not allow password auth: {attrs}");

    // The TPM's own trial-session computation agrees for the current PCRs.
    tool(&["tpm2_createpolicy", "--policy-pcr", "-l", "sha256:7,11,15", "-L", "pol.bin"], &tpm, dir.path());
    tool(&["tpm2_flushcontext", "-l"], &tpm, dir.path());
    assert_eq!(std::fs::read(dir.path().join("pol.bin")).unwrap(), obj.policy_digest);
}

#[test]
fn reboot_with_the_same_measurements_unseals() {
    let mut tpm = booted();
    let (obj, policy) = seal_current(&mut open(&tpm));

    tpm.power_cycle();
    measure_boot(&tpm);
    let secret = open(&tpm).unseal(&obj, &policy).unwrap();
    assert_eq!(secret.as_slice(), SECRET);
    assert_no_handles(&tpm);
}

#[test]
fn changed_measurement_is_a_policy_mismatch_naming_that_pcr() {
    let mut tpm = booted();
    let (obj, policy) = seal_current(&mut open(&tpm));
    let values = policy.literal_values();

    tpm.power_cycle();
    tpm.extend(7, "secure boot policy");
    tpm.extend(11, "uki v2 (not what was sealed)");
    tpm.extend(15, "var volume key");
    let mut t = open(&tpm);
    let now = t.read_pcrs(&[11]).unwrap()[&11].clone();

    let err = t.unseal(&obj, &policy).unwrap_err();
    match &err {
        TpmError::PolicyMismatch { changed } => {
            assert_eq!(changed.len(), 1, "{changed:?}");
            assert_eq!(changed[0].pcr, 11);
            assert_eq!(changed[0].sealed, hex::encode(&values[&11]));
            assert_eq!(changed[0].current, hex::encode(&now));
        }
        other => panic!("expected PolicyMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("PCR 11") && msg.contains(&hex::encode(&values[&11])) && msg.contains(&hex::encode(&now)),
        "{msg}"
    );
    assert!(!msg.contains("SWMKEY"));
    assert_no_handles(&tpm);
}

#[test]
fn another_machine_is_an_srk_mismatch() {
    let tpm = booted();
    let (obj, policy) = seal_current(&mut open(&tpm));

    let other = booted(); // same measurements, different TPM
    let err = open(&other).unseal(&obj, &policy).unwrap_err();
    assert!(matches!(err, TpmError::SrkMismatch), "{err:?}");
    assert!(err.to_string().contains("different machine"), "{err}");
    assert_no_handles(&other);
}

#[test]
fn sealing_to_recorded_values_unseals_once_the_pcrs_reach_them() {
    // Models sealing with values recorded before the phase PCR was extended.
    let tpm = Swtpm::start();
    let mut t = open(&tpm);
    let zero = vec![0u8; 32];
    let values: PcrValues = [
        (7, extended(&zero, "secure boot policy")),
        (11, extended(&zero, "uki v1")),
        (15, extended(&zero, "var volume key")),
    ]
    .into_iter()
    .collect();
    let policy = Policy::Pcr { values };
    let obj = t.seal(SECRET, &policy).unwrap();
    assert_no_handles(&tpm);

    // Not reached yet: refused, every PCR named.
    match t.unseal(&obj, &policy).unwrap_err() {
        TpmError::PolicyMismatch { changed } => assert_eq!(changed.iter().map(|d| d.pcr).collect::<Vec<_>>(), PCRS),
        other => panic!("expected PolicyMismatch, got {other:?}"),
    }
    assert_no_handles(&tpm);

    measure_boot(&tpm);
    assert_eq!(t.unseal(&obj, &policy).unwrap().as_slice(), SECRET);
    assert_no_handles(&tpm);
}

#[test]
fn extend_closes_the_key_for_the_rest_of_the_boot() {
    let tpm = booted();
    let mut t = open(&tpm);
    let (obj, policy) = seal_current(&mut t);
    let before = t.read_pcrs(&[15]).unwrap()[&15].clone();
    assert_eq!(t.unseal(&obj, &policy).unwrap().as_slice(), SECRET);

    t.extend(15, b"swarmseal: unlocked").unwrap();
    // extend = TPM2_PCR_Extend with SHA-256(data), same as tpm2_pcrextend of its sha256sum.
    assert_eq!(t.read_pcrs(&[15]).unwrap()[&15], extended(&before, "swarmseal: unlocked"));

    match t.unseal(&obj, &policy).unwrap_err() {
        TpmError::PolicyMismatch { changed } => {
            assert_eq!(changed.len(), 1);
            assert_eq!(changed[0].pcr, 15);
        }
        other => panic!("expected PolicyMismatch, got {other:?}"),
    }
    assert_no_handles(&tpm);
}

#[test]
fn unseal_under_another_policy_is_a_mismatch_without_diffs() {
    let tpm = booted();
    let mut t = open(&tpm);
    let (obj, _) = seal_current(&mut t);
    // Same PCRs now, but a policy over a different set: the object is bound to another digest.
    let other = Policy::Pcr { values: t.read_pcrs(&[7, 11]).unwrap() };
    match t.unseal(&obj, &other).unwrap_err() {
        TpmError::PolicyMismatch { changed } => assert!(changed.is_empty(), "{changed:?}"),
        e => panic!("expected PolicyMismatch, got {e:?}"),
    }
    assert_no_handles(&tpm);
}

#[test]
fn damaged_blob_is_a_command_error_without_leaks() {
    let tpm = booted();
    let mut t = open(&tpm);
    let (mut obj, policy) = seal_current(&mut t);
    let n = obj.private.len();
    obj.private[n - 1] ^= 0xff;
    let err = t.unseal(&obj, &policy).unwrap_err();
    assert!(matches!(err, TpmError::Command { .. }), "{err:?}");
    obj.private.truncate(n - 3);
    assert!(matches!(t.unseal(&obj, &policy).unwrap_err(), TpmError::Command { .. }));
    assert_no_handles(&tpm);
}

#[test]
fn persistent_srk_is_used_and_named() {
    let tpm = booted();
    let dir = tempfile::tempdir().unwrap();
    // Our SRK template derives the same key as tpm2-tools with the TCG attributes (noDA set).
    let transient_name = open(&tpm).srk_name().unwrap();
    tool(
        &[
            "tpm2_createprimary",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:aes128cfb",
            "-a",
            "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
            "-c",
            "tcg.ctx",
        ],
        &tpm,
        dir.path(),
    );
    tool(&["tpm2_readpublic", "-c", "tcg.ctx", "-n", "tcg.name"], &tpm, dir.path());
    tool(&["tpm2_flushcontext", "-t"], &tpm, dir.path());
    assert_eq!(
        std::fs::read(dir.path().join("tcg.name")).unwrap(),
        transient_name,
        "SRK template differs from the TCG one"
    );

    // The operator's persistent SRK, made the usual way (tpm2-tools' default attributes).
    tool(
        &["tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-c", "srk.ctx"],
        &tpm,
        dir.path(),
    );
    tool(&["tpm2_evictcontrol", "-c", "srk.ctx", "0x81000001"], &tpm, dir.path());
    tool(&["tpm2_flushcontext", "-t"], &tpm, dir.path());
    tool(&["tpm2_readpublic", "-c", "0x81000001", "-n", "persistent.name"], &tpm, dir.path());
    let persistent_name = std::fs::read(dir.path().join("persistent.name")).unwrap();
    assert_no_handles(&tpm);

    let mut t = open(&tpm);
    assert_eq!(t.srk_name().unwrap(), persistent_name);
    let (obj, policy) = seal_current(&mut t);
    assert_eq!(obj.srk_name, persistent_name, "sealed under another SRK than the persistent one");
    assert_no_handles(&tpm);
    assert_eq!(t.unseal(&obj, &policy).unwrap().as_slice(), SECRET);
    assert_no_handles(&tpm);
    drop(t);
    // The persistent SRK is still there afterwards.
    assert!(tpm.tpm2(&["getcap", "handles-persistent"]).contains("0x81000001"));

    // Once it is evicted, the SRK differs (as if the TPM was cleared and reprovisioned differently).
    tool(&["tpm2_evictcontrol", "-c", "0x81000001"], &tpm, dir.path());
    let err = open(&tpm).unseal(&obj, &policy).unwrap_err();
    assert!(matches!(err, TpmError::SrkMismatch), "{err:?}");
    assert_no_handles(&tpm);
}

#[test]
fn unreachable_tpm_is_unavailable_with_the_tcti_in_the_message() {
    let tpm = Swtpm::start();
    let tcti = tpm.tcti();
    drop(tpm);
    let err = Tpm::open(&tcti).err().expect("opening a stopped swtpm must fail");
    assert!(matches!(err, TpmError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&tcti), "{err}");
    let err = Tpm::open("nonsense:").err().unwrap();
    assert!(matches!(err, TpmError::Unavailable { .. }), "{err:?}");
}

#[test]
fn read_pcrs_reads_more_than_eight_at_once() {
    let tpm = booted();
    let all: Vec<u8> = (0..24).collect();
    let v = open(&tpm).read_pcrs(&all).unwrap();
    assert_eq!(v.keys().copied().collect::<Vec<_>>(), all);
    assert!(v.values().all(|d| d.len() == 32));
    assert_eq!(v[&11], extended(&[0; 32], "uki v1"));
    assert!(open(&tpm).read_pcrs(&[24]).is_err());
}

#[test]
fn seal_and_unseal_timing() {
    // Not an assertion of speed: prints the numbers for the report (cargo test -- --nocapture).
    let tpm = booted();
    let mut t = open(&tpm);
    let values = t.read_pcrs(&PCRS).unwrap();
    let policy = Policy::Pcr { values };
    let n = 5;
    let start = std::time::Instant::now();
    let mut obj = None;
    for _ in 0..n {
        obj = Some(t.seal(SECRET, &policy).unwrap());
    }
    let seal = start.elapsed() / n;
    let obj = obj.unwrap();
    let start = std::time::Instant::now();
    for _ in 0..n {
        t.unseal(&obj, &policy).unwrap();
    }
    let unseal = start.elapsed() / n;
    eprintln!("swtpm: seal {seal:?}, unseal {unseal:?} (mean of {n})");
    assert_no_handles(&tpm);
}

/// Records the bytes crossing the "TPM bus": a TCP relay in front of swtpm's server and
/// control ports (the swtpm TCTI uses PORT and PORT+1).
struct BusTap {
    port: u16,
    seen: std::sync::Arc<Mutex<Vec<u8>>>,
}

impl BusTap {
    fn start(tpm: &Swtpm) -> BusTap {
        use std::net::{TcpListener, TcpStream};
        let (server, ctrl, port) = loop {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = a.local_addr().unwrap().port();
            if let Ok(b) = TcpListener::bind(("127.0.0.1", p + 1)) {
                break (a, b, p);
            }
        };
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        for (listener, target) in [(server, tpm.port), (ctrl, tpm.port + 1)] {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let client = client.unwrap();
                    let upstream = TcpStream::connect(("127.0.0.1", target)).unwrap();
                    for (mut from, mut to) in
                        [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)]
                    {
                        let seen = seen.clone();
                        std::thread::spawn(move || {
                            use std::io::{Read, Write};
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = from.read(&mut buf) {
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
            });
        }
        BusTap { port, seen }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.seen.lock().unwrap().windows(needle.len()).any(|w| w == needle)
    }
}

#[test]
fn the_secret_never_crosses_the_bus_in_clear() {
    let tpm = booted();
    let tap = BusTap::start(&tpm);
    let mut t = Tpm::open(&tap.tcti()).unwrap();
    let (obj, policy) = seal_current(&mut t);
    assert_eq!(t.unseal(&obj, &policy).unwrap().as_slice(), SECRET);
    drop(t);
    // The tap does see the traffic: PCR values travel in clear in TPM2_PCR_Read.
    let values = policy.literal_values();
    assert!(tap.contains(&values[&11]), "the tap recorded no TPM traffic");
    // Create's inSensitive and Unseal's outData are parameter-encrypted.
    assert!(!tap.contains(SECRET), "the secret crossed the TPM bus in clear");
    assert!(!tap.contains(&SECRET[..16]), "part of the secret crossed the TPM bus in clear");
    assert_no_handles(&tpm);
}

#[test]
fn tpm_gone_after_open_is_unavailable() {
    let tpm = booted();
    let mut t = open(&tpm);
    let (obj, policy) = seal_current(&mut t);
    let tcti = tpm.tcti();
    drop(tpm); // the TPM goes away (swtpm stopped) while the context is open
    let err = t.unseal(&obj, &policy).unwrap_err();
    assert!(err.to_string().contains(&tcti), "{err}");
    assert!(matches!(err, TpmError::Unavailable { .. }), "{err:?}");
    let err = t.read_pcrs(&PCRS).unwrap_err();
    assert!(matches!(err, TpmError::Unavailable { .. }), "{err:?}");
}
