//! Connection capacity: who may hold how much of the proxy at once.
//!
//! Three layers, so that nobody without a certificate can fill the door and no
//! certificate can hold it:
//!
//! 1. **Handshakes** ([`Slots::handshake`]): a TCP connection gets a handshake
//!    slot at accept, or is closed at once. At most `max_handshakes_per_address`
//!    per source (an IPv4 address, an IPv6 /64) and `max_handshakes` in all;
//!    when all are taken, a newcomer from a source holding fewer than the busiest
//!    source takes the oldest handshake slot of the busiest source (that handshake
//!    is closed), so many attacking addresses cannot keep a new one out.
//!    A handshake must end within `handshake_timeout_secs`. Nothing else is held
//!    before the client certificate is verified.
//! 2. **Connections** ([`Slots::connection`]): a connection with a verified
//!    certificate then needs a connection slot: at most `max_connections` in
//!    all, of which `admin_reserved_connections` only the `admin` role may use;
//!    at most `max_connections_per_role` for any other role (readonly, or a
//!    certificate without a known role) and `max_connections_per_identity` per
//!    certificate (identity = SHA-256 fingerprint of the DER certificate). Over
//!    a cap, the first request is answered `503` with a JSON message naming it,
//!    still on the handshake slot (so the excess stays under the per-address cap).
//! 3. **Long streams** ([`Slots::stream`]): `GET /events`, followed logs,
//!    attach, exec start, streamed stats and any upgraded request hold a stream
//!    slot (at most `max_streams_per_identity` per certificate) until the next
//!    request on that connection or its end; over the cap the request gets `503`.
//!
//! Refused connections are logged through [`RefusalLog`]: the first refusal from
//! a source address at once, then one line per address per minute with the counts.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tls::Role;

/// The caps, from `[proxy]` (see [`crate::config::ProxyConfig`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    pub max_connections: usize,
    pub admin_reserved_connections: usize,
    pub max_connections_per_role: usize,
    pub max_connections_per_identity: usize,
    pub max_streams_per_identity: usize,
}

impl Limits {
    pub fn of(p: &crate::config::ProxyConfig) -> Limits {
        let max_connections = p.max_connections.max(1);
        Limits {
            max_handshakes: p.max_handshakes.max(1),
            max_handshakes_per_address: p.max_handshakes_per_address.max(1),
            max_connections,
            admin_reserved_connections: p.admin_reserved_connections.min(max_connections - 1),
            max_connections_per_role: p.max_connections_per_role.max(1),
            max_connections_per_identity: p.max_connections_per_identity.max(1),
            max_streams_per_identity: p.max_streams_per_identity.max(1),
        }
    }
}

/// SHA-256 of a certificate's DER bytes.
pub type Fingerprint = [u8; 32];

/// The counters; one lock, held for a few map operations.
pub(crate) struct Slots {
    limits: Limits,
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    handshakes: usize,
    /// Per source, oldest first: (id, closes the handshake when dropped).
    handshakes_by_source: HashMap<IpAddr, VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>,
    next_handshake: u64,
    connections: usize,
    /// Connections of every role but admin.
    non_admin: usize,
    by_role: HashMap<Option<Role>, usize>,
    by_identity: HashMap<Fingerprint, usize>,
    streams_by_identity: HashMap<Fingerprint, usize>,
}

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

/// The source a handshake cap counts: the IPv4 address, or the IPv6 /64 (one host's share).
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Held from accept until the connection has a [`ConnSlot`] (or is closed). `evicted`
/// resolves when a newcomer took this slot: the handshake must end then.
pub(crate) struct HandshakeSlot {
    slots: Arc<Slots>,
    source: IpAddr,
    id: u64,
    pub evicted: tokio::sync::oneshot::Receiver<()>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        let Some(q) = c.handshakes_by_source.get_mut(&self.source) else { return };
        let Some(i) = q.iter().position(|(id, _)| *id == self.id) else { return }; // evicted: already uncounted
        q.remove(i);
        if q.is_empty() {
            c.handshakes_by_source.remove(&self.source);
        }
        c.handshakes -= 1;
    }
}

/// Held while an authenticated connection (or its upgraded stream) lives.
pub(crate) struct ConnSlot {
    slots: Arc<Slots>,
    fp: Fingerprint,
    role: Option<Role>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        c.connections -= 1;
        if self.role != Some(Role::Admin) {
            c.non_admin -= 1;
        }
        dec(&mut c.by_role, &self.role);
        dec(&mut c.by_identity, &self.fp);
    }
}

