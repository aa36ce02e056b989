//! `swarmseal fleet update`: roll a signed release over a swarm's managers, one
//! manager at a time, without ever losing Raft quorum.
//!
//! Runs on the operator's workstation. Each manager is named by a docker CLI
//! context (`docker context create m1 --docker "host=tcp://…:2376,ca=…,cert=…,key=…"`,
//! the admin bundle of `swarmseal certs issue --role admin`); everything goes
//! through that manager's proxy with mutual TLS:
//!
//! - `GET /swarmseal/v1/status` (agent): the node ID, swarm state and the running
//!   image version (`image.version`, IMAGE_VERSION of /etc/os-release);
//! - `GET /nodes` (Docker Engine API ≥ 1.24, NodeList): managers,
//!   `Status.State` (`ready`), `ManagerStatus.Reachability` (`reachable`) and
//!   `ManagerStatus.Leader`, always asked of a manager other than the one being updated;
//! - `POST /swarmseal/v1/update?reboot=1` (agent, admin): the release tar
//!   (`swarmseal_V.tar` of `scripts/build-image --release`), which the manager
//!   verifies against the fleet key before writing anything, stages into its
//!   inactive A/B slot, and reboots into.
//!
//! Order: managers already at the release's version are skipped, the others
//! one at a time, the Raft leader last. Before taking a manager down, every
//! manager must be `Ready`/`Reachable` and the others must still hold a
//! majority of the managers (⌊N/2⌋+1). While it reboots, the others' view of
//! the managers is polled: if fewer than a majority stay reachable for longer
//! than a leader election (60 s), the update stops. A manager is done when its
//! agent reports the swarm `active` on the release's version and the others
//! see it `Ready`/`Reachable`; coming back on another version means its boot
//! assessment failed and the boot loader rolled back. The first failure stops
//! the run; nothing after it is touched, and the report says where it stopped.
//!
//! With `--public-key`, each manager is then attested as `swarmseal fleet attest` does (a
//! fresh quote, event logs, PCR 11 signed by the fleet key, phase marker, Secure Boot; the
//! same flags): a failed attestation stops the run there. Without it, the report says that
//! no manager was attested.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use swarmseal_common::tls;
use tokio::io::{AsyncRead, ReadBuf};

/// `swarmseal fleet …`
#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Roll RELEASE over the managers one at a time, keeping Raft quorum; stop at the first failure.
    Update(UpdateArgs),
    /// Attest each manager (TPM quote, event logs, the fleet's signed PCR 11); exit 0 only if all pass.
    Attest(crate::attest::AttestArgs),
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The managers, as docker CLI contexts (comma-separated): every manager of the swarm.
    #[arg(long, value_delimiter = ',', required = true, value_name = "CTX,CTX,…")]
    pub contexts: Vec<String>,
    /// Seconds to wait for one manager to reboot and come back unlocked and Reachable.
    #[arg(long, default_value_t = 1200, value_name = "SECONDS")]
    pub timeout: u64,
    /// Seconds between polls.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub poll: u64,
    /// The fleet's PCR-signing public key (`keys/pcr-signing.pem`): check the release's
    /// signature and hashes here before any manager is touched (each manager checks again).
    #[arg(long, value_name = "PEM")]
    pub public_key: Option<PathBuf>,
    /// The docker CLI that resolves the contexts.
    #[arg(long, default_value = "docker", value_name = "PATH")]
    pub docker: PathBuf,
    /// Write each manager's slot only at its turn. By default the next manager's root and
    /// root-verity partitions are written (`POST /swarmseal/v1/update?stage=1`: no boot entry,
    /// no reboot) while the previous manager reboots, and at its turn only its UKI remains
    /// (`?staged=V&reboot=1`).
    #[arg(long)]
    pub no_prestage: bool,
    /// How each manager is attested after its reboot (with --public-key; as `fleet attest`).
    #[command(flatten)]
    pub attest: crate::attest::VerifyArgs,
    /// The release: `swarmseal_V.tar` from `scripts/build-image --release`.
    pub release: PathBuf,
}

/// How long the remaining managers may go without a reachable majority (a leader election
/// takes ~10 s with swarmkit's defaults) before the update counts quorum as lost.
const QUORUM_GRACE: Duration = Duration::from_secs(60);
/// The largest answer read from a manager (an attestation with its event logs is well under).
const MAX_ANSWER: usize = 32 << 20;
/// Per-request timeout (the upload gets `UPLOAD_TIMEOUT`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const UPLOAD_TIMEOUT: Duration = Duration::from_secs(1800);

