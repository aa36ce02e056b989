//! The `monitor` role's answers: state without secrets. The engine's JSON answers to the
//! endpoints a monitor reads are rewritten before they leave the proxy (Docker Engine API
//! v1.41 shapes): environment values (`Env`: `KEY=VALUE` → `KEY=(redacted)`), config and
//! secret `Data`, command lines (`Cmd`, `Entrypoint`, `Args`, `Command`, `Path`, health-check
//! `Test`, the command in `exec_create:`/`exec_start:` event actions) and the values of labels
//! named in `[roles.NAME] redact_labels`. Keys are matched wherever they appear.
//!
//! Memory is bounded: a whole answer is read up to [`JSON_LIMIT`] bytes (beyond: 502, nothing
//! sent), the event stream line by line, each line up to [`LINE_LIMIT`] bytes (beyond: the
//! stream ends).

use serde_json::Value;

use crate::authz::Canon;

/// Largest engine answer a monitor gets (redacted in memory), in bytes.
pub const JSON_LIMIT: usize = 16 << 20;
/// Largest line of the event stream, in bytes.
pub const LINE_LIMIT: usize = 1 << 20;

/// The text that replaces a redacted value.
pub const REDACTED: &str = "(redacted)";

/// How a monitor's answer is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redaction {
    /// One JSON value (read whole, within [`JSON_LIMIT`]).
    Json,
    /// Newline-delimited JSON values (`/events`), one at a time.
    Lines,
}

/// Endpoints a monitor reads whose answer is rewritten (`None`: not rewritten; the caller
/// allows only [`crate::authz`]'s monitor list).
pub fn redaction(c: &Canon) -> Option<Redaction> {
    if c.is(&["events"]) {
        return Some(Redaction::Lines);
    }
    let json: &[&[&str]] = &[
        &["info"],
        &["nodes"],
        &["nodes", "*"],
        &["services"],
        &["services", "*"],
        &["tasks"],
        &["tasks", "*"],
        &["containers", "json"],
        &["containers", "*", "json"],
        &["configs"],
        &["configs", "*"],
        &["secrets"],
        &["secrets", "*"],
        &["networks"],
        &["networks", "*"],
    ];
    json.iter().any(|p| c.is(p)).then_some(Redaction::Json)
}

/// Rewrite `v` in place (see the module doc); `labels`: label names whose values go.
pub fn redact(v: &mut Value, labels: &[String]) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| redact(x, labels)),
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match k.as_str() {
                    "Env" => {
                        if let Value::Array(a) = x {
                            for e in a.iter_mut() {
                                if let Value::String(s) = e {
                                    let name = s.split('=').next().unwrap_or("").to_string();
                                    *s = format!("{name}={REDACTED}");
                                }
                            }
                        } else if !x.is_null() {
                            *x = Value::Null;
                        }
                    }
                    // Config and secret payloads (base64): empty, still valid for clients.
                    "Data" if x.is_string() => *x = Value::String(String::new()),
                    "Cmd" | "Entrypoint" | "Args" | "Command" | "Path" | "Test" if !x.is_null() => {
                        *x = if x.is_array() { Value::Array(vec![Value::String(REDACTED.into())]) } else { Value::String(REDACTED.into()) };
                    }
                    "Action" => {
                        if let Value::String(s) = x {
                            if let Some((verb, _)) = s.split_once(':') {
                                if verb.starts_with("exec_") {
                                    *s = format!("{verb}: {REDACTED}");
                                }
                            }
                        }
                    }
                    "Labels" | "Attributes" => {
                        if let Value::Object(l) = x {
                            for (lk, lv) in l.iter_mut() {
                                if labels.iter().any(|n| n == lk) {
                                    *lv = Value::String(REDACTED.into());
                                }
                            }
                        }
                        redact(x, labels);
                    }
                    _ => redact(x, labels),
                }
            }
        }
        _ => {}
    }
}

/// A whole answer, redacted and serialized again; `Err`: not JSON (the caller refuses it).
pub fn redact_bytes(body: &[u8], labels: &[String]) -> Result<Vec<u8>, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| format!("the engine's answer is not JSON ({e})"))?;
    redact(&mut v, labels);
    let mut out = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_go_state_stays() {
        let body = br#"[{"ID":"s1","Spec":{"Name":"web","Labels":{"team":"a","token":"t0k"},"TaskTemplate":{"ContainerSpec":{"Image":"bb:1","Env":["PASSWORD=hunter2","X"],"Args":["--key","k"],"Command":["sh","-c","echo secret"]}}},"PreviousSpec":{"TaskTemplate":{"ContainerSpec":{"Env":["OLD=x"]}}}},{"ID":"c","Spec":{"Name":"cfg","Data":"c2VjcmV0"}}]"#;
        let out = String::from_utf8(redact_bytes(body, &["token".to_string()]).unwrap()).unwrap();
        for gone in ["hunter2", "echo secret", "--key", "OLD=x", "c2VjcmV0", "t0k"] {
            assert!(!out.contains(gone), "{gone}: {out}");
        }
        for kept in ["PASSWORD=(redacted)", "\"team\":\"a\"", "\"Image\":\"bb:1\"", "\"Name\":\"cfg\"", "\"Data\":\"\""] {
            assert!(out.contains(kept), "{kept}: {out}");
        }
        let ev = br#"{"Type":"container","Action":"exec_create: sh -c cat /run/secrets/x","Actor":{"Attributes":{"token":"t","image":"bb:1"}}}"#;
        let out = String::from_utf8(redact_bytes(ev, &["token".to_string()]).unwrap()).unwrap();
        assert!(out.contains("exec_create: (redacted)") && !out.contains("/run/secrets") && !out.contains("\"t\""), "{out}");
        assert!(redact_bytes(b"{x", &[]).is_err());
    }
}
