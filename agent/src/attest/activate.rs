//! Credential activation, verifier side (`fleet attest --ek-ca`): the manager's EK certificate
//! must chain to a CA the operator trusts, and the AK must be on the TPM that holds that EK.
//!
//! 1. [`check_ek_cert`]: the EK certificate (DER X.509) is signed by a certificate of the
//!    `--ek-ca` file (every certificate there is a trust anchor, so an intermediate CA of the
//!    maker may be given alone or with its root), and both are within their validity. The
//!    signature is checked with x509-parser's `verify` feature (ring): a web-PKI path
//!    validator refuses EK certificates (critical TPM extensions, a SAN of TPM attributes, no
//!    subject), and only the issuer's signature and validity matter here.
//! 2. [`make_credential`]: TPM2_MakeCredential (TPM 2.0 Part 3, 12.6; Part 1, 24 "Credential
//!    Protection") in software for the AK's Name with the EK's public key: a random 32-byte
//!    secret; a random seed encrypted to the EK with RSA-OAEP (SHA-256, label "IDENTITY\0"),
//!    Part 1, B.10.3; symKey = KDFa(SHA-256, seed, "STORAGE", AK Name, "", 128); encIdentity
//!    = AES-128-CFB(symKey, IV 0) of TPM2B_DIGEST(secret); HMACkey = KDFa(SHA-256, seed,
//!    "INTEGRITY", "", "", 256); outerHMAC = HMAC-SHA256(HMACkey, encIdentity || AK Name);
//!    credentialBlob = TPM2B_ID_OBJECT(TPM2B_DIGEST(outerHMAC) || encIdentity). For an ECC
//!    P-256 EK the seed is shared by ECDH instead (Part 1, C.6.4): an ephemeral key Qe, Z =
//!    x of (de · Q_EK), seed = KDFe(SHA-256, Z, "IDENTITY", Qe.x, Q_EK.x, 256), and the
//!    secret is the TPMS_ECC_POINT Qe.
//! 3. The manager answers `POST /swarmseal/v1/attest/activate` with the secret its TPM
//!    recovered ([`Activation`]); [`secret_matches`] compares it in constant time.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;

/// The EK's public key, as its certificate holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkKey {
    /// RSA: modulus and public exponent, big-endian, no leading zeros.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// ECC NIST P-256: the point's coordinates, 32 bytes each.
    Ecc { x: Vec<u8>, y: Vec<u8> },
}

/// What the EK certificate showed: its key and a description for the row.
#[derive(Debug, Clone)]
pub struct EkIdentity {
    pub key: EkKey,
    /// `subject … serial …` of the EK certificate.
    pub ek: String,
    /// The subject of the CA certificate that signed it.
    pub ca: String,
}

/// The certificates of an `--ek-ca` file (PEM, one or more, or one DER), as DER.
/// Errors: unreadable file, no certificate, a block that is not X.509.
pub fn load_ek_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let ders: Vec<Vec<u8>> = if bytes.first() == Some(&0x30) {
        vec![bytes]
    } else {
        rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not PEM or DER certificates: {e}"))?
    };
    if ders.is_empty() {
        return Err("holds no certificate (PEM `-----BEGIN CERTIFICATE-----` or one DER certificate)".into());
    }
    for d in &ders {
        X509Certificate::from_der(d).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    }
    Ok(ders)
}

