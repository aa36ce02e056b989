//! Output formats of a [`crate::Report`], one file each, all rendered from the same
//! result model: [`json`] (docker-bench-security log JSON), [`text`], [`sarif`]
//! (SARIF 2.1.0) and [`junit`] (JUnit XML). A new format is a new file here with its own `impl Report`.

pub mod json;
pub mod junit;
pub mod sarif;
pub mod text;

pub use json::DOCKER_BENCH_VERSION;

/// Unix seconds as RFC 3339 UTC (`2026-12-06T18:50:00Z`).
pub(crate) fn utc(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
