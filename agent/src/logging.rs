//! Logging: structured events to the journal under systemd (`JOURNAL_STREAM`
//! set and journald reachable), plain lines to stderr otherwise — and to
//! stderr as well when stderr is not the journal stream (the appliance's unit
//! points stderr at the console: with no shell, that is where an operator at
//! the machine reads why a manager stayed locked). `SWARMSEAL_LOG_STDERR=1`
//! writes stderr lines even when stderr is the journal stream (for
//! `StandardError=journal+console`; the journal then holds both forms).

use tracing_subscriber::prelude::*;

/// Install the global subscriber. Level from `SWARMSEAL_LOG`
/// (`error|warn|info|debug|trace`, default `info`).
pub fn init(_service: bool) {
    let level = std::env::var("SWARMSEAL_LOG").ok().and_then(|s| s.parse::<tracing::Level>().ok()).unwrap_or(tracing::Level::INFO);
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let journald = journal_stream.as_ref().and_then(|_| tracing_journald::layer().ok()).map(|j| j.with_syslog_identifier("swarmseal".into()));
    let stderr_is_journal = journal_stream.as_deref().map(stderr_is_stream).unwrap_or(false);
    let stderr_too = std::env::var_os("SWARMSEAL_LOG_STDERR").is_some_and(|v| v == "1");
    let fmt = (journald.is_none() || !stderr_is_journal || stderr_too).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::env::var_os("NO_COLOR").is_none() && rustix::termios::isatty(std::io::stderr()))
    });
    let _ = tracing_subscriber::registry().with(journald).with(fmt).with(filter).try_init();
}

/// `JOURNAL_STREAM` is `DEV:INODE` of the stream systemd connected to the journal.
fn stderr_is_stream(js: &str) -> bool {
    let Some((dev, ino)) = js.split_once(':') else { return false };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino),
        Err(_) => false,
    }
}
