//! The appliance's own facts for the `A` checks (not part of the CIS benchmark):
//! the agent fills [`ApplianceFacts`] (it knows the sealed key and the proxy) and
//! passes it to [`crate::run_report`]; this crate never reads them itself.

/// What the agent knows about the appliance, for the appliance checks (A.x).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplianceFacts {
    /// A.1 (sealed at all) and A.2 (policy PCRs match this boot); `None`: no sealed key in the state dir.
    pub sealed_key: Option<SealedKeyFact>,
    /// `Some(true)`: the configured proxy requires client certificates
    /// (it always does when it runs; `None` when the proxy is disabled). A.4.
    pub proxy_requires_client_certs: Option<bool>,
    /// The proxy's listen address, if enabled (named in A.4's details).
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
