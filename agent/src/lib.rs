//! swarmseal: the agent of a Docker Swarm manager appliance.
//!
//! One module per concern (the crate map: docs/architecture.md):
//! - [`tpm`], [`pcrsig`], [`keystore`] (crate `swarmseal-tpm`): seal and unseal the unlock key
//!   in a TPM 2.0, policies, sessions; systemd's PCR signature files; the sealed-key slots.
//! - [`swarm`] (crate `swarmseal-engine`): the Docker Engine API (state, init, unlock, unlock key, rotation).
//! - [`secret`] and shared utilities (crate `swarmseal-common`): the unlock key, atomic writes,
//!   running tools, client TLS, the typed status document.
//! - [`boot`]: the boot-flow state machine run by `swarmseal agent`.
//! - [`proxy`] (crate `swarmseal-proxy`, no libtss2): the mutual-TLS listener, authorization and forwarding.
//! - [`bench`]: CIS Docker Benchmark v1.8.0/v1.6.0 checks and their report (the `swarmseal-cis`
//!   crate); [`bench_cmd`]: the `swarmseal bench` command around it.
//! - [`update`]: signed image releases (format: crate `swarmseal-release`): receive, verify, stage, install (systemd-sysupdate).
//! - [`recover`]: lost-quorum recovery with autolock.
//! - [`health`]: the boot-assessment gate: swarm unlocked and proxy serving.
//! - [`remote`]: `swarmseal --context NAME …` from the operator's machine, through a manager's proxy.
//! - [`console`]: the status screen on the local console (`[console] tty`).
//! - [`config`], [`cli`]: configuration file and command line.
//!
//! Feature `appliance` (default): the modules that need the TPM (libtss2): [`boot`],
//! [`recover`], [`var`], [`escrow`] and the TPM crate. Without it the crate builds the
//! workstation tool (`fleet`, `certs`, `bench`, `update verify`, `health`).
//!
//! Errors are typed per module; operator messages and exit codes are decided
//! in [`cli`] only.

pub mod attest;
pub use swarmseal_cis as bench;
pub mod bench_cmd;
#[cfg(feature = "appliance")]
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
#[cfg(feature = "appliance")]
pub mod escrow;
#[cfg(feature = "appliance")]
pub mod firmware;
pub mod fleet;
pub mod health;
pub mod logging;
pub mod operator;
pub use swarmseal_proxy as proxy;
#[cfg(feature = "appliance")]
pub mod recover;
pub mod remote;
pub use swarmseal_common::secret;
pub use swarmseal_engine as swarm;
// The TPM side lives in its own crate (agent/tpm), under the old module names.
#[cfg(feature = "appliance")]
pub use swarmseal_tpm::{keystore, pcrsig, tpm};
pub mod update;
#[cfg(feature = "appliance")]
pub mod var;
