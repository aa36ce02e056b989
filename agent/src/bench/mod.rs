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
