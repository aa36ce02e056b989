//! Secure Boot from PCR 7's events (TCG PC Client Platform Firmware Profile 2.0, 3.3.4.8 and
//! 10.4.4; UEFI 2.10, 32.4.1 EFI_SIGNATURE_LIST): on ([`secure_boot`]), and with the fleet's
//! keys ([`secure_boot_keys`]): db holds only the fleet's certificate, and that certificate is
//! what verified the boot applications (EV_EFI_VARIABLE_AUTHORITY).
//!
//! The event type is not part of the digest, so it is not trusted: every PCR 7 event's data
//! must hash to its digest, and an event is judged by what its data is, whatever type it
//! claims (a relabelled event cannot hide).

use sha2::{Digest as _, Sha256};

use super::log::FirmwareLog;
use super::tpm2::Reader;

/// EV_EFI_VARIABLE_AUTHORITY (TCG PC Client PFP, 10.4.1): the db entry that verified an image.
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;

/// EFI_GLOBAL_VARIABLE {8BE4DF61-93CA-11D2-AA0D-00E098032B8C}, as it is laid out in memory.
pub(super) const EFI_GLOBAL_VARIABLE: [u8; 16] = [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c];
/// EFI_IMAGE_SECURITY_DATABASE_GUID {D719B2CB-3D3A-4596-A3BC-DAD00E67656F}: db and dbx.
const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = [0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f];
/// EFI_CERT_X509_GUID {A5C059A1-94E4-4AA7-87B5-AB155C2BF072}: an entry that is a DER certificate.
const EFI_CERT_X509: [u8; 16] = [0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72];
/// EFI_CERT_SHA256_GUID {C1C41626-504C-4092-ACA9-41F936934328}: an entry that is one image's hash.
const EFI_CERT_SHA256: [u8; 16] = [0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28];

/// A UEFI_VARIABLE_DATA (TCG PC Client PFP, 10.4.4): vendor GUID, UTF-16LE name, value.
struct Variable<'a> {
    guid: &'a [u8],
    name: String,
    value: &'a [u8],
}

/// Read `data` as a UEFI_VARIABLE_DATA; `None` when it is not one.
fn variable(data: &[u8]) -> Option<Variable<'_>> {
    let mut r = Reader::new(data, "a UEFI_VARIABLE_DATA");
    let guid = r.take(16).ok()?;
    let (name_len, data_len) = (usize::try_from(r.u64le().ok()?).ok()?, usize::try_from(r.u64le().ok()?).ok()?);
    let name: Vec<u16> = r.take(name_len.checked_mul(2)?).ok()?.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let value = r.take(data_len).ok()?;
    Some(Variable { guid, name: String::from_utf16_lossy(&name), value })
}

/// PCR 7's events with their index in the log, each bound to its digest (else the error names it).
fn pcr7(log: &FirmwareLog) -> Result<Vec<(usize, &super::log::Event)>, String> {
    let events: Vec<_> = log.events.iter().enumerate().filter(|(_, e)| e.pcr == 7).collect();
    for (i, e) in &events {
        if Sha256::digest(&e.data).as_slice() != e.digest.as_slice() {
            return Err(format!("PCR 7 event {i} (type {:#x}): its data does not hash to its digest, so what it says cannot be read", e.event_type));
        }
    }
    Ok(events)
}

/// Whether the firmware log says Secure Boot is on. Every PCR 7 event's data must hash to its
/// digest, and every PCR 7 event whose data is the UEFI_VARIABLE_DATA (GUID, name length,
/// data length, UTF-16LE name, data) of EFI_GLOBAL_VARIABLE `SecureBoot` must carry 1; there
/// must be at least one. Errors name the event that fails.
pub fn secure_boot(log: &FirmwareLog) -> Result<(), String> {
    let mut seen = 0;
    for (i, e) in pcr7(log)? {
        if let Some(v) = variable(&e.data).filter(|v| v.guid == EFI_GLOBAL_VARIABLE && v.name == "SecureBoot") {
            seen += 1;
            if v.value != [1] {
                return Err(format!("off: PCR 7 event {i} measures SecureBoot = {}", hex::encode(v.value)));
            }
        }
    }
    if seen == 0 {
        return Err("the firmware log has no SecureBoot variable event in PCR 7".into());
    }
    Ok(())
}