/// Held while one long stream lives.
pub(crate) struct StreamSlot {
    slots: Arc<Slots>,
    fp: Fingerprint,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        dec(&mut self.slots.lock().streams_by_identity, &self.fp);
    }
}

impl Slots {
    pub fn new(limits: Limits) -> Arc<Slots> {
        Arc::new(Slots { limits, inner: Mutex::new(Counts::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handshake slot for a connection from `ip`, or why not.
    pub fn handshake(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakeSlot, String> {
        let l = &self.limits;
        let source = source_of(ip);
        let mut c = self.lock();
        let mine = c.handshakes_by_source.get(&source).map_or(0, VecDeque::len);
        if mine >= l.max_handshakes_per_address {
            return Err(format!("{mine} TLS handshakes already in progress from this address (max_handshakes_per_address)"));
        }
        if c.handshakes >= l.max_handshakes {
            // Full: take the oldest slot of the busiest source (the oldest among equals), if that
            // source holds more than the newcomer's; a newcomer's own handshake is evicted last.
            let busiest = c
                .handshakes_by_source
                .iter()
                .max_by_key(|(_, q)| (q.len(), std::cmp::Reverse(q.front().map_or(0, |h| h.0))))
                .map(|(s, q)| (*s, q.len()));
            match busiest {
                Some((b, n)) if n > mine => {
                    let q = c.handshakes_by_source.get_mut(&b).expect("present");
                    drop(q.pop_front()); // its sender dropped: that handshake ends
                    if q.is_empty() {
                        c.handshakes_by_source.remove(&b);
                    }
                    c.handshakes -= 1;
                }
                _ => return Err(format!("{} TLS handshakes already in progress (max_handshakes)", c.handshakes)),
            }
        }
        c.handshakes += 1;
        c.next_handshake += 1;
        let id = c.next_handshake;
        let (tx, evicted) = tokio::sync::oneshot::channel();
        c.handshakes_by_source.entry(source).or_default().push_back((id, tx));
        Ok(HandshakeSlot { slots: self.clone(), source, id, evicted })
    }

    /// A connection slot for a verified certificate, or the message for the `503`.
    pub fn connection(self: &Arc<Self>, fp: Fingerprint, role: Option<Role>) -> Result<ConnSlot, String> {
        let l = &self.limits;
        let mut c = self.lock();
        let full = |what: &str, n: usize| Err(format!("the proxy is at its limit of {n} {what}; close some connections and retry"));
        if c.connections >= l.max_connections {
            return full("connections in all (max_connections)", l.max_connections);
        }
        let mine = c.by_identity.get(&fp).copied().unwrap_or(0);
        if mine >= l.max_connections_per_identity {
            return full("connections for this certificate (max_connections_per_identity)", l.max_connections_per_identity);
        }
        if role != Some(Role::Admin) {
            let shared = l.max_connections - l.admin_reserved_connections;
            if c.non_admin >= shared {
                return Err(format!(
                    "the proxy is at its limit of {shared} connections for roles other than admin (max_connections - admin_reserved_connections); close some connections and retry"
                ));
            }
            if c.by_role.get(&role).copied().unwrap_or(0) >= l.max_connections_per_role {
                return full("connections for this role (max_connections_per_role)", l.max_connections_per_role);
            }
            c.non_admin += 1;
        }
        c.connections += 1;
        *c.by_role.entry(role).or_default() += 1;
        *c.by_identity.entry(fp).or_default() += 1;
        Ok(ConnSlot { slots: self.clone(), fp, role })
    }

    /// A stream slot for the identity of `conn`, or the message for the `503`.
    pub fn stream(self: &Arc<Self>, conn: &ConnSlot) -> Result<StreamSlot, String> {
        let n = self.limits.max_streams_per_identity;
        let mut c = self.lock();
        if c.streams_by_identity.get(&conn.fp).copied().unwrap_or(0) >= n {
            return Err(format!(
                "this certificate already holds {n} long streams (events, followed logs, attach, exec, stats; max_streams_per_identity); end some and retry"
            ));
        }
        *c.streams_by_identity.entry(conn.fp).or_default() += 1;
        Ok(StreamSlot { slots: self.clone(), fp: conn.fp })
    }

    /// Handshakes and connections in progress (for the graceful stop).
    pub fn busy(&self) -> usize {
        let c = self.lock();
        c.handshakes + c.connections
    }
}

/// Whether a request holds its connection for long: `GET /events`, followed logs (containers,
/// services, tasks), attach, exec start, streamed stats, or any upgrade. `canon` is the
/// canonical path (version prefix removed), `query` the raw query.
pub fn is_long_stream(canon: &super::authz::Canon, query: Option<&str>, upgrade: bool) -> bool {
    use super::authz::{query_flag, query_value};
    let s: Vec<&str> = canon.segs.iter().map(String::as_str).collect();
    upgrade
        || match s.as_slice() {
            ["events"] => true,
            ["containers" | "services" | "tasks", _, "logs"] => query_flag(query, "follow"),
            ["containers", _, "attach"] | ["containers", _, "attach", "ws"] | ["exec", _, "start"] => true,
            ["containers", _, "stats"] => !matches!(query_value(query, "stream").as_deref().map(str::trim), Some("0" | "false" | "False")),
            _ => false,
        }
}

/// Why a connection was refused before it could send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Handshake pool or per-address cap full: closed at accept.
    Busy,
    /// The TLS handshake did not end within `handshake_timeout_secs`.
    Timeout,
    /// The TLS handshake failed (no or a bad client certificate, not TLS 1.3, …).
    Failed,
    /// Authenticated, over a connection cap: answered 503.
    OverCap,
}

const REFUSAL_KINDS: usize = 4;
/// Addresses tracked at once; refusals from further addresses are only counted in all.
const REFUSAL_ADDRESSES: usize = 4096;
/// One summary line per address per this window.
pub(crate) const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

impl Refusal {
    fn index(self) -> usize {
        self as usize
    }
}

struct Window {
    start: Instant,
    counts: [u64; REFUSAL_KINDS],
}

/// Rate-limited log of refused connections: a count per source address per minute.
#[derive(Default)]
pub(crate) struct RefusalLog {
    inner: Mutex<(HashMap<IpAddr, Window>, u64)>,
}

impl RefusalLog {
    /// Count one refusal; the first one from `ip`'s source (see [`source_of`]) in a window is
    /// logged at once with `detail`.
    pub fn note(&self, ip: IpAddr, kind: Refusal, detail: &str) {
        let ip = source_of(ip);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, untracked) = &mut *g;
        let now = Instant::now();
        if let Some(w) = map.get_mut(&ip) {
            if now.duration_since(w.start) < REFUSAL_WINDOW {
                w.counts[kind.index()] += 1;
                return;
            }
            let w = map.remove(&ip).expect("present");
            summary(ip, &w);
        }
        if map.len() >= REFUSAL_ADDRESSES {
            *untracked += 1;
            return;
        }
        let mut counts = [0; REFUSAL_KINDS];
        counts[kind.index()] = 1;
        map.insert(ip, Window { start: now, counts });
        drop(g);
        tracing::warn!(
            target: "swarmseal::audit",
            peer = %ip,
            reason = ?kind,
            "connection refused: {detail}; further refusals from this address are counted and logged once a minute"
        );
    }

    /// Log and forget the windows that ended (call about every few seconds).
    pub fn flush(&self, all: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, untracked) = &mut *g;
        let now = Instant::now();
        let done: Vec<IpAddr> = map.iter().filter(|(_, w)| all || now.duration_since(w.start) >= REFUSAL_WINDOW).map(|(ip, _)| *ip).collect();
        for ip in done {
            let w = map.remove(&ip).expect("present");
            summary(ip, &w);
        }
        if *untracked > 0 && (all || map.len() < REFUSAL_ADDRESSES) {
            tracing::warn!(target: "swarmseal::audit", refused = *untracked, "connections refused from further addresses (more than {REFUSAL_ADDRESSES} addresses at once)");
            *untracked = 0;
        }
    }
}

/// The count line of one window; nothing when only the first refusal (already logged) happened.
fn summary(ip: IpAddr, w: &Window) {
    let total: u64 = w.counts.iter().sum();
    if total <= 1 {
        return;
    }
    let [busy, timeout, failed, over_cap] = w.counts;
    tracing::warn!(
        target: "swarmseal::audit",
        peer = %ip,
        refused = total,
        busy,
        timeout,
        failed,
        over_cap,
        seconds = w.start.elapsed().as_secs(),
        "connections refused from this address"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_handshakes: 3,
            max_handshakes_per_address: 2,
            max_connections: 6,
            admin_reserved_connections: 2,
            max_connections_per_role: 3,
            max_connections_per_identity: 2,
            max_streams_per_identity: 1,
        }
    }

    fn err<T>(r: Result<T, String>) -> String {
        r.err().expect("refused")
    }

    #[test]
    fn handshakes_are_capped_per_address_and_in_all() {
        let s = Slots::new(limits());
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap(), "::1".parse().unwrap());
        let mut h1 = s.handshake(a).unwrap();
        let h2 = s.handshake(a).unwrap();
        assert!(err(s.handshake(a)).contains("max_handshakes_per_address"));
        let h3 = s.handshake(b).unwrap();
        // Full: the newcomer from c takes the oldest slot of a (2 > 0).
        let h4 = s.handshake(c).expect("a source with no handshake gets in");
        assert!(h1.evicted.try_recv().is_err_and(|e| e == tokio::sync::oneshot::error::TryRecvError::Closed), "a's oldest handshake is told to end");
        assert_eq!(s.busy(), 3);
        drop(h1); // the evicted one ending counts nothing twice
        assert_eq!(s.busy(), 3);
        // a, b, c hold one each: a fourth source takes the oldest (a's), never the newest (c's);
        // c, holding one, cannot take from anyone (nobody holds more).
        let mut h2 = h2;
        let d: IpAddr = "127.0.0.4".parse().unwrap();
        let h5 = s.handshake(d).expect("a new source gets in");
        assert!(h2.evicted.try_recv().is_err_and(|e| e == tokio::sync::oneshot::error::TryRecvError::Closed));
        assert!(err(s.handshake(c)).contains("(max_handshakes)"));
        drop((h2, h3, h4, h5));
        assert_eq!(s.busy(), 0);
        // IPv6: one /64 is one source.
        let s = Slots::new(limits());
        let _x = s.handshake("2001:db8::1".parse().unwrap()).unwrap();
        let _y = s.handshake("2001:db8::2".parse().unwrap()).unwrap();
        assert!(err(s.handshake("2001:db8::ffff:1".parse().unwrap())).contains("per_address"));
    }

