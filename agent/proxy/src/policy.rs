//! Roles (`[roles.NAME]` in the configuration) and the `deploy` role's request-body policy.
//!
//! A client certificate's Subject OU names its role. Four roles are built in (`admin`,
//! `readonly`, `deploy`, `monitor`); a `[roles.NAME]` table tunes a built-in one or defines a
//! new one on top of a built-in `base`. What each role may do, rule by rule: `docs/proxy.md`,
//! "Roles". Path-level decisions are [`crate::authz::decide_rule`]; this module reads the
//! bodies of the requests a `deploy` role sends (Docker Engine API v1.41):
//!
//! - `POST /containers/create` (`ContainerConfigWrapper`: `Config`, `HostConfig`, and the
//!   deprecated top-level host-config fields, which dockerd still reads when `HostConfig` is absent);
//! - `POST /services/create`, `POST /services/{id}/update` (`ServiceSpec`);
//! - `POST /volumes/create` (`VolumeCreateBody`), `POST /networks/create` (`NetworkCreateRequest`).
//!
//! Bodies are read as the engine reads them ([`crate::gojson`]: case-insensitive keys, duplicate
//! keys applied in order, objects merged); where Go and this reading could differ, the check
//! denies more (both top-level and `HostConfig` fields, every key of a map, any case of a value).
//! A body with bytes after its JSON value, a body that is not one JSON object, a body past
//! [`BODY_LIMIT`] is refused and never forwarded.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::authz::{self, Canon};
use crate::error::{ApiError, ApiErrorKind};
use crate::gojson::GoValue;
use crate::tls::Role;

/// Largest body of an inspected `deploy` request, in bytes (a service spec with many
/// mounts and variables is a few KiB; the engine itself accepts more).
pub const BODY_LIMIT: u64 = 1 << 20;

/// `[roles.NAME]`: one role's settings. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// The built-in role this one is (`admin`, `readonly`, `deploy`, `monitor`); required for
    /// a new name, and when given for a built-in name it must be that name.
    pub base: Option<String>,
    /// `deploy`: host paths (absolute) that bind mounts may use, with everything under them.
    pub allow_bind_paths: Vec<String>,
    /// `deploy`: sysctl names (`net.core.somaxconn`) containers and services may set.
    pub allow_sysctls: Vec<String>,
    /// `deploy`: volume drivers other than `local` that volumes and mounts may use.
    pub allow_volume_drivers: Vec<String>,
    /// `monitor`: label names whose values are removed from answers ([`crate::redact`]).
    pub redact_labels: Vec<String>,
    /// `deploy`: label what the identity creates with [`OWNER_LABEL`] and let it update or
    /// remove only what carries its own (default true).
    pub ownership: Option<bool>,
}

/// The `[roles]` tables, by role name.
pub type RolesConfig = BTreeMap<String, RoleConfig>;

/// A `[roles.NAME]` table cannot be used; `Display` names the role and the rule (key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[roles.{role}] {rule}: {message}")]
pub struct RoleConfigError {
    pub role: String,
    pub rule: &'static str,
    pub message: String,
}

/// One role as the proxy applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    /// The name (certificate Subject OU).
    pub name: String,
    /// The built-in role whose rules apply.
    pub kind: Role,
    /// See [`RoleConfig::allow_bind_paths`] (lexically normalized).
    pub bind_paths: Vec<PathBuf>,
    pub sysctls: Vec<String>,
    pub volume_drivers: Vec<String>,
    /// See [`RoleConfig::redact_labels`].
    pub redact_labels: Vec<String>,
    /// See [`RoleConfig::ownership`] (always false for other roles than deploy).
    pub ownership: bool,
}

impl RolePolicy {
    fn builtin(kind: Role) -> RolePolicy {
        RolePolicy { name: kind.as_str().into(), kind, bind_paths: Vec::new(), sysctls: Vec::new(), volume_drivers: Vec::new(), redact_labels: Vec::new(), ownership: kind == Role::Deploy }
    }
}

/// Every configured role (the built-in ones and the `[roles]` tables).
#[derive(Debug, Clone)]
pub struct Roles {
    by_name: BTreeMap<String, Arc<RolePolicy>>,
}

impl Default for Roles {
    fn default() -> Roles {
        Roles::builtin()
    }
}

impl Roles {
    /// The four built-in roles with their defaults.
    pub fn builtin() -> Roles {
        let by_name = Role::ALL.into_iter().map(|k| (k.as_str().to_string(), Arc::new(RolePolicy::builtin(k)))).collect();
        Roles { by_name }
    }

    /// The built-in roles with `cfg` applied. Errors name the role and the key.
    pub fn from_config(cfg: &RolesConfig) -> Result<Roles, RoleConfigError> {
        let mut roles = Roles::builtin();
        for (name, rc) in cfg {
            let err = |rule: &'static str, message: String| RoleConfigError { role: name.clone(), rule, message };
            let valid_name = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                return Err(err("name", "a role name is 1 to 64 of a-z, 0-9, `-`, `_`, starting with a letter (it is the certificate's Subject OU)".into()));
            }
            let builtin = Role::parse(name);
            let kind = match (&rc.base, builtin) {
                (None, Some(k)) => k,
                (None, None) => return Err(err("base", "a new role needs `base = \"deploy\"` (or admin, readonly, monitor): the built-in role whose rules it takes".into())),
                (Some(b), _) => {
                    let k = Role::parse(b).ok_or_else(|| err("base", format!("`{b}` is not a built-in role; use admin, readonly, deploy or monitor")))?;
                    if builtin.is_some_and(|bk| bk != k) {
                        return Err(err("base", format!("the built-in role `{name}` cannot be based on `{b}`; define a new role name instead")));
                    }
                    k
                }
            };
            let tuned = !(rc.allow_bind_paths.is_empty() && rc.allow_sysctls.is_empty() && rc.allow_volume_drivers.is_empty());
            if tuned && kind != Role::Deploy {
                return Err(err("allow_*", format!("allow_bind_paths, allow_sysctls and allow_volume_drivers apply to deploy roles only (this role is based on `{}`)", kind.as_str())));
            }
            if !rc.redact_labels.is_empty() && kind != Role::Monitor {
                return Err(err("redact_labels", format!("redact_labels applies to monitor roles only (this role is based on `{}`)", kind.as_str())));
            }
            if rc.ownership.is_some() && kind != Role::Deploy {
                return Err(err("ownership", format!("ownership applies to deploy roles only (this role is based on `{}`)", kind.as_str())));
            }
            let mut bind_paths = Vec::new();
            for p in &rc.allow_bind_paths {
                let n = normalize(p).filter(|n| n != Path::new("/")).ok_or_else(|| err("allow_bind_paths", format!("`{p}` is not an absolute host path below `/`")))?;
                if docker_socket_under(&n) {
                    return Err(err("allow_bind_paths", format!("`{p}` holds the Docker socket; mounting it gives the whole host")));
                }
                bind_paths.push(n);
            }
            for s in &rc.allow_sysctls {
                if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
                    return Err(err("allow_sysctls", format!("`{s}` is not a sysctl name")));
                }
            }
            for d in &rc.allow_volume_drivers {
                if d.is_empty() || d.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(err("allow_volume_drivers", format!("`{d}` is not a volume driver name")));
                }
            }
            let p = RolePolicy {
                name: name.clone(),
                kind,
                bind_paths,
                sysctls: rc.allow_sysctls.clone(),
                volume_drivers: rc.allow_volume_drivers.clone(),
                redact_labels: rc.redact_labels.clone(),
                ownership: kind == Role::Deploy && rc.ownership.unwrap_or(true),
            };
            roles.by_name.insert(name.clone(), Arc::new(p));
        }
        Ok(roles)
    }

    /// The role named `ou` (a certificate's Subject OU), if configured.
    pub fn get(&self, ou: &str) -> Option<Arc<RolePolicy>> {
        self.by_name.get(ou).cloned()
    }

    /// The role names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

