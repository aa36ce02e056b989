//! One request: authenticate (basic auth), authorize, answer the agent's own
//! endpoints or forward to the engine socket, audit.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::instrument::WithSubscriber;

use super::authz::{self, KeyEvent};
use super::policy;
use super::redact;
use super::gojson::{self, GoValue};
use super::route::Route;
use super::{ApiError, ApiErrorKind, ConnCtx, EscrowFile, UpdateFrom, UpdateInstall};
use swarmseal_common::secret::UnlockKey;

/// The engine connection dedicated to one client connection.
pub(crate) type Upstream = hyper::client::conn::http1::SendRequest<ReqBody>;

/// Body sent to the engine.
pub(crate) enum ReqBody {
    /// The client's body as it arrives: bytes counted, a flag set when the client broke it
    /// (malformed chunked encoding, cut short: a 400, not the engine's fault), and one set when
    /// it ended (the body timeout stops there). Made by [`stream_body`].
    Stream(Incoming, Arc<AtomicU64>, Arc<AtomicBool>, Arc<AtomicBool>),
    Full(Option<Bytes>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Stream(b, n, broken, ended) => {
                let r = Pin::new(&mut *b).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            n.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        if b.is_end_stream() {
                            ended.store(true, Ordering::Release);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => broken.store(true, Ordering::Relaxed),
                    Poll::Ready(None) => ended.store(true, Ordering::Release),
                    Poll::Pending => {}
                }
                r
            }
            ReqBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(b, ..) => b.is_end_stream(),
            ReqBody::Full(b) => b.is_none(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream(b, ..) => b.size_hint(),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map(|b| b.len() as u64).unwrap_or(0)),
        }
    }
}

/// The request body of `ctx`'s current request, counted into `bytes` (the audit's
/// `bytes_in`) and marked ended for the body timeout, whoever reads it.
fn stream_body(ctx: &ConnCtx, body: Incoming, bytes: Arc<AtomicU64>, broken: Arc<AtomicBool>) -> ReqBody {
    ReqBody::Stream(body, bytes, broken, ctx.state.body_end_flag())
}

/// The audit record of one request; written when dropped (after the last byte
/// of the response, or at the end of an upgraded stream).
pub(crate) struct Audit {
    ctx: Arc<ConnCtx>,
    method: Method,
    path: String,
    query: String,
    agent: String,
    status: u16,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    start: Instant,
    user: Option<String>,
    events: Vec<&'static str>,
    /// The role rule that refused the request (`-`: none).
    rule: &'static str,
    upgraded: bool,
    /// false: moved out (see `take_audit`), logs nothing.
    live: bool,
}

impl Drop for Audit {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let i = &self.ctx.ident;
        let events = if self.events.is_empty() { "-".to_string() } else { self.events.join(",") };
        tracing::info!(
            target: "swarmseal::audit",
            role = i.role_str(),
            identity = %Esc(&i.name),
            peer = %self.ctx.peer,
            user = %Esc(self.user.as_deref().unwrap_or("-")),
            method = %Esc(self.method.as_str()),
            path = %Esc(&self.path),
            query = %Esc(&self.query),
            user_agent = %Esc(&self.agent),
            status = self.status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out.load(Ordering::Relaxed),
            duration_ms = (self.start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            upgraded = self.upgraded,
            event = %events,
            rule = %Esc(self.rule),
            "request"
        );
        self.ctx.shared.metrics.proxy_requests.get_or_create(&swarmseal_common::metrics::RequestLabels { role: i.role_str().to_string(), status: self.status }).inc();
        if !self.upgraded {
            self.ctx.state.end_request();
        }
    }
}

/// Body sent to the client; owns the audit record.
pub(crate) struct OutBody {
    inner: OutInner,
    audit: Option<Audit>,
}

enum OutInner {
    Full(Option<Bytes>),
    Stream(Incoming),
    /// A monitor's event stream: newline-delimited JSON, each line redacted ([`redact`]).
    Lines(Box<Lines>),
}

/// The state of a redacted line stream: bytes of the current line (at most
/// [`redact::LINE_LIMIT`]; beyond, the stream ends).
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    labels: Vec<String>,
    done: bool,
}

