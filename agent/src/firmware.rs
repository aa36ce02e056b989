//! The firmware window: a planned Secure Boot `dbx` update or firmware update without a
//! console visit (issue #19).
//!
//! `/var`'s TPM2 slot is bound to PCR 7 literally (and PCR 11 signed by the fleet's key,
//! image/README.md "PCR 7 with Secure Boot on"). A dbx update or a firmware update changes PCR 7,
//! and the next boot would stop at `/var`'s passphrase prompt. Before such an update the operator
//! **arms** a window (`POST /swarmseal/v1/var/firmware-window?days=N`, admin, body: the `/var`
//! recovery key): a **second TPM2 slot** is enrolled, bound literally to **PCR 2** (option ROMs
//! and UEFI drivers from outside the firmware), **PCR 4** (the boot applications' Authenticode
//! digests: this systemd-boot and this UKI, measured by the firmware before they run) and
//! **PCR 12** (the kernel command line from outside the UKI, addons, credentials on the ESP),
//! and to PCR 11 signed by the fleet's key — everything the main slot binds but PCR 7. With
//! Secure Boot off, a foreign loader, a driver, or the genuine UKI with another command line
//! (systemd-stub takes the loader's command line only then) each change one of those before
//! they matter: the window slot does not open for them. What the window gives up, for its
//! lifetime, is PCR 7's statement about *which keys* Secure Boot used.
//!
//! At every boot `swarmseal var firmware-window check` (`swarmseal-firmware-window.service`,
//! after `/var` is open, before the agent) looks at the window:
//! - a window slot without a readable record: wiped (`firmware_window_orphan_wiped`);
//! - expired (or the clock before its arming): the window slot is wiped, the record removed
//!   (`firmware_window_expired`), whatever PCR 7 says;
//! - PCR 7 as armed: nothing to do (the main slot opened `/var`);
//! - PCR 7 changed: the firmware log must replay to this PCR 7, say Secure Boot is on, show PK,
//!   KEK, db and every other PCR 7 event unchanged since arming, and dbx holding every entry
//!   it held (a revocation list may only grow). Then `/var` is **re-enrolled to the new PCR 7** (`systemd-cryptenroll
//!   --unlock-tpm2-device=auto --tpm2-device=auto --tpm2-pcrs=7 --tpm2-public-key=…
//!   --tpm2-public-key-pcrs=11 --wipe-slot=tpm2`: the new main slot in, the old one and the
//!   window's out) — `firmware_change_accepted`. Otherwise the window slot is wiped without a
//!   new main slot — `firmware_change_refused`, naming why: the next boot asks for the recovery
//!   key, as it would without a window.
//!
//! The swarm's unlock key follows the same window. When the agent forwards an arming that
//! answered [`ARMED`], it reads the engine's unlock key (`GET /swarm/unlockkey`) and seals a
//! **window copy** (keystore slot `window`, `keys/window.json`) under **PCRs 2, 4, 12, 15
//! literal** (this boot's values) **+ PCR 11 signed** (the main slot's TPM2_PolicyAuthorize) —
//! the main slot's policy with PCR 7 swapped for the window's PCRs. A key rotation or reseal
//! while the window is armed seals the copy again with the new key. Every arming first deletes
//! any earlier copy and its claim; no copy is sealed in a boot that is not the sealed one
//! (`current`'s PCRs differ: status `seal_stale`, "reseal first"). Disarming (the copy first,
//! before the wipes that can fail), an expiry, an orphan wipe and a refused change delete the
//! copy (`check` and `disarm` do, as root, in the same state dir). A copy that could not be
//! sealed does not disarm `/var`'s window: the answer says so (HTTP 500, `key_sealed: false`),
//! and after an accepted change the swarm then stays locked as before.
//!
//! At the boot after an accepted change, `current` and `previous` no longer unseal (PCR 7
//! moved). The agent then reads [`LAST`]: only an `accepted` decision carrying **this boot's
//! ID** (`/proc/sys/kernel/random/boot_id`, written by `check`, [`accepted_this_boot`]) lets it
//! unseal the window copy — a decision of an earlier boot never counts. It unlocks the swarm,
//! reseals `current` to this boot's PCRs (the new PCR 7; the escrow copy refreshed as every
//! seal does), and only then deletes the window copy (`firmware_window_unlocked`); a failed
//! reseal is left to the watch loop (the unlock is consumed). Before it unseals the copy it
//! writes a claim (`keys/window-claim.json`: the decision's boot ID, this PCR 7, the copy's
//! fingerprint, this boot's ID), and marks it `unlocked` once the copy unlocked the engine.
//! Killed before the copy is deleted, the agent restarted in the same boot finishes the reseal
//! only for a claim of this boot marked `unlocked`; a boot cut short there (power loss) is
//! finished by the next boot, which may unseal the copy once more only for that claimed
//! decision, at the very PCR 7 it claimed, for that very copy, and with no window armed. An
//! unlock by hand never finishes the window (the operator's reseal accepts a boot chain, as
//! `seal_stale` says): a closed window's copy not used in this boot is deleted with its claim
//! once the swarm is active. After
//! a refused change (or without a copy) the swarm stays locked, and the operator unlocks
//! through the proxy with the escrowed key and reseals (docs/operating.md "When the boot chain
//! changed").
//!
//! Sources: TCG PC Client Platform Firmware Profile 2.0 (PCR 4: EV_EFI_BOOT_SERVICES_APPLICATION;
//! PCR 7: EV_EFI_VARIABLE_DRIVER_CONFIG, 3.3.4.8), systemd-cryptenroll(1) (`--tpm2-pcrs=`,
//! `--tpm2-public-key-pcrs=`, `--unlock-tpm2-device=`, `--wipe-slot=`), cryptsetup(8)
//! `luksDump --dump-json-metadata`.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::attest::{parse_firmware_log, replay, secure_boot, variables, FirmwareLog, Variables};
use crate::config::Config;
use crate::var::{cryptenroll, cryptsetup, is_recovery_key, run_tool as run, VarError};