/// A refusal by a role's rules: `rule` is its short name (the audit's `rule=`), `message` the
/// client's sentence (`deploy: HostConfig.Privileged is not allowed`). 403 unless `kind` says
/// otherwise (a body that cannot be read: 400, too large: 413).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub rule: &'static str,
    pub message: String,
    pub kind: ApiErrorKind,
}

impl Denial {
    pub fn new(rule: &'static str, message: impl Into<String>) -> Denial {
        Denial { rule, message: message.into(), kind: ApiErrorKind::Forbidden }
    }
    /// The answer the proxy sends.
    pub fn api_error(&self) -> ApiError {
        ApiError::new(self.kind, self.message.clone())
    }
}

/// The bodies a `deploy` role's requests are read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `POST /containers/create`
    ContainerCreate,
    /// `POST /services/create`, `POST /services/{id}/update`
    ServiceSpec,
    /// `POST /volumes/create`
    VolumeCreate,
    /// `POST /networks/create`
    NetworkCreate,
    /// `POST /containers/{id}/start`: dockerd still applies a host configuration sent in the
    /// body under API versions before 1.24; only an empty body passes.
    ContainerStart,
}

/// Which body of a `deploy` request is inspected (method matched case-insensitively).
pub fn body_kind(method: &str, c: &Canon) -> Option<BodyKind> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    [
        (&["containers", "create"][..], BodyKind::ContainerCreate),
        (&["services", "create"], BodyKind::ServiceSpec),
        (&["services", "*", "update"], BodyKind::ServiceSpec),
        (&["volumes", "create"], BodyKind::VolumeCreate),
        (&["networks", "create"], BodyKind::NetworkCreate),
        (&["containers", "*", "start"], BodyKind::ContainerStart),
    ]
    .into_iter()
    .find(|(p, _)| c.is(p))
    .map(|(_, k)| k)
}

/// The label that names the identity (certificate CN) that created a service, secret, config
/// or network through a deploy role with ownership on.
pub const OWNER_LABEL: &str = "swarmseal.owner";

/// A write to an existing object whose owner must be the caller (ownership on): the engine
/// path that answers the object (`/services/{id}`), for `DELETE services|secrets|configs|
/// networks/{id}` and `POST services|secrets|configs/{id}/update`.
pub fn owned_target(method: &str, c: &Canon) -> Option<String> {
    let kinds = ["services", "secrets", "configs", "networks"];
    let id = c.raw_segs.get(1)?;
    let hit = (method == "DELETE" && c.segs.len() == 2 && kinds.contains(&c.segs[0].as_str()))
        || (method.eq_ignore_ascii_case("POST") && c.segs.len() == 3 && c.segs[2] == "update" && kinds[..3].contains(&c.segs[0].as_str()));
    hit.then(|| format!("/{}/{id}", c.segs[0]))
}

/// Whether the body of this request gets the owner label (ownership on): creates and updates
/// of services, secrets, configs, networks (an update replaces the labels).
pub fn labels_owner(method: &str, c: &Canon) -> bool {
    method.eq_ignore_ascii_case("POST")
        && [&["services", "create"][..], &["services", "*", "update"], &["secrets", "create"], &["secrets", "*", "update"], &["configs", "create"], &["configs", "*", "update"], &["networks", "create"]]
            .iter()
            .any(|p| c.is(p))
}

/// The owner label of an engine object (`GET /services/{id}` etc.): `Spec.Labels`, or for a
/// network its `Labels`.
pub fn owner_of(obj: &GoValue) -> Option<String> {
    let labels = obj.path("Spec.Labels").or_else(|| obj.field("Labels"))?;
    let GoValue::Object(m) = labels else { return None };
    m.iter().rev().find(|(k, _)| k == OWNER_LABEL).and_then(|(_, v)| if let GoValue::String(s) = v { Some(s.clone()) } else { None })
}

/// Refuse a write to an object `role`'s identity `who` does not own (`obj`: the engine's
/// answer for `path`; `None`: no such object, the engine answers).
pub fn check_owner(role: &RolePolicy, who: &str, path: &str, obj: Option<&GoValue>) -> Result<(), Denial> {
    let Some(obj) = obj else { return Ok(()) };
    match owner_of(obj) {
        Some(o) if o == who => Ok(()),
        Some(o) => Err(Denial::new("owner", format!("{}: {path} belongs to `{o}`, not to `{who}` (label {OWNER_LABEL})", role.name))),
        None => Err(Denial::new("owner", format!("{}: {path} has no {OWNER_LABEL} label; only admin may change it", role.name))),
    }
}

/// `body` with `Labels.swarmseal.owner = who` (the `Labels` key matched as Go matches it; a
/// label the client set under that name is replaced). The body must be one JSON object
/// without duplicate keys (else 400, as [`check_body`]).
pub fn with_owner(body: &[u8], who: &str) -> Result<Vec<u8>, Denial> {
    let bad = |m: String| Denial { rule: "body", message: m, kind: ApiErrorKind::BadRequest };
    let v = crate::gojson::parse_object(body).map_err(|e| bad(e.to_string()))?;
    if let Some(k) = duplicate_key(&v) {
        return Err(bad(format!("the request body has the key `{k}` twice in one object (in any letter case)")));
    }
    let mut j: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("the request body is not valid JSON ({e})")))?;
    let m = j.as_object_mut().ok_or_else(|| bad("the request body must be a JSON object".into()))?;
    let key = m.keys().find(|k| crate::gojson::key_matches(k, "Labels")).cloned().unwrap_or_else(|| "Labels".into());
    let labels = m.entry(key).or_insert_with(|| serde_json::json!({}));
    if labels.is_null() {
        *labels = serde_json::json!({});
    }
    let l = labels.as_object_mut().ok_or_else(|| bad("Labels must be an object".into()))?;
    l.insert(OWNER_LABEL.into(), serde_json::Value::String(who.into()));
    serde_json::to_vec(&j).map_err(|e| bad(e.to_string()))
}

/// What the proxy must still ask the engine before forwarding an allowed body (the dry run
/// cannot: it has no engine).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineChecks {
    /// Network names or IDs a service attaches to: refused when the engine's network has the
    /// `host` driver (an ID can name the host network).
    pub networks: Vec<String>,
    /// The service's image: refused unless the engine already has it (the engine would pull
    /// it from the registry its name holds: an outbound connection).
    pub image: Option<String>,
}

