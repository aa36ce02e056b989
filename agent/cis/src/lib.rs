//! CIS Docker Benchmark v1.8.0 and v1.6.0 checks, natively, in one pass, as a library
//! (what each check reads and why: `docs/cis.md`).
//!
//! - [`engine`]: the Docker Engine API read once (`/version`, `/info`, `/swarm`,
//!   `/containers/json`, one `/containers/{id}/json` per container,
//!   `/images/json`, `/images/{id}/json`, `/images/{id}/history`, `/networks`).
//! - [`host`]: host files (under a root directory), the dockerd command line and its
//!   TCP listeners from `/proc`, mounts, dm-verity, Secure Boot.
//! - [`appliance`]: the facts the caller gives for the appliance checks (`A.x`).
//! - [`checks`]: the catalogue (v1.6.0 IDs) — data plus a pure evaluation over a [`Snapshot`].
//! - [`benchmark`]: the versions (v1.8.0, v1.6.0) and the ID mapping between them.
//! - [`selection`]: which checks run (`--check`/`--exclude` IDs and sections).
//! - [`report`]: the result model — PASS/WARN/INFO/NOTE, summary and score.
//! - [`output`]: one file per output format (docker-bench-security JSON, text, SARIF 2.1.0, JUnit XML).
//!
//! Nothing here knows exit codes or the agent's configuration: a run takes the
//! engine socket, the host root and the appliance facts; errors are [`BenchError`].
//! The agent's boot flow calls [`run_report`], logs [`Report::summary`] and stores
//! the report with [`write_boot_report`].
#![forbid(unsafe_code)]

pub mod appliance;
pub mod benchmark;
pub mod checks;
pub mod engine;
mod error;
pub mod host;
pub mod output;
pub mod report;
pub mod selection;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use appliance::{ApplianceFacts, Handshake, ProxyProbe, SealedKeyFact};
pub use benchmark::{catalogue, Benchmark};
pub use checks::{Check, Snapshot};
pub use engine::EngineFacts;
pub use error::BenchError;
pub use host::{HostFacts, HostOptions};
pub use report::{CheckResult, Outcome, Report, Status, Summary};
pub use selection::Selection;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Evaluate the selected checks of `sel.benchmark` on one snapshot (pure; no I/O).
pub fn evaluate(snap: &Snapshot, sel: &Selection) -> Vec<CheckResult> {
    catalogue(sel.benchmark).iter().filter(|c| sel.includes(c.id)).map(|c| CheckResult::new(c, (c.eval)(snap))).collect()
}

/// Gather the engine (at `host.docker_socket`) and the host (files under `host.root`)
/// once, then evaluate the selected checks. `start`/`end` are unix seconds.
///
/// Errors: [`BenchError::Engine`] when the engine does not answer.
pub async fn run_report_with(facts: ApplianceFacts, sel: &Selection, host: &HostOptions) -> Result<Report, BenchError> {
    let start = now();
    let socket = host.docker_socket.clone();
    let engine = engine::gather(&socket).await?;
    let h = host.clone();
    let engine_pid = host::engine_peer_pid(&socket).await;
    let init_pids: Vec<u32> = engine.containers.iter().filter_map(|c| c.state.as_ref()?.pid).filter(|p| *p > 0).map(|p| p as u32).collect();
    let host_facts = tokio::task::spawn_blocking(move || HostFacts::gather(&h, &init_pids, engine_pid)).await.unwrap_or_default();
    let snap = Snapshot { engine, host: host_facts, appliance: facts, docker_socket: socket.to_string_lossy().into_owned() };
    let results = evaluate(&snap, sel);
    let engine_version = snap.engine.version.version.clone().unwrap_or_default();
    let hostname = snap.engine.info.name.clone().unwrap_or_default();
    Ok(Report { benchmark: sel.benchmark, engine_version, hostname, start, end: now(), results })
}

/// The boot flow's entry point: all selected checks against this host (`/`) and the
/// engine at `docker_socket` (a Unix socket path).
pub async fn run_report(docker_socket: &Path, facts: ApplianceFacts, sel: &Selection) -> Result<Report, BenchError> {
    run_report_with(facts, sel, &HostOptions::new("/", docker_socket)).await
}

/// Directory of the boot reports: `<state_dir>/bench/`.
pub fn report_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("bench")
}

/// The last boot report (`<state_dir>/bench/latest.json`), served on `/swarmseal/v1/bench`.
pub fn last_report_path(state_dir: &Path) -> PathBuf {
    report_dir(state_dir).join("latest.json")
}

/// Write the full JSON report to `<state_dir>/bench/latest.json` atomically
/// (temp file, fsync, rename); returns the path.
///
/// Errors: [`BenchError::Write`] naming the directory or file that could not be written.
pub fn write_boot_report(state_dir: &Path, r: &Report) -> Result<PathBuf, BenchError> {
    let dir = report_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Write { path: dir.clone(), source })?;
    let path = last_report_path(state_dir);
    write_report(&path, r.to_json_text().as_bytes())?;
    Ok(path)
}

/// Write a rendered report to `path` atomically (temp file beside it, fsync, rename,
/// fsync of the directory); the temp file is removed on failure.
///
/// Errors: [`BenchError::Write`] naming `path`.
pub fn write_report(path: &Path, data: &[u8]) -> Result<(), BenchError> {
    swarmseal_common::fs::write_atomic(path, data, 0o644).map_err(|source| BenchError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_report_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let r = Report::fake(vec![]);
        let p = write_boot_report(dir.path(), &r).unwrap();
        assert_eq!(p, dir.path().join("bench/latest.json"));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["dockerbenchsecurity"], "1.6.0");
        assert_eq!(v["benchmark"], "cis-1.8.0");
        assert_eq!(std::fs::read_dir(dir.path().join("bench")).unwrap().count(), 1);
    }
}
