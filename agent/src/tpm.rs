//! Seal and unseal the unlock key in a TPM 2.0.
//!
//! Interface contract used by `keystore`, `boot` and `cli`; see the docs on each item.
//!
//! What the TPM holds (DESIGN.md, "Sealing"):
//! - Parent: the standard ECC P-256 storage root key (SRK) of the TCG template, read from
//!   the persistent handle `0x81000001` when a key of that template lives there, else
//!   recreated with TPM2_CreatePrimary in the owner hierarchy (transient, flushed after use).
//!   Its Name is stored with the sealed object and checked before unsealing.
//! - Sealed object: KEYEDHASH, `fixedTPM|fixedParent`, no `userWithAuth`, authPolicy only,
//!   nameAlg sha256. The authPolicy is one of ([`Policy`]):
//!   - `Pcr`: TPM2_PolicyPCR over literal sha256 PCR values;
//!   - `Authorize` (signed PCR policy, as systemd-cryptenroll `--tpm2-public-key`):
//!     TPM2_PolicyAuthorize(Name of a PCR-signing public key, empty policyRef), then
//!     TPM2_PolicyPCR over the literal PCRs. Unsealing needs a signature by that key over a
//!     TPM2_PolicyPCR digest of the current signed PCRs (PCR 11), as systemd-measure writes them
//!     ([`crate::pcrsig`]): a new image ships a new signature instead of needing a reseal.
//! - TPM2_Create and TPM2_Unseal run in sessions salted to the SRK, with AES-128-CFB
//!   parameter encryption, so the secret never crosses the TPM bus in clear. The secret
//!   comes from the caller (OS RNG); TPM2_GetRandom is never used.
//!
//! Every TPM handle this module creates (transient SRK, loaded object, sessions) is held by
//! a [`Scoped`] guard and released on every path, errors included: without a resource
//! manager (swtpm, `device:/dev/tpm0`) a leaked handle fills the TPM (TPM_RC_OBJECT_MEMORY).
//!
//! Secrets never appear in errors, `Debug` output or logs.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, DigestValues, EccPoint, KeyedHashScheme, Name, Nonce, PcrSelectSize, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder, PublicEccParameters, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::pcrsig::{PcrPublicKey, PcrSignatures};

/// PCR values of one bank: index → digest (32 bytes for sha256).
pub type PcrValues = BTreeMap<u8, Vec<u8>>;

/// Persistent handle of the SRK (TCG "TPM v2.0 Provisioning Guidance", section 7.8).
pub const SRK_PERSISTENT_HANDLE: u32 = 0x8100_0001;

/// Highest PCR index accepted (PC Client TPMs have 24 PCRs per bank: 0..=23).
pub const MAX_PCR: u8 = 23;

/// Largest secret a sealed KEYEDHASH object holds (MAX_SYM_DATA, TPM 2.0 Part 2), in bytes.
pub const MAX_SECRET_LEN: usize = 128;

/// TPM_CC_PolicyPCR (TPM 2.0 Part 2, table 12).
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// TPM_CC_PolicyAuthorize (TPM 2.0 Part 2, table 12).
const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
/// Hierarchy the PCR-signing public key is loaded into (TPM2_LoadExternal). Not the null
/// hierarchy: TPM2_VerifySignature with a key there returns a NULL ticket, which
/// TPM2_PolicyAuthorize rejects (TPM 2.0 Part 3, 20.1 and 23.16). The owner hierarchy needs
/// no authorization to load a public key (systemd does the same).
const SIGNING_KEY_HIERARCHY: Hierarchy = Hierarchy::Owner;
/// TPM_ALG_SHA256 (TPM 2.0 Part 2, table 9).
const TPM_ALG_SHA256: u16 = 0x000B;
/// Size of one sha256 PCR value, in bytes.
const SHA256_LEN: usize = 32;

/// One PCR whose current value differs from the value at sealing time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PcrDiff {
    pub pcr: u8,
    /// hex
    pub sealed: String,
    /// hex
    pub current: String,
}

/// `PCR 11 sealed <hex> now <hex>`.
impl std::fmt::Display for PcrDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PCR {} sealed {} now {}", self.pcr, self.sealed, self.current)
    }
}

/// What the TPM holds for one sealed unlock key (TPM 2.0 Part 3, TPM2_Create outputs),
/// plus what is needed to load and check it. No secret in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedObject {
    /// Marshalled TPM2B_PUBLIC of the sealed KEYEDHASH object (2-byte big-endian size, then TPMT_PUBLIC).
    pub public: Vec<u8>,
    /// Marshalled TPM2B_PRIVATE (2-byte big-endian size, then the blob encrypted by the SRK).
    pub private: Vec<u8>,
    /// Name of the SRK (parent) at sealing time (2-byte nameAlg, then the digest); checked before unsealing.
    pub srk_name: Vec<u8>,
    /// The object's authPolicy digest (32 bytes, sha256).
    pub policy_digest: Vec<u8>,
}

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

/// One PCR value, for messages: `PCR 11 = <hex>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PcrValue {
    pub pcr: u8,
    /// hex
    pub value: String,
}

impl std::fmt::Display for PcrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PCR {} = {}", self.pcr, self.value)
    }
}

/// `values` as [`PcrValue`]s, in index order.
pub fn pcr_value_list(values: &PcrValues) -> Vec<PcrValue> {
    values.iter().map(|(pcr, v)| PcrValue { pcr: *pcr, value: hex::encode(v) }).collect()
}

