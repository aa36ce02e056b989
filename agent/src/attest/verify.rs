//! The checks of one manager's answer: one [`Check`] per row, in the order of docs/attestation.md.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use swarmseal_common::pcrpolicy::{pcr_policy_digest, pcr_values_digest, PcrSignatures, PcrValues, PHASE_MARKER};
use swarmseal_common::signing::SigningKey;

use super::log::{parse_firmware_log, parse_measure_log, replay, reset_value};
use super::secure_boot::{secure_boot, secure_boot_keys};
use super::tpm2::{parse_ak_public, parse_attest, verify_quote};
use super::{extend, Answer, FORMAT, SIGNED_PCR};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail(String),
    /// Not applicable here (said why); does not fail the manager.
    NotApplicable(String),
    /// Passed only as far as the operator chose to check (said what was not); does not fail
    /// the manager.
    Warn(String),
}

/// One row of a manager's table.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// What the verifier is given besides the answer.
pub struct Expect<'a> {
    /// The nonce this run sent.
    pub nonce: &'a [u8],
    /// The fleet's PCR-signing public key (`--public-key`).
    pub fleet_key: Option<&'a SigningKey>,
    /// This manager's AK pin file (written on first contact, once every other check passed).
    pub pin: &'a Path,
    /// The PCR the agent extends its phase marker into (`[tpm] phase_pcr`; the image: 11).
    pub phase_pcr: u8,
    /// Accept a manager with no firmware event log (swtpm, a VM without one): Secure Boot and
    /// PCRs 0–7 are then only as good as their reset values say.
    pub allow_no_firmware_log: bool,
    /// The fleet's Secure Boot db certificate (DER, `--secure-boot-cert`): db must hold only
    /// it, and it must be what verified the boot applications.
    pub secure_boot_cert: Option<&'a [u8]>,
    /// Without `secure_boot_cert`: SecureBoot = 1 is a WARN instead of a failure.
    pub allow_any_secure_boot_keys: bool,
    /// With `--ek-ca`: the outcome of credential activation (made by the caller, which talks
    /// to the manager); the pin is compared (and written on first contact) after it passes.
    /// `None`: no `--ek-ca`, the pin alone (TOFU).
    pub activation: Option<Outcome>,
}

