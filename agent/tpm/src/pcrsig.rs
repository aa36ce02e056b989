//! The inputs of a signed PCR policy, in systemd's formats: the PCR-signing public key
//! (the UKI's `.pcrpkey` section, `/run/systemd/tpm2-pcr-public-key.pem` once systemd-stub
//! booted it) and the signatures over expected PCR 11 policies (the UKI's `.pcrsig` section,
//! `/run/systemd/tpm2-pcr-signature.json`), as `systemd-measure sign` / `ukify` write them.
//!
//! Signature file (JSON, one entry per boot phase and key):
//! ```json
//! { "sha256": [ { "pcrs": [11], "pkfp": "<hex sha256 of the key, i2d_PublicKey: see below>",
//!                 "pol": "<hex TPM2_PolicyPCR digest over those PCRs>",
//!                 "sig": "<base64 signature over sha256(pol)>" }, … ] }
//! ```
//! `sig` is RSASSA-PKCS1-v1_5 with SHA-256 for an RSA key, DER-encoded ECDSA with SHA-256
//! for an ECC P-256 key (`EVP_DigestSign` with the bank's hash, in systemd's
//! `src/measure/measure.c`). Banks other than sha256 are ignored (we only use sha256).
//!
//! Pure: no TPM, no secret. The TPM checks the signature (`tpm::Tpm::unseal`,
//! TPM2_VerifySignature); this module finds the entry and shapes the TPM structures.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use swarmseal_common::signing::SigningKey;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{EccSchemeAlgorithm, HashingAlgorithm, PublicAlgorithm, RsaSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    EccParameter, EccPoint, EccScheme, EccSignature, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme, RsaSignature,
    Signature, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;

pub use swarmseal_common::pcrpolicy::{PcrSigError, PcrSignatures, SignedPolicy};

/// TPM_ALG_SHA256 as the first two bytes of a Name (TPM 2.0 Part 1, 16 Names).
const NAME_ALG_SHA256: [u8; 2] = [0x00, 0x0B];
/// The TPM's default RSA exponent; a TPMT_PUBLIC writes it as 0 (TPM 2.0 Part 2, TPMS_RSA_PARMS).
const RSA_DEFAULT_EXPONENT: u32 = 65_537;
/// Size of one P-256 coordinate or signature half, in bytes.
const P256_LEN: usize = 32;

/// What kind of key signs the PCR policies: RSA 2048 to 4096 bits (ukify's default is 2048),
/// or ECC NIST P-256.
pub use swarmseal_common::signing::KeyKind;

/// The PCR-signing public key (read by [`SigningKey`], shared with the release check) and the
/// TPMT_PUBLIC systemd loads for it (TPM2_LoadExternal), whose Name the sealed policy is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrPublicKey {
    key: SigningKey,
    public: Public,
}

