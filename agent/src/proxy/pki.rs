//! Appliance PKI (in progress).

/// `swarmseal certs …`
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create the client CA (and the server certificate) under the state dir.
    Init,
}

pub fn run(_cfg: &crate::config::Config, _c: CertsCommand) -> Result<(), super::ProxyError> {
    Err(super::ProxyError::Setup("not built yet".into()))
}
