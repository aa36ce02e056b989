//! CIS Docker Benchmark v1.6.0 checks (in progress; the bench helper owns this directory).

use crate::cli::{Error, Exit};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    pub fn exit(&self) -> Exit {
        Exit::Failure
    }
}

pub async fn run_cli(_cfg: &crate::config::Config, _a: BenchArgs) -> Result<(), Error> {
    Err(Error::Bench(BenchError::Other("not built yet".into())))
}

/// What the agent knows about the appliance, for the appliance checks.
/// Gathered by `crate::boot::appliance_facts` (the lead provides it).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplianceFacts {
    /// `None`: no sealed key in the state dir.
    pub sealed_key: Option<SealedKeyFact>,
    /// `Some(true)`: the configured proxy requires client certificates
    /// (it always does when it runs; `None` when the proxy is disabled).
    pub proxy_requires_client_certs: Option<bool>,
    /// The proxy's listen address, if enabled.
    pub proxy_listen: Option<String>,
}

/// The `current` sealed slot compared with the TPM's PCRs now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SealedKeyFact {
    /// `Some(true)` when every policy PCR equals its sealed value (or its recorded
    /// pre-phase-lock value); `Some(false)` when some differ; `None` when the TPM could not be read.
    pub pcrs_match: Option<bool>,
    /// Operator-readable detail (which PCRs differ, or why it could not be checked).
    pub detail: String,
}