    #[test]
    fn admin_keeps_its_reserve_and_identities_their_share() {
        let s = Slots::new(limits());
        let ro = Some(Role::ReadOnly);
        let (r1, r2, r3, a1, a2) = ([1; 32], [2; 32], [3; 32], [4; 32], [5; 32]);
        let k1 = s.connection(r1, ro).unwrap();
        let _k2 = s.connection(r1, ro).unwrap();
        assert!(err(s.connection(r1, ro)).contains("max_connections_per_identity"), "one identity cannot take more than its share");
        let k3 = s.connection(r2, ro).unwrap();
        assert!(err(s.connection(r2, ro)).contains("max_connections_per_role"));
        let _k4 = s.connection(r3, None).unwrap();
        assert!(err(s.connection(r3, None)).contains("roles other than admin"), "the last 2 slots are the admin's");
        let k5 = s.connection(a1, Some(Role::Admin)).unwrap();
        let _k6 = s.connection(a2, Some(Role::Admin)).unwrap();
        assert!(err(s.connection(a2, Some(Role::Admin))).contains("(max_connections)"));
        drop(k1);
        assert!(s.connection(r1, ro).is_ok(), "a freed slot is usable again");
        let st = s.stream(&k3).unwrap();
        assert!(err(s.stream(&k3)).contains("max_streams_per_identity"));
        assert!(s.stream(&k5).is_ok(), "streams are counted per identity");
        drop(st);
        assert!(s.stream(&k3).is_ok());
    }

    #[test]
    fn long_streams_are_recognised() {
        let c = |p: &str| super::super::authz::canonicalize(p).expect("a plain path");
        assert!(is_long_stream(&c("/v1.41/events"), None, false));
        assert!(is_long_stream(&c("/containers/x/logs"), Some("stdout=1&follow=1"), false));
        assert!(!is_long_stream(&c("/containers/x/logs"), Some("stdout=1"), false));
        assert!(is_long_stream(&c("/containers/x/stats"), None, false));
        assert!(!is_long_stream(&c("/containers/x/stats"), Some("stream=false"), false));
        assert!(is_long_stream(&c("/exec/abc/start"), None, false));
        assert!(is_long_stream(&c("/_ping"), None, true));
        assert!(!is_long_stream(&c("/containers/json"), None, false));
    }
}
