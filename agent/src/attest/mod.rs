//! Remote attestation: the answer of `GET /swarmseal/v1/attest?nonce=HEX` ([`Answer`], made by
//! the agent's TPM side, `swarmseal_tpm::tpm::Tpm::quote`) and `swarmseal fleet attest`, the
//! verifier that runs on the operator's machine: pure Rust, no TPM and no libtss2 (the
//! structures are parsed here from TPM 2.0 Part 2: 10.12.8 TPMS_ATTEST, 11.3.4
//! TPMT_SIGNATURE, 12.2.5 TPM2B_PUBLIC; the signature is checked with ring).
//!
//! Per manager, one row per check ([`Check`]): the quote's signature by the AK; the nonce
//! (fresh random bytes per run); the quoted PCR digest is SHA-256 of the reported values; the
//! AK is on the TPM whose EK certificate chains to the operator's `--ek-ca` (credential
//! activation, `activate`), and the one pinned for this context on first contact (one file
//! per context; without `--ek-ca` the pin alone, TOFU); the
//! event logs (firmware TCG log, systemd's `tpm2-measure.log`) replay to the quoted PCRs;
//! PCR 11 before swarmseal's phase marker is a value the fleet's PCR-signing key signed; the
//! phase marker is there exactly once; Secure Boot is on with the fleet's keys (db and the
//! authority that verified the boot applications). See docs/attestation.md.
//!
//! Files: `tpm2` (TPM structures), `log` (event logs, replay), `secure_boot` (PCR 7),
//! `activate` (the EK certificate's chain, TPM2_MakeCredential),
//! `verify` (the checks), this file (the answer, the command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use swarmseal_common::signing::SigningKey;

use crate::fleet::{answer_message, empty, FleetError, Manager};

mod activate;
mod log;
mod secure_boot;
mod tpm2;
mod verify;

pub use activate::{check_ek_cert, ek_public_key, load_ek_ca, make_credential, secret_matches, Activation, Credential, EkIdentity, EkKey};
pub use log::{parse_firmware_log, parse_measure_log, replay, Event, FirmwareLog, EV_EFI_VARIABLE_DRIVER_CONFIG};
pub use secure_boot::{describe_cert, secure_boot, secure_boot_keys, variables, Variables, EV_EFI_VARIABLE_AUTHORITY};
/// Synthetic firmware logs for other modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) use super::log::test_log;
    pub(crate) use super::secure_boot::tests::{signature_list, variable_data};
}
pub use tpm2::{parse_ak_public, parse_attest, verify_quote, AkPublic, QuoteInfo};
pub use verify::{verify, Check, Expect, Outcome};

/// The format name of [`Answer`].
pub const FORMAT: &str = "swarmseal.attest";

/// The PCR systemd-measure signs (the UKI's measurements, `.pcrsig`).
pub const SIGNED_PCR: u8 = 11;

/// One file the agent returns (base64), or why it could not.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blob {
    /// The file's bytes, base64 (RFC 4648, with padding); `null` when absent.
    pub base64: Option<String>,
    /// Why there is no file (`null` when there is).
    pub absent: Option<String>,
}

impl Blob {
    /// The bytes, or the reason there are none.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match &self.base64 {
            Some(b) => B64.decode(b).map_err(|e| format!("not base64: {e}")),
            None => Err(self.absent.clone().unwrap_or_else(|| "absent".into())),
        }
    }

    /// A file's contents, or why it could not be read.
    pub fn read(path: &Path) -> Blob {
        match std::fs::read(path) {
            Ok(b) => Blob { base64: Some(B64.encode(b)), absent: None },
            Err(e) => Blob { base64: None, absent: Some(format!("cannot read {}: {e}", path.display())) },
        }
    }
}

