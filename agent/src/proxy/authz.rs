//! Authorization: which role may send which request, and which requests are
//! security events (they touch the swarm unlock key).
//!
//! Decisions are taken on a canonical form of the path so that no spelling of
//! a denied path gets through: percent-decoding (repeated, so `%2573` is `s`),
//! `?`/`#` smuggled in encoded form cut, duplicate slashes and `.` dropped,
//! `..` resolved, trailing whitespace/NUL of a segment dropped, lowercase, and
//! every leading `/vN[.M]` API-version segment removed. The canonical form is
//! a superset of what the engine's router could match, so it can only deny more.
//!
//! Rules:
//! - a certificate without a known role (Subject OU `admin` or `readonly`): everything denied;
//! - `admin`: everything;
//! - `readonly`: `GET`/`HEAD` only, no connection upgrade (no `attach/ws`), and never
//!   `/swarm/unlockkey` (the key), `/swarm` (it holds the join tokens, a way to add a
//!   manager), `/containers/*/archive` and `/containers/*/export` (container files,
//!   such as mounted secrets), `/swarmseal/v1/escrow`, `/swarmseal/v1/reseal`,
//!   `/swarmseal/v1/var/enroll-tpm` and `/swarmseal/v1/update` (already denied as non-GET;
//!   named so the reason says so).

use super::tls::Role;

/// The canonical path (segments) used for decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canon {
    pub segs: Vec<String>,
}

impl Canon {
    pub fn path(&self) -> String {
        format!("/{}", self.segs.join("/"))
    }
    fn is(&self, pat: &[&str]) -> bool {
        self.segs.len() == pat.len() && self.segs.iter().zip(pat).all(|(s, p)| *p == "*" || s == p)
    }
    /// Under `/swarmseal/` (the agent's own endpoints; never forwarded).
    pub fn is_agent(&self) -> bool {
        self.segs.first().map(|s| s == "swarmseal").unwrap_or(false)
    }
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode once; invalid escapes are kept literally.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (unhex(s[i + 1]), unhex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn is_version(seg: &str) -> bool {
    let Some(rest) = seg.strip_prefix('v') else { return false };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') && rest.as_bytes()[0].is_ascii_digit()
}

/// Canonical form of a raw request path (see the module doc).
pub fn canonicalize(raw: &str) -> Canon {
    let mut bytes = raw.as_bytes().to_vec();
    for _ in 0..8 {
        let d = percent_decode(&bytes);
        if d == bytes {
            break;
        }
        bytes = d;
    }
    let s = String::from_utf8_lossy(&bytes).to_lowercase();
    let s = s.split(['?', '#']).next().unwrap_or("");
    let mut segs: Vec<String> = Vec::new();
    for seg in s.split(['/', '\\']) {
        let seg = seg.trim_end_matches(|c: char| c.is_whitespace() || c == '\0' || c == ';');
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            _ => segs.push(seg.to_string()),
        }
    }
    while segs.first().map(|s| is_version(s)).unwrap_or(false) {
        segs.remove(0);
    }
    Canon { segs }
}

/// Outcome of the authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// Decide for `role` (None: a certificate without a known role).
pub fn decide(role: Option<Role>, method: &str, c: &Canon, upgrade: bool) -> Decision {
    let Some(role) = role else {
        return Decision::Deny("the client certificate has no swarmseal role (its Subject OU must be `admin` or `readonly`)".into());
    };
    if role == Role::Admin {
        return Decision::Allow;
    }
    if c.is(&["swarmseal", "v1", "update"]) {
        return Decision::Deny("image updates are admin-only (readonly certificate)".into());
    }
    if method != "GET" && method != "HEAD" {
        return Decision::Deny(format!("{method} is not allowed for a readonly certificate (GET and HEAD only)"));
    }
    if upgrade {
        return Decision::Deny("connection upgrades (attach, exec) are not allowed for a readonly certificate".into());
    }
    let denied: &[(&[&str], &str)] = &[
        (&["swarm", "unlockkey"], "the swarm unlock key is admin-only"),
        (&["swarm"], "the swarm object holds the join tokens; it is admin-only"),
        (&["containers", "*", "archive"], "reading container files is admin-only"),
        (&["containers", "*", "export"], "exporting containers is admin-only"),
        (&["containers", "*", "attach", "ws"], "attaching to containers is admin-only"),
        (&["swarmseal", "v1", "escrow"], "the escrowed key is admin-only"),
        (&["swarmseal", "v1", "escrow", "*"], "the escrowed keys are admin-only"),
        (&["swarmseal", "v1", "reseal"], "resealing is admin-only"),
        (&["swarmseal", "v1", "recover"], "lost-quorum recovery is admin-only"),
        (&["swarmseal", "v1", "var", "enroll-tpm"], "re-enrolling /var is admin-only"),
    ];
    for (pat, why) in denied {
        if c.is(pat) {
            return Decision::Deny(format!("{why} (readonly certificate)"));
        }
    }
    // Variable-length names (images carry slashes): decide on the first and last segments.
    let first = c.segs.first().map(String::as_str);
    let last = c.segs.last().map(String::as_str);
    if first == Some("images") && last == Some("get") {
        // GET /images/get, GET /images/{name}/get: `docker save`, every byte of the image.
        return Decision::Deny("exporting images is admin-only (readonly certificate)".into());
    }
    if first == Some("distribution") {
        // GET /distribution/{name}/json makes the engine connect to any registry host:port.
        return Decision::Deny("registry lookups through the engine are admin-only (readonly certificate)".into());
    }
    Decision::Allow
}

/// A request that touches the unlock key (before looking at its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEvent {
    /// `GET /swarm/unlockkey`
    UnlockKeyRead,
    /// `POST /swarm/unlock`
    SwarmUnlock,
    /// `POST /swarm/update?rotateManagerUnlockKey=true`
    UnlockKeyRotate,
    /// `POST /swarm/update` or `/swarm/init` whose body may change autolock (decided on the body).
    MaybeAutolock,
    /// `GET /swarmseal/v1/escrow`, `GET /swarmseal/v1/escrow/var-recovery-key`
    EscrowRead,
    /// `POST /swarmseal/v1/reseal`
    Reseal,
    /// `POST /swarmseal/v1/recover` (the body may be the unlock key)
    Recover,
    /// `POST /swarmseal/v1/var/enroll-tpm` (the body is the /var recovery key)
    VarEnrollTpm,
    /// `POST /swarmseal/v1/update`: a new image for this manager (its release key decides).
    ImageUpdate,
}