/// The window's record, under the state dir (0644: the agent's status reads it).
pub const RECORD: &str = "firmware-window.json";
/// The last decision `check` took on a changed PCR 7 (or an expiry), under the state dir.
pub const LAST: &str = "firmware-window-last.json";
/// The root-only socket of `swarmseal-firmware-window.socket`: each connection runs
/// `swarmseal var firmware-window request`; the agent forwards
/// `POST /swarmseal/v1/var/firmware-window` to it.
pub const SOCKET: &str = "/run/swarmseal-firmware-window.sock";
/// The line `request`/`arm` prints once the window is armed.
pub const ARMED: &str = "firmware window armed";
/// The line `request`/`disarm` prints once no window is left.
pub const DISARMED: &str = "firmware window disarmed";
/// Default and longest lifetime of a window, in days.
pub const DEFAULT_DAYS: u32 = 7;
pub const MAX_DAYS: u32 = 30;
/// The PCR the window slot binds literally (instead of PCR 7).
pub const WINDOW_PCRS: &str = "2+4+12";

/// An armed window: when, until when, and the Secure Boot state it was armed under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix seconds.
    pub armed_at: u64,
    /// Unix seconds; `check` wipes the window slot at the first boot after it.
    pub expires_at: u64,
    /// PCR 7 (sha256 bank, hex) when armed.
    pub pcr7: String,
    /// SHA-256 (hex) and entry count of PK, KEK, db and dbx as PCR 7's events measured them.
    pub variables: std::collections::BTreeMap<String, (String, usize)>,
    /// dbx's entries when armed ([`Variables::dbx_entries`]): a new dbx must still hold them all.
    pub dbx_entries: Vec<String>,
    /// PCR 7's other events when armed ([`Variables::others`]): they must not change.
    pub others: Vec<String>,
}

impl Record {
    fn from_vars(armed_at: u64, days: u32, pcr7: &[u8], vars: &Variables) -> Record {
        Record {
            armed_at,
            expires_at: armed_at + u64::from(days) * 86_400,
            pcr7: hex::encode(pcr7),
            variables: vars.measured.iter().map(|(k, (d, n))| (k.clone(), (hex::encode(d), *n))).collect(),
            dbx_entries: vars.dbx_entries.iter().cloned().collect(),
            others: vars.others.clone(),
        }
    }
}

/// What `check` did at this boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// No window armed.
    NotArmed,
    /// Armed, PCR 7 as armed: the window waits for the update.
    Waiting { expires_at: u64 },
    /// The window expired unused: its slot was wiped.
    Expired { at: u64 },
    /// PCR 7 changed and the change was accepted: `/var` bound to the new PCR 7. `boot_id`: the
    /// boot that judged it ([`boot_id`]); the agent uses the window copy of the unlock key only
    /// in that boot (absent from records written before it existed: they never count).
    Accepted {
        at: u64,
        changed: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_id: Option<String>,
    },
    /// PCR 7 changed and the change was refused: the window slot was wiped, nothing re-bound.
    Refused { at: u64, why: String },
}

/// Why a window was not armed, or `check` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The recovery key, the device or systemd-cryptenroll / cryptsetup (see [`VarError`]).
    #[error(transparent)]
    Var(#[from] VarError),
    /// This boot cannot anchor a window: Secure Boot off, no readable firmware log or PCR 7.
    #[error("the firmware window cannot be armed on this boot: {0}")]
    NotArmable(String),
    /// A malformed request on the socket (or `--days` out of range).
    #[error("{0}")]
    Request(String),
    /// Reading or writing the record.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where `arm` and `check` read this boot's measurements and write `/var`'s slots.
#[derive(Debug, Clone, clap::Args)]
pub struct Paths {
    /// The LUKS2 block device of /var.
    #[arg(long, value_name = "DEV", default_value = crate::var::DEFAULT_DEVICE)]
    pub device: PathBuf,
    /// This boot's PCR 7, sha256 bank, in hex, as the kernel shows it.
    #[arg(long, value_name = "FILE", default_value = "/sys/class/tpm/tpm0/pcr-sha256/7")]
    pub pcr7: PathBuf,
    /// The firmware's TCG event log.
    #[arg(long, value_name = "FILE", default_value = "/sys/kernel/security/tpm0/binary_bios_measurements")]
    pub firmware_log: PathBuf,
    /// The fleet's PCR-signing public key: both the window slot and the re-bound main slot
    /// also bind PCR 11 signed by it.
    #[arg(long, value_name = "PEM", default_value = "/etc/swarmseal/pcr-public-key.pem")]
    pub tpm2_public_key: PathBuf,
}

/// `swarmseal var firmware-window …`
#[derive(Debug, clap::Subcommand)]
pub enum WindowCommand {
    /// Arm a window (the /var recovery key on stdin): enroll a second TPM2 slot for /var bound to
    /// PCRs 2, 4, 12 + PCR 11 signed, not PCR 7, valid for --days.
    Arm {
        #[arg(long, default_value_t = DEFAULT_DAYS, value_name = "DAYS")]
        days: u32,
        #[command(flatten)]
        paths: Paths,
    },
    /// Wipe the window's slot and its record.
    Disarm {
        #[command(flatten)]
        paths: Paths,
    },
    /// At boot: wait, expire, or accept/refuse a changed PCR 7 (see the module docs).
    Check {
        #[command(flatten)]
        paths: Paths,
    },
    /// One request from the socket on stdin: `arm DAYS` then the recovery key on the next
    /// line, or `disarm`. Prints the result lines.
    Request {
        #[command(flatten)]
        paths: Paths,
    },
}

/// Unix seconds as `2026-12-14 13:05 UTC` (the operator's reading of an expiry).
fn utc(secs: u64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(secs as i64).ok().and_then(|t| t.format(&fmt).ok()).unwrap_or_else(|| format!("unix {secs}"))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WindowError + '_ {
    move |source| WindowError::Io { path: path.to_path_buf(), source }
}

/// The armed window under `state_dir`, if any (an unreadable record counts as armed: `check`
/// and `disarm` must not lose track of a slot).
pub fn record(state_dir: &Path) -> Result<Option<Record>, WindowError> {
    let p = state_dir.join(RECORD);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| WindowError::Io { path: p.clone(), source: std::io::Error::other(e) }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&p)(e)),
    }
}

