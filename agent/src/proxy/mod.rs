//! The mutual-TLS proxy: the only network door to the engine's unix socket.
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
//! - The agent's endpoints under `/swarmseal/v1/` (`status`, `bench`, `reseal`, `escrow`,
//!   `var/enroll-tpm`, `update`).
//! - One audit line per request (target `swarmseal::audit`), security events
//!   for requests touching the unlock key (target `swarmseal::security`).
//! - A fresh connection must finish its TLS handshake, and every request head
//!   must arrive, within `header_timeout_secs`; a keep-alive connection with no
//!   request in flight is closed after `idle_timeout_secs` (never an upgraded
//!   connection or a streaming response); at most `max_connections` at once
//!   (further ones are closed at once); request heads are limited to 64 KiB.

pub mod authz;
pub mod gojson;
pub mod basic;
mod forward;
pub mod pki;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::instrument::WithSubscriber;

/// Proxy errors.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A boxed, sendable future (the shape of [`AgentApi`]'s async methods).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the agent offers on `/swarmseal/v1/` (implemented by `boot`).
pub trait AgentApi: Send + Sync + 'static {
    /// `GET /swarmseal/v1/status` body (JSON).
    fn status(&self) -> BoxFuture<'_, serde_json::Value>;
    /// `GET /swarmseal/v1/bench`: the last bench report (docker-bench-security JSON), if any.
    fn bench(&self) -> Option<Vec<u8>>;
    /// `POST /swarmseal/v1/reseal`: Ok(JSON) or Err((HTTP status, message)).
    fn reseal(&self) -> BoxFuture<'_, Result<serde_json::Value, (u16, String)>>;
    /// `POST /swarmseal/v1/var/enroll-tpm`, body: the `/var` recovery key (text):
    /// bind the appliance's `/var` to this machine's TPM again. Ok(JSON) or
    /// Err((HTTP status, message)). The default answers 404 (not the appliance).
    fn var_enroll_tpm(&self, recovery_key: zeroize::Zeroizing<String>) -> BoxFuture<'_, Result<serde_json::Value, (u16, String)>> {
        drop(recovery_key);
        Box::pin(async { Err((404, "not available here: /var re-enrollment exists on the appliance image only".to_string())) })
    }
    /// `POST /swarmseal/v1/update[?reboot=1]` with a release tar as the body
    /// ([`UpdateFrom::Upload`]), or `POST /swarmseal/v1/update?version=V[&reboot=1]` with an
    /// empty body ([`UpdateFrom::Source`]: fetched from `[update] source`): verify and stage it,
    /// have the apply service install it (see [`crate::update`]). Ok(JSON
    /// `{"version","staged":true,"reboot"}`) or Err((HTTP status, message)). The default
    /// answers 404 (no update support here).
    fn update(&self, from: UpdateFrom, reboot: bool) -> BoxFuture<'_, Result<serde_json::Value, (u16, String)>> {
        drop((from, reboot));
        Box::pin(async { Err((404, "not available here: image updates exist on the appliance agent only".to_string())) })
    }
    /// `GET /swarmseal/v1/escrow` (the unlock key) and
    /// `GET /swarmseal/v1/escrow/var-recovery-key` (the appliance's `/var`
    /// recovery key): the age-encrypted file, if it exists.
    fn escrow(&self, file: EscrowFile) -> Option<Vec<u8>>;
}

/// The request body of `POST /swarmseal/v1/update`, as a byte stream.
pub type UpdateBody = Pin<Box<dyn AsyncRead + Send>>;

/// Where the release of `POST /swarmseal/v1/update` comes from.
pub enum UpdateFrom {
    /// The request body (`content_length` when the client sent one).
    Upload { body: UpdateBody, content_length: Option<u64> },
    /// `?version=V` with an empty body: `<[update] source>swarmseal_V.tar`. `version` is the
    /// query value as sent (percent-decoded), not yet validated.
    Source { version: String },
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
    pub idle_timeout: Duration,
}

