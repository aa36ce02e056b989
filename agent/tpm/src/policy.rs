//! The authPolicy a key is sealed under, and its digest computed without a TPM (TPM 2.0
//! Part 3, 23.7 TPM2_PolicyPCR and 23.16 TPM2_PolicyAuthorize; the policy session in
//! `unseal.rs` replays the same steps in the TPM). Pure: no TPM I/O here; the digests are
//! checked against `tpm2_createpolicy` below and against a swtpm in `agent/tests/authorize.rs`.
//! See `docs/sealing.md` for which PCRs are sealed and why.

use sha2::{Digest as _, Sha256};

use crate::error::TpmError;
use crate::pcr::{check_indices, check_values, PcrValues, SHA256_LEN};
use crate::pcrsig::PcrPublicKey;

/// TPM_CC_PolicyAuthorize (TPM 2.0 Part 2, table 12).
const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;

/// The policy a key is sealed under (the sealed object's authPolicy, see [`Policy::digest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// TPM2_PolicyPCR over `values` in the sha256 bank.
    Pcr { values: PcrValues },
    /// Signed PCR policy: TPM2_PolicyAuthorize(`key`'s Name, empty policyRef), then
    /// TPM2_PolicyPCR over the literal `values` (none when empty). Unsealing needs a signature
    /// by `key` over the TPM2_PolicyPCR digest of the current values of `signed_pcrs`
    /// (ascending, sha256 bank; systemd-measure signs `[11]`).
    Authorize { key: PcrPublicKey, signed_pcrs: Vec<u8>, values: PcrValues },
}

impl Policy {
    /// The authPolicy digest of this policy (32 bytes, sha256): [`pcr_policy_digest`] or
    /// [`authorize_policy_digest`]. Pure: no TPM involved.
    pub fn digest(&self) -> Vec<u8> {
        match self {
            Policy::Pcr { values } => pcr_policy_digest(values),
            Policy::Authorize { key, values, .. } => authorize_policy_digest(&key.name(), values),
        }
    }

    /// The PCR values the policy holds literally (every PCR of `Pcr`, the unsigned ones of `Authorize`).
    pub fn literal_values(&self) -> &PcrValues {
        match self {
            Policy::Pcr { values } | Policy::Authorize { values, .. } => values,
        }
    }
}

pub use swarmseal_common::pcrpolicy::{pcr_policy_digest, pcr_values_digest};
use swarmseal_common::pcrpolicy::policy_pcr_update;

/// Signed-policy digest (TPM 2.0 Part 3, 23.16 TPM2_PolicyAuthorize, then 23.7 TPM2_PolicyPCR):
/// `d1 = SHA-256(0^32 || TPM_CC_PolicyAuthorize || keyName)`, `d2 = SHA-256(d1 || policyRef)`
/// with an empty policyRef, then the PolicyPCR update of [`pcr_policy_digest`] from `d2` over
/// `literal` (none when empty). `key_name` is the signing key's Name (34 bytes,
/// [`PcrPublicKey::name`]). Returns 32 bytes. Pure: no TPM involved.
pub fn authorize_policy_digest(key_name: &[u8], literal: &PcrValues) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([0u8; SHA256_LEN]); // TPM2_PolicyAuthorize resets the digest first
    h.update(TPM_CC_POLICY_AUTHORIZE.to_be_bytes());
    h.update(key_name);
    let d1 = h.finalize();
    let d2 = Sha256::digest(d1); // || policyRef, empty
    if literal.is_empty() {
        return d2.to_vec();
    }
    policy_pcr_update(&d2, literal)
}

