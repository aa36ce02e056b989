//! The proxy's door under attack (issue 14, items 1 and 2): the real `swarmseal proxy`
//! binary in front of a real dockerd, certificates from `swarmseal certs`, hostile
//! clients on loopback. Attackers connect from 127.0.0.2 (the flood: from 127.0.0.2 to
//! 127.0.0.17, more addresses than the handshake pool has room for; the whole 127/8 is
//! local), the admin from 127.0.0.1 and a second readonly identity from 127.0.0.3.
//!
//! The flood tests take a lock so that two floods never share the 2 CPUs' timing.
mod support;
use support::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

static FLOOD: Mutex<()> = Mutex::new(());

const ATTACKER: &str = "127.0.0.2";
const ADMIN_HOST: &str = "127.0.0.1";
const OTHER_HOST: &str = "127.0.0.3";

/// Raise this process's open-file limit: the floods hold ~1300 sockets.
fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    assert!(
        r.rlim_cur >= 4096,
        "RLIMIT_NOFILE hard limit {} is too low for the flood tests (need 4096)",
        r.rlim_cur
    );
}

/// dockerd, a PKI with admin/ro/ro2 bundles and `swarmseal proxy` with `[proxy]` extra keys.
struct Door {
    d: Dockerd,
    _state: tempfile::TempDir,
    bundles: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
    _proxy: AgentProcess,
}

impl Door {
    fn start(proxy_keys: &str) -> Door {
        raise_nofile();
        let d = Dockerd::start();
        let state = tempfile::tempdir().unwrap();
        let s = path_str(state.path()).to_string();
        let run = |args: &[&str]| {
            let o = swarmseal(args, &[], None);
            assert!(o.status.success(), "swarmseal {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        run(&["--state-dir", &s, "certs", "init"]);
        for (name, role) in [("admin", "admin"), ("ro", "readonly"), ("ro2", "readonly")] {
            run(&[
                "--state-dir",
                &s,
                "certs",
                "issue",
                name,
                "--role",
                role,
                "--out",
                &format!("{s}/bundles/{name}"),
            ]);
        }
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let cfg = state.path().join("config.toml");
        std::fs::write(&cfg, format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n{proxy_keys}\n")).unwrap();
        let log = state.path().join("proxy.log");
        let child = cmd(swarmseal_bin())
            .args(["--config", path_str(&cfg), "--state-dir", &s, "--docker-host", &d.host(), "proxy"])
            .env("NO_COLOR", "1")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let proxy = AgentProcess(child);
        wait_until("the proxy listening", Duration::from_secs(20), || std::net::TcpStream::connect(addr).is_ok());
        Door {
            bundles: state.path().join("bundles"),
            d,
            _state: state,
            addr,
            log,
            _proxy: proxy,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self, name: &str) -> Client {
        Client::new(&self.bundles.join(name), self.addr)
    }
}

/// A TLS client with one bundle.
#[derive(Clone)]
struct Client {
    tls: tokio_rustls::TlsConnector,
    addr: SocketAddr,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    fn new(bundle: &Path, addr: SocketAddr) -> Client {
        let (ca, cert, key) = (bundle.join("ca.pem"), bundle.join("cert.pem"), bundle.join("key.pem"));
        let cfg = swarmseal_common::tls::client_config_from_files(swarmseal_common::tls::Versions::Tls13, &ca, Some((&cert, &key))).unwrap();
        Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            addr,
        }
    }

    /// A TLS connection from `from` (a loopback address).
    async fn connect(&self, from: &str) -> std::io::Result<Box<dyn Io>> {
        let tcp = tcp_from(from, self.addr).await?;
        let s = self.tls.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
        Ok(Box::new(s))
    }

    /// A fresh connection, one request, the whole answer: (status, body); bounded by `limit`.
    async fn request(&self, from: &str, head: &str, limit: Duration) -> Result<(u16, String), String> {
        tokio::time::timeout(limit, async {
            let mut s = self.connect(from).await.map_err(|e| format!("connect: {e}"))?;
            s.write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            parse(&buf).ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)))
        })
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
    }
}

async fn tcp_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{from}:0").parse().unwrap())?;
    sock.connect(to).await
}

/// (status, body) of a complete HTTP/1.1 answer.
fn parse(buf: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default()))
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
}

