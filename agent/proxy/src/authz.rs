//! Authorization: which role may send which request, and which requests are
//! security events (they touch the unlock key, autolock, the CA, join tokens or
//! a node's role).
//!
//! Decisions are taken on a canonical form of the path so that no spelling of
//! a denied path gets through: the query and fragment cut at their RAW `?`/`#`
//! (as the engine splits them), then percent-decoding (repeated, so `%2573` is
//! `s`), a decoded `?`, `#` or NUL refused outright, duplicate slashes and `.`
//! dropped, `..` resolved, trailing whitespace and `;` of a segment dropped,
//! lowercase, and every leading `/vN[.M]` API-version segment removed. The
//! canonical form is a superset of what the engine's router could match, so it
//! can only deny more (`tests/door_policy.rs` checks spellings against dockerd).
//!
//! Rules:
//! - a certificate without a known role (its Subject OU names no configured role): everything denied;
//! - `admin`: everything;
//! - any other role: never an endpoint that makes the engine connect to another
//!   host (the `OUTBOUND` table, see [`outbound`]: registry search, pulls, pushes, builds, logins, ...);
//! - `readonly`: `GET`/`HEAD` only, no connection upgrade (no `attach/ws`), and never
//!   `/swarm/unlockkey` (the key), `/swarm` (it holds the join tokens, a way to add a
//!   manager), `/containers/*/archive` and `/containers/*/export` (container files,
//!   such as mounted secrets), `/images/get` (`docker save`), and the agent's endpoints
//!   that [`Route::admin_only`] names (escrow, reseal, recover, var/enroll-tpm, update,
//!   update/partial).
//!
//! - `deploy`: reads as `readonly`; writes only to `DEPLOY_WRITES` (their bodies: [`crate::policy`]);
//! - `monitor`: `GET`/`HEAD` of `MONITOR_READS` and of the state [`crate::redact`] rewrites.
//!
//! Bodies that change autolock, the CA or a node's role are read with Go's rules
//! ([`super::gojson`], [`Inspect`], [`spec_events`], [`node_events`]).

use super::gojson::GoValue;
use super::route::Route;
use super::tls::Role;

/// The canonical path (segments) used for decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canon {
    /// Lower-cased segments (what decisions compare).
    pub segs: Vec<String>,
    /// The same segments as sent (decoded, case kept), e.g. a node ID to look up.
    pub raw_segs: Vec<String>,
}

impl Canon {
    pub fn path(&self) -> String {
        format!("/{}", self.segs.join("/"))
    }
    pub(crate) fn is(&self, pat: &[&str]) -> bool {
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

/// Canonical form of a raw request path (see the module doc). The query and the
/// fragment are cut at their raw `?`/`#` BEFORE decoding; a path that decodes to a
/// `?`, `#` or NUL is refused (`Err`, the operator's sentence): the engine routes on
/// the decoded path, where such a byte is part of a name, so no shorter canonical
/// form could stand for it.
pub fn canonicalize(raw: &str) -> Result<Canon, String> {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    let mut bytes = raw.as_bytes().to_vec();
    for _ in 0..8 {
        let d = percent_decode(&bytes);
        if d == bytes {
            break;
        }
        bytes = d;
    }
    if bytes.iter().any(|b| matches!(b, b'?' | b'#' | 0)) {
        return Err("the path holds an encoded '?', '#' or NUL (%3F, %23, %00); such a path is refused".into());
    }
    let s = String::from_utf8_lossy(&bytes);
    let mut raw_segs: Vec<String> = Vec::new();
    for seg in s.split(['/', '\\']) {
        let seg = seg.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
        match seg {
            "" | "." => {}
            ".." => {
                raw_segs.pop();
            }
            _ => raw_segs.push(seg.to_string()),
        }
    }
    while raw_segs.first().map(|s| is_version(&s.to_lowercase())).unwrap_or(false) {
        raw_segs.remove(0);
    }
    Ok(Canon { segs: raw_segs.iter().map(|s| s.to_lowercase()).collect(), raw_segs })
}

/// How an engine endpoint is matched on the canonical segments.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// Exactly these segments (`*`: any one segment).
    Exact(&'static [&'static str]),
    /// `/{first}/{name}/{last}` where the name may hold slashes (images, plugins).
    Named(&'static str, &'static str),
    /// This prefix and anything under it.
    Under(&'static [&'static str]),
}