impl PcrPublicKey {
    /// Read a PEM `PUBLIC KEY` file (SubjectPublicKeyInfo), e.g. `/run/systemd/tpm2-pcr-public-key.pem`.
    ///
    /// Errors: `Read` when the file cannot be read; `Invalid` when it is not an RSA (2048 to 4096
    /// bits) or ECC P-256 public key in PEM.
    pub fn load(path: &Path) -> Result<PcrPublicKey, PcrSigError> {
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| PcrSigError::Read { path: name.clone(), source })?;
        PcrPublicKey::from_pem(&pem).map_err(|message| PcrSigError::Invalid { path: name, message })
    }

    /// Parse a PEM `-----BEGIN PUBLIC KEY-----` block. Errors: a sentence saying what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<PcrPublicKey, String> {
        PcrPublicKey::new(SigningKey::from_pem(pem)?)
    }

    /// Parse a DER SubjectPublicKeyInfo (RFC 5280, 4.1). Errors: a sentence saying what is wrong.
    pub fn from_der(der: &[u8]) -> Result<PcrPublicKey, String> {
        PcrPublicKey::new(SigningKey::from_der(der)?)
    }

    fn new(key: SigningKey) -> Result<PcrPublicKey, String> {
        let public = match (key.rsa(), key.ecc_point()) {
            (Some((n, e)), _) => rsa_public(n, e)?,
            (None, Some(point)) => ecc_p256_public(point)?,
            (None, None) => unreachable!("a SigningKey is RSA or ECC P-256"),
        };
        Ok(PcrPublicKey { key, public })
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn der(&self) -> &[u8] {
        self.key.der()
    }

    pub fn kind(&self) -> KeyKind {
        self.key.kind()
    }

    /// systemd's `pkfp` (32 bytes): see [`SigningKey::fingerprint`].
    pub fn fingerprint(&self) -> Vec<u8> {
        self.key.fingerprint().to_vec()
    }

    /// The public area TPM2_LoadExternal gets, as systemd builds it
    /// (`tpm2_tpm2b_public_from_openssl_pkey`): nameAlg sha256, decrypt|sign|userWithAuth,
    /// no symmetric algorithm, no scheme, the default RSA exponent written as 0.
    pub fn tpm_public(&self) -> Public {
        self.public.clone()
    }

    /// The key's TPM Name (TPM 2.0 Part 1, 16 Names): 0x000B || SHA-256(TPMT_PUBLIC), 34 bytes.
    /// This is the `keySign` of TPM2_PolicyAuthorize and what the sealed policy is bound to.
    pub fn name(&self) -> Vec<u8> {
        let marshalled = self.public.marshall().expect("a public area built by PcrPublicKey marshals");
        let mut name = NAME_ALG_SHA256.to_vec();
        name.extend_from_slice(&Sha256::digest(marshalled));
        name
    }

    /// The TPMT_SIGNATURE for TPM2_VerifySignature from a `sig` of the signature file:
    /// RSASSA/SHA-256 as is, ECDSA/SHA-256 from its DER `Ecdsa-Sig-Value` (r, s).
    /// Errors: a sentence saying what is wrong.
    pub fn tpm_signature(&self, sig: &[u8]) -> Result<Signature, String> {
        match self.key.kind() {
            KeyKind::Rsa => {
                let s = PublicKeyRsa::try_from(sig.to_vec()).map_err(|e| format!("the RSA signature does not fit: {e}"))?;
                Ok(Signature::RsaSsa(RsaSignature::create(HashingAlgorithm::Sha256, s).map_err(|e| e.to_string())?))
            }
            KeyKind::EccP256 => {
                #[derive(serde::Deserialize)]
                struct EcdsaSig {
                    r: picky_asn1::wrapper::IntegerAsn1,
                    s: picky_asn1::wrapper::IntegerAsn1,
                }
                let parsed: EcdsaSig =
                    picky_asn1_der::from_bytes(sig).map_err(|e| format!("not a DER ECDSA signature: {e}"))?;
                let half = |v: &picky_asn1::wrapper::IntegerAsn1| {
                    EccParameter::try_from(left_pad(strip_zeros(v.as_unsigned_bytes_be()), P256_LEN)?)
                        .map_err(|e| e.to_string())
                };
                Ok(Signature::EcDsa(
                    EccSignature::create(HashingAlgorithm::Sha256, half(&parsed.r)?, half(&parsed.s)?)
                        .map_err(|e| e.to_string())?,
                ))
            }
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

fn left_pad(b: &[u8], len: usize) -> Result<Vec<u8>, String> {
    if b.len() > len {
        return Err(format!("a P-256 value has at most {len} bytes, this one {}", b.len()));
    }
    let mut out = vec![0u8; len - b.len()];
    out.extend_from_slice(b);
    Ok(out)
}

fn attributes() -> Result<tss_esapi::attributes::ObjectAttributes, String> {
    ObjectAttributesBuilder::new()
        .with_decrypt(true)
        .with_sign_encrypt(true)
        .with_user_with_auth(true)
        .build()
        .map_err(|e| e.to_string())
}

fn rsa_public(n: &[u8], e: &[u8]) -> Result<Public, String> {
    let bits = match n.len() * 8 {
        2048 => RsaKeyBits::Rsa2048,
        3072 => RsaKeyBits::Rsa3072,
        4096 => RsaKeyBits::Rsa4096,
        other => return Err(format!("an RSA key of {other} bits; use 2048 (ukify's default), 3072 or 4096")),
    };
    if e.is_empty() || e.len() > 4 {
        return Err("its RSA exponent does not fit in 32 bits".into());
    }
    let exponent = e.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    let exponent = if exponent == RSA_DEFAULT_EXPONENT { 0 } else { exponent };
    let parameters = PublicRsaParametersBuilder::new()
        .with_scheme(RsaScheme::create(RsaSchemeAlgorithm::Null, None).map_err(|e| e.to_string())?)
        .with_key_bits(bits)
        .with_exponent(RsaExponent::create(exponent).map_err(|e| e.to_string())?)
        .with_symmetric(SymmetricDefinitionObject::Null)
        .build()
        .map_err(|e| e.to_string())?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes()?)
        .with_rsa_parameters(parameters)
        .with_rsa_unique_identifier(PublicKeyRsa::try_from(n.to_vec()).map_err(|e| e.to_string())?)
        .build()
        .map_err(|e| e.to_string())
}

fn ecc_p256_public(point: &[u8]) -> Result<Public, String> {
    // SEC 1 uncompressed point: 0x04 || x || y.
    let [0x04, xy @ ..] = point else {
        return Err("its EC point is not in uncompressed form".into());
    };
    if xy.len() != 2 * P256_LEN {
        return Err(format!("its EC point has {} bytes; a P-256 point has {}", point.len(), 1 + 2 * P256_LEN));
    }
    let (x, y) = xy.split_at(P256_LEN);
    let parameters = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::create(EccSchemeAlgorithm::Null, None, None).map_err(|e| e.to_string())?)
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_symmetric(SymmetricDefinitionObject::Null)
        .build()
        .map_err(|e| e.to_string())?;
    let param = |v: &[u8]| EccParameter::try_from(v.to_vec()).map_err(|e| e.to_string());
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes()?)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::new(param(x)?, param(y)?))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 | openssl pkey -pubout
    const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAjX8vgfX0yyS+/6+yN+a9