/// TPM errors. `Display` is the operator sentence.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("cannot reach the TPM through TCTI `{tcti}`: {message}")]
    Unavailable { tcti: String, message: String },
    #[error("the TPM refused to unseal: the boot measurements changed since sealing ({})", describe_diffs(.changed))]
    PolicyMismatch { changed: Vec<PcrDiff> },
    #[error("the storage root key (SRK) differs from the one the key was sealed under: this disk was sealed on a different machine or the TPM was cleared. Unlock with the escrowed key (`age -d -i KEY <state_dir>/escrow/unlock-key.age | swarmseal unlock --manual`) or the operator's copy: that reseals it to this TPM")]
    SrkMismatch,
    /// Signed PCR policy: the signature file has no entry by the key for the current values.
    #[error("{} is not signed: {file} holds no signature by the PCR signing key {key} for it ({})", list_values(.signed), describe_key_entries(*.by_key))]
    NotSigned { file: String, key: String, signed: Vec<PcrValue>, by_key: usize },
    /// Signed PCR policy: the entry is there but the TPM says its signature is not the key's.
    #[error("the signature in {file} for {} does not verify with the PCR signing key {key} (TPM2_VerifySignature: {message}): the file is damaged or forged", list_values(.signed))]
    BadSignature { file: String, key: String, signed: Vec<PcrValue>, message: String },
    #[error("the TPM operation {op} failed: {message}")]
    Command { op: &'static str, message: String },
    /// A transient TPM condition (TPM 2.0 Part 2, 6.6.3 format-zero warnings: TPM_RC_RETRY,
    /// TPM_RC_YIELDED, TPM_RC_TESTING, TPM_RC_OBJECT_MEMORY, TPM_RC_SESSION_MEMORY, …): the
    /// command did nothing and may succeed when repeated.
    #[error("the TPM is busy: {op} answered {message}; nothing was consumed, retry in a moment (a TPM without a resource manager fills up when another program leaves objects loaded: `tpm2_flushcontext -t`)")]
    Busy { op: &'static str, message: String },
}

impl TpmError {
    /// True when repeating the operation may succeed: the TPM did not answer (`Unavailable`)
    /// or answered with a transient warning (`Busy`). A refusal (policy, signature, SRK) is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TpmError::Unavailable { .. } | TpmError::Busy { .. })
    }
}

fn list_values(v: &[PcrValue]) -> String {
    v.iter().map(PcrValue::to_string).collect::<Vec<_>>().join(", ")
}

fn describe_key_entries(n: usize) -> String {
    match n {
        0 => "it holds no signature by that key at all: the image was signed with another key, or not for this policy".into(),
        n => format!("that key signed {n} other value(s): this boot's image (UKI) is not one it signed, or the PCR was extended since"),
    }
}

fn describe_diffs(d: &[PcrDiff]) -> String {
    if d.is_empty() {
        return "no PCR in the policy differs from its sealed value; the policy digest itself differs".into();
    }
    d.iter().map(PcrDiff::to_string).collect::<Vec<_>>().join("; ")
}

/// Map a TSS error to `TpmError::Command` for the TPM command `op`, or to `Unavailable`
/// when the TPM could not be reached (TCTI layer: device gone, swtpm stopped) or an earlier
/// command lost the connection; the public methods fill in the TCTI string.
fn failed(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |e| match tss_raw_code(&e) {
        Some(rc) if rc >> 16 == TSS2_TCTI_LAYER => TpmError::Unavailable {
            tcti: String::new(),
            message: format!(
                "the TPM stopped answering during {op} (TCTI error {rc:#x}); check the TPM device or the software TPM"
            ),
        },
        // ESAPI refuses every command after a lost connection (TSS2_ESYS_RC_BAD_SEQUENCE).
        Some(TSS2_ESYS_RC_BAD_SEQUENCE) => TpmError::Unavailable {
            tcti: String::new(),
            message: format!("{op} was not sent: the connection to the TPM was lost earlier; open the TPM again"),
        },
        Some(rc) if rc >> 16 == 0 && TPM_RC_TRANSIENT.contains(&(rc & 0xFFFF)) => {
            TpmError::Busy { op, message: format!("{e} (TSS2_RC {rc:#x})") }
        }
        Some(rc) => TpmError::Command { op, message: format!("{e} (TSS2_RC {rc:#x})") },
        None => TpmError::Command { op, message: e.to_string() },
    }
}

/// TPM format-zero warnings that mean "not now" (TPM 2.0 Part 2, table 16): CONTEXT_GAP,
/// OBJECT_MEMORY, SESSION_MEMORY, MEMORY, SESSION_HANDLES, OBJECT_HANDLES, YIELDED, CANCELED,
/// TESTING, RETRY. TPM layer (bits 16..23 zero) only.
const TPM_RC_TRANSIENT: [u32; 10] = [0x901, 0x902, 0x903, 0x904, 0x905, 0x906, 0x908, 0x909, 0x90A, 0x922];

/// TSS2_RC layer of the TCTI (TCG TSS 2.0 Overview, "TSS2_RC layers": bits 16..23).
const TSS2_TCTI_LAYER: u32 = 10;
/// TSS2_ESYS_RC_BAD_SEQUENCE: ESAPI layer (7), TSS2_BASE_RC_BAD_SEQUENCE (7).
const TSS2_ESYS_RC_BAD_SEQUENCE: u32 = 0x0007_0007;