impl Pattern {
    fn matches(self, c: &Canon) -> bool {
        match self {
            Pattern::Exact(p) => c.is(p),
            Pattern::Named(first, last) => {
                c.segs.len() >= 3 && c.segs[0] == first && c.segs.last().map(String::as_str) == Some(last)
            }
            Pattern::Under(p) => c.segs.len() >= p.len() && c.segs.iter().zip(p).all(|(s, p)| s == p),
        }
    }
}

/// Endpoints that make the engine open a connection to a host the client names
/// (or to a registry): admin-only, whatever the method (Docker Engine API v1.41;
/// the engine would answer 404/405 to the other methods anyway).
const OUTBOUND: &[(Pattern, &str)] = &[
    // GET /images/search?term=HOST:PORT/x: the engine queries the registry in `term`.
    (Pattern::Exact(&["images", "search"]), "registry searches"),
    // GET /plugins/privileges?remote=HOST:PORT/x: the engine fetches the plugin's manifest.
    (Pattern::Exact(&["plugins", "privileges"]), "plugin privilege lookups"),
    // POST /plugins/pull?remote=: pulls a plugin from its registry.
    (Pattern::Exact(&["plugins", "pull"]), "plugin pulls"),
    // POST /plugins/{name}/upgrade?remote=: pulls the new plugin version.
    (Pattern::Named("plugins", "upgrade"), "plugin upgrades"),
    // POST /plugins/{name}/push: pushes to the plugin's registry.
    (Pattern::Named("plugins", "push"), "plugin pushes"),
    // POST /images/create?fromImage= pulls; ?fromSrc=URL downloads from any URL.
    (Pattern::Exact(&["images", "create"]), "image pulls and imports"),
    // POST /images/{name}/push: pushes to the image's registry.
    (Pattern::Named("images", "push"), "image pushes"),
    // GET /distribution/{name}/json: the engine asks the image's registry for its manifest.
    (Pattern::Under(&["distribution"]), "registry lookups"),
    // POST /build?remote=URL fetches a context; FROM images are pulled.
    (Pattern::Exact(&["build"]), "image builds"),
    // POST /session, /grpc: BuildKit sessions (the builder pulls and fetches for the client).
    (Pattern::Exact(&["session"]), "build sessions"),
    (Pattern::Exact(&["grpc"]), "build sessions"),
    // POST /auth: the engine logs in to `serveraddress`.
    (Pattern::Exact(&["auth"]), "registry logins"),
    // POST /swarm/join: the engine connects to `RemoteAddrs`.
    (Pattern::Exact(&["swarm", "join"]), "joining a swarm"),
    // POST /services/create, /services/{id}/update: the image digest is resolved at its registry.
    (Pattern::Exact(&["services", "create"]), "service creation (the engine resolves the image at its registry)"),
    (Pattern::Exact(&["services", "*", "update"]), "service updates (the engine resolves the image at its registry)"),
];

/// Why `c` is an outbound endpoint (the `OUTBOUND` table), if it is one.
pub fn outbound(c: &Canon) -> Option<&'static str> {
    OUTBOUND.iter().find(|(r, _)| r.matches(c)).map(|(_, why)| *why)
}

/// Outcome of the authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// Decide for `role` (None: a certificate without a known role), with the built-in roles.
pub fn decide(role: Option<Role>, method: &str, c: &Canon, upgrade: bool) -> Decision {
    let policy = role.and_then(|r| crate::policy::Roles::builtin().get(r.as_str()));
    match decide_rule(policy.as_deref(), method, c, upgrade) {
        Ok(()) => Decision::Allow,
        Err(d) => Decision::Deny(d.message),
    }
}

/// Endpoints a `deploy` role may write to (method, canonical segments): what `docker stack
/// deploy`, `docker service create/update/rm/scale/rollback`, `docker secret/config
/// create/rm`, `docker network create/rm` and `docker run -d` send (Docker Engine API v1.41).
/// Bodies of the create/update ones are read ([`crate::policy::body_kind`]).
const DEPLOY_WRITES: &[(&str, &[&str])] = &[
    ("POST", &["services", "create"]),
    ("POST", &["services", "*", "update"]),
    ("DELETE", &["services", "*"]),
    ("POST", &["secrets", "create"]),
    ("POST", &["secrets", "*", "update"]),
    ("DELETE", &["secrets", "*"]),
    ("POST", &["configs", "create"]),
    ("POST", &["configs", "*", "update"]),
    ("DELETE", &["configs", "*"]),
    ("POST", &["networks", "create"]),
    ("DELETE", &["networks", "*"]),
    ("POST", &["volumes", "create"]),
    ("DELETE", &["volumes", "*"]),
    ("POST", &["containers", "create"]),
    ("POST", &["containers", "*", "start"]),
    ("POST", &["containers", "*", "stop"]),
    ("POST", &["containers", "*", "restart"]),
    ("POST", &["containers", "*", "kill"]),
    ("POST", &["containers", "*", "wait"]),
    ("DELETE", &["containers", "*"]),
];

