//! Remote attestation: the answer of `GET /swarmseal/v1/attest?nonce=HEX` ([`Answer`], made by
//! the agent's TPM side, `swarmseal_tpm::tpm::Tpm::quote`) and `swarmseal fleet attest`, the
//! verifier that runs on the operator's machine: pure Rust, no TPM and no libtss2 (the
//! structures are parsed here from TPM 2.0 Part 2: 10.12.8 TPMS_ATTEST, 11.3.4
//! TPMT_SIGNATURE, 12.2.5 TPM2B_PUBLIC; the signature is checked with ring).
//!
//! Per manager, one row per check ([`Check`]): the quote's signature by the AK; the nonce
//! (fresh random bytes per run); the quoted PCR digest is SHA-256 of the reported values; the
//! AK is the one pinned for this context on first contact (TOFU, one file per context); the
//! event logs (firmware TCG log, systemd's `tpm2-measure.log`) replay to the quoted PCRs;
//! PCR 11 before swarmseal's phase marker is a value the fleet's PCR-signing key signed; the
//! phase marker is there exactly once; Secure Boot is on (when a firmware log exists).
//! See docs/attestation.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use swarmseal_common::pcrpolicy::{pcr_policy_digest, pcr_values_digest, PcrSignatures, PcrValues, PHASE_MARKER, TPM_ALG_SHA256};
use swarmseal_common::signing::SigningKey;

use crate::fleet::{answer_message, empty, FleetError, Manager};

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

