//! `swarmseal bench`: the command-line glue around [`swarmseal_cis`] (the CIS Docker
//! Benchmark v1.8.0 or v1.6.0 checks; see `docs/cis.md`): flags, the appliance facts
//! the agent knows, where the report goes, and `--fail-on warn`. Exit codes are
//! chosen in [`crate::cli`].

use std::io::Write;
use std::path::PathBuf;

use swarmseal_cis::{Benchmark, BenchError, HostOptions, Selection};

use crate::cli::{Error, Exit};
use crate::config::Config;

/// `swarmseal bench`: run the CIS Docker Benchmark checks and the appliance checks.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// CIS Docker Benchmark version whose IDs and titles the checks follow.
    #[arg(long, value_enum, default_value_t = BenchmarkArg::Cis180)]
    pub benchmark: BenchmarkArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Run only these checks: IDs or sections, comma separated (`5`, `2.2`, `1.1`, `A`).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub check: Vec<String>,
    /// Skip these checks: IDs or sections, comma separated.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Exit with code 10 when a check reports WARN.
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub fail_on: Option<FailOn>,
    /// Root of the host file system for configuration files, audit rules,
    /// the mount table, /sys and EFI variables (tests point it at a fixture tree).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// `--format`: one value per output format of [`swarmseal_cis::output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable text with a header line (benchmark, engine, host, time).
    Text,
    /// docker-bench-security's log JSON layout.
    Json,
    /// SARIF 2.1.0 (code scanning).
    Sarif,
    /// JUnit XML (CI test reports).
    Junit,
}

/// `--benchmark`: the versions of [`swarmseal_cis::Benchmark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchmarkArg {
    /// CIS Docker Benchmark v1.8.0 (118 checks).
    #[value(name = "cis-1.8.0")]
    Cis180,
    /// CIS Docker Benchmark v1.6.0 (117 checks; docker-bench-security's IDs).
    #[value(name = "cis-1.6.0")]
    Cis160,
}

impl From<BenchmarkArg> for Benchmark {
    fn from(b: BenchmarkArg) -> Benchmark {
        match b {
            BenchmarkArg::Cis180 => Benchmark::Cis180,
            BenchmarkArg::Cis160 => Benchmark::Cis160,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Warn,
}

/// `swarmseal bench`: errors are [`BenchError`]s (engine down, report not written,
/// unknown check ID); a finished run with WARN under `--fail-on warn` is [`Exit::BenchWarn`].
pub async fn run(cfg: &Config, a: BenchArgs) -> Result<(), Error> {
    let sel = Selection { benchmark: a.benchmark.into(), only: a.check.clone(), exclude: a.exclude.clone() };
    if let Some(u) = sel.unknown().first() {
        return Err(BenchError::UnknownCheck(u.clone()).into());
    }
    if sel.is_empty() {
        return Err(BenchError::EmptySelection.into());
    }
    let facts = crate::boot::appliance_facts(cfg).await;
    let report = swarmseal_cis::run_report_with(facts, &sel, &HostOptions::new(&a.root, cfg.docker_socket())).await?;
    let text = match a.format {
        Format::Json => report.to_json_text(),
        Format::Sarif => report.to_sarif_text(),
        Format::Junit => report.to_junit_text(),
        Format::Text => {
            use std::io::IsTerminal;
            let colour = a.output.is_none() && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            report.to_text(colour)
        }
    };
    match &a.output {
        Some(p) => swarmseal_cis::write_report(p, text.as_bytes())?,
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
    if a.fail_on == Some(FailOn::Warn) && report.has_warn() {
        return Err(Error::Status(Exit::BenchWarn));
    }
    Ok(())
}