/// One entry of an EFI_SIGNATURE_LIST.
#[derive(Debug, PartialEq, Eq)]
enum Entry<'a> {
    /// EFI_CERT_X509_GUID: a DER certificate.
    X509(&'a [u8]),
    /// EFI_CERT_SHA256_GUID: one image's SHA-256.
    Sha256(&'a [u8]),
    /// Another signature type (its GUID).
    Other(&'a [u8]),
}

/// The entries of a variable made of EFI_SIGNATURE_LISTs (UEFI 2.10, 32.4.1: SignatureType,
/// SignatureListSize, SignatureHeaderSize, SignatureSize, header, then EFI_SIGNATURE_DATA
/// entries of SignatureOwner and data), or `None` when `b` is not exactly such lists.
fn signature_lists(b: &[u8]) -> Option<Vec<Entry<'_>>> {
    let mut r = Reader::new(b, "an EFI_SIGNATURE_LIST");
    let mut out = Vec::new();
    while !r.b.is_empty() {
        let ty = r.take(16).ok()?;
        let (list, header, size) = (r.u32le().ok()? as usize, r.u32le().ok()? as usize, r.u32le().ok()? as usize);
        let body = list.checked_sub(28)?.checked_sub(header)?;
        if size <= 16 || body % size != 0 {
            return None;
        }
        r.take(header).ok()?;
        for sig in r.take(body).ok()?.chunks(size) {
            let data = &sig[16..]; // after the SignatureOwner GUID
            out.push(match ty {
                t if t == EFI_CERT_X509 => Entry::X509(data),
                t if t == EFI_CERT_SHA256 => Entry::Sha256(data),
                t => Entry::Other(t),
            });
        }
    }
    Some(out)
}

/// An operator's name for a certificate: its subject and the SHA-256 of its DER.
pub fn describe_cert(der: &[u8]) -> String {
    let subject = x509_parser::parse_x509_certificate(der).map(|(_, c)| c.subject().to_string()).unwrap_or_else(|_| "not a readable X.509 certificate".into());
    format!("\"{}\" (sha256 {})", subject.escape_debug(), hex::encode(Sha256::digest(der)))
}

/// Whether this boot's Secure Boot keys are the fleet's: every PCR 7 event is bound to its
/// digest; every event measuring db (EFI_IMAGE_SECURITY_DATABASE_GUID `db`) is either db's
/// contents — EFI_SIGNATURE_LISTs whose only entries are `fleet_cert` (DER), and at least it —
/// or one EFI_SIGNATURE_DATA whose data is `fleet_cert` (the authority that verified a boot
/// application); both kinds must be there; an EV_EFI_VARIABLE_AUTHORITY that names another
/// variable (shim's MokList, …) fails. Returns what it found; errors name the event and the
/// certificate or hash that is not the fleet's.
pub fn secure_boot_keys(log: &FirmwareLog, fleet_cert: &[u8]) -> Result<String, String> {
    let (mut db, mut authorities) = (0, 0);
    for (i, e) in pcr7(log)? {
        match variable(&e.data) {
            Some(v) if v.guid == EFI_IMAGE_SECURITY_DATABASE && v.name == "db" => match signature_lists(v.value) {
                Some(entries) => {
                    for entry in &entries {
                        match entry {
                            Entry::X509(der) if *der == fleet_cert => {}
                            Entry::X509(der) => return Err(format!("db (PCR 7 event {i}) also trusts {}: a boot loader it signed starts with Secure Boot on", describe_cert(der))),
                            Entry::Sha256(h) => return Err(format!("db (PCR 7 event {i}) also trusts the image with SHA-256 {}: it starts with Secure Boot on", hex::encode(h))),
                            Entry::Other(t) => return Err(format!("db (PCR 7 event {i}) holds an entry of signature type {}: not the fleet's certificate", hex::encode(t))),
                        }
                    }
                    if entries.is_empty() {
                        return Err(format!("db (PCR 7 event {i}) does not hold the fleet's certificate {}", describe_cert(fleet_cert)));
                    }
                    db += 1;
                }
                None => {
                    let der = v.value.get(16..).unwrap_or_default(); // after the SignatureOwner GUID
                    if der != fleet_cert {
                        return Err(format!("a boot application was verified by {}, not the fleet's certificate (PCR 7 event {i})", describe_cert(der)));
                    }
                    authorities += 1;
                }
            },
            Some(v) if e.event_type == EV_EFI_VARIABLE_AUTHORITY => {
                return Err(format!("a boot application was verified through the variable {:?} of another vendor, not db (PCR 7 event {i}): another boot loader's keys", v.name));
            }
            None if e.event_type == EV_EFI_VARIABLE_AUTHORITY => return Err(format!("PCR 7 event {i} is an EV_EFI_VARIABLE_AUTHORITY that cannot be read")),
            _ => {}
        }
    }
    if db == 0 {
        return Err("the firmware log measures no db variable in PCR 7: which keys the firmware trusts is not shown".into());
    }
    if authorities == 0 {
        return Err("the firmware log has no EV_EFI_VARIABLE_AUTHORITY in PCR 7: which certificate verified the boot applications is not shown".into());
    }
    Ok(format!("db holds only {}, which verified the boot applications ({authorities} authority event(s))", describe_cert(fleet_cert)))
}

/// The Secure Boot variables PCR 7's events measured (EV_EFI_VARIABLE_DRIVER_CONFIG data:
/// EFI_GLOBAL_VARIABLE `PK`, `KEK`; EFI_IMAGE_SECURITY_DATABASE_GUID `db`, `dbx`), each as the
/// SHA-256 of its value and its number of EFI_SIGNATURE_LIST entries. Judged by the data, not
/// the event type: an EV_EFI_VARIABLE_AUTHORITY's data (one EFI_SIGNATURE_DATA) does not read
/// as signature lists, so it is not taken for db's contents. Every PCR 7 event must hash to its digest; a variable measured twice
/// with different values is an error naming it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    /// name (`PK`, `KEK`, `db`, `dbx`) → (SHA-256 of the value, entries)
    pub measured: std::collections::BTreeMap<String, ([u8; 32], usize)>,
    /// dbx's entries, each as hex: an image hash as it is, anything else as the SHA-256 of its
    /// data (a certificate's DER) — what a dbx that only grew must still hold.
    pub dbx_entries: std::collections::BTreeSet<String>,
    /// Every other PCR 7 event, in order, as `TYPE:DIGEST` (hex): the SecureBoot variable, the
    /// separator, the authorities that verified boot applications, the firmware's own actions.
    pub others: Vec<String>,
}