impl OutBody {
    fn full(b: impl Into<Bytes>, audit: Option<Audit>) -> OutBody {
        let b = b.into();
        if let Some(a) = &audit {
            a.bytes_out.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        OutBody { inner: OutInner::Full(if b.is_empty() { None } else { Some(b) }), audit }
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.inner {
            OutInner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            OutInner::Stream(s) => {
                let r = Pin::new(s).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(f))), Some(a)) = (&r, &this.audit) {
                    if let Some(d) = f.data_ref() {
                        a.bytes_out.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                r
            }
            OutInner::Lines(l) => loop {
                let line = match l.buf.iter().position(|b| *b == b'\n') {
                    Some(i) => Some(l.buf.drain(..=i).collect::<Vec<u8>>()),
                    None if l.done && !l.buf.is_empty() => Some(std::mem::take(&mut l.buf)),
                    None if l.done => return Poll::Ready(None),
                    None => None,
                };
                if let Some(line) = line {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    // A line that is not JSON is dropped, never passed unredacted.
                    let Ok(out) = redact::redact_bytes(&line, &l.labels) else { continue };
                    if let Some(a) = &this.audit {
                        a.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                match Pin::new(&mut l.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Ok(d) = f.into_data() {
                            l.buf.extend_from_slice(&d);
                            if l.buf.len() > redact::LINE_LIMIT && !l.buf.contains(&b'\n') {
                                l.buf.clear();
                                l.done = true;
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => l.done = true,
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            OutInner::Full(b) => b.is_none(),
            OutInner::Stream(s) => s.is_end_stream(),
            OutInner::Lines(l) => l.done && l.buf.is_empty(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            OutInner::Full(b) => SizeHint::with_exact(b.as_ref().map(|b| b.len() as u64).unwrap_or(0)),
            OutInner::Stream(s) => s.size_hint(),
            OutInner::Lines(_) => SizeHint::default(),
        }
    }
}

fn json_response(status: u16, body: &serde_json::Value, audit: Audit) -> Response<OutBody> {
    let mut audit = audit;
    audit.status = status;
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(OutBody::full(bytes, Some(audit)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error answer: `{"message": …}` (and the error's `details`) with the status of its kind.
fn refusal(e: &ApiError, audit: Audit) -> Response<OutBody> {
    json_response(e.status(), &e.body(), audit)
}

fn message(kind: ApiErrorKind, msg: &str, audit: Audit) -> Response<OutBody> {
    json_response(kind.status(), &serde_json::json!({ "message": msg }), audit)
}

/// A client-controlled string as shown in logs, bounded to 300 characters.
fn bounded(p: &str) -> String {
    let mut s: String = p.chars().take(300).collect();
    if s.len() < p.len() {
        s.push('…');
    }
    s
}

/// A log field value a client controls (certificate CN, path, query, user agent,
/// user name): written bare when it is plain (letters, digits and `-._:/@%+,~*`),
/// otherwise quoted and Rust-escaped (`"a\nb"`, `"\u{1b}"`, `"\""`), so no value
/// can hold a raw control byte, end the line, or pose as another field. The same
/// text goes to the journal field.
pub(crate) struct Esc<'a>(pub &'a str);

impl std::fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = !self.0.is_empty() && self.0.chars().all(|c| c.is_ascii_alphanumeric() || "-._:/@%+,~*".contains(c));
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        || h.get_all(CONNECTION)
            .iter()
            .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))).unwrap_or(false))
}

fn security_event(ev: &str, a: &Audit, outcome: &str) {
    let ctx = &a.ctx;
    tracing::warn!(
        target: "swarmseal::security",
        event = ev,
        outcome,
        role = ctx.ident.role_str(),
        identity = %Esc(&ctx.ident.name),
        peer = %ctx.peer,
        method = %Esc(a.method.as_str()),
        path = %Esc(&a.path),
        query = %Esc(&a.query),
        "security event: {ev} ({outcome})"
    );
}

/// Constant-time equality of two byte strings (length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Result<Response<OutBody>, Infallible> {
    ctx.state.begin_request();
    let mut audit = Audit {
        ctx: ctx.clone(),
        method: req.method().clone(),
        path: bounded(req.uri().path()),
        query: bounded(req.uri().query().unwrap_or("")),
        agent: bounded(&req.headers().get(hyper::header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()),
        status: 0,
        bytes_in: ctx.state.body_counter(),
        bytes_out: Arc::new(AtomicU64::new(0)),
        start: Instant::now(),
        user: None,
        events: Vec::new(),
        rule: "-",
        upgraded: false,
        live: true,
    };
    Ok(handle_inner(&ctx, req, &mut audit).await.unwrap_or_else(|e| refusal(&e, audit)))
}

type Early = ApiError;

async fn handle_inner(ctx: &Arc<ConnCtx>, mut req: Request<Incoming>, audit_slot: &mut Audit) -> Result<Response<OutBody>, Early> {
    let shared = &ctx.shared;
    // 1. Basic auth, when configured.
    if let Some(basic) = &shared.basic {
        let hdr = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes().to_vec());
        let cached = {
            let c = ctx.basic_ok.lock().unwrap_or_else(|e| e.into_inner());
            match (&*c, &hdr) {
                (Some((h, u)), Some(x)) if ct_eq(h, x) => Some(u.clone()),
                _ => None,
            }
        };
        let user = match cached {
            Some(u) => Some(u),
            None => {
                let ip = ctx.peer.ip();
                if let Err(wait) = basic.admit(ip, hdr.as_deref()) {
                    let audit = take_audit(audit_slot);
                    let secs = wait.as_secs().max(1);
                    let mut r = message(ApiErrorKind::TooManyRequests, &format!("too many failed basic-auth attempts from this address or for this user; try again in {secs} s"), audit);
                    r.headers_mut().insert("retry-after", HeaderValue::from(secs));
                    return Ok(r);
                }
                let c2 = ctx.clone();
                let h2 = hdr.clone();
                let r = tokio::task::spawn_blocking(move || c2.shared.basic.as_ref().and_then(|b| b.check_blocking(ip, h2.as_deref())))
                    .await
                    .ok()
                    .flatten();
                if let (Some(u), Some(h)) = (&r, hdr) {
                    *ctx.basic_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some((h, u.clone()));
                }
                r
            }
        };
        match user {
            Some(u) => audit_slot.user = Some(u),
            None => {
                security_event("basic_auth_failed", audit_slot, "denied");
                let audit = take_audit(audit_slot);
                let mut r = message(ApiErrorKind::Unauthorized, "basic authentication required: wrong or missing user name or password", audit);
                r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Basic realm=\"swarmseal\", charset=\"UTF-8\""));
                return Ok(r);
            }
        }
        req.headers_mut().remove(AUTHORIZATION);
    }

    // 2. Authorization on the canonical path.
    let canon = authz::canonicalize(req.uri().path()).map_err(ApiError::bad_request)?;
    let upgrade = wants_upgrade(req.headers());
    let method = req.method().clone();
    let events = authz::key_events(&canon, req.uri().query());
    audit_slot.events = events.iter().map(|e| e.as_str()).collect();
    if let Err(d) = authz::decide_rule(ctx.ident.policy.as_deref(), method.as_str(), &canon, upgrade) {
        for e in &events {
            security_event(e.as_str(), audit_slot, "denied");
        }
        audit_slot.rule = d.rule;
        return Err(d.api_error());
    }
    ctx.long_stream(&canon, req.uri().query(), upgrade)?;
    let inspect = authz::inspect(method.as_str(), &canon);
    if inspect.is_none() {
        for e in &events {
            security_event(e.as_str(), audit_slot, "allowed");
        }
    }

    // 3. The agent's own endpoints.
    if canon.is_agent() {
        let query = req.uri().query().map(str::to_string);
        let len = content_length(req.headers());
        return Ok(agent_endpoint(ctx, &method, Route::parse(&canon), query.as_deref(), len, req.into_body(), take_audit(audit_slot)).await);
    }

    // 4. Forward to the engine.
    let down_upgrade = if upgrade { Some(hyper::upgrade::on(&mut req)) } else { None };
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    parts.uri = pq.parse().map_err(|_| ApiError::bad_request("invalid request target"))?;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let mut sender = ctx.upstream.lock().await;
    let mut up = take_ready(ctx, sender.take()).await?;
    let broken = Arc::new(AtomicBool::new(false));
    let deploy = ctx.ident.policy.as_ref().filter(|p| p.kind == super::tls::Role::Deploy).cloned();
    if let Some(role) = deploy.as_ref().filter(|p| p.ownership) {
        if let Some(target) = policy::owned_target(method.as_str(), &canon).filter(|t| t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))) {
            let obj = engine_json(&mut up, &target).await;
            if let Err(d) = policy::check_owner(role, &ctx.ident.name, &target, obj.as_ref()) {
                audit_slot.rule = d.rule;
                *sender = Some(up);
                return Err(d.api_error());
            }
        }
    }
    let deploy_body = deploy.filter(|p| policy::body_kind(method.as_str(), &canon).is_some() || (p.ownership && policy::labels_owner(method.as_str(), &canon)));
    let body = match (inspect, deploy_body) {
        (None, Some(role)) => {
            // Read as the engine will, apply the role's rules, then forward exactly these bytes
            // (with the owner label when ownership is on).
            let mut bytes = match read_limited(policy::BODY_LIMIT, &parts.headers, stream_body(ctx, body, audit_slot.bytes_in.clone(), broken.clone())).await {
                Ok(b) => b,
                Err(e) => {
                    audit_slot.rule = "body";
                    return Err(e);
                }
            };
            let checked = match policy::body_kind(method.as_str(), &canon).map(|k| policy::check_body(&role, k, &bytes)) {
                Some(Ok(needs)) => match engine_checks(&mut up, &role, needs).await {
                    Ok(()) => rollback_checks(&mut up, &role, method.as_str(), &canon, parts.uri.query(), &bytes).await,
                    Err(d) => Err(d),
                },
                Some(Err(d)) => Err(d),
                None => Ok(()),
            };
            let labelled = checked.and_then(|()| match role.ownership && policy::labels_owner(method.as_str(), &canon) {
                true => policy::with_owner(&bytes, &ctx.ident.name).map(|b| bytes = Bytes::from(b)),
                false => Ok(()),
            });
            if let Err(d) = labelled {
                audit_slot.rule = d.rule;
                return Err(d.api_error());
            }
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            parts.headers.remove(hyper::header::TRANSFER_ENCODING);
            ReqBody::Full(Some(bytes))
        }
        (Some(kind), _) => {
            // Read as the engine will, decide, then forward exactly these bytes.
            let bytes = read_limited(kind.limit(), &parts.headers, stream_body(ctx, body, audit_slot.bytes_in.clone(), broken.clone())).await?;
            let more = body_events(&mut up, kind, &canon, &bytes).await.inspect_err(|_| {
                for e in &events {
                    security_event(e.as_str(), audit_slot, "refused");
                }
            })?;
            for e in events.iter().chain(&more) {
                security_event(e.as_str(), audit_slot, "allowed");
            }
            audit_slot.events.extend(more.iter().map(|e| e.as_str()));
            ReqBody::Full(Some(bytes))
        }
        (None, None) => stream_body(ctx, body, audit_slot.bytes_in.clone(), broken.clone()),
    };
    let fut = up.send_request(Request::from_parts(parts, body));
    *sender = Some(up);
    drop(sender);
    let mut resp = fut.await.map_err(|e| {
        if broken.load(Ordering::Relaxed) {
            ApiError::bad_request(format!("the request body is malformed or was cut short ({e}); nothing was done"))
        } else {
            ApiError::bad_gateway(format!("the Docker engine did not answer: {e}"))
        }
    })?;
    let mut audit = take_audit(audit_slot);
    audit.status = resp.status().as_u16();

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(down) = down_upgrade else {
            return Ok(message(ApiErrorKind::BadGateway, "the Docker engine switched protocols without being asked", audit));
        };
        let up_upgrade = hyper::upgrade::on(&mut resp);
        audit.upgraded = true;
        ctx.state.end_request();
        let idle = ctx.shared.idle_timeout;
        let task = async move {
            match tokio::join!(down, up_upgrade) {
                (Ok(d), Ok(u)) => splice(TokioIo::new(d), TokioIo::new(u), &audit, idle).await,
                (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "upgrade failed"),
            }
            drop(audit);
        };
        tokio::spawn(task.with_current_subscriber());
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, OutBody::full(Bytes::new(), None)));
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(CONNECTION);
    parts.headers.remove("keep-alive");
    let monitor = ctx.ident.policy.as_ref().filter(|p| p.kind == super::tls::Role::Monitor && method == Method::GET);
    if let Some((role, how)) = monitor.and_then(|p| redact::redaction(&canon).map(|r| (p, r))) {
        // A monitor's state, without secrets: rewritten before a byte leaves.
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
        let labels = role.redact_labels.clone();
        return Ok(match how {
            redact::Redaction::Lines => {
                let lines = Lines { body, buf: Vec::new(), labels, done: false };
                Response::from_parts(parts, OutBody { inner: OutInner::Lines(Box::new(lines)), audit: Some(audit) })
            }
            redact::Redaction::Json => {
                let whole = Box::pin(http_body_util::Limited::new(body, redact::JSON_LIMIT).collect()).await;
                match whole.map_err(|e| e.to_string()).and_then(|b| redact::redact_bytes(&b.to_bytes(), &labels)) {
                    Ok(b) => Response::from_parts(parts, OutBody::full(b, Some(audit))),
                    Err(e) => message(ApiErrorKind::BadGateway, &format!("the engine's answer cannot be redacted for a monitor certificate ({e}; at most {} MiB of JSON)", redact::JSON_LIMIT >> 20), audit),
                }
            }
        });
    }
    Ok(Response::from_parts(parts, OutBody { inner: OutInner::Stream(body), audit: Some(audit) }))
}

