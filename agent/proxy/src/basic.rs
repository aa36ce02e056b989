//! Optional HTTP basic auth on top of the client certificate (`proxy.htpasswd`,
//! bcrypt entries as written by `htpasswd -B`).
//!
//! Every user costs one bcrypt verification, known or not (a dummy hash of the
//! same cost stands in for unknown users), and bcrypt compares in constant
//! time, so timing tells nothing about which users exist.
//!
//! Guessing is capped by two token buckets: one per client address
//! ([`PER_ADDRESS`]: 10 at once, then one every 6 s) and one per user name
//! ([`PER_USER`]: 20, then one every 3 s; names not in the file share one
//! bucket). A check takes a token from both before bcrypt runs and gives it back
//! when the password is right, so only failures drain them; an attempt that
//! finds either bucket empty is answered `429` at once, right password or not
//! (so the answer reveals nothing), with no bcrypt run and no wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use zeroize::Zeroizing;

use super::ProxyError;

/// A token bucket's shape: `burst` attempts at once, one more every `every`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: u32,
    pub every: Duration,
}

/// Failed attempts per client address: 10 at once, then one every 6 s (10 a minute).
pub const PER_ADDRESS: Rate = Rate { burst: 10, every: Duration::from_secs(6) };
/// Failed attempts per user name (from any address): 20 at once, then one every 3 s.
pub const PER_USER: Rate = Rate { burst: 20, every: Duration::from_secs(3) };
/// Buckets kept before full ones are dropped.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, r: Rate, now: Instant) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() / r.every.as_secs_f64()).min(r.burst as f64)
    }
}

#[derive(Default)]
struct Buckets {
    addr: HashMap<IpAddr, Bucket>,
    user: HashMap<String, Bucket>,
}

fn level<K: std::hash::Hash + Eq>(m: &HashMap<K, Bucket>, k: &K, r: Rate, now: Instant) -> f64 {
    m.get(k).map(|b| b.level(r, now)).unwrap_or(r.burst as f64)
}

fn add<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Bucket>, k: K, r: Rate, now: Instant, delta: f64) {
    if m.len() > MAX_BUCKETS {
        m.retain(|_, b| b.level(r, now) < r.burst as f64);
    }
    let tokens = level(m, &k, r, now) + delta;
    m.insert(k, Bucket { tokens: tokens.min(r.burst as f64), at: now });
}

pub struct BasicAuth {
    users: HashMap<String, String>,
    dummy: String,
    buckets: Mutex<Buckets>,
}

/// The user name and the decoded `user:password` of a `Basic` header.
fn parse(header: Option<&[u8]>) -> Option<(String, Zeroizing<Vec<u8>>)> {
    let h = std::str::from_utf8(header?).ok()?;
    let (scheme, b64) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?);
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&raw[..colon]).ok()?.to_string();
    Some((user, raw))
}