/// Endpoints refused to `deploy` with their own rule name (the others: rule `endpoint`).
const DEPLOY_NAMED: &[(Pattern, &str, &str)] = &[
    (Pattern::Exact(&["containers", "*", "exec"]), "exec", "running commands in containers"),
    (Pattern::Under(&["exec"]), "exec", "running commands in containers"),
    (Pattern::Exact(&["containers", "*", "attach"]), "attach", "attaching to containers"),
    (Pattern::Exact(&["containers", "*", "archive"]), "archive", "container files"),
    (Pattern::Exact(&["containers", "*", "export"]), "export", "exporting containers"),
    (Pattern::Exact(&["commit"]), "commit", "committing containers to images"),
    (Pattern::Under(&["plugins"]), "plugins", "plugins"),
    (Pattern::Under(&["swarm"]), "swarm", "the swarm's settings, keys and tokens"),
    (Pattern::Under(&["nodes"]), "swarm", "changing nodes"),
];

/// Endpoints a `monitor` role may read as they are; the others it reads are rewritten
/// ([`crate::redact::redaction`]).
const MONITOR_READS: &[&[&str]] = &[&["_ping"], &["version"], &["swarmseal", "v1", "status"], &["swarmseal", "v1", "bench"], &["swarmseal", "v1", "metrics"], &["swarmseal", "v1", "attest"]];

/// Decide for the configured role `policy` (None: a certificate without a known role), on
/// the method and canonical path; a refusal names its rule (see `docs/proxy.md`, "Roles").
pub fn decide_rule(policy: Option<&crate::policy::RolePolicy>, method: &str, c: &Canon, upgrade: bool) -> Result<(), crate::policy::Denial> {
    use crate::policy::Denial;
    let Some(policy) = policy else {
        return Err(Denial::new("role", "the client certificate has no swarmseal role (its Subject OU must name a configured role: admin, readonly, deploy, monitor or a [roles] table)"));
    };
    let (name, role) = (policy.name.as_str(), policy.kind);
    if role == Role::Admin {
        return Ok(());
    }
    let deploy = role == Role::Deploy;
    let writes = |m: &str| DEPLOY_WRITES.iter().any(|(dm, p)| *dm == m && c.is(p));
    if let Some(what) = outbound(c) {
        // A deploy role creates and updates services: the image must already be on the
        // engine (checked before forwarding, see `policy::EngineChecks`).
        if !(deploy && writes(method)) {
            return Err(Denial::new("outbound", format!("{what} make the engine connect to another host; admin-only ({name} certificate)")));
        }
    }
    let route = Route::parse(c);
    // Credential activation is part of attestation (a POST only to carry its body): every
    // role that may attest, monitor and readonly included. It changes nothing on the manager.
    if route == Some(Route::AttestActivate) && method == "POST" && !upgrade {
        return Ok(());
    }
    if let Some(why) = route.filter(|r| matches!(r, Route::Update | Route::UpdatePartial)).and_then(Route::admin_only) {
        // Named before the method check, so the reason says so for a POST too.
        return Err(Denial::new("admin-only", format!("{why} ({name} certificate)")));
    }
    if deploy {
        if let Some((_, rule, what)) = DEPLOY_NAMED.iter().find(|(p, _, _)| p.matches(c)).filter(|_| method != "GET" && method != "HEAD" || upgrade) {
            return Err(Denial::new(rule, format!("{name}: {what} ({method} {}) is not allowed", c.path())));
        }
        if method != "GET" && method != "HEAD" {
            if writes(method) && !upgrade {
                return Ok(());
            }
            return Err(Denial::new("endpoint", format!("{name}: {method} {} is not allowed (not one of the deploy role's endpoints)", c.path())));
        }
    }
    if role == Role::Monitor {
        if (method != "GET" && method != "HEAD") || upgrade {
            return Err(Denial::new("method", format!("{name}: {method} is not allowed (GET and HEAD only, no connection upgrades)")));
        }
        if !MONITOR_READS.iter().any(|p| c.is(p)) && crate::redact::redaction(c).is_none() {
            return Err(Denial::new("endpoint", format!("{name}: GET {} is not allowed (monitor reads state: info, version, nodes, services, tasks, containers/json, configs, secrets, networks, events, swarmseal/v1/status, bench, metrics and attest; not logs, top, archive, export)", c.path())));
        }
        return Ok(());
    }
    if method != "GET" && method != "HEAD" {
        return Err(Denial::new("method", format!("{method} is not allowed for a readonly certificate (GET and HEAD only)")));
    }
    if upgrade {
        return Err(Denial::new("attach", format!("connection upgrades (attach, exec) are not allowed for a {name} certificate")));
    }
    let denied: &[(&[&str], &str, &str)] = &[
        (&["swarm", "unlockkey"], "swarm", "the swarm unlock key is admin-only"),
        (&["swarm"], "swarm", "the swarm object holds the join tokens; it is admin-only"),
        (&["containers", "*", "archive"], "archive", "reading container files is admin-only"),
        (&["containers", "*", "export"], "export", "exporting containers is admin-only"),
        (&["containers", "*", "attach", "ws"], "attach", "attaching to containers is admin-only"),
    ];
    let hit = denied.iter().find(|(pat, _, _)| c.is(pat)).map(|(_, r, why)| (*r, *why)).or_else(|| route.and_then(Route::admin_only).map(|w| ("admin-only", w)));
    if let Some((rule, why)) = hit {
        return Err(Denial::new(rule, format!("{why} ({name} certificate)")));
    }
    // Variable-length names (images carry slashes): decide on the first and last segments.
    let first = c.segs.first().map(String::as_str);
    let last = c.segs.last().map(String::as_str);
    if first == Some("images") && last == Some("get") {
        // GET /images/get, GET /images/{name}/get: `docker save`, every byte of the image.
        return Err(Denial::new("export", format!("exporting images is admin-only ({name} certificate)")));
    }
    Ok(())
}