/// The raw TSS2_RC of a TSS error. tss-esapi 7.7 shows it only in `Debug`
/// (`FormatZeroResponseCode { .0: 655370, … }`), so it is read from there.
fn tss_raw_code(e: &tss_esapi::Error) -> Option<u32> {
    let debug = format!("{e:?}");
    debug.split(".0: ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// True when the TPM refused because the PCRs do not satisfy the policy:
/// TPM_RC_VALUE from TPM2_PolicyPCR (the PCR digest differs), TPM_RC_POLICY_FAIL from
/// TPM2_Unseal (the session digest differs from authPolicy).
fn is_policy_failure(e: &tss_esapi::Error) -> bool {
    match e {
        tss_esapi::Error::Tss2Error(rc) => matches!(rc.kind(), Some(Tss2ResponseCodeKind::Value | Tss2ResponseCodeKind::PolicyFail)),
        tss_esapi::Error::WrapperError(_) => false,
    }
}

/// True for TPM_RC_PCR_CHANGED (TPM 2.0 Part 2, table 16; Part 3, TPM2_Unseal with a policy
/// session): some PCR, in the policy or not, was extended between TPM2_PolicyPCR and the
/// command. Not a refusal: on the appliance the kernel's IMA measures every module load into
/// PCR 10 (dockerd loads modules around the agent's unseal), so a new session succeeds.
fn is_pcr_changed(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::PcrChanged))
}

/// An open TPM context (one ESAPI context over one TCTI connection).
pub struct Tpm {
    ctx: Context,
    tcti: String,
}

