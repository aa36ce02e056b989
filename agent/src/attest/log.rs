//! The event logs a manager returns, and their replay: the firmware's TCG crypto-agile log
//! (TCG PC Client Platform Firmware Profile 2.0, 10.2) and systemd's `tpm2-measure.log`
//! (JSON-SEQ of TCG Canonical Event Log records).

use std::collections::BTreeMap;

use serde::Deserialize;
use swarmseal_common::pcrpolicy::{PcrValues, TPM_ALG_SHA256};

use super::extend;
use super::tpm2::Reader;

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
pub(crate) const EV_NO_ACTION: u32 = 0x3;
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
        // PCRs 0-7 are the firmware's: their events are in the firmware event log, with their
        // data. systemd logs none there; a record for them would let a manager rebuild the
        // firmware's PCRs from bare digests and leave the firmware log (and Secure Boot) out.
        if rec.pcr < 8 {
            return Err(format!("record {i} of the measure log extends PCR {}: PCRs 0-7 belong to the firmware event log; refused", rec.pcr));
        }
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

/// A PCR's value at TPM2_Startup: zero, PCR 0's last byte the startup locality (TCG PC Client PFP, 3.3.4.1).
pub(super) fn reset_value(pcr: u8, locality: u8) -> Vec<u8> {
    let mut v = vec![0u8; 32];
    if pcr == 0 {
        v[31] = locality;
    }
    v
}

/// A crypto-agile log (sha1 and sha256 banks) of `(pcr, type, data)` events, each digest the
/// hash of its data: what firmware writes, for the tests.
#[cfg(test)]
pub(crate) fn test_log(events: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
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
    for (pcr, ty, data) in events {
        log.extend(le32(*pcr));
        log.extend(le32(*ty));
        log.extend(le32(2));
        log.extend([0x04, 0x00]);
        log.extend([0u8; 20]);
        log.extend([0x0b, 0x00]);
        log.extend(Sha256::digest(data));
        log.extend(le32(data.len() as u32));
        log.extend(data);
    }
    log
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::attest::secure_boot::tests::variable_data;
    use crate::attest::secure_boot::EFI_GLOBAL_VARIABLE;
    use crate::attest::secure_boot;

    /// A crypto-agile log with a StartupLocality, a PCR 7 SecureBoot=1 variable and one PCR 0
    /// event replays to the values computed by hand, and says Secure Boot is on.
    #[test]
    fn a_crypto_agile_firmware_log_replays_and_shows_secure_boot() {
        let var = variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[1]);
        let log = test_log(&[(0, EV_NO_ACTION, b"StartupLocality\0\x03".to_vec()), (7, EV_EFI_VARIABLE_DRIVER_CONFIG, var.clone()), (0, 0x8, b"crtm".to_vec())]);
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
        // A record for a firmware PCR (0-7) is refused: it would rebuild PCR 7 without the
        // firmware log that Secure Boot is judged by.
        let fw = format!("\x1e{{\"pcr\":7,\"digests\":[{{\"hashAlg\":\"sha256\",\"digest\":\"{d}\"}}]}}\n");
        assert!(parse_measure_log(fw.as_bytes()).unwrap_err().contains("PCR 7"));
    }
}
