//! swarmseal's TPM 2.0 side: seal the Docker Swarm unlock key to the boot measurements,
//! unseal it on the next boot, and keep the sealed blobs on disk. The longer explanation
//! (what is measured where, signed policies, phase lock) is `docs/sealing.md`.
//!
//! Public modules, under the names the agent has always used:
//! - [`tpm`]: the TPM operations and the policy they are sealed under (a façade over the
//!   files below);
//! - [`pcrsig`]: systemd's PCR-signing public key and PCR signature files (signed policies);
//! - [`keystore`]: sealed blobs on disk (slot files, phase record, write-ahead marker).
//!
//! One file per concern, as Talos' `internal/pkg/secureboot/tpm2/`:
//! - `policy.rs`: the authPolicy digests, pure (no TPM), tested against `tpm2_createpolicy`;
//! - `pcr.rs`: PCR values, selections, TPM2_PCR_Read and TPM2_PCR_Extend;
//! - `context.rs`: the open TPM, salted sessions, the guard that flushes every handle;
//! - `srk.rs`: the storage root key (persistent or derived);
//! - `seal.rs`: TPM2_Create of the sealed object, and its marshalled form;
//! - `unseal.rs`: TPM2_Load, the policy session, TPM2_Unseal;
//! - `quote.rs`: the attestation key and TPM2_Quote, the EK certificate (remote attestation);
//! - `activate.rs`: TPM2_ActivateCredential with the AK and the TCG default EK (`fleet attest --ek-ca`);
//! - `signature.rs`: TPM2_VerifySignature of a PCR signature (signed policies);
//! - `error.rs`: [`tpm::TpmError`] and the mapping of TSS response codes to it.
//!
//! Errors are typed per module ([`tpm::TpmError`], [`pcrsig::PcrSigError`],
//! [`keystore::KeystoreError`]); their `Display` is the operator's sentence. Exit codes and
//! HTTP statuses are chosen by the callers, not here.
#![forbid(unsafe_code)]

mod activate;
mod context;
mod error;
mod handles;
mod pcr;
mod policy;
mod quote;
mod seal;
mod signature;
mod srk;
mod unseal;

pub mod keystore;
pub mod pcrsig;
pub mod tpm;