impl Variables {
    /// The digest of `name` as hex, or "not measured".
    pub fn describe(&self, name: &str) -> String {
        match self.measured.get(name) {
            Some((d, n)) => format!("{n} entries, sha256 {}", hex::encode(d)),
            None => "not measured".into(),
        }
    }
}

/// Read [`Variables`] from PCR 7's events of `log`.
pub fn variables(log: &FirmwareLog) -> Result<Variables, String> {
    let mut out = Variables::default();
    for (i, e) in pcr7(log)? {
        let other = format!("{:#x}:{}", e.event_type, hex::encode(&e.digest));
        let Some(v) = variable(&e.data) else {
            out.others.push(other);
            continue;
        };
        let known = (v.guid == EFI_GLOBAL_VARIABLE && (v.name == "PK" || v.name == "KEK")) || (v.guid == EFI_IMAGE_SECURITY_DATABASE && (v.name == "db" || v.name == "dbx"));
        let entries = if known { signature_lists(v.value) } else { None };
        let Some(entries) = entries else {
            out.others.push(other);
            continue;
        };
        if v.name == "dbx" {
            out.dbx_entries.extend(entries.iter().map(|en| match en {
                Entry::Sha256(h) => hex::encode(h),
                Entry::X509(der) => hex::encode(Sha256::digest(der)),
                Entry::Other(t) => hex::encode(Sha256::digest(t)),
            }));
        }
        let d: [u8; 32] = Sha256::digest(v.value).into();
        match out.measured.insert(v.name.clone(), (d, entries.len())) {
            Some((old, _)) if old != d => return Err(format!("{} is measured twice in PCR 7 with different values (event {i})", v.name)),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attest::log::{parse_firmware_log, test_log, EV_EFI_VARIABLE_DRIVER_CONFIG};

    /// A UEFI_VARIABLE_DATA: GUID, name length, data length, UTF-16LE name, data.
    pub(crate) fn variable_data(guid: &[u8; 16], name: &str, value: &[u8]) -> Vec<u8> {
        let name: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut v = guid.to_vec();
        v.extend((name.len() as u64 / 2).to_le_bytes());
        v.extend((value.len() as u64).to_le_bytes());
        v.extend(name);
        v.extend(value);
        v
    }

    /// One EFI_SIGNATURE_LIST of `ty` with these entries (all the same size), owner 0x11….
    pub(crate) fn signature_list(ty: &[u8; 16], entries: &[&[u8]]) -> Vec<u8> {
        let size = 16 + entries[0].len();
        let mut v = ty.to_vec();
        v.extend(((28 + size * entries.len()) as u32).to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend((size as u32).to_le_bytes());
        for e in entries {
            v.extend([0x11u8; 16]);
            v.extend(*e);
        }
        v
    }

    /// EFI_SIGNATURE_DATA: owner, then the certificate (an authority event's value).
    fn signature_data(cert: &[u8]) -> Vec<u8> {
        let mut v = vec![0x11u8; 16];
        v.extend(cert);
        v
    }

    fn cert(name: &str) -> Vec<u8> {
        let k = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.self_signed(&k).unwrap().der().to_vec()
    }

    const DB: &[u8; 16] = &EFI_IMAGE_SECURITY_DATABASE;
    const CONFIG: u32 = EV_EFI_VARIABLE_DRIVER_CONFIG;
    const AUTHORITY: u32 = EV_EFI_VARIABLE_AUTHORITY;
    const SEPARATOR: u32 = 0x4;

    /// PCR 7 as OVMF measures it: SecureBoot, PK, KEK, db, dbx, a separator, then the authority.
    fn boot(db: Vec<u8>, authority: Vec<u8>) -> Vec<(u32, u32, Vec<u8>)> {
        vec![
            (7, CONFIG, variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[1])),
            (7, CONFIG, variable_data(&EFI_GLOBAL_VARIABLE, "PK", b"pk")),
            (7, CONFIG, variable_data(&EFI_GLOBAL_VARIABLE, "KEK", b"kek")),
            (7, CONFIG, variable_data(DB, "db", &db)),
            (7, CONFIG, variable_data(DB, "dbx", &signature_list(&EFI_CERT_SHA256, &[&[0xaa; 32]]))),
            (7, SEPARATOR, vec![0; 4]),
            (7, AUTHORITY, variable_data(DB, "db", &signature_data(&authority))),
        ]
    }

    fn judge(events: &[(u32, u32, Vec<u8>)], fleet: &[u8]) -> Result<String, String> {
        let log = parse_firmware_log(&test_log(events)).unwrap();
        secure_boot(&log)?;
        secure_boot_keys(&log, fleet)
    }

    #[test]
    fn secure_boot_keys_are_the_fleets_only_when_db_and_the_authority_are_its_certificate() {
        let (fleet, other) = (cert("swarmseal fleet Secure Boot key"), cert("Microsoft Corporation UEFI CA 2011"));
        let good = boot(signature_list(&EFI_CERT_X509, &[&fleet]), fleet.clone());
        let ok = judge(&good, &fleet).unwrap();
        assert!(ok.contains("swarmseal fleet Secure Boot key") && ok.contains("1 authority event"), "{ok}");

        // db also trusts another certificate (a vendor's CA): named, though this boot's signer was the fleet's.
        let mut db = signature_list(&EFI_CERT_X509, &[&fleet]);
        db.extend(signature_list(&EFI_CERT_X509, &[&other]));
        let e = judge(&boot(db, fleet.clone()), &fleet).unwrap_err();
        assert!(e.contains("also trusts") && e.contains("Microsoft Corporation UEFI CA 2011"), "{e}");
        // db trusts one image by its hash.
        let mut db = signature_list(&EFI_CERT_X509, &[&fleet]);
        db.extend(signature_list(&EFI_CERT_SHA256, &[&[0xbb; 32]]));
        assert!(judge(&boot(db, fleet.clone()), &fleet).unwrap_err().contains(&"bb".repeat(32)));
        // db without the fleet's certificate (another key was enrolled).
        let e = judge(&boot(signature_list(&EFI_CERT_X509, &[&other]), other.clone()), &fleet).unwrap_err();
        assert!(e.contains("Microsoft Corporation UEFI CA 2011"), "{e}");

        // The boot application was verified by another certificate.
        let e = judge(&boot(signature_list(&EFI_CERT_X509, &[&fleet]), other.clone()), &fleet).unwrap_err();
        assert!(e.contains("verified by") && e.contains("Microsoft Corporation UEFI CA 2011"), "{e}");
        // …and relabelled as another event type, with a fleet authority appended: still refused
        // (the type is not hashed; the data is judged whatever the type says).
        let mut relabelled = boot(signature_list(&EFI_CERT_X509, &[&fleet]), other.clone());
        relabelled.last_mut().unwrap().1 = 0x8000_0007; // EV_EFI_ACTION
        relabelled.push((7, AUTHORITY, variable_data(DB, "db", &signature_data(&fleet))));
        assert!(judge(&relabelled, &fleet).unwrap_err().contains("Microsoft Corporation UEFI CA 2011"));
        // The db event relabelled and a forged one appended: the other certificate is still seen.
        let mut hidden_db = good.clone();
        let mut db = signature_list(&EFI_CERT_X509, &[&fleet]);
        db.extend(signature_list(&EFI_CERT_X509, &[&other]));
        hidden_db[3] = (7, 0x8000_0007, variable_data(DB, "db", &db));
        hidden_db.push((7, CONFIG, variable_data(DB, "db", &signature_list(&EFI_CERT_X509, &[&fleet]))));
        assert!(judge(&hidden_db, &fleet).unwrap_err().contains("also trusts"));
        // Verified through shim's MokList, not db.
        let mut mok = good.clone();
        mok.push((7, AUTHORITY, variable_data(&[0x50; 16], "MokList", &signature_data(&other))));
        assert!(judge(&mok, &fleet).unwrap_err().contains("MokList"));
        // No authority event at all, no db event at all: not shown, so not passed.
        let mut none = good.clone();
        none.pop();
        assert!(judge(&none, &fleet).unwrap_err().contains("no EV_EFI_VARIABLE_AUTHORITY"));
        let mut no_db = good.clone();
        no_db.remove(3);
        assert!(judge(&no_db, &fleet).unwrap_err().contains("no db variable"));
        // An event's data altered after it was measured.
        let mut log = parse_firmware_log(&test_log(&good)).unwrap();
        let last = log.events.last_mut().unwrap();
        let n = last.data.len();
        last.data[n - 1] ^= 1;
        assert!(secure_boot_keys(&log, &fleet).unwrap_err().contains("does not hash to its digest"));
    }

    /// A real `binary_bios_measurements` (testdata/ovmf-*, saved by QEMU scenario 1 from
    /// `GET /swarmseal/v1/attest`): the image booted by OVMF with Secure Boot and swtpm, the
    /// fleet's test certificate enrolled as PK, KEK and db by scripts/run-qemu. It parses, PCRs
    /// 0–7 replay to the values the TPM quoted beside it, Secure Boot is on with exactly that
    /// certificate, and another certificate is refused.
    #[test]
    fn a_real_ovmf_log_replays_to_its_quote_and_shows_the_fleets_keys() {
        use rustls_pki_types::pem::PemObject as _;
        let log = parse_firmware_log(include_bytes!("testdata/ovmf-binary_bios_measurements")).unwrap();
        let quoted: std::collections::BTreeMap<String, String> = serde_json::from_str(include_str!("testdata/ovmf-pcrs.json")).unwrap();
        let replayed = crate::attest::replay(&log.events, log.locality);
        for pcr in 0..=7u8 {
            let want = quoted.get(&pcr.to_string()).unwrap_or_else(|| panic!("PCR {pcr} was quoted"));
            let got = replayed.get(&pcr).map(hex::encode).unwrap_or_else(|| hex::encode([0u8; 32]));
            assert_eq!(&got, want, "PCR {pcr} replays to the quoted value");
        }
        secure_boot(&log).unwrap();
        let fleet = rustls_pki_types::CertificateDer::from_pem_slice(include_bytes!("testdata/ovmf-secure-boot.crt")).unwrap();
        let found = secure_boot_keys(&log, &fleet).unwrap();
        assert!(found.contains("swarmseal fleet Secure Boot key"), "{found}");
        let e = secure_boot_keys(&log, &cert("another fleet")).unwrap_err();
        assert!(e.contains("swarmseal fleet Secure Boot key"), "the enrolled certificate is named as not this one: {e}");
    }
}
