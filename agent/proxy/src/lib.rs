//! The mutual-TLS proxy: the only network door to the engine's unix socket
//! (`docs/proxy.md`: roles, endpoints, limits, audit).
//!
//! - TLS 1.3 only (rustls, ring); a client certificate signed by the client CA
//!   and within its validity is required by the handshake ([`tls`]).
//! - Identity = the certificate's Subject CN, role = its Subject OU
//!   (`admin` | `readonly`, the convention of Docker's own node certificates);
//!   no or another OU: every request is denied with 403 ([`authz`]).
//! - Optional HTTP basic auth on top ([`basic`]).
//! - HTTP/1.1 through hyper to the engine socket: streaming responses, chunked
//!   bodies, `101 Switching Protocols` with a raw bidirectional copy that
//!   honours half-close (`docker exec -it`, `attach`, `run -it`) ([`forward`]).
//! - The agent's endpoints under `/swarmseal/v1/` ([`Route`]), answered through [`AgentApi`];
//!   every refusal is an [`ApiError`], whose kind decides the HTTP status ([`error`]).
//! - One audit line per request (target `swarmseal::audit`), security events
//!   for requests touching the unlock key (target `swarmseal::security`).
//! - Capacity ([`slots`]): TLS handshakes have their own small pool (per source
//!   address and in all) and must end within `handshake_timeout_secs`; only a
//!   connection with a verified certificate takes one of `max_connections`,
//!   capped per role and per certificate, with `admin_reserved_connections`
//!   kept for the admin role; long streams are capped per certificate.
//! - Timeouts: every request head within `header_timeout_secs`; a request body
//!   that stops (no byte for `body_timeout_secs` while the client still owes
//!   body bytes and no answer has started) closes the connection; a keep-alive
//!   connection with no request in flight is closed after `idle_timeout_secs`
//!   (never an upgraded connection or a streaming response: those live as long
//!   as they do); request heads are limited to 64 KiB.
//!
//! The crate holds no TPM code (`cargo tree -p swarmseal-proxy` shows no tss-esapi): the agent
//! plugs in through [`AgentApi`] and [`ProxySettings`].

#![forbid(unsafe_code)]

pub mod authz;
pub mod basic;
pub mod config;
pub mod error;
mod forward;
pub mod gojson;
pub mod pki;
pub mod policy;
pub mod redact;
pub mod route;
pub mod slots;
pub mod tls;

pub use config::{ProxyConfig, ProxySettings};
pub use error::{ApiError, ApiErrorKind, ProxyError};
pub use forward::key_from_body;
pub use route::Route;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use swarmseal_common::secret::UnlockKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::instrument::WithSubscriber;

use slots::{ConnSlot, HandshakeSlot, Refusal, RefusalLog, Slots, StreamSlot};

