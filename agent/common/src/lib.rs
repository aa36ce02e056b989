//! Pieces every swarmseal crate shares. No TPM, no Docker client, no TLS server here:
//! the proxy and the workstation tools link this crate without libtss2.
//!
//! - [`secret`]: the Swarm unlock key as a secret value.
//! - [`fs`]: atomic file writes.
//! - [`tool`]: running an external tool, its output zeroized.
//! - [`tls`]: client TLS configurations (rustls, ring).
//! - [`signing`]: the fleet's signing public key (PCR policies and releases), signatures checked in software.
//! - [`status`]: the typed status document.
//! - [`metrics`]: the agent's Prometheus metrics (`GET /swarmseal/v1/metrics`).
//! - [`time`]: the clock as chronyd keeps it (`chronyc -c` output parsed).
#![forbid(unsafe_code)]

pub mod fs;
pub mod metrics;
pub mod pcrpolicy;
pub mod secret;
pub mod signing;
pub mod status;
pub mod time;
pub mod tls;
pub mod tool;
