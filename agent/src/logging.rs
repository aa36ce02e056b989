//! Logging: tracing to the journal under systemd (`JOURNAL_STREAM` set), to stderr otherwise.

use tracing_subscriber::prelude::*;

/// Install the global subscriber. `service`: a long-running command (agent, proxy).
/// Level from `SWARMSEAL_LOG` (`error|warn|info|debug|trace`, default `info`).
pub fn init(_service: bool) {
    let level = std::env::var("SWARMSEAL_LOG").ok().and_then(|s| s.parse::<tracing::Level>().ok()).unwrap_or(tracing::Level::INFO);
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if under_journal {
        if let Ok(j) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry().with(j.with_syslog_identifier("swarmseal".into())).with(filter).try_init();
            return;
        }
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::env::var_os("NO_COLOR").is_none() && rustix::termios::isatty(std::io::stderr()));
    let _ = tracing_subscriber::registry().with(fmt).with(filter).try_init();
}
