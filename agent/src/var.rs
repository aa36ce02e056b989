//! `/var` on the appliance: a LUKS2 volume that systemd-repart makes on first
//! boot, its volume key sealed to this machine's TPM (`Encrypt=tpm2`: PCR 7
//! literal, and PCR 11 signed by the fleet's PCR key, since the UKI carries a
//! `.pcrpkey`: a boot chain the fleet did not sign does not open `/var`).
//! Its recovery path, run as privileged oneshots outside the sandboxed agent:
//!
//! - `swarmseal var escrow-recovery-key` (first boot, `swarmseal-var-recovery.service`):
//!   enrolls a LUKS2 recovery key with `systemd-cryptenroll --recovery-key
//!   --unlock-tpm2-device=auto --wipe-slot=recovery` (systemd ≥ 256; the TPM
//!   opens the volume to add the slot, older recovery slots are replaced) and
//!   writes it age-encrypted to `<state_dir>/escrow/var-recovery-key.age`,
//!   served to admins at `GET /swarmseal/v1/escrow/var-recovery-key`. The
//!   plaintext key exists only in the pipe from systemd-cryptenroll and in
//!   zeroized memory.
//! - `swarmseal var enroll-tpm` (the recovery key on stdin): after the disk was
//!   opened with the recovery key on another machine (or after a TPM clear or
//!   a firmware change that moved PCR 7), bind `/var` to this machine's TPM
//!   again, as systemd-repart bound it: `systemd-cryptenroll
//!   --unlock-key-file=/dev/stdin --tpm2-device=auto --tpm2-pcrs=7
//!   --tpm2-public-key=/etc/swarmseal/pcr-public-key.pem --tpm2-public-key-pcrs=11`
//!   (after `--wipe-slot=tpm2`), then a new recovery key replaces the one used.
//!
//! Where the recovery key is typed: systemd-cryptsetup asks for a passphrase
//! for disk `var` on the console when the TPM refuses; a recovery key is
//! accepted wherever a passphrase is.

use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::config::Config;
use crate::escrow::EscrowError;

/// The `/var` partition (GPT label `var`, set by `usr/lib/repart.d/50-var.conf`).
pub const DEFAULT_DEVICE: &str = "/dev/disk/by-partlabel/var";

/// The root-only socket of `swarmseal-var-enroll.socket`: each connection runs
/// `swarmseal var enroll-tpm` (privileged) with the connection as stdin and
/// stdout; the sandboxed agent forwards `POST /swarmseal/v1/var/enroll-tpm` to it.
pub const ENROLL_SOCKET: &str = "/run/swarmseal-var-enroll.sock";

/// The line `swarmseal var enroll-tpm` prints on success.
pub const ENROLLED: &str = "/var is bound to this machine's TPM";

/// Why [`enroll_tpm_via`] did not bind `/var` (`Display`: the operator's sentence; the API
/// layer picks the HTTP status, `boot/api.rs`).
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The body is not a recovery key (nothing was sent to the service).
    #[error("{}", VarError::BadKey)]
    BadKey,
    /// No enroll service at the socket (not the appliance image).
    #[error("{}: {source} (swarmseal-var-enroll.socket exists on the appliance image only)", socket.display())]
    NoService { socket: PathBuf, source: std::io::Error },
    /// The service closed the connection without a line.
    #[error("the enroll service closed the connection without an answer: another re-enrollment is running (one at a time), or it failed to start (journalctl -u 'swarmseal-var-enroll@*')")]
    NoAnswer,
    /// Refused before anything changed (wrong key), or bound but the recovery key not
    /// replaced (the service's lines say which; sending the same key again is safe).
    #[error("the enroll service did not finish: {0}")]
    NotFinished(String),
    /// Writing to or reading from the service failed.
    #[error("talking to the enroll service: {0}")]
    Io(std::io::Error),
    /// systemd-cryptenroll did not answer within [`ENROLL_TIMEOUT`].
    #[error("systemd-cryptenroll did not finish within {} s", ENROLL_TIMEOUT.as_secs())]
    Timeout,
}

/// How long [`enroll_tpm_via`] waits for the enroll service (systemd-cryptenroll unlocks with
/// the recovery key's PBKDF, then binds the TPM).
pub const ENROLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Ask the privileged enroll service (at `socket`) to bind `/var` to this TPM
/// with `recovery_key`. Returns its output lines; Ok only when it says [`ENROLLED`].
pub async fn enroll_tpm_via(socket: &Path, recovery_key: &str) -> Result<Vec<String>, EnrollError> {
    if !is_recovery_key(recovery_key) {
        return Err(EnrollError::BadKey);
    }
    ask_service(socket, recovery_key.as_bytes(), ENROLLED).await
}

