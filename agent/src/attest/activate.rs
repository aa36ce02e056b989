//! Credential activation, verifier side (`fleet attest --ek-ca`): the manager's EK certificate
//! must chain to a CA the operator trusts, and the AK must be on the TPM that holds that EK.
//!
//! 1. [`check_ek_cert`]: the EK certificate (DER X.509) is shaped like one (not a CA, not
//!    self-signed, the EK usage or the TPM attributes, keyEncipherment/keyAgreement, no SHA-1)
//!    and is signed by a CA certificate of the `--ek-ca` file (every certificate there is a
//!    trust anchor, so an intermediate CA of the maker may be given alone or with its root),
//!    and both are within their validity. The
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
/// Errors: unreadable file, no certificate, a block that is not X.509, a certificate that is
/// not a CA (cA=true and keyUsage keyCertSign).
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
        let (_, c) = X509Certificate::from_der(d).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        ca_shape(&c).map_err(|why| format!("\"{}\" is not a CA: {why}; --ek-ca takes the CA certificates that issue EK certificates (the TPM maker's)", c.subject()))?;
    }
    Ok(ders)
}

/// The EK certificate `ek_der` checked against the trusted `cas` at `now` (Unix seconds).
/// Returns its key. Errors (the row's reason), in this order:
/// - unparsable certificate, or not valid at `now`;
/// - not shaped like an EK certificate (TCG EK Credential Profile 2.0, 3.2): a CA
///   (basicConstraints cA=true), self-signed (subject == issuer), a keyUsage without
///   keyEncipherment (RSA EK) / keyAgreement (ECC EK), neither the EK extended key usage
///   2.23.133.8.1 nor the TPM manufacturer/model/version (2.23.133.2.1/2/3) in the
///   subjectAltName's directoryName, a SHA-1 signature, an unsupported key;
/// - no certificate of the file that is a CA (cA=true and keyCertSign), valid at `now`, of
///   the issuer's name and whose key made the signature: each one tried is named with why.
///
/// A CA of the file that fails is skipped (a renewed CA of the same name may follow it).
/// An organisation CA that also issues TLS certificates does not make them EK certificates:
/// a TLS leaf has no EK usage nor TPM attributes and is refused.
pub fn check_ek_cert(ek_der: &[u8], cas: &[Vec<u8>], now: i64) -> Result<EkIdentity, String> {
    let (_, ek) = X509Certificate::from_der(ek_der).map_err(|e| format!("the manager's EK certificate is not X.509: {e}"))?;
    let ek_text = format!("subject \"{}\" serial {}", ek.subject(), ek.raw_serial_as_string());
    let time = x509_parser::time::ASN1Time::from_timestamp(now).map_err(|e| e.to_string())?;
    if !ek.validity().is_valid_at(time) {
        return Err(format!("the EK certificate ({ek_text}) is not valid now: valid from {} to {}", ek.validity().not_before, ek.validity().not_after));
    }
    let key = ek_key(&ek)?;
    ek_shape(&ek, &key).map_err(|why| format!("the manager's certificate ({ek_text}, issuer \"{}\") is not an EK certificate: {why}", ek.issuer()))?;
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
        if let Err(why) = ca_shape(&ca) {
            tried.push(format!("\"{}\" (its key signed it, but {why})", ca.subject()));
            continue;
        }
        if !ca.validity().is_valid_at(time) {
            tried.push(format!("\"{}\" (its key signed it, but it is not valid now: from {} to {})", ca.subject(), ca.validity().not_before, ca.validity().not_after));
            continue;
        }
        return Ok(EkIdentity { key, ek: ek_text, ca: ca.subject().to_string() });
    }
    Err(format!("the EK certificate ({ek_text}, issuer \"{}\") does not chain to a CA of --ek-ca ({}): another maker's TPM, or not a TPM", ek.issuer(), tried.join(", ")))
}

/// TCG OIDs (TCG EK Credential Profile 2.0, A.1): the EK certificate's extended key usage,
/// and the TPM manufacturer, model and version attributes of its subjectAltName.
const OID_TCG_KP_EK_CERTIFICATE: &str = "2.23.133.8.1";
const OID_TCG_AT_TPM_ATTRIBUTES: [&str; 3] = ["2.23.133.2.1", "2.23.133.2.2", "2.23.133.2.3"];
/// Signature algorithms over SHA-1: sha1WithRSAEncryption (and its OIW alias), ecdsa-with-SHA1,
/// dsa-with-sha1.
const SHA1_SIGNATURES: [&str; 4] = ["1.2.840.113549.1.1.5", "1.3.14.3.2.29", "1.2.840.10045.4.1", "1.2.840.10040.4.3"];

