//! The Docker Engine API on the engine's unix socket: swarm state, init with
//! autolock, the unlock key, unlock, rotation.
//!
//! bollard 0.21 serves the calls it has (`GET /info`, `POST /swarm/init`,
//! `GET /swarm`, `POST /swarm/update`); the ones it lacks (`GET /swarm/unlockkey`,
//! `POST /swarm/unlock`) go over hyper on the same socket with an explicit
//! `/v1.xx` prefix negotiated from `GET /version` (ApiVersion): the lower of
//! the engine's and [`MAX_API_VERSION`]. Works with engine 20.10 (API 1.41)
//! and 26.x (API 1.45).
//!
//! Reference: Docker Engine API v1.45 (<https://docs.docker.com/reference/api/engine/version/v1.45/>);
//! each method names its endpoint and the API version that introduced it. Errors are
//! [`SwarmError`]; the caller maps them to exit codes or HTTP statuses.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{LocalNodeState, SwarmInitRequest, SwarmSpec, SwarmSpecEncryptionConfig};
use bollard::query_parameters::UpdateSwarmOptionsBuilder;
use bytes::Buf;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use zeroize::Zeroizing;

use swarmseal_common::secret::UnlockKey;

/// Highest Engine API version we speak.
pub const MAX_API_VERSION: (u32, u32) = (1, 45);
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Engine API errors. `Display` is the operator sentence.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("the Docker engine does not answer on {socket}: {message} (is docker.service running? is --docker-host right?)")]
    Unreachable { socket: PathBuf, message: String },
    #[error("the engine rejected the unlock key: {message}")]
    WrongKey { message: String },
    #[error("the swarm is not locked: {message}")]
    NotLocked { message: String },
    #[error("this node is not a swarm manager (LocalNodeState {state}): {message}")]
    NotManager { state: String, message: String },
    #[error("Docker Engine API {op} failed (HTTP {status}): {message}")]
    Api { op: &'static str, status: u16, message: String },
}

/// `Swarm.LocalNodeState` of `GET /info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Inactive,
    Pending,
    Active,
    Error,
    Locked,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Inactive => "inactive",
            NodeState::Pending => "pending",
            NodeState::Active => "active",
            NodeState::Error => "error",
            NodeState::Locked => "locked",
        })
    }
}

/// The node's swarm status (from `GET /info`, `Swarm` object).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwarmStatus {
    pub state: NodeState,
    pub node_id: Option<String>,
    /// `Swarm.ControlAvailable`: this node is a manager.
    pub manager: bool,
    pub error: Option<String>,
}

/// A connection to one engine.
#[derive(Clone)]
pub struct Engine {
    socket: PathBuf,
    docker: bollard::Docker,
    api: (u32, u32),
}

#[derive(Deserialize)]
struct EngineMessage {
    message: String,
}

/// A request body whose bytes are zeroized when dropped (for the unlock key).
struct SecretBuf(Zeroizing<Vec<u8>>, usize);

impl Buf for SecretBuf {
    fn remaining(&self) -> usize {
        self.0.len() - self.1
    }
    fn chunk(&self) -> &[u8] {
        &self.0[self.1..]
    }
    fn advance(&mut self, cnt: usize) {
        self.1 += cnt;
    }
}

