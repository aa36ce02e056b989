//! Optional HTTP basic auth on top of the client certificate (`proxy.htpasswd`,
//! bcrypt entries as written by `htpasswd -B`).
//!
//! Every user costs one bcrypt verification, known or not (a dummy hash of the
//! same cost stands in for unknown users), and bcrypt compares in constant
//! time, so timing tells nothing about which users exist. Failures are counted
//! per client address over a sliding minute: from the 11th failure on, every
//! attempt from that address (right or wrong, so the delay reveals nothing) is
//! delayed by one more second each, up to 10 s.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use zeroize::Zeroizing;

use super::ProxyError;

/// Failures allowed per address and minute before attempts are slowed.
pub const FREE_FAILURES: usize = 10;
const WINDOW: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(10);

pub struct BasicAuth {
    users: HashMap<String, String>,
    dummy: String,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl BasicAuth {
    pub fn load(path: &Path) -> Result<BasicAuth, ProxyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| ProxyError::Setup(format!("cannot read htpasswd {}: {e}", path.display())))?,
        );
        let mut users = HashMap::new();
        let mut cost: Option<u32> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (u, h) =
                line.split_once(':').ok_or_else(|| ProxyError::Setup(format!("{}:{}: expected user:hash", path.display(), n + 1)))?;
            if !(h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$")) {
                return Err(ProxyError::Setup(format!("{}:{}: only bcrypt entries are accepted (htpasswd -B)", path.display(), n + 1)));
            }
            if let Some(c) = h.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
                cost = Some(cost.map_or(c, |m| m.max(c)));
            }
            users.insert(u.to_string(), h.to_string());
        }
        // Same cost as the real entries, so unknown users take as long as known ones.
        let dummy = bcrypt::hash("swarmseal-dummy-password", cost.unwrap_or(bcrypt::DEFAULT_COST).clamp(4, 31))
            .map_err(|e| ProxyError::Setup(format!("bcrypt: {e}")))?;
        Ok(BasicAuth { users, dummy, failures: Mutex::new(HashMap::new()) })
    }

    /// Delay owed by `ip` before its attempt is checked.
    pub fn delay_for(&self, ip: IpAddr) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Some(q) = f.get_mut(&ip) else { return Duration::ZERO };
        while q.front().map(|t| now.duration_since(*t) > WINDOW).unwrap_or(false) {
            q.pop_front();
        }
        if q.is_empty() {
            f.remove(&ip);
            return Duration::ZERO;
        }
        if q.len() < FREE_FAILURES {
            Duration::ZERO
        } else {
            (Duration::from_secs(1) * (q.len() - FREE_FAILURES + 1) as u32).min(MAX_DELAY)
        }
    }

    fn record_failure(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 10_000 {
            let now = Instant::now();
            f.retain(|_, q| q.back().map(|t| now.duration_since(*t) <= WINDOW).unwrap_or(false));
        }
        f.entry(ip).or_default().push_back(Instant::now());
    }

    /// Check an `Authorization` header value. Returns the user name when valid.
    /// Runs bcrypt: call from a blocking context.
    pub fn check_blocking(&self, ip: IpAddr, header: Option<&[u8]>) -> Option<String> {
        let ok = (|| {
            let h = std::str::from_utf8(header?).ok()?;
            let (scheme, b64) = h.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let raw = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?);
            let colon = raw.iter().position(|&b| b == b':')?;
            let user = std::str::from_utf8(&raw[..colon]).ok()?.to_string();
            let pass = &raw[colon + 1..];
            let (hash, known) = match self.users.get(&user) {
                Some(h) => (h.as_str(), true),
                None => (self.dummy.as_str(), false),
            };
            let good = bcrypt::verify(pass, hash).unwrap_or(false);
            (good && known).then_some(user)
        })();
        if ok.is_none() {
            self.record_failure(ip);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(up: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(up)).into_bytes()
    }

    #[test]
    fn checks_users_and_slows_from_the_eleventh_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("# comment\nci:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let b = BasicAuth::load(&p).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(b.check_blocking(ip, Some(&basic("ci:pw"))).as_deref(), Some("ci"));
        assert_eq!(b.check_blocking(ip, Some(&basic("ci:nope"))), None);
        assert_eq!(b.check_blocking(ip, Some(&basic("nobody:pw"))), None);
        assert_eq!(b.check_blocking(ip, Some(b"Bearer x")), None);
        assert_eq!(b.check_blocking(ip, None), None);
        assert_eq!(b.delay_for(ip), Duration::ZERO, "4 failures are free");
        for _ in 0..6 {
            assert_eq!(b.check_blocking(ip, Some(&basic("ci:nope"))), None);
        }
        assert_eq!(b.delay_for(ip), Duration::from_secs(1), "the 11th attempt waits");
        b.check_blocking(ip, Some(&basic("ci:nope")));
        assert_eq!(b.delay_for(ip), Duration::from_secs(2));
        assert_eq!(b.delay_for("192.0.2.2".parse().unwrap()), Duration::ZERO, "per client address");
    }

    #[test]
    fn rejects_non_bcrypt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, "ci:$apr1$abc$def\n").unwrap();
        assert!(BasicAuth::load(&p).is_err());
    }
}