impl Tpm {
    /// Open the TPM named by a TCTI string: `device:/dev/tpmrm0` on the appliance,
    /// `swtpm:host=127.0.0.1,port=2321` for a software TPM, `mssim:…`, `tabrmd:…`.
    ///
    /// Errors: `Unavailable` when the string is not a TCTI or the TPM cannot be reached.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let unavailable = |message: String| TpmError::Unavailable { tcti: tcti.to_string(), message };
        let conf = TctiNameConf::from_str(tcti).map_err(|e| {
            unavailable(format!(
                "not a TCTI configuration ({e}); use `device:/dev/tpmrm0` or `swtpm:host=HOST,port=PORT`"
            ))
        })?;
        let ctx = Context::new(conf).map_err(|e| {
            unavailable(format!(
                "the connection failed ({e}); check that the TPM device exists (or the software TPM is running) and is accessible"
            ))
        })?;
        Ok(Tpm { ctx, tcti: tcti.to_string() })
    }

    /// Put this context's TCTI in an `Unavailable` raised by a command (see [`failed`]).
    fn reached_through(&self, e: TpmError) -> TpmError {
        match e {
            TpmError::Unavailable { message, .. } => TpmError::Unavailable { tcti: self.tcti.clone(), message },
            other => other,
        }
    }

    /// The TCTI string this context was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Read `pcrs` from the sha256 bank (TPM 2.0 Part 3, TPM2_PCR_Read; at most 8 PCRs per
    /// command, so several commands when needed). Values are 32 bytes each.
    ///
    /// Errors: `Command` when an index is above 23 or the TPM has no sha256 bank for it;
    /// `Unavailable` when the TPM stops answering.
    pub fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<PcrValues, TpmError> {
        let result = self.read_pcrs_op(pcrs);
        result.map_err(|e| self.reached_through(e))
    }

    fn read_pcrs_op(&mut self, pcrs: &[u8]) -> Result<PcrValues, TpmError> {
        const OP: &str = "TPM2_PCR_Read";
        let mut wanted: Vec<u8> = pcrs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        check_indices(OP, &wanted)?;
        let mut out = PcrValues::new();
        while !wanted.is_empty() {
            let (_, selected, digests) =
                self.ctx.execute_without_session(|c| c.pcr_read(pcr_selection(&wanted)?)).map_err(failed(OP))?;
            // The TPM answers with the PCRs it read (at most 8) and their values in index order.
            let read: Vec<u8> = selected
                .get_selections()
                .iter()
                .filter(|s| s.hashing_algorithm() == HashingAlgorithm::Sha256)
                .flat_map(|s| s.selected())
                .map(slot_index)
                .collect();
            // Fail early: a TPM without the sha256 bank allocated cannot hold our policy.
            if read.is_empty() || read.len() != digests.value().len() {
                return Err(TpmError::Command {
                    op: OP,
                    message: format!(
                        "the TPM returned no sha256 value for PCR(s) {wanted:?}: is the sha256 PCR bank allocated?"
                    ),
                });
            }
            for (pcr, digest) in read.iter().zip(digests.value()) {
                out.insert(*pcr, digest.value().to_vec());
            }
            wanted.retain(|p| !read.contains(p));
        }
        Ok(out)
    }

    /// Seal `secret` (1 to 128 bytes, from the OS RNG) under `policy` (TPM 2.0 Part 3,
    /// TPM2_Create of a KEYEDHASH object under the SRK, in a session salted to the SRK with
    /// AES-128-CFB encryption of the sensitive parameter).
    ///
    /// The authPolicy is computed from `policy` ([`Policy::digest`]): from the PCR values it
    /// holds, which need not be the current ones (e.g. values recorded before the phase PCR is
    /// extended). Sealing an `Authorize` policy does not check that any signature satisfies
    /// it: call [`Tpm::verify_signed_policy`] first.
    ///
    /// Errors: `Command` for an empty or invalid PCR set, a secret of the wrong size, or a
    /// TPM failure; `Unavailable` when the TPM stops answering.
    pub fn seal(&mut self, secret: &[u8], policy: &Policy) -> Result<SealedObject, TpmError> {
        let mut given = Some(Zeroizing::new(secret.to_vec()));
        let sealed = self.seal_prepared(policy, &mut || given.take())?;
        sealed.ok_or(TpmError::Command { op: "TPM2_Create", message: "no secret to seal".into() })
    }

    /// Seal in two steps, for a secret that exists only later (a rotated unlock key): load the
    /// SRK and start the salted session (TPM 2.0 Part 3, TPM2_CreatePrimary or the persistent
    /// SRK, TPM2_StartAuthSession), then call `secret` — which may block until the secret exists
    /// — and send TPM2_Create at once, with no other TPM round trip in between. `secret`
    /// returning `None` abandons the seal (`Ok(None)`); every handle is flushed on every path.
    ///
    /// Errors: as [`Tpm::seal`]; an error before `secret` was called means nothing was asked of
    /// the caller (the preparation failed: the caller may retry, see [`TpmError::is_retryable`]).
    pub fn seal_prepared(
        &mut self,
        policy: &Policy,
        secret: &mut dyn FnMut() -> Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Option<SealedObject>, TpmError> {
        let result = self.seal_op(policy, secret);
        result.map_err(|e| self.reached_through(e))
    }

    fn seal_op(
        &mut self,
        policy: &Policy,
        secret: &mut dyn FnMut() -> Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Option<SealedObject>, TpmError> {
        const OP: &str = "TPM2_Create";
        check_policy(OP, policy)?;
        let policy_digest = policy.digest();
        let template = sealed_object_template(&policy_digest)?;

        // Each guard releases its handle on every path; `tpm` is the innermost.
        let (mut srk_scope, srk_handle) = load_srk(&mut self.ctx)?;
        let srk_name = srk_scope.tr_get_name(srk_handle.into()).map_err(failed("Esys_TR_GetName"))?.value().to_vec();

        // Salted to the SRK, AES-128-CFB: inSensitive (the secret) is encrypted on the bus.
        let session = start_salted_session(&mut srk_scope, srk_handle, SessionType::Hmac)?;
        let mut tpm = Scoped::flush(&mut srk_scope, SessionHandle::from(session).into());
        set_session_attributes(&mut tpm, session, true, false)?;

        let Some(secret) = secret() else { return Ok(None) };
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(TpmError::Command {
                op: OP,
                message: format!("a sealed object holds 1 to {MAX_SECRET_LEN} bytes; the secret has {}", secret.len()),
            });
        }
        let sensitive = SensitiveData::try_from(secret.to_vec()).map_err(failed(OP))?;
        let created = tpm
            .execute_with_session(Some(session), |c| c.create(srk_handle, template, None, Some(sensitive), None, None))
            .map_err(failed(OP))?;

        // The TPM must have bound the object to exactly the policy we computed.
        if created.out_public.auth_policy().value() != policy_digest.as_slice() {
            return Err(TpmError::Command {
                op: OP,
                message: format!(
                    "the TPM assigned authPolicy {} but the policy is {}",
                    hex::encode(created.out_public.auth_policy().value()),
                    hex::encode(&policy_digest)
                ),
            });
        }
        Ok(Some(SealedObject {
            public: marshal_public(&created.out_public)?,
            private: tpm2b(created.out_private.value()),
            srk_name,
            policy_digest,
        }))
    }

    /// Unseal `obj` under a `Pcr` policy (the same PCR values it was sealed with): TPM 2.0
    /// Part 3, TPM2_Load under the SRK, then a policy session salted to the SRK with
    /// AES-128-CFB response encryption, TPM2_PolicyPCR, TPM2_Unseal. An `Authorize` policy
    /// needs the signatures: [`Tpm::unseal_signed`].
    ///
    /// Errors: `SrkMismatch` when the SRK Name differs (other machine, or the TPM was
    /// cleared); `PolicyMismatch` listing every PCR whose current value differs from the
    /// sealed one (possibly none, when the object was sealed under another policy);
    /// `Command` for a damaged blob, an `Authorize` policy, or any other TPM failure;
    /// `Unavailable` when the TPM stops answering.
    pub fn unseal(&mut self, obj: &SealedObject, policy: &Policy) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.unseal_signed(obj, policy, None)
    }

    /// Unseal `obj` under `policy`; for an `Authorize` policy `signatures` must hold a
    /// signature by the policy's key over the current values of its signed PCRs.
    ///
    /// `Authorize` (TPM 2.0 Part 3): read the signed PCRs (TPM2_PCR_Read) and find their
    /// TPM2_PolicyPCR digest in `signatures`; TPM2_LoadExternal of the public key (owner
    /// hierarchy, public part only), TPM2_VerifySignature over SHA-256(digest) → ticket, key
    /// flushed; TPM2_Load of the object; in the salted policy session TPM2_PolicyPCR(signed
    /// PCRs), TPM2_PolicyAuthorize(digest, empty policyRef, key Name, ticket),
    /// TPM2_PolicyPCR(literal PCRs); TPM2_Unseal. Every handle is flushed on every path.
    ///
    /// Errors: as [`Tpm::unseal`], plus `NotSigned` naming the signed PCR values no signature
    /// covers (no `signatures` at all: the same, with an empty source), `BadSignature` when
    /// the TPM rejects the signature found; `PolicyMismatch` lists the literal PCRs that changed.
    pub fn unseal_signed(
        &mut self,
        obj: &SealedObject,
        policy: &Policy,
        signatures: Option<&PcrSignatures>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let result = self.unseal_op(obj, policy, signatures);
        result.map_err(|e| self.reached_through(e))
    }

    fn unseal_op(
        &mut self,
        obj: &SealedObject,
        policy: &Policy,
        signatures: Option<&PcrSignatures>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        check_policy("TPM2_PolicyPCR", policy)?;
        let approval = match policy {
            Policy::Pcr { .. } => None,
            Policy::Authorize { key, signed_pcrs, .. } => {
                let Some(signatures) = signatures else {
                    return Err(TpmError::Command {
                        op: "TPM2_PolicyAuthorize",
                        message: "the key is sealed to a signed PCR policy but no PCR signature file was given".into(),
                    });
                };
                let signed = self.read_pcrs(signed_pcrs)?;
                Some(self.approve(key, &signed, signatures)?)
            }
        };
        match self.unseal_session(obj, policy, approval) {
            Err(TpmError::PolicyMismatch { .. }) => {
                // Tell the operator which measurements changed, sealed vs current value.
                let values = policy.literal_values();
                let pcrs: Vec<u8> = values.keys().copied().collect();
                let current = self.read_pcrs(&pcrs)?;
                Err(TpmError::PolicyMismatch { changed: pcr_diffs(values, &current) })
            }
            other => other,
        }
    }

    /// Check that `signatures` approve `signed` (the values of the signed PCRs the next boot
    /// will show) for `key`: the entry exists and the TPM verifies its signature (TPM 2.0
    /// Part 3, TPM2_LoadExternal + TPM2_VerifySignature; the key is flushed again). Used before
    /// sealing an `Authorize` policy, so a boot that could never unseal it is refused first.
    ///
    /// Errors: `NotSigned`, `BadSignature`, `Command`, `Unavailable` (see [`Tpm::unseal_signed`]).
    pub fn verify_signed_policy(
        &mut self,
        key: &PcrPublicKey,
        signed: &PcrValues,
        signatures: &PcrSignatures,
    ) -> Result<(), TpmError> {
        let result = self.approve(key, signed, signatures).map(|_| ());
        result.map_err(|e| self.reached_through(e))
    }

    /// Find the signature over the PolicyPCR digest of `signed` and have the TPM verify it.
    fn approve(&mut self, key: &PcrPublicKey, signed: &PcrValues, signatures: &PcrSignatures) -> Result<Approval, TpmError> {
        const OP: &str = "TPM2_VerifySignature";
        check_values(OP, signed)?;
        let pcrs: Vec<u8> = signed.keys().copied().collect();
        let pkfp = key.fingerprint();
        let approved = pcr_policy_digest(signed);
        // No entry: this boot's signed PCR values were never approved by the fleet key.
        let Some(entry) = signatures.find(&pcrs, &pkfp, &approved) else {
            return Err(TpmError::NotSigned {
                file: signatures.source.clone(),
                key: hex::encode(&pkfp),
                signed: pcr_value_list(signed),
                by_key: signatures.count_by_key(&pcrs, &pkfp),
            });
        };
        let bad = |message: String| TpmError::BadSignature {
            file: signatures.source.clone(),
            key: hex::encode(&pkfp),
            signed: pcr_value_list(signed),
            message,
        };
        let signature = key.tpm_signature(&entry.sig).map_err(bad)?;
        // TPM2_VerifySignature checks a signature over a digest: aHash = H(approvedPolicy || policyRef).
        let a_hash = Digest::try_from(Sha256::digest(&approved).to_vec()).map_err(failed(OP))?;

        let handle = self
            .ctx
            .execute_without_session(|c| c.load_external_public(key.tpm_public(), SIGNING_KEY_HIERARCHY))
            .map_err(failed("TPM2_LoadExternal"))?;
        let mut tpm = Scoped::flush(&mut self.ctx, handle.into());
        let name = tpm.tr_get_name(handle.into()).map_err(failed("Esys_TR_GetName"))?;
        // The Name the sealed policy is bound to is computed without a TPM; it must be the TPM's.
        if name.value() != key.name().as_slice() {
            return Err(TpmError::Command {
                op: "TPM2_LoadExternal",
                message: format!(
                    "the TPM names the PCR signing key {} but swarmseal computed {}",
                    hex::encode(name.value()),
                    hex::encode(key.name())
                ),
            });
        }
        let ticket = match tpm.execute_without_session(|c| c.verify_signature(handle, a_hash, signature)) {
            Ok(t) => t,
            // TPM_RC_SIGNATURE (and TPM_RC_VALUE for a malformed one): not the key's signature.
            Err(e @ tss_esapi::Error::Tss2Error(_)) => return Err(bad(e.to_string())),
            Err(e) => return Err(failed(OP)(e)),
        };
        Ok(Approval { approved, key_name: name, ticket, signed: signed.clone() })
    }

    /// The unseal sequence proper; a policy failure is returned as `PolicyMismatch` with no
    /// diffs ([`Tpm::unseal_signed`] fills them in once every handle is released).
    fn unseal_session(
        &mut self,
        obj: &SealedObject,
        policy: &Policy,
        approval: Option<Approval>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        // Each guard releases its handle on every path; `tpm` is the innermost.
        let (mut srk_scope, srk_handle) = load_srk(&mut self.ctx)?;
        let srk_name = srk_scope.tr_get_name(srk_handle.into()).map_err(failed("Esys_TR_GetName"))?;
        // A different SRK means a different TPM (the disk moved) or a cleared owner hierarchy.
        if srk_name.value() != obj.srk_name.as_slice() {
            return Err(TpmError::SrkMismatch);
        }

        let public = unmarshal_public(&obj.public)?;
        let private = unmarshal_private(&obj.private)?;
        // The policy we are asked to satisfy must be the one the object is bound to; if not,
        // the TPM would refuse anyway.
        if public.auth_policy().value() != policy.digest().as_slice() {
            return Err(TpmError::PolicyMismatch { changed: Vec::new() });
        }

        // The SRK has an empty auth value (userWithAuth): a password session suffices for Load.
        let object = srk_scope
            .execute_with_session(Some(AuthSession::Password), |c| c.load(srk_handle, private, public))
            .map_err(failed("TPM2_Load"))?;
        let mut object_scope = Scoped::flush(&mut srk_scope, object.into());

        // Salted to the SRK, AES-128-CFB: outData (the secret) is encrypted on the bus.
        let session = start_salted_session(&mut object_scope, srk_handle, SessionType::Policy)?;
        let mut tpm = Scoped::flush(&mut object_scope, SessionHandle::from(session).into());
        set_session_attributes(&mut tpm, session, false, true)?;
        let policy_session = PolicySession::try_from(session).map_err(failed("TPM2_StartAuthSession"))?;

        if let Some(a) = approval {
            // The signed PCRs as they are now; their digest must be the one the key approved.
            policy_pcr(&mut tpm, policy_session, &a.signed)?;
            tpm.execute_without_session(|c| {
                c.policy_authorize(policy_session, Digest::try_from(a.approved)?, Nonce::default(), &a.key_name, a.ticket)
            })
            .map_err(policy_or_command("TPM2_PolicyAuthorize"))?;
        }
        // The TPM compares the digest of the current PCR values with the sealed values' digest.
        let values = policy.literal_values();
        if !values.is_empty() {
            policy_pcr(&mut tpm, policy_session, values)?;
        }

        let data = tpm
            .execute_with_session(Some(session), |c| c.unseal(object.into()))
            .map_err(policy_or_command("TPM2_Unseal"))?;
        Ok(Zeroizing::new(data.value().to_vec()))
    }

    /// Extend `pcr` (0..=23) in the sha256 bank with SHA-256(`data`) (TPM 2.0 Part 3,
    /// TPM2_PCR_Extend): new = SHA-256(old || SHA-256(data)). Used to close the phase PCR
    /// after unlocking so the key cannot be unsealed again in this boot.
    ///
    /// Errors: `Command` for an index above 23 or a TPM failure; `Unavailable` when the TPM
    /// stops answering.
    pub fn extend(&mut self, pcr: u8, data: &[u8]) -> Result<(), TpmError> {
        let result = self.extend_op(pcr, data);
        result.map_err(|e| self.reached_through(e))
    }

    fn extend_op(&mut self, pcr: u8, data: &[u8]) -> Result<(), TpmError> {
        const OP: &str = "TPM2_PCR_Extend";
        check_indices(OP, &[pcr])?;
        let handle = PcrHandle::try_from(u32::from(pcr)).map_err(failed(OP))?;
        let mut digests = DigestValues::new();
        digests.set(HashingAlgorithm::Sha256, Digest::try_from(Sha256::digest(data).to_vec()).map_err(failed(OP))?);
        // PCRs have an empty auth value: a password session is the authorization.
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.pcr_extend(handle, digests))
            .map_err(failed(OP))
    }

    /// Name of the SRK this TPM would seal under now (2-byte nameAlg, then its sha256
    /// digest): the key at 0x81000001 if it has the standard template, else the one
    /// TPM2_CreatePrimary derives from the template.
    pub fn srk_name(&mut self) -> Result<Vec<u8>, TpmError> {
        let result = self.srk_name_op();
        result.map_err(|e| self.reached_through(e))
    }

    fn srk_name_op(&mut self) -> Result<Vec<u8>, TpmError> {
        let (mut srk_scope, srk_handle) = load_srk(&mut self.ctx)?;
        Ok(srk_scope.tr_get_name(srk_handle.into()).map_err(failed("Esys_TR_GetName"))?.value().to_vec())
    }
}