/// Why `ek` is not shaped like an EK certificate for `key` (see [`check_ek_cert`]).
fn ek_shape(ek: &X509Certificate, key: &EkKey) -> Result<(), String> {
    let bc = ek.basic_constraints().map_err(|e| format!("its basicConstraints: {e}"))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err("it is a CA certificate (basicConstraints cA=true)".into());
    }
    if ek.subject().as_raw() == ek.issuer().as_raw() {
        return Err("it is self-signed (subject = issuer)".into());
    }
    let sig = ek.signature_algorithm.algorithm.to_id_string();
    if SHA1_SIGNATURES.contains(&sig.as_str()) {
        return Err(format!("it is signed with SHA-1 ({sig})"));
    }
    if let Some(ku) = ek.key_usage().map_err(|e| format!("its keyUsage: {e}"))? {
        match key {
            EkKey::Rsa { .. } if !ku.value.key_encipherment() => return Err(format!("an RSA EK's keyUsage must have keyEncipherment, it has {}", ku.value)),
            EkKey::Ecc { .. } if !ku.value.key_agreement() => return Err(format!("an ECC EK's keyUsage must have keyAgreement, it has {}", ku.value)),
            _ => {}
        }
    }
    let eku = ek.extended_key_usage().map_err(|e| format!("its extendedKeyUsage: {e}"))?;
    if eku.is_some_and(|e| e.value.other.iter().any(|o| o.to_id_string() == OID_TCG_KP_EK_CERTIFICATE)) {
        return Ok(());
    }
    let san = ek.subject_alternative_name().map_err(|e| format!("its subjectAltName: {e}"))?;
    let tpm_attributes = san.is_some_and(|san| {
        san.value.general_names.iter().any(|g| match g {
            x509_parser::extensions::GeneralName::DirectoryName(n) => {
                OID_TCG_AT_TPM_ATTRIBUTES.iter().all(|want| n.iter_attributes().any(|a| a.attr_type().to_id_string() == *want))
            }
            _ => false,
        })
    });
    if tpm_attributes {
        return Ok(());
    }
    Err(format!("it has neither the EK extended key usage ({OID_TCG_KP_EK_CERTIFICATE}) nor the TPM manufacturer, model and version ({}) in its subjectAltName", OID_TCG_AT_TPM_ATTRIBUTES.join(", ")))
}