/// Send `request` to a privileged socket-activated service at `socket` (one connection: the
/// request, then its output lines until it closes, within [`ENROLL_TIMEOUT`]); Ok only when a
/// line starts with `done`.
pub(crate) async fn ask_service(socket: &Path, request: &[u8], done: &str) -> Result<Vec<String>, EnrollError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.map_err(|source| EnrollError::NoService { socket: socket.to_path_buf(), source })?;
    s.write_all(request).await.map_err(EnrollError::Io)?;
    s.shutdown().await.map_err(EnrollError::Io)?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(ENROLL_TIMEOUT, (&mut s).take(64 << 10).read_to_end(&mut out)).await;
    let lines: Vec<String> = String::from_utf8_lossy(&out).lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect();
    match read {
        Ok(Ok(_)) if lines.iter().any(|l| l.starts_with(done)) => Ok(lines),
        Ok(Ok(_)) if lines.is_empty() => Err(EnrollError::NoAnswer),
        Ok(Ok(_)) => Err(EnrollError::NotFinished(lines.join("; "))),
        Ok(Err(e)) => Err(EnrollError::Io(e)),
        Err(_) => Err(EnrollError::Timeout),
    }
}

/// `swarmseal var …`
#[derive(Debug, clap::Subcommand)]
pub enum VarCommand {
    /// Enroll a recovery key for /var and escrow it, age-encrypted, for the operator
    /// (needs root, the TPM and an escrow recipient).
    EscrowRecoveryKey {
        /// The LUKS2 block device.
        #[arg(long, value_name = "DEV", default_value = DEFAULT_DEVICE)]
        device: PathBuf,
        /// Replace an existing escrowed recovery key (the old one stops working).
        #[arg(long)]
        force: bool,
    },
    /// Bind /var to this machine's TPM again, unlocking with the recovery key read
    /// from stdin (after the disk moved or the TPM was cleared).
    EnrollTpm {
        /// The LUKS2 block device.
        #[arg(long, value_name = "DEV", default_value = DEFAULT_DEVICE)]
        device: PathBuf,
        /// PCRs the new TPM2 slot is bound to literally (systemd-cryptenroll --tpm2-pcrs=).
        #[arg(long, value_name = "PCRS", default_value = "7")]
        tpm2_pcrs: String,
        /// The fleet's PCR-signing public key (PEM): the slot also trusts the PCRs of
        /// --tpm2-public-key-pcrs when this key signed their values (TPM2_PolicyAuthorize).
        /// A missing file or an empty value: no signed binding.
        #[arg(long, value_name = "PEM", default_value = "/etc/swarmseal/pcr-public-key.pem")]
        tpm2_public_key: PathBuf,
        /// PCRs covered by the fleet's signature (systemd-cryptenroll --tpm2-public-key-pcrs=).
        #[arg(long, value_name = "PCRS", default_value = "11")]
        tpm2_public_key_pcrs: String,
    },
    /// A planned Secure Boot dbx or firmware update without a console visit: arm a window (a
    /// second /var slot without PCR 7), and at boot accept the change and re-bind /var to the
    /// new PCR 7 (see `crate::firmware`).
    FirmwareWindow {
        #[command(subcommand)]
        command: crate::firmware::WindowCommand,
    },
}