/// A `Pcr` policy needs at least one PCR; an `Authorize` policy at least one signed PCR and
/// possibly no literal one; signed and literal PCRs are distinct.
pub(crate) fn check_policy(op: &'static str, policy: &Policy) -> Result<(), TpmError> {
    match policy {
        Policy::Pcr { values } => check_values(op, values),
        Policy::Authorize { signed_pcrs, values, .. } => {
            if signed_pcrs.is_empty() {
                return Err(TpmError::Command { op, message: "the signed PCR policy covers no PCR".into() });
            }
            check_indices(op, signed_pcrs)?;
            if let Some(p) = signed_pcrs.iter().find(|p| values.contains_key(p)) {
                return Err(TpmError::Command { op, message: format!("PCR {p} is both signed and literal in the policy") });
            }
            if values.is_empty() {
                return Ok(());
            }
            check_values(op, values)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[(u8, Vec<u8>)]) -> PcrValues {
        v.iter().cloned().collect()
    }

    // Expected digests produced once with tpm2-tools 5.4 against a swtpm:
    //   printf '\x07%.0s' {1..32} > pcrs.bin; (then 32 × 0x0b, 32 × 0x0f appended)
    //   tpm2_createpolicy --policy-pcr -l sha256:7,11,15 -f pcrs.bin -L pol.bin; xxd -p pol.bin
    #[test]
    fn policy_digest_matches_tpm2_createpolicy_7_11_15() {
        let v = values(&[(7, vec![0x07; 32]), (11, vec![0x0b; 32]), (15, vec![0x0f; 32])]);
        assert_eq!(
            hex::encode(pcr_policy_digest(&v)),
            "2610b691f0fe6dff8867119f7439989cda00a33871a05bcfe11746405dda5eaf"
        );
    }

    // tpm2_createpolicy --policy-pcr -l sha256:7,11,15 -L pol.bin on a fresh swtpm (all three PCRs zero).
    #[test]
    fn policy_digest_matches_tpm2_createpolicy_zero_pcrs() {
        let v = values(&[(7, vec![0; 32]), (11, vec![0; 32]), (15, vec![0; 32])]);
        assert_eq!(
            hex::encode(pcr_policy_digest(&v)),
            "45e65748b92872469a903126d14550943bc668eaf5a7326c8e2b780119f0d134"
        );
    }

    // 32 × 0xab in pcr7.bin; tpm2_createpolicy --policy-pcr -l sha256:7 -f pcr7.bin -L pol.bin
    #[test]
    fn policy_digest_matches_tpm2_createpolicy_single_pcr() {
        let v = values(&[(7, vec![0xab; 32])]);
        assert_eq!(
            hex::encode(pcr_policy_digest(&v)),
            "5cd221f3d651f93dcd190045ab3df12ba6bcd85299942e3da4fdd8fda7dfdb00"
        );
    }

    // pcrs.bin = sha256("zero") || sha256("seven") || sha256("twentythree");
    // tpm2_createpolicy --policy-pcr -l sha256:0,7,23 -f pcrs.bin -L pol.bin (all three selection octets used).
    #[test]
    fn policy_digest_matches_tpm2_createpolicy_0_7_23() {
        let h = |s: &str| Sha256::digest(s.as_bytes()).to_vec();
        let v = values(&[(0, h("zero")), (7, h("seven")), (23, h("twentythree"))]);
        assert_eq!(
            hex::encode(pcr_policy_digest(&v)),
            "16f24e2745b4b9ba50b8e25edf3b4ec1f67c54790774c9c6e82264b3ecd51b99"
        );
    }

    // The PolicyAuthorize step by hand from TPM 2.0 Part 3, 23.16: two hashes, the second over
    // the empty policyRef; then PolicyPCR continues from it. (tests/authorize.rs checks the
    // same digests against tpm2_policyauthorize + tpm2_policypcr on a swtpm.)
    #[test]
    fn authorize_digest_is_policyauthorize_then_policypcr() {
        let name = [[0x00, 0x0b].as_slice(), &[0x5a; 32]].concat();
        let mut d1 = Sha256::new();
        d1.update([0u8; 32]);
        d1.update(0x0000_016Au32.to_be_bytes());
        d1.update(&name);
        let d2 = Sha256::digest(d1.finalize());
        assert_eq!(authorize_policy_digest(&name, &PcrValues::new()), d2.to_vec());
        let literal = values(&[(7, vec![0x07; 32]), (15, vec![0x0f; 32])]);
        assert_eq!(authorize_policy_digest(&name, &literal), policy_pcr_update(&d2, &literal));
        assert_ne!(authorize_policy_digest(&name, &literal), pcr_policy_digest(&literal));
    }

    #[test]
    fn signed_and_literal_pcrs_must_be_distinct() {
        let key = crate::pcrsig::PcrPublicKey::from_pem(
            b"-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIpL83hNgiQbsr2frv1Zw6ZR4yEDt
nPR3ol5o7I+bfPJwTaTkJOqvmSfHlCBRVlylSUGOhoc6AVaN3Y5bFycnHQ==
-----END PUBLIC KEY-----
",
        )
        .unwrap();
        let p = |signed: Vec<u8>, v: &[(u8, Vec<u8>)]| Policy::Authorize { key: key.clone(), signed_pcrs: signed, values: values(v) };
        assert!(check_policy("t", &p(vec![11], &[(7, vec![0; 32])])).is_ok());
        assert!(check_policy("t", &p(vec![11], &[])).is_ok(), "no literal PCR: PolicyAuthorize alone");
        assert!(check_policy("t", &p(vec![], &[(7, vec![0; 32])])).is_err());
        assert!(check_policy("t", &p(vec![11], &[(11, vec![0; 32])])).is_err());
    }
}
