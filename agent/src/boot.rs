//! Boot flow (in progress; the lead owns this file).
use crate::cli::{Command, Exit};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Other(String),
}

impl BootError {
    pub fn exit(&self) -> Exit {
        Exit::Failure
    }
}

pub async fn run_command(_cfg: &Config, _c: Command) -> Result<(), BootError> {
    Err(BootError::Other("not built yet".into()))
}

pub async fn run_proxy_only(_cfg: &Config) -> Result<(), BootError> {
    Err(BootError::Other("not built yet".into()))
}

/// Facts for the bench's appliance checks (stub until the boot flow lands).
pub async fn appliance_facts(_cfg: &Config) -> crate::bench::ApplianceFacts {
    crate::bench::ApplianceFacts::default()
}
