//! Remote attestation, TPM side: the attestation key (AK) and TPM2_Quote (TPM 2.0 Part 3,
//! 18.4) over sha256 PCRs with a verifier's nonce, and the EK certificate from NV.
//!
//! The AK is a **primary key in the endorsement hierarchy** (TPM2_CreatePrimary, Part 3, 24.1)
//! of a fixed template ([`ak_template`]): ECC NIST P-256, ECDSA with SHA-256,
//! restricted|sign|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth, nameAlg sha256. A
//! primary key is derived from the hierarchy's seed (the EPS) and its template, so the same
//! TPM yields the same AK on every boot without persisting anything, and only a TPM2_Clear
//! of the endorsement seed (TPM2_ChangeEPS) changes it. Why not an AK child of the EK: the
//! EK is a decrypt key behind a PolicySecret(endorsement) policy, so loading a child needs
//! a policy session per command and a stored child blob; the endorsement hierarchy already
//! binds the AK to this TPM's seed, and the verifier pins the AK on first contact.
//! The restricted attribute makes the TPM refuse to sign data that starts with
//! TPM_GENERATED_VALUE unless the TPM made it: a quote cannot be forged with this key.
//!
//! No resource manager on the appliance (or swtpm): the AK is flushed on every path
//! ([`Scoped`]).