/// Errors of the `/var` recovery commands.
#[derive(Debug, thiserror::Error)]
pub enum VarError {
    #[error("no escrow recipient: set the credential swarmseal.escrow-recipient (age1…) or `[escrow] recipient`; without it /var gets no recovery key an operator could hold")]
    NoRecipient,
    #[error("{0}: no such block device (this command runs on the appliance, where /var is the partition labelled `var`; or pass --device)")]
    NoDevice(PathBuf),
    #[error("{what} failed ({status}): {stderr}")]
    Cryptenroll { what: &'static str, status: String, stderr: String },
    #[error("systemd-cryptenroll finished but printed no recovery key; nothing was escrowed (run again: the next run replaces the recovery slot)")]
    NoKey,
    #[error("stdin is not a recovery key: expected 8 groups of 8 letters separated by '-' (as printed by `age -d` of var-recovery-key.age)")]
    BadKey,
    #[error("this recovery key does not open /var (is it this disk's var-recovery-key.age?); nothing was changed")]
    KeyRefused,
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error(transparent)]
    Escrow(#[from] EscrowError),
}

/// The escrow file of the `/var` recovery key.
pub fn escrow_path(state_dir: &Path) -> PathBuf {
    state_dir.join("escrow").join("var-recovery-key.age")
}

/// The cryptsetup binary (`SWARMSEAL_CRYPTSETUP` overrides, for tests).
pub(crate) fn cryptsetup() -> String {
    std::env::var("SWARMSEAL_CRYPTSETUP").unwrap_or_else(|_| "cryptsetup".into())
}

/// The systemd-cryptenroll binary (`SWARMSEAL_CRYPTENROLL` overrides, for tests).
pub(crate) fn cryptenroll() -> String {
    std::env::var("SWARMSEAL_CRYPTENROLL").unwrap_or_else(|_| "systemd-cryptenroll".into())
}

/// A systemd recovery key: 64 modhex characters in 8 groups of 8, joined by `-`.
pub fn is_recovery_key(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 8 && groups.iter().all(|g| g.len() == 8 && g.bytes().all(|b| b"cbdefghijklnrtuv".contains(&b)))
}

/// The recovery key in systemd-cryptenroll's stdout (the last line that is one).
fn find_key(stdout: &[u8]) -> Option<Zeroizing<String>> {
    let s = std::str::from_utf8(stdout).ok()?;
    s.lines().rev().map(str::trim).find(|l| is_recovery_key(l)).map(|l| Zeroizing::new(l.to_string()))
}

fn run_cryptenroll(what: &'static str, args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>, VarError> {
    run_tool(&cryptenroll(), what, args, stdin)
}

/// Run `bin args` ([`swarmseal_common::tool::run`]), `stdin` piped in; stdout returned
/// (zeroized on drop, never in an error), stderr only in the error (the key is never on
/// stderr). A non-zero exit is [`VarError::Cryptenroll`] described by `what`.
pub(crate) fn run_tool(bin: &str, what: &'static str, args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>, VarError> {
    use swarmseal_common::tool::{self, Stdout, ToolError};
    match tool::run(bin, args, stdin, Stdout::Secret) {
        Ok(o) => Ok(o.stdout),
        Err(ToolError::Spawn { tool, source }) => Err(VarError::Spawn(tool, source)),
        Err(ToolError::Failed { status, output, .. }) => Err(VarError::Cryptenroll { what, status, stderr: output }),
    }
}

/// The escrow recipient: the credential `swarmseal.escrow-recipient` wins over the config.
fn recipient(cfg: &Config) -> Result<String, VarError> {
    let cred = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| PathBuf::from(d).join("swarmseal.escrow-recipient"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let r = cred.or_else(|| cfg.escrow.recipient.clone()).ok_or(VarError::NoRecipient)?;
    crate::escrow::parse_recipient(&r)?;
    Ok(r)
}

/// `swarmseal var escrow-recovery-key`: enroll a recovery key (replacing older
/// recovery slots) and write it age-encrypted to [`escrow_path`]. Idempotent:
/// does nothing when the escrow file exists (unless `force`). The volume is opened with
/// `unlock` when given (a key that opens it, on stdin: `--unlock-key-file=/dev/stdin`), else
/// with the TPM (`--unlock-tpm2-device=auto`).
pub fn escrow_recovery_key(cfg: &Config, device: &Path, force: bool, unlock: Option<&str>) -> Result<PathBuf, VarError> {
    let file = escrow_path(&cfg.state_dir);
    if file.exists() && !force {
        tracing::info!(event = "var_recovery_key", file = %file.display(), "the /var recovery key is already escrowed");
        return Ok(file);
    }
    let r = recipient(cfg)?;
    if !device.exists() {
        return Err(VarError::NoDevice(device.to_path_buf()));
    }
    let how = if unlock.is_some() { "--unlock-key-file=/dev/stdin" } else { "--unlock-tpm2-device=auto" };
    let out = run_cryptenroll(
        "systemd-cryptenroll --recovery-key",
        &["--recovery-key".as_ref(), how.as_ref(), "--wipe-slot=recovery".as_ref(), device.as_os_str()],
        unlock.map(str::as_bytes),
    )?;
    let key = find_key(&out).ok_or(VarError::NoKey)?;
    crate::escrow::write_secret(&file, &r, key.as_bytes())?;
    tracing::info!(event = "var_recovery_key", security = true, file = %file.display(), device = %device.display(), "a /var recovery key was enrolled and escrowed (age-encrypted); older recovery slots were removed");
    Ok(file)
}

/// How `swarmseal var enroll-tpm` binds the new TPM2 slot.
#[derive(Debug, Clone)]
pub struct TpmBinding {
    /// PCRs bound literally (`--tpm2-pcrs=`), e.g. "7".
    pub pcrs: String,
    /// The fleet's PCR-signing public key and the PCRs it signs (`--tpm2-public-key=`,
    /// `--tpm2-public-key-pcrs=`); `None`: no signed binding (`--tpm2-public-key=` empty).
    pub signed: Option<(PathBuf, String)>,
}

impl TpmBinding {
    fn args(&self) -> Vec<String> {
        let mut a = vec![format!("--tpm2-pcrs={}", self.pcrs)];
        match &self.signed {
            Some((key, pcrs)) => {
                a.push(format!("--tpm2-public-key={}", key.display()));
                a.push(format!("--tpm2-public-key-pcrs={pcrs}"));
            }
            // Empty: systemd-cryptenroll (≥ 256) would otherwise bind to the UKI-provided
            // /run/systemd/tpm2-pcr-public-key.pem by default.
            None => a.push("--tpm2-public-key=".into()),
        }
        a
    }

    /// Human form, e.g. "PCRs 7 + PCRs 11 signed by /etc/swarmseal/pcr-public-key.pem".
    pub fn describe(&self) -> String {
        match &self.signed {
            Some((key, pcrs)) => format!("PCRs {} + PCRs {pcrs} signed by {}", self.pcrs, key.display()),
            None => format!("PCRs {}", self.pcrs),
        }
    }
}

/// `swarmseal var enroll-tpm`: `recovery_key` opens the volume, a new TPM2 slot
/// bound as `binding` says replaces the old TPM2 slot(s). Three steps, because
/// systemd-cryptenroll treats a TPM2 slot with the same PCR policy digest as
/// "already enrolled" (PCR 7 is the same on every machine with the same
/// firmware), which would keep the slot sealed under the old machine's SRK:
/// 1. `cryptsetup open --test-passphrase --key-file=-`: the key must open `/var`
///    (nothing changes otherwise);
/// 2. `systemd-cryptenroll --wipe-slot=tpm2`: the stale slot goes (the recovery
///    key still opens `/var` if step 3 fails);
/// 3. `systemd-cryptenroll --unlock-key-file=/dev/stdin --tpm2-device=auto --tpm2-pcrs=PCRS
///    [--tpm2-public-key=PEM --tpm2-public-key-pcrs=PCRS]`. Enrolling a signed binding needs
///    no signature now (only the key goes into the policy), so it works after the agent's
///    phase lock moved PCR 11.
pub fn enroll_tpm(device: &Path, recovery_key: &str, binding: &TpmBinding) -> Result<(), VarError> {
    if !is_recovery_key(recovery_key) {
        return Err(VarError::BadKey);
    }
    if !device.exists() {
        return Err(VarError::NoDevice(device.to_path_buf()));
    }
    run_tool(&cryptsetup(), "cryptsetup open --test-passphrase", &["open".as_ref(), "--test-passphrase".as_ref(), "--key-file=-".as_ref(), device.as_os_str()], Some(recovery_key.as_bytes()))
        .map_err(|e| match e {
            VarError::Cryptenroll { .. } => VarError::KeyRefused,
            e => e,
        })?;
    run_cryptenroll("systemd-cryptenroll --wipe-slot=tpm2", &["--unlock-key-file=/dev/stdin".as_ref(), "--wipe-slot=tpm2".as_ref(), device.as_os_str()], Some(recovery_key.as_bytes()))?;
    let bind = binding.args();
    let mut args: Vec<&std::ffi::OsStr> = vec!["--unlock-key-file=/dev/stdin".as_ref(), "--tpm2-device=auto".as_ref()];
    args.extend(bind.iter().map(|a| std::ffi::OsStr::new(a.as_str())));
    args.push(device.as_os_str());
    run_cryptenroll("systemd-cryptenroll --tpm2-device=auto", &args, Some(recovery_key.as_bytes()))?;
    tracing::info!(event = "var_tpm_enrolled", security = true, device = %device.display(), binding = %binding.describe(), "/var is bound to this machine's TPM again");
    Ok(())
}

/// Run a `swarmseal var` command.
pub fn run(cfg: &Config, c: VarCommand) -> Result<(), VarError> {
    match c {
        // Run by the CLI through `crate::firmware::run_command` (its own error type).
        VarCommand::FirmwareWindow { .. } => Err(VarError::Spawn("var firmware-window".into(), std::io::Error::other("dispatched by the CLI"))),
        VarCommand::EscrowRecoveryKey { device, force } => {
            let p = escrow_recovery_key(cfg, &device, force, None)?;
            println!("{}", p.display());
            Ok(())
        }
        VarCommand::EnrollTpm { device, tpm2_pcrs, tpm2_public_key, tpm2_public_key_pcrs } => {
            // At most a little more than a key: anything longer is not one.
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin().take(4096).read_to_end(&mut buf).map_err(|e| VarError::Spawn("stdin".into(), e))?;
            let key = std::str::from_utf8(&buf).map_err(|_| VarError::BadKey)?.trim();
            let signed = (!tpm2_public_key.as_os_str().is_empty() && tpm2_public_key.is_file()).then(|| (tpm2_public_key.clone(), tpm2_public_key_pcrs.clone()));
            let binding = TpmBinding { pcrs: tpm2_pcrs, signed };
            enroll_tpm(&device, key, &binding)?;
            // The old recovery key was typed on a console and sent over the
            // network: replace it, escrowed to the same recipient. The old key
            // opens the volume for that (the new TPM2 slot may be bound to a
            // signed PCR 11 this boot has moved past with the phase lock).
            // ENROLLED only once all of it is done: the agent answers 200 on that line.
            let rotated = match escrow_recovery_key(cfg, &device, true, Some(key)) {
                Ok(p) => format!("a new /var recovery key replaced the one used for this recovery: {}", p.display()),
                Err(VarError::NoRecipient) => "no escrow recipient: the recovery key used for this recovery stays valid".into(),
                Err(e) => {
                    println!("the recovery key was not replaced ({e}), although /var's new TPM2 slot is enrolled ({}): send the same recovery key again (it still opens /var)", binding.describe());
                    return Err(e);
                }
            };
            println!("{ENROLLED} ({})", binding.describe());
            println!("{rotated}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "fhkcdjbl-nihbggtc-krkhvvtl-ecdbbtuc-bcrkijcn-lgjbeuij-tbhrclgi-ktibfbuj";

    #[test]
    fn recovery_key_format() {
        assert!(is_recovery_key(KEY));
        assert!(!is_recovery_key(&KEY[..70]));
        assert!(!is_recovery_key(&KEY.replace('f', "a")), "a is not modhex");
        assert!(!is_recovery_key(&KEY.to_uppercase()));
        assert!(!is_recovery_key(""));
    }

    #[test]
    fn key_found_in_cryptenroll_stdout() {
        let out = format!("{KEY}\n");
        assert_eq!(find_key(out.as_bytes()).as_deref().map(String::as_str), Some(KEY));
        assert!(find_key(b"no key here\n").is_none());
    }

    #[test]
    fn escrow_needs_a_recipient_and_a_device() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.state_dir = d.path().to_path_buf();
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        let e = escrow_recovery_key(&cfg, Path::new("/nonexistent/var"), false, None).unwrap_err();
        assert!(matches!(e, VarError::NoRecipient), "{e}");
        cfg.escrow.recipient = Some(age::x25519::Identity::generate().to_public().to_string());
        let e = escrow_recovery_key(&cfg, Path::new("/nonexistent/var"), false, None).unwrap_err();
        assert!(matches!(e, VarError::NoDevice(_)), "{e}");
        assert_eq!(crate::cli::Exit::from(&e), crate::cli::Exit::Usage);
        assert!(!escrow_path(d.path()).exists());
        let e = enroll_tpm(Path::new("/nonexistent/var"), "not a key", &TpmBinding { pcrs: "7".into(), signed: None }).unwrap_err();
        assert!(matches!(e, VarError::BadKey), "{e}");
    }

    /// The tool's failure keeps this module's message (what failed, status, stderr) and never
    /// shows its stdout, where systemd-cryptenroll prints the key.
    #[test]
    fn a_failed_tool_names_the_step_and_hides_its_stdout() {
        let args: Vec<&std::ffi::OsStr> = ["-c", "cat; echo refused >&2; exit 2"].iter().map(std::ffi::OsStr::new).collect();
        let e = run_tool("sh", "systemd-cryptenroll --tpm2-device=auto", &args, Some(KEY.as_bytes())).unwrap_err();
        assert_eq!(e.to_string(), "systemd-cryptenroll --tpm2-device=auto failed (exit status: 2): refused");
        let out = run_tool("cat", "cat", &[], Some(KEY.as_bytes())).unwrap();
        assert_eq!(&out[..], KEY.as_bytes());
        let e = run_tool("/nonexistent/systemd-cryptenroll", "x", &[], None).unwrap_err();
        assert!(matches!(e, VarError::Spawn(..)) && e.to_string().starts_with("cannot run /nonexistent/systemd-cryptenroll: "), "{e}");
    }
}