/// The EK certificate `ek_der` checked against the trusted `cas` at `now` (Unix seconds):
/// signed by one of them, both valid now. Returns its key. Errors (the row's reason):
/// unparsable certificate, no CA of the file signed it, expired or not yet valid, an
/// unsupported key.
pub fn check_ek_cert(ek_der: &[u8], cas: &[Vec<u8>], now: i64) -> Result<EkIdentity, String> {
    let (_, ek) = X509Certificate::from_der(ek_der).map_err(|e| format!("the manager's EK certificate is not X.509: {e}"))?;
    let ek_text = format!("subject \"{}\" serial {}", ek.subject(), ek.raw_serial_as_string());
    let time = x509_parser::time::ASN1Time::from_timestamp(now).map_err(|e| e.to_string())?;
    if !ek.validity().is_valid_at(time) {
        return Err(format!("the EK certificate ({ek_text}) is not valid now: valid from {} to {}", ek.validity().not_before, ek.validity().not_after));
    }
    let mut tried = Vec::new();
    for der in cas {
        let Ok((_, ca)) = X509Certificate::from_der(der) else { continue };
        if ca.subject().as_raw() != ek.issuer().as_raw() {
            tried.push(format!("\"{}\"", ca.subject()));
            continue;
        }
        if ek.verify_signature(Some(ca.public_key())).is_err() {
            tried.push(format!("\"{}\" (same name, but its key did not sign it)", ca.subject()));
            continue;
        }
        if !ca.validity().is_valid_at(time) {
            return Err(format!("the EK certificate ({ek_text}) chains to \"{}\", which is not valid now (from {} to {})", ca.subject(), ca.validity().not_before, ca.validity().not_after));
        }
        let key = ek_key(&ek)?;
        return Ok(EkIdentity { key, ek: ek_text, ca: ca.subject().to_string() });
    }
    Err(format!("the EK certificate ({ek_text}, issuer \"{}\") does not chain to a CA of --ek-ca ({}): another maker's TPM, or not a TPM", ek.issuer(), tried.join(", ")))
}

/// The public key of an EK certificate (DER), unchecked (the agent, to pick the EK template).
/// Errors: not X.509, a key that is neither RSA nor an uncompressed P-256 point.
pub fn ek_public_key(der: &[u8]) -> Result<EkKey, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not X.509: {e}"))?;
    ek_key(&cert)
}

fn ek_key(ek: &X509Certificate) -> Result<EkKey, String> {
    match ek.public_key().parsed() {
        Ok(PublicKey::RSA(k)) => {
            let strip = |b: &[u8]| b.iter().skip_while(|&&x| x == 0).copied().collect::<Vec<u8>>();
            Ok(EkKey::Rsa { modulus: strip(k.modulus), exponent: strip(k.exponent) })
        }
        Ok(PublicKey::EC(p)) if p.data().len() == 65 && p.data()[0] == 4 => Ok(EkKey::Ecc { x: p.data()[1..33].to_vec(), y: p.data()[33..].to_vec() }),
        _ => Err("the EK certificate's key is neither RSA nor an uncompressed ECC P-256 point".into()),
    }
}

/// A credential for the manager's TPM: what to POST, and the secret to expect back.
pub struct Credential {
    /// TPM2B_ID_OBJECT (Part 2, 10.4.8).
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET (Part 2, 11.4.33): the seed, RSA-OAEP encrypted to the EK.
    pub secret: Vec<u8>,
    /// The 32 random bytes only that TPM can recover.
    pub expected: zeroize::Zeroizing<Vec<u8>>,
}

/// The body of `POST /swarmseal/v1/attest/activate`'s answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Activation {
    /// The recovered secret (certInfo of TPM2_ActivateCredential), base64.
    pub cert_info: String,
}

/// The key sizes of the symmetric and HMAC keys (TPM 2.0 Part 1, 24.4, 24.5), in bits.
const SYM_BITS: u32 = 128;
const HMAC_BITS: u32 = 256;

/// TPM2_MakeCredential in software for an object of Name `ak_name` (its nameAlg sha256: 2 +
/// 32 bytes) with the EK's `key`, from the RNG `rng`. Errors: an ECC EK (not supported), a
/// key that is not RSA 2048.
pub fn make_credential(key: &EkKey, ak_name: &[u8], rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore)) -> Result<Credential, String> {
    let (modulus, exponent) = match key {
        EkKey::Rsa { modulus, exponent } => (modulus, exponent),
        EkKey::Ecc { x, y } => return make_credential_ecc(x, y, ak_name, rng),
    };
    let public = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(modulus), rsa::BigUint::from_bytes_be(exponent)).map_err(|e| format!("the EK's RSA key: {e}"))?;
    if rsa::traits::PublicKeyParts::size(&public) != 256 {
        return Err(format!("the EK's RSA key has {} bits; the TCG template L-1 is RSA 2048", rsa::traits::PublicKeyParts::size(&public) * 8));
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    let mut secret = zeroize::Zeroizing::new(vec![0u8; 32]);
    rng.fill_bytes(&mut secret);
    let padding = rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0");
    let encrypted_seed = public.encrypt(rng, padding, seed.as_ref()).map_err(|e| format!("RSA-OAEP to the EK: {e}"))?;
    let (credential_blob, _) = wrap_credential(seed.as_ref(), ak_name, &secret);
    Ok(Credential { credential_blob, secret: tpm2b(&encrypted_seed), expected: secret })
}