/// The specs of a service besides the body that a `POST /services/{id}/update` can make the
/// engine apply (Docker Engine API v1.41 `ServiceUpdate`, swarmkit `controlapi.UpdateService`):
/// `PreviousSpec` when the query asks for a rollback (`rollback=previous`: `docker service
/// rollback`, `update --rollback`; swarmkit swaps it in and ignores the body's spec), the
/// current `Spec` when the body's `UpdateConfig.FailureAction` is `rollback` (swarmkit's updater
/// restores it if the update fails). Read wider than the engine: any true `rollback` value, any
/// failure action but `pause` and `continue`. Empty for every other request.
pub fn rollback_targets(method: &str, c: &Canon, query: Option<&str>, body: &[u8]) -> Vec<&'static str> {
    if !method.eq_ignore_ascii_case("POST") || !c.is(&["services", "*", "update"]) {
        return Vec::new();
    }
    let mut t = Vec::new();
    if authz::query_flag(query, "rollback") {
        t.push("PreviousSpec");
    }
    match crate::gojson::parse_object(body).ok().and_then(|v| v.path("UpdateConfig.FailureAction")) {
        None => {}
        Some(GoValue::String(a)) if matches!(a.trim().to_ascii_lowercase().as_str(), "" | "pause" | "continue") => {}
        Some(_) => t.push("Spec"),
    }
    t
}

/// `role`'s service rules on each of `targets` ([`rollback_targets`]) of `service`, the engine's
/// answer to `GET /services/{id}` (`None`: it gave none: refused, fail closed). The request's
/// `version` query value (every one given) must be the service's `Version.Index`: the engine
/// applies an update at that version only, so the spec checked here is the one it applies.
/// One [`EngineChecks`] per target spec. Denials name the spec (`deploy:
/// PreviousSpec.TaskTemplate.ContainerSpec.CapabilityAdd is not allowed …`).
pub fn check_rollback(role: &RolePolicy, targets: &[&str], query: Option<&str>, service: Option<&GoValue>) -> Result<Vec<EngineChecks>, Denial> {
    let deny = |m: String| Denial::new("rollback", format!("{}: {m}", role.name));
    let Some(svc) = service else { return Err(deny("the service could not be read from the engine to check the spec a rollback would apply; nothing was forwarded".into())) };
    let index = match svc.path("Version.Index") {
        Some(GoValue::Number(n)) => n.as_u64(),
        _ => None,
    };
    let given = authz::query_values(query, "version");
    if !index.is_some_and(|i| !given.is_empty() && given.iter().all(|v| v.trim().parse::<u64>().ok() == Some(i))) {
        let now = index.map_or("?".into(), |i| i.to_string());
        return Err(deny(format!("a rollback needs version={now} (the service's version now); the spec it applies is checked at that version only")));
    }
    let ck = Checker { role };
    let mut all = Vec::new();
    for t in targets {
        let Some(spec) = svc.field(t) else { continue };
        let n = ck.service(&spec).map_err(|mut d| {
            let rest = d.message.strip_prefix(&format!("{}: ", role.name)).unwrap_or(&d.message).to_string();
            d.message = format!("{}: {t}.{rest} (the spec a rollback applies)", role.name);
            d
        })?;
        all.push(n);
    }
    Ok(all)
}

/// Read `body` (a [`BodyKind`] request) as the engine will and apply `role`'s rules.
pub fn check_body(role: &RolePolicy, kind: BodyKind, body: &[u8]) -> Result<EngineChecks, Denial> {
    if body.len() as u64 > BODY_LIMIT {
        return Err(too_large());
    }
    if kind == BodyKind::ContainerStart {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(EngineChecks::default());
        }
        return Err(Denial::new("host-config", format!("{}: a body on POST /containers/{{id}}/start (a host configuration at start, API before 1.24) is not allowed", role.name)));
    }
    let v = crate::gojson::parse_object(body).map_err(|e| Denial { rule: "body", message: e.to_string(), kind: ApiErrorKind::BadRequest })?;
    if let Some(k) = duplicate_key(&v) {
        let message = format!("the request body has the key `{k}` twice in one object (in any letter case); refused so that no reading of it can differ from the engine's");
        return Err(Denial { rule: "body", message, kind: ApiErrorKind::BadRequest });
    }
    let ck = Checker { role };
    let mut needs = EngineChecks::default();
    match kind {
        BodyKind::ContainerCreate => {
            // dockerd reads the deprecated top-level host-config fields when HostConfig is absent.
            ck.host_config(&v, "")?;
            if let Some(hc) = v.field("HostConfig") {
                ck.host_config(&hc, "HostConfig.")?;
            }
            if let Some(GoValue::Object(eps)) = v.path("NetworkingConfig.EndpointsConfig") {
                if let Some((k, _)) = eps.iter().find(|(k, _)| is_host_word(k)) {
                    return Err(ck.deny("host-network", &format!("NetworkingConfig.EndpointsConfig.{k}"), "(the host network) is not allowed"));
                }
            }
        }
        BodyKind::ServiceSpec => needs = ck.service(&v)?,
        BodyKind::VolumeCreate => {
            ck.volume_driver(v.field("Driver"), v.field("DriverOpts"), "Driver", "DriverOpts")?;
            if v.field("ClusterVolumeSpec").is_some() {
                return Err(ck.deny("volume-driver", "ClusterVolumeSpec", "(cluster volumes, CSI plugins) is not allowed"));
            }
        }
        BodyKind::NetworkCreate => ck.network(&v)?,
        BodyKind::ContainerStart => {}
    }
    Ok(needs)
}

/// A key that appears twice in one object, compared case-insensitively (Go folds struct keys;
/// the docker CLI never sends such a body).
fn duplicate_key(v: &GoValue) -> Option<String> {
    match v {
        GoValue::Object(m) => {
            let mut seen = std::collections::HashSet::new();
            for (k, x) in m {
                let folded: String = k.chars().map(crate::gojson::fold).collect();
                if !seen.insert(folded) {
                    return Some(k.clone());
                }
                if let Some(d) = duplicate_key(x) {
                    return Some(d);
                }
            }
            None
        }
        GoValue::Array(a) => a.iter().find_map(duplicate_key),
        _ => None,
    }
}

/// The refusal of a body past [`BODY_LIMIT`].
pub fn too_large() -> Denial {
    Denial {
        rule: "body",
        message: format!("the request body is larger than {} KiB, the most accepted for this endpoint; nothing was forwarded", BODY_LIMIT >> 10),
        kind: ApiErrorKind::PayloadTooLarge,
    }
}

/// A value Go would treat as `host` (compared trimmed and case-insensitively: more than the engine).
fn is_host_word(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("host")
}

/// Lexical normalization of an absolute path (`.`, `..`, repeated `/`); `None` when relative.
fn normalize(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    Some(out)
}

/// The Docker socket's usual places (the appliance's `/run/docker.sock`, `/var/run` a link to `/run`).
const DOCKER_SOCKETS: [&str; 2] = ["/run/docker.sock", "/var/run/docker.sock"];

/// Whether mounting `p` mounts a Docker socket (it is one, or a directory above one).
fn docker_socket_under(p: &Path) -> bool {
    DOCKER_SOCKETS.iter().any(|s| Path::new(s).starts_with(p)) || p.file_name().is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().contains("docker.sock"))
}