/// The last `check` decision under `state_dir` (for status and the console).
pub fn last(state_dir: &Path) -> Option<Outcome> {
    std::fs::read(state_dir.join(LAST)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Where the kernel gives this boot's random ID (proc(5): `/proc/sys/kernel/random/boot_id`).
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's ID ([`BOOT_ID`], trimmed), or `None` when unreadable.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// What an `accepted` decision of **this boot** said changed: [`LAST`] must be `accepted` and
/// carry this boot's [`boot_id`]. `None` for any other decision, a decision of another boot,
/// one without a boot ID, or an unreadable boot ID: the window copy of the unlock key is then
/// never tried.
pub fn accepted_this_boot(state_dir: &Path) -> Option<String> {
    let this = boot_id()?;
    accepted(state_dir).filter(|(_, b)| *b == this).map(|(changed, _)| changed)
}

/// The last decision if it is `accepted` with a boot ID: what changed, and that boot's ID.
pub fn accepted(state_dir: &Path) -> Option<(String, String)> {
    match last(state_dir)? {
        Outcome::Accepted { changed, boot_id: Some(b), .. } => Some((changed, b)),
        _ => None,
    }
}

/// Delete the window copy of the unlock key (keystore slot `window`) with the window: its key
/// must not outlive the window. Failures are logged, not fatal (`check` must go on to its decision).
fn drop_window_key(cfg: &Config) {
    match crate::keystore::Keystore::new(&cfg.state_dir).drop_window() {
        Ok(true) => tracing::warn!(event = "firmware_window_key_dropped", security = true, "the window copy of the swarm unlock key was deleted with the window"),
        Ok(false) => {}
        Err(e) => tracing::error!(event = "firmware_window_key_drop_failed", security = true, error = %e, "could not delete the window copy of the swarm unlock key"),
    }
}

/// This boot's PCR 7 and firmware log, checked against each other: the log's PCR 7 events must
/// replay to the PCR (else what the log says is not what was measured).
fn measured(paths: &Paths) -> Result<(Vec<u8>, FirmwareLog), String> {
    let text = std::fs::read_to_string(&paths.pcr7).map_err(|e| format!("PCR 7 ({}): {e}", paths.pcr7.display()))?;
    let pcr7 = hex::decode(text.trim()).ok().filter(|v| v.len() == 32).ok_or_else(|| format!("PCR 7 ({}) is not 32 bytes of hex: {:?}", paths.pcr7.display(), text.trim()))?;
    let raw = std::fs::read(&paths.firmware_log).map_err(|e| format!("the firmware log ({}): {e}", paths.firmware_log.display()))?;
    let log = parse_firmware_log(&raw)?;
    let replayed = replay(&log.events, log.locality).remove(&7).unwrap_or_else(|| vec![0; 32]);
    if replayed != pcr7 {
        return Err(format!("the firmware log's PCR 7 events replay to {}, but PCR 7 is {}", hex::encode(replayed), hex::encode(&pcr7)));
    }
    Ok((pcr7, log))
}

/// Whether a changed PCR 7 is one the window accepts: Secure Boot on; PK, KEK and db as
/// `armed` recorded them; every other PCR 7 event (the SecureBoot variable, the authorities,
/// the firmware's actions such as "DMA Protection Disabled") exactly as armed; and dbx holding
/// every entry it held (a revocation list may only grow). Ok: what changed (for the journal and
/// the console); Err: why not.
pub fn judge(armed: &Record, log: &FirmwareLog) -> Result<String, String> {
    secure_boot(log).map_err(|e| format!("Secure Boot: {e}"))?;
    let now = variables(log)?;
    if now.others != armed.others {
        let i = now.others.iter().zip(&armed.others).position(|(a, b)| a != b).unwrap_or(now.others.len().min(armed.others.len()));
        return Err(format!(
            "PCR 7's events other than the Secure Boot variables changed ({} then, {} now; the first difference is event {i} of them: {} → {}): only dbx may change under the window",
            armed.others.len(),
            now.others.len(),
            armed.others.get(i).map_or("none", String::as_str),
            now.others.get(i).map_or("none", String::as_str)
        ));
    }
    let lost: Vec<&String> = armed.dbx_entries.iter().filter(|e| !now.dbx_entries.contains(*e)).collect();
    if !lost.is_empty() {
        return Err(format!("dbx no longer holds {} of its entries (e.g. {}): a revocation list may only grow; a smaller dbx lets revoked boot applications run", lost.len(), lost[0]));
    }
    let hexed = |name: &str| now.measured.get(name).map(|(d, n)| (hex::encode(d), *n));
    for name in ["PK", "KEK", "db"] {
        let (before, after) = (armed.variables.get(name).cloned(), hexed(name));
        if before != after {
            let show = |v: &Option<(String, usize)>| v.as_ref().map_or("not measured".to_string(), |(d, n)| format!("{n} entries, sha256 {d}"));
            return Err(format!("{name} changed ({} → {}): only a dbx or firmware change is accepted by the window; enrolling other keys needs the recovery key", show(&before), show(&after)));
        }
    }
    match (armed.variables.get("dbx"), hexed("dbx")) {
        (before, Some(after)) if before != Some(&after) => {
            let n = before.map_or("none".to_string(), |(_, n)| n.to_string());
            Ok(format!("dbx changed ({n} → {} entries, sha256 {}); PK, KEK and db unchanged, Secure Boot on", after.1, after.0))
        }
        (_, None) => Err("dbx is not measured in PCR 7 any more".into()),
        _ => Err("PCR 7 changed, but none of its events the window judges did: the log and PCR 7 disagree".into()),
    }
}

/// The key slots of `/var`'s window (systemd-tpm2 tokens bound literally to exactly
/// [`WINDOW_PCRS`]) from `cryptsetup luksDump --dump-json-metadata`.
fn window_slots(device: &Path) -> Result<Vec<String>, WindowError> {
    Ok(slots_of(&luks_json(device)?))
}

/// `cryptsetup luksDump --dump-json-metadata DEVICE`, parsed.
fn luks_json(device: &Path) -> Result<serde_json::Value, WindowError> {
    let out = run(&cryptsetup(), "cryptsetup luksDump --dump-json-metadata", &["luksDump".as_ref(), "--dump-json-metadata".as_ref(), device.as_os_str()], None)?;
    serde_json::from_slice(&out).map_err(|e| WindowError::Request(format!("cryptsetup luksDump --dump-json-metadata: not JSON: {e}")))
}

fn slots_of(luks: &serde_json::Value) -> Vec<String> {
    let want: Vec<u64> = WINDOW_PCRS.split('+').filter_map(|p| p.parse().ok()).collect();
    let mut out: Vec<String> = luks["tokens"]
        .as_object()
        .into_iter()
        .flat_map(|t| t.values())
        .filter(|t| t["type"] == "systemd-tpm2" && t["tpm2-pcrs"].as_array().map(|a| a.iter().filter_map(|p| p.as_u64()).collect::<Vec<_>>()) == Some(want.clone()))
        .flat_map(|t| t["keyslots"].as_array().cloned().unwrap_or_default())
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The signed-PCR 11 arguments (`--tpm2-public-key=`, `--tpm2-public-key-pcrs=11`), or an
/// empty `--tpm2-public-key=` when the key file is missing (no signed binding).
fn signed_args(paths: &Paths) -> Result<Vec<String>, WindowError> {
    // Fail closed: without the fleet's key neither slot would bind PCR 11 at all.
    if !paths.tpm2_public_key.is_file() {
        return Err(WindowError::NotArmable(format!("the fleet's PCR-signing public key {} is missing: no slot is enrolled without PCR 11 signed by it", paths.tpm2_public_key.display())));
    }
    Ok(vec![format!("--tpm2-public-key={}", paths.tpm2_public_key.display()), "--tpm2-public-key-pcrs=11".into()])
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), WindowError> {
    let text = serde_json::to_vec_pretty(v).unwrap_or_default();
    swarmseal_common::fs::write_atomic(path, &text, 0o644).map_err(io(path))
}

/// Arm (or re-arm: a new expiry) a window of `days` on this boot. The recovery key must open
/// `/var` (checked first: nothing changes otherwise); Secure Boot must be on, and the firmware
/// log must replay to PCR 7. Errors: [`WindowError`].
pub fn arm(cfg: &Config, paths: &Paths, recovery_key: &str, days: u32) -> Result<Record, WindowError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(WindowError::Request(format!("days={days}: a window lasts 1 to {MAX_DAYS} days (default {DEFAULT_DAYS})")));
    }
    if !is_recovery_key(recovery_key) {
        return Err(VarError::BadKey.into());
    }
    let (pcr7, log) = measured(paths).map_err(WindowError::NotArmable)?;
    secure_boot(&log).map_err(|e| WindowError::NotArmable(format!("Secure Boot {e}: the window would have nothing to hold PCR 7 to")))?;
    let vars = variables(&log).map_err(WindowError::NotArmable)?;
    if let Some(missing) = ["PK", "KEK", "db", "dbx"].into_iter().find(|v| !vars.measured.contains_key(*v)) {
        return Err(WindowError::NotArmable(format!("the firmware log measures no {missing} in PCR 7: a change of it could not be judged")));
    }
    let signed = signed_args(paths)?;
    if !paths.device.exists() {
        return Err(VarError::NoDevice(paths.device.clone()).into());
    }
    run(&cryptsetup(), "cryptsetup open --test-passphrase", &["open".as_ref(), "--test-passphrase".as_ref(), "--key-file=-".as_ref(), paths.device.as_os_str()], Some(recovery_key.as_bytes()))
        .map_err(|e| match e {
            VarError::Cryptenroll { .. } => VarError::KeyRefused,
            e => e,
        })?;
    // The record first: a slot must never exist without a record (and an expiry) behind it.
    // At boot, `check` wipes window slots that have none.
    let rec = Record::from_vars(now(), days, &pcr7, &vars);
    write_json(&cfg.state_dir.join(RECORD), &rec)?;
    let enrolled = (|| -> Result<(), WindowError> {
        // Re-arming: the old window slot goes first (systemd-cryptenroll would keep a slot with
        // the same policy digest as "already enrolled", even one sealed under a cleared SRK).
        for s in window_slots(&paths.device)? {
            run(&cryptenroll(), "systemd-cryptenroll --wipe-slot (the previous firmware window's slot)", &[format!("--wipe-slot={s}").as_ref(), paths.device.as_os_str()], None)?;
        }
        let mut args: Vec<String> = vec!["--unlock-key-file=/dev/stdin".into(), "--tpm2-device=auto".into(), format!("--tpm2-pcrs={WINDOW_PCRS}")];
        args.extend(signed.iter().cloned());
        let mut os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        os.push(paths.device.as_os_str());
        run(&cryptenroll(), "systemd-cryptenroll --tpm2-pcrs=2+4+12 (the firmware window's slot)", &os, Some(recovery_key.as_bytes()))?;
        Ok(())
    })();
    if let Err(e) = enrolled {
        let _ = std::fs::remove_file(cfg.state_dir.join(RECORD));
        return Err(e);
    }
    tracing::warn!(event = "firmware_window_armed", security = true, expires_at = rec.expires_at, pcr7 = %rec.pcr7, "a firmware window was armed: /var also opens with PCRs 2, 4, 12 + PCR 11 signed (not PCR 7) until the first boot after a PCR 7 change or the expiry");
    Ok(rec)
}

/// Wipe the window's slots and its record. Without a window: nothing to do.
pub fn disarm(cfg: &Config, paths: &Paths) -> Result<usize, WindowError> {
    // First: the key copy must not outlive the window, even when a wipe below fails.
    drop_window_key(cfg);
    let slots = if paths.device.exists() { window_slots(&paths.device)? } else { Vec::new() };
    for s in &slots {
        run(&cryptenroll(), "systemd-cryptenroll --wipe-slot (the firmware window's slot)", &[format!("--wipe-slot={s}").as_ref(), paths.device.as_os_str()], None)?;
    }
    let p = cfg.state_dir.join(RECORD);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&p)(e)),
    }
    if !slots.is_empty() {
        tracing::warn!(event = "firmware_window_disarmed", security = true, slots = %slots.join(","), "the firmware window's /var slot was wiped");
    }
    Ok(slots.len())
}

