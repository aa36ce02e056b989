//! The agent's test fixtures: the workspace's (crate `swarmseal-testkit`: swtpm, dockerd, LAN,
//! tmpfs, ports) plus what needs this package's binary or library (`swarmseal` runs, the
//! in-process proxy environment).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;

pub use swarmseal_testkit::*;

mod fleet_key;
#[allow(unused_imports)]
pub use fleet_key::*;
mod proxy_env;
#[allow(unused_imports)]
pub use proxy_env::*;
pub mod update;

/// Path of the built `swarmseal` binary.
pub fn swarmseal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_swarmseal"))
}

/// Run `swarmseal` with `args`; returns the output.
pub fn swarmseal(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut cmd = cmd(swarmseal_bin());
    cmd.args(args).env_remove("TPM2TOOLS_TCTI").env_remove("TCTI").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