/// A security event: a request that touches the unlock key, autolock, the CA, the
/// join tokens or a node's role (decided on the path and query; see [`Inspect`] for
/// the ones decided on the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEvent {
    /// `GET /swarm/unlockkey`
    UnlockKeyRead,
    /// `POST /swarm/unlock`
    SwarmUnlock,
    /// `POST /swarm/update?rotateManagerUnlockKey=true`
    UnlockKeyRotate,
    /// `POST /swarm/update?rotateWorkerToken=true` or `rotateManagerToken=true`
    JoinTokenRotate,
    /// `POST /swarm/join`: this node joins another swarm (its CA, its role)
    SwarmJoin,
    /// The body turns autolock on (`/swarm/init`, `/swarm/update`).
    AutolockEnable,
    /// The body turns autolock off (`/swarm/update`).
    AutolockDisable,
    /// The body changes the swarm's CA (signing CA, external CAs, forced rotation).
    CaChange,
    /// `POST /nodes/{id}/update` whose body changes the node's role.
    NodeRoleChange,
    /// `GET /swarmseal/v1/escrow`, `GET /swarmseal/v1/escrow/var-recovery-key`
    EscrowRead,
    /// `POST /swarmseal/v1/reseal`
    Reseal,
    /// `POST /swarmseal/v1/recover` (the body may be the unlock key)
    Recover,
    /// `POST /swarmseal/v1/var/enroll-tpm` (the body is the /var recovery key)
    VarEnrollTpm,
    /// `POST /swarmseal/v1/var/firmware-window` (arm: the body is the /var recovery key; or disarm)
    VarFirmwareWindow,
    /// `POST /swarmseal/v1/update`: a new image for this manager (its release key decides).
    ImageUpdate,
}

impl KeyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEvent::UnlockKeyRead => "unlock_key_read",
            KeyEvent::SwarmUnlock => "swarm_unlock",
            KeyEvent::UnlockKeyRotate => "unlock_key_rotate",
            KeyEvent::JoinTokenRotate => "join_token_rotate",
            KeyEvent::SwarmJoin => "swarm_join",
            KeyEvent::AutolockEnable => "autolock_enable",
            KeyEvent::AutolockDisable => "autolock_disable",
            KeyEvent::CaChange => "ca_change",
            KeyEvent::NodeRoleChange => "node_role_change",
            KeyEvent::EscrowRead => "escrow_read",
            KeyEvent::Reseal => "reseal",
            KeyEvent::Recover => "recover",
            KeyEvent::VarEnrollTpm => "var_enroll_tpm",
            KeyEvent::VarFirmwareWindow => "var_firmware_window",
            KeyEvent::ImageUpdate => "image_update",
        }
    }
}