/// The boot-time decision (module docs). Writes [`LAST`] for anything but "not armed" and
/// "waiting". Without a record, window slots found on `/var` (a crash between enrolling and
/// writing the record cannot leave one, since the record is written first; but an unreadable
/// record or a restored header could) are wiped. An expired window (or a clock before its
/// arming) is wiped first, whatever PCR 7 says.
pub fn check(cfg: &Config, paths: &Paths) -> Result<Outcome, WindowError> {
    let armed = match record(&cfg.state_dir) {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => {
            let orphans = if paths.device.exists() { window_slots(&paths.device).unwrap_or_default() } else { Vec::new() };
            if orphans.is_empty() {
                return Ok(Outcome::NotArmed);
            }
            disarm(cfg, paths)?;
            tracing::warn!(event = "firmware_window_orphan_wiped", security = true, slots = %orphans.join(","), "a firmware window slot on /var had no readable record: wiped");
            let outcome = Outcome::Expired { at: now() };
            write_json(&cfg.state_dir.join(LAST), &outcome)?;
            return Ok(outcome);
        }
    };
    let at = now();
    if at > armed.expires_at || at < armed.armed_at {
        disarm(cfg, paths)?;
        tracing::warn!(event = "firmware_window_expired", security = true, "the firmware window expired (or the clock is before its arming): its /var slot was wiped");
        let outcome = Outcome::Expired { at };
        write_json(&cfg.state_dir.join(LAST), &outcome)?;
        return Ok(outcome);
    }
    let (pcr7, log) = match measured(paths) {
        Ok(m) => m,
        // No PCR 7 or log this boot: nothing to judge by; the window waits until its expiry.
        Err(why) => {
            tracing::warn!(event = "firmware_window_unjudged", security = true, "the firmware window is armed but this boot's measurements cannot be read: {why}");
            return Ok(Outcome::Waiting { expires_at: armed.expires_at });
        }
    };
    if hex::encode(&pcr7) == armed.pcr7 {
        return Ok(Outcome::Waiting { expires_at: armed.expires_at });
    }
    let outcome = match judge(&armed, &log) {
        Ok(changed) => {
            let mut args: Vec<String> = vec!["--unlock-tpm2-device=auto".into(), "--tpm2-device=auto".into(), "--tpm2-pcrs=7".into()];
            args.extend(signed_args(paths)?);
            args.push("--wipe-slot=tpm2".into());
            let mut os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
            os.push(paths.device.as_os_str());
            // The window's slot opens the volume for this; the new PCR 7 slot goes in before
            // the others (the stale PCR 7 slot, the window's) are wiped. A failure leaves the
            // record: the next boot tries again, until the expiry wipes the window.
            run(&cryptenroll(), "systemd-cryptenroll --tpm2-pcrs=7 (re-binding /var to the new PCR 7)", &os, None)?;
            let p = cfg.state_dir.join(RECORD);
            std::fs::remove_file(&p).map_err(io(&p))?;
            tracing::warn!(event = "firmware_change_accepted", security = true, pcr7_before = %armed.pcr7, pcr7 = %hex::encode(&pcr7), "PCR 7 changed within the firmware window and the change was accepted ({changed}): /var is bound to the new PCR 7, the window is closed; the agent unlocks the swarm with the window copy of the key and reseals it to the new PCR 7 (without a copy the swarm stays locked until unlocked through the proxy and resealed)");
            Outcome::Accepted { at, changed, boot_id: boot_id() }
        }
        Err(why) => {
            disarm(cfg, paths)?;
            tracing::error!(event = "firmware_change_refused", security = true, pcr7_before = %armed.pcr7, pcr7 = %hex::encode(&pcr7), "PCR 7 changed within the firmware window and the change was refused ({why}): the window's /var slot was wiped; the next boot needs the /var recovery key");
            Outcome::Refused { at, why }
        }
    };
    write_json(&cfg.state_dir.join(LAST), &outcome)?;
    Ok(outcome)
}

