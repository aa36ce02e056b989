//! Pieces every swarmseal crate shares. No TPM, no Docker client, no TLS server here:
//! the proxy and the workstation tools link this crate without libtss2.
#![forbid(unsafe_code)]

pub mod secret;
pub mod status;
