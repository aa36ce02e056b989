//! What can stop a benchmark run; the binary maps each variant to its exit code.

use std::path::PathBuf;

/// Why a run or a report write failed. `Display` is the operator's sentence.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine did not answer; the benchmark needs it.
    #[error("the Docker engine at {socket} did not answer ({message}); the benchmark reads the engine's configuration and containers")]
    Engine { socket: PathBuf, message: String },
    /// The report (or its directory) could not be written.
    #[error("cannot write the bench report {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    /// A `--check`/`--exclude` selector that names no check (see [`crate::Selection::unknown`]).
    #[error("unknown check ID or section: {0} (IDs as in the chosen --benchmark, e.g. 2.2, 5, 1.1, A.3)")]
    UnknownCheck(String),
    /// `--check`/`--exclude` leave no check to run (see [`crate::Selection::is_empty`]).
    #[error("the selection is empty: --exclude removes every check that --check selects; run with fewer exclusions")]
    EmptySelection,
}
