//! The mutual-TLS proxy (in progress; the proxy helper owns this directory).

pub mod pki;

use std::sync::Arc;

/// Proxy errors.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Setup(String),
}

/// What the agent offers on `/swarmseal/v1/` (implemented by `boot`).
pub trait AgentApi: Send + Sync + 'static {
    /// `GET /swarmseal/v1/status` body (JSON).
    fn status(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send + '_>>;
    /// `GET /swarmseal/v1/bench`: the last bench report (docker-bench-security JSON), if any.
    fn bench(&self) -> Option<Vec<u8>>;
    /// `POST /swarmseal/v1/reseal`: Ok(JSON) or Err((HTTP status, message)).
    fn reseal(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, (u16, String)>> + Send + '_>>;
    /// `GET /swarmseal/v1/escrow`: the age-encrypted key file, if escrow is configured.
    fn escrow(&self) -> Option<Vec<u8>>;
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    _cfg: &crate::config::Config,
    _api: Arc<dyn AgentApi>,
    _shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    Err(ProxyError::Setup("the proxy is not built yet".into()))
}
