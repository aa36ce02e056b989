//! The storage root key (SRK) every sealed object lives under: the persistent key at
//! 0x81000001 when it has the TCG template, else derived with TPM2_CreatePrimary (TPM 2.0
//! Part 3, 24.1) in the owner hierarchy. Its Name ties a sealed object to this TPM.

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, EccPoint, Public, PublicBuilder, PublicEccParameters, PublicEccParametersBuilder,
    SymmetricDefinitionObject,
};
use tss_esapi::Context;

use crate::context::{Scoped, Tpm};
use crate::error::{failed, TpmError};

/// Persistent handle of the SRK (TCG "TPM v2.0 Provisioning Guidance", section 7.8).
pub const SRK_PERSISTENT_HANDLE: u32 = 0x8100_0001;

impl Tpm {
    /// Name of the SRK this TPM would seal under now (2-byte nameAlg, then its sha256
    /// digest): the key at 0x81000001 if it has the standard template (TPM 2.0 Part 3,
    /// 30.2 TPM2_GetCapability and 12.4 TPM2_ReadPublic), else the one TPM2_CreatePrimary
    /// (Part 3, 24.1) derives from the template; the transient key is flushed again.
    ///
    /// Errors: `Command` for a TPM failure; `Unavailable` when the TPM stops answering.
    pub fn srk_name(&mut self) -> Result<Vec<u8>, TpmError> {
        let result = self.srk_name_op();
        result.map_err(|e| self.reached_through(e))
    }

    fn srk_name_op(&mut self) -> Result<Vec<u8>, TpmError> {
        let (mut srk_scope, srk_handle) = load_srk(&mut self.ctx)?;
        Ok(srk_scope.tr_get_name(srk_handle.into()).map_err(failed("Esys_TR_GetName"))?.value().to_vec())
    }
}

/// The SRK, held by a guard: the persistent key at 0x81000001 when it has the standard
/// template, else a transient TPM2_CreatePrimary (TPM 2.0 Part 3) of that template in the
/// owner hierarchy.
pub(crate) fn load_srk(ctx: &mut Context) -> Result<(Scoped<'_>, KeyHandle), TpmError> {
    if let Some(handle) = persistent_srk(ctx)? {
        return Ok((Scoped::close(ctx, handle), handle.into()));
    }
    let primary = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, srk_template()?, None, None, None, None)
        })
        .map_err(failed("TPM2_CreatePrimary"))?;
    Ok((Scoped::flush(ctx, primary.key_handle.into()), primary.key_handle))
}

/// The ESAPI handle of the key at 0x81000001 if it is a standard SRK, else `None` (absent,
/// or another kind of key: then we derive our own and leave it alone).
fn persistent_srk(ctx: &mut Context) -> Result<Option<ObjectHandle>, TpmError> {
    let tpm_handle = TpmHandle::try_from(SRK_PERSISTENT_HANDLE).map_err(failed("Esys_TR_FromTPMPublic"))?;
    // Ask first (TPM2_GetCapability) rather than fail on an absent handle: quieter logs.
    let (handles, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, SRK_PERSISTENT_HANDLE, 1))
        .map_err(failed("TPM2_GetCapability"))?;
    let present = matches!(handles, CapabilityData::Handles(list) if list.as_ref().contains(&tpm_handle));
    if !present {
        return Ok(None);
    }
    let mut handle =
        ctx.execute_without_session(|c| c.tr_from_tpm_public(tpm_handle)).map_err(failed("Esys_TR_FromTPMPublic"))?;
    let public = ctx.execute_without_session(|c| c.read_public(handle.into()));
    match public {
        Ok((public, _, _)) if is_srk(&public) => Ok(Some(handle)),
        other => {
            let _ = ctx.tr_close(&mut handle);
            match other {
                Ok(_) => {
                    tracing::warn!("the key at TPM handle 0x81000001 is not a standard ECC P-256 SRK; deriving the SRK with TPM2_CreatePrimary instead");
                    Ok(None)
                }
                Err(e) => Err(failed("TPM2_ReadPublic")(e)),
            }
        }
    }
}

/// Attributes of the TCG SRK template (what tpm2-tools and systemd create):
/// restricted|decrypt|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth, plus noDA if `no_da`.
fn srk_attributes(no_da: bool) -> tss_esapi::Result<ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(no_da)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
}

fn srk_parameters() -> tss_esapi::Result<PublicEccParameters> {
    PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
}

/// TCG SRK template, ECC P-256 (TCG "TPM v2.0 Provisioning Guidance", 7.5.1): nameAlg
/// sha256, AES-128-CFB, no scheme, no KDF, empty authPolicy and unique, noDA set.
fn srk_template() -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(srk_attributes(true)?)
        .with_ecc_parameters(srk_parameters()?)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Whether `public` is a key of the SRK template. noDA may be clear: `tpm2_createprimary
/// -G ecc256:aes128cfb` (tpm2-tools' default attributes) omits it; the key is the same kind.
fn is_srk(public: &Public) -> bool {
    let (Ok(with_da), Ok(without_da), Ok(params)) = (srk_attributes(true), srk_attributes(false), srk_parameters())
    else {
        return false;
    };
    match public {
        Public::Ecc { object_attributes, name_hashing_algorithm, auth_policy, parameters, .. } => {
            (*object_attributes == with_da || *object_attributes == without_da)
                && *name_hashing_algorithm == HashingAlgorithm::Sha256
                && auth_policy.value().is_empty()
                && *parameters == params
        }
        _ => false,
    }
}
