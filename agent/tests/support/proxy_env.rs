//! The proxy under test: an in-process proxy with captured logs in front of a
//! real dockerd, the docker CLI through it, and a raw TLS client for the
//! spellings the CLI never sends (shared by `proxy.rs` and `door_policy.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmseal::config::Config;
use swarmseal::proxy::{pki, AgentApi, Proxy};
use tracing::instrument::WithSubscriber;

use super::*;

// ---------- fixtures ----------

pub struct Stub;
impl AgentApi for Stub {
    fn status(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send + '_>> {
        Box::pin(async { serde_json::json!({"swarm": "active", "stub": true}) })
    }
    fn bench(&self) -> swarmseal::proxy::BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async { Some(br#"{"tests":[]}"#.to_vec()) })
    }
    fn reseal(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, swarmseal::proxy::ApiError>> + Send + '_>> {
        Box::pin(async { Ok(serde_json::json!({"resealed": true})) })
    }
    fn escrow(&self, _: swarmseal::proxy::EscrowFile) -> swarmseal::proxy::BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async { None })
    }
}

#[derive(Clone, Default)]
pub struct Logs(pub Arc<Mutex<Vec<u8>>>);
impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// Lines containing every needle.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.text().lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(String::from).collect()
    }
    pub fn wait_for(&self, needles: &[&str]) -> String {
        let mut found = None;
        wait_until(&format!("a log line with {needles:?}"), Duration::from_secs(20), || {
            found = self.lines_with(needles).pop();
            found.is_some()
        });
        found.unwrap()
    }
}

pub struct ProxyRun {
    pub addr: SocketAddr,
    pub logs: Logs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ProxyRun {
    pub fn start(cfg: Config) -> ProxyRun {
        let logs = Logs::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let l2 = logs.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let sub = tracing_subscriber::fmt()
                    .with_writer(move || l2.clone())
                    .with_ansi(false)
                    .with_max_level(tracing::Level::DEBUG)
                    .finish();
                let p = Proxy::bind(&cfg).await.expect("proxy binds");
                addr_tx.send(p.local_addr()).unwrap();
                p.run(Arc::new(Stub), async move {
                    let _ = stop_rx.await;
                })
                .with_subscriber(sub)
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(20)).expect("proxy started");
        ProxyRun { addr, logs, stop: Some(stop_tx) }
    }
}

impl Drop for ProxyRun {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub struct Env {
    pub d: Dockerd,
    pub state: tempfile::TempDir,
    pub admin: PathBuf,
    pub ro: PathBuf,
    pub docker_config: tempfile::TempDir,
    pub proxy: ProxyRun,
}

pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Env {
    pub fn new(tweak: impl FnOnce(&mut Config)) -> Env {
        let d = Dockerd::start();
        let state = tempfile::tempdir().unwrap();
        let s = path_str(state.path()).to_string();
        ok(&swarmseal(&["--state-dir", &s, "certs", "init"], &[], None), "certs init");
        for (name, role) in [("admin", "admin"), ("ro", "readonly")] {
            let out = format!("{s}/bundles/{name}");
            ok(&swarmseal(&["--state-dir", &s, "certs", "issue", name, "--role", role, "--out", &out], &[], None), "certs issue");
        }
        let mut cfg = Config { state_dir: state.path().to_path_buf(), docker_host: d.host(), ..Default::default() };
        cfg.proxy.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut cfg);
        let proxy = ProxyRun::start(cfg);
        Env {
            admin: state.path().join("bundles/admin"),
            ro: state.path().join("bundles/ro"),
            d,
            state,
            docker_config: tempfile::tempdir().unwrap(),
            proxy,
        }
    }

    /// [`Env::new`] with basic auth: one `htpasswd` user, bcrypt at `cost` (read at bind).
    pub fn with_basic_auth(user: &str, password: &str, cost: u32) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ht = dir.path().join("htpasswd");
        std::fs::write(&ht, format!("# users\n{user}:{}\n", bcrypt::hash(password, cost).unwrap())).unwrap();
        Env::new(|c| c.proxy.htpasswd = Some(ht.clone()))
    }

    pub fn paths(&self) -> pki::PkiPaths {
        pki::PkiPaths::of(&Config { state_dir: self.state.path().to_path_buf(), ..Default::default() })
    }

    pub fn host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.proxy.addr.port())
    }

    /// The docker CLI through the proxy with a bundle (cert and key optional).
    pub fn cli(&self, ca: &Path, bundle: Option<&Path>, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", self.docker_config.path())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_CONTEXT")
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(ca);
        if let Some(b) = bundle {
            c.arg("--tlscert").arg(b.join("cert.pem")).arg("--tlskey").arg(b.join("key.pem"));
        } else {
            // The CLI falls back to DOCKER_CONFIG's cert.pem/key.pem: point it at an empty dir.
            c.env("DOCKER_CERT_PATH", self.docker_config.path());
        }
        c.arg("-H").arg(self.host()).args(args);
        c
    }

    pub fn docker_as(&self, bundle: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        run_bounded(self.cli(&bundle.join("ca.pem"), Some(bundle), args), stdin, Duration::from_secs(90))
    }

    pub fn admin(&self, args: &[&str]) -> String {
        ok(&self.docker_as(&self.admin, args, None), &format!("docker {args:?} (admin, through the proxy)"))
    }
}

/// Run a command with a deadline; kills it and panics when it hangs.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("docker CLI must be installed");
    if let Some(s) = stdin {
        let mut w = child.stdin.take().unwrap();
        let s = s.to_string();
        std::thread::spawn(move || {
            let _ = w.write_all(s.as_bytes());
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let o = rx.recv().unwrap().unwrap();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stdout: {} stderr: {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// A long-running command whose stdout lines arrive on a channel; killed on drop.
pub struct Streaming {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}
impl Streaming {
    pub fn start(mut cmd: Command) -> Streaming {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines }
    }
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("no line {what} within 30 s; got {seen:?}");
    }
    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}
impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------- a raw TLS client (for spellings the CLI never sends) ----------

/// TLS 1.3 to the proxy, trusting `ca`, with the bundle's `cert.pem`/`key.pem` if given
/// (the agent's own builder, `swarmseal_common::tls`).
pub fn client_config(ca: &Path, bundle: Option<&Path>) -> Arc<rustls::ClientConfig> {
    use swarmseal_common::tls::{client_config_from_files, Versions};
    let files = bundle.map(|d| (d.join("cert.pem"), d.join("key.pem")));
    Arc::new(client_config_from_files(Versions::Tls13, ca, files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()))).unwrap())
}

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// `POST target` with `Content-Length: 100` and only `partial` (fewer bytes) of the body, then
/// the client closes its side (close_notify, TCP write shutdown): a body cut short. Returns
/// the raw answer (status line, headers, body) as text.
pub fn post_cut_short(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, target: &str, partial: &str) -> String {
    assert!(partial.len() < 100);
    let mut s = connect(addr, cfg);
    s.write_all(format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{partial}").as_bytes()).unwrap();
    s.flush().unwrap();
    s.conn.send_close_notify();
    s.conn.complete_io(&mut s.sock).unwrap();
    let _ = s.sock.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Send one raw request (`Connection: close` added) and return (status, body), or Err on a TLS/IO failure.
pub fn raw(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, method: &str, target: &str, extra: &str) -> Result<(u16, String), String> {
    let mut s = connect(addr, cfg);
    let req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Ok((status, body))
}

