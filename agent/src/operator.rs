//! What the operator sees and types on this machine, for the local commands and `--context`
//! alike: the status document as text, the unlock key read from stdin without echo.

use std::io::IsTerminal;

use swarmseal_common::status::{Slot, Status, Swarm};
use zeroize::Zeroizing;

use crate::secret::UnlockKey;

/// The human form of the status document.
pub fn print_status(st: &Status) {
    let opt = |b: Option<bool>| b.map(|b| b.to_string()).unwrap_or_else(|| "null".into());
    match &st.swarm {
        Swarm::Reached { state, manager, autolock, error, .. } => {
            println!("swarm      state {state} (manager {manager}, autolock {}){}", opt(*autolock), error.as_ref().filter(|e| !e.is_empty()).map(|e| format!(" — {e:?}")).unwrap_or_default())
        }
        Swarm::Unreachable { error } => println!("swarm      state - (manager -, autolock -) — {error:?}"),
    }
    for (name, slot) in [("current", &st.sealed.current), ("previous", &st.sealed.previous)] {
        match slot {
            None => println!("{name:<10} (empty)"),
            Some(Slot::Unreadable { error }) => println!("{name:<10} unreadable: {error:?}"),
            Some(Slot::Sealed { created, differs, .. }) => println!(
                "{name:<10} sealed {created} — {}",
                match differs {
                    Some(d) if d.is_empty() => "policy PCRs match this boot".to_string(),
                    Some(d) => format!("PCRs differ: {}", serde_json::to_string(d).unwrap_or_default()),
                    None => "TPM not readable".to_string(),
                }
            ),
        }
    }
    if st.sealed_key_stale == Some(true) {
        println!("key        sealed key is stale: the engine's unlock key differs from the sealed one; run `swarmseal seal` (a reboot now would need the operator's or the escrowed key)");
    }
    if let Some(p) = &st.change_pending {
        println!("pending    an interrupted `{}` is not finished: the next command with the swarm active seals the engine's key", p.op);
    }
    println!("tpm        {} reachable {} phase-locked {}", st.tpm.tcti, st.tpm.reachable, opt(st.phase_locked));
    println!("proxy      enabled {} listen {}", st.proxy.enabled, st.proxy.listen);
    println!(
        "image      {} {} sbom {}",
        st.image.id.as_deref().unwrap_or("-"),
        st.image.version.as_deref().unwrap_or("-"),
        st.image.sbom_sha256.as_deref().unwrap_or("-")
    );
    if let Some(t) = &st.time {
        println!("time       {}", t.verdict().unwrap_or_else(|why| why));
    }
    println!("bench      {}", st.bench.as_ref().map(|b| serde_json::to_string(b).unwrap_or_default()).unwrap_or_else(|| "null".into()));
}

/// Read the unlock key from stdin (blocking: call it on a blocking thread); no echo when stdin
/// is a terminal. Errors: the operator's sentence (unreadable stdin, not an unlock key).
pub fn read_key_blocking() -> Result<UnlockKey, String> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut saved = None;
    if tty {
        eprint!("Swarm unlock key: ");
        if let Ok(mut t) = rustix::termios::tcgetattr(&stdin) {
            saved = Some(t.clone());
            t.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        }
    }
    let mut line = Zeroizing::new(String::new());
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        eprintln!();
    }
    r.map_err(|e| format!("cannot read the unlock key from stdin: {e}"))?;
    UnlockKey::new(line.to_string()).map_err(|e| format!("{e}; pipe the key on stdin, e.g. `swarmseal unlock --manual < key.txt`"))
}