/// A boxed, sendable future (the shape of [`AgentApi`]'s async methods).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the agent offers on `/swarmseal/v1/` (implemented by `boot`).
pub trait AgentApi: Send + Sync + 'static {
    /// The process's metrics, shared with the proxy (it counts requests and connections there);
    /// `GET /swarmseal/v1/metrics` encodes them. Asked once when the proxy starts. The default
    /// is a set of its own (only the proxy's series move).
    fn metrics(&self) -> Arc<swarmseal_common::metrics::Metrics> {
        Arc::default()
    }
    /// `GET /swarmseal/v1/status` body (JSON).
    fn status(&self) -> BoxFuture<'_, serde_json::Value>;
    /// `GET /swarmseal/v1/bench`: the last bench report (docker-bench-security JSON), if any.
    fn bench(&self) -> BoxFuture<'_, Option<Vec<u8>>>;
    /// `POST /swarmseal/v1/reseal`: Ok(JSON) or the refusal.
    fn reseal(&self) -> BoxFuture<'_, Result<serde_json::Value, ApiError>>;
    /// `POST /swarmseal/v1/recover`, body: empty, or the swarm's current unlock key (when the
    /// TPM cannot unseal it; read by [`key_from_body`]): lost-quorum recovery (the agent's
    /// `recover` module). Ok(JSON) or the refusal; the new key is never in the answer. The
    /// default answers 404.
    fn recover(&self, key: Option<UnlockKey>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        drop(key);
        Box::pin(async { Err(ApiError::not_found("not available here: recovery runs in the agent")) })
    }
    /// `POST /swarmseal/v1/var/enroll-tpm`, body: the `/var` recovery key (text):
    /// bind the appliance's `/var` to this machine's TPM again. Ok(JSON) or the refusal.
    /// The default answers 404 (not the appliance).
    fn var_enroll_tpm(&self, recovery_key: zeroize::Zeroizing<String>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        drop(recovery_key);
        Box::pin(async { Err(ApiError::not_found("not available here: /var re-enrollment exists on the appliance image only")) })
    }
    /// `POST /swarmseal/v1/update[?reboot=1]` with a release tar as the body
    /// ([`UpdateFrom::Upload`]), or `POST /swarmseal/v1/update?version=V[&reboot=1]` with an
    /// empty body ([`UpdateFrom::Source`]: fetched from `[update] source`), or
    /// `?resume=N&sums=HEX` with the rest of an interrupted upload ([`UpdateFrom::Resume`]),
    /// or `?staged=V` with an empty body (the release this manager already holds,
    /// [`UpdateFrom::Staged`]): verify and stage it, have the apply service install it as
    /// `install` says (the agent's `update` module; `?stage=1` is
    /// [`UpdateInstall::PartitionsOnly`]). Ok(JSON `{"version","staged":true,"reboot",
    /// "partitions_only"}`) or the refusal. The default answers 404 (no update support here).
    fn update(&self, from: UpdateFrom, install: UpdateInstall) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        drop((from, install));
        Box::pin(async { Err(ApiError::not_found("not available here: image updates exist on the appliance agent only")) })
    }
    /// `POST /swarmseal/v1/var/firmware-window`: arm a firmware window for `days` with the
    /// `/var` recovery key (`Some`), or wipe it (`None`, `?disarm=1`). Ok(JSON) or the refusal.
    /// The default answers 404 (not the appliance).
    fn var_firmware_window(&self, arm: Option<(u32, zeroize::Zeroizing<String>)>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        drop(arm);
        Box::pin(async { Err(ApiError::not_found("not available here: the firmware window exists on the appliance image only")) })
    }
    /// `GET /swarmseal/v1/update/partial`: what this manager holds of an interrupted upload,
    /// `{"partial": null}` or `{"partial": {"version", "sums_sha256", "offset"}}` (resume with
    /// [`UpdateFrom::Resume`]). The default answers 404 (no update support here).
    fn update_partial(&self) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        Box::pin(async { Err(ApiError::not_found("not available here: image updates exist on the appliance agent only")) })
    }
    /// `GET /swarmseal/v1/attest?nonce=HEX`: a TPM2_Quote with `nonce` (16 to 64 bytes, checked
    /// by the proxy) as qualifyingData, and what verifies it (docs/attestation.md). Ok(JSON) or
    /// the refusal. The default answers 404 (no TPM here).
    fn attest(&self, nonce: Vec<u8>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        drop(nonce);
        Box::pin(async { Err(ApiError::not_found("not available here: attestation needs the agent's TPM")) })
    }
    /// `POST /swarmseal/v1/attest/activate`: TPM2_ActivateCredential of `credential_blob`
    /// (TPM2B_ID_OBJECT) and `secret` (TPM2B_ENCRYPTED_SECRET), made by the verifier for the
    /// AK's Name with the EK certificate's key (docs/attestation.md). Ok(JSON `{"cert_info":
    /// base64}`) or the refusal (422: the TPM refused the credential; 503: TPM down). The
    /// default answers 404 (no TPM here).
    fn attest_activate(&self, credential_blob: Vec<u8>, secret: Vec<u8>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        drop((credential_blob, secret));
        Box::pin(async { Err(ApiError::not_found("not available here: credential activation needs the agent's TPM")) })
    }
    /// `GET /swarmseal/v1/escrow` (the unlock key) and
    /// `GET /swarmseal/v1/escrow/var-recovery-key` (the appliance's `/var`
    /// recovery key): the age-encrypted file, if it exists.
    fn escrow(&self, file: EscrowFile) -> BoxFuture<'_, Option<Vec<u8>>>;
}

