//! CIS Docker Benchmark v1.6.0 checks, natively, in one pass.
//!
//! - [`engine`]: the Docker Engine API read once (`/version`, `/info`, `/swarm`,
//!   `/containers/json`, one `/containers/{id}/json` per running container,
//!   `/images/json`, `/images/{id}/json`, `/images/{id}/history`, `/networks`).
//! - [`host`]: host files (under `--root`), the dockerd command line and its
//!   TCP listeners from `/proc`, mounts, dm-verity, Secure Boot.
//! - [`checks`]: the catalogue — data plus a pure evaluation over a [`Snapshot`].
//! - [`report`]: PASS/WARN/INFO/NOTE, score, docker-bench-security JSON, text.
//!
//! The boot flow calls [`run_report`], logs [`Report::summary`] and stores the
//! report with [`write_boot_report`].

pub mod checks;
pub mod engine;
pub mod host;
pub mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use checks::{catalogue, Check, Snapshot};
pub use engine::EngineFacts;
pub use host::{HostFacts, HostOptions};
pub use report::{CheckResult, Outcome, Report, Status, Summary};

use crate::cli::{Error, Exit};
use crate::config::Config;

/// `swarmseal bench`: run the CIS Docker Benchmark v1.6.0 checks and the appliance checks.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Warn,
}

/// Which checks to run: `only` empty means all; entries are IDs or section prefixes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub only: Vec<String>,
    pub exclude: Vec<String>,
}

impl Selection {
    /// `id` matches a selector equal to it or a section/group prefix of it (`5` → `5.12`).
    pub fn matches(sel: &str, id: &str) -> bool {
        let sel = sel.trim();
        !sel.is_empty() && (id == sel || id.strip_prefix(sel).is_some_and(|rest| rest.starts_with('.')))
    }

    pub fn includes(&self, id: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|s| Self::matches(s, id))) && !self.exclude.iter().any(|s| Self::matches(s, id))
    }

    /// Selectors that match no check (typos), for a usage error.
    pub fn unknown(&self) -> Vec<String> {
        let cat = catalogue();
        self.only.iter().chain(&self.exclude).filter(|s| !s.trim().is_empty() && !cat.iter().any(|c| Self::matches(s, c.id))).cloned().collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine did not answer; the benchmark needs it.
    #[error("the Docker engine at {socket} did not answer ({message}); the benchmark reads the engine's configuration and containers")]
    Engine { socket: PathBuf, message: String },
    #[error("cannot write the bench report {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("unknown check ID or section: {0} (IDs as in the CIS Docker Benchmark v1.6.0, e.g. 2.2, 5, 1.1, A.3)")]
    UnknownCheck(String),
}

impl BenchError {
    pub fn exit(&self) -> Exit {
        match self {
            BenchError::Engine { .. } => Exit::DockerUnreachable,
            BenchError::Write { .. } => Exit::Failure,
            BenchError::UnknownCheck(_) => Exit::Usage,
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Evaluate the selected checks on one snapshot (pure; no I/O).
pub fn evaluate(snap: &Snapshot, sel: &Selection) -> Vec<CheckResult> {
    catalogue().iter().filter(|c| sel.includes(c.id)).map(|c| CheckResult::new(c, (c.eval)(snap))).collect()
}

/// Gather the engine and host once, then evaluate (host files under `host.root`).
pub async fn run_report_with(cfg: &Config, facts: ApplianceFacts, sel: &Selection, host: &HostOptions) -> Result<Report, BenchError> {
    let start = now();
    let socket = cfg.docker_socket();
    let engine = engine::gather(&socket).await?;
    let h = host.clone();
    let init_pids: Vec<u32> = engine.containers.iter().filter_map(|c| c.state.as_ref()?.pid).filter(|p| *p > 0).map(|p| p as u32).collect();
    let host_facts = tokio::task::spawn_blocking(move || HostFacts::gather(&h, &init_pids)).await.unwrap_or_default();
    let snap = Snapshot { engine, host: host_facts, appliance: facts, docker_socket: socket.to_string_lossy().into_owned() };
    let results = evaluate(&snap, sel);
    Ok(Report { start, end: now(), results })
}

/// The boot flow's entry point: all selected checks against this host (`/`).
pub async fn run_report(cfg: &Config, facts: ApplianceFacts, sel: &Selection) -> Result<Report, BenchError> {
    run_report_with(cfg, facts, sel, &HostOptions::new("/", cfg.docker_socket())).await
}

/// Directory of the boot reports: `<state_dir>/bench/`.
pub fn report_dir(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("bench")
}

/// The last boot report (`<state_dir>/bench/latest.json`), served on `/swarmseal/v1/bench`.
pub fn last_report_path(cfg: &Config) -> PathBuf {
    report_dir(cfg).join("latest.json")
}

/// Write the full JSON report to `<state_dir>/bench/latest.json` atomically
/// (temp file, fsync, rename); returns the path.
pub fn write_boot_report(cfg: &Config, r: &Report) -> Result<PathBuf, BenchError> {
    let dir = report_dir(cfg);
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Write { path: dir.clone(), source })?;
    let path = last_report_path(cfg);
    let mut text = serde_json::to_string_pretty(&r.to_json()).expect("report serialises");
    text.push('\n');
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BenchError> {
    let err = |source| BenchError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(err)
}

/// `swarmseal bench`.
pub async fn run_cli(cfg: &Config, a: BenchArgs) -> Result<(), Error> {
    let sel = Selection { only: a.check.clone(), exclude: a.exclude.clone() };
    if let Some(u) = sel.unknown().first() {
        return Err(BenchError::UnknownCheck(u.clone()).into());
    }
    let facts = crate::boot::appliance_facts(cfg).await;
    let report = run_report_with(cfg, facts, &sel, &HostOptions::new(&a.root, cfg.docker_socket())).await?;
    let text = match a.format {
        Format::Json => {
            let mut t = serde_json::to_string_pretty(&report.to_json()).expect("report serialises");
            t.push('\n');
            t
        }
        Format::Text => {
            use std::io::IsTerminal;
            let colour = a.output.is_none() && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            report.to_text(colour)
        }
    };
    match &a.output {
        Some(p) => write_atomic(p, text.as_bytes())?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_id_and_section() {
        let s = Selection { only: vec!["5".into(), "1.1".into(), "A.3".into()], exclude: vec!["5.12".into()] };
        assert!(s.includes("5.1"));
        assert!(s.includes("5.32"));
        assert!(!s.includes("5.12"));
        assert!(s.includes("1.1.3"));
        assert!(!s.includes("1.2.1"));
        assert!(!s.includes("1.10"));
        assert!(s.includes("A.3"));
        assert!(!s.includes("A.1"));
        assert!(!s.includes("2.2"));
        assert_eq!(Selection { only: vec!["9.9".into()], exclude: vec![] }.unknown(), vec!["9.9"]);
        assert!(Selection { only: vec!["2".into()], exclude: vec!["A".into()] }.unknown().is_empty());
    }

    #[test]
    fn boot_report_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config { state_dir: dir.path().to_path_buf(), ..Config::default() };
        let r = Report { start: 1, end: 2, results: vec![] };
        let p = write_boot_report(&cfg, &r).unwrap();
        assert_eq!(p, dir.path().join("bench/latest.json"));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["dockerbenchsecurity"], "1.6.0");
        assert_eq!(std::fs::read_dir(dir.path().join("bench")).unwrap().count(), 1);
    }
}