/// The first symbolic link on the way to `p` (absolute, normalized): each component is opened
/// from `/` relative to the one before with `openat(O_PATH | O_NOFOLLOW)` and `fstat`ed, so
/// no link is followed (Linux `openat(2)`, `O_PATH`). `Ok(None)`: no link among the components
/// that exist (the rest is missing; the engine creates it as directories, or refuses a missing
/// `Mounts` source). `Err`: a component cannot be opened (no permission, not a directory).
fn symlink_on_path(p: &Path) -> Result<Option<PathBuf>, std::io::Error> {
    use rustix::fs::{fstat, openat, FileType, Mode, OFlags, CWD};
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = openat(CWD, "/", flags | OFlags::DIRECTORY, Mode::empty())?;
    let mut walked = PathBuf::from("/");
    for c in p.components() {
        let Component::Normal(name) = c else { continue };
        walked.push(name);
        let fd = match openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(fstat(&fd)?.st_mode) == FileType::Symlink {
            return Ok(Some(walked));
        }
        dir = fd;
    }
    Ok(None)
}

struct Checker<'a> {
    role: &'a RolePolicy,
}

impl Checker<'_> {
    fn deny(&self, rule: &'static str, field: &str, what: &str) -> Denial {
        Denial::new(rule, format!("{}: {field} {what}", self.role.name))
    }

    fn not_allowed(&self, rule: &'static str, field: &str) -> Denial {
        self.deny(rule, field, "is not allowed")
    }

    /// A boolean field that must be false (absent: false). A non-boolean is refused too.
    fn must_be_false(&self, v: &GoValue, name: &str, prefix: &str, rule: &'static str) -> Result<(), Denial> {
        match v.field(name) {
            None | Some(GoValue::Bool(false)) => Ok(()),
            Some(_) => Err(self.not_allowed(rule, &format!("{prefix}{name}"))),
        }
    }

    /// A field that must be absent or empty (string, array, object).
    fn must_be_empty(&self, v: &GoValue, name: &str, prefix: &str, rule: &'static str) -> Result<(), Denial> {
        match v.field(name) {
            None => Ok(()),
            Some(GoValue::String(s)) if s.is_empty() => Ok(()),
            Some(GoValue::Array(a)) if a.is_empty() => Ok(()),
            Some(GoValue::Object(o)) if o.is_empty() => Ok(()),
            Some(_) => Err(self.not_allowed(rule, &format!("{prefix}{name}"))),
        }
    }

    /// `HostConfig` (API v1.41 `container.HostConfig`), fields named with `prefix`.
    fn host_config(&self, hc: &GoValue, prefix: &str) -> Result<(), Denial> {
        let f = |n: &str| format!("{prefix}{n}");
        self.must_be_false(hc, "Privileged", prefix, "privileged")?;
        for ns in ["PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode", "NetworkMode"] {
            match hc.field(ns) {
                None => {}
                Some(GoValue::String(s)) => {
                    let l = s.trim().to_ascii_lowercase();
                    if l == "host" || l.starts_with("container:") {
                        let rule = if ns == "NetworkMode" { "host-network" } else { "host-namespace" };
                        return Err(self.deny(rule, &f(ns), &format!("`{s}` is not allowed (host or another container's namespace)")));
                    }
                }
                Some(_) => return Err(self.not_allowed("host-namespace", &f(ns))),
            }
        }
        self.must_be_empty(hc, "CapAdd", prefix, "cap-add")?;
        self.must_be_empty(hc, "Capabilities", prefix, "cap-add")?;
        self.must_be_empty(hc, "Devices", prefix, "devices")?;
        self.must_be_empty(hc, "DeviceCgroupRules", prefix, "devices")?;
        self.must_be_empty(hc, "DeviceRequests", prefix, "devices")?;
        self.must_be_empty(hc, "CgroupParent", prefix, "cgroup-parent")?;
        self.must_be_empty(hc, "Cgroup", prefix, "cgroup-parent")?;
        self.must_be_empty(hc, "VolumesFrom", prefix, "volumes-from")?;
        // Unmasking /proc paths (MaskedPaths: []) reaches the host's kernel interfaces.
        if hc.field("MaskedPaths").is_some() || hc.field("ReadonlyPaths").is_some() {
            let n = if hc.field("MaskedPaths").is_some() { "MaskedPaths" } else { "ReadonlyPaths" };
            return Err(self.not_allowed("security-opt", &f(n)));
        }
        match hc.field("Runtime") {
            None => {}
            Some(GoValue::String(s)) if s.is_empty() || s == "runc" => {}
            Some(_) => return Err(self.deny("runtime", &f("Runtime"), "other than the default (runc) is not allowed")),
        }
        if let Some(opts) = hc.field("SecurityOpt") {
            self.security_opts(&opts, &f("SecurityOpt"))?;
        }
        self.sysctls(hc.field("Sysctls"), &f("Sysctls"))?;
        match hc.field("Binds") {
            None => {}
            Some(GoValue::Array(binds)) => {
                for b in binds {
                    let GoValue::String(b) = b else { return Err(self.not_allowed("bind-mount", &f("Binds"))) };
                    let src = b.split(':').next().unwrap_or("");
                    if src.starts_with('/') || src.starts_with('\\') || src.starts_with('.') {
                        self.bind_source(src, &f("Binds"))?;
                    }
                }
            }
            Some(_) => return Err(self.not_allowed("bind-mount", &f("Binds"))),
        }
        if let Some(m) = hc.field("Mounts") {
            self.mounts(&m, &f("Mounts"))?;
        }
        match hc.field("VolumeDriver") {
            None => {}
            Some(d) => self.volume_driver(Some(d), None, &f("VolumeDriver"), "")?,
        }
        if let Some(lc) = hc.field("LogConfig") {
            self.log_driver(lc.field("Type"), &f("LogConfig.Type"))?;
        }
        Ok(())
    }

    /// `SecurityOpt`: `key=value` (or the legacy `key:value`).
    fn security_opts(&self, opts: &GoValue, field: &str) -> Result<(), Denial> {
        let GoValue::Array(a) = opts else { return Err(self.not_allowed("security-opt", field)) };
        for o in a {
            let GoValue::String(s) = o else { return Err(self.not_allowed("security-opt", field)) };
            let l = s.trim().to_ascii_lowercase();
            let (k, v) = l.split_once(['=', ':']).unwrap_or((l.as_str(), ""));
            let (k, v) = (k.trim(), v.trim());
            let bad = match k {
                // A custom seccomp profile (the body carries the JSON) can allow every syscall.
                "seccomp" => v != "builtin" && v != "default",
                "apparmor" => v != "docker-default",
                "label" => v == "disable" || v.starts_with("type") || v.starts_with("disable"),
                "no-new-privileges" => matches!(v, "false" | "0" | "f" | "no"),
                "systempaths" | "writable-cgroups" => true,
                _ => false,
            };
            if bad {
                return Err(self.deny("security-opt", field, &format!("`{s}` is not allowed")));
            }
        }
        Ok(())
    }

    /// `Sysctls` (a Go map: every key counts).
    fn sysctls(&self, v: Option<GoValue>, field: &str) -> Result<(), Denial> {
        match v {
            None => Ok(()),
            Some(GoValue::Object(m)) => match m.iter().find(|(k, _)| !self.role.sysctls.iter().any(|a| a == k)) {
                Some((k, _)) => Err(self.deny("sysctls", &format!("{field}.{k}"), "is not in allow_sysctls")),
                None => Ok(()),
            },
            Some(_) => Err(self.not_allowed("sysctls", field)),
        }
    }

    /// A bind mount's host path: never a Docker socket, else within `allow_bind_paths`, and no
    /// symbolic link on the way ([`symlink_on_path`]): the path the engine mounts is the one
    /// checked, at the time of the check (the residual risk: docs/proxy.md, "bind-mount").
    fn bind_source(&self, src: &str, field: &str) -> Result<(), Denial> {
        let Some(lexical) = normalize(src) else { return Err(self.deny("bind-mount", field, &format!("`{src}`: a relative host path is not allowed"))) };
        let socket = |p: &Path| DOCKER_SOCKETS.iter().any(|s| Path::new(s) == p) || p.file_name().is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().contains("docker.sock"));
        if socket(&lexical) {
            return Err(self.deny("docker-socket", field, &format!("`{src}` is the Docker socket; not allowed")));
        }
        if !self.role.bind_paths.iter().any(|a| lexical.starts_with(a)) {
            return Err(self.deny("bind-mount", field, &format!("`{src}` is outside allow_bind_paths")));
        }
        if docker_socket_under(&lexical) {
            return Err(self.deny("docker-socket", field, &format!("`{src}` holds the Docker socket; not allowed")));
        }
        match symlink_on_path(&lexical) {
            Ok(None) => Ok(()),
            Ok(Some(link)) => Err(self.deny("bind-mount", field, &format!("`{src}` passes through the symbolic link `{}`; give the real path (a link can point out of allow_bind_paths)", link.display()))),
            Err(e) => Err(self.deny("bind-mount", field, &format!("`{src}` cannot be checked on this host ({e}); not allowed"))),
        }
    }

    /// `Mounts` (`mount.Mount`): bind sources, volume drivers and options, no other types.
    fn mounts(&self, m: &GoValue, field: &str) -> Result<(), Denial> {
        let GoValue::Array(a) = m else { return Err(self.not_allowed("bind-mount", field)) };
        for (i, m) in a.iter().enumerate() {
            let fi = format!("{field}[{i}]");
            let ty = match m.field("Type") {
                Some(GoValue::String(t)) => t.trim().to_ascii_lowercase(),
                None => String::new(),
                Some(_) => return Err(self.not_allowed("bind-mount", &format!("{fi}.Type"))),
            };
            match ty.as_str() {
                "bind" => {
                    let src = m.str_at("Source").ok().flatten().unwrap_or_default();
                    self.bind_source(&src, &format!("{fi}.Source"))?;
                }
                "volume" => {
                    let dc = m.path("VolumeOptions.DriverConfig");
                    if let Some(dc) = dc {
                        self.volume_driver(dc.field("Name"), dc.field("Options"), &format!("{fi}.VolumeOptions.DriverConfig.Name"), &format!("{fi}.VolumeOptions.DriverConfig.Options"))?;
                    }
                }
                "tmpfs" => {}
                _ => return Err(self.deny("bind-mount", &format!("{fi}.Type"), &format!("`{ty}` is not allowed (bind, volume, tmpfs only)"))),
            }
        }
        Ok(())
    }

    /// A volume driver and its options: `local` without `type`, `o`, `device` (those mount host
    /// paths, devices or remote filesystems), or a driver in `allow_volume_drivers`.
    fn volume_driver(&self, driver: Option<GoValue>, opts: Option<GoValue>, dfield: &str, ofield: &str) -> Result<(), Denial> {
        let d = match driver {
            None => String::new(),
            Some(GoValue::String(s)) => s,
            Some(_) => return Err(self.not_allowed("volume-driver", dfield)),
        };
        let local = d.is_empty() || d == "local";
        if !local && !self.role.volume_drivers.iter().any(|a| *a == d) {
            return Err(self.deny("volume-driver", dfield, &format!("`{d}` is not allowed (local, or allow_volume_drivers)")));
        }
        if local {
            match opts {
                None => {}
                Some(GoValue::Object(m)) => {
                    if let Some((k, _)) = m.iter().find(|(k, _)| matches!(k.trim().to_ascii_lowercase().as_str(), "type" | "o" | "device")) {
                        return Err(self.deny("volume-options", &format!("{ofield}.{k}"), "is not allowed for the local driver (bind mounts, host devices, remote filesystems)"));
                    }
                }
                Some(_) => return Err(self.not_allowed("volume-options", ofield)),
            }
        }
        Ok(())
    }

    /// Log drivers that write only on this host; the others (syslog, gelf, fluentd, splunk, …)
    /// make the engine connect to an address in the options.
    fn log_driver(&self, ty: Option<GoValue>, field: &str) -> Result<(), Denial> {
        match ty {
            None => Ok(()),
            Some(GoValue::String(s)) if matches!(s.as_str(), "" | "json-file" | "local" | "journald" | "none") => Ok(()),
            Some(_) => Err(self.deny("outbound", field, "other than json-file, local, journald or none is not allowed (the engine would connect out)")),
        }
    }

    /// `ServiceSpec` (API v1.41 `swarm.ServiceSpec`).
    fn service(&self, v: &GoValue) -> Result<EngineChecks, Denial> {
        let tt = v.field("TaskTemplate").unwrap_or(GoValue::Object(Vec::new()));
        match tt.field("Runtime") {
            None => {}
            Some(GoValue::String(s)) if s.is_empty() || s == "container" => {}
            Some(_) => return Err(self.deny("runtime", "TaskTemplate.Runtime", "other than `container` is not allowed (plugins, attachments)")),
        }
        self.must_be_empty(&tt, "PluginSpec", "TaskTemplate.", "runtime")?;
        self.must_be_empty(&tt, "NetworkAttachmentSpec", "TaskTemplate.", "runtime")?;
        if let Some(ld) = tt.field("LogDriver") {
            self.log_driver(ld.field("Name"), "TaskTemplate.LogDriver.Name")?;
        }
        let mut needs = EngineChecks::default();
        for (field, nets) in [("TaskTemplate.Networks", tt.field("Networks")), ("Networks", v.field("Networks"))] {
            let Some(nets) = nets else { continue };
            let GoValue::Array(a) = nets else { return Err(self.not_allowed("host-network", field)) };
            for n in a {
                let t = match n.field("Target") {
                    Some(GoValue::String(t)) => t,
                    None => continue,
                    Some(_) => return Err(self.not_allowed("host-network", &format!("{field}.Target"))),
                };
                if is_host_word(&t) {
                    return Err(self.deny("host-network", &format!("{field}.Target"), "`host` is not allowed"));
                }
                needs.networks.push(t);
            }
        }
        let Some(cs) = tt.field("ContainerSpec") else { return Ok(needs) };
        let p = "TaskTemplate.ContainerSpec.";
        if let Some(m) = cs.field("Mounts") {
            self.mounts(&m, &format!("{p}Mounts"))?;
        }
        self.must_be_empty(&cs, "CapabilityAdd", p, "cap-add")?;
        self.sysctls(cs.field("Sysctls"), &format!("{p}Sysctls"))?;
        if let Some(pr) = cs.field("Privileges") {
            let pp = format!("{p}Privileges.");
            if pr.field("CredentialSpec").is_some() {
                return Err(self.not_allowed("privileges", &format!("{pp}CredentialSpec")));
            }
            if let Some(se) = pr.field("SELinuxContext") {
                self.must_be_false(&se, "Disable", &format!("{pp}SELinuxContext."), "privileges")?;
                self.must_be_empty(&se, "Type", &format!("{pp}SELinuxContext."), "privileges")?;
            }
            for (name, field) in [("Seccomp", "Mode"), ("AppArmor", "Mode")] {
                if let Some(GoValue::String(m)) = pr.path(&format!("{name}.{field}")) {
                    if !m.is_empty() && !m.eq_ignore_ascii_case("default") {
                        return Err(self.deny("privileges", &format!("{pp}{name}.Mode"), &format!("`{m}` is not allowed")));
                    }
                }
            }
        }
        needs.image = cs.str_at("Image").ok().flatten().filter(|i| !i.is_empty());
        Ok(needs)
    }

    /// `NetworkCreateRequest`: overlay networks only, not the ingress, no config-from.
    fn network(&self, v: &GoValue) -> Result<(), Denial> {
        match v.field("Driver") {
            Some(GoValue::String(d)) if d == "overlay" => {}
            _ => return Err(self.deny("network-driver", "Driver", "other than `overlay` is not allowed")),
        }
        self.must_be_false(v, "Ingress", "", "network-driver")?;
        self.must_be_false(v, "ConfigOnly", "", "network-driver")?;
        self.must_be_empty(v, "ConfigFrom", "", "network-driver")?;
        match v.path("IPAM.Driver") {
            None => Ok(()),
            Some(GoValue::String(d)) if d.is_empty() || d == "default" => Ok(()),
            Some(_) => Err(self.deny("network-driver", "IPAM.Driver", "other than `default` is not allowed (IPAM plugins)")),
        }
    }
}