/// Move the audit record out of the slot (the slot keeps an inert copy that logs nothing).
fn take_audit(slot: &mut Audit) -> Audit {
    let inert = Audit {
        ctx: slot.ctx.clone(),
        method: Method::GET,
        path: String::new(),
        query: String::new(),
        agent: String::new(),
        status: 0,
        bytes_in: Arc::new(AtomicU64::new(0)),
        bytes_out: Arc::new(AtomicU64::new(0)),
        start: slot.start,
        user: None,
        events: Vec::new(),
        rule: "-",
        upgraded: false,
        live: false,
    };
    std::mem::replace(slot, inert)
}

fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    for n in ["keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer"] {
        h.remove(n);
    }
    if !upgrade {
        h.remove(CONNECTION);
        h.remove(UPGRADE);
    }
    // hyper decoded a chunked body; never pass a Content-Length beside it (request smuggling).
    if h.contains_key(hyper::header::TRANSFER_ENCODING) {
        h.remove(hyper::header::CONTENT_LENGTH);
    }
}

async fn connect(ctx: &ConnCtx) -> Result<Upstream, Early> {
    let sock = &ctx.shared.socket;
    let s = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| ApiError::bad_gateway(format!("cannot reach the Docker engine at {}: {e}", sock.display())))?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(s))
        .await
        .map_err(|e| ApiError::bad_gateway(format!("cannot talk to the Docker engine: {e}")))?;
    let driver: super::Driver = Box::pin(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "engine connection ended with an error");
        }
    });
    // Driven by the client connection's task; spawned if that task is gone.
    if let Err(e) = ctx.driver_tx.send(driver) {
        tokio::spawn(e.0.with_current_subscriber());
    }
    Ok(sender)
}