/// Requests whose body the proxy reads as the engine will ([`super::gojson`]) before
/// forwarding: what they change is decided on the body. A body over `limit` bytes is
/// refused (413), one that does not parse is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// `POST /swarm/init` (`InitRequest`: `AutoLockManagers`, `Spec`)
    SwarmInit,
    /// `POST /swarm/update` (`Spec`, replaced as a whole)
    SwarmUpdate,
    /// `POST /swarm/join` (`JoinRequest`, holds a join token: never logged)
    SwarmJoin,
    /// `POST /swarm/unlock` (`UnlockRequest`, holds the key: never logged)
    SwarmUnlock,
    /// `POST /nodes/{id}/update` (`NodeSpec`: `Role`)
    NodeUpdate,
}

impl Inspect {
    /// Largest body accepted, in bytes (a spec with a signing CA and external CAs is a
    /// few KiB; a key or a token request well under 1 KiB).
    pub fn limit(self) -> u64 {
        match self {
            Inspect::SwarmInit | Inspect::SwarmUpdate | Inspect::NodeUpdate => 1 << 20,
            Inspect::SwarmJoin | Inspect::SwarmUnlock => 64 << 10,
        }
    }
}

/// Whether a request's body must be inspected (method matched case-insensitively:
/// more than the engine's router, never less).
pub fn inspect(method: &str, c: &Canon) -> Option<Inspect> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    [
        (&["swarm", "init"][..], Inspect::SwarmInit),
        (&["swarm", "update"], Inspect::SwarmUpdate),
        (&["swarm", "join"], Inspect::SwarmJoin),
        (&["swarm", "unlock"], Inspect::SwarmUnlock),
        (&["nodes", "*", "update"], Inspect::NodeUpdate),
    ]
    .into_iter()
    .find(|(p, _)| c.is(p))
    .map(|(_, i)| i)
}

/// Go's `httputils.BoolValue`: anything but "", "0", "no", "false", "none" is true.
fn truthy(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    !(v.is_empty() || v == "0" || v == "no" || v == "false" || v == "none")
}

/// Whether a query string sets `key` to a true value: any occurrence counts (Go reads
/// the first), keys matched case-insensitively (Go: exactly), decoded, and `;` taken as a
/// separator too (Go before 1.17 did): it finds at least what the engine finds.
pub fn query_flag(query: Option<&str>, key: &str) -> bool {
    query_pairs(query, &['&', ';']).any(|(k, v)| k.trim().eq_ignore_ascii_case(key) && truthy(&v))
}

/// The value of the first `key=` in a raw query, percent-decoded (`+` as space); `None` when
/// `key` is absent. Keys match case-insensitively, as in [`query_flag`].
pub fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query_pairs(query, &['&']).find_map(|(k, v)| k.trim().eq_ignore_ascii_case(key).then_some(v))
}

/// Every value of `key=` in a raw query (split at `&` and `;`, as [`query_flag`] reads it),
/// percent-decoded (`+` as space), keys matched case-insensitively.
pub fn query_values(query: Option<&str>, key: &str) -> Vec<String> {
    query_pairs(query, &['&', ';']).filter_map(|(k, v)| k.trim().eq_ignore_ascii_case(key).then_some(v)).collect()
}

/// The `key=value` pairs of a raw query split at `seps`, each side percent-decoded with `+`
/// as space (a pair without `=` has an empty value).
fn query_pairs<'a>(query: Option<&'a str>, seps: &'a [char]) -> impl Iterator<Item = (String, String)> + 'a {
    let dec = |s: &str| String::from_utf8_lossy(&percent_decode(s.replace('+', " ").as_bytes())).into_owned();
    query.into_iter().flat_map(move |q| q.split(seps)).map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (dec(k), dec(v))
    })
}

/// Security events decided on the canonical path and the raw query alone.
pub fn key_events(c: &Canon, query: Option<&str>) -> Vec<KeyEvent> {
    let mut v = Vec::new();
    if c.is(&["swarm", "unlockkey"]) {
        v.push(KeyEvent::UnlockKeyRead);
    } else if c.is(&["swarm", "unlock"]) {
        v.push(KeyEvent::SwarmUnlock);
    } else if c.is(&["swarm", "join"]) {
        v.push(KeyEvent::SwarmJoin);
    } else if c.is(&["swarm", "update"]) {
        if query_flag(query, "rotateManagerUnlockKey") {
            v.push(KeyEvent::UnlockKeyRotate);
        }
        if query_flag(query, "rotateWorkerToken") || query_flag(query, "rotateManagerToken") {
            v.push(KeyEvent::JoinTokenRotate);
        }
    } else if let Some(e) = Route::parse(c).and_then(Route::event) {
        v.push(e);
    }
    v
}