/// `/var`'s TPM2 slots as "keyslot N: PCRs a+b (+ signed c)" for the console after a decision.
pub fn tpm2_slots(device: &Path) -> String {
    let Ok(v) = luks_json(device) else {
        return "unreadable".into();
    };
    let pcrs = |t: &serde_json::Value, k: &str| t[k].as_array().map(|a| a.iter().filter_map(|p| p.as_u64()).map(|p| p.to_string()).collect::<Vec<_>>().join("+")).unwrap_or_default();
    let slots: Vec<String> = v["tokens"]
        .as_object()
        .into_iter()
        .flat_map(|t| t.values())
        .filter(|t| t["type"] == "systemd-tpm2")
        .map(|t| format!("keyslot {}: PCRs {} + signed {}", t["keyslots"][0].as_str().unwrap_or("?"), pcrs(t, "tpm2-pcrs"), pcrs(t, "tpm2_pubkey_pcrs")))
        .collect();
    if slots.is_empty() {
        "none".into()
    } else {
        slots.join("; ")
    }
}

/// Read one socket request from `input`: `arm DAYS\n<recovery key>\n` or `disarm\n`.
fn read_request(input: impl Read) -> Result<Request, WindowError> {
    let mut r = std::io::BufReader::new(input.take(4096));
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| WindowError::Request(format!("reading the request: {e}")))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["arm", days] => {
            let days = days.parse().map_err(|_| WindowError::Request(format!("arm {days:?}: not a number of days")))?;
            let mut key = Zeroizing::new(String::new());
            r.read_line(&mut key).map_err(|e| WindowError::Request(format!("reading the request: {e}")))?;
            Ok(Request::Arm { days, key: Zeroizing::new(key.trim().to_string()) })
        }
        ["disarm"] => Ok(Request::Disarm),
        _ => Err(WindowError::Request("the request is `arm DAYS` then the recovery key, or `disarm`".into())),
    }
}

enum Request {
    Arm { days: u32, key: Zeroizing<String> },
    Disarm,
}

