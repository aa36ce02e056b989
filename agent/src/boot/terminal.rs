//! The operator's terminal: the key shown (never on stdout or in the journal), the key read
//! from stdin without echo.

use super::BootError;
use crate::secret::UnlockKey;

/// Show the operator's copy of the key on the controlling terminal only (never stdout/the journal).
pub(crate) fn show_key_on_terminal(key: &UnlockKey, what: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        Ok(mut tty) => {
            let _ = writeln!(
                tty,
                "\n{what}. The operator's copy of the unlock key (shown once; store it offline, e.g. in a password manager or on paper):\n\n    {}\n\nWithout it, a manager whose boot chain changed can only be unlocked by another manager's key.\n",
                key.expose()
            );
        }
        Err(_) => eprintln!("swarmseal: {what}; no terminal, so the operator's copy of the key is not shown: read it with `docker swarm unlock-key -q` through the proxy, or from the escrow file if `[escrow]` is configured"),
    }
}

/// Show a key that could not be sealed on the controlling terminal. Without one, stderr (a
/// pipe, a file, the journal under systemd) gets the key only when no escrow copy was written:
/// then it is the last place besides the engine; with an escrow copy it gets only where that is.
/// Returns whether the key was shown.
pub(super) fn show_unsealed_key(key: &UnlockKey, cause: &BootError, escrowed: Option<&std::path::Path>) -> bool {
    use std::io::Write;
    let text = zeroize::Zeroizing::new(format!(
        "\nswarmseal: THE SWARM'S UNLOCK KEY CHANGED BUT COULD NOT BE SEALED ({cause}).\n{}Store this key offline now (password manager, paper):\n\n    {}\n\nThen fix the cause and run `swarmseal seal`. Until it is sealed, a reboot of this manager needs this key (`swarmseal unlock --manual`).\n",
        escrowed.map(|p| format!("An age-encrypted copy is in {}. ", p.display())).unwrap_or_default(),
        key.expose()
    ));
    match (std::fs::OpenOptions::new().write(true).open("/dev/tty"), escrowed) {
        (Ok(mut tty), _) => tty.write_all(text.as_bytes()).is_ok(),
        (Err(_), Some(p)) => {
            eprintln!("swarmseal: the swarm's unlock key changed but could not be sealed ({cause}); no terminal, so the key is not printed: its age-encrypted copy is in {}", p.display());
            false
        }
        (Err(_), None) => {
            eprint!("{}", *text);
            true
        }
    }
}

/// Read the unlock key from stdin (on a blocking thread); no echo when stdin is a terminal.
pub(crate) async fn read_key_from_stdin() -> Result<UnlockKey, BootError> {
    super::blocking(|| crate::operator::read_key_blocking().map_err(BootError::Input)).await
}