// ---- TPM structures, parsed by hand (TPM 2.0 Part 2; big-endian) -------------------------

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("{} is truncated", self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u16le(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32le(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64le(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    /// A TPM2B: 2-byte size, then the bytes.
    fn tpm2b(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// TPM_GENERATED_VALUE (Part 2, 6.2): only the TPM signs structures that start with it.
const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE (Part 2, 6.9).
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ECC_NIST_P256: u16 = 0x0003;

/// The parts of a TPMS_ATTEST of type quote that the verifier uses.
#[derive(Debug)]
pub struct QuoteInfo {
    /// extraData: the qualifyingData (nonce) the quote was made with.
    pub extra_data: Vec<u8>,
    /// The sha256 PCRs selected, ascending.
    pub pcrs: Vec<u8>,
    /// pcrDigest: SHA-256 of the selected PCR values in index order.
    pub pcr_digest: Vec<u8>,
}

/// Parse a TPMS_ATTEST (Part 2, 10.12.12) of type TPM_ST_ATTEST_QUOTE (TPMS_QUOTE_INFO, 10.12.4).
pub fn parse_attest(b: &[u8]) -> Result<QuoteInfo, String> {
    let mut r = Reader::new(b, "the TPMS_ATTEST");
    if r.u32()? != TPM_GENERATED {
        return Err("the TPMS_ATTEST does not start with TPM_GENERATED_VALUE: the TPM did not make it".into());
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err("the TPMS_ATTEST is not a quote (TPM_ST_ATTEST_QUOTE)".into());
    }
    r.tpm2b()?; // qualifiedSigner
    let extra_data = r.tpm2b()?.to_vec();
    r.take(8 + 4 + 4 + 1)?; // clockInfo: clock, resetCount, restartCount, safe
    r.take(8)?; // firmwareVersion
    let mut pcrs = Vec::new();
    for _ in 0..r.u32()? {
        let hash = r.u16()?;
        let size = r.u8()?;
        if size > 4 {
            return Err(format!("the quote's PCR selection is {size} bytes: more than the 32 PCRs a TPM has"));
        }
        let select = r.take(usize::from(size))?;
        if hash != TPM_ALG_SHA256 {
            return Err(format!("the quote selects PCRs of hash algorithm {hash:#06x}; only sha256 is verified"));
        }
        for (octet, bits) in select.iter().enumerate() {
            pcrs.extend((0..8).filter(|bit| bits & (1 << bit) != 0).map(|bit| (octet * 8 + bit) as u8));
        }
    }
    let pcr_digest = r.tpm2b()?.to_vec();
    if !r.b.is_empty() {
        return Err(format!("the TPMS_ATTEST has {} bytes after its end", r.b.len()));
    }
    Ok(QuoteInfo { extra_data, pcrs, pcr_digest })
}

/// The AK's public area: its Name and its P-256 point.
#[derive(Debug)]
pub struct AkPublic {
    /// TPM Name (Part 1, 16): 0x000B || SHA-256(TPMT_PUBLIC), 34 bytes.
    pub name: Vec<u8>,
    /// Uncompressed SEC1 point (0x04 || x || y).
    pub point: Vec<u8>,
    /// restricted, sign, fixedTPM: a key the TPM made and keeps, that signs only its own quotes.
    pub restricted_signing: bool,
}

/// Parse a TPM2B_PUBLIC (Part 2, 12.2.5) of an ECC P-256 ECDSA key.
pub fn parse_ak_public(b: &[u8]) -> Result<AkPublic, String> {
    let mut outer = Reader::new(b, "the AK's TPM2B_PUBLIC");
    let tpmt = outer.tpm2b()?;
    let mut r = Reader::new(tpmt, "the AK's TPMT_PUBLIC");
    if r.u16()? != TPM_ALG_ECC {
        return Err("the AK is not an ECC key (this verifier takes ECC P-256 AKs, as the agent makes them)".into());
    }
    if r.u16()? != TPM_ALG_SHA256 {
        return Err("the AK's nameAlg is not sha256".into());
    }
    let attributes = r.u32()?;
    r.tpm2b()?; // authPolicy
    if r.u16()? != TPM_ALG_NULL {
        r.take(4)?; // symmetric keyBits, mode (a restricted signing key has none)
    }
    if r.u16()? != TPM_ALG_ECDSA {
        return Err("the AK's scheme is not ECDSA".into());
    }
    r.u16()?; // the scheme's hash
    if r.u16()? != TPM_ECC_NIST_P256 {
        return Err("the AK's curve is not NIST P-256".into());
    }
    if r.u16()? != TPM_ALG_NULL {
        r.u16()?; // kdf hash
    }
    let (x, y) = (r.tpm2b()?, r.tpm2b()?);
    if x.len() != 32 || y.len() != 32 {
        return Err("the AK's point is not 32-byte coordinates".into());
    }
    // fixedTPM (bit 1), restricted (bit 16), sign (bit 18): TPM 2.0 Part 2, 8.3 TPMA_OBJECT.
    let restricted_signing = attributes & (1 << 1) != 0 && attributes & (1 << 16) != 0 && attributes & (1 << 18) != 0;
    let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(tpmt));
    let mut point = vec![0x04];
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Ok(AkPublic { name, point, restricted_signing })
}

/// Whether the TPMT_SIGNATURE `sig` (Part 2, 11.3.4: ECDSA, SHA-256, r, s) is the AK's over `attest`.
pub fn verify_quote(ak: &AkPublic, attest: &[u8], sig: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(sig, "the TPMT_SIGNATURE");
    if r.u16()? != TPM_ALG_ECDSA || r.u16()? != TPM_ALG_SHA256 {
        return Err("the quote's signature is not ECDSA with SHA-256".into());
    }
    let (sr, ss) = (r.tpm2b()?, r.tpm2b()?);
    let pad = |v: &[u8]| -> Result<Vec<u8>, String> {
        let v = &v[v.iter().position(|&x| x != 0).unwrap_or(v.len())..];
        if v.len() > 32 {
            return Err("an ECDSA P-256 half is longer than 32 bytes".into());
        }
        let mut out = vec![0u8; 32 - v.len()];
        out.extend_from_slice(v);
        Ok(out)
    };
    let mut fixed = pad(sr)?;
    fixed.extend(pad(ss)?);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &ak.point)
        .verify(attest, &fixed)
        .map_err(|_| "the quote's signature does not verify with the AK it came with: forged or altered".into())
}

// ---- event logs ---------------------------------------------------------------------------

/// One measurement: the PCR and the sha256 digest it was extended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub pcr: u8,
    pub digest: Vec<u8>,
    /// TCG event type (firmware log), 0 for a systemd record.
    pub event_type: u32,
    /// The event data (firmware log), empty for a systemd record.
    pub data: Vec<u8>,
}

/// EV_NO_ACTION (TCG PC Client PFP, 10.4.1): logged, never extended.
const EV_NO_ACTION: u32 = 0x3;
/// EV_EFI_VARIABLE_DRIVER_CONFIG: a Secure Boot variable (SecureBoot, PK, KEK, db, dbx).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;

/// A parsed firmware log: its events, and PCR 0's start value (from a StartupLocality event).
#[derive(Debug, Default, Clone)]
pub struct FirmwareLog {
    pub events: Vec<Event>,
    pub locality: u8,
}

/// Parse a TCG crypto-agile event log (TCG PC Client Platform Firmware Profile 2.0, 10.2):
/// a TCG_PCR_EVENT (SHA-1 format) carrying the Spec ID Event03 with the digest sizes, then
/// TCG_PCR_EVENT2 records (little-endian). The sha256 digest of each event is kept.
pub fn parse_firmware_log(b: &[u8]) -> Result<FirmwareLog, String> {
    let mut r = Reader::new(b, "the firmware event log");
    r.u32le()?; // pcrIndex
    r.u32le()?; // eventType (EV_NO_ACTION)
    r.take(20)?;
    let size = r.u32le()? as usize;
    let spec = r.take(size)?;
    if !spec.starts_with(b"Spec ID Event03\0") {
        return Err("the firmware event log is not in the crypto-agile format (no Spec ID Event03)".into());
    }
    let mut s = Reader::new(&spec[16..], "the Spec ID event");
    s.take(4 + 1 + 1 + 1 + 1)?; // platformClass, version minor/major, errata, uintnSize
    let mut sizes = BTreeMap::new();
    for _ in 0..s.u32le()? {
        let (alg, size) = (s.u16le()?, s.u16le()?);
        if alg == TPM_ALG_SHA256 && size != 32 {
            return Err(format!("the firmware event log declares sha256 digests of {size} bytes, not 32"));
        }
        sizes.insert(alg, usize::from(size));
    }
    let mut log = FirmwareLog::default();
    while !r.b.is_empty() {
        let pcr = r.u32le()?;
        let event_type = r.u32le()?;
        let mut digest = None;
        for _ in 0..r.u32le()? {
            let alg = r.u16le()?;
            let size = *sizes.get(&alg).ok_or_else(|| format!("the firmware event log uses hash algorithm {alg:#06x} not declared in its Spec ID event"))?;
            let d = r.take(size)?;
            if alg == TPM_ALG_SHA256 {
                digest = Some(d.to_vec());
            }
        }
        let size = r.u32le()? as usize;
        let data = r.take(size)?.to_vec();
        if event_type == EV_NO_ACTION {
            if let Some(rest) = data.strip_prefix(b"StartupLocality\0") {
                log.locality = rest.first().copied().unwrap_or(0);
            }
            continue;
        }
        let digest = digest.ok_or("an event of the firmware log has no sha256 digest: the sha256 bank is not measured")?;
        let pcr = u8::try_from(pcr).map_err(|_| format!("an event of the firmware log names PCR {pcr}"))?;
        log.events.push(Event { pcr, digest, event_type, data });
    }
    Ok(log)
}

/// Parse systemd's `tpm2-measure.log`: JSON-SEQ (RFC 7464: each record is 0x1E, JSON, LF) of
/// TCG Canonical Event Log records `{"pcr": N, "digests": [{"hashAlg": "sha256", "digest": HEX}], …}`.
pub fn parse_measure_log(b: &[u8]) -> Result<Vec<Event>, String> {
    #[derive(Deserialize)]
    struct Digest {
        #[serde(rename = "hashAlg")]
        hash_alg: String,
        digest: String,
    }
    #[derive(Deserialize)]
    struct Record {
        pcr: u8,
        digests: Vec<Digest>,
    }
    let mut out = Vec::new();
    for (i, rec) in b.split(|&c| c == 0x1e).enumerate().filter(|(_, r)| !r.iter().all(u8::is_ascii_whitespace)) {
        let rec: Record = serde_json::from_slice(rec).map_err(|e| format!("record {i} of the measure log is not a CEL JSON record: {e}"))?;
        let d = rec.digests.iter().find(|d| d.hash_alg == "sha256").ok_or_else(|| format!("record {i} of the measure log has no sha256 digest"))?;
        let digest = hex::decode(&d.digest).ok().filter(|d| d.len() == 32).ok_or_else(|| format!("record {i} of the measure log: the sha256 digest is not 64 hex digits"))?;
        out.push(Event { pcr: rec.pcr, digest, event_type: 0, data: Vec::new() });
    }
    Ok(out)
}

/// The PCR values `events` replay to, from 0 (PCR 0 from the startup locality), per PCR that has events.
pub fn replay(events: &[Event], locality: u8) -> PcrValues {
    let mut pcrs = PcrValues::new();
    for e in events {
        let v = pcrs.entry(e.pcr).or_insert_with(|| reset_value(e.pcr, locality));
        *v = extend(v, &e.digest);
    }
    pcrs
}

/// EFI_GLOBAL_VARIABLE {8BE4DF61-93CA-11D2-AA0D-00E098032B8C}, as it is laid out in memory.
const EFI_GLOBAL_VARIABLE: [u8; 16] = [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c];

/// Whether the firmware log says Secure Boot is on. Every PCR 7 event's data must hash to its
/// digest (the type is not hashed, so it is not trusted: an event's data is judged whatever type
/// it claims), and every PCR 7 event whose data is the UEFI_VARIABLE_DATA (GUID, name length,
/// data length, UTF-16LE name, data) of EFI_GLOBAL_VARIABLE `SecureBoot` must carry 1; there
/// must be at least one. Errors name the event that fails.
pub fn secure_boot(log: &FirmwareLog) -> Result<(), String> {
    let name: Vec<u8> = "SecureBoot".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut seen = 0;
    for (i, e) in log.events.iter().enumerate().filter(|(_, e)| e.pcr == 7) {
        if Sha256::digest(&e.data).as_slice() != e.digest.as_slice() {
            return Err(format!("PCR 7 event {i} (type {:#x}): its data does not hash to its digest, so what it says cannot be read", e.event_type));
        }
        let value = (|| {
            let mut r = Reader::new(&e.data, "a UEFI_VARIABLE_DATA");
            (r.take(16).ok()? == EFI_GLOBAL_VARIABLE).then_some(())?;
            let (name_len, data_len) = (r.u64le().ok()? as usize, r.u64le().ok()? as usize);
            (r.take(name_len.checked_mul(2)?).ok()? == name.as_slice()).then_some(())?;
            Some(r.take(data_len).ok().map(<[u8]>::to_vec).unwrap_or_default())
        })();
        if let Some(v) = value {
            seen += 1;
            if v != [1] {
                return Err(format!("off: PCR 7 event {i} measures SecureBoot = {}", hex::encode(&v)));
            }
        }
    }
    if seen == 0 {
        return Err("the firmware log has no SecureBoot variable event in PCR 7".into());
    }
    Ok(())
}

// ---- the checks ---------------------------------------------------------------------------

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail(String),
    /// Not applicable here (said why); does not fail the manager.
    NotApplicable(String),
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
    row("AK identity", check_pin(expect.pin, &ak.name));
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
    row("Secure Boot", match answer.firmware_log.bytes() {
        Err(why) if expect.allow_no_firmware_log => Outcome::NotApplicable(format!("no firmware event log ({why}); accepted by --allow-no-firmware-log")),
        Err(why) => Outcome::Fail(format!("no firmware event log ({why}): Secure Boot cannot be shown (--allow-no-firmware-log accepts that)")),
        Ok(b) => match parse_firmware_log(&b).and_then(|l| secure_boot(&l)) {
            Ok(()) => Outcome::Pass("on (every PCR 7 SecureBoot event = 1, each bound to its digest)".into()),
            Err(e) => Outcome::Fail(e),
        },
    });
    // The pin is written only for a manager that passed everything else: a failed run pins nothing.
    let Some(pin_row) = rows.iter().position(|r| r.name == "AK identity") else { return rows };
    let others_pass = rows.iter().enumerate().all(|(i, r)| i == pin_row || !matches!(r.outcome, Outcome::Fail(_)));
    if let Outcome::Pass(text) = &rows[pin_row].outcome {
        if text.starts_with(FIRST_CONTACT) {
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

/// TOFU: the AK's Name against the pin file. On first contact the row passes as
/// [`FIRST_CONTACT`]; [`verify`] writes the pin only if every other check passed.
fn check_pin(pin: &Path, name: &[u8]) -> Outcome {
    let name = hex::encode(name);
    match std::fs::read_to_string(pin) {
        Ok(pinned) if pinned.trim() == name => Outcome::Pass(format!("matches pin ({})", pin.display())),
        Ok(pinned) => Outcome::Fail(format!(
            "the AK {name} is not the AK pinned for this manager ({}): another TPM answered, or this TPM's endorsement seed changed; if the machine was replaced on purpose, remove {} and run again",
            pinned.trim(),
            pin.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Pass(format!("{FIRST_CONTACT}: AK {name} ({})", pin.display())),
        Err(e) => Outcome::Fail(format!("cannot read the AK pin {}: {e}", pin.display())),
    }
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

/// A PCR's value at TPM2_Startup: zero, PCR 0's last byte the startup locality (TCG PC Client PFP, 3.3.4.1).
fn reset_value(pcr: u8, locality: u8) -> Vec<u8> {
    let mut v = vec![0u8; 32];
    if pcr == 0 {
        v[31] = locality;
    }
    v
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
    /// Where the AK pins live, one file per context (TOFU). Default `~/.config/swarmseal/ak-pins`.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// The docker CLI that resolves the contexts.
    #[arg(long, default_value = "docker", value_name = "PATH")]
    pub docker: PathBuf,
    /// The PCR the managers' agents extend their phase marker into (`[tpm] phase_pcr`).
    #[arg(long, default_value_t = 11, value_name = "N")]
    pub phase_pcr: u8,
    /// Accept managers with no firmware event log (swtpm; VMs without one): Secure Boot is then
    /// not shown, and the row is n/a instead of a failure.
    #[arg(long)]
    pub allow_no_firmware_log: bool,
}

const ATTEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Attest every manager of `a.contexts`, print a table per manager; Ok only if all pass.
/// Errors: `Usage` (key, pin dir, context name), `NotAttested` naming the managers that failed.
pub async fn run(a: AttestArgs) -> Result<(), FleetError> {
    let key = match &a.public_key {
        Some(p) => Some(SigningKey::load(p).map_err(|e| FleetError::Usage(format!("--public-key {}: {e}", p.display())))?),
        None => None,
    };
    let pin_dir = match a.pin_dir.clone() {
        Some(d) => d,
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/swarmseal/ak-pins")).ok_or_else(|| FleetError::Usage("HOME is not set: give --pin-dir DIR".into()))?,
    };
    let (phase_pcr, allow_no_firmware_log) = (a.phase_pcr, a.allow_no_firmware_log);
    let mut failed = Vec::new();
    for context in &a.contexts {
        if context.is_empty() || context.contains('/') || context.starts_with('.') {
            return Err(FleetError::Usage(format!("{context:?} is not a docker context name")));
        }
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let pin = pin_dir.join(context);
        let (version, rows) = match attest_one(&a.docker, context, &nonce).await {
            Ok(answer) => {
                let key = key.clone();
                let version = answer.image_version.clone();
                let rows = tokio::task::spawn_blocking(move || verify(&answer, &Expect { nonce: &nonce, fleet_key: key.as_ref(), pin: &pin, phase_pcr, allow_no_firmware_log }))
                    .await
                    .unwrap_or_else(|e| vec![Check { name: "verifier", outcome: Outcome::Fail(e.to_string()) }]);
                (version, rows)
            }
            Err(e) => (None, vec![Check { name: "answer", outcome: Outcome::Fail(e) }]),
        };
        print_table(context, version.as_deref(), &rows);
        if rows.iter().any(|r| matches!(r.outcome, Outcome::Fail(_))) {
            failed.push(context.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(FleetError::NotAttested { managers: failed })
    }
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

/// `CONTEXT [image V, as the manager reports]`, then one indented row per check.
fn print_table(context: &str, version: Option<&str>, rows: &[Check]) {
    match version {
        Some(v) => println!("{context} image {} (as the manager reports it)", v.escape_debug()),
        None => println!("{context}"),
    }
    for r in rows {
        let (word, text) = match &r.outcome {
            Outcome::Pass(t) => ("PASS", t),
            Outcome::Fail(t) => ("FAIL", t),
            Outcome::NotApplicable(t) => ("n/a", t),
        };
        // The manager wrote parts of the text (log parse errors): no control characters reach the terminal.
        let text: String = text.chars().flat_map(|c| if c.is_control() || !(c.is_ascii() || c.is_alphanumeric() || c == '…' || c == '–') { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect();
        println!("  {:<18} {:<4}  {text}", r.name, word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crypto-agile log with a StartupLocality, a PCR 7 SecureBoot=1 variable and one PCR 0
    /// event replays to the values computed by hand, and says Secure Boot is on.
    #[test]
    fn a_crypto_agile_firmware_log_replays_and_shows_secure_boot() {
        let mut log = Vec::new();
        let le32 = |v: u32| v.to_le_bytes();
        // TCG_PCR_EVENT with the Spec ID Event03: sha1 (20) and sha256 (32).
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend(le32(0));
        spec.extend([0, 2, 0, 2]);
        spec.extend(le32(2));
        spec.extend([0x04, 0x00, 20, 0, 0x0b, 0x00, 32, 0]);
        spec.push(0);
        log.extend(le32(0));
        log.extend(le32(EV_NO_ACTION));
        log.extend([0u8; 20]);
        log.extend(le32(spec.len() as u32));
        log.extend(&spec);
        let mut event = |pcr: u32, ty: u32, data: &[u8]| {
            log.extend(le32(pcr));
            log.extend(le32(ty));
            log.extend(le32(2));
            log.extend([0x04, 0x00]);
            log.extend([0u8; 20]);
            log.extend([0x0b, 0x00]);
            log.extend(Sha256::digest(data));
            log.extend(le32(data.len() as u32));
            log.extend(data);
        };
        event(0, EV_NO_ACTION, b"StartupLocality\0\x03");
        let mut var = EFI_GLOBAL_VARIABLE.to_vec();
        var.extend(10u64.to_le_bytes());
        var.extend(1u64.to_le_bytes());
        var.extend("SecureBoot".encode_utf16().flat_map(u16::to_le_bytes));
        var.push(1);
        event(7, EV_EFI_VARIABLE_DRIVER_CONFIG, &var);
        event(0, 0x8, b"crtm");
        let parsed = parse_firmware_log(&log).unwrap();
        assert_eq!(parsed.locality, 3);
        assert_eq!(parsed.events.len(), 2, "EV_NO_ACTION is not an event");
        assert_eq!(secure_boot(&parsed), Ok(()));
        let pcrs = replay(&parsed.events, parsed.locality);
        let mut start = vec![0u8; 32];
        start[31] = 3;
        assert_eq!(pcrs[&0], extend(&start, &Sha256::digest(b"crtm")));
        assert_eq!(pcrs[&7], extend(&[0u8; 32], &Sha256::digest(&var)));
        // The data of a PCR 7 event altered (SecureBoot 0 → 1) while its digest stays: refused.
        let mut forged = parsed.clone();
        let sb = forged.events.iter_mut().find(|e| e.pcr == 7).unwrap();
        *sb.data.last_mut().unwrap() = 0;
        sb.digest = Sha256::digest(&sb.data).to_vec();
        let mut fake = sb.clone();
        sb.event_type = 0x8; // the real SecureBoot = 0 relabelled as another type
        *fake.data.last_mut().unwrap() = 1;
        fake.digest = Sha256::digest(&fake.data).to_vec();
        forged.events.push(fake);
        assert!(secure_boot(&forged).unwrap_err().contains("SecureBoot = 00"), "a relabelled SecureBoot = 0 still counts");
        let mut altered = parsed.clone();
        *altered.events.iter_mut().find(|e| e.pcr == 7).unwrap().data.last_mut().unwrap() = 2;
        assert!(secure_boot(&altered).unwrap_err().contains("does not hash to its digest"));
        // Truncated: an error, never a partial replay.
        assert!(parse_firmware_log(&log[..log.len() - 3]).is_err());
    }

    #[test]
    fn the_measure_log_is_json_seq() {
        let d = hex::encode([7u8; 32]);
        let log = format!("\x1e{{\"pcr\":11,\"digests\":[{{\"hashAlg\":\"sha1\",\"digest\":\"00\"}},{{\"hashAlg\":\"sha256\",\"digest\":\"{d}\"}}],\"content_type\":\"systemd\",\"content\":{{}}}}\n\x1e{{\"pcr\":15,\"digests\":[{{\"hashAlg\":\"sha256\",\"digest\":\"{d}\"}}]}}\n");
        let ev = parse_measure_log(log.as_bytes()).unwrap();
        assert_eq!(ev.iter().map(|e| e.pcr).collect::<Vec<_>>(), vec![11, 15]);
        assert_eq!(ev[0].digest, vec![7u8; 32]);
        assert!(parse_measure_log(b"\x1e{\"pcr\":11}\n").is_err());
    }
}