/// What the dry run (`swarmseal policy check`) and the proxy decide for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the checks only the engine can answer (the dry run cannot make them).
    Allow(EngineChecks),
    Deny(Denial),
}

/// Decide `method` `target` (path and query, as sent) with `body` for the role named
/// `role`: the proxy's own functions ([`authz::decide_rule`], [`body_kind`], [`check_body`])
/// in the proxy's order. An unknown role is refused as the proxy refuses its certificate.
pub fn check_request(roles: &Roles, role: &str, method: &str, target: &str, body: &[u8]) -> Verdict {
    let policy = roles.get(role);
    let path = target.split(['?', '#']).next().unwrap_or("");
    let canon = match authz::canonicalize(path) {
        Ok(c) => c,
        Err(m) => return Verdict::Deny(Denial { rule: "path", message: m, kind: ApiErrorKind::BadRequest }),
    };
    if let Err(d) = authz::decide_rule(policy.as_deref(), method, &canon, false) {
        return Verdict::Deny(d);
    }
    match policy.filter(|p| p.kind == Role::Deploy).and_then(|p| body_kind(method, &canon).map(|k| (p, k))) {
        Some((p, k)) => match check_body(&p, k, body) {
            Ok(n) => Verdict::Allow(n),
            Err(d) => Verdict::Deny(d),
        },
        None => Verdict::Allow(EngineChecks::default()),
    }
}