/// `GET /swarmseal/v1/attest?nonce=HEX` (JSON; docs/attestation.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// [`FORMAT`].
    pub format: String,
    /// 1.
    pub version: u32,
    /// The marshalled TPMS_ATTEST of TPM2_Quote (TPM 2.0 Part 3, 18.4), base64.
    pub attest: String,
    /// Its TPMT_SIGNATURE (ECDSA P-256, SHA-256), base64.
    pub signature: String,
    /// The AK's TPM2B_PUBLIC, base64.
    pub ak_public: String,
    /// The quoted sha256 PCRs: index → value (hex, 32 bytes).
    pub pcrs: BTreeMap<u8, String>,
    /// The PCR the agent extends with its phase marker after the boot's unlock decision.
    pub phase_pcr: u8,
    /// The EK certificate (DER) from NV 0x01c00002 (RSA) or 0x01c0000a (ECC).
    pub ek_certificate: Blob,
    /// The firmware's TCG event log (`binary_bios_measurements`).
    pub firmware_log: Blob,
    /// systemd's `tpm2-measure.log` (JSON-SEQ, TCG CEL records).
    pub measure_log: Blob,
    /// systemd's PCR signature file (`tpm2-pcr-signature.json`, the UKI's `.pcrsig`).
    pub pcr_signature: Blob,
    /// The image version (IMAGE_VERSION of os-release), when known.
    pub image_version: Option<String>,
}

/// Extend `old` with `digest` in a sha256 bank (TPM 2.0 Part 3, 22.2 TPM2_PCR_Extend).
pub fn extend(old: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(old);
    h.update(digest);
    h.finalize().to_vec()
}


// ---- swarmseal fleet attest ---------------------------------------------------------------

/// `swarmseal fleet attest`
#[derive(Debug, clap::Args)]
pub struct AttestArgs {
    /// The managers, as docker CLI contexts (comma-separated).
    #[arg(long, value_delimiter = ',', required = true, value_name = "CTX,CTX,…")]
    pub contexts: Vec<String>,
    /// The fleet's PCR-signing public key (`keys/pcr-signing.pem`): PCR 11 must be a value it signed.
    #[arg(long, value_name = "PEM")]
    pub public_key: Option<PathBuf>,
    /// The docker CLI that resolves the contexts.
    #[arg(long, default_value = "docker", value_name = "PATH")]
    pub docker: PathBuf,
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// What the verifier expects of every manager (`fleet attest`, and `fleet update` after each reboot).
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Where the AK pins live, one file per context (TOFU). Default `~/.config/swarmseal/ak-pins`.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// The PCR the managers' agents extend their phase marker into (`[tpm] phase_pcr`).
    #[arg(long, default_value_t = 11, value_name = "N")]
    pub phase_pcr: u8,
    /// Accept managers with no firmware event log (swtpm; VMs without one): Secure Boot is then
    /// not shown, and the row is n/a instead of a failure.
    #[arg(long)]
    pub allow_no_firmware_log: bool,
    /// The fleet's Secure Boot db certificate (`keys/secure-boot.crt`, PEM or DER): db must hold
    /// only it, and it must be the certificate that verified the boot applications.
    #[arg(long, value_name = "CERT")]
    pub secure_boot_cert: Option<PathBuf>,
    /// Without --secure-boot-cert: accept any Secure Boot keys (the row is a WARN, not a failure).
    #[arg(long, conflicts_with = "secure_boot_cert")]
    pub allow_any_secure_boot_keys: bool,
    /// The TPM makers' CA certificates (PEM, one or more, or DER): each manager's EK certificate
    /// must be signed by one of them, and its TPM must activate a credential made for the AK
    /// with that EK (TPM2_ActivateCredential): the AK is shown to be that TPM's, not only
    /// pinned on first contact.
    #[arg(long, value_name = "CA.pem")]
    pub ek_ca: Option<PathBuf>,
}

const ATTEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The verifier, its keys loaded once for every manager of a run.
#[derive(Clone)]
pub struct Verifier {
    docker: PathBuf,
    fleet_key: Option<SigningKey>,
    secure_boot_cert: Option<Vec<u8>>,
    ek_ca: Option<Vec<Vec<u8>>>,
    pin_dir: PathBuf,
    args: VerifyArgs,
}

/// One manager's attestation: the version it reports and one row per check.
pub struct Report {
    pub version: Option<String>,
    pub rows: Vec<Check>,
}