/// A signature the TPM verified: what TPM2_PolicyAuthorize needs.
struct Approval {
    /// The approved TPM2_PolicyPCR digest (the signature file's `pol`).
    approved: Vec<u8>,
    key_name: Name,
    ticket: tss_esapi::structures::VerifiedTicket,
    /// The signed PCR values `approved` was computed from.
    signed: PcrValues,
}

/// TPM2_PolicyPCR (TPM 2.0 Part 3) over `values`: the TPM compares their digest with the
/// current values of those PCRs.
fn policy_pcr(ctx: &mut Context, session: PolicySession, values: &PcrValues) -> Result<(), TpmError> {
    const OP: &str = "TPM2_PolicyPCR";
    let digest = Digest::try_from(pcr_values_digest(values)).map_err(failed(OP))?;
    let selection = pcr_selection(&values.keys().copied().collect::<Vec<_>>()).map_err(failed(OP))?;
    ctx.execute_without_session(|c| c.policy_pcr(session, digest, selection)).map_err(policy_or_command(OP))
}

/// PolicyPCR digest starting from the empty policy (TPM 2.0 Part 3, 23.7 TPM2_PolicyPCR):
/// `SHA-256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(values in index order))`,
/// the selection being one sha256 entry with a 3-octet bitmap (4 octets if an index is above 23).
/// This is also the `pol` systemd-measure signs for PCR 11.
/// Returns 32 bytes. Pure: no TPM involved.
pub fn pcr_policy_digest(values: &PcrValues) -> Vec<u8> {
    policy_pcr_update(&[0u8; SHA256_LEN], values)
}

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