/// `swarmseal policy …`
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Dry run: would the proxy allow this request (body on stdin) for a certificate of this
    /// role? Prints `allow` or `deny <rule>: <message>`; exit 0 allow, 1 deny.
    Check {
        /// The role (certificate Subject OU), built in or from `[roles]`.
        #[arg(long)]
        role: String,
        /// HTTP method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// Request path and query as the client sends it (`/v1.41/containers/create`).
        #[arg(long)]
        path: String,
    },
}

/// `swarmseal policy check`: read the body from `stdin` (at most [`BODY_LIMIT`] + 1 bytes are
/// read), decide as the proxy would, print `allow` or `deny rule=R status=S: MESSAGE` to
/// stdout. `Ok(true)`: allowed. Errors: the configuration's roles, stdin unreadable.
pub fn run(cfg: &impl crate::ProxySettings, c: PolicyCommand, stdin: impl std::io::Read) -> Result<bool, crate::ProxyError> {
    use std::io::Read;
    let PolicyCommand::Check { role, method, path } = c;
    let roles = Roles::from_config(&cfg.roles()).map_err(|e| crate::ProxyError::Usage(e.to_string()))?;
    if roles.get(&role).is_none() {
        return Err(crate::ProxyError::Usage(format!("unknown role `{role}`: use one of {}", roles.names().join(", "))));
    }
    let mut body = Vec::new();
    stdin.take(BODY_LIMIT + 1).read_to_end(&mut body).map_err(|e| crate::ProxyError::Usage(format!("cannot read the request body from stdin: {e}")))?;
    match check_request(&roles, &role, &method, &path, &body) {
        Verdict::Allow(needs) => {
            println!("allow");
            for n in &needs.networks {
                println!("note: the proxy also asks the engine that network `{n}` is not the host network");
            }
            if let Some(i) = &needs.image {
                println!("note: the proxy also asks the engine that image `{i}` is already there");
            }
            let canon = authz::canonicalize(path.split('?').next().unwrap_or("")).ok();
            let deploy = roles.get(&role).is_some_and(|p| p.kind == Role::Deploy);
            if deploy && canon.as_ref().is_some_and(|c| !rollback_targets(&method, c, path.split_once('?').map(|x| x.1), &body).is_empty()) {
                println!("note: the proxy also checks the service's spec a rollback would apply (PreviousSpec, or Spec with FailureAction rollback), read from the engine, with the same rules");
            }
            let p = roles.get(&role).filter(|p| p.ownership);
            if let (Some(c), Some(_)) = (&canon, &p) {
                if let Some(t) = owned_target(&method, c) {
                    println!("note: the proxy also asks the engine that {t} carries {OWNER_LABEL}=<this certificate's CN>");
                }
                if labels_owner(&method, c) {
                    println!("note: the proxy adds the label {OWNER_LABEL}=<this certificate's CN> to the body");
                }
            }
            Ok(true)
        }
        Verdict::Deny(d) => {
            println!("deny rule={} status={}: {}", d.rule, d.kind.status(), d.message);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy() -> RolePolicy {
        RolePolicy::builtin(Role::Deploy)
    }

    fn rule(kind: BodyKind, body: &str) -> Result<EngineChecks, (&'static str, String)> {
        check_body(&deploy(), kind, body.as_bytes()).map_err(|d| (d.rule, d.message))
    }

    #[test]
    fn container_bodies() {
        let c = BodyKind::ContainerCreate;
        assert!(rule(c, r#"{"Image":"bb","HostConfig":{"Privileged":false,"Binds":["data:/data"]}}"#).is_ok());
        assert_eq!(rule(c, r#"{"HostConfig":{"Privileged":true}}"#).unwrap_err(), ("privileged", "deploy: HostConfig.Privileged is not allowed".into()));
        for (body, r) in [
            (r#"{"hostconfig":{"privileged":true}}"#, "privileged"),
            (r#"{"Privileged":true}"#, "privileged"),
            (r#"{"HostConfig":{"Privileged":true,"Privileged":false}}"#, "body"),
            (r#"{"HostConfig":{"Privileged":false,"privileged":true}}"#, "body"),
            (r#"{"HostConfig":{"Privileged":true,"Privileged":null}}"#, "body"),
            (r#"{"HostConfig":{"Privileged":true},"hostconfig":{}}"#, "body"),
            (r#"{"HostConfig":{"Privil\u0065ged":true}}"#, "privileged"),
            (r#"{"HostConfig":{"Privileged":"true"}}"#, "privileged"),
            (r#"{"HostConfig":{"PidMode":"host"}}"#, "host-namespace"),
            (r#"{"HostConfig":{"UsernsMode":"HOST"}}"#, "host-namespace"),
            (r#"{"HostConfig":{"NetworkMode":"host"}}"#, "host-network"),
            (r#"{"HostConfig":{"NetworkMode":"container:x"}}"#, "host-network"),
            (r#"{"HostConfig":{"CapAdd":["SYS_ADMIN"]}}"#, "cap-add"),
            (r#"{"HostConfig":{"Devices":[{"PathOnHost":"/dev/sda"}]}}"#, "devices"),
            (r#"{"HostConfig":{"DeviceCgroupRules":["a *:* rwm"]}}"#, "devices"),
            (r#"{"HostConfig":{"Binds":["/:/host"]}}"#, "bind-mount"),
            (r#"{"HostConfig":{"Binds":["/var/run/docker.sock:/s"]}}"#, "docker-socket"),
            (r#"{"HostConfig":{"Binds":["/run:/r"]}}"#, "bind-mount"),
            (r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/etc","Target":"/e"}]}}"#, "bind-mount"),
            (r#"{"HostConfig":{"Mounts":[{"Type":"BIND","Source":"/etc/../","Target":"/e"}]}}"#, "bind-mount"),
            (r#"{"HostConfig":{"Mounts":[{"Type":"volume","Target":"/e","VolumeOptions":{"DriverConfig":{"Options":{"o":"bind"}}}}]}}"#, "volume-options"),
            (r#"{"HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}"#, "security-opt"),
            (r#"{"HostConfig":{"SecurityOpt":["seccomp:unconfined"]}}"#, "security-opt"),
            (r#"{"HostConfig":{"SecurityOpt":["apparmor=unconfined"]}}"#, "security-opt"),
            (r#"{"HostConfig":{"SecurityOpt":["label=disable"]}}"#, "security-opt"),
            (r#"{"HostConfig":{"SecurityOpt":["no-new-privileges=false"]}}"#, "security-opt"),
            (r#"{"HostConfig":{"SecurityOpt":["no-new-privileges"]}}"#, "ok"),
            (r#"{"HostConfig":{"Sysctls":{"kernel.shm_rmid_forced":"1"}}}"#, "sysctls"),
            (r#"{"HostConfig":{"CgroupParent":"/"}}"#, "cgroup-parent"),
            (r#"{"HostConfig":{"VolumesFrom":["c1"]}}"#, "volumes-from"),
            (r#"{"HostConfig":{"Runtime":"kata"}}"#, "runtime"),
            (r#"{"HostConfig":{"LogConfig":{"Type":"syslog"}}}"#, "outbound"),
            (r#"{"NetworkingConfig":{"EndpointsConfig":{"host":{}}}}"#, "host-network"),
        ] {
            let got = rule(c, body).map(|_| "ok").map_err(|e| e.0);
            assert_eq!(got.unwrap_or_else(|e| e), r, "{body}");
        }
        assert!(check_body(&deploy(), BodyKind::ContainerStart, b"").is_ok());
        assert_eq!(check_body(&deploy(), BodyKind::ContainerStart, br#"{"Privileged":true}"#).unwrap_err().rule, "host-config");
        for bad in [r#"{"HostConfig":{}} x"#, "{/*c*/}", r#"{"a":NaN}"#, "", "[1]"] {
            let d = check_body(&deploy(), c, bad.as_bytes()).unwrap_err();
            assert_eq!(d.kind, ApiErrorKind::BadRequest, "{bad:?}");
        }
        let big = format!("{{\"Image\":\"{}\"}}", "a".repeat(BODY_LIMIT as usize));
        assert_eq!(check_body(&deploy(), c, big.as_bytes()).unwrap_err().kind, ApiErrorKind::PayloadTooLarge);
    }

    #[test]
    fn service_volume_network_bodies() {
        let s = BodyKind::ServiceSpec;
        let ok = rule(s, r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"bb:1","Mounts":[{"Type":"volume","Source":"d","Target":"/d"}]},"Networks":[{"Target":"n1"}]}}"#).unwrap();
        assert_eq!(ok, EngineChecks { networks: vec!["n1".into()], image: Some("bb:1".into()) });
        for (body, r) in [
            (r#"{"TaskTemplate":{"ContainerSpec":{"CapabilityAdd":["CAP_SYS_ADMIN"]}}}"#, "cap-add"),
            (r#"{"TaskTemplate":{"ContainerSpec":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h"}]}}}"#, "bind-mount"),
            (r#"{"TaskTemplate":{"ContainerSpec":{"Mounts":[{"Type":"bind","Source":"/var/run/docker.sock","Target":"/s"}]}}}"#, "docker-socket"),
            (r#"{"TaskTemplate":{"ContainerSpec":{"Privileges":{"SELinuxContext":{"Disable":true}}}}}"#, "privileges"),
            (r#"{"TaskTemplate":{"ContainerSpec":{"Privileges":{"CredentialSpec":{"File":"x"}}}}}"#, "privileges"),
            (r#"{"TaskTemplate":{"ContainerSpec":{"Privileges":{"Seccomp":{"Mode":"unconfined"}}}}}"#, "privileges"),
            (r#"{"TaskTemplate":{"ContainerSpec":{"Sysctls":{"net.ipv4.ip_forward":"1"}}}}"#, "sysctls"),
            (r#"{"TaskTemplate":{"Networks":[{"Target":"host"}]}}"#, "host-network"),
            (r#"{"Networks":[{"Target":"HOST"}]}"#, "host-network"),
            (r#"{"TaskTemplate":{"Runtime":"plugin","PluginSpec":{"Remote":"x"}}}"#, "runtime"),
            (r#"{"TaskTemplate":{"LogDriver":{"Name":"gelf"}}}"#, "outbound"),
        ] {
            assert_eq!(rule(s, body).unwrap_err().0, r, "{body}");
        }
        let v = BodyKind::VolumeCreate;
        assert!(rule(v, r#"{"Name":"v1"}"#).is_ok());
        assert_eq!(rule(v, r#"{"Name":"v","DriverOpts":{"o":"bind","type":"none","device":"/etc"}}"#).unwrap_err().0, "volume-options");
        assert_eq!(rule(v, r#"{"Name":"v","Driver":"local","DriverOpts":{"device":"/etc"}}"#).unwrap_err().0, "volume-options");
        assert_eq!(rule(v, r#"{"Name":"v","Driver":"rexray"}"#).unwrap_err().0, "volume-driver");
        let n = BodyKind::NetworkCreate;
        assert!(rule(n, r#"{"Name":"n","Driver":"overlay","Attachable":true}"#).is_ok());
        assert_eq!(rule(n, r#"{"Name":"n","Driver":"macvlan"}"#).unwrap_err().0, "network-driver");
        assert_eq!(rule(n, r#"{"Name":"n","Driver":"overlay","Ingress":true}"#).unwrap_err().0, "network-driver");
    }

    #[test]
    fn ownership() {
        let c = |p: &str| authz::canonicalize(p).unwrap();
        assert_eq!(owned_target("DELETE", &c("/v1.41/services/AbC")), Some("/services/AbC".into()));
        assert_eq!(owned_target("POST", &c("/configs/x/update")), Some("/configs/x".into()));
        assert_eq!(owned_target("POST", &c("/networks/x/update")), None);
        assert_eq!(owned_target("DELETE", &c("/containers/x")), None);
        assert!(labels_owner("POST", &c("/services/create")) && !labels_owner("POST", &c("/containers/create")));
        let b = with_owner(br#"{"Name":"s","labels":{"swarmseal.owner":"eve","a":"b"}}"#, "ci").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["labels"], serde_json::json!({"swarmseal.owner":"ci","a":"b"}));
        let v: serde_json::Value = serde_json::from_slice(&with_owner(br#"{"Name":"s","Labels":null}"#, "ci").unwrap()).unwrap();
        assert_eq!(v["Labels"]["swarmseal.owner"], "ci");
        assert_eq!(with_owner(br#"{"Labels":{},"labels":{}}"#, "ci").unwrap_err().kind, ApiErrorKind::BadRequest);
        let obj = crate::gojson::parse_first(br#"{"Spec":{"Labels":{"swarmseal.owner":"a"}}}"#).unwrap().0;
        let d = deploy();
        assert!(check_owner(&d, "a", "/services/x", Some(&obj)).is_ok());
        assert_eq!(check_owner(&d, "b", "/services/x", Some(&obj)).unwrap_err().rule, "owner");
        let net = crate::gojson::parse_first(br#"{"Labels":{}}"#).unwrap().0;
        assert!(check_owner(&d, "a", "/networks/x", Some(&net)).unwrap_err().message.contains("no swarmseal.owner"));
    }

    #[test]
    fn rollbacks_check_the_spec_the_engine_applies() {
        let c = authz::canonicalize("/v1.41/services/s1/update").unwrap();
        assert_eq!(rollback_targets("POST", &c, Some("version=3&rollback=previous"), b"{}"), ["PreviousSpec"]);
        assert_eq!(rollback_targets("POST", &c, Some("version=3&Rollback=%70revious"), b"{}"), ["PreviousSpec"]);
        assert_eq!(rollback_targets("POST", &c, Some("version=3&rollback=none"), br#"{"updateconfig":{"failureaction":"pause"}}"#), Vec::<&str>::new());
        assert_eq!(rollback_targets("POST", &c, Some("version=3"), br#"{"UpdateConfig":{"FailureAction":"rollback"}}"#), ["Spec"]);
        assert!(rollback_targets("POST", &authz::canonicalize("/services/create").unwrap(), Some("rollback=previous"), b"{}").is_empty());
        let svc = crate::gojson::parse_first(br#"{"Version":{"Index":7},"Spec":{"TaskTemplate":{"ContainerSpec":{"Image":"bb:1"}}},"PreviousSpec":{"TaskTemplate":{"ContainerSpec":{"Image":"bb:0","CapabilityAdd":["CAP_SYS_ADMIN"]}}}}"#).unwrap().0;
        let d = deploy();
        let e = check_rollback(&d, &["PreviousSpec"], Some("version=7&rollback=previous"), Some(&svc)).unwrap_err();
        assert_eq!((e.rule, e.message.as_str()), ("cap-add", "deploy: PreviousSpec.TaskTemplate.ContainerSpec.CapabilityAdd is not allowed (the spec a rollback applies)"));
        assert_eq!(check_rollback(&d, &["Spec"], Some("version=7"), Some(&svc)).unwrap()[0].image.as_deref(), Some("bb:1"));
        for q in ["rollback=previous", "version=6&rollback=previous", "version=7;version=8&rollback=previous", "version=x"] {
            assert_eq!(check_rollback(&d, &["Spec"], Some(q), Some(&svc)).unwrap_err().rule, "rollback", "{q}");
        }
        assert_eq!(check_rollback(&d, &["Spec"], Some("version=7"), None).unwrap_err().rule, "rollback");
    }

    #[test]
    fn bind_sources_through_a_symlink_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("data/real/sub")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("data/evil")).unwrap();
        std::os::unix::fs::symlink("real", base.join("data/inner")).unwrap();
        let role = RolePolicy { bind_paths: vec![base.join("data")], ..deploy() };
        let bind = |src: &str| check_body(&role, BodyKind::ContainerCreate, format!(r#"{{"HostConfig":{{"Binds":["{src}:/x"]}}}}"#).as_bytes()).map_err(|d| d.message);
        let b = base.display();
        assert!(bind(&format!("{b}/data/real/sub")).is_ok());
        assert!(bind(&format!("{b}/data/not-yet/sub")).is_ok(), "a missing rest is created as directories by the engine");
        for (src, link) in [("data/evil", "data/evil"), ("data/evil/shadow", "data/evil"), ("data/inner/sub", "data/inner")] {
            let e = bind(&format!("{b}/{src}")).unwrap_err();
            assert!(e.contains(&format!("passes through the symbolic link `{b}/{link}`")), "{src}: {e}");
        }
        assert_eq!(symlink_on_path(Path::new("/proc/self/cwd")).unwrap(), Some(PathBuf::from("/proc/self")));
    }

    #[test]
    fn allow_lists_and_config_errors() {
        let mut cfg = RolesConfig::new();
        cfg.insert("ci".into(), RoleConfig { base: Some("deploy".into()), allow_bind_paths: vec!["/srv/data/".into()], allow_sysctls: vec!["net.core.somaxconn".into()], ..Default::default() });
        let roles = Roles::from_config(&cfg).unwrap();
        assert_eq!(roles.names(), ["admin", "ci", "deploy", "monitor", "readonly"]);
        let ci = roles.get("ci").unwrap();
        let c = BodyKind::ContainerCreate;
        assert!(check_body(&ci, c, br#"{"HostConfig":{"Binds":["/srv/data/x:/x"],"Sysctls":{"net.core.somaxconn":"1024"}}}"#).is_ok());
        assert_eq!(check_body(&ci, c, br#"{"HostConfig":{"Binds":["/srv/data/../etc:/x"]}}"#).unwrap_err().rule, "bind-mount");
        assert_eq!(check_body(&ci, c, br#"{"HostConfig":{"Binds":["/srv/database:/x"]}}"#).unwrap_err().rule, "bind-mount");
        assert!(check_body(&ci, c, br#"{"HostConfig":{"Privileged":true}}"#).unwrap_err().message.starts_with("ci: "));
        let err = |name: &str, rc: RoleConfig| Roles::from_config(&[(name.to_string(), rc)].into_iter().collect()).unwrap_err().to_string();
        assert_eq!(err("ci", RoleConfig::default()), "[roles.ci] base: a new role needs `base = \"deploy\"` (or admin, readonly, monitor): the built-in role whose rules it takes");
        assert!(err("ci", RoleConfig { base: Some("root".into()), ..Default::default() }).starts_with("[roles.ci] base: `root`"));
        assert!(err("deploy", RoleConfig { base: Some("admin".into()), ..Default::default() }).starts_with("[roles.deploy] base:"));
        assert!(err("deploy", RoleConfig { allow_bind_paths: vec!["/".into()], ..Default::default() }).starts_with("[roles.deploy] allow_bind_paths:"));
        assert!(err("deploy", RoleConfig { allow_bind_paths: vec!["/var/run".into()], ..Default::default() }).contains("Docker socket"));
        assert!(err("readonly", RoleConfig { allow_sysctls: vec!["a".into()], ..Default::default() }).starts_with("[roles.readonly] allow_*:"));
        assert!(err("Bad Name", RoleConfig::default()).starts_with("[roles.Bad Name] name:"));
    }
}