impl KeyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEvent::UnlockKeyRead => "unlock_key_read",
            KeyEvent::SwarmUnlock => "swarm_unlock",
            KeyEvent::UnlockKeyRotate => "unlock_key_rotate",
            KeyEvent::MaybeAutolock => "autolock_change",
            KeyEvent::EscrowRead => "escrow_read",
            KeyEvent::Reseal => "reseal",
            KeyEvent::Recover => "recover",
            KeyEvent::VarEnrollTpm => "var_enroll_tpm",
            KeyEvent::ImageUpdate => "image_update",
        }
    }
}

/// Go's `httputils.BoolValue`: anything but "", "0", "no", "false", "none" is true.
fn truthy(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    !(v.is_empty() || v == "0" || v == "no" || v == "false" || v == "none")
}

/// Whether a query string asks for `rotateManagerUnlockKey` (key matched case-insensitively, decoded).
pub fn query_flag(query: Option<&str>, key: &str) -> bool {
    let Some(q) = query else { return false };
    q.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let plus = |s: &str| s.replace('+', " ");
        let k = String::from_utf8_lossy(&percent_decode(plus(k).as_bytes())).into_owned();
        let v = String::from_utf8_lossy(&percent_decode(plus(v).as_bytes())).into_owned();
        k.trim().eq_ignore_ascii_case(key) && truthy(&v)
    })
}

/// The value of the first `key=` in a raw query, percent-decoded (`+` as space); `None` when
/// `key` is absent. Keys match case-insensitively, as in [`query_flag`].
pub fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let dec = |s: &str| String::from_utf8_lossy(&percent_decode(s.replace('+', " ").as_bytes())).into_owned();
        dec(k).trim().eq_ignore_ascii_case(key).then(|| dec(v))
    })
}

/// Classify a request (method as sent, canonical path, raw query).
pub fn key_events(method: &str, c: &Canon, query: Option<&str>) -> Vec<KeyEvent> {
    let mut v = Vec::new();
    let m = method.to_ascii_uppercase();
    if c.is(&["swarm", "unlockkey"]) {
        v.push(KeyEvent::UnlockKeyRead);
    } else if c.is(&["swarm", "unlock"]) {
        v.push(KeyEvent::SwarmUnlock);
    } else if c.is(&["swarm", "update"]) || c.is(&["swarm", "init"]) {
        if c.is(&["swarm", "update"]) && query_flag(query, "rotateManagerUnlockKey") {
            v.push(KeyEvent::UnlockKeyRotate);
        }
        if m == "POST" {
            v.push(KeyEvent::MaybeAutolock);
        }
    } else if c.is(&["swarmseal", "v1", "escrow"]) || c.is(&["swarmseal", "v1", "escrow", "*"]) {
        v.push(KeyEvent::EscrowRead);
    } else if c.is(&["swarmseal", "v1", "reseal"]) {
        v.push(KeyEvent::Reseal);
    } else if c.is(&["swarmseal", "v1", "recover"]) {
        v.push(KeyEvent::Recover);
    } else if c.is(&["swarmseal", "v1", "var", "enroll-tpm"]) {
        v.push(KeyEvent::VarEnrollTpm);
    } else if c.is(&["swarmseal", "v1", "update"]) {
        v.push(KeyEvent::ImageUpdate);
    }
    v
}