/// [`make_credential`] for an ECC NIST P-256 EK (Part 1, C.6.4, 11.4.10.3).
fn make_credential_ecc(x: &[u8], y: &[u8], ak_name: &[u8], rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore)) -> Result<Credential, String> {
    use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
    let (Ok(x32), Ok(y32)) = (<[u8; 32]>::try_from(x), <[u8; 32]>::try_from(y)) else {
        return Err("the EK's ECC key is not a P-256 point (32-byte coordinates)".into());
    };
    let point = p256::EncodedPoint::from_affine_coordinates(&x32.into(), &y32.into(), false);
    let ek = Option::<p256::PublicKey>::from(p256::PublicKey::from_encoded_point(&point)).ok_or("the EK's ECC key is not a point on P-256")?;
    let ephemeral = p256::ecdh::EphemeralSecret::random(rng);
    let q = ephemeral.public_key().to_encoded_point(false);
    let (Some(qx), Some(qy)) = (q.x(), q.y()) else { return Err("the ephemeral ECC point is the identity".into()) };
    let z = ephemeral.diffie_hellman(&ek);
    let seed = kdfe(z.raw_secret_bytes(), "IDENTITY", qx, x, 256);
    let mut secret = zeroize::Zeroizing::new(vec![0u8; 32]);
    rng.fill_bytes(&mut secret);
    let (credential_blob, _) = wrap_credential(&seed, ak_name, &secret);
    let mut ecc_point = tpm2b(qx);
    ecc_point.extend_from_slice(&tpm2b(qy));
    Ok(Credential { credential_blob, secret: tpm2b(&ecc_point), expected: secret })
}

/// KDFe with SHA-256 (TPM 2.0 Part 1, 11.4.10.3, SP 800-56A concatenation KDF): `bits` of
/// SHA-256([i]32 || Z || label || 0x00 || partyUInfo || partyVInfo), i = 1, 2, ….
fn kdfe(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], bits: u32) -> zeroize::Zeroizing<Vec<u8>> {
    use sha2::Digest as _;
    let bytes = bits.div_ceil(8) as usize;
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 0;
    while out.len() < bytes {
        counter += 1;
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
    }
    out.truncate(bytes);
    out
}

/// The TPM2B_ID_OBJECT protecting `secret` for Name `name` under `seed` (Part 1, 24.4–24.5),
/// and the encIdentity inside it.
fn wrap_credential(seed: &[u8], name: &[u8], secret: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let sym_key = kdfa(seed, "STORAGE", name, &[], SYM_BITS);
    let mut enc_identity = tpm2b(secret);
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &[0u8; 16]).expect("AES-128 key and IV sizes").encrypt(&mut enc_identity);
    let hmac_key = kdfa(seed, "INTEGRITY", &[], &[], HMAC_BITS);
    let mut mac = <Hmac<Sha256>>::new_from_slice(&hmac_key).expect("HMAC takes any key size");
    mac.update(&enc_identity);
    mac.update(name);
    let outer = mac.finalize().into_bytes();
    let mut id = tpm2b(&outer);
    id.extend_from_slice(&enc_identity);
    (tpm2b(&id), enc_identity)
}