async fn take_ready(ctx: &ConnCtx, cur: Option<Upstream>) -> Result<Upstream, Early> {
    if let Some(mut s) = cur {
        if !s.is_closed() && s.ready().await.is_ok() {
            return Ok(s);
        }
    }
    let mut s = connect(ctx).await?;
    s.ready().await.map_err(|e| ApiError::bad_gateway(format!("cannot talk to the Docker engine: {e}")))?;
    Ok(s)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok())
}

/// The whole body of an inspected request ([`authz::Inspect`], [`policy::body_kind`]), within
/// `limit` bytes. Too large over the limit (before reading when `Content-Length` says so), bad
/// when the client broke the body or sent a form (Go's `ParseForm` would read a form body as
/// query parameters).
async fn read_limited(limit: u64, h: &HeaderMap, body: ReqBody) -> Result<Bytes, Early> {
    let too_big = || ApiError::too_large(format!("the request body is larger than {} KiB, the most accepted for this endpoint; nothing was forwarded", limit >> 10));
    if content_length(h).is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let form = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if form {
        return Err(ApiError::bad_request("a form body (application/x-www-form-urlencoded) is refused here; send JSON"));
    }
    match Box::pin(http_body_util::Limited::new(body, limit as usize).collect()).await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(ApiError::bad_request(format!("the request body is malformed or was cut short ({e}); nothing was forwarded"))),
    }
}