/// Events a swarm spec body brings, against the current spec (`GET /swarm`'s `Spec`;
/// `None`: unknown, e.g. `/swarm/init`, where there is none). The body is read as Go
/// reads it: `/swarm/update` replaces the whole spec, so an absent
/// `EncryptionConfig.AutoLockManagers` means false. `Err`: a field the engine would
/// refuse (the request is refused too).
pub fn spec_events(kind: Inspect, body: &GoValue, current: Option<&GoValue>) -> Result<Vec<KeyEvent>, String> {
    let mut v = Vec::new();
    let (spec, wanted) = match kind {
        Inspect::SwarmInit => {
            let top = body.bool_at("AutoLockManagers")?.unwrap_or(false);
            let spec = body.field("Spec").unwrap_or(GoValue::Object(Vec::new()));
            let inner = spec.bool_at("EncryptionConfig.AutoLockManagers")?.unwrap_or(false);
            (spec, top || inner)
        }
        _ => (body.clone(), body.bool_at("EncryptionConfig.AutoLockManagers")?.unwrap_or(false)),
    };
    let now = match (kind, current) {
        (Inspect::SwarmInit, _) => Some(false),
        (_, Some(c)) => Some(c.bool_at("EncryptionConfig.AutoLockManagers").ok().flatten().unwrap_or(false)),
        (_, None) => None,
    };
    if now != Some(wanted) {
        v.push(if wanted { KeyEvent::AutolockEnable } else { KeyEvent::AutolockDisable });
    }
    // The CA settings as Go would hold them (zero values dropped, so absent == empty).
    let ca = |s: &GoValue| {
        let fields = ["ExternalCAs", "SigningCACert", "SigningCAKey", "ForceRotate"];
        GoValue::Object(fields.iter().filter_map(|f| Some((f.to_string(), s.path(&format!("CAConfig.{f}"))?))).collect()).canonical()
    };
    let empty = GoValue::Object(Vec::new());
    if ca(&spec) != ca(current.unwrap_or(&empty)) {
        v.push(KeyEvent::CaChange);
    }
    Ok(v)
}