/// Read until the end of an answer's head: Ok(Some(head)), Ok(None) when nothing came within
/// `limit`, Err when the connection ended first.
async fn read_head(s: &mut Box<dyn Io>, limit: Duration) -> Result<Option<String>, ()> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let r = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                // Keep a body that came along (the 503's JSON message).
                let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut b))
                    .await
                    .map(|r| r.map(|n| buf.extend_from_slice(&b[..n])));
                return true;
            }
        }
    })
    .await;
    match r {
        Ok(true) => Ok(Some(String::from_utf8_lossy(&buf).into_owned())),
        Ok(false) => Err(()),
        Err(_) if buf.is_empty() => Ok(None),
        Err(_) => Ok(Some(String::from_utf8_lossy(&buf).into_owned())),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// `n` plain TCP connections from `sources` addresses (127.0.0.2 on) that never start TLS,
/// each re-opened as soon as the proxy closes it, until `stop`; counts the connections opened.
/// One thread of its own (an attacker process), so the probes' client is not its victim.
fn tcp_flood(sources: usize, to: SocketAddr, n: usize, stop: Instant) -> Arc<AtomicUsize> {
    let opened = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let opened = opened.clone();
            let from = format!("127.0.0.{}", 2 + i % sources);
            async move {
                while Instant::now() < stop {
                    match tcp_from(&from, to).await {
                        Ok(mut s) => {
                            opened.fetch_add(1, Ordering::Relaxed);
                            let left = stop.saturating_duration_since(Instant::now());
                            let mut b = [0u8; 64];
                            let _ = tokio::time::timeout(left, s.read(&mut b)).await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        })
        .collect();
    std::thread::spawn(move || {
        rt.block_on(async {
            for t in tasks.into_iter().map(tokio::spawn).collect::<Vec<_>>() {
                let _ = t.await;
            }
        })
    });
    opened
}

/// Admin probes once a second for `secs` s, each on a new connection: how many got 200 within 1 s.
fn probe(rt: &tokio::runtime::Runtime, admin: &Client, secs: u64) -> (usize, Vec<String>) {
    let mut served = 0;
    let mut misses = Vec::new();
    for i in 0..secs {
        let t = Instant::now();
        match rt.block_on(admin.request(ADMIN_HOST, &get("/_ping"), Duration::from_secs(1))) {
            Ok((200, _)) => served += 1,
            other => misses.push(format!("probe {i}: {other:?} after {:?}", t.elapsed())),
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    (served, misses)
}

#[test]
fn no_certificate_flood_does_not_lock_the_admin_out() {
    let _g = FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let door = Door::start("");
    let rt = rt();
    let admin = door.client("admin");
    assert_eq!(rt.block_on(admin.request(ADMIN_HOST, &get("/_ping"), Duration::from_secs(5))).unwrap().0, 200);

    let t0 = Instant::now();
    // 16 sources × 8 (max_handshakes_per_address) is twice the pool (max_handshakes = 64).
    let opened = tcp_flood(16, door.addr, 600, t0 + Duration::from_secs(16));
    std::thread::sleep(Duration::from_millis(500));
    let (served, misses) = probe(&rt, &admin, 15);
    let opened = opened.load(Ordering::Relaxed);
    eprintln!(
        "flood: {opened} TCP connections opened from 16 addresses in {:?}; admin probes served within 1 s: {served}/15 {misses:?}",
        t0.elapsed()
    );
    assert!(
        served >= 14,
        "admin probes served within 1 s under a no-certificate flood: {served}/15 (need 90%): {misses:?}"
    );
    assert!(opened > 600, "the flood re-opened its connections ({opened} opened)");

    // Refusals are logged as a count per source per minute, not one line each.
    let log = door.log();
    let lines = log.lines().filter(|l| l.contains("refused") && l.contains(&format!("{ATTACKER} "))).count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} refusal lines for {ATTACKER} after {opened} connections:\n{log}"
    );
    let all = log.lines().filter(|l| l.contains("refused")).count();
    assert!(all <= 3 * 16, "{all} refusal lines in all after {opened} connections");
    drop(rt);
}

#[test]
fn a_readonly_certificate_cannot_hold_the_door() {
    let _g = FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    // Long body timeout: this test is about the caps, the bodies must stay held.
    let door = Door::start("body_timeout_secs = 120\nidle_timeout_secs = 120");
    let rt = rt();
    let (hog, admin, other) = (door.client("ro"), door.client("admin"), door.client("ro2"));
    let held: Arc<Mutex<Vec<Box<dyn Io>>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<String>>> = Arc::default();

    // 600 event streams, then 600 slow bodies, all from one readonly certificate.
    let slow_body = "GET /_ping HTTP/1.1\r\nHost: docker\r\nContent-Length: 1000\r\n\r\n{";
    for (what, head) in [("events", get("/events")), ("slow body", slow_body.to_string())] {
        let tasks: Vec<_> = (0..600)
            .map(|_| {
                let (hog, head, held, refusals) = (hog.clone(), head.clone(), held.clone(), refusals.clone());
                rt.spawn(async move {
                    let stop = Instant::now() + Duration::from_secs(20);
                    while Instant::now() < stop {
                        let Ok(mut s) = hog.connect(ATTACKER).await else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        if s.write_all(head.as_bytes()).await.is_err() {
                            continue;
                        }
                        match read_head(&mut s, Duration::from_millis(1500)).await {
                            // Held: a stream that answered 200, or a body the engine waits for.
                            Ok(Some(h)) if h.starts_with("HTTP/1.1 200") => held.lock().unwrap().push(s),
                            Ok(Some(h)) => refusals.lock().unwrap().push(h),
                            Ok(None) if head.ends_with('{') => held.lock().unwrap().push(s),
                            // No answer to a stream, or closed during the handshake phase: again.
                            Ok(None) | Err(()) => continue,
                        }
                        return;
                    }
                })
            })
            .collect();
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        eprintln!("after {what}: {} connections held by the readonly hog", held.lock().unwrap().len());
    }
    let n_held = held.lock().unwrap().len();
    let refused = refusals.lock().unwrap().clone();
    assert!(n_held <= 64, "one certificate holds {n_held} connections (max_connections_per_identity = 64)");
    assert!(n_held >= 32, "the hog got its share ({n_held})");
    let named = |cap: &str| refused.iter().any(|r| r.starts_with("HTTP/1.1 503") && r.contains(cap));
    assert!(
        named("max_streams_per_identity"),
        "over the stream cap: 503 naming it; got {:?}",
        refused.first()
    );
    assert!(
        named("max_connections_per_identity"),
        "over the identity cap: 503 naming it; got {:?}",
        refused.last()
    );

    // The admin and another readonly identity are still served, while the hog holds its share.
    let (served, misses) = probe(&rt, &admin, 5);
    assert_eq!(served, 5, "admin probes while a readonly certificate holds the door: {misses:?}");
    let r = rt.block_on(other.request(OTHER_HOST, &get("/containers/json"), Duration::from_secs(2)));
    assert_eq!(r.as_ref().map(|r| r.0), Ok(200), "a second readonly identity: {r:?}");
    let mut ev = rt.block_on(other.connect(OTHER_HOST)).unwrap();
    rt.block_on(ev.write_all(get("/events").as_bytes())).unwrap();
    let h = rt.block_on(read_head(&mut ev, Duration::from_secs(2))).ok().flatten().unwrap_or_default();
    assert!(h.starts_with("HTTP/1.1 200"), "a second readonly identity's event stream: {h:?}");
    assert!(
        held.lock().unwrap().len() == n_held,
        "the hog's connections were still open while the others were served"
    );
    drop(held);
    drop(rt);
}

#[test]
fn a_stalled_body_is_closed_and_a_slow_one_is_not() {
    let door = Door::start("body_timeout_secs = 2");
    let rt = rt();
    let admin = door.client("admin");

    // Head and 1 of 1000 body bytes, then nothing: closed after ~2 s, never answered by the engine.
    for head in [
        "POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        "GET /_ping HTTP/1.1\r\nHost: docker\r\nContent-Length: 1000\r\n\r\nx",
        "POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
    ] {
        let t = Instant::now();
        let out = rt.block_on(async {
            let mut s = admin.connect(ADMIN_HOST).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
            String::from_utf8_lossy(&buf).into_owned()
        });
        let took = t.elapsed();
        eprintln!("stalled body {:?}: closed after {took:?}, answer {out:?}", head.lines().next());
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
            "{head:?}: closed after {took:?} (body_timeout_secs = 2)"
        );
        assert!(!out.contains("HTTP/1.1 201"), "a stalled body never reaches the engine complete: {out:?}");
    }
    assert!(door.log().contains("request body timeout"), "the close is in the audit log");

    // A slow upload that keeps progressing (a byte every 0.5 s for 6 s, 3× the timeout) goes on.
    let body = format!("{}{}", " ".repeat(11), r#"{"Image":"door-flood-none:1"}"#);
    let t = Instant::now();
    let out = rt.block_on(async {
        let mut s = admin.connect(ADMIN_HOST).await.unwrap();
        let head = format!(
            "POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for (i, b) in body.as_bytes().iter().enumerate() {
            if s.write_all(&[*b]).await.is_err() {
                return format!("closed after {i} body bytes");
            }
            s.flush().await.unwrap();
            if i < 12 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    eprintln!("slow body: {:?} after {:?}", out.lines().next(), t.elapsed());
    // The engine parsed the whole body: it answers about the image, not about the JSON.
    assert!(
        out.starts_with("HTTP/1.1 404") && out.contains("door-flood-none"),
        "slow but progressing upload: {out:?}"
    );

    // A complete chunked body whose answer takes longer than the body timeout (as `docker load`
    // or an agent endpoint's work does) is answered, not cut: nothing is owed once it ended.
    // `POST /containers/{id}/stop?t=4` on a PID 1 that ignores SIGTERM answers after ~4 s.
    door.d.import_busybox("door-flood-busybox:1");
    let id = door.d.docker_ok(&["run", "-d", "door-flood-busybox:1", "sleep", "60"]);
    let id = id.trim();
    let t = Instant::now();
    let out = rt.block_on(async {
        let mut s = admin.connect(ADMIN_HOST).await.unwrap();
        let req = format!("POST /containers/{id}/stop?t=4 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    eprintln!("complete chunked body, slow answer: {:?} after {:?}", out.lines().next(), t.elapsed());
    assert!(t.elapsed() >= Duration::from_secs(3), "the stop took the engine's grace period: {:?}", t.elapsed());
    assert!(out.starts_with("HTTP/1.1 204"), "a complete body is not cut by the body timeout (2 s) while the engine works: {out:?}");
    drop(rt);
}

#[test]
fn streams_outlive_the_idle_timeout_while_bytes_flow() {
    let door = Door::start("idle_timeout_secs = 2\nbody_timeout_secs = 2\nheader_timeout_secs = 2");
    let b = door.bundles.join("admin");
    let docker = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_CERT_PATH")
            .env("DOCKER_CONFIG", &b);
        c.arg("--tlsverify")
            .arg("--tlscacert")
            .arg(b.join("ca.pem"))
            .arg("--tlscert")
            .arg(b.join("cert.pem"));
        c.arg("--tlskey")
            .arg(b.join("key.pem"))
            .arg("-H")
            .arg(format!("tcp://{}", door.addr))
            .args(args);
        c
    };
    door.d.import_busybox("door:1");
    door.d.docker_ok(&["run", "-d", "--name", "c1", "door:1", "sleep", "600"]);

    // `docker events` and `docker exec -i` through the proxy, each fed for 8 s (4× idle_timeout).
    let mut events = docker(&["events", "--format", "{{.Actor.Attributes.name}}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut exec = docker(&["exec", "-i", "c1", "sh", "-c", "while read l; do echo got $l; done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut exec_in = exec.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..8 {
        door.d.docker_ok(&["network", "create", &format!("door-net-{i}")]);
        use std::io::Write;
        writeln!(exec_in, "line-{i}").unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(exec_in);
    let exec_out = exec.wait_with_output().unwrap();
    let _ = events.kill();
    let events_out = events.wait_with_output().unwrap();
    let ev = String::from_utf8_lossy(&events_out.stdout);
    let ex = String::from_utf8_lossy(&exec_out.stdout);
    assert!(
        ev.contains("door-net-0") && ev.contains("door-net-7"),
        "docker events through the proxy past idle_timeout:\n{ev}"
    );
    assert!(
        ex.contains("got line-0") && ex.contains("got line-7") && exec_out.status.success(),
        "docker exec -i past idle_timeout:\n{ex}"
    );
}
