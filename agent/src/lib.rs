//! swarmseal: the agent of a Docker Swarm manager appliance.
//!
//! One module per concern (the crate map: docs/architecture.md):
//! - [`tpm`]: seal and unseal the unlock key in a TPM 2.0, policies, sessions.
//! - [`pcrsig`]: systemd's PCR-signing public key and PCR signature files (signed policies).
//! - [`keystore`]: sealed blobs on disk, versioned, written atomically.
//! - [`swarm`]: the Docker Engine API (state, init, unlock, unlock key, rotation).
//! - [`boot`]: the boot-flow state machine run by `swarmseal agent`.
//! - [`proxy`]: the mutual-TLS listener, authorization and forwarding.
//! - [`bench`]: CIS Docker Benchmark v1.6.0 checks and their report (the `swarmseal-cis`
//!   crate); [`bench_cmd`]: the `swarmseal bench` command around it.
//! - [`update`]: signed image releases: receive, verify, stage, install (systemd-sysupdate).
//! - [`health`]: the boot-assessment gate: swarm unlocked and proxy serving.
//! - [`config`], [`cli`]: configuration file and command line.
//!
//! Errors are typed per module; operator messages and exit codes are decided
//! in [`cli`] only.

pub use swarmseal_cis as bench;
pub mod bench_cmd;
pub mod boot;
pub mod cli;
pub mod config;
pub mod escrow;
pub mod fleet;
pub mod health;
pub mod keystore;
pub mod logging;
pub mod pcrsig;
pub mod proxy;
pub mod recover;
pub use swarmseal_common::secret;
pub use swarmseal_engine as swarm;
pub mod tpm;
pub mod update;
pub mod var;