/// Why `ca` may not sign certificates: not cA=true, or no keyUsage with keyCertSign (RFC 5280,
/// 4.2.1.3, 4.2.1.9).
fn ca_shape(ca: &X509Certificate) -> Result<(), String> {
    if !ca.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca) {
        return Err("it is not a CA certificate (no basicConstraints cA=true)".into());
    }
    if !ca.key_usage().ok().flatten().is_some_and(|k| k.value.key_cert_sign()) {
        return Err("its keyUsage does not allow keyCertSign".into());
    }
    Ok(())
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

    /// Known answers from an independent implementation: OpenSSL 3.0's KBKDF (SP 800-108
    /// counter mode, HMAC-SHA256, `[i]32 || label || 0x00 || context || [L]32`, which is KDFa
    /// with context = contextU || contextV) and SSKDF (SP 800-56C one-step, SHA-256,
    /// `[i]32 || Z || FixedInfo`, which is KDFe with FixedInfo = label || 0x00 || U || V):
    ///   openssl kdf -keylen 16 -kdfopt digest:SHA2-256 -kdfopt mac:HMAC -kdfopt hexkey:0001…1f
    ///     -kdfopt salt:STORAGE -kdfopt hexinfo:000b07…07 KBKDF
    ///   openssl kdf -keylen 64 -kdfopt digest:SHA2-256 -kdfopt mac:HMAC -kdfopt hexkey:0001…1f
    ///     -kdfopt salt:INTEGRITY KBKDF
    ///   openssl kdf -keylen 32 -kdfopt digest:SHA2-256 -kdfopt hexkey:7a…7a (32 'z')
    ///     -kdfopt hexinfo:<"IDENTITY\0uuuuv"> SSKDF
    #[test]
    fn kdfa_and_kdfe_known_answers_from_openssl() {
        let seed: Vec<u8> = (0u8..32).collect();
        let name = [&[0x00, 0x0b][..], &[7u8; 32]].concat();
        assert_eq!(hex::encode(kdfa(&seed, "STORAGE", &name, &[], 128)), "e62395b6e61888fd7e515ea0c4a18ba6");
        // Two HMAC blocks; L (512) is in each.
        assert_eq!(
            hex::encode(kdfa(&seed, "INTEGRITY", &[], &[], 512)),
            "d46791dd29362215dde127cc788fa5429ca2b999d5b065c0d7c2035dd1537d43278aad03e3b43947cb849dde7b8648d07baafa38888e2000759a5ebe1a2a65a2"
        );
        // The context split between U and V does not matter to KDFa (concatenated).
        assert_eq!(*kdfa(&seed, "STORAGE", &name[..3], &name[3..], 128), *kdfa(&seed, "STORAGE", &name, &[], 128));
        assert_eq!(hex::encode(kdfe(&[b'z'; 32], "IDENTITY", b"uuuu", b"v", 256)), "6255aac5ce09c6ec0afdbc2de6565ee062c0da3a460f6f9da61ccbfb32ba732c");
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

    /// Certificates for [`check_ek_cert`] (rcgen, ECDSA P-256): a CA and the leaves it signs.
    mod certs {
        use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

        pub const Y2030: i64 = 1_893_456_000;
        pub const Y2035: i64 = 2_051_222_400;
        pub const Y2040: i64 = 2_208_988_800;

        fn name(cn: &str) -> DistinguishedName {
            let mut n = DistinguishedName::new();
            n.push(DnType::CommonName, cn);
            n
        }

        pub struct Ca {
            pub der: Vec<u8>,
            pub issuer: Issuer<'static, KeyPair>,
        }

        /// A CA named `cn` with `key`, valid until `until` (Unix seconds), keyCertSign if `sign`.
        pub fn ca(cn: &str, key: KeyPair, until: i64, sign: bool) -> Ca {
            let mut p = CertificateParams::default();
            p.distinguished_name = name(cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = if sign { vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign] } else { vec![KeyUsagePurpose::CrlSign] };
            p.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
            let der = p.self_signed(&key).unwrap().der().to_vec();
            Ca { der, issuer: Issuer::new(p, key) }
        }

        /// The subjectAltName of an EK certificate: a directoryName of the TPM manufacturer,
        /// model and version (TCG EK Credential Profile 2.0, 3.2.9), as swtpm writes it.
        fn tpm_san() -> CustomExtension {
            fn tlv(tag: u8, v: &[u8]) -> Vec<u8> {
                assert!(v.len() < 128);
                [&[tag, v.len() as u8][..], v].concat()
            }
            let attr = |last: u8, value: &str| tlv(0x31, &tlv(0x30, &[tlv(0x06, &[0x67, 0x81, 0x05, 0x02, last]), tlv(0x0c, value.as_bytes())].concat()));
            let dn = tlv(0x30, &[attr(1, "id:00001014"), attr(2, "swtpm"), attr(3, "id:20191023")].concat());
            let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 17], tlv(0x30, &tlv(0xa4, &dn)));
            e.set_criticality(true);
            e
        }

        pub enum Leaf {
            /// keyAgreement and the EK extended key usage.
            EkUsage,
            /// keyAgreement and the TPM attributes in the subjectAltName, no extended key usage.
            EkSan,
            /// A TLS server certificate: digitalSignature, serverAuth.
            Tls,
            /// A TLS certificate without keyUsage.
            TlsNoKeyUsage,
            /// Self-signed (issuer = subject), EK-shaped otherwise.
            SelfSigned,
        }

        /// A leaf of `kind` for a fresh P-256 key, signed by `ca`, valid until `until`.
        pub fn leaf(kind: Leaf, ca: &Ca, until: i64) -> Vec<u8> {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.is_ca = IsCa::ExplicitNoCa;
            p.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
            match kind {
                Leaf::EkUsage | Leaf::SelfSigned => {
                    p.key_usages = vec![KeyUsagePurpose::KeyAgreement];
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])];
                }
                Leaf::EkSan => {
                    p.key_usages = vec![KeyUsagePurpose::KeyAgreement];
                    p.custom_extensions = vec![tpm_san()];
                }
                Leaf::Tls => {
                    p.distinguished_name = name("tls.example.org");
                    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                }
                Leaf::TlsNoKeyUsage => {
                    p.distinguished_name = name("tls.example.org");
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                }
            }
            if let Leaf::SelfSigned = kind {
                p.distinguished_name = name("self");
                return p.self_signed(&key).unwrap().der().to_vec();
            }
            p.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
        }
    }

    /// An EK certificate passes with the EK usage or with the TPM attributes in its
    /// subjectAltName, and with either of its CA's names in the file.
    #[test]
    fn an_ek_certificate_of_the_ca_passes() {
        use certs::*;
        let ca = ca("maker-ek-ca", rcgen::KeyPair::generate().unwrap(), Y2040, true);
        let other = certs::ca("other-maker", rcgen::KeyPair::generate().unwrap(), Y2040, true);
        for kind in [Leaf::EkUsage, Leaf::EkSan] {
            let ek = leaf(kind, &ca, Y2040);
            let id = check_ek_cert(&ek, &[other.der.clone(), ca.der.clone()], Y2035).unwrap();
            assert!(matches!(id.key, EkKey::Ecc { .. }) && id.ca == "CN=maker-ek-ca", "{id:?}");
        }
    }

    /// An --ek-ca file holding a certificate that is not a CA (an EK or TLS leaf) is refused.
    #[test]
    fn an_ek_ca_file_of_a_leaf_is_refused() {
        use certs::*;
        let ca = ca("maker-ek-ca", rcgen::KeyPair::generate().unwrap(), Y2040, true);
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("ca.der"), dir.path().join("leaf.der"));
        std::fs::write(&good, &ca.der).unwrap();
        std::fs::write(&bad, leaf(Leaf::Tls, &ca, Y2040)).unwrap();
        assert_eq!(load_ek_ca(&good).unwrap(), vec![ca.der.clone()]);
        let e = load_ek_ca(&bad).unwrap_err();
        assert!(e.contains("\"CN=tls.example.org\" is not a CA: it is not a CA certificate (no basicConstraints cA=true)"), "{e}");
    }

    /// Each refusal of check_ek_cert with its reason (the review of credential activation).
    #[test]
    fn check_ek_cert_refuses_each_with_its_reason() {
        use certs::*;
        let key = rcgen::KeyPair::generate().unwrap();
        let renewed_key = rcgen::KeyPair::from_pem(&key.serialize_pem()).unwrap();
        let old_ca = ca("maker-ek-ca", key, Y2030, true);
        let renewed = ca("maker-ek-ca", renewed_key, Y2040, true);
        let ek = leaf(Leaf::EkUsage, &renewed, Y2040);
        let refused = |ek: &[u8], cas: &[&Ca], now: i64| check_ek_cert(ek, &cas.iter().map(|c| c.der.clone()).collect::<Vec<_>>(), now).unwrap_err();
        // The EK certificate past its notAfter.
        let e = refused(&ek, &[&renewed], Y2040 + 86_400);
        assert!(e.contains("is not valid now: valid from"), "{e}");
        // The CA expired (its key signed it): refused, said; a renewed CA of the same name and
        // key later in the file is tried and passes.
        let e = refused(&ek, &[&old_ca], Y2035);
        assert!(e.contains("(its key signed it, but it is not valid now: from") && e.contains("does not chain"), "{e}");
        assert_eq!(check_ek_cert(&ek, &[old_ca.der.clone(), renewed.der.clone()], Y2035).unwrap().ca, "CN=maker-ek-ca");
        // The same issuer name, but another key signed it.
        let impostor = ca("maker-ek-ca", rcgen::KeyPair::generate().unwrap(), Y2040, true);
        let e = refused(&leaf(Leaf::EkUsage, &impostor, Y2040), &[&renewed], Y2035);
        assert!(e.contains("\"CN=maker-ek-ca\" (same name, but its key did not sign it)"), "{e}");
        // The CA certificate itself (the root) presented as the EK certificate.
        let e = refused(&renewed.der, &[&renewed], Y2035);
        assert!(e.contains("is not an EK certificate: it is a CA certificate (basicConstraints cA=true)"), "{e}");
        // A self-signed certificate shaped like an EK certificate.
        let e = refused(&leaf(Leaf::SelfSigned, &renewed, Y2040), &[&renewed], Y2035);
        assert!(e.contains("is not an EK certificate: it is self-signed (subject = issuer)"), "{e}");
        // A TLS leaf of the same CA (an organisation CA that issues both): refused for its
        // keyUsage, and without keyUsage for having neither the EK usage nor TPM attributes.
        let e = refused(&leaf(Leaf::Tls, &renewed, Y2040), &[&renewed], Y2035);
        assert!(e.contains("is not an EK certificate: an ECC EK's keyUsage must have keyAgreement"), "{e}");
        let e = refused(&leaf(Leaf::TlsNoKeyUsage, &renewed, Y2040), &[&renewed], Y2035);
        assert!(e.contains("is not an EK certificate: it has neither the EK extended key usage (2.23.133.8.1) nor the TPM manufacturer"), "{e}");
        // A "CA" of the file without keyCertSign: not trusted to sign, said.
        let key = rcgen::KeyPair::generate().unwrap();
        let no_sign = ca("crl-only", key, Y2040, false);
        let e = refused(&leaf(Leaf::EkUsage, &no_sign, Y2040), &[&no_sign], Y2035);
        assert!(e.contains("\"CN=crl-only\" (its key signed it, but its keyUsage does not allow keyCertSign)"), "{e}");
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