/// `POST /nodes/{id}/update`: does the body's `Role` differ from the node's current one
/// (`GET /nodes/{id}`'s `Spec.Role`; `None`: unknown)? The engine upper-cases the role.
pub fn node_events(body: &GoValue, current_role: Option<&str>) -> Result<Vec<KeyEvent>, String> {
    let wanted = body.str_at("Role")?.unwrap_or_default().to_ascii_uppercase();
    Ok(if current_role.map(str::to_ascii_uppercase).as_deref() == Some(wanted.as_str()) { vec![] } else { vec![KeyEvent::NodeRoleChange] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cz(raw: &str) -> Canon {
        canonicalize(raw).unwrap()
    }

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
            "/swarm/unlockkey%20",
            "/swarm\\unlockkey",
        ] {
            assert_eq!(cz(raw).segs, vec!["swarm", "unlockkey"], "{raw}");
        }
        assert_eq!(cz("/v1.45/containers/json").path(), "/containers/json");
        // The query is cut before decoding; what decodes to ?, # or NUL is refused.
        assert_eq!(cz("/containers/c1/export?x#y").path(), "/containers/c1/export");
        for raw in ["/containers/c1%3F/export", "/containers/c1%3f/export", "/containers/c1%23/export", "/swarm/unlockkey%00", "/x%253F/y", "/a%2500"] {
            assert!(canonicalize(raw).is_err(), "{raw}");
        }
        assert_eq!(cz("/V1.41/Nodes/AbC/update").raw_segs, vec!["Nodes", "AbC", "update"]);
        assert_eq!(cz("/../../etc").path(), "/etc");
    }

    /// Credential activation is a POST that every role that may attest may send (monitor
    /// included, though it sends no other POST); only POST, no upgrade, only that path.
    #[test]
    fn every_attesting_role_may_post_an_activation() {
        let c = cz("/swarmseal/v1/attest/activate");
        for role in [Role::Admin, Role::ReadOnly, Role::Deploy, Role::Monitor] {
            assert_eq!(decide(Some(role), "POST", &c, false), Decision::Allow, "{role:?}");
            assert_eq!(decide(Some(role), "GET", &cz("/swarmseal/v1/attest"), false), Decision::Allow, "{role:?}");
            if role != Role::Admin {
                assert!(matches!(decide(Some(role), "POST", &c, true), Decision::Deny(_)), "{role:?} upgrade");
                assert!(matches!(decide(Some(role), "POST", &cz("/swarmseal/v1/attest"), false), Decision::Deny(_)), "{role:?} POST attest");
                assert!(matches!(decide(Some(role), "POST", &cz("/swarmseal/v1/attest/activate/x"), false), Decision::Deny(_)), "{role:?} below");
            }
        }
        assert!(matches!(decide(None, "POST", &c, false), Decision::Deny(_)), "no role");
    }

    #[test]
    fn readonly_rules() {
        let ro = Some(Role::ReadOnly);
        let c = cz("/containers/json");
        assert_eq!(decide(ro, "GET", &c, false), Decision::Allow);
        assert_eq!(decide(ro, "HEAD", &c, false), Decision::Allow);
        assert!(matches!(decide(ro, "POST", &c, false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "get", &c, false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &c, true), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &cz("/v1.41/swarm/unlockkey"), false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &cz("/swarm"), false), Decision::Deny(_)));
        assert!(matches!(decide(ro, "GET", &cz("/containers/x/archive"), false), Decision::Deny(_)));
        for p in [
            "/images/get?names=bb:1",
            "/v1.41/images/bb:1/get",
            "/images/reg.example:5000/team/app/get",
            "/distribution/127.0.0.1:24399/x/json",
            "/images/search?term=127.0.0.1:1/x",
            "/plugins/privileges?remote=127.0.0.1:1/x",
            "/plugins/reg:5000/team/p:1/upgrade",
            "/images/reg:5000/a/b/push",
            "/build?remote=http://x",
            "/auth",
            "/services/s1/update",
        ] {
            assert!(matches!(decide(ro, "GET", &cz(p), false), Decision::Deny(_)), "{p}");
        }
        assert_eq!(decide(ro, "GET", &cz("/images/get/json"), false), Decision::Allow);
        assert_eq!(decide(ro, "GET", &cz("/swarmseal/v1/status"), false), Decision::Allow);
        assert!(matches!(decide(None, "GET", &c, false), Decision::Deny(_)));
        assert_eq!(decide(Some(Role::Admin), "POST", &cz("/swarm/unlockkey"), true), Decision::Allow);
        for p in ["/swarmseal/v1/update", "/v1.45/swarmseal/v1/update?reboot=1", "/swarmseal/v1/%55pdate"] {
            for m in ["POST", "GET", "HEAD"] {
                let d = decide(ro, m, &cz(p), false);
                assert!(matches!(&d, Decision::Deny(w) if w.contains("admin-only")), "{m} {p}: {d:?}");
            }
            assert_eq!(decide(Some(Role::Admin), "POST", &cz(p), false), Decision::Allow);
        }
        assert_eq!(key_events(&cz("/swarmseal/v1/update"), Some("reboot=1")), vec![KeyEvent::ImageUpdate]);
        // Resuming (POST /update?resume=…) is the update route; what is held of a cut upload
        // is asked by admins only, as the update itself.
        assert_eq!(key_events(&cz("/swarmseal/v1/update"), Some("resume=512&sums=00")), vec![KeyEvent::ImageUpdate]);
        for p in ["/swarmseal/v1/update/partial", "/v1.45/SwarmSeal/v1/update/%70artial"] {
            for role in [Role::ReadOnly, Role::Deploy, Role::Monitor] {
                for m in ["GET", "HEAD"] {
                    let d = decide(Some(role), m, &cz(p), false);
                    assert!(matches!(&d, Decision::Deny(w) if w.contains("image updates are admin-only")), "{role:?} {m} {p}: {d:?}");
                }
            }
            assert_eq!(decide(Some(Role::Admin), "GET", &cz(p), false), Decision::Allow);
            assert!(key_events(&cz(p), None).is_empty(), "a look at the staging area is not a key event");
        }
    }

    #[test]
    fn events() {
        let c = cz("/v1.45/swarm/update");
        assert_eq!(
            key_events(&c, Some("version=10&rotateManagerUnlockKey=true")),
            vec![KeyEvent::UnlockKeyRotate]
        );
        assert_eq!(key_events(&c, Some("version=10&rotateManagerUnlockKey=false")), vec![]);
        assert_eq!(key_events(&c, Some("version=10;rotateManagerUnlockKey=1")), vec![KeyEvent::UnlockKeyRotate], "Go < 1.17 splits on ;");
        assert_eq!(key_events(&c, Some("rotateWorkerToken=true")), vec![KeyEvent::JoinTokenRotate]);
        assert_eq!(inspect("POST", &c), Some(Inspect::SwarmUpdate));
        assert_eq!(inspect("post", &cz("/nodes/abc/update")), Some(Inspect::NodeUpdate));
        assert_eq!(inspect("GET", &c), None);
        assert!(query_flag(Some("rotatemanagerunlockkey=1"), "rotateManagerUnlockKey"));
        assert!(query_flag(Some("rotate%4DanagerUnlockKey=True"), "rotateManagerUnlockKey"));
        assert_eq!(query_value(Some("reboot=1&version=1.2%5E3"), "version").as_deref(), Some("1.2^3"));
        assert_eq!(query_value(Some("Version=&version=2"), "version").as_deref(), Some(""), "the first one counts");
        assert_eq!(query_value(Some("version"), "version").as_deref(), Some(""));
        assert_eq!(query_value(Some("reboot=1"), "version"), None);
        assert_eq!(query_value(None, "version"), None);
        assert_eq!(key_events(&cz("/swarm//unlockkey"), None), vec![KeyEvent::UnlockKeyRead]);
        assert_eq!(key_events(&cz("/swarm/unlock"), None), vec![KeyEvent::SwarmUnlock]);
        assert!(key_events(&cz("/containers/json"), None).is_empty());
    }

    #[test]
    fn body_events_follow_go() {
        let ev = |kind, body: &str, cur: Option<&str>| {
            let b = crate::gojson::parse_first(body.as_bytes()).unwrap().0;
            let c = cur.map(|c| crate::gojson::parse_first(c.as_bytes()).unwrap().0);
            spec_events(kind, &b, c.as_ref()).map(|v| v.into_iter().map(KeyEvent::as_str).collect::<Vec<_>>())
        };
        let locked = Some(r#"{"EncryptionConfig":{"AutoLockManagers":true},"CAConfig":{"NodeCertExpiry":7776000000000000}}"#);
        let up = Inspect::SwarmUpdate;
        assert_eq!(ev(up, r#"{"EncryptionConfig":{"AutoLockManagers":true}}"#, locked).unwrap(), Vec::<&str>::new());
        assert_eq!(ev(up, r#"{"encryptionconfig":{"autolockmanagers":false}}"#, locked).unwrap(), ["autolock_disable"]);
        assert_eq!(ev(up, r#"{"Annotations":{"Name":"default"}}"#, locked).unwrap(), ["autolock_disable"], "the spec is replaced as a whole");
        assert_eq!(ev(up, r#"{"EncryptionConfig":{"AutoLockManagers":true,"AutoLockManagers":false}}"#, locked).unwrap(), ["autolock_disable"]);
        assert_eq!(ev(up, r#"{"EncryptionConfig":{"AutoLockManagers":false,"AutoLockManagers":true}}"#, locked).unwrap(), Vec::<&str>::new());
        assert_eq!(ev(up, r#"{"EncryptionConfig":{"AutoLockManagers":true}}"#, None).unwrap(), ["autolock_enable"], "unknown current state: flagged");
        assert_eq!(ev(up, r#"{"EncryptionConfig":{"AutoLockManagers":true},"CAConfig":{"ForceRotate":1}}"#, locked).unwrap(), ["ca_change"]);
        assert_eq!(ev(up, r#"{"EncryptionConfig":{"AutoLockManagers":true},"cAcOnfig":{"signingcacert":"x"}}"#, locked).unwrap(), ["ca_change"]);
        assert!(ev(up, r#"{"EncryptionConfig":{"AutoLockManagers":0}}"#, locked).is_err());
        let init = Inspect::SwarmInit;
        assert_eq!(ev(init, r#"{"ListenAddr":"0.0.0.0"}"#, None).unwrap(), Vec::<&str>::new());
        assert_eq!(ev(init, r#"{"autolockmanagers":true}"#, None).unwrap(), ["autolock_enable"]);
        assert_eq!(ev(init, r#"{"Spec":{"EncryptionConfig":{"AutoLockManagers":true}}}"#, None).unwrap(), ["autolock_enable"]);
        let node = |body: &str, cur| node_events(&crate::gojson::parse_first(body.as_bytes()).unwrap().0, cur).unwrap();
        assert_eq!(node(r#"{"Role":"manager"}"#, Some("manager")), vec![]);
        assert_eq!(node(r#"{"role":"MANAGER"}"#, Some("manager")), vec![]);
        assert_eq!(node(r#"{"Role":"manager","rOLE":"worker"}"#, Some("manager")), vec![KeyEvent::NodeRoleChange]);
        assert_eq!(node(r#"{"Role":"manager"}"#, None), vec![KeyEvent::NodeRoleChange]);
    }
}