/// KDFa with SHA-256 (TPM 2.0 Part 1, 11.4.10.2, SP 800-108 counter mode with HMAC):
/// `bits` of HMAC(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32), i = 1, 2, ….
pub(crate) fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> zeroize::Zeroizing<Vec<u8>> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 0;
    while out.len() < bytes {
        counter += 1;
        let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key size");
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
    }
    out.truncate(bytes);
    out
}

fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// True when the manager's `cert_info` is the secret, compared in constant time (subtle).
pub fn secret_matches(expected: &[u8], cert_info: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    expected.len() == cert_info.len() && bool::from(expected.ct_eq(cert_info))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KDFa against the TPM's own: RFC-free, so the vector is the swtpm's TPM2_MakeCredential
    /// (see the integration test); here the structure: lengths and determinism.
    #[test]
    fn kdfa_lengths_and_labels() {
        let a = kdfa(b"seed", "STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(*a, *kdfa(b"seed", "STORAGE", b"name", &[], 128));
        assert_ne!(*a, kdfa(b"seed", "INTEGRITY", b"name", &[], 128)[..]);
        let b = kdfa(b"seed", "INTEGRITY", &[], &[], 256);
        assert_eq!(b.len(), 32);
        // 512 bits: two HMAC blocks, the first is not the 256-bit output (the length is in the input).
        assert_eq!(kdfa(b"seed", "INTEGRITY", &[], &[], 512).len(), 64);
    }

    /// For an ECC EK the secret is the ephemeral point (TPM2B of two 32-byte TPM2Bs), a
    /// point on P-256; a key off the curve is refused.
    #[test]
    fn an_ecc_credential_sends_the_ephemeral_point() {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let ek = p256::SecretKey::random(&mut rand_core::OsRng).public_key().to_encoded_point(false);
        let key = EkKey::Ecc { x: ek.x().unwrap().to_vec(), y: ek.y().unwrap().to_vec() };
        let name = [&[0x00, 0x0b][..], &[7u8; 32]].concat();
        let c = make_credential(&key, &name, &mut rand_core::OsRng).unwrap();
        assert_eq!((c.secret.len(), &c.secret[..4], c.secret[36..38].to_vec()), (2 + 68, &[0, 68, 0, 32][..], vec![0, 32]));
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(&c.secret[4..36]);
        sec1.extend_from_slice(&c.secret[38..]);
        assert!(p256::PublicKey::from_sec1_bytes(&sec1).is_ok(), "the ephemeral point is on the curve");
        assert_eq!((c.credential_blob.len(), c.expected.len()), (2 + 2 + 32 + 34, 32));
        let off = EkKey::Ecc { x: vec![1; 32], y: vec![2; 32] };
        assert!(make_credential(&off, &name, &mut rand_core::OsRng).err().unwrap_or_default().contains("not a point on P-256"));
        assert_eq!(kdfe(b"z", "IDENTITY", b"u", b"v", 256).len(), 32);
        assert_ne!(*kdfe(b"z", "IDENTITY", b"u", b"v", 256), *kdfe(b"z", "IDENTITY", b"v", b"u", 256));
    }

    #[test]
    fn the_credential_blob_is_hmac_then_encrypted_identity() {
        let name = [&[0x00, 0x0b][..], &[7u8; 32]].concat();
        let (blob, enc) = wrap_credential(&[1u8; 32], &name, &[9u8; 32]);
        // TPM2B_ID_OBJECT: size, TPM2B_DIGEST(HMAC-SHA256), encIdentity (2 + 32 bytes).
        assert_eq!(blob.len(), 2 + 2 + 32 + 34);
        assert_eq!(&blob[..4], &[0, 68, 0, 32]);
        assert_eq!(&blob[36..], &enc[..]);
        assert_ne!(&enc[2..], &[9u8; 32][..], "encrypted");
        let (other, _) = wrap_credential(&[1u8; 32], &[&[0x00, 0x0b][..], &[8u8; 32]].concat(), &[9u8; 32]);
        assert_ne!(blob, other, "bound to the Name");
        assert!(secret_matches(&[1, 2], &[1, 2]) && !secret_matches(&[1, 2], &[1, 3]) && !secret_matches(&[1, 2], &[1]));
    }
}