/// `EncryptionConfig.AutoLockManagers` of a swarm spec (body of init/update, or `Spec` of `GET /swarm`).
pub fn autolock_of(spec: &serde_json::Value) -> Option<bool> {
    spec.get("EncryptionConfig")?.get("AutoLockManagers")?.as_bool()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        for raw in [
            "/swarm/unlockkey",
            "/v1.45/swarm/unlockkey",
            "/V1.24/Swarm/UnlockKey",
            "//swarm//unlockkey",
            "/swarm/./unlockkey",
            "/containers/../swarm/unlockkey",
            "/swarm/unlockkey/",
            "/%73warm/unlockkey",
            "/swarm%2Funlockkey",
            "/swarm%252Funlockkey",
            "/v1.45/v1.45/swarm/unlockkey",
            "/swarm/unlockkey%3Fx",
            "/swarm/unlockkey%00",
            "/swarm/unlockkey%20",
            "/swarm\\unlockkey",
        ] {
            assert_eq!(canonicalize(raw).segs, vec!["swarm", "unlockkey"], "{raw}");
        }
        assert_eq!(canonicalize("/v1.45/containers/json").path(), "/containers/json");
        assert_eq!(canonicalize("/../../etc").path(), "/etc");
    }

    #[test]
    fn readonly_rules() {
        let ro = Some(Role::ReadOnly);
        let c = canonicalize("/containers/json");
        assert_eq!(decide(ro, "GET", &c, false), Decision::Allow);
        assert_eq!(decide(ro, "HEAD", &c, false), Decision::Allow);
        assert!(matches!(decide(ro, "POST", &c, false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "get", &c, false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &c, true), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &canonicalize("/v1.41/swarm/unlockkey"), false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &canonicalize("/swarm"), false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &canonicalize("/containers/x/archive"), false), Decision::Deny(_)));
        for p in ["/images/get?names=bb:1", "/v1.41/images/bb:1/get", "/images/reg.example:5000/team/app/get", "/distribution/127.0.0.1:24399/x/json"] {
            assert!(matches!(decide(ro, "GET", &canonicalize(p), false), Decision::Deny(_)), "{p}");
        }
        assert_eq!(decide(ro, "GET", &canonicalize("/images/get/json"), false), Decision::Allow);
        assert_eq!(decide(ro, "GET", &canonicalize("/swarmseal/v1/status"), false), Decision::Allow);
        assert!(matches!(decide(None, "GET", &c, false), Decision::Deny(_)));
        assert_eq!(decide(Some(Role::Admin), "POST", &canonicalize("/swarm/unlockkey"), true), Decision::Allow);
        for p in ["/swarmseal/v1/update", "/v1.45/swarmseal/v1/update?reboot=1", "/swarmseal/v1/%55pdate"] {
            for m in ["POST", "GET", "HEAD"] {
                let d = decide(ro, m, &canonicalize(p), false);
                assert!(matches!(&d, Decision::Deny(w) if w.contains("admin-only")), "{m} {p}: {d:?}");
            }
            assert_eq!(decide(Some(Role::Admin), "POST", &canonicalize(p), false), Decision::Allow);
        }
        assert_eq!(key_events("POST", &canonicalize("/swarmseal/v1/update"), Some("reboot=1")), vec![KeyEvent::ImageUpdate]);
    }

    #[test]
    fn events() {
        let c = canonicalize("/v1.45/swarm/update");
        assert_eq!(
            key_events("POST", &c, Some("version=10&rotateManagerUnlockKey=true")),
            vec![KeyEvent::UnlockKeyRotate, KeyEvent::MaybeAutolock]
        );
        assert_eq!(key_events("POST", &c, Some("version=10&rotateManagerUnlockKey=false")), vec![KeyEvent::MaybeAutolock]);
        assert!(query_flag(Some("rotatemanagerunlockkey=1"), "rotateManagerUnlockKey"));
        assert!(query_flag(Some("rotate%4DanagerUnlockKey=True"), "rotateManagerUnlockKey"));
        assert_eq!(query_value(Some("reboot=1&version=1.2%5E3"), "version").as_deref(), Some("1.2^3"));
        assert_eq!(query_value(Some("Version=&version=2"), "version").as_deref(), Some(""), "the first one counts");
        assert_eq!(query_value(Some("version"), "version").as_deref(), Some(""));
        assert_eq!(query_value(Some("reboot=1"), "version"), None);
        assert_eq!(query_value(None, "version"), None);
        assert_eq!(key_events("GET", &canonicalize("/swarm//unlockkey"), None), vec![KeyEvent::UnlockKeyRead]);
        assert_eq!(key_events("POST", &canonicalize("/swarm/unlock"), None), vec![KeyEvent::SwarmUnlock]);
        assert!(key_events("GET", &canonicalize("/containers/json"), None).is_empty());
    }
}
