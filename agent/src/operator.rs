//! What the operator sees and types on this machine, for the local commands and `--context`
//! alike: the status document as text, the unlock key read from stdin without echo.

use std::io::IsTerminal;

use zeroize::Zeroizing;

use crate::secret::UnlockKey;

/// The human form of the status document.
pub fn print_status(v: &serde_json::Value) {
    let s = |p: &str| v.pointer(p).map(|x| x.to_string().trim_matches('"').to_string()).unwrap_or_else(|| "-".into());
    println!("swarm      state {} (manager {}, autolock {}){}", s("/swarm/state"), s("/swarm/manager"), s("/swarm/autolock"), v.pointer("/swarm/error").filter(|x| !x.is_null()).map(|e| format!(" — {e}")).unwrap_or_default());
    for slot in ["current", "previous"] {
        match v.pointer(&format!("/sealed/{slot}")) {
            Some(serde_json::Value::Null) | None => println!("{slot:<10} (empty)"),
            Some(x) if x.get("error").is_some() => println!("{slot:<10} unreadable: {}", x["error"]),
            Some(x) => {
                let d = x.get("differs").and_then(|d| d.as_array()).map(|a| a.len());
                println!("{slot:<10} sealed {} — {}", x["created"].as_str().unwrap_or("?"), match d {
                    Some(0) => "policy PCRs match this boot".to_string(),
                    Some(_) => format!("PCRs differ: {}", x["differs"]),
                    None => "TPM not readable".to_string(),
                });
            }
        }
    }
    if v["sealed_key_stale"] == true {
        println!("key        sealed key is stale: the engine's unlock key differs from the sealed one; run `swarmseal seal` (a reboot now would need the operator's or the escrowed key)");
    }
    if let Some(p) = v.get("change_pending").filter(|p| !p.is_null()) {
        println!("pending    an interrupted `{}` is not finished: the next command with the swarm active seals the engine's key", p["op"].as_str().unwrap_or("?"));
    }
    println!("tpm        {} reachable {} phase-locked {}", s("/tpm/tcti"), s("/tpm/reachable"), s("/phase_locked"));
    println!("proxy      enabled {} listen {}", s("/proxy/enabled"), s("/proxy/listen"));
    println!("bench      {}", v.get("bench").map(|b| b.to_string()).unwrap_or_default());
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

