//! Output formats of a [`crate::Report`], one file each, all rendered from the same
//! result model: [`json`] (docker-bench-security log JSON) and [`text`].
//! A new format (SARIF, JUnit) is a new file here with its own `impl Report`.

pub mod json;
pub mod text;

pub use json::DOCKER_BENCH_VERSION;
