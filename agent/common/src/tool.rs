//! Running an external tool (systemd-cryptenroll, cryptsetup, systemd-sysupdate,
//! systemctl): stdin piped in, stdout captured into zeroized memory, stderr kept for the
//! error. Blocking: from async code call [`run`] through `tokio::task::spawn_blocking`.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};

use zeroize::Zeroizing;

/// A tool that did not run to success.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Not started (not installed, not executable), or its pipes failed.
    #[error("cannot run {tool}: {source}")]
    Spawn { tool: String, source: std::io::Error },
    /// It ran and exited unsuccessfully. `output`: its non-empty stderr lines joined by `; `
    /// (and its stdout lines before them, unless stdout is [`Stdout::Secret`]).
    #[error("{tool} failed ({status}): {output}")]
    Failed { tool: String, status: String, output: String },
}

/// What the tool's stdout may carry, hence whether it may appear in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// A key or other secret: never in an error, only in the zeroized [`Output::stdout`].
    Secret,
    /// Plain text: on failure its lines go into [`ToolError::Failed`] before stderr's.
    Plain,
}

/// What a successful run printed. `Debug` shows stdout's length only.
pub struct Output {
    /// Zeroized on drop.
    pub stdout: Zeroizing<Vec<u8>>,
    /// Lossy UTF-8.
    pub stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("stdout_len", &self.stdout.len()).field("stderr", &self.stderr).finish()
    }
}

/// Run `bin args` (`NO_COLOR=1`, `SYSTEMD_COLORS=0`: no colours, hence no QR code of a key on
/// stderr), `stdin` written to its stdin (else `/dev/null`), stdout and stderr read
/// concurrently (a tool filling one pipe cannot block on the other). Ok when it exits 0.
///
/// Errors: [`ToolError::Spawn`] when it cannot start or a pipe fails (a tool that exits 0
/// without reading all of `stdin` included); [`ToolError::Failed`] with its exit status and
/// output when it exits non-zero or by a signal.
pub fn run<S: AsRef<OsStr>>(bin: &str, args: &[S], stdin: Option<&[u8]>, stdout: Stdout) -> Result<Output, ToolError> {
    let spawn = |source| ToolError::Spawn { tool: bin.to_string(), source };
    let mut child = Command::new(bin)
        .args(args)
        .env("NO_COLOR", "1")
        .env("SYSTEMD_COLORS", "0")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    let pipe_in = child.stdin.take();
    let (mut pipe_out, mut pipe_err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let (out, err, wrote) = std::thread::scope(|s| {
        let writer = s.spawn(move || match (stdin, pipe_in) {
            // The pipe closes when `p` drops: the tool sees end of input.
            (Some(data), Some(mut p)) => p.write_all(data),
            _ => Ok(()),
        });
        let errs = s.spawn(move || {
            let mut v = Vec::new();
            let _ = pipe_err.read_to_end(&mut v);
            v
        });
        // Room for a key without reallocating (a reallocation leaves an unzeroized copy).
        let mut out = Zeroizing::new(Vec::with_capacity(16 << 10));
        let read = pipe_out.read_to_end(&mut out).map(|_| out);
        (read, errs.join().unwrap_or_default(), writer.join().unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked"))))
    });
    let status: ExitStatus = child.wait().map_err(spawn)?;
    if !status.success() {
        let mut output = String::new();
        if stdout == Stdout::Plain {
            if let Ok(o) = &out {
                output.push_str(&String::from_utf8_lossy(o));
                output.push('\n');
            }
        }
        output.push_str(&String::from_utf8_lossy(&err));
        let output = output.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; ");
        return Err(ToolError::Failed { tool: bin.to_string(), status: status.to_string(), output });
    }
    let out = out.map_err(spawn)?;
    wrote.map_err(spawn)?;
    Ok(Output { stdout: out, stderr: String::from_utf8_lossy(&err).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_in_stdout_out() {
        let o = run("sh", &["-c", "tr a-z A-Z; echo note >&2"], Some(b"secret"), Stdout::Secret).unwrap();
        assert_eq!(&o.stdout[..], b"SECRET");
        assert_eq!(o.stderr, "note\n");
        // No stdin given: /dev/null, not the test's terminal.
        let o = run("cat", &[] as &[&str], None, Stdout::Plain).unwrap();
        assert!(o.stdout.is_empty());
    }

    #[test]
    fn a_failure_names_the_tool_and_shows_stdout_only_when_plain() {
        let script = ["-c", "echo SWMKEY-1-secret; echo first >&2; echo; echo second >&2; exit 3"];
        let e = run("sh", &script, None, Stdout::Secret).unwrap_err();
        let msg = e.to_string();
        assert_eq!(msg, "sh failed (exit status: 3): first; second");
        assert!(!msg.contains("SWMKEY"));
        let e = run("sh", &script, None, Stdout::Plain).unwrap_err();
        assert_eq!(e.to_string(), "sh failed (exit status: 3): SWMKEY-1-secret; first; second");
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let e = run("/nonexistent/swarmseal-tool", &["x"], None, Stdout::Plain).unwrap_err();
        assert!(matches!(e, ToolError::Spawn { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot run /nonexistent/swarmseal-tool: "), "{e}");
    }

    /// Big outputs on both pipes and a big stdin at once: no deadlock (bounded by the test's
    /// own timeout thread).
    #[test]
    fn large_stdin_stdout_and_stderr_do_not_deadlock() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let input = vec![b'x'; 1 << 20];
            let r = run("sh", &["-c", "head -c 1048576 /dev/zero >&2; cat"], Some(&input), Stdout::Plain).map(|o| (o.stdout.len(), o.stderr.len()));
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("finished within 30 s");
        assert_eq!(r.unwrap(), (1 << 20, 1 << 20));
    }

    #[test]
    fn a_tool_killed_by_a_signal_is_a_failure() {
        let e = run("sh", &["-c", "kill -9 $$"], None, Stdout::Plain).unwrap_err();
        assert!(e.to_string().contains("signal: 9"), "{e}");
    }
}