/// The PCRs every quote must cover, whatever the manager chooses to report: the firmware's
/// 0–7 (7: Secure Boot), 11 (the signed UKI) and the phase PCR.
fn required_pcrs(phase: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..=7).chain([SIGNED_PCR, phase]).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Verify one manager's answer; one [`Check`] per row, in the order of the module docs.
pub fn verify(answer: &Answer, expect: &Expect) -> Vec<Check> {
    let mut rows = Vec::new();
    let mut row = |name: &'static str, outcome: Outcome| rows.push(Check { name, outcome });
    if answer.format != FORMAT || answer.version != 1 {
        row("answer", Outcome::Fail(format!("not a {FORMAT} version 1 answer (format {:?}, version {})", answer.format, answer.version)));
        return rows;
    }
    let decoded = (|| -> Result<_, String> {
        let attest = B64.decode(&answer.attest).map_err(|e| format!("attest is not base64: {e}"))?;
        let sig = B64.decode(&answer.signature).map_err(|e| format!("signature is not base64: {e}"))?;
        let ak = B64.decode(&answer.ak_public).map_err(|e| format!("ak_public is not base64: {e}"))?;
        let mut pcrs = PcrValues::new();
        for (i, v) in &answer.pcrs {
            pcrs.insert(*i, hex::decode(v).ok().filter(|v| v.len() == 32).ok_or_else(|| format!("PCR {i}'s value is not 64 hex digits"))?);
        }
        let (ak, quote) = (parse_ak_public(&ak)?, parse_attest(&attest)?);
        Ok((attest, sig, ak, quote, pcrs))
    })();
    let (attest, sig, ak, quote, pcrs) = match decoded {
        Ok(d) => d,
        Err(e) => {
            row("answer", Outcome::Fail(e));
            return rows;
        }
    };
    let signed = verify_quote(&ak, &attest, &sig);
    row("signature", match signed {
        Ok(()) if !ak.restricted_signing => Outcome::Fail("the AK is not a restricted, fixedTPM signing key: it could sign a forged quote".into()),
        Ok(()) => Outcome::Pass("signed by the AK (ECDSA P-256, restricted key)".into()),
        Err(e) => Outcome::Fail(e),
    });
    row("nonce", if quote.extra_data == expect.nonce {
        Outcome::Pass("the quote carries this run's fresh nonce".into())
    } else {
        Outcome::Fail(format!("the quote's nonce is {}, not this run's {}: a replayed or stale quote", hex::encode(&quote.extra_data), hex::encode(expect.nonce)))
    });
    let listed: Vec<u8> = pcrs.keys().copied().collect();
    let missing: Vec<u8> = required_pcrs(expect.phase_pcr).into_iter().filter(|p| !quote.pcrs.contains(p)).collect();
    row("PCR digest", if answer.phase_pcr != expect.phase_pcr {
        Outcome::Fail(format!("the manager names PCR {} as its phase PCR, not {}", answer.phase_pcr, expect.phase_pcr))
    } else if !missing.is_empty() {
        Outcome::Fail(format!("the quote does not cover PCRs {missing:?}: a quote must cover {:?}", required_pcrs(expect.phase_pcr)))
    } else if listed != quote.pcrs {
        Outcome::Fail(format!("the answer lists PCRs {listed:?}, the quote covers {:?}", quote.pcrs))
    } else if pcr_values_digest(&pcrs) != quote.pcr_digest {
        Outcome::Fail("the reported PCR values do not hash to the quoted pcrDigest: altered, or a PCR was extended between quote and read (ask again)".into())
    } else {
        Outcome::Pass(format!("the quoted digest is SHA-256 of the reported PCRs {listed:?}"))
    });
    let (identity, first_contact) = match (&expect.activation, check_pin(expect.pin, &ak.name)) {
        (Some(Outcome::Pass(activated)), (Outcome::Pass(pin), first)) => (Outcome::Pass(format!("{activated}; {pin}")), first),
        (Some(Outcome::Pass(_)), (failed, _)) => (failed, false),
        (Some(failed), _) => (failed.clone(), false),
        (None, (Outcome::Pass(pin), first)) => (Outcome::Pass(format!("{pin}, no --ek-ca: the AK is not shown to be a genuine TPM's")), first),
        (None, (other, _)) => (other, false),
    };
    row("AK identity", identity);
    let (replay_row, before, markers) = check_replay(answer, &pcrs);
    row("event log replay", replay_row);
    row("PCR 11 signed", check_pcr11(answer, expect.fleet_key, before.as_deref()));
    let phase = answer.phase_pcr;
    row("phase marker", match markers {
        Some(1) => Outcome::Pass(format!("in PCR {phase} exactly once: this boot's unlock decision was made once (any root process could extend it; it shows no second unseal)")),
        Some(0) => Outcome::Fail(format!("no phase marker in PCR {phase}: the agent has not unlocked in this boot (or another program answered)")),
        Some(n) => Outcome::Fail(format!("the phase marker is in PCR {phase} {n} times: the key could have been unsealed more than once")),
        None => Outcome::Fail(format!("not known: PCR {phase} does not replay (see event log replay)")),
    });
    row("Secure Boot", check_secure_boot(answer, expect));
    // The pin is written only for a manager that passed everything else: a failed run pins nothing.
    let Some(pin_row) = rows.iter().position(|r| r.name == "AK identity") else { return rows };
    let others_pass = rows.iter().enumerate().all(|(i, r)| i == pin_row || !matches!(r.outcome, Outcome::Fail(_)));
    if let Outcome::Pass(text) = &rows[pin_row].outcome {
        if first_contact {
            rows[pin_row].outcome = if others_pass {
                write_pin(expect.pin, &ak.name).map_or_else(Outcome::Fail, |()| Outcome::Pass(text.clone()))
            } else {
                Outcome::Fail(format!("not pinned: first contact, and another check failed (AK {})", hex::encode(&ak.name)))
            };
        }
    }
    rows
}