impl BasicAuth {
    pub fn load(path: &Path) -> Result<BasicAuth, ProxyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| ProxyError::Read { what: "htpasswd", path: path.to_path_buf(), source, hint: "" })?,
        );
        let mut users = HashMap::new();
        let mut cost: Option<u32> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (u, h) =
                line.split_once(':').ok_or_else(|| ProxyError::Htpasswd { path: path.to_path_buf(), line: n + 1, message: "expected user:hash" })?;
            if !(h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$")) {
                return Err(ProxyError::Htpasswd { path: path.to_path_buf(), line: n + 1, message: "only bcrypt entries are accepted (htpasswd -B)" });
            }
            if let Some(c) = h.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
                cost = Some(cost.map_or(c, |m| m.max(c)));
            }
            users.insert(u.to_string(), h.to_string());
        }
        // Same cost as the real entries, so unknown users take as long as known ones.
        let dummy = bcrypt::hash("swarmseal-dummy-password", cost.unwrap_or(bcrypt::DEFAULT_COST).clamp(4, 31))
            .map_err(|e| ProxyError::Crypto(format!("bcrypt: {e}")))?;
        Ok(BasicAuth { users, dummy, buckets: Mutex::new(Buckets::default()) })
    }

    /// The per-user bucket's key: the name when it is in the file, one shared key otherwise.
    fn user_key(&self, user: &str) -> String {
        if self.users.contains_key(user) { user.to_string() } else { "\0unknown".to_string() }
    }

    /// Take one attempt from the buckets of `ip` and of the header's user. `Err(wait)`:
    /// a bucket is empty, answer 429 with `Retry-After: wait` (nothing is taken). A
    /// header that is missing or not `Basic` takes nothing (no bcrypt runs for it).
    pub fn admit(&self, ip: IpAddr, header: Option<&[u8]>) -> Result<(), Duration> {
        let Some((user, _)) = parse(header) else { return Ok(()) };
        let key = self.user_key(&user);
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (la, lu) = (level(&b.addr, &ip, PER_ADDRESS, now), level(&b.user, &key, PER_USER, now));
        if la < 1.0 || lu < 1.0 {
            let wait = |l: f64, r: Rate| if l < 1.0 { r.every.mul_f64(1.0 - l) } else { Duration::ZERO };
            return Err(wait(la, PER_ADDRESS).max(wait(lu, PER_USER)).max(Duration::from_secs(1)));
        }
        add(&mut b.addr, ip, PER_ADDRESS, now, -1.0);
        add(&mut b.user, key, PER_USER, now, -1.0);
        Ok(())
    }

    /// Check an `Authorization` header value admitted by [`admit`](Self::admit). Returns
    /// the user name when valid (and gives the attempt back to the buckets).
    /// Runs bcrypt: call from a blocking context.
    pub fn check_blocking(&self, ip: IpAddr, header: Option<&[u8]>) -> Option<String> {
        let (user, raw) = parse(header)?;
        let pass = &raw[user.len() + 1..];
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let good = bcrypt::verify(pass, hash).unwrap_or(false) && known;
        if !good {
            return None;
        }
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        add(&mut b.addr, ip, PER_ADDRESS, now, 1.0);
        add(&mut b.user, user.clone(), PER_USER, now, 1.0);
        Some(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(up: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(up)).into_bytes()
    }

    fn attempt(b: &BasicAuth, ip: IpAddr, up: &str) -> Result<Option<String>, Duration> {
        let h = basic(up);
        b.admit(ip, Some(&h))?;
        Ok(b.check_blocking(ip, Some(&h)))
    }

    #[test]
    fn checks_users_and_caps_failures_per_address_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("# comment\nci:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let b = BasicAuth::load(&p).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..30 {
            assert_eq!(attempt(&b, ip, "ci:pw").unwrap().as_deref(), Some("ci"), "successes cost nothing");
        }
        assert_eq!(b.check_blocking(ip, Some(b"Bearer x")), None);
        assert_eq!(b.admit(ip, None), Ok(()));
        for _ in 0..5 {
            assert_eq!(attempt(&b, ip, "ci:nope").unwrap(), None);
            assert_eq!(attempt(&b, ip, "nobody:pw").unwrap(), None);
        }
        let wait = attempt(&b, ip, "ci:pw").unwrap_err();
        assert!(wait >= Duration::from_secs(1) && wait <= PER_ADDRESS.every, "{wait:?}");
        assert!(attempt(&b, ip, "ci:nope").is_err(), "the 11th failure is refused at once");
        // Another address still has its own bucket; user ci has 15 of 20 left.
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(attempt(&b, ip2, "ci:pw").unwrap().as_deref(), Some("ci"));
        // Per user: spread over many addresses, ci's guesses stop at its bucket.
        let mut refused = 0;
        for i in 0..40u8 {
            let a: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            if attempt(&b, a, "ci:nope").is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 24, "per-user cap: {refused} of 40 refused");
    }

    #[test]
    fn rejects_non_bcrypt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, "ci:$apr1$abc$def\n").unwrap();
        assert!(BasicAuth::load(&p).is_err());
    }
}
