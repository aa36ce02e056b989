//! Seal and unseal the unlock key in a TPM 2.0.
//!
//! Interface contract used by `keystore`, `boot` and `cli`; see the docs on each item.
//! This module gathers the crate's files by operation (`policy.rs`, `pcr.rs`, `seal.rs`,
//! `unseal.rs`, `signature.rs`, `srk.rs`, `context.rs`, `error.rs`) under one path.
//!
//! What the TPM holds (`docs/sealing.md`):
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
//! a scope guard (`context.rs`) and released on every path, errors included: without a
//! resource manager (swtpm, `device:/dev/tpm0`) a leaked handle fills the TPM
//! (TPM_RC_OBJECT_MEMORY).
//!
//! Secrets never appear in errors, `Debug` output or logs.

pub use crate::context::Tpm;
pub use crate::error::TpmError;
pub use crate::pcr::{pcr_diffs, pcr_value_list, PcrDiff, PcrValue, PcrValues, MAX_PCR};
pub use crate::policy::{authorize_policy_digest, pcr_policy_digest, Policy};
pub use crate::seal::{SealedObject, MAX_SECRET_LEN};
pub use crate::srk::SRK_PERSISTENT_HANDLE;
pub use crate::activate::{EkPublicKey, MAX_CREDENTIAL_BLOB, MAX_ENCRYPTED_SECRET};
pub use crate::quote::{ak_template, EkCert, Quote, EK_CERT_NV_INDICES, NONCE_LEN};