impl Report {
    /// The names of the checks that failed (none: the manager passed).
    pub fn failed(&self) -> Vec<&'static str> {
        self.rows.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).map(|r| r.name).collect()
    }

    /// `CONTEXT [image V, as the manager reports]`, then one indented row per check.
    pub fn print(&self, context: &str) {
        match &self.version {
            Some(v) => println!("{context} image {} (as the manager reports it)", v.escape_debug()),
            None => println!("{context}"),
        }
        for r in &self.rows {
            let (word, text) = match &r.outcome {
                Outcome::Pass(t) => ("PASS", t),
                Outcome::Fail(t) => ("FAIL", t),
                Outcome::Warn(t) => ("WARN", t),
                Outcome::NotApplicable(t) => ("n/a", t),
            };
            // The manager wrote parts of the text (log parse errors): no control characters reach the terminal.
            let text: String = text.chars().flat_map(|c| if c.is_control() || !(c.is_ascii() || c.is_alphanumeric() || c == '…' || c == '–') { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect();
            println!("  {:<18} {:<4}  {text}", r.name, word);
        }
    }
}

impl Verifier {
    /// Load the fleet's keys. Errors (`Usage`): an unreadable key or certificate, no pin dir.
    pub fn new(docker: &Path, public_key: Option<&Path>, args: &VerifyArgs) -> Result<Verifier, FleetError> {
        let fleet_key = match public_key {
            Some(p) => Some(SigningKey::load(p).map_err(|e| FleetError::Usage(format!("--public-key {}: {e}", p.display())))?),
            None => None,
        };
        let secure_boot_cert = match &args.secure_boot_cert {
            Some(p) => Some(load_cert(p).map_err(|e| FleetError::Usage(format!("--secure-boot-cert {}: {e}", p.display())))?),
            None => None,
        };
        let ek_ca = match &args.ek_ca {
            Some(p) => Some(load_ek_ca(p).map_err(|e| FleetError::Usage(format!("--ek-ca {}: {e}", p.display())))?),
            None => None,
        };
        let pin_dir = match args.pin_dir.clone() {
            Some(d) => d,
            None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/swarmseal/ak-pins")).ok_or_else(|| FleetError::Usage("HOME is not set: give --pin-dir DIR".into()))?,
        };
        Ok(Verifier { docker: docker.to_path_buf(), fleet_key, secure_boot_cert, ek_ca, pin_dir, args: args.clone() })
    }

    /// Ask the manager of `context` for a quote with a fresh nonce and check it.
    /// Errors (`Usage`): `context` is not a context name.
    pub async fn attest(&self, context: &str) -> Result<Report, FleetError> {
        if context.is_empty() || context.contains('/') || context.starts_with('.') {
            return Err(FleetError::Usage(format!("{context:?} is not a docker context name")));
        }
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let answer = match attest_one(&self.docker, context, &nonce).await {
            Ok(a) => a,
            Err(e) => return Ok(Report { version: None, rows: vec![Check { name: "answer", outcome: Outcome::Fail(e) }] }),
        };
        let (me, pin) = (self.clone(), self.pin_dir.join(context));
        let version = answer.image_version.clone();
        let activation = match &self.ek_ca {
            Some(cas) => Some(activate_one(&self.docker, context, &answer, cas).await),
            None => None,
        };
        let rows = tokio::task::spawn_blocking(move || {
            let expect = Expect {
                nonce: &nonce,
                fleet_key: me.fleet_key.as_ref(),
                pin: &pin,
                phase_pcr: me.args.phase_pcr,
                allow_no_firmware_log: me.args.allow_no_firmware_log,
                secure_boot_cert: me.secure_boot_cert.as_deref(),
                allow_any_secure_boot_keys: me.args.allow_any_secure_boot_keys,
                activation,
            };
            verify(&answer, &expect)
        })
        .await
        .unwrap_or_else(|e| vec![Check { name: "verifier", outcome: Outcome::Fail(e.to_string()) }]);
        Ok(Report { version, rows })
    }
}

/// A certificate file, PEM (`-----BEGIN CERTIFICATE-----`) or DER: its DER.
fn load_cert(path: &Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let der = if bytes.first() == Some(&0x30) { bytes } else { rustls_pki_types::CertificateDer::from_pem_slice(&bytes).map_err(|e| format!("not a PEM or DER certificate: {e}"))?.to_vec() };
    x509_parser::parse_x509_certificate(&der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(der)
}

/// Attest every manager of `a.contexts`, print a table per manager; Ok only if all pass.
/// Errors: `Usage` (key, certificate, pin dir, context name), `NotAttested` naming the managers that failed.
pub async fn run(a: AttestArgs) -> Result<(), FleetError> {
    let verifier = Verifier::new(&a.docker, a.public_key.as_deref(), &a.verify)?;
    let mut failed = Vec::new();
    for context in &a.contexts {
        let report = verifier.attest(context).await?;
        report.print(context);
        if !report.failed().is_empty() {
            failed.push(context.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(FleetError::NotAttested { managers: failed })
    }
}

/// Credential activation with the manager of `context` (`--ek-ca`): its EK certificate must
/// chain to one of `cas`; a credential made for the AK's Name with the EK's key is sent to
/// `POST /swarmseal/v1/attest/activate`, and the secret must come back. The "AK identity"
/// row's outcome (the pin is compared after it, in [`verify`]).
async fn activate_one(docker: &Path, context: &str, answer: &Answer, cas: &[Vec<u8>]) -> Outcome {
    let ek = match answer.ek_certificate.bytes() {
        Ok(der) => der,
        Err(why) => return Outcome::Fail(format!("credential activation impossible: no EK certificate on the manager ({why})")),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let id = match check_ek_cert(&ek, cas, now) {
        Ok(id) => id,
        Err(e) => return Outcome::Fail(e),
    };
    let ak = match B64.decode(&answer.ak_public).map_err(|e| e.to_string()).and_then(|b| parse_ak_public(&b)) {
        Ok(ak) => ak,
        Err(e) => return Outcome::Fail(format!("credential activation impossible: the AK: {e}")),
    };
    // Only a restricted signing key that cannot leave its TPM vouches for quotes: activating a
    // credential for any other key would show nothing about the quote (the quote row checks it
    // too; here no credential is made for it).
    if !ak.restricted_signing {
        return Outcome::Fail("credential activation refused: the AK is not a restricted, fixedTPM signing key (objectAttributes restricted|sign|fixedTPM): no credential is made for it".into());
    }
    let cred = match make_credential(&id.key, &ak.name, &mut rand_core::OsRng) {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(e),
    };
    let body = serde_json::json!({"credential_blob": B64.encode(&cred.credential_blob), "secret": B64.encode(&cred.secret)}).to_string();
    let result = async {
        let m = Manager::from_context(docker, context).map_err(|e| e.to_string())?;
        m.call(Method::POST, ACTIVATE_PATH, full(body), ATTEST_TIMEOUT).await.map_err(|e| format!("the manager does not answer: {e}"))
    };
    let (status, body) = match result.await {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(format!("credential activation: {e}")),
    };
    if status == hyper::StatusCode::UNPROCESSABLE_ENTITY {
        return Outcome::Fail(format!("activation refused: the manager says \"{}\": this AK is not shown to be on the TPM of that EK certificate (another TPM holds the AK, or the certificate is not this TPM's)", answer_message(&body)));
    }
    if !status.is_success() {
        return Outcome::Fail(format!("credential activation: POST {ACTIVATE_PATH}: HTTP {status}: {}", answer_message(&body)));
    }
    let got = serde_json::from_slice::<Activation>(&body).map_err(|e| e.to_string()).and_then(|a| B64.decode(a.cert_info).map_err(|e| e.to_string()));
    match got {
        Ok(got) if secret_matches(&cred.expected, &got) => Outcome::Pass(format!("credential activation: the AK is on the TPM whose EK certificate ({}) chains to \"{}\"", id.ek, id.ca)),
        Ok(_) => Outcome::Fail("activation failed: the manager answered a secret that is not the credential's: the AK is not shown to be on the TPM of its EK certificate".into()),
        Err(e) => Outcome::Fail(format!("credential activation: POST {ACTIVATE_PATH} is not an activation answer ({e}): is the manager's agent another version?")),
    }
}

/// The credential activation endpoint.
pub const ACTIVATE_PATH: &str = "/swarmseal/v1/attest/activate";

fn full(body: String) -> crate::fleet::ReqBody {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(bytes::Bytes::from(body)).map_err(|never| match never {}).boxed()
}

/// `GET /swarmseal/v1/attest?nonce=HEX` of the manager of `context`.
pub(crate) async fn attest_one(docker: &Path, context: &str, nonce: &[u8]) -> Result<Answer, String> {
    let m = Manager::from_context(docker, context).map_err(|e| e.to_string())?;
    let path = format!("/swarmseal/v1/attest?nonce={}", hex::encode(nonce));
    let (status, body) = m.call(Method::GET, &path, empty(), ATTEST_TIMEOUT).await.map_err(|e| format!("the manager does not answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET /swarmseal/v1/attest: HTTP {status}: {}", answer_message(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET /swarmseal/v1/attest is not an attestation answer ({e}): is the manager's agent another version?"))
}