/// `SHA-256(previous || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(values))`.
fn policy_pcr_update(previous: &[u8], values: &PcrValues) -> Vec<u8> {
    let size_of_select = if values.keys().any(|&p| p > MAX_PCR) { 4 } else { 3 };
    let mut select = vec![0u8; size_of_select];
    for &pcr in values.keys() {
        if let Some(octet) = select.get_mut(usize::from(pcr / 8)) {
            *octet |= 1 << (pcr % 8);
        }
    }
    let mut h = Sha256::new();
    h.update(previous);
    h.update(TPM_CC_POLICY_PCR.to_be_bytes());
    h.update(1u32.to_be_bytes()); // TPML_PCR_SELECTION.count
    h.update(TPM_ALG_SHA256.to_be_bytes()); // TPMS_PCR_SELECTION.hash
    h.update([size_of_select as u8]);
    h.update(&select);
    h.update(pcr_values_digest(values));
    h.finalize().to_vec()
}

/// SHA-256 of the PCR values concatenated in index order (pcrDigest of TPM2_PolicyPCR).
fn pcr_values_digest(values: &PcrValues) -> Vec<u8> {
    let mut h = Sha256::new();
    for v in values.values() {
        h.update(v);
    }
    h.finalize().to_vec()
}

/// Every PCR of `sealed` whose `current` value differs (or is missing), hex on both sides.
/// Every PCR of `sealed` whose value in `current` differs (or is missing).
pub fn pcr_diffs(sealed: &PcrValues, current: &PcrValues) -> Vec<PcrDiff> {
    sealed
        .iter()
        .filter(|(pcr, value)| current.get(pcr) != Some(value))
        .map(|(pcr, value)| PcrDiff {
            pcr: *pcr,
            sealed: hex::encode(value),
            current: current.get(pcr).map(hex::encode).unwrap_or_else(|| "(unreadable)".into()),
        })
        .collect()
}