/// Why a fleet update did not run or stopped. `Display` is the operator sentence.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Usage(String),
    #[error("docker context {context}: {message}")]
    Context { context: String, message: String },
    /// The update started and stopped here; `done` were updated, the rest untouched.
    #[error("stopped at {at}: {reason}\n  updated: {done}\n  not touched: {rest}")]
    Stopped { at: String, reason: String, done: String, rest: String },
    /// `fleet attest`: these managers failed a check (each table says which and why).
    #[error("attestation failed for {}: see the table of each", managers.join(", "))]
    NotAttested { managers: Vec<String> },
}

/// One manager reached through its proxy (also `swarmseal --context`, [`crate::remote`]).
pub(crate) struct Manager {
    context: String,
    addr: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

pub(crate) type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl Manager {
    /// Resolve a docker CLI context (`docker context inspect`): `tcp://host:port` endpoint
    /// and its TLS material (`<Storage.TLSPath>/docker/{ca,cert,key}.pem`).
    pub(crate) fn from_context(docker: &Path, context: &str) -> Result<Manager, FleetError> {
        let err = |message: String| FleetError::Context { context: context.into(), message };
        let out = std::process::Command::new(docker).args(["context", "inspect", context]).output().map_err(|e| err(format!("cannot run {}: {e}", docker.display())))?;
        if !out.status.success() {
            return Err(err(format!("`docker context inspect` failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| err(format!("unreadable `docker context inspect` output: {e}")))?;
        let ep = &v[0]["Endpoints"]["docker"];
        let host = ep["Host"].as_str().unwrap_or_default();
        let addr = host.strip_prefix("tcp://").ok_or_else(|| err(format!("endpoint {host:?} is not tcp://HOST:PORT (the manager's proxy)")))?.trim_end_matches('/').to_string();
        if ep["SkipTLSVerify"].as_bool() == Some(true) {
            return Err(err("the context skips TLS verification; give it the appliance's CA (ca=…)".into()));
        }
        let tls_dir = PathBuf::from(v[0]["Storage"]["TLSPath"].as_str().unwrap_or_default()).join("docker");
        let (ca, cert, key) = (tls_dir.join("ca.pem"), tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
        for f in [&ca, &cert, &key] {
            if !f.is_file() {
                return Err(err(format!("no {} (create the context with ca=,cert=,key= of the admin bundle)", f.display())));
            }
        }
        let host_only = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr).trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host_only.to_string()).map_err(|e| err(format!("bad host {host_only:?}: {e}")))?;
        let tls = client_tls(&ca, &cert, &key).map_err(err)?;
        Ok(Manager { context: context.into(), addr, server_name, tls })
    }

    /// One request on a new mutual-TLS connection: (status, body).
    pub(crate) async fn call(&self, method: Method, path: &str, body: ReqBody, timeout: Duration) -> Result<(StatusCode, Bytes), String> {
        let fut = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
            let tls = self.tls.connect(self.server_name.clone(), tcp).await.map_err(|e| format!("TLS with {}: {e}", self.addr))?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let len = body.size_hint().exact();
            let mut req = Request::builder().method(method).uri(path).header("host", &self.addr);
            if let Some(n) = len {
                req = req.header("content-length", n);
            }
            let resp = tx.send_request(req.body(body).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // A manager's answer is bounded: a hostile one cannot fill the operator's memory.
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map_err(|e| format!("the answer: {e} (at most {MAX_ANSWER} bytes)"))?.to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| format!("no answer from {} within {} s", self.addr, timeout.as_secs()))?
    }

    async fn get_json(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self.call(Method::GET, path, empty(), REQUEST_TIMEOUT).await?;
        if !status.is_success() {
            return Err(format!("GET {path}: HTTP {status}: {}", answer_message(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
    }

    /// `GET /swarmseal/v1/status` → (node ID, swarm state, image version).
    async fn status(&self) -> Result<AgentStatus, String> {
        let v = self.get_json("/swarmseal/v1/status").await?;
        let s: swarmseal_common::status::Status = serde_json::from_value(v).map_err(|e| format!("GET /swarmseal/v1/status: not a status document: {e}"))?;
        Ok(AgentStatus { node_id: s.swarm.node_id().map(str::to_string), state: s.swarm.state().unwrap_or("unknown").to_string(), version: s.image.version })
    }

    /// `GET /nodes`: the managers as this manager sees them.
    async fn managers(&self) -> Result<Vec<NodeView>, String> {
        let v = self.get_json("/nodes").await?;
        Ok(parse_nodes(&v))
    }
}

/// What an error answer says: its `{"message": …}` (the engine's and the proxy's shape) or
/// the body as text, escaped for a terminal.
pub(crate) fn answer_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    message.escape_debug().to_string()
}

pub(crate) fn empty() -> ReqBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    let cfg = tls::client_config_from_files(tls::Versions::SafeDefault, ca, Some((cert, key))).map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

#[derive(Debug, Clone)]
struct AgentStatus {
    node_id: Option<String>,
    state: String,
    version: Option<String>,
}

/// One manager in `GET /nodes`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    /// `Status.State == "ready"` and `ManagerStatus.Reachability == "reachable"`.
    pub healthy: bool,
    /// `ManagerStatus.Reachability == "reachable"`: a Raft member the answering manager reaches,
    /// whatever its `Status.State` (a newly elected leader says `unknown` until heartbeats come).
    pub reachable: bool,
    pub leader: bool,
}

/// The managers of a `GET /nodes` answer (workers have no `ManagerStatus`).
pub fn parse_nodes(v: &Value) -> Vec<NodeView> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|n| n.get("ManagerStatus").is_some_and(|m| !m.is_null()))
        .map(|n| NodeView {
            id: n["ID"].as_str().unwrap_or_default().to_string(),
            hostname: n.pointer("/Description/Hostname").and_then(Value::as_str).unwrap_or_default().to_string(),
            healthy: n.pointer("/Status/State").and_then(Value::as_str) == Some("ready") && n.pointer("/ManagerStatus/Reachability").and_then(Value::as_str) == Some("reachable"),
            reachable: n.pointer("/ManagerStatus/Reachability").and_then(Value::as_str) == Some("reachable"),
            leader: n.pointer("/ManagerStatus/Leader").and_then(Value::as_bool) == Some(true),
        })
        .collect()
}

/// Raft quorum of `n` managers: a strict majority.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Reachable managers (Raft members) other than `down`, and whether they still hold quorum of
/// all managers. Raft's quorum is reachability: a member whose `Status.State` a new leader
/// has not yet confirmed (`unknown`) still votes.
pub fn quorum_without(nodes: &[NodeView], down: &str) -> (usize, usize, bool) {
    let others = nodes.iter().filter(|n| n.id != down && n.reachable).count();
    let q = quorum(nodes.len());
    (others, q, others >= q)
}

/// The version in a release's file name (`swarmseal_V.tar`).
pub fn release_version(release: &Path) -> Option<String> {
    let name = release.file_name()?.to_str()?;
    let v = name.strip_prefix("swarmseal_")?.strip_suffix(".tar")?;
    is_version(v).then(|| v.to_string())
}

/// A release version as `scripts/build-image --version` accepts it: ASCII letters, digits, `.`
/// and `-`, starting with a letter or digit (so it needs no escaping in a URL query).
pub fn is_version(v: &str) -> bool {
    v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// The release tar at `path` from byte `offset` on as a streamed request body (its exact
/// length announced).
async fn release_body(path: &Path, offset: u64) -> std::io::Result<ReqBody> {
    use tokio::io::AsyncSeekExt as _;
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len().saturating_sub(offset);
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    Ok(FileBody { file, len, buf: vec![0u8; 64 * 1024].into_boxed_slice() }.boxed())
}

/// How many times an upload cut mid-way is resumed before giving up.
pub(crate) const UPLOAD_RESUMES: u32 = 3;
/// How long, after a cut, the manager is asked what it holds (it answers 409 while the cut
/// upload still holds its staging lock, up to the agent's 60 s idle limit, and not at all
/// while it restarts).
const RESUME_WAIT: Duration = Duration::from_secs(150);
/// How long to ask what is held after an answer (400/409): the agent let go of the upload
/// before it answered, so this is a single question, repeated only while another holds it.
const ANSWERED_WAIT: Duration = Duration::from_secs(10);

/// SHA-256 (hex) of the `SHA256SUMS` member at the start of the release tar at `path`: which
/// release it is, as the manager's `GET /swarmseal/v1/update/partial` names it.
async fn release_sums(path: &Path) -> Result<String, String> {
    use sha2::Digest as _;
    let f = tokio::fs::File::open(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    let mut tar = swarmseal_release::tar::Reader::new(tokio::io::BufReader::new(f), u64::MAX);
    let not = |e: String| format!("{}: not a release ({e})", path.display());
    let m = tar.next().await.map_err(|e| not(e.to_string()))?.filter(|m| m.name == crate::update::SUMS).ok_or_else(|| not(format!("it does not start with {}", crate::update::SUMS)))?;
    let sums = tar.small(&m, swarmseal_release::MAX_SUMS).await.map_err(|e| not(e.to_string()))?;
    Ok(hex::encode(sha2::Sha256::digest(&sums)))
}

/// What the manager holds of an interrupted upload of the release `sums` (`GET
/// /swarmseal/v1/update/partial`): the byte to resume from, 0 when nothing (or another
/// release, or an agent without resumable uploads: 404). While the manager is busy (409),
/// unavailable (5xx: over a connection cap, restarting) or does not answer, asked again each
/// second until `wait` has passed. Errors: a refusal (403, …), or the last answer.
async fn held_offset(m: &Manager, sums: &str, wait: Duration) -> Result<u64, String> {
    let until = Instant::now() + wait;
    loop {
        let last = match m.call(Method::GET, "/swarmseal/v1/update/partial", empty(), REQUEST_TIMEOUT).await {
            Ok((status, body)) if status.is_success() => {
                let held: Option<crate::update::Held> = serde_json::from_slice::<Value>(&body).ok().and_then(|v| serde_json::from_value(v["partial"].clone()).ok());
                return Ok(held.filter(|h| h.sums_sha256 == sums).map_or(0, |h| h.offset));
            }
            Ok((StatusCode::NOT_FOUND, _)) => return Ok(0),
            Ok((status, body)) if status != StatusCode::CONFLICT && !status.is_server_error() => return Err(format!("GET /swarmseal/v1/update/partial: HTTP {status}: {}", answer_message(&body))),
            Ok((status, body)) => format!("HTTP {status}: {}", answer_message(&body)),
            Err(e) => e,
        };
        if Instant::now() >= until {
            return Err(format!("the manager did not say what it holds of the upload within {} s: {last}", wait.as_secs()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Why [`upload_release`] gave up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// The release file cannot be read, or is not a release tar.
    #[error("{0}")]
    File(String),
    /// The manager cannot be reached, or the upload was cut more often than it is resumed.
    #[error("{0}")]
    Cut(String),
}

/// Upload the release tar at `release` to `POST <path>` (`/swarmseal/v1/update[?reboot=1]`),
/// resuming it: what the manager already holds of this release is not sent again, and a cut
/// (a connection error mid-upload, or the manager's 400 for a stalled body or 409 for another
/// offset, when it still holds part of this release) is followed by asking what it holds and
/// sending the rest, at most [`UPLOAD_RESUMES`] times, each said with `say` (`resumed at N
/// bytes (X %)`).
/// Returns the manager's answer to the last request; errors: [`UploadError`].
pub(crate) async fn upload_release(m: &Manager, path: &str, release: &Path, say: &dyn Fn(String)) -> Result<(StatusCode, Bytes), UploadError> {
    let total = tokio::fs::metadata(release).await.map_err(|e| UploadError::File(format!("{}: {e}", release.display())))?.len();
    let sums = release_sums(release).await.map_err(UploadError::File)?;
    let resume_at = |offset: u64| {
        say(format!("resumed at {offset} bytes ({:.0} %)", offset as f64 * 100.0 / total.max(1) as f64));
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}resume={offset}&sums={sums}")
    };
    // A kept part of this very release (an earlier run cut, the agent restarted): continued.
    let mut offset = held_offset(m, &sums, Duration::ZERO).await.unwrap_or(0);
    let mut cuts = 0;
    loop {
        let target = if offset == 0 { path.to_string() } else { resume_at(offset) };
        let body = release_body(release, offset).await.map_err(|e| UploadError::File(format!("{}: {e}", release.display())))?;
        match m.call(Method::POST, &target, body, UPLOAD_TIMEOUT).await {
            // The agent's own end of a cut: its idle timeout (400, the part kept) or another
            // offset than it holds (409). When it holds part of this release, that is resumed;
            // otherwise (a refusal, which discards the part) its answer stands.
            Ok((status, answer)) if cuts < UPLOAD_RESUMES && (status == StatusCode::BAD_REQUEST || status == StatusCode::CONFLICT) => {
                match held_offset(m, &sums, ANSWERED_WAIT).await {
                    Ok(held) if held > 0 => {
                        cuts += 1;
                        say(format!("upload refused (HTTP {status}: {}) with part of it kept; resuming (resume {cuts} of {UPLOAD_RESUMES})", answer_message(&answer)));
                        offset = held;
                    }
                    _ => return Ok((status, answer)),
                }
            }
            Ok(answer) => return Ok(answer),
            Err(e) if cuts < UPLOAD_RESUMES => {
                cuts += 1;
                say(format!("upload cut ({e}); asking the manager what it holds (resume {cuts} of {UPLOAD_RESUMES})"));
                offset = held_offset(m, &sums, RESUME_WAIT).await.map_err(|why| UploadError::Cut(format!("{e}; then {why}")))?;
                if offset == 0 {
                    say("the manager holds nothing of this release: uploading it from the start".into());
                }
            }
            Err(e) => return Err(UploadError::Cut(format!("{e} (cut {cuts} times, not resumed again)"))),
        }
    }
}

/// A file as a streamed request body (64 KiB frames, exact length).
struct FileBody {
    file: tokio::fs::File,
    len: u64,
    buf: Box<[u8]>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let mut rb = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled()))))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// Progress lines with the time since the start.
struct Clock(Instant);

impl Clock {
    fn say(&self, msg: impl std::fmt::Display) {
        println!("[{:5.0}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

/// `swarmseal fleet update`.
pub async fn run(c: FleetCommand) -> Result<(), FleetError> {
    match c {
        FleetCommand::Update(a) => update(a).await,
        FleetCommand::Attest(a) => crate::attest::run(a).await,
    }
}

async fn update(a: UpdateArgs) -> Result<(), FleetError> {
    let clock = Clock(Instant::now());
    let version = release_version(&a.release)
        .ok_or_else(|| FleetError::Usage(format!("{}: not a release (expected swarmseal_VERSION.tar from `scripts/build-image --release`)", a.release.display())))?;
    let meta = std::fs::metadata(&a.release).map_err(|e| FleetError::Usage(format!("{}: {e}", a.release.display())))?;
    if let Some(k) = &a.public_key {
        let key = crate::update::load_key(k).map_err(|e| FleetError::Usage(e.to_string()))?;
        let f = tokio::fs::File::open(&a.release).await.map_err(|e| FleetError::Usage(format!("{}: {e}", a.release.display())))?;
        let m = crate::update::verify_tar(&key, tokio::io::BufReader::with_capacity(256 << 10, f))
            .await
            .map_err(|e| FleetError::Usage(format!("{}: refused before touching any manager: {e}", a.release.display())))?;
        if m.version != version {
            return Err(FleetError::Usage(format!("{}: its SHA256SUMS is for version {}, its name says {version}", a.release.display(), m.version)));
        }
        clock.say(format_args!("release {version}: signature and hashes verified against {}", k.display()));
    }
    if a.contexts.is_empty() || a.contexts.iter().any(String::is_empty) {
        return Err(FleetError::Usage("give the managers as --contexts m1,m2,m3".into()));
    }
    let managers: Vec<Manager> = a.contexts.iter().map(|c| Manager::from_context(&a.docker, c)).collect::<Result<_, _>>()?;
    // With the fleet's key each manager is attested after its reboot, as `fleet attest` does.
    let verifier = match &a.public_key {
        // The Secure Boot row fails without one of these: say so before a manager is touched,
        // not after the first one was updated and rebooted.
        Some(_) if a.attest.secure_boot_cert.is_none() && !a.attest.allow_any_secure_boot_keys => {
            return Err(FleetError::Usage("with --public-key each manager is attested after its reboot: give --secure-boot-cert (the fleet's db certificate, keys/secure-boot.crt) or --allow-any-secure-boot-keys".into()))
        }
        Some(k) => Some(crate::attest::Verifier::new(&a.docker, Some(k.as_path()), &a.attest)?),
        None => None,
    };
    let poll = Duration::from_secs(a.poll.max(1));

    // Who is who, and where every manager stands. A manager that is not healthy now stops
    // the run before anything is touched.
    let all: Vec<String> = managers.iter().map(|m| m.context.clone()).collect();
    let not_started = |at: &str, reason: String| FleetError::Stopped { at: at.into(), reason, done: "none".into(), rest: list_or_none(&all) };
    let mut ids = Vec::new();
    for m in &managers {
        let s = m.status().await.map_err(|e| not_started(&m.context, format!("its agent does not answer: {e}")))?;
        let id = s.node_id.clone().filter(|_| s.state == "active").ok_or_else(|| not_started(&m.context, format!("swarm state {} (not an active manager)", s.state)))?;
        let Some(have) = s.version.clone() else {
            return Err(not_started(&m.context, "its agent does not report an image version (GET /swarmseal/v1/status has no image.version): update it by hand".into()));
        };
        clock.say(format_args!("{}: node {}, version {have}", m.context, &id[..id.len().min(12)]));
        ids.push((id, have));
    }
    let nodes = managers[0].managers().await.map_err(|e| not_started(&managers[0].context, e))?;
    if nodes.len() != managers.len() || !ids.iter().all(|(id, _)| nodes.iter().any(|n| &n.id == id)) {
        return Err(FleetError::Usage(format!(
            "the swarm has {} managers ({}); --contexts names {}: give every manager exactly once",
            nodes.len(),
            nodes.iter().map(|n| n.hostname.as_str()).collect::<Vec<_>>().join(", "),
            managers.len()
        )));
    }
    // Followers first, the leader last (one leader election, not several).
    let mut order: Vec<usize> = (0..managers.len()).collect();
    order.sort_by_key(|&i| nodes.iter().any(|n| n.id == ids[i].0 && n.leader));
    let todo: Vec<usize> = order.into_iter().filter(|&i| ids[i].1 != version).collect();
    for (i, (_, have)) in ids.iter().enumerate() {
        if have == &version {
            clock.say(format_args!("{}: already at {version}, skipped", managers[i].context));
        }
    }
    clock.say(format_args!(
        "release {version} ({} MB): {} of {} managers to update, in this order: {} (quorum {})",
        meta.len() / 1_000_000,
        todo.len(),
        managers.len(),
        todo.iter().map(|&i| managers[i].context.as_str()).collect::<Vec<_>>().join(", "),
        quorum(managers.len())
    ));

    let mut done: Vec<String> = Vec::new();
    // Whether todo[k]'s partitions were written while the manager before it rebooted.
    let mut prestaged = vec![false; todo.len()];
    for (k, &i) in todo.iter().enumerate() {
        let m = &managers[i];
        let stop = |reason: String, done: &[String]| FleetError::Stopped {
            at: m.context.clone(),
            reason,
            done: list_or_none(done),
            rest: list_or_none(&todo[k + 1..].iter().map(|&j| managers[j].context.clone()).collect::<Vec<_>>()),
        };
        let t = Instant::now();
        let others: Vec<&Manager> = managers.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, o)| o).collect();
        // Quorum first: everyone healthy, and the others a majority without this one.
        let nodes = ask_others(&others).await.map_err(|e| stop(format!("no other manager answers GET /nodes: {e}"), &done))?;
        if let Some(bad) = nodes.iter().find(|n| !n.healthy) {
            return Err(stop(format!("manager {} ({}) is not Ready/Reachable: fix it before updating more managers", bad.hostname, &bad.id[..bad.id.len().min(12)]), &done));
        }
        let (others_ok, q, holds) = quorum_without(&nodes, &ids[i].0);
        if !holds {
            return Err(stop(format!("taking it down would leave {others_ok} of {} managers, below quorum {q}", nodes.len()), &done));
        }
        clock.say(format_args!("{}: uploading the release ({others_ok} of {} managers stay up, quorum {q})", m.context, nodes.len()));
        let say = |line: String| clock.say(format_args!("{}: {line}", m.context));
        let mut answered = None;
        if prestaged[k] {
            // Its root and root-verity were written while the previous manager rebooted: the
            // UKI is what remains (the release is verified again on the manager first).
            let path = format!("/swarmseal/v1/update?staged={}&reboot=1", query_escape(&version));
            match m.call(Method::POST, &path, empty(), UPLOAD_TIMEOUT).await {
                Ok((status, answer)) if status == StatusCode::CONFLICT => say(format!("its pre-staged release is gone ({}): uploading it", answer_message(&answer))),
                Ok(answer) => answered = Some(answer),
                Err(e) => return Err(stop(format!("installing its pre-staged release failed: {e}"), &done)),
            }
        }
        let (status, answer) = match answered {
            Some(answer) => answer,
            None => upload_release(m, "/swarmseal/v1/update?reboot=1", &a.release, &say).await.map_err(|e| stop(format!("upload failed: {e}"), &done))?,
        };
        if !status.is_success() {
            return Err(stop(format!("the manager refused the release: HTTP {status}: {}", answer_message(&answer)), &done));
        }
        clock.say(format_args!("{}: {} and rebooting ({:.0} s)", m.context, if prestaged[k] { "UKI installed" } else { "staged" }, t.elapsed().as_secs_f64()));
        // While it reboots, the next manager's partitions are written (no boot entry, no
        // reboot: it stays a voting manager). A failure there only means it gets the whole
        // release at its turn.
        let next = todo.get(k + 1).filter(|_| !a.no_prestage).map(|&j| &managers[j]);
        let prestage = async {
            let n = next?;
            let say = |line: String| clock.say(format_args!("{}: {line}", n.context));
            say(format!("writing {version}'s partitions into its inactive slot while {} reboots", m.context));
            let t = Instant::now();
            Some(match upload_release(n, "/swarmseal/v1/update?stage=1", &a.release, &say).await {
                Ok((status, _)) if status.is_success() => {
                    say(format!("partitions of {version} written, no boot entry yet ({:.0} s)", t.elapsed().as_secs_f64()));
                    true
                }
                Ok((status, answer)) => {
                    say(format!("pre-staging refused (HTTP {status}: {}): it gets the whole release at its turn", answer_message(&answer)));
                    false
                }
                Err(e) => {
                    say(format!("pre-staging failed ({e}): it gets the whole release at its turn"));
                    false
                }
            })
        };
        let mut prestage = std::pin::pin!(prestage);
        let mut back = std::pin::pin!(wait_back(m, &ids[i].0, &version, &others, Duration::from_secs(a.timeout), poll, &clock));
        let mut staged_next = None;
        let back = loop {
            tokio::select! {
                r = &mut back => break r,
                r = &mut prestage, if staged_next.is_none() => staged_next = Some(r),
            }
        };
        // A stop drops the pre-staging in flight: a partial upload stays resumable, written
        // partitions without a UKI boot nothing (the next release overwrites them).
        if back.is_ok() {
            let staged = match staged_next {
                Some(s) => s,
                None => prestage.await,
            };
            if let Some(p) = prestaged.get_mut(k + 1) {
                *p = staged == Some(true);
            }
        }
        match back {
            Ok((min_up, no_answer)) => {
                // While the leader reboots, the others answer GET /nodes only once they elected a
                // new one: that gap is reported as such, not as "0 reachable".
                let election = if no_answer.is_zero() { String::new() } else { format!("; no manager could answer GET /nodes for {} s (leader election)", no_answer.as_secs()) };
                let fewest = if min_up == usize::MAX { "?".to_string() } else { min_up.to_string() };
                clock.say(format_args!(
                    "{}: back on {version}, unlocked, Ready/Reachable after {:.0} s (at least {fewest} of {} managers reachable whenever asked{election})",
                    m.context,
                    t.elapsed().as_secs_f64(),
                    nodes.len()
                ));
                done.push(m.context.clone());
            }
            Err(reason) => return Err(stop(reason, &done)),
        }
        match &verifier {
            Some(v) => {
                let report = v.attest(&m.context).await?;
                report.print(&m.context);
                let failed = report.failed();
                if !failed.is_empty() {
                    return Err(stop(format!("updated, but its attestation after the reboot failed ({}): see its table; the managers after it are not touched", failed.join(", ")), &done));
                }
                clock.say(format_args!("{}: attested on {version} (quote, event logs, PCR 11 signed by the fleet key, phase marker, Secure Boot)", m.context));
            }
            None => clock.say(format_args!("{}: not attested (no --public-key: give the fleet's key to attest each manager after its reboot)", m.context)),
        }
    }
    clock.say(format_args!("done: {} updated to {version}, quorum kept throughout", list_or_none(&done)));
    Ok(())
}

/// `v` for a query value: RFC 3986 unreserved bytes as they are, the rest percent-encoded
/// (a version may hold `^` and `~`).
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// `GET /nodes` from the first of `others` that answers.
async fn ask_others(others: &[&Manager]) -> Result<Vec<NodeView>, String> {
    let mut last = String::from("no other manager");
    for o in others {
        match o.managers().await {
            Ok(n) => return Ok(n),
            Err(e) => last = format!("{}: {e}", o.context),
        }
    }
    Err(last)
}

/// Wait until `m` went down and came back active on `version` and the others see it
/// Ready/Reachable. Meanwhile the others must keep a majority. Returns the fewest
/// reachable managers seen in an answer, and the longest time no other manager answered
/// `GET /nodes` (an election after the leader went down; more than 60 s is an error).
async fn wait_back(m: &Manager, id: &str, version: &str, others: &[&Manager], timeout: Duration, poll: Duration, clock: &Clock) -> Result<(usize, Duration), String> {
    let start = Instant::now();
    let mut went_down = false;
    let mut no_quorum_since: Option<Instant> = None;
    let mut min_up = usize::MAX;
    let mut no_answer_since: Option<Instant> = None;
    let mut longest_no_answer = Duration::ZERO;
    let mut last_state = String::new();
    loop {
        if start.elapsed() > timeout {
            return Err(format!("not back unlocked on {version} within {} s (last seen: {last_state}); check its console", timeout.as_secs()));
        }
        tokio::time::sleep(poll).await;
        // The rest of the swarm: quorum must hold.
        match ask_others(others).await {
            Ok(nodes) => {
                if let Some(t) = no_answer_since.take() {
                    longest_no_answer = longest_no_answer.max(t.elapsed());
                }
                let up = nodes.iter().filter(|n| n.reachable).count();
                min_up = min_up.min(up);
                let (others_ok, q, holds) = quorum_without(&nodes, id);
                if holds {
                    no_quorum_since = None;
                } else {
                    let since = *no_quorum_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > QUORUM_GRACE {
                        return Err(format!("quorum lost: only {others_ok} of {} managers reachable (quorum {q}) for {} s", nodes.len(), since.elapsed().as_secs()));
                    }
                }
                let me = nodes.iter().find(|n| n.id == id);
                if went_down {
                    if let (Some(me), Ok(s)) = (me, m.status().await) {
                        let state = format!("swarm {} on version {}", s.state, s.version.as_deref().unwrap_or("?"));
                        if state != last_state {
                            clock.say(format_args!("{}: {state}", m.context));
                            last_state = state;
                        }
                        match s.version.as_deref() {
                            Some(v) if v == version && s.state == "active" && me.healthy => return Ok((min_up, longest_no_answer)),
                            Some(v) if v != version && s.state == "active" => {
                                return Err(format!(
                                    "came back on version {v}, not {version}: the new version failed its boot assessment and the boot loader rolled back (its journal says why)"
                                ));
                            }
                            _ => {}
                        }
                    }
                } else if me.is_some_and(|n| !n.healthy) || m.status().await.is_err() {
                    went_down = true;
                    clock.say(format_args!("{}: down (rebooting)", m.context));
                }
            }
            Err(e) => {
                no_answer_since.get_or_insert_with(Instant::now);
                let since = *no_quorum_since.get_or_insert_with(Instant::now);
                if since.elapsed() > QUORUM_GRACE {
                    return Err(format!("quorum lost: no other manager answers GET /nodes for {} s ({e})", since.elapsed().as_secs()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, healthy: bool, leader: bool) -> serde_json::Value {
        serde_json::json!({
            "ID": id, "Description": {"Hostname": format!("h-{id}")},
            "Status": {"State": if healthy {"ready"} else {"down"}},
            "ManagerStatus": {"Leader": leader, "Reachability": if healthy {"reachable"} else {"unreachable"}}
        })
    }

    #[test]
    fn quorum_math() {
        assert_eq!((quorum(1), quorum(2), quorum(3), quorum(4), quorum(5)), (1, 2, 2, 3, 3));
        let v = serde_json::json!([node("a", true, true), node("b", true, false), node("c", true, false),
            {"ID": "w", "Status": {"State": "ready"}, "ManagerStatus": null}]);
        let nodes = parse_nodes(&v);
        assert_eq!(nodes.len(), 3, "workers are not managers");
        assert!(nodes[0].leader && nodes[0].healthy);
        assert_eq!(quorum_without(&nodes, "b"), (2, 2, true));
        // One manager already down: taking another down loses quorum.
        let v = serde_json::json!([node("a", true, true), node("b", true, false), node("c", false, false)]);
        assert_eq!(quorum_without(&parse_nodes(&v), "b"), (1, 2, false));
        // Right after an election the new leader reports members `unknown` until they
        // heartbeat: still reachable Raft members, so quorum holds; not yet healthy.
        let mut fresh = node("c", true, false);
        fresh["Status"]["State"] = "unknown".into();
        let nodes = parse_nodes(&serde_json::json!([node("a", true, true), node("b", true, false), fresh]));
        assert!(nodes[2].reachable && !nodes[2].healthy);
        assert_eq!(quorum_without(&nodes, "b"), (2, 2, true));
        // A single manager can never be updated without losing quorum.
        assert!(!quorum_without(&parse_nodes(&serde_json::json!([node("a", true, true)])), "a").2);
    }

    #[test]
    fn versions_from_release_names() {
        assert_eq!(release_version(Path::new("build/release/swarmseal_1.0.1.tar")).as_deref(), Some("1.0.1"));
        assert_eq!(release_version(Path::new("swarmseal_0.0.57.g1a2b3c.tar")).as_deref(), Some("0.0.57.g1a2b3c"));
        for bad in ["swarmseal_.tar", "other_1.0.tar", "swarmseal_1.0.tar.gz", "swarmseal_1+3.tar", "swarmseal_../x.tar"] {
            assert_eq!(release_version(Path::new(bad)), None, "{bad}");
        }
    }
}