const FIRST_CONTACT: &str = "pinned on first contact";

fn write_pin(pin: &Path, name: &[u8]) -> Result<(), String> {
    pin.parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| swarmseal_common::fs::write_atomic(pin, format!("{}\n", hex::encode(name)).as_bytes(), 0o644))
        .map_err(|e| format!("cannot write the AK pin {}: {e}", pin.display()))
}

/// The AK's Name against the pin file, and whether this is the first contact (no pin yet).
/// On first contact the row passes as [`FIRST_CONTACT`]; [`verify`] writes the pin only if
/// every other check passed.
fn check_pin(pin: &Path, name: &[u8]) -> (Outcome, bool) {
    let name = hex::encode(name);
    let outcome = match std::fs::read_to_string(pin) {
        Ok(pinned) if pinned.trim() == name => Outcome::Pass(format!("matches pin ({})", pin.display())),
        Ok(pinned) => Outcome::Fail(format!(
            "the AK {name} is not the AK pinned for this manager ({}): another TPM answered, or this TPM's endorsement seed changed; if the machine was replaced on purpose, remove {} and run again",
            pinned.trim(),
            pin.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Outcome::Pass(format!("{FIRST_CONTACT}: AK {name} ({})", pin.display())), true),
        Err(e) => Outcome::Fail(format!("cannot read the AK pin {}: {e}", pin.display())),
    };
    (outcome, false)
}

/// Replay the logs to the quoted PCRs. Returns the row, the phase PCR's value before the
/// phase markers (when it replays) and how many markers follow it.
fn check_replay(answer: &Answer, quoted: &PcrValues) -> (Outcome, Option<Vec<u8>>, Option<usize>) {
    let mut events = Vec::new();
    let mut locality = 0;
    let mut sources = Vec::new();
    match answer.firmware_log.bytes() {
        Ok(b) => match parse_firmware_log(&b) {
            Ok(log) => {
                events.extend(log.events);
                locality = log.locality;
                sources.push("replayed from the firmware log".to_string());
            }
            Err(e) => return (Outcome::Fail(e), None, None),
        },
        Err(why) => sources.push(format!("no firmware log: {why}")),
    }
    match answer.measure_log.bytes() {
        Ok(b) => match parse_measure_log(&b) {
            Ok(ev) => {
                events.extend(ev);
                sources.push("replayed from systemd's measure log".to_string());
            }
            Err(e) => return (Outcome::Fail(e), None, None),
        },
        Err(why) => return (Outcome::Fail(format!("no systemd measure log to replay PCR {}: {why}", answer.phase_pcr)), None, None),
    }
    let replayed = replay(&events, locality);
    let marker = Sha256::digest(PHASE_MARKER).to_vec();
    let phase = answer.phase_pcr;
    let (mut before, mut markers) = (None, None);
    // Every quoted PCR is explained by the logs: one without events must still be at its reset value.
    for (pcr, q) in quoted {
        let value = replayed.get(pcr).cloned().unwrap_or_else(|| reset_value(*pcr, locality));
        let what = if replayed.contains_key(pcr) { format!("the event logs replay to {}", hex::encode(&value)) } else { "no event is logged for it".to_string() };
        if *pcr == phase {
            // The agent's phase marker follows the logged events, unlogged: count them (0 to 3).
            let mut v = value.clone();
            markers = (0..=3).find(|_| {
                let hit = &v == q;
                v = extend(&v, &marker);
                hit
            });
            if markers.is_none() {
                return (Outcome::Fail(format!("PCR {pcr}: {what} (before any phase marker), the TPM quoted {}: an event is missing from or altered in the log", hex::encode(q))), None, None);
            }
            before = Some(value);
        } else if &value != q {
            return (Outcome::Fail(format!("PCR {pcr}: {what}, the TPM quoted {}: an event is missing from or altered in the log", hex::encode(q))), None, None);
        }
    }
    let pcrs: Vec<u8> = quoted.keys().copied().collect();
    (Outcome::Pass(format!("PCRs {pcrs:?} match the quote ({})", sources.join("; "))), before, markers)
}

/// PCR 11 before the phase marker: a value whose TPM2_PolicyPCR digest the fleet key signed
/// in the manager's `tpm2-pcr-signature.json`.
fn check_pcr11(answer: &Answer, key: Option<&SigningKey>, before_phase: Option<&[u8]>) -> Outcome {
    const NOT: &str = "PCR 11 not signed by the fleet key";
    let Some(key) = key else {
        return Outcome::Fail(format!("{NOT}: not checked, give --public-key (the fleet's PCR-signing key, keys/pcr-signing.pem)"));
    };
    let value = if answer.phase_pcr == SIGNED_PCR { before_phase.map(<[u8]>::to_vec) } else { answer.pcrs.get(&SIGNED_PCR).and_then(|v| hex::decode(v).ok()) };
    let Some(value) = value else {
        return Outcome::Fail(format!("{NOT}: PCR 11's value before the phase marker is not known (the logs do not replay)"));
    };
    let sigs = match answer.pcr_signature.bytes().map_err(|why| format!("the manager sent no PCR signature file ({why})")).and_then(|b| PcrSignatures::parse(&b, "the manager's tpm2-pcr-signature.json").map_err(|e| e.to_string())) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("{NOT}: {e}")),
    };
    let pol = pcr_policy_digest(&PcrValues::from([(SIGNED_PCR, value.clone())]));
    let pkfp = key.fingerprint();
    match sigs.find(&[SIGNED_PCR], &pkfp, &pol) {
        Some(e) if key.verify_sha256(&e.pol, &e.sig) => Outcome::Pass(format!("PCR 11 = {} is one the fleet key signed (policy {})", hex::encode(&value), hex::encode(&pol))),
        Some(_) => Outcome::Fail(format!("{NOT}: the entry for PCR 11 = {} does not verify with the fleet key: forged", hex::encode(&value))),
        None => Outcome::Fail(format!(
            "{NOT}: PCR 11 = {} (policy digest {}) has no signature by the fleet key {} ({} other value(s) signed by it): this boot's image is not one the fleet signed",
            hex::encode(&value),
            hex::encode(&pol),
            hex::encode(pkfp),
            sigs.count_by_key(&[SIGNED_PCR], &pkfp)
        )),
    }
}

