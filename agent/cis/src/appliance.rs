//! The appliance's own facts for the `A` checks (not part of the CIS benchmark):
//! the agent fills [`ApplianceFacts`] (it knows the sealed key and the proxy) and
//! passes it to [`crate::run_report`]; this crate never reads them itself.

/// What the agent knows about the appliance, for the appliance checks (A.x).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplianceFacts {
    /// A.1 (sealed at all) and A.2 (policy PCRs match this boot); `None`: no sealed key in the state dir.
    pub sealed_key: Option<SealedKeyFact>,
    /// A.4: the proxy's listener as probed; `None` when the proxy is disabled.
    pub proxy: Option<ProxyProbe>,
    /// A.7: the clock as chronyd keeps it (`swarmseal_common::time::query`); `None` when not asked.
    pub time: Option<swarmseal_common::time::TimeSync>,
}

/// The proxy's listener, tried twice: without a client certificate, and with one the
/// appliance's own CA signed. Only both answers together show that it requires them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProxyProbe {
    /// The listen address probed (a wildcard probed on loopback).
    pub addr: String,
    pub without_cert: Handshake,
    pub with_cert: Handshake,
}

/// How one TLS connection (handshake, then one HTTP request) ended; each carries
/// what was seen, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Handshake {
    /// The handshake completed and the server answered the request (its status line).
    Accepted(String),
    /// The server refused the client (TLS alert, or the connection closed).
    Refused(String),
    /// Nothing could be asked: no listener, no TLS, another server certificate, no client certificate to offer.
    NotProbed(String),
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