use tss_esapi::abstraction::nv;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{EccSchemeAlgorithm, HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Data, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;

use crate::context::{Scoped, Tpm};
use crate::error::{failed, TpmError};
use crate::pcr::{check_indices, pcr_selection};

/// Shortest and longest nonce (qualifyingData) accepted, in bytes: at least 128 bits of
/// freshness; at most 64 bytes (a TPM2B_DATA holds a digest of the largest hash).
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// NV indices of the EK certificates (TCG EK Credential Profile 2.0, 2.2.1.4): RSA 2048, ECC P-256.
pub const EK_CERT_NV_INDICES: [(u32, &str); 2] = [(0x01c0_0002, "RSA 2048"), (0x01c0_000a, "ECC P-256")];

/// A quote and what verifies it.
#[derive(Debug, Clone)]
pub struct Quote {
    /// The marshalled TPMS_ATTEST (TPM 2.0 Part 2, 10.12.12; type TPM_ST_ATTEST_QUOTE).
    pub attest: Vec<u8>,
    /// The marshalled TPMT_SIGNATURE (Part 2, 11.3.4): ECDSA/SHA-256 over SHA-256(`attest`).
    pub signature: Vec<u8>,
    /// The AK's TPM2B_PUBLIC (Part 2, 12.2.5): 2-byte size, then the TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
    /// The quoted PCRs (sha256 bank), in index order; values read right after the quote.
    pub pcrs: crate::pcr::PcrValues,
}

/// The EK certificate (DER X.509) or why there is none.
#[derive(Debug, Clone)]
pub enum EkCert {
    Present { nv_index: u32, der: Vec<u8> },
    Absent { reason: String },
}

impl Tpm {
    /// TPM2_Quote of the sha256 `pcrs` with `nonce` as qualifyingData, signed by the AK
    /// ([`ak_template`], created and flushed here), then TPM2_PCR_Read of the same PCRs.
    /// A verifier checks the values against the quote's pcrDigest (a PCR extended between
    /// the two makes them disagree: ask again).
    ///
    /// Errors: `Command` for a nonce outside [`NONCE_LEN`], an index above 23 or a TPM
    /// failure; `Unavailable` when the TPM stops answering.
    pub fn quote(&mut self, nonce: &[u8], pcrs: &[u8]) -> Result<Quote, TpmError> {
        let result = self.quote_op(nonce, pcrs);
        result.map_err(|e| self.reached_through(e))
    }

    fn quote_op(&mut self, nonce: &[u8], pcrs: &[u8]) -> Result<Quote, TpmError> {
        const OP: &str = "TPM2_Quote";
        if !NONCE_LEN.contains(&nonce.len()) {
            return Err(TpmError::Command { op: OP, message: format!("the nonce has {} bytes; give 16 to 64", nonce.len()) });
        }
        let mut wanted = pcrs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        check_indices(OP, &wanted)?;
        let (attest, signature, public) = {
            let primary = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.create_primary(Hierarchy::Endorsement, ak_template()?, None, None, None, None)
                })
                .map_err(failed("TPM2_CreatePrimary"))?;
            let mut ak = Scoped::flush(&mut self.ctx, primary.key_handle.into());
            let data = Data::try_from(nonce.to_vec()).map_err(failed(OP))?;
            let scheme = SignatureScheme::EcDsa { hash_scheme: HashScheme::new(HashingAlgorithm::Sha256) };
            let selection = pcr_selection(&wanted).map_err(failed(OP))?;
            let (attest, signature) = ak
                .execute_with_session(Some(AuthSession::Password), |c| c.quote(primary.key_handle, data, scheme, selection))
                .map_err(failed(OP))?;
            (attest, signature, primary.out_public)
        };
        let marshall = |r: tss_esapi::Result<Vec<u8>>| r.map_err(failed("marshal"));
        let tpmt_public = marshall(public.marshall())?;
        let mut ak_public = (tpmt_public.len() as u16).to_be_bytes().to_vec();
        ak_public.extend_from_slice(&tpmt_public);
        let pcrs = self.read_pcrs(&wanted)?;
        Ok(Quote { attest: marshall(attest.marshall())?, signature: marshall(signature.marshall())?, ak_public, pcrs })
    }

    /// The EK certificate from NV (TPM2_NV_Read, Part 3, 31.13, with owner authorization):
    /// the RSA one at 0x01c00002, else the ECC one at 0x01c0000a; `Absent` with the reason
    /// when neither index is defined or readable. Errors: `Unavailable` when the TPM stops answering.
    pub fn ek_certificate(&mut self) -> Result<EkCert, TpmError> {
        let mut reasons = Vec::new();
        for (index, kind) in EK_CERT_NV_INDICES {
            let handle = TpmHandle::try_from(index).map_err(failed("TPM2_GetCapability"))?;
            let (handles, _) = self
                .ctx
                .execute_without_session(|c| c.get_capability(CapabilityType::Handles, index, 1))
                .map_err(|e| self.reached_through(failed("TPM2_GetCapability")(e)))?;
            if !matches!(handles, CapabilityData::Handles(list) if list.as_ref().contains(&handle)) {
                reasons.push(format!("NV {index:#010x} ({kind}) is not defined"));
                continue;
            }
            let nv_index = NvIndexTpmHandle::new(index).map_err(failed("TPM2_NV_Read"))?;
            match self.ctx.execute_with_session(Some(AuthSession::Password), |c| nv::read_full(c, NvAuth::Owner, nv_index)) {
                Ok(der) => return Ok(EkCert::Present { nv_index: index, der }),
                Err(e) => match self.reached_through(failed("TPM2_NV_Read")(e)) {
                    e @ TpmError::Unavailable { .. } => return Err(e),
                    e => reasons.push(format!("NV {index:#010x} ({kind}) is not readable: {e}")),
                },
            }
        }
        Ok(EkCert::Absent {
            reason: format!("{}: the TPM's maker provisioned no EK certificate (swtpm: `swtpm_setup --create-ek-cert`)", reasons.join("; ")),
        })
    }
}

/// The AK template: ECC NIST P-256, ECDSA/SHA-256, nameAlg sha256, no symmetric algorithm, no
/// KDF, empty authPolicy and unique, restricted|sign|fixedTPM|fixedParent|sensitiveDataOrigin|
/// userWithAuth (TCG "TPM 2.0 Keys for Device Identity and Attestation", 7.3.4.1, with ECC).
pub fn ak_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::create(EccSchemeAlgorithm::EcDsa, Some(HashingAlgorithm::Sha256), None)?)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}