/// Secure Boot on (PCR 7's SecureBoot events), with the fleet's keys when `--secure-boot-cert`
/// is given; without it a failure, or a WARN with `--allow-any-secure-boot-keys`.
fn check_secure_boot(answer: &Answer, expect: &Expect) -> Outcome {
    let log = match answer.firmware_log.bytes() {
        // The fleet's keys were asked for: a manager cannot skip that check by sending no log.
        Err(why) if expect.secure_boot_cert.is_some() => return Outcome::Fail(format!("no firmware event log ({why}): the fleet's Secure Boot keys (--secure-boot-cert) cannot be shown")),
        Err(why) if expect.allow_no_firmware_log => return Outcome::NotApplicable(format!("no firmware event log ({why}); accepted by --allow-no-firmware-log")),
        Err(why) => return Outcome::Fail(format!("no firmware event log ({why}): Secure Boot cannot be shown (--allow-no-firmware-log accepts that)")),
        Ok(b) => match parse_firmware_log(&b) {
            Ok(log) => log,
            Err(e) => return Outcome::Fail(e),
        },
    };
    if let Err(e) = secure_boot(&log) {
        return Outcome::Fail(e);
    }
    const ON: &str = "on (every PCR 7 SecureBoot event = 1, each bound to its digest)";
    match expect.secure_boot_cert {
        Some(cert) => match secure_boot_keys(&log, cert) {
            Ok(found) => Outcome::Pass(format!("{ON}; {found}")),
            Err(e) => Outcome::Fail(format!("not the fleet's keys: {e}")),
        },
        None if expect.allow_any_secure_boot_keys => Outcome::Warn(format!("{ON}; whose keys is not checked (--allow-any-secure-boot-keys): any db, any signer")),
        None => Outcome::Fail(format!("{ON}, but whose keys is not checked: give --secure-boot-cert (the fleet's db certificate, keys/secure-boot.crt), or --allow-any-secure-boot-keys")),
    }
}