fn policy_or_command(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |e| {
        if is_policy_failure(&e) {
            TpmError::PolicyMismatch { changed: Vec::new() }
        } else if is_pcr_changed(&e) {
            TpmError::Busy { op, message: "TPM_RC_PCR_CHANGED: a PCR was extended during the policy session (e.g. IMA measuring a kernel module into PCR 10); a new session is started".into() }
        } else {
            failed(op)(e)
        }
    }
}

fn check_indices(op: &'static str, pcrs: &[u8]) -> Result<(), TpmError> {
    match pcrs.iter().find(|&&p| p > MAX_PCR) {
        Some(p) => {
            Err(TpmError::Command { op, message: format!("PCR {p} does not exist: PCR indices are 0 to {MAX_PCR}") })
        }
        None => Ok(()),
    }
}

/// A `Pcr` policy needs at least one PCR; an `Authorize` policy at least one signed PCR and
/// possibly no literal one; signed and literal PCRs are distinct.
fn check_policy(op: &'static str, policy: &Policy) -> Result<(), TpmError> {
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

fn check_values(op: &'static str, values: &PcrValues) -> Result<(), TpmError> {
    if values.is_empty() {
        return Err(TpmError::Command { op, message: "the PCR policy selects no PCR".into() });
    }
    check_indices(op, &values.keys().copied().collect::<Vec<_>>())?;
    if let Some((pcr, v)) = values.iter().find(|(_, v)| v.len() != SHA256_LEN) {
        return Err(TpmError::Command {
            op,
            message: format!("the value given for PCR {pcr} has {} bytes; a sha256 PCR has {SHA256_LEN}", v.len()),
        });
    }
    Ok(())
}

fn pcr_selection(pcrs: &[u8]) -> tss_esapi::Result<PcrSelectionList> {
    let slots = pcrs.iter().map(|&p| PcrSlot::try_from(1u32 << p)).collect::<tss_esapi::Result<Vec<_>>>()?;
    PcrSelectionListBuilder::new()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
}

fn slot_index(slot: PcrSlot) -> u8 {
    u32::from(slot).trailing_zeros() as u8
}

/// A TPM handle released when the guard goes out of scope, on every path. It holds the
/// context so the code keeps using it through the guard; guards nest (the innermost is
/// released first).
struct Scoped<'c> {
    ctx: &'c mut Context,
    handle: ObjectHandle,
    release: Release,
}

enum Release {
    /// Transient object or session: TPM2_FlushContext (TPM 2.0 Part 3).
    Flush,
    /// Persistent object: only release the ESAPI resource (Esys_TR_Close); it stays in the TPM.
    Close,
}

impl<'c> Scoped<'c> {
    fn flush(ctx: &'c mut Context, handle: ObjectHandle) -> Self {
        Scoped { ctx, handle, release: Release::Flush }
    }
    fn close(ctx: &'c mut Context, handle: ObjectHandle) -> Self {
        Scoped { ctx, handle, release: Release::Close }
    }
}

impl Deref for Scoped<'_> {
    type Target = Context;
    fn deref(&self) -> &Context {
        self.ctx
    }
}

impl DerefMut for Scoped<'_> {
    fn deref_mut(&mut self) -> &mut Context {
        self.ctx
    }
}

impl Drop for Scoped<'_> {
    fn drop(&mut self) {
        let released = match self.release {
            Release::Flush => self.ctx.flush_context(self.handle),
            Release::Close => self.ctx.tr_close(&mut self.handle),
        };
        if let Err(e) = released {
            tracing::warn!("could not release TPM handle: {e}");
        }
    }
}