SDGlem9jTJ8EHA3zQn9El3wwg/oVQ8K0p9EMxqAB+XPnzZXJGIwxkwf2QLR46n1G
dVP0JaOpXFkafvh+0CFfAk8FjMxxPuk+zezq5AFANbMCVdBzeIgeSZyLJSSbxk0Z
uAx7cLvktBiyOCiL4m9Qi/IiZzeKRUYcul4lIApDC5xcrwaW8TjB5vhnWWzRqjLO
CGaeO8eJizh57jRDy+gK8h6J4QxI6jLQmFiHLnaWhwgHLFmLwB17N6SebYW8YjaL
pFaOTAHOe1OzpGDeYyUnZJ5iBM9/PKYOBM+lCwBN/0XQEt8H2qNljKOJyjSzYLhc
/wIDAQAB
-----END PUBLIC KEY-----
";

    #[test]
    fn rsa_pem_becomes_systemds_public_area() {
        let k = PcrPublicKey::from_pem(RSA_PEM.as_bytes()).unwrap();
        assert_eq!(k.kind(), KeyKind::Rsa);
        let Public::Rsa { parameters, unique, object_attributes, .. } = k.tpm_public() else { panic!() };
        assert_eq!(unique.value().len(), 256);
        assert_eq!(u32::from(parameters.exponent()), 0, "65537 is written as 0, as systemd does");
        assert!(object_attributes.decrypt() && object_attributes.sign_encrypt() && object_attributes.user_with_auth());
        assert!(!object_attributes.fixed_tpm());
        assert_eq!(k.name().len(), 34);
        assert_eq!(&k.name()[..2], &[0, 0x0b]);
        // systemd's pkfp hashes the PKCS#1 RSAPublicKey (i2d_PublicKey): the SPKI minus its
        // 24-byte header (SEQUENCE, rsaEncryption AlgorithmIdentifier, BIT STRING) for RSA 2048.
        assert_eq!(k.fingerprint(), Sha256::digest(&k.der()[24..]).to_vec());
        assert_eq!(&k.der()[24..26], &[0x30, 0x82], "an RSAPublicKey SEQUENCE follows the header");
    }

    // openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkey -pubout
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIpL83hNgiQbsr2frv1Zw6ZR4yEDt
nPR3ol5o7I+bfPJwTaTkJOqvmSfHlCBRVlylSUGOhoc6AVaN3Y5bFycnHQ==
-----END PUBLIC KEY-----
";

    #[test]
    fn ecc_pkfp_hashes_the_ec_point_as_it_is_in_the_file() {
        let k = PcrPublicKey::from_pem(P256_PEM.as_bytes()).unwrap();
        assert_eq!(k.kind(), KeyKind::EccP256);
        // 26-byte header (SEQUENCE, id-ecPublicKey + prime256v1, BIT STRING, 0 unused bits),
        // then the 65-byte uncompressed point that systemd's pkfp hashes.
        assert_eq!((k.der().len(), k.der()[25], k.der()[26]), (91, 0x00, 0x04));
        assert_eq!(k.fingerprint(), Sha256::digest(&k.der()[26..]).to_vec());
        // A BIT STRING with unused bits is not a key's bits: refused, not hashed differently.
        let mut odd = k.der().to_vec();
        odd[25] = 1;
        assert!(PcrPublicKey::from_der(&odd).is_err());
    }

    #[test]
    fn not_a_key_is_refused_with_a_reason() {
        assert!(PcrPublicKey::from_pem(b"hello").unwrap_err().contains("PEM"));
        let cert_like = RSA_PEM.replace("PUBLIC KEY", "CERTIFICATE");
        assert!(PcrPublicKey::from_pem(cert_like.as_bytes()).is_err());
    }

    #[test]
    fn signature_file_is_parsed_like_systemd() {
        let json = br#"{"sha256":[
            {"pcrs":[11],"pkfp":"aa","pol":"bb","sig":"AQID"},
            {"pcrs":[11],"pkfp":"aa","pol":"cc"},
            {"pcrs":[11,7],"pkfp":"aa","pol":"dd","sig":"AQID"}],
          "sha1":[{"pcrs":[11],"pkfp":"aa","pol":"ee","sig":"AQID"}]}"#;
        let s = PcrSignatures::parse(json, "sig.json").unwrap();
        assert_eq!(s.entries.len(), 2, "the entry without `sig` is skipped, sha1 ignored");
        assert_eq!(s.find(&[11], &[0xaa], &[0xbb]).unwrap().sig, vec![1, 2, 3]);
        assert!(s.find(&[11], &[0xaa], &[0xcc]).is_none());
        assert!(s.find(&[7, 11], &[0xaa], &[0xdd]).is_some(), "pcrs are compared as a set");
        assert_eq!(s.count_by_key(&[11], &[0xaa]), 1);
        let e = PcrSignatures::parse(br#"{"sha256":[{"pcrs":[11],"pkfp":"zz","pol":"bb","sig":"AQID"}]}"#, "sig.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sig.json") && e.contains("pkfp"), "{e}");
        assert!(PcrSignatures::parse(b"[1]", "x.json").unwrap_err().to_string().contains("x.json"));
    }
}