/// Run a `swarmseal var firmware-window` command (stdout: the result lines).
pub fn run_command(cfg: &Config, c: WindowCommand) -> Result<(), WindowError> {
    let print_armed = |r: &Record| println!("{ARMED} until {} (unix {}): /var also opens with PCRs {WINDOW_PCRS} + PCR 11 signed until the first boot after a PCR 7 change or after the expiry", utc(r.expires_at), r.expires_at);
    match c {
        WindowCommand::Arm { days, paths } => {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin().take(4096).read_to_end(&mut buf).map_err(|e| WindowError::Request(format!("stdin: {e}")))?;
            let key = std::str::from_utf8(&buf).map_err(|_| VarError::BadKey)?.trim();
            print_armed(&arm(cfg, &paths, key, days)?);
            Ok(())
        }
        WindowCommand::Disarm { paths } => {
            let n = disarm(cfg, &paths)?;
            println!("{DISARMED} ({n} slot(s) wiped)");
            Ok(())
        }
        WindowCommand::Request { paths } => match read_request(std::io::stdin())? {
            Request::Arm { days, key } => {
                print_armed(&arm(cfg, &paths, &key, days)?);
                Ok(())
            }
            Request::Disarm => {
                let n = disarm(cfg, &paths)?;
                println!("{DISARMED} ({n} slot(s) wiped)");
                Ok(())
            }
        },
        WindowCommand::Check { paths } => {
            match check(cfg, &paths)? {
                Outcome::NotArmed => {}
                Outcome::Waiting { expires_at } => println!("firmware window armed, PCR 7 unchanged; it expires {}", utc(expires_at)),
                Outcome::Expired { .. } => println!("firmware window expired (or without a record): its /var slot was wiped"),
                Outcome::Accepted { changed, .. } => {
                    if crate::keystore::Keystore::new(&cfg.state_dir).slot_path(crate::keystore::Slot::Window).exists() {
                        println!("firmware change accepted ({changed}): /var is bound to the new PCR 7; the agent unlocks the swarm with the window copy of the key and reseals it to the new PCR 7");
                    } else {
                        println!("firmware change accepted ({changed}): /var is bound to the new PCR 7; no window copy of the swarm key: the swarm stays locked: unlock it through the proxy with the escrowed key, then POST /swarmseal/v1/reseal");
                    }
                    println!("/var's TPM2 slots now: {}", tpm2_slots(&paths.device));
                }
                Outcome::Refused { why, .. } => println!("firmware change REFUSED ({why}): the window's /var slot was wiped; the next boot asks for the /var recovery key"),
            }
            Ok(())
        }
    }
}