/// The request body of `POST /swarmseal/v1/update` as it arrives (HTTP body frames of bytes;
/// an error when the client breaks or cuts it). The bytes are counted for the audit line and
/// never logged.
pub type UpdateBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// Where the release of `POST /swarmseal/v1/update` comes from.
pub enum UpdateFrom {
    /// The request body (`content_length` when the client sent one).
    Upload { body: UpdateBody, content_length: Option<u64> },
    /// `?resume=OFFSET&sums=HEX`: the rest of an interrupted upload, the release tar from byte
    /// `offset` on, of the release whose `SHA256SUMS` has SHA-256 `sums_sha256` (64 hex digits).
    Resume { body: UpdateBody, content_length: Option<u64>, offset: u64, sums_sha256: String },
    /// `?version=V` with an empty body: `<[update] source>swarmseal_V.tar`. `version` is the
    /// query value as sent (percent-decoded), not yet validated.
    Source { version: String },
    /// `?staged=V` with an empty body: the release V this manager already staged (an earlier
    /// `?stage=1`), verified again before it is installed. `version` is the query value as sent.
    Staged { version: String },
}

/// What `POST /swarmseal/v1/update` installs of the verified release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateInstall {
    /// Every partition and the UKI (the new boot default); `systemctl reboot` after when
    /// `reboot` (`?reboot=1`).
    Full { reboot: bool },
    /// `?stage=1`: only the root and root-verity partitions of the inactive slot, no UKI and
    /// no reboot, so nothing boots it yet; a later `?staged=V` installs the rest.
    PartitionsOnly,
}

/// Which escrow file an admin asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscrowFile {
    /// `<state_dir>/escrow/unlock-key.age`
    UnlockKey,
    /// `<state_dir>/escrow/var-recovery-key.age`
    VarRecoveryKey,
}

/// Largest request head accepted (hyper answers 431 beyond).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Settings shared by all connections.
pub(crate) struct Shared {
    pub api: Arc<dyn AgentApi>,
    pub socket: PathBuf,
    pub basic: Option<basic::BasicAuth>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub slots: Arc<Slots>,
    pub refusals: RefusalLog,
    /// The configured roles (the certificate's OU names one).
    pub roles: policy::Roles,
    /// Requests and connections are counted here ([`AgentApi::metrics`]).
    pub metrics: Arc<swarmseal_common::metrics::Metrics>,
}

/// A bound proxy listener, not yet serving (lets callers learn the port first).
pub struct Proxy {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    basic: Option<basic::BasicAuth>,
    socket: PathBuf,
    roles: policy::Roles,
    limits: slots::Limits,
    header_timeout: Duration,
    body_timeout: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
}