/// GET `path` from the engine on this connection and parse its JSON (None: any failure).
async fn engine_json(up: &mut Upstream, path: &str) -> Option<GoValue> {
    let req = Request::get(path).header("host", "docker").body(ReqBody::Full(None)).ok()?;
    up.ready().await.ok()?;
    let resp = up.send_request(req).await.ok()?;
    let ok = resp.status().is_success();
    let b = Box::pin(http_body_util::Limited::new(resp.into_body(), 4 << 20).collect()).await.ok()?.to_bytes();
    let v = gojson::parse_first(&b).ok()?.0;
    ok.then_some(v)
}

/// The security events of an inspected body, read as the engine reads it (Go's
/// `encoding/json`, [`gojson`]); `Err`: refused (400) with the reason. Bytes after the
/// JSON value are refused: dockerd 20.10 ignores them, a later engine may not, so
/// only a body that means the same to both is forwarded.
async fn body_events(up: &mut Upstream, kind: authz::Inspect, canon: &authz::Canon, bytes: &[u8]) -> Result<Vec<KeyEvent>, Early> {
    use authz::Inspect;
    let v = gojson::parse_object(bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let events = match kind {
        Inspect::SwarmInit => authz::spec_events(kind, &v, None),
        Inspect::SwarmUpdate => {
            let cur = engine_json(up, "/swarm").await.and_then(|s| s.field("Spec"));
            authz::spec_events(kind, &v, cur.as_ref())
        }
        Inspect::NodeUpdate => {
            let id = canon.raw_segs.get(1).filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            let cur = match id {
                Some(id) => engine_json(up, &format!("/nodes/{id}")).await.and_then(|n| n.str_at("Spec.Role").ok().flatten()),
                None => None,
            };
            authz::node_events(&v, cur.as_deref())
        }
        Inspect::SwarmJoin | Inspect::SwarmUnlock => Ok(Vec::new()),
    };
    up.ready().await.map_err(|e| ApiError::bad_gateway(format!("the Docker engine connection failed: {e}")))?;
    events.map_err(|why| ApiError::bad_request(format!("{why}; the engine would refuse this body")))
}

/// The checks of an allowed `deploy` body that need the engine: no network with the `host`
/// driver (by name or ID), and an image the engine already has (else it would pull it from the
/// registry its name holds). Names that are not plain are refused, never put in a path.
async fn engine_checks(up: &mut Upstream, role: &policy::RolePolicy, needs: policy::EngineChecks) -> Result<(), policy::Denial> {
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b)) && !s.contains("..");
    for n in &needs.networks {
        let host = !plain(n) || match engine_json(up, &format!("/networks/{n}")).await {
            Some(net) => net.str_at("Driver").ok().flatten().as_deref() == Some("host") || net.str_at("Name").ok().flatten().as_deref() == Some("host"),
            None => false,
        };
        if host {
            return Err(policy::Denial::new("host-network", format!("{}: TaskTemplate.Networks.Target `{n}` (the host network) is not allowed", role.name)));
        }
    }
    if let Some(image) = &needs.image {
        if !plain(image) || engine_json(up, &format!("/images/{image}/json")).await.is_none() {
            return Err(policy::Denial::new("outbound", format!("{}: TaskTemplate.ContainerSpec.Image `{image}` is not on this engine; pulling it makes the engine connect to a registry (admin-only)", role.name)));
        }
    }
    engine_ready(up).await
}

/// The engine connection is usable again after the checks' reads (a 502 denial when not).
async fn engine_ready(up: &mut Upstream) -> Result<(), policy::Denial> {
    up.ready().await.map_err(|e| policy::Denial { rule: "engine", message: format!("the Docker engine connection failed: {e}"), kind: ApiErrorKind::BadGateway })
}

/// A deploy service update that can make the engine apply another spec than its body (a
/// rollback, [`policy::rollback_targets`]): that spec, read from the engine (`GET
/// /services/{id}`), gets the body's rules ([`policy::check_rollback`], [`engine_checks`]).
async fn rollback_checks(up: &mut Upstream, role: &policy::RolePolicy, method: &str, canon: &authz::Canon, query: Option<&str>, body: &[u8]) -> Result<(), policy::Denial> {
    let targets = policy::rollback_targets(method, canon, query, body);
    if targets.is_empty() {
        return Ok(());
    }
    let id = canon.raw_segs.get(1).filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    let service = match id {
        Some(id) => engine_json(up, &format!("/services/{id}")).await,
        None => None,
    };
    for needs in policy::check_rollback(role, &targets, query, service.as_ref())? {
        engine_checks(up, role, needs).await?;
    }
    engine_ready(up).await
}