/// A bound proxy listener, not yet serving (lets callers learn the port first).
pub struct Proxy {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    basic: Option<basic::BasicAuth>,
    socket: PathBuf,
    max_connections: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Proxy {
    /// Load the certificates (and htpasswd) and bind `cfg.proxy.listen`.
    pub async fn bind(cfg: &crate::config::Config) -> Result<Proxy, ProxyError> {
        let paths = pki::PkiPaths::of(cfg);
        let tls = tls::server_config(&paths.ca_cert, &paths.server_cert, &paths.server_key)?;
        let basic = match &cfg.proxy.htpasswd {
            Some(p) => Some(basic::BasicAuth::load(p)?),
            None => None,
        };
        let addr = cfg.proxy.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| ProxyError::Listen { addr, source })?;
        Ok(Proxy {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            basic,
            socket: cfg.docker_socket(),
            max_connections: cfg.proxy.max_connections.max(1),
            header_timeout: Duration::from_secs(cfg.proxy.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(cfg.proxy.idle_timeout_secs.max(1)),
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serve until `shutdown` resolves; then stop accepting, let open
    /// connections finish their current request (at most 10 s) and return.
    pub async fn run(self, api: Arc<dyn AgentApi>, shutdown: impl Future<Output = ()> + Send) -> Result<(), ProxyError> {
        let shared = Arc::new(Shared {
            api,
            socket: self.socket,
            basic: self.basic,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
        });
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tracing::info!(listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), max_connections = self.max_connections, "proxy listening (TLS 1.3, client certificate required)");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.listener.accept() => {
                    let (tcp, peer) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(target: "swarmseal::audit", peer = %peer, "connection refused: limit of {} connections reached", self.max_connections);
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let fut = handle_conn(shared.clone(), self.acceptor.clone(), tcp, peer, permit, stop_rx.clone());
                    tokio::spawn(fut.with_current_subscriber());
                }
            }
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), limit.acquire_many(self.max_connections as u32)).await;
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Bind `cfg.proxy.listen` and serve until `shutdown` resolves.
pub async fn serve(
    cfg: &crate::config::Config,
    api: Arc<dyn AgentApi>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    Proxy::bind(cfg).await?.run(api, shutdown).await
}

/// Per-connection activity, for the header and idle timeouts.
pub(crate) struct ConnState {
    start: Instant,
    in_flight: AtomicUsize,
    /// ms since start (+1) when the current request head started; 0 = none.
    head_started: AtomicU64,
    /// ms since start (+1) of the last activity.
    last: AtomicU64,
}

impl ConnState {
    fn new() -> ConnState {
        // Waiting for the first request head from the start.
        ConnState { start: Instant::now(), in_flight: AtomicUsize::new(0), head_started: AtomicU64::new(1), last: AtomicU64::new(1) }
    }
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
    fn on_read(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    pub(crate) fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
    }
    pub(crate) fn end_request(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves with the reason when a timeout hits.
    async fn watch(&self, header: Duration, idle: Duration) -> &'static str {
        let (h, i) = (header.as_millis() as u64, idle.as_millis() as u64);
        loop {
            let now = self.now();
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                h
            } else {
                let hs = self.head_started.load(Ordering::Acquire);
                let (deadline, why) =
                    if hs != 0 { (hs + h, "header read timeout") } else { (self.last.load(Ordering::Relaxed) + i, "idle timeout") };
                if now >= deadline {
                    return why;
                }
                deadline - now
            };
            tokio::time::sleep(Duration::from_millis(wait.max(5))).await;
        }
    }
}

/// The TLS stream, noting when bytes arrive.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
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
    /// Held while the connection (or its upgraded stream) lives.
    _permit: OwnedSemaphorePermit,
}

async fn handle_conn(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(shared.header_timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            tracing::info!(target: "swarmseal::audit", peer = %peer, "TLS handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(target: "swarmseal::audit", peer = %peer, error = %e, "TLS handshake rejected");
            return;
        }
        Ok(Ok(s)) => s,
    };
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        // Unreachable: the verifier requires a certificate.
        return;
    };
    let ident = tls::Identity::from_cert(cert);
    tracing::debug!(target: "swarmseal::audit", peer = %peer, role = ident.role_str(), identity = %forward::Esc(&ident.name), "TLS connection");
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Tracked { inner: tls, state: state.clone() });
    let (header_timeout, idle_timeout) = (shared.header_timeout, shared.idle_timeout);
    let (driver_tx, mut driver_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(ConnCtx {
        shared,
        ident,
        peer,
        state: state.clone(),
        upstream: tokio::sync::Mutex::new(None),
        basic_ok: std::sync::Mutex::new(None),
        driver_tx,
        _permit: permit,
    });
    let svc = hyper::service::service_fn(move |req| forward::handle(ctx.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(128)
        .keep_alive(true)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let watch = state.watch(header_timeout, idle_timeout);
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