/// The SRK, held by a guard: the persistent key at 0x81000001 when it has the standard
/// template, else a transient TPM2_CreatePrimary (TPM 2.0 Part 3) of that template in the
/// owner hierarchy.
fn load_srk(ctx: &mut Context) -> Result<(Scoped<'_>, KeyHandle), TpmError> {
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

/// Sealed data object (TPM 2.0 Part 1, 27.2.5): KEYEDHASH with a null scheme,
/// fixedTPM|fixedParent, no userWithAuth (the policy is the only way to use it),
/// nameAlg sha256, authPolicy = `policy_digest`.
fn sealed_object_template(policy_digest: &[u8]) -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(false)
        .with_admin_with_policy(false)
        .with_sensitive_data_origin(false) // the data comes from the caller
        .build()
        .map_err(failed("TPM2_Create"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(policy_digest.to_vec()).map_err(failed("TPM2_Create"))?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(failed("TPM2_Create"))
}

/// Start a session salted to the SRK (the salt is encrypted to its public key), with
/// AES-128-CFB parameter encryption and sha256 (TPM 2.0 Part 3, TPM2_StartAuthSession).
/// The caller puts the returned session in a [`Scoped`] guard at once.
fn start_salted_session(ctx: &mut Context, srk: KeyHandle, kind: SessionType) -> Result<AuthSession, TpmError> {
    const OP: &str = "TPM2_StartAuthSession";
    ctx.execute_without_session(|c| {
        c.start_auth_session(Some(srk), None, None, kind, SymmetricDefinition::AES_128_CFB, HashingAlgorithm::Sha256)
    })
    .map_err(failed(OP))?
    .ok_or(TpmError::Command { op: OP, message: "the TPM returned no session".into() })
}

/// decrypt: the first command parameter is encrypted; encrypt: the first response
/// parameter is encrypted (TPM 2.0 Part 1, 21 Session-based encryption).
fn set_session_attributes(
    ctx: &mut Context,
    session: AuthSession,
    decrypt: bool,
    encrypt: bool,
) -> Result<(), TpmError> {
    let (attributes, mask) =
        SessionAttributesBuilder::new().with_continue_session(true).with_decrypt(decrypt).with_encrypt(encrypt).build();
    ctx.tr_sess_set_attributes(session, attributes, mask).map_err(failed("Esys_TRSess_SetAttributes"))
}

/// TPM2B framing: 2-byte big-endian size, then the bytes.
fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes inside a TPM2B, which must span exactly `bytes`.
fn untpm2b<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], TpmError> {
    match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => Ok(rest),
        _ => Err(TpmError::Command {
            op: "TPM2_Load",
            message: format!("the sealed object's {what} is damaged (not a TPM2B of {} bytes)", bytes.len()),
        }),
    }
}

fn marshal_public(public: &Public) -> Result<Vec<u8>, TpmError> {
    Ok(tpm2b(&public.marshall().map_err(failed("TPM2_Create"))?))
}

fn unmarshal_public(bytes: &[u8]) -> Result<Public, TpmError> {
    let inner = untpm2b("public area", bytes)?;
    Public::unmarshall(inner).map_err(|e| TpmError::Command {
        op: "TPM2_Load",
        message: format!("the sealed object's public area is damaged: {e}"),
    })
}

fn unmarshal_private(bytes: &[u8]) -> Result<Private, TpmError> {
    let inner = untpm2b("private area", bytes)?;
    Private::try_from(inner.to_vec()).map_err(|e| TpmError::Command {
        op: "TPM2_Load",
        message: format!("the sealed object's private area is damaged: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TPM_RC_PCR_CHANGED (0x128) during a policy session is retried with a new session
    /// (`Busy`), never a policy refusal that would consume the boot's unlock; TPM_RC_VALUE
    /// from TPM2_PolicyPCR (format one, parameter 1: 0x1C4) and TPM_RC_POLICY_FAIL from
    /// TPM2_Unseal (session 1: 0x99D) stay refusals.
    #[test]
    fn pcr_changed_is_retried_policy_failures_are_refusals() {
        use tss_esapi::constants::response_code::Tss2ResponseCode;
        let rc = |code: u32| tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(code));
        let e = policy_or_command("TPM2_Unseal")(rc(0x128));
        assert!(matches!(e, TpmError::Busy { .. }) && e.is_retryable(), "{e:?}");
        for code in [0x1C4, 0x99D] {
            let e = policy_or_command("TPM2_Unseal")(rc(code));
            assert!(matches!(e, TpmError::PolicyMismatch { .. }) && !e.is_retryable(), "{code:#x}: {e:?}");
        }
    }

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

    #[test]
    fn diffs_name_each_changed_pcr_with_both_values() {
        let sealed = values(&[(7, vec![1; 32]), (11, vec![2; 32])]);
        let current = values(&[(7, vec![1; 32]), (11, vec![3; 32])]);
        let d = pcr_diffs(&sealed, &current);
        assert_eq!(d, vec![PcrDiff { pcr: 11, sealed: hex::encode([2; 32]), current: hex::encode([3; 32]) }]);
        let msg = TpmError::PolicyMismatch { changed: d }.to_string();
        assert!(msg.contains("PCR 11") && msg.contains(&hex::encode([3; 32])), "{msg}");
    }

    #[test]
    fn tpm2b_roundtrip_and_damage() {
        let b = tpm2b(&[1, 2, 3]);
        assert_eq!(b, vec![0, 3, 1, 2, 3]);
        assert_eq!(untpm2b("x", &b).unwrap(), &[1, 2, 3]);
        assert!(untpm2b("x", &b[..4]).is_err());
        assert!(untpm2b("x", &[]).is_err());
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(check_values("t", &PcrValues::new()).is_err());
        assert!(check_values("t", &values(&[(24, vec![0; 32])])).is_err());
        assert!(check_values("t", &values(&[(7, vec![0; 20])])).is_err());
        assert!(check_values("t", &values(&[(7, vec![0; 32])])).is_ok());
    }

    #[test]
    fn sealed_object_template_has_no_user_auth() {
        let t = sealed_object_template(&[0; 32]).unwrap();
        let a = t.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent() && !a.user_with_auth() && !a.admin_with_policy());
        assert_eq!(t.auth_policy().value(), &[0; 32]);
    }
}