/// A 200 with a stored body (the bench report, an age file) of `content_type`.
fn ok_body(b: Vec<u8>, content_type: &'static str, audit: Audit) -> Response<OutBody> {
    let mut a = audit;
    a.status = 200;
    let mut r = Response::new(OutBody::full(b, Some(a)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Whether a request body is empty: no body or `Content-Length: 0`, or a chunked body that
/// ends within `timeout` without a data byte. Anything else is not read further.
async fn empty_body(body: Incoming, content_length: Option<u64>, timeout: Duration) -> bool {
    if body.is_end_stream() {
        return true;
    }
    if content_length.is_some_and(|n| n > 0) {
        return false;
    }
    matches!(tokio::time::timeout(timeout, http_body_util::Limited::new(body, 0).collect()).await, Ok(Ok(_)))
}

/// The optional body of `POST /swarmseal/v1/recover`: empty, the key as text, or
/// `{"UnlockKey": "…"}` (as `POST /swarm/unlock`, Docker Engine API v1.41). `Err`: the
/// operator's sentence (never the body).
pub fn key_from_body(body: &[u8]) -> Result<Option<UnlockKey>, ApiError> {
    let text = zeroize::Zeroizing::new(String::from_utf8_lossy(body).trim().to_string());
    if text.is_empty() {
        return Ok(None);
    }
    let raw = if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct B {
            #[serde(rename = "UnlockKey")]
            unlock_key: Option<String>,
        }
        let b: B = serde_json::from_str(&text).map_err(|_| ApiError::bad_request("the body must be empty, the unlock key, or {\"UnlockKey\": \"SWMKEY-1-…\"}"))?;
        zeroize::Zeroizing::new(b.unlock_key.unwrap_or_default())
    } else {
        text
    };
    UnlockKey::new(raw.to_string()).map(Some).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A JSON answer of an agent endpoint, or its refusal.
fn answer(r: Result<serde_json::Value, ApiError>, audit: Audit) -> Response<OutBody> {
    match r {
        Ok(v) => json_response(200, &v, audit),
        Err(e) => refusal(&e, audit),
    }
}

async fn agent_endpoint(ctx: &ConnCtx, method: &Method, route: Option<Route>, query: Option<&str>, content_length: Option<u64>, body: Incoming, audit: Audit) -> Response<OutBody> {
    use ApiErrorKind::{MethodNotAllowed, NotFound, PayloadTooLarge};
    let api = &ctx.shared.api;
    let m = method.as_str();
    let no_such = |audit| message(NotFound, &format!("no such swarmseal endpoint ({} under /swarmseal/v1/)", Route::listing()), audit);
    let Some(route) = route.filter(|r| r.methods() != crate::route::Methods::None) else {
        return no_such(audit);
    };
    if !route.allows(m) {
        return message(MethodNotAllowed, &format!("{m} is not allowed here"), audit);
    }
    match route {
        Route::Status => json_response(200, &api.status().await, audit),
        Route::Metrics => {
            // The state gauges from the status document and the last report, as scraped now.
            let m = &ctx.shared.metrics;
            let (status, report) = (api.status().await, api.bench().await);
            if let Ok(s) = serde_json::from_value::<swarmseal_common::status::Status>(status) {
                m.observe(&s, report.as_deref());
            }
            m.proxy_connections.set(ctx.shared.slots.busy() as i64);
            ok_body(m.encode().into_bytes(), swarmseal_common::metrics::CONTENT_TYPE, audit)
        }
        Route::Bench => match api.bench().await {
            Some(b) => ok_body(b, "application/json", audit),
            None => message(NotFound, "no bench report yet", audit),
        },
        Route::VarEnrollTpm => {
            // The recovery key: 71 characters; anything much longer is not one.
            let key = match Box::pin(http_body_util::Limited::new(stream_body(ctx, body, audit.bytes_in.clone(), Arc::new(AtomicBool::new(false))), 1024).collect()).await {
                Ok(b) => zeroize::Zeroizing::new(String::from_utf8_lossy(&b.to_bytes()).trim().to_string()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return message(PayloadTooLarge, "the body must be the /var recovery key (at most 1 KiB of text)", audit),
                // The client broke the body (abort, timeout): not too large, so not 413.
                Err(e) => return message(ApiErrorKind::BadRequest, &format!("the request body is malformed or was cut short ({e})"), audit),
            };
            answer(api.var_enroll_tpm(key).await, audit)
        }
        Route::VarFirmwareWindow => {
            if authz::query_flag(query, "disarm") {
                if !empty_body(body, content_length, ctx.shared.header_timeout).await {
                    return message(ApiErrorKind::BadRequest, "?disarm=1 takes no body", audit);
                }
                return answer(api.var_firmware_window(None).await, audit);
            }
            let days = match authz::query_value(query, "days").map(|d| d.parse::<u32>()) {
                None => 7,
                Some(Ok(d)) if (1..=30).contains(&d) => d,
                Some(_) => return message(ApiErrorKind::BadRequest, "?days= is a whole number of days from 1 to 30 (default 7): how long the window stays armed", audit),
            };
            let key = match Box::pin(http_body_util::Limited::new(stream_body(ctx, body, audit.bytes_in.clone(), Arc::new(AtomicBool::new(false))), 1024).collect()).await {
                Ok(b) => zeroize::Zeroizing::new(String::from_utf8_lossy(&b.to_bytes()).trim().to_string()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return message(PayloadTooLarge, "the body must be the /var recovery key (at most 1 KiB of text)", audit),
                // The client broke the body (abort, timeout): not too large, so not 413.
                Err(e) => return message(ApiErrorKind::BadRequest, &format!("the request body is malformed or was cut short ({e})"), audit),
            };
            answer(api.var_firmware_window(Some((days, key))).await, audit)
        }
        Route::Update => {
            let reboot = authz::query_flag(query, "reboot");
            let install = match (authz::query_flag(query, "stage"), reboot) {
                (true, true) => return message(ApiErrorKind::BadRequest, "?stage=1 writes the release's partitions only and never reboots: ask for ?stage=1 or ?reboot=1, not both", audit),
                (true, false) => UpdateInstall::PartitionsOnly,
                (false, reboot) => UpdateInstall::Full { reboot },
            };
            if let Some(version) = authz::query_value(query, "staged") {
                // The release this manager already holds: nothing else may come with it.
                if install == UpdateInstall::PartitionsOnly || ["version", "resume"].iter().any(|k| authz::query_value(query, k).is_some()) {
                    return message(ApiErrorKind::BadRequest, "?staged=V installs the release this manager already holds: not with ?stage, ?version or ?resume", audit);
                }
                if !empty_body(body, content_length, ctx.shared.header_timeout).await {
                    return message(ApiErrorKind::BadRequest, "?staged=V takes an empty body: the release is already on this manager", audit);
                }
                return answer(api.update(UpdateFrom::Staged { version }, install).await, audit);
            }
            let from = match authz::query_value(query, "version") {
                // The rest of an interrupted upload, from byte `resume` on.
                None if authz::query_value(query, "resume").is_some() => {
                    let offset = authz::query_value(query, "resume").and_then(|v| v.parse::<u64>().ok());
                    let sums = authz::query_value(query, "sums").filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).map(|s| s.to_ascii_lowercase());
                    let (Some(offset), Some(sums_sha256)) = (offset, sums) else {
                        return message(ApiErrorKind::BadRequest, "a resumed upload is ?resume=OFFSET (bytes held, from GET /swarmseal/v1/update/partial)&sums=SHA-256 of the release's SHA256SUMS (64 hex digits)", audit);
                    };
                    UpdateFrom::Resume { body: stream_body(ctx, body, audit.bytes_in.clone(), Arc::new(AtomicBool::new(false))).boxed_unsync(), content_length, offset, sums_sha256 }
                }
                Some(_) if authz::query_value(query, "resume").is_some() => {
                    return message(ApiErrorKind::BadRequest, "?resume= continues an uploaded release; a release fetched from [update] source (?version=V) is not resumed: give one or the other", audit);
                }
                // The release comes from [update] source: the body must be empty.
                Some(version) => {
                    if !empty_body(body, content_length, ctx.shared.header_timeout).await {
                        return message(ApiErrorKind::BadRequest, "give either the release as the body or ?version=V with an empty body (fetched from [update] source), not both", audit);
                    }
                    UpdateFrom::Source { version }
                }
                // Streamed to the agent; the bytes counted for the audit line, never logged.
                None => UpdateFrom::Upload { body: stream_body(ctx, body, audit.bytes_in.clone(), Arc::new(AtomicBool::new(false))).boxed_unsync(), content_length },
            };
            answer(api.update(from, install).await, audit)
        }
        Route::UpdatePartial => answer(api.update_partial().await, audit),
        Route::Attest => {
            // The verifier's nonce: fresh random bytes each time, so an old quote cannot be replayed.
            let nonce = authz::query_value(query, "nonce").and_then(|n| hex::decode(n).ok()).filter(|n| (16..=64).contains(&n.len()));
            match nonce {
                Some(nonce) => answer(api.attest(nonce).await, audit),
                None => message(ApiErrorKind::BadRequest, "attestation needs ?nonce=HEX: 16 to 64 fresh random bytes (32 to 128 hex digits), a new one for every request", audit),
            }
        }
        Route::AttestActivate => {
            // {"credential_blob": base64, "secret": base64}: a few hundred bytes; 4 KiB is plenty.
            let body = match Box::pin(http_body_util::Limited::new(stream_body(ctx, body, audit.bytes_in.clone(), Arc::new(AtomicBool::new(false))), ACTIVATE_BODY_LIMIT).collect()).await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return message(PayloadTooLarge, "the body must be {\"credential_blob\": base64, \"secret\": base64} (at most 4 KiB)", audit),
                // The client broke the body (abort, timeout): not too large, so not 413.
                Err(e) => return message(ApiErrorKind::BadRequest, &format!("the request body is malformed or was cut short ({e})"), audit),
            };
            match activation_request(&body) {
                Ok((blob, secret)) => answer(api.attest_activate(blob, secret).await, audit),
                Err(e) => message(ApiErrorKind::BadRequest, &e, audit),
            }
        }
        Route::Recover => {
            // Optional body: the unlock key, as text or {"UnlockKey": "…"} (as POST /swarm/unlock).
            let body = match Box::pin(http_body_util::Limited::new(stream_body(ctx, body, audit.bytes_in.clone(), Arc::new(AtomicBool::new(false))), 1024).collect()).await {
                Ok(b) => zeroize::Zeroizing::new(b.to_bytes().to_vec()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return message(PayloadTooLarge, "the body must be empty or the swarm's unlock key (at most 1 KiB)", audit),
                Err(e) => return message(ApiErrorKind::BadRequest, &format!("the request body is malformed or was cut short ({e})"), audit),
            };
            match key_from_body(&body) {
                Ok(key) => answer(api.recover(key).await, audit),
                Err(e) => refusal(&e, audit),
            }
        }
        Route::Reseal => answer(api.reseal().await, audit),
        Route::Escrow => match api.escrow(EscrowFile::UnlockKey).await {
            Some(b) => ok_body(b, "application/octet-stream", audit),
            None => message(NotFound, "no escrow copy of the unlock key: key escrow is not configured (credential swarmseal.escrow-recipient or [escrow] recipient), or no key was sealed yet", audit),
        },
        Route::EscrowVarRecoveryKey => match api.escrow(EscrowFile::VarRecoveryKey).await {
            Some(b) => ok_body(b, "application/octet-stream", audit),
            None => message(NotFound, "no escrowed /var recovery key: escrow is not configured (credential swarmseal.escrow-recipient), this is not the appliance image, or swarmseal-var-recovery.service has not run (see its journal)", audit),
        },
        Route::EscrowOther => no_such(audit),
    }
}

/// Largest body of `POST /swarmseal/v1/attest/activate`.
const ACTIVATE_BODY_LIMIT: usize = 4096;

/// The body of `POST /swarmseal/v1/attest/activate`: (credential_blob, secret), decoded.
fn activation_request(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    use base64::Engine as _;
    const SHAPE: &str = "the body must be JSON {\"credential_blob\": base64 TPM2B_ID_OBJECT, \"secret\": base64 TPM2B_ENCRYPTED_SECRET}";
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Activate {
        credential_blob: String,
        secret: String,
    }
    let a: Activate = serde_json::from_slice(body).map_err(|e| format!("{SHAPE}: {e}"))?;
    let b64 = |what: &str, v: &str| base64::engine::general_purpose::STANDARD.decode(v).map_err(|e| format!("{SHAPE}: {what} is not base64: {e}"));
    Ok((b64("credential_blob", &a.credential_blob)?, b64("secret", &a.secret)?))
}

/// Copy both ways between the client and the engine after `101`. When one side
/// ends its output (EOF, or the TLS peer closing without close_notify), the
/// other side's write half is shut down and the copy goes on the other way.
/// Once the engine has finished, the client gets `idle` to finish too.
async fn splice<A, B>(client: A, engine: B, audit: &Audit, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (cr, cw) = tokio::io::split(client);
    let (er, ew) = tokio::io::split(engine);
    let up = pipe(cr, ew, audit.bytes_in.clone());
    let down = pipe(er, cw, audit.bytes_out.clone());
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { down.await; }
        _ = &mut down => { let _ = tokio::time::timeout(idle, up).await; }
    }
}

async fn pipe<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, mut w: W, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => break,
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::{activation_request, key_from_body, ApiErrorKind, Esc};

    #[test]
    fn activation_bodies() {
        assert_eq!(activation_request(br#"{"credential_blob": "AAEC", "secret": "AwQ="}"#).unwrap(), (vec![0, 1, 2], vec![3, 4]));
        // Each refused with the shape and its own reason (every message names the shape, so
        // the reason is what is checked).
        let cases: [(&[u8], &str); 6] = [
            (b"", "EOF while parsing"),
            (b"{}", "missing field `credential_blob`"),
            (br#"{"credential_blob": "AAEC"}"#, "missing field `secret`"),
            (br#"{"credential_blob": "!!", "secret": "AwQ="}"#, "credential_blob is not base64"),
            (br#"{"credential_blob": "AAEC", "secret": "A"}"#, "secret is not base64"),
            (br#"{"credential_blob": "AAEC", "secret": "AwQ=", "x": 1}"#, "unknown field `x`"),
        ];
        for (bad, why) in cases {
            let e = activation_request(bad).unwrap_err();
            assert!(e.starts_with("the body must be JSON {\"credential_blob\": base64 TPM2B_ID_OBJECT") && e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn body_key_forms() {
        assert!(key_from_body(b"").unwrap().is_none());
        assert!(key_from_body(b"  \n").unwrap().is_none());
        let k = "SWMKEY-1-4UmSCqHUO+hsTjdFW0zMy7IgK5R5ud7eHJbyajeJqdc";
        assert_eq!(key_from_body(k.as_bytes()).unwrap().unwrap().expose(), k);
        assert_eq!(key_from_body(format!("{{\"UnlockKey\": \"{k}\"}}").as_bytes()).unwrap().unwrap().expose(), k);
        let e = key_from_body(b"hello").unwrap_err();
        assert!(!e.message.contains("hello"), "{e}");
        assert_eq!(e.kind, ApiErrorKind::BadRequest);
        assert!(key_from_body(b"{\"x\":1}").is_err());
    }

    #[test]
    fn client_fields_are_bare_only_when_plain() {
        assert_eq!(Esc("admin").to_string(), "admin");
        assert_eq!(Esc("/v1.41/containers/c1%3F/json").to_string(), "/v1.41/containers/c1%3F/json");
        assert_eq!(Esc("").to_string(), "\"\"");
        assert_eq!(Esc("x role=\"admin\"").to_string(), r#""x role=\"admin\"""#);
        for hostile in ["a\nb", "\u{1b}[31m", "n\0", "b\u{7}", "a\u{2028}b", "r\u{202e}l", "x\u{85}y", "t\tab"] {
            let s = Esc(hostile).to_string();
            assert!(s.starts_with('"') && s.ends_with('"'), "{s}");
            assert!(s.chars().all(|c| !c.is_control() && c != '\u{2028}' && c != '\u{202e}'), "{hostile:?} -> {s:?}");
        }
    }
}