impl Engine {
    /// Connect to the engine on `socket` and negotiate the API version
    /// (`GET /version`, unversioned; Docker Engine API v1.41+). Errors: [`SwarmError::Unreachable`],
    /// [`SwarmError::Api`] (an error status, no or an unparsable `ApiVersion`).
    pub async fn connect(socket: &Path) -> Result<Engine, SwarmError> {
        let mut e = Engine {
            socket: socket.to_path_buf(),
            docker: bollard::Docker::connect_with_unix(&socket.to_string_lossy(), REQUEST_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
                .map_err(|err| SwarmError::Unreachable { socket: socket.to_path_buf(), message: err.to_string() })?,
            api: MAX_API_VERSION,
        };
        #[derive(Deserialize)]
        struct Version {
            #[serde(rename = "ApiVersion")]
            api_version: String,
        }
        let (status, body) = e.raw(Method::GET, "/version", None, false).await?;
        if status != StatusCode::OK {
            return Err(e.api_error("GET /version", status, &body));
        }
        let v: Version = serde_json::from_slice(&body).map_err(|err| SwarmError::Api { op: "GET /version", status: 200, message: err.to_string() })?;
        let theirs = parse_api_version(&v.api_version).ok_or_else(|| SwarmError::Api { op: "GET /version", status: 200, message: format!("unparsable ApiVersion {:?}", v.api_version) })?;
        e.api = theirs.min(MAX_API_VERSION);
        let cv = bollard::ClientVersion { major_version: e.api.0 as usize, minor_version: e.api.1 as usize };
        e.docker = bollard::Docker::connect_with_unix(&socket.to_string_lossy(), REQUEST_TIMEOUT.as_secs(), &cv)
            .map_err(|err| SwarmError::Unreachable { socket: socket.to_path_buf(), message: err.to_string() })?;
        Ok(e)
    }

    /// [`Engine::connect`] every 500 ms until the engine answers, up to `timeout`; then the
    /// last [`SwarmError::Unreachable`]. Other errors return at once.
    pub async fn wait(socket: &Path, timeout: Duration) -> Result<Engine, SwarmError> {
        let start = std::time::Instant::now();
        loop {
            match Engine::connect(socket).await {
                Ok(e) => return Ok(e),
                Err(e @ SwarmError::Unreachable { .. }) if start.elapsed() < timeout => {
                    tracing::debug!(error = %e, "engine not ready yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The negotiated API version as `"1.41"`.
    pub fn api_version(&self) -> String {
        format!("{}.{}", self.api.0, self.api.1)
    }

    /// The bollard client (negotiated version), for callers that need other calls.
    pub fn docker(&self) -> &bollard::Docker {
        &self.docker
    }

    fn bollard_error(&self, op: &'static str, e: bollard::errors::Error) -> SwarmError {
        match e {
            bollard::errors::Error::DockerResponseServerError { status_code, message } => SwarmError::Api { op, status: status_code, message },
            other => SwarmError::Unreachable { socket: self.socket.clone(), message: other.to_string() },
        }
    }

    fn api_error(&self, op: &'static str, status: StatusCode, body: &[u8]) -> SwarmError {
        SwarmError::Api { op, status: status.as_u16(), message: message_of(body) }
    }

    /// One request over hyper on the unix socket. `versioned`: prefix the path
    /// with `/v1.xx`. The body, if any, is zeroized after sending. The response
    /// body is returned zeroizing (it may hold the unlock key).
    async fn raw(&self, method: Method, path: &str, body: Option<Zeroizing<Vec<u8>>>, versioned: bool) -> Result<(StatusCode, Zeroizing<Vec<u8>>), SwarmError> {
        let unreachable = |m: String| SwarmError::Unreachable { socket: self.socket.clone(), message: m };
        let fut = async {
            let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<SecretBuf>>(TokioIo::new(stream)).await.map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let uri = if versioned { format!("/v{}.{}{}", self.api.0, self.api.1, path) } else { path.to_string() };
            let mut req = Request::builder().method(method).uri(uri).header("host", "docker");
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Full::new(SecretBuf(body.unwrap_or_default(), 0))).map_err(|e| unreachable(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let mut collected = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.aggregate();
            let mut out = Zeroizing::new(vec![0u8; collected.remaining()]);
            collected.copy_to_slice(&mut out);
            Ok((status, out))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut).await.map_err(|_| unreachable(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))?
    }

    /// Swarm status of this node (`GET /info`, its `Swarm` object; API v1.24+).
    /// Errors: [`SwarmError::Unreachable`], [`SwarmError::Api`].
    pub async fn status(&self) -> Result<SwarmStatus, SwarmError> {
        let info = self.docker.info().await.map_err(|e| self.bollard_error("GET /info", e))?;
        let sw = info.swarm.unwrap_or_default();
        let state = match sw.local_node_state {
            Some(LocalNodeState::ACTIVE) => NodeState::Active,
            Some(LocalNodeState::LOCKED) => NodeState::Locked,
            Some(LocalNodeState::PENDING) => NodeState::Pending,
            Some(LocalNodeState::ERROR) => NodeState::Error,
            _ => NodeState::Inactive,
        };
        Ok(SwarmStatus {
            state,
            node_id: sw.node_id.filter(|s| !s.is_empty()),
            manager: sw.control_available.unwrap_or(false),
            error: sw.error.filter(|s| !s.is_empty()),
        })
    }

    /// `POST /swarm/init` (API v1.24+) with `Spec.EncryptionConfig.AutoLockManagers = true`
    /// (v1.25+); `listen_addr` defaults to `0.0.0.0:2377`. Returns the node ID.
    /// Errors: [`SwarmError::Api`] (e.g. 503 when already part of a swarm), [`SwarmError::Unreachable`].
    pub async fn init_autolock(&self, advertise_addr: Option<&str>, listen_addr: Option<&str>) -> Result<String, SwarmError> {
        let req = SwarmInitRequest {
            listen_addr: Some(listen_addr.unwrap_or("0.0.0.0:2377").to_string()),
            advertise_addr: advertise_addr.map(str::to_string),
            spec: Some(SwarmSpec { encryption_config: Some(SwarmSpecEncryptionConfig { auto_lock_managers: Some(true) }), ..Default::default() }),
            ..Default::default()
        };
        self.docker.init_swarm(req).await.map_err(|e| self.bollard_error("POST /swarm/init", e))
    }

    /// `Spec.EncryptionConfig.AutoLockManagers` of `GET /swarm` (API v1.25+; managers only,
    /// else [`SwarmError::Api`] with status 503).
    pub async fn autolock(&self) -> Result<bool, SwarmError> {
        let sw = self.docker.inspect_swarm().await.map_err(|e| self.bollard_error("GET /swarm", e))?;
        Ok(sw.spec.and_then(|s| s.encryption_config).and_then(|e| e.auto_lock_managers).unwrap_or(false))
    }

    /// `POST /swarm/update?version=V[&rotateManagerUnlockKey=true]` (API v1.25+), with the spec
    /// of `GET /swarm`: turn autolock on and/or rotate the unlock key.
    async fn update(&self, autolock: bool, rotate: bool) -> Result<(), SwarmError> {
        let sw = self.docker.inspect_swarm().await.map_err(|e| self.bollard_error("GET /swarm", e))?;
        let version = sw.version.and_then(|v| v.index).unwrap_or(0) as i64;
        let mut spec = sw.spec.unwrap_or_default();
        if autolock {
            spec.encryption_config = Some(SwarmSpecEncryptionConfig { auto_lock_managers: Some(true) });
        }
        let opts = UpdateSwarmOptionsBuilder::default().version(version).rotate_manager_unlock_key(rotate).build();
        self.docker.update_swarm(spec, opts).await.map_err(|e| self.bollard_error("POST /swarm/update", e))
    }

    /// Turn autolock on for an existing swarm (`POST /swarm/update`, API v1.25+).
    pub async fn enable_autolock(&self) -> Result<(), SwarmError> {
        self.update(true, false).await
    }

    /// Rotate the unlock key (`POST /swarm/update?rotateManagerUnlockKey=true`, API v1.25+).
    pub async fn rotate_unlock_key(&self) -> Result<(), SwarmError> {
        self.update(false, true).await
    }

    /// The current unlock key (`GET /v1.xx/swarm/unlockkey`, API v1.25+); `None` when autolock
    /// is off. Errors: [`SwarmError::NotManager`] (503/406: not an active manager),
    /// [`SwarmError::Api`], [`SwarmError::Unreachable`]. The key is never in an error.
    pub async fn unlock_key(&self) -> Result<Option<UnlockKey>, SwarmError> {
        #[derive(Deserialize)]
        struct Resp {
            #[serde(rename = "UnlockKey")]
            unlock_key: Option<String>,
        }
        let (status, body) = self.raw(Method::GET, "/swarm/unlockkey", None, true).await?;
        if status != StatusCode::OK {
            return Err(match status.as_u16() {
                503 | 406 => SwarmError::NotManager { state: "not active".into(), message: message_of(&body) },
                _ => self.api_error("GET /swarm/unlockkey", status, &body),
            });
        }
        let r: Resp = serde_json::from_slice(&body).map_err(|_| SwarmError::Api { op: "GET /swarm/unlockkey", status: 200, message: "unexpected response shape".into() })?;
        match r.unlock_key.map(Zeroizing::new) {
            Some(k) if !k.is_empty() => UnlockKey::new(k.to_string()).map(Some).map_err(|e| SwarmError::Api { op: "GET /swarm/unlockkey", status: 200, message: e.to_string() }),
            _ => Ok(None),
        }
    }

    /// `POST /v1.xx/swarm/unlock` (API v1.25+) with `{"UnlockKey": …}`; the request body is
    /// zeroized after sending.
    /// Errors: [`SwarmError::WrongKey`] when the engine rejects the key,
    /// [`SwarmError::NotLocked`] when there is nothing to unlock.
    pub async fn unlock(&self, key: &UnlockKey) -> Result<(), SwarmError> {
        let body = Zeroizing::new(serde_json::to_vec(&serde_json::json!({ "UnlockKey": key.expose() })).expect("static shape"));
        let (status, resp) = self.raw(Method::POST, "/swarm/unlock", Some(body), true).await?;
        if status.is_success() {
            return Ok(());
        }
        let message = message_of(&resp);
        let lower = message.to_lowercase();
        Err(if lower.contains("not locked") {
            SwarmError::NotLocked { message }
        } else if lower.contains("invalid") || lower.contains("key") || status == StatusCode::BAD_REQUEST {
            SwarmError::WrongKey { message }
        } else {
            SwarmError::Api { op: "POST /swarm/unlock", status: status.as_u16(), message }
        })
    }
}

impl Engine {
    /// `DockerRootDir` of `GET /info` (API v1.24+): where the engine keeps `swarm/` (its node key, Raft data).
    pub async fn docker_root(&self) -> Result<PathBuf, SwarmError> {
        let info = self.docker.info().await.map_err(|e| self.bollard_error("GET /info", e))?;
        info.docker_root_dir.filter(|s| !s.is_empty()).map(PathBuf::from).ok_or_else(|| SwarmError::Api { op: "GET /info", status: 200, message: "no DockerRootDir in the answer".into() })
    }

    /// `POST /swarm/init` with `ForceNewCluster: true` (Docker Engine API v1.24+): this manager
    /// becomes the only manager of a new cluster built from its own Raft data (services, secrets,
    /// nodes kept). The spec sent is the default one, so the new cluster starts with autolock
    /// **off** (the engine applies the request's spec). Returns the node ID.
    pub async fn init_force_new_cluster(&self, advertise_addr: Option<&str>, listen_addr: &str) -> Result<String, SwarmError> {
        let req = SwarmInitRequest { listen_addr: Some(listen_addr.to_string()), advertise_addr: advertise_addr.map(str::to_string), force_new_cluster: Some(true), ..Default::default() };
        self.docker.init_swarm(req).await.map_err(|e| self.bollard_error("POST /swarm/init", e))
    }

    /// How many nodes are Raft members (have a `ManagerStatus`, `GET /nodes`, API v1.24+): after a forced
    /// new cluster the lost managers are still listed, without one. Needs a Raft leader, so a
    /// manager that lost quorum gets an error here.
    pub async fn manager_count(&self) -> Result<usize, SwarmError> {
        match tokio::time::timeout(Duration::from_secs(10), self.docker.list_nodes(None::<bollard::query_parameters::ListNodesOptions>)).await {
            Ok(r) => r.map(|n| n.iter().filter(|n| n.manager_status.is_some()).count()).map_err(|e| self.bollard_error("GET /nodes", e)),
            Err(_) => Err(SwarmError::Api { op: "GET /nodes", status: 0, message: "no answer within 10 s".into() }),
        }
    }
}

/// The engine's error text: `message` of its JSON error body, else the body as text.
fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<EngineMessage>(body).map(|m| m.message).unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string())
}

/// Parse `"1.41"` into `(1, 41)`.
pub fn parse_api_version(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_negotiation_takes_the_lower() {
        assert_eq!(parse_api_version("1.41"), Some((1, 41)));
        assert_eq!(parse_api_version("1.47").unwrap().min(MAX_API_VERSION), (1, 45));
        assert_eq!(parse_api_version("1.41").unwrap().min(MAX_API_VERSION), (1, 41));
        assert_eq!(parse_api_version("x"), None);
    }

    #[test]
    fn an_engine_error_body_becomes_its_message() {
        assert_eq!(message_of(br#"{"message":"swarm is not locked"}"#), "swarm is not locked");
        assert_eq!(message_of(b" plain text\n"), "plain text");
    }

    /// No engine on the socket: `Unreachable` naming the socket, and `wait` gives up after
    /// its timeout (about 1 s here), not before.
    #[test]
    fn no_engine_is_unreachable_and_wait_is_bounded() {
        let sock = std::env::temp_dir().join(format!("swarmseal-engine-none-{}.sock", std::process::id()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let e = rt.block_on(Engine::connect(&sock)).err().expect("no engine");
        assert!(matches!(e, SwarmError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains(&sock.display().to_string()), "{e}");
        let t = std::time::Instant::now();
        let e = rt.block_on(Engine::wait(&sock, Duration::from_secs(1))).err().expect("no engine");
        assert!(matches!(e, SwarmError::Unreachable { .. }), "{e:?}");
        assert!(t.elapsed() >= Duration::from_secs(1) && t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}