impl Proxy {
    /// Load the certificates (and htpasswd) and bind `[proxy] listen`.
    pub async fn bind(cfg: &impl ProxySettings) -> Result<Proxy, ProxyError> {
        let paths = pki::PkiPaths::of(cfg);
        let tls = tls::server_config(&paths.ca_cert, &paths.server_cert, &paths.server_key)?;
        let p = cfg.proxy();
        let basic = match &p.htpasswd {
            Some(p) => Some(basic::BasicAuth::load(p)?),
            None => None,
        };
        let roles = policy::Roles::from_config(&cfg.roles()).map_err(|e| ProxyError::Usage(e.to_string()))?;
        let addr = p.listen;
        let limits = slots::Limits::of(p);
        raise_fd_limit(&limits);
        let listener = TcpListener::bind(addr).await.map_err(|source| ProxyError::Listen { addr, source })?;
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Ok(Proxy {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            basic,
            socket: cfg.docker_socket(),
            roles,
            limits,
            header_timeout: secs(p.header_timeout_secs),
            body_timeout: secs(p.body_timeout_secs),
            idle_timeout: secs(p.idle_timeout_secs),
            handshake_timeout: secs(p.handshake_timeout_secs),
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serve until `shutdown` resolves; then stop accepting, let open
    /// connections finish their current request (at most 10 s) and return.
    pub async fn run(self, api: Arc<dyn AgentApi>, shutdown: impl Future<Output = ()> + Send) -> Result<(), ProxyError> {
        tracing::info!(
            listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            limits = ?self.limits,
            "proxy listening (TLS 1.3, client certificate required)"
        );
        let shared = Arc::new(Shared {
            metrics: api.metrics(),
            api,
            socket: self.socket,
            basic: self.basic,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
            slots: Slots::new(self.limits),
            refusals: RefusalLog::default(),
            roles: self.roles,
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut sweep = tokio::time::interval(Duration::from_secs(5));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = sweep.tick() => shared.refusals.flush(false),
                r = self.listener.accept() => {
                    let (tcp, peer) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let hs = match shared.slots.handshake(peer.ip()) {
                        Ok(hs) => hs,
                        Err(why) => {
                            // Closed at once: no TLS work, no task, for what no certificate vouches for.
                            drop(tcp);
                            shared.refusals.note(peer.ip(), Refusal::Busy, &why);
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let fut = handle_conn(shared.clone(), self.acceptor.clone(), tcp, peer, hs, stop_rx.clone());
                    tokio::spawn(fut.with_current_subscriber());
                }
            }
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while shared.slots.busy() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        shared.refusals.flush(true);
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Bind `[proxy] listen` and serve until `shutdown` resolves.
pub async fn serve(
    cfg: &impl ProxySettings,
    api: Arc<dyn AgentApi>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    Proxy::bind(cfg).await?.run(api, shutdown).await
}

/// Per-connection activity, for the header, body and idle timeouts.
pub(crate) struct ConnState {
    start: Instant,
    in_flight: AtomicUsize,
    /// ms since start (+1) when the current request head started; 0 = none.
    head_started: AtomicU64,
    /// ms since start (+1) of the last byte from the client (or the last request's end).
    last: AtomicU64,
    /// ms since start (+1) since the last read found no byte waiting; 0 = the last read got bytes.
    blocked_since: AtomicU64,
    /// The current request has a body and its answer has not started.
    answer_pending: AtomicBool,
    /// The current request's body length: 0 none, `u64::MAX` unknown (chunked).
    body_len: AtomicU64,
    /// Body bytes of the current request passed on so far (shared with its audit record).
    body_seen: std::sync::Mutex<Arc<AtomicU64>>,
    /// Set once the current request's body has been read to its end, by whoever read it
    /// (forwarded, inspected, or taken by an agent endpoint): nothing is owed after that,
    /// however long the answer takes (a chunked `docker load`, a 25 s recovery).
    body_ended: std::sync::Mutex<Arc<AtomicBool>>,
}

impl ConnState {
    fn new() -> ConnState {
        // Waiting for the first request head from the start.
        ConnState {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(1),
            last: AtomicU64::new(1),
            blocked_since: AtomicU64::new(0),
            answer_pending: AtomicBool::new(false),
            body_len: AtomicU64::new(0),
            body_seen: std::sync::Mutex::new(Arc::new(AtomicU64::new(0))),
            body_ended: std::sync::Mutex::new(Arc::new(AtomicBool::new(false))),
        }
    }
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
    fn on_read(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        self.blocked_since.store(0, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    fn on_blocked(&self) {
        let _ = self.blocked_since.compare_exchange(0, self.now(), Ordering::AcqRel, Ordering::Relaxed);
    }
    pub(crate) fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
    }
    pub(crate) fn end_request(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
    /// A fresh counter of the current request's body bytes (the audit's `bytes_in`): the body
    /// timeout knows from it when a body with a Content-Length is complete.
    pub(crate) fn body_counter(&self) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(0));
        *self.body_seen.lock().unwrap_or_else(|e| e.into_inner()) = c.clone();
        *self.body_ended.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(AtomicBool::new(false));
        c
    }
    /// The flag the current request's body sets when it has been read to its end
    /// ([`forward::ReqBody::Stream`]).
    pub(crate) fn body_end_flag(&self) -> Arc<AtomicBool> {
        self.body_ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The client still owes body bytes (as far as the proxy can tell).
    fn body_owed(&self) -> bool {
        let len = self.body_len.load(Ordering::Acquire);
        if len == 0 || self.body_ended.lock().unwrap_or_else(|e| e.into_inner()).load(Ordering::Acquire) {
            return false;
        }
        len == u64::MAX || self.body_seen.lock().unwrap_or_else(|e| e.into_inner()).load(Ordering::Relaxed) < len
    }

    /// Resolves with the reason when a timeout hits.
    async fn watch(&self, header: Duration, body: Duration, idle: Duration) -> &'static str {
        let (h, b, i) = (header.as_millis() as u64, body.as_millis() as u64, idle.as_millis() as u64);
        loop {
            let now = self.now();
            let (deadline, why) = if self.in_flight.load(Ordering::Acquire) > 0 {
                // A body that stops before its answer: the client holds the request open.
                let blocked = self.blocked_since.load(Ordering::Acquire);
                if self.answer_pending.load(Ordering::Acquire) && blocked != 0 && self.body_owed() {
                    (blocked.max(self.last.load(Ordering::Relaxed)) + b, "request body timeout (no byte of the announced body)")
                } else {
                    (now + b.min(h), "")
                }
            } else {
                let hs = self.head_started.load(Ordering::Acquire);
                if hs != 0 {
                    (hs + h, "header read timeout")
                } else {
                    (self.last.load(Ordering::Relaxed) + i, "idle timeout")
                }
            };
            if now >= deadline && !why.is_empty() {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(deadline.saturating_sub(now).clamp(5, 1000))).await;
        }
    }
}

/// The TLS stream, noting when bytes arrive and when a read finds none.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.state.on_read(),
            Poll::Pending => self.state.on_blocked(),
            _ => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One client connection: everything its requests share.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub ident: tls::Identity,
    pub peer: SocketAddr,
    pub state: Arc<ConnState>,
    pub upstream: tokio::sync::Mutex<Option<forward::Upstream>>,
    /// Basic-auth header already verified on this connection (and its user).
    pub basic_ok: std::sync::Mutex<Option<(Vec<u8>, String)>>,
    /// Hands engine-connection futures to the connection task, which drives them.
    pub driver_tx: tokio::sync::mpsc::UnboundedSender<Driver>,
    /// The long stream this connection carries, if any (until its next request or its end).
    stream: std::sync::Mutex<Option<StreamSlot>>,
    /// Held while the connection (or its upgraded stream) lives.
    slot: ConnSlot,
}

impl ConnCtx {
    /// Called for every authorized request: a long stream (see [`slots::is_long_stream`]) takes
    /// a stream slot of this certificate, or is refused (unavailable) naming the cap.
    pub(crate) fn long_stream(&self, canon: &authz::Canon, query: Option<&str>, upgrade: bool) -> Result<(), ApiError> {
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        *s = None;
        if slots::is_long_stream(canon, query, upgrade) {
            *s = Some(self.shared.slots.stream(&self.slot).map_err(|m| ApiError::new(ApiErrorKind::Unavailable, m))?);
        }
        Ok(())
    }
}

/// SHA-256 of a DER certificate: the identity the caps count.
fn fingerprint(der: &[u8]) -> slots::Fingerprint {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// Raise the soft RLIMIT_NOFILE to the hard limit (each connection takes two descriptors: the
/// client's and the engine's); warn when even that is short of the caps.
fn raise_fd_limit(l: &slots::Limits) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut r = getrlimit(Resource::Nofile);
    if r.current < r.maximum {
        r.current = r.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, r) {
            tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit");
        }
    }
    let need = (2 * l.max_connections + l.max_handshakes + 64) as u64;
    if let Some(have) = getrlimit(Resource::Nofile).current.filter(|h| *h < need) {
        tracing::warn!(have, need, "the open-file limit (RLIMIT_NOFILE) is below what [proxy] max_connections and max_handshakes need: connections beyond it fail at accept (raise LimitNOFILE= or lower the caps)");
    }
}

/// Answer the first request of a connection that is over a cap (unavailable, retry in 5 s)
/// and close it.
async fn answer_over_cap<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, message: String) {
    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default());
    let svc = hyper::service::service_fn(move |_req| {
        let r = hyper::Response::builder()
            .status(ApiErrorKind::Unavailable.status())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::RETRY_AFTER, "5")
            .body(http_body_util::Full::new(body.clone()));
        async move { r }
    });
    let _ = hyper::server::conn::http1::Builder::new().max_header_size(MAX_HEAD_BYTES).keep_alive(false).serve_connection(TokioIo::new(io), svc).await;
}

async fn handle_conn(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    mut hs: HandshakeSlot,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => r,
        _ = &mut hs.evicted => {
            let why = "the handshake pool is full: this address's oldest TLS handshake was closed for a newcomer from a less busy address";
            return shared.refusals.note(peer.ip(), Refusal::Busy, why);
        }
    };
    let tls = match handshake {
        Err(_) => {
            let why = format!("TLS handshake timed out (not finished within {} s, handshake_timeout_secs)", shared.handshake_timeout.as_secs());
            return shared.refusals.note(peer.ip(), Refusal::Timeout, &why);
        }
        Ok(Err(e)) => return shared.refusals.note(peer.ip(), Refusal::Failed, &format!("TLS handshake rejected: {e}")),
        Ok(Ok(s)) => s,
    };
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        // Unreachable: the verifier requires a certificate.
        return;
    };
    let ident = tls::Identity::from_cert_with(cert, &shared.roles);
    let slot = match shared.slots.connection(fingerprint(cert), ident.role) {
        Ok(s) => s,
        Err(why) => {
            // Still on the handshake slot: the excess stays under the per-address cap.
            shared.refusals.note(peer.ip(), Refusal::OverCap, &why);
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, answer_over_cap(tls, why)) => {}
                _ = &mut hs.evicted => {}
            }
            return;
        }
    };
    drop(hs);
    tracing::debug!(target: "swarmseal::audit", peer = %peer, role = ident.role_str(), identity = %forward::Esc(&ident.name), "TLS connection");
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Tracked { inner: tls, state: state.clone() });
    let (header_timeout, body_timeout, idle_timeout) = (shared.header_timeout, shared.body_timeout, shared.idle_timeout);
    let (driver_tx, mut driver_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(ConnCtx {
        shared,
        ident,
        peer,
        state: state.clone(),
        upstream: tokio::sync::Mutex::new(None),
        basic_ok: std::sync::Mutex::new(None),
        driver_tx,
        stream: std::sync::Mutex::new(None),
        slot,
    });
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        use hyper::body::Body;
        let ctx = ctx.clone();
        // What the body timeout needs to know: is a body announced, and how long is it.
        let len = if req.body().is_end_stream() { 0 } else { req.body().size_hint().exact().unwrap_or(u64::MAX) };
        ctx.state.body_len.store(len, Ordering::Release);
        ctx.state.answer_pending.store(len != 0, Ordering::Release);
        async move {
            let r = forward::handle(ctx.clone(), req).await;
            ctx.state.answer_pending.store(false, Ordering::Release);
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(128)
        .keep_alive(true)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let watch = state.watch(header_timeout, body_timeout, idle_timeout);
    tokio::pin!(watch);
    // The engine connection is driven by this same task (no cross-task hop per request).
    let mut driver: Option<Driver> = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            why = &mut watch => {
                tracing::info!(target: "swarmseal::audit", peer = %peer, "connection closed: {why}");
                return;
            }
            r = stop.changed(), if !stopping => {
                stopping = true;
                if r.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            Some(d) = driver_rx.recv() => {
                if let Some(old) = driver.replace(d) {
                    tokio::spawn(old.with_current_subscriber());
                }
            }
            _ = async { driver.as_mut().expect("guarded").await }, if driver.is_some() => {
                driver = None;
            }
        }
    }
    // Upgraded (or finished): the engine connection may still be handing over its stream.
    if let Some(d) = driver {
        tokio::spawn(d.with_current_subscriber());
    }
}

/// A future driving one engine connection.
pub(crate) type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;