/// Ask the privileged window service at `socket` to arm (`Some((days, key))`) or disarm
/// (`None`). Returns its output lines; Ok only when it says [`ARMED`] / [`DISARMED`].
pub async fn request_via(socket: &Path, arm: Option<(u32, &str)>) -> Result<Vec<String>, crate::var::EnrollError> {
    let req = match arm {
        Some((_, key)) if !is_recovery_key(key) => return Err(crate::var::EnrollError::BadKey),
        Some((days, key)) => Zeroizing::new(format!("arm {days}\n{key}\n")),
        None => Zeroizing::new("disarm\n".to_string()),
    };
    crate::var::ask_service(socket, req.as_bytes(), if arm.is_some() { ARMED } else { DISARMED }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::testing::{signature_list, test_log, variable_data};
    use crate::attest::EV_EFI_VARIABLE_DRIVER_CONFIG;

    const GLOBAL: [u8; 16] = [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c];
    const SECDB: [u8; 16] = [0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f];
    const SHA256_TYPE: [u8; 16] = [0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28];

    /// An EFI_SIGNATURE_LIST of SHA-256 entries (UEFI 2.10, 32.4.1); empty for none.
    fn hashes(entries: &[[u8; 32]]) -> Vec<u8> {
        if entries.is_empty() {
            return Vec::new();
        }
        signature_list(&SHA256_TYPE, &entries.iter().map(|e| &e[..]).collect::<Vec<_>>())
    }

    /// A firmware log's PCR 7 events: SecureBoot, PK, KEK, db, dbx.
    fn log(secure_boot: u8, db: &[[u8; 32]], dbx: &[[u8; 32]]) -> FirmwareLog {
        let ev = |guid: &[u8; 16], name: &str, value: &[u8]| (7u32, EV_EFI_VARIABLE_DRIVER_CONFIG, variable_data(guid, name, value));
        let raw = test_log(&[
            ev(&GLOBAL, "SecureBoot", &[secure_boot]),
            ev(&GLOBAL, "PK", &hashes(&[[1; 32]])),
            ev(&GLOBAL, "KEK", &hashes(&[[2; 32]])),
            ev(&SECDB, "db", &hashes(db)),
            ev(&SECDB, "dbx", &hashes(dbx)),
        ]);
        parse_firmware_log(&raw).unwrap()
    }

    fn armed(l: &FirmwareLog) -> Record {
        let pcr7 = replay(&l.events, l.locality).remove(&7).unwrap();
        Record::from_vars(1_000, 7, &pcr7, &variables(l).unwrap())
    }

    #[test]
    fn a_dbx_update_is_accepted_and_named() {
        let before = log(1, &[[3; 32]], &[]);
        let rec = armed(&before);
        assert_eq!(rec.expires_at, 1_000 + 7 * 86_400);
        assert_eq!(rec.variables["dbx"].1, 0);
        let after = log(1, &[[3; 32]], &[[9; 32], [8; 32]]);
        let said = judge(&rec, &after).unwrap();
        assert!(said.starts_with("dbx changed (0 → 2 entries"), "{said}");
        let same = judge(&rec, &before).unwrap_err();
        assert!(same.contains("none of its events the window judges did"), "{same}");
    }

    /// A dbx that lost entries, or any other PCR 7 event changed (here an EV_EFI_ACTION the
    /// firmware logs when its setup turned DMA protection off), is refused, naming it.
    #[test]
    fn a_shrunk_dbx_or_another_changed_pcr7_event_is_refused() {
        let rec = armed(&log(1, &[[3; 32]], &[[9; 32], [8; 32]]));
        let shrunk = judge(&rec, &log(1, &[[3; 32]], &[[9; 32]])).unwrap_err();
        assert!(shrunk.starts_with("dbx no longer holds 1 of its entries"), "{shrunk}");
        let mut l = log(1, &[[3; 32]], &[[9; 32], [8; 32], [7; 32]]);
        let extra = parse_firmware_log(&test_log(&[(7, 0x0000_0005, b"DMA Protection Disabled".to_vec())])).unwrap();
        l.events.extend(extra.events);
        let e = judge(&rec, &l).unwrap_err();
        assert!(e.starts_with("PCR 7's events other than the Secure Boot variables changed"), "{e}");
    }

    #[test]
    fn secure_boot_off_or_new_keys_are_refused() {
        let rec = armed(&log(1, &[[3; 32]], &[]));
        let off = judge(&rec, &log(0, &[[3; 32]], &[])).unwrap_err();
        assert!(off.starts_with("Secure Boot: off"), "{off}");
        let db = judge(&rec, &log(1, &[[3; 32], [4; 32]], &[])).unwrap_err();
        assert!(db.starts_with("db changed (1 entries") && db.contains("→ 2 entries"), "{db}");
    }

    #[test]
    fn the_window_slot_is_the_token_bound_to_pcrs_2_4_12_only() {
        let luks = serde_json::json!({"tokens": {
            "0": {"type": "systemd-tpm2", "keyslots": ["1"], "tpm2-pcrs": [7], "tpm2_pubkey_pcrs": [11]},
            "1": {"type": "systemd-recovery", "keyslots": ["2"]},
            "2": {"type": "systemd-tpm2", "keyslots": ["3"], "tpm2-pcrs": [2, 4, 12], "tpm2_pubkey_pcrs": [11]},
            "3": {"type": "systemd-tpm2", "keyslots": ["4"], "tpm2-pcrs": [4]},
            "4": {"type": "systemd-tpm2", "keyslots": ["5"], "tpm2-pcrs": [2, 4, 7, 12]}
        }});
        assert_eq!(slots_of(&luks), vec!["3".to_string()]);
        assert!(slots_of(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn requests_are_arm_with_a_key_or_disarm() {
        match read_request(&b"arm 3\nfhkcdjbl-nihbggtc-krkhvvtl-ecdbbtuc-bcrkijcn-lgjbeuij-tbhrclgi-ktibfbuj\n"[..]).unwrap() {
            Request::Arm { days, key } => assert_eq!((days, key.len()), (3, 71)),
            Request::Disarm => panic!("arm"),
        }
        assert!(matches!(read_request(&b"disarm\n"[..]).unwrap(), Request::Disarm));
        assert!(read_request(&b"arm x\n"[..]).is_err());
        assert!(read_request(&b"rm -rf\n"[..]).is_err());
    }

    /// The boot-time flow against stand-ins for systemd-cryptenroll and cryptsetup (they record
    /// their arguments): armed; the same PCR 7 waits; a dbx change is accepted and re-binds
    /// /var to PCR 7 (one cryptenroll, the record gone, `last` says so); Secure Boot off is
    /// refused and only the window's slot (found in luksDump's JSON) is wiped; an expired
    /// window is wiped. One test: the tools are chosen by environment variables.
    #[test]
    fn check_waits_accepts_refuses_and_expires() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let w = d.path();
        let tool = |name: &str, body: &str| {
            let p = w.join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho \"$*\" >>{}/{name}.argv\n{body}\n", w.display())).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let luks = r#"{"tokens":{"0":{"type":"systemd-tpm2","keyslots":["1"],"tpm2-pcrs":[7]},"2":{"type":"systemd-tpm2","keyslots":["3"],"tpm2-pcrs":[2,4,12]}}}"#;
        std::env::set_var("SWARMSEAL_CRYPTENROLL", tool("cryptenroll", "cat >/dev/null; exit 0"));
        std::env::set_var("SWARMSEAL_CRYPTSETUP", tool("cryptsetup", &format!("cat >/dev/null; [ \"$1\" = luksDump ] && echo '{luks}'; exit 0")));
        let argv = |name: &str| std::fs::read_to_string(w.join(format!("{name}.argv"))).unwrap_or_default();
        let device = w.join("var.luks");
        std::fs::write(&device, b"").unwrap();
        let paths = Paths { device: device.clone(), pcr7: w.join("pcr7"), firmware_log: w.join("log"), tpm2_public_key: w.join("pcr-public-key.pem") };
        std::fs::write(&paths.tpm2_public_key, b"PEM").unwrap();
        let boot = |l: &[u8]| {
            let parsed = parse_firmware_log(l).unwrap();
            std::fs::write(w.join("log"), l).unwrap();
            std::fs::write(w.join("pcr7"), format!("{}\n", hex::encode(replay(&parsed.events, parsed.locality).remove(&7).unwrap()))).unwrap();
        };
        let raw = |sb: u8, dbx: &[[u8; 32]]| {
            let ev = |guid: &[u8; 16], name: &str, value: &[u8]| (7u32, EV_EFI_VARIABLE_DRIVER_CONFIG, variable_data(guid, name, value));
            test_log(&[ev(&GLOBAL, "SecureBoot", &[sb]), ev(&GLOBAL, "PK", &hashes(&[[1; 32]])), ev(&GLOBAL, "KEK", &hashes(&[[2; 32]])), ev(&SECDB, "db", &hashes(&[[3; 32]])), ev(&SECDB, "dbx", &hashes(dbx))])
        };
        let cfg = Config { state_dir: w.join("state"), ..Default::default() };
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        const KEY: &str = "fhkcdjbl-nihbggtc-krkhvvtl-ecdbbtuc-bcrkijcn-lgjbeuij-tbhrclgi-ktibfbuj";

        // No record, but a window slot on /var: wiped.
        assert!(matches!(check(&cfg, &paths).unwrap(), Outcome::Expired { .. }));
        assert_eq!(argv("cryptenroll"), format!("--wipe-slot=3 {}\n", device.display()));
        boot(&raw(0, &[]));
        assert!(matches!(arm(&cfg, &paths, KEY, 7), Err(WindowError::NotArmable(_))), "Secure Boot off: no window");
        boot(&raw(1, &[]));
        assert!(matches!(arm(&cfg, &paths, KEY, 31), Err(WindowError::Request(_))));
        assert!(matches!(arm(&cfg, &paths, "not a key", 7), Err(WindowError::Var(VarError::BadKey))));
        let rec = arm(&cfg, &paths, KEY, 7).unwrap();
        assert!(argv("cryptenroll").contains("--unlock-key-file=/dev/stdin --tpm2-device=auto --tpm2-pcrs=2+4+12 --tpm2-public-key="), "{}", argv("cryptenroll"));
        assert!(argv("cryptenroll").contains("--tpm2-public-key-pcrs=11"), "{}", argv("cryptenroll"));
        assert_eq!(record(&cfg.state_dir).unwrap(), Some(rec.clone()));
        // The same PCR 7: the window waits.
        assert_eq!(check(&cfg, &paths).unwrap(), Outcome::Waiting { expires_at: rec.expires_at });
        // A dbx update: accepted, /var bound to the new PCR 7, the window closed.
        boot(&raw(1, &[[9; 32]]));
        match check(&cfg, &paths).unwrap() {
            Outcome::Accepted { changed, boot_id: b, .. } => {
                assert!(changed.starts_with("dbx changed (0 → 1 entries"), "{changed}");
                assert_eq!(b, boot_id(), "the decision names the boot that took it");
            }
            o => panic!("{o:?}"),
        }
        assert!(accepted_this_boot(&cfg.state_dir).is_some());
        assert!(argv("cryptenroll").lines().last().unwrap().starts_with("--unlock-tpm2-device=auto --tpm2-device=auto --tpm2-pcrs=7 --tpm2-public-key="), "{}", argv("cryptenroll"));
        assert!(argv("cryptenroll").lines().last().unwrap().contains("--wipe-slot=tpm2"));
        assert_eq!(record(&cfg.state_dir).unwrap(), None);
        assert!(matches!(last(&cfg.state_dir), Some(Outcome::Accepted { .. })));
        // Armed again (with a window copy of the swarm key), then Secure Boot off: refused, only
        // the window's slot 3 wiped, and the window copy of the key deleted with it.
        arm(&cfg, &paths, KEY, 7).unwrap();
        let copy = crate::keystore::Keystore::new(&cfg.state_dir).slot_path(crate::keystore::Slot::Window);
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::write(&copy, b"{}").unwrap();
        boot(&raw(0, &[[9; 32]]));
        match check(&cfg, &paths).unwrap() {
            Outcome::Refused { why, .. } => assert!(why.starts_with("Secure Boot: off"), "{why}"),
            o => panic!("{o:?}"),
        }
        assert!(!copy.exists(), "a refused change deletes the window copy of the swarm key");
        assert_eq!(argv("cryptenroll").lines().last(), Some(format!("--wipe-slot=3 {}", device.display()).as_str()));
        assert_eq!(record(&cfg.state_dir).unwrap(), None);
        // Armed, then past its expiry with PCR 7 unchanged: wiped.
        boot(&raw(1, &[[9; 32]]));
        let mut rec = arm(&cfg, &paths, KEY, 1).unwrap();
        rec.expires_at = 1;
        write_json(&cfg.state_dir.join(RECORD), &rec).unwrap();
        assert!(matches!(check(&cfg, &paths).unwrap(), Outcome::Expired { .. }));
        assert_eq!(record(&cfg.state_dir).unwrap(), None);
        // Armed with a window copy, then a disarm whose wipe fails: the copy is deleted anyway
        // (first), the error is returned.
        arm(&cfg, &paths, KEY, 7).unwrap();
        std::fs::write(&copy, b"{}").unwrap();
        tool("cryptenroll", "cat >/dev/null; echo 'wipe failed' >&2; exit 1");
        assert!(disarm(&cfg, &paths).is_err(), "the failed wipe is an error");
        assert!(!copy.exists(), "a disarm deletes the window copy of the swarm key before the wipes that can fail");
        std::env::remove_var("SWARMSEAL_CRYPTENROLL");
        std::env::remove_var("SWARMSEAL_CRYPTSETUP");
    }

    /// The window copy of the unlock key counts only for an `accepted` decision that carries
    /// this boot's ID: not another boot's, not one without an ID, not a refusal.
    #[test]
    fn only_an_accepted_decision_of_this_boot_counts() {
        let d = tempfile::tempdir().unwrap();
        let write = |o: &Outcome| write_json(&d.path().join(LAST), o).unwrap();
        assert_eq!(accepted_this_boot(d.path()), None, "no decision");
        let this = boot_id().expect("a readable boot ID");
        write(&Outcome::Accepted { at: 1, changed: "dbx changed".into(), boot_id: Some(this.clone()) });
        assert_eq!(accepted_this_boot(d.path()).as_deref(), Some("dbx changed"));
        assert!(std::fs::read_to_string(d.path().join(LAST)).unwrap().contains(&this));
        write(&Outcome::Accepted { at: 1, changed: "dbx changed".into(), boot_id: Some("0e3c0ae4-66c4-4d8a-a2b1-5f2d9c4b1e77".into()) });
        assert_eq!(accepted_this_boot(d.path()), None, "another boot's decision");
        std::fs::write(d.path().join(LAST), br#"{"outcome":"accepted","at":1,"changed":"dbx changed"}"#).unwrap();
        assert!(matches!(last(d.path()), Some(Outcome::Accepted { boot_id: None, .. })), "an older record still reads");
        assert_eq!(accepted_this_boot(d.path()), None, "a decision without a boot ID");
        write(&Outcome::Refused { at: 1, why: "Secure Boot: off".into() });
        assert_eq!(accepted_this_boot(d.path()), None, "a refusal");
    }

    /// The real OVMF log of the image (QEMU scenario 1): armed on it, the same log is judged
    /// "unchanged", and the record names its dbx.
    #[test]
    fn the_real_ovmf_log_arms_a_window() {
        let l = parse_firmware_log(include_bytes!("attest/testdata/ovmf-binary_bios_measurements")).unwrap();
        let rec = armed(&l);
        for v in ["PK", "KEK", "db", "dbx"] {
            assert!(rec.variables.contains_key(v), "{v} measured: {rec:?}");
        }
        assert!(judge(&rec, &l).unwrap_err().contains("none of its events"));
    }
}
