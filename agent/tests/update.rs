//! The operator's story of an image update through the proxy, against a real dockerd, a real
//! swtpm and the real `swarmseal agent`: a release built and signed here the way
//! `scripts/build-image --release` does it (sha256sum, `openssl dgst -sha256 -sign` with a key
//! from `scripts/make-keys`, `tar --format=ustar`) is POSTed with an admin certificate, staged,
//! and handed to the apply service; releases signed by another key, altered in transit, too
//! large, or sent with a readonly certificate are refused and leave nothing staged. Then
//! `swarmseal health`, the boot-assessment gate, with the swarm unlocked, the proxy down, the
//! swarm locked and the engine gone.
//!
//! The apply service is the real `swarmseal update apply --stdin-request`, run per connection
//! with the connection as stdin/stdout/stderr exactly as `swarmseal-update.socket`
//! (`Accept=yes`) runs it. systemd-sysupdate and systemctl are fakes that record their
//! arguments: writing A/B partitions and rebooting cannot happen on this host (the QEMU
//! scenarios do that on the image).
mod support;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const V1: &str = "1.0.0";
const V2: &str = "1.1.0.g0123abc";
const ROOT_UUID: &str = "6d2f0c8a-2b1e-4c8e-9a43-2f3c1b0e7d55";
const VERITY_UUID: &str = "a1b2c3d4-e5f6-4789-8abc-def012345678";
/// In every UKI of the test releases: it must never reach a log.
const BODY_MARKER: &str = "release-body-must-not-be-logged";


/// `swarmseal-update.socket` (Accept=yes, MaxConnections=1) in miniature: each connection runs
/// `swarmseal update apply --stdin-request` with the connection as stdin, stdout and stderr.
struct ApplySocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApplySocket {
    fn start(path: &Path, args: Vec<String>) -> ApplySocket {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicUsize::new(0));
        let (s2, r2) = (stop.clone(), runs.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                r2.fetch_add(1, Ordering::SeqCst);
                let fd: OwnedFd = conn.into();
                let st = Command::new(swarmseal_bin())
                    .args(&args)
                    .args(["update", "apply", "--stdin-request"])
                    .env("NO_COLOR", "1")
                    .stdin(Stdio::from(fd.try_clone().unwrap()))
                    .stdout(Stdio::from(fd.try_clone().unwrap()))
                    .stderr(Stdio::from(fd))
                    .status();
                st.expect("swarmseal update apply runs");
            }
        });
        ApplySocket { path: path.to_path_buf(), stop, runs, thread: Some(thread) }
    }
}

impl Drop for ApplySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sh(script: &str, dir: &Path) {
    let o = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().unwrap();
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
}

fn names(v: &str) -> [String; 3] {
    [format!("swarmseal_{v}.efi"), format!("swarmseal_{v}_{ROOT_UUID}.root.raw"), format!("swarmseal_{v}_{VERITY_UUID}.root-verity.raw")]
}

/// The three files of version `v` (`root_len` bytes of root image).
fn release_files(v: &str, root_len: usize) -> Vec<(String, Vec<u8>)> {
    let [efi, root, verity] = names(v);
    let uki = format!("MZ fake UKI {v} {BODY_MARKER}\n").repeat(2000).into_bytes();
    let root_img: Vec<u8> = (0..root_len).map(|i| (i * 7 + v.len()) as u8).collect();
    vec![(efi, uki), (root, root_img), (verity, vec![0x5a; 8192])]
}

/// Build `swarmseal_V.tar` as the release contract says, signed with `key`; `tamper` changes
/// one byte of the root image after signing (an alteration in transit).
fn build_release(work: &Path, v: &str, key: &Path, root_len: usize, tamper: bool) -> PathBuf {
    let dir = work.join(format!("rel-{v}-{}-{tamper}-{root_len}", key.parent().unwrap().file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = release_files(v, root_len);
    for (n, b) in &files {
        std::fs::write(dir.join(n), b).unwrap();
    }
    let [efi, root, verity] = names(v);
    sh(&format!("sha256sum {efi} {root} {verity} > SHA256SUMS && openssl dgst -sha256 -sign {} -out SHA256SUMS.sig SHA256SUMS", key.display()), &dir);
    if tamper {
        let p = dir.join(&root);
        let mut b = std::fs::read(&p).unwrap();
        b[1000] ^= 0x01;
        std::fs::write(&p, b).unwrap();
    }
    let tar = PathBuf::from(format!("{}.tar", dir.display()));
    sh(&format!("tar --format=ustar -cf {} SHA256SUMS SHA256SUMS.sig {efi} {root} {verity}", tar.display()), &dir);
    tar
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Everything under `dir`, relative paths, sorted (empty when it does not exist).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                out.push(e.path().strip_prefix(base).unwrap().display().to_string());
                if e.path().is_dir() {
                    walk(base, &e.path(), out);
                }
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn a_signed_release_is_staged_and_installed_and_health_gates_the_boot() {
    let d = Dockerd::start();
    let tpm = Swtpm::start();
    let tmp = tempfile::Builder::new().prefix("ssu").tempdir_in("/tmp").unwrap();
    let work = tmp.path();
    let state = work.join("state");
    let s = path_str(&state).to_string();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let make_keys = repo.join("scripts/make-keys");
    for k in ["keys", "other-keys"] {
        let o = Command::new(&make_keys).arg(work.join(k)).output().unwrap();
        assert!(o.status.success(), "scripts/make-keys: {}", text(&o));
    }
    let fleet_key = work.join("keys/pcr-signing.key");
    let other_key = work.join("other-keys/pcr-signing.key");

    // PKI, fakes, configuration.
    let run = |args: &[&str]| swarmseal(&[&["--state-dir", &s], args].concat(), &[], None);
    assert!(run(&["certs", "init"]).status.success());
    for (n, role) in [("admin", "admin"), ("ro", "readonly")] {
        let o = run(&["certs", "issue", n, "--role", role, "--out", path_str(&work.join(n))]);
        assert!(o.status.success(), "{}", text(&o));
    }
    for tool in ["sysupdate", "systemctl"] {
        let p = work.join(format!("fake-{tool}"));
        std::fs::write(&p, format!("#!/bin/sh\necho \"$*\" >> {work}/{tool}.argv\necho \"fake {tool}: $*\"\n", work = work.display())).unwrap();
        sh(&format!("chmod 0755 {}", p.display()), work);
    }
    std::fs::write(work.join("os-release"), "ID=debian\nIMAGE_ID=swarmseal\nIMAGE_VERSION=\"0.9.0\"\n").unwrap();
    let port = free_port();
    let max_bytes = 2 << 20;
    let cfg_text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[bench]\nat_boot = false\n[swarm]\ninit = true\nadvertise_addr = \"{addr}\"\n\
         [update]\npublic_key = \"{w}/keys/pcr-signing.pem\"\nsocket = \"{w}/update.sock\"\nsysupdate = \"{w}/fake-sysupdate\"\n\
         systemctl = \"{w}/fake-systemctl\"\nos_release = \"{w}/os-release\"\nmax_bytes = {max_bytes}\n",
        addr = d.addr,
        w = work.display()
    );
    let cfg = work.join("agent.toml");
    std::fs::write(&cfg, &cfg_text).unwrap();
    let common: Vec<String> = ["--config", path_str(&cfg), "--docker-host", &d.host(), "--state-dir", &s, "--tcti", &tpm.tcti()].iter().map(|x| x.to_string()).collect();
    let apply = ApplySocket::start(&work.join("update.sock"), common.clone());
    let log = work.join("agent.log");
    let start_agent = || {
        Command::new(swarmseal_bin())
            .args(&common)
            .arg("agent")
            .stdout(Stdio::null())
            .stderr(std::fs::File::options().create(true).append(true).open(&log).unwrap())
            .spawn()
            .map(AgentProcess)
            .unwrap()
    };
    let stop_agent = |mut a: AgentProcess| {
        let _ = Command::new("kill").arg("-TERM").arg(a.0.id().to_string()).status();
        assert!(a.0.wait().unwrap().success(), "agent log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    };
    let health = |extra: &[&str]| -> Output {
        let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
        args.push("health");
        args.extend_from_slice(extra);
        swarmseal(&args, &[], None)
    };
    // POST through the proxy with curl (streams the file: `-T`); returns (status, body).
    let post = |bundle: &str, tar: &Path, query: &str| -> (u16, serde_json::Value) {
        let b = work.join(bundle);
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "120", "-X", "POST", "-H", "Content-Type: application/x-tar", "-w", "\n%{http_code}"])
            .arg("--cacert").arg(b.join("ca.pem")).arg("--cert").arg(b.join("cert.pem")).arg("--key").arg(b.join("key.pem"))
            .arg("-T").arg(tar)
            .arg(format!("https://127.0.0.1:{port}/swarmseal/v1/update{query}"))
            .output()
            .expect("curl must be installed");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        (status.trim().parse().unwrap_or_else(|_| panic!("curl: {}", text(&o))), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    };
    let get_status = || -> serde_json::Value {
        let b = work.join("admin");
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--fail"])
            .arg("--cacert").arg(b.join("ca.pem")).arg("--cert").arg(b.join("cert.pem")).arg("--key").arg(b.join("key.pem"))
            .arg(format!("https://127.0.0.1:{port}/swarmseal/v1/status"))
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    let updates = state.join("updates");
    let argv = |tool: &str| std::fs::read_to_string(work.join(format!("{tool}.argv"))).unwrap_or_default();

    // First boot: the agent inits the swarm, seals, serves.
    let agent = start_agent();
    wait_until("the agent inits the swarm and serves", Duration::from_secs(90), || {
        d.swarm_state() == "active" && get_status()["swarm"]["state"] == "active"
    });
    let st = get_status();
    // No SBOM on this host (the default /usr/share/swarmseal/sbom.cdx.json): its digest is null.
    assert_eq!(st["image"], serde_json::json!({"id": "swarmseal", "version": "0.9.0", "sbom_sha256": null}), "{st}");

    // ---- health: unlocked, proxy serving (pinned to the configured server certificate).
    let o = health(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("proved its key"), "{}", text(&o));
    // A proxy presenting another certificate than the configured one is not ours: 14.
    let wrong = work.join("wrong.toml");
    std::fs::write(&wrong, format!("{cfg_text}\n").replace("[bench]", &format!("server_cert = \"{}/admin/cert.pem\"\n[bench]", work.display()))).unwrap();
    let o = swarmseal(&["--config", path_str(&wrong), "--docker-host", &d.host(), "--state-dir", &s, "health"], &[], None);
    assert_eq!(code(&o), 14, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another certificate"), "{}", text(&o));
    // No readable server certificate: the probe settles for a ServerHello, and says so.
    let hello = work.join("hello.toml");
    std::fs::write(&hello, cfg_text.replace("[bench]", &format!("server_cert = \"{}/nonexistent.pem\"\n[bench]", work.display()))).unwrap();
    let o = swarmseal(&["--config", path_str(&hello), "--docker-host", &d.host(), "--state-dir", &s, "health"], &[], None);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ServerHello"), "{}", text(&o));

    // ---- refused releases leave nothing behind.
    let other = build_release(work, V1, &other_key, 300_000, false);
    let (code_, body) = post("admin", &other, "");
    assert_eq!(code_, 422, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("release not signed by this fleet's key"), "{body}");
    assert!(tree(&updates).is_empty(), "something was written for an unsigned release: {:?}", tree(&updates));

    let tampered = build_release(work, V1, &fleet_key, 300_000, true);
    let (code_, body) = post("admin", &tampered, "");
    assert_eq!(code_, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("does not match SHA256SUMS"), "{body}");
    assert!(tree(&updates).is_empty(), "an altered release left files: {:?}", tree(&updates));

    let good = build_release(work, V1, &fleet_key, 300_000, false);
    let (code_, body) = post("ro", &good, "");
    assert_eq!(code_, 403, "{body}");
    assert!(tree(&updates).is_empty());
    assert_eq!(apply.runs.load(Ordering::SeqCst), 0, "the apply service was asked for a refused release");

    let big = build_release(work, V1, &fleet_key, max_bytes as usize, false);
    let (code_, body) = post("admin", &big, "");
    assert_eq!(code_, 413, "{body}");
    assert!(tree(&updates).is_empty());

    // ---- a signed release: staged, verified again and installed by the apply service.
    let (code_, body) = post("admin", &good, "");
    assert_eq!(code_, 200, "{body}\nagent log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(body, serde_json::json!({"version": V1, "staged": true, "reboot": false, "partitions_only": false}));
    let staged = updates.join("staged");
    for (n, b) in release_files(V1, 300_000) {
        assert_eq!(std::fs::read(staged.join(&n)).unwrap(), b, "{n} staged as sent");
    }
    assert!(staged.join("SHA256SUMS").exists() && staged.join("SHA256SUMS.sig").exists());
    assert_eq!(argv("sysupdate"), format!("update {V1}\n"));
    assert_eq!(argv("systemctl"), "", "no reboot was asked for");
    assert_eq!(apply.runs.load(Ordering::SeqCst), 1);

    // The next one, with a reboot: it replaces the staged release.
    let good2 = build_release(work, V2, &fleet_key, 200_000, false);
    let (code_, body) = post("admin", &good2, "?reboot=1");
    assert_eq!(code_, 200, "{body}");
    assert_eq!(body, serde_json::json!({"version": V2, "staged": true, "reboot": true, "partitions_only": false}));
    let mut want: Vec<String> = names(V2).to_vec();
    want.extend(["SHA256SUMS".into(), "SHA256SUMS.sig".into()]);
    want.sort();
    assert_eq!(tree(&staged), want, "only one release is staged");
    assert_eq!(argv("sysupdate"), format!("update {V1}\nupdate {V2}\n"));
    wait_until("systemctl reboot", Duration::from_secs(10), || argv("systemctl") == "reboot\n");

    // An altered release after that: refused, the staged one untouched.
    let tampered2 = build_release(work, "1.2.0", &fleet_key, 200_000, true);
    assert_eq!(post("admin", &tampered2, "").0, 422);
    assert_eq!(tree(&staged), want);
    let mut all: Vec<String> = want.iter().map(|n| format!("staged/{n}")).collect();
    all.push("staged".into());
    all.sort();
    assert_eq!(tree(&updates), all, "no partial release left behind");

    // ---- pre-staging (what `fleet update` does for the next manager while one reboots):
    // ?stage=1 writes root and root-verity only (the stage definitions), never reboots.
    let v3 = "1.3.0";
    let good3 = build_release(work, v3, &fleet_key, 100_000, false);
    let (code_, body) = post("admin", &good3, "?stage=1");
    assert_eq!(code_, 200, "{body}");
    assert_eq!(body, serde_json::json!({"version": v3, "staged": true, "reboot": false, "partitions_only": true}));
    assert!(
        argv("sysupdate").ends_with(&format!("update {V2}\n--definitions=/usr/lib/swarmseal/sysupdate-stage.d update {v3}\n")),
        "{}",
        argv("sysupdate")
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(argv("systemctl"), "reboot\n", "?stage=1 rebooted");
    // Then ?staged=V with an empty body installs the held release in full and reboots.
    let empty = work.join("empty-body");
    std::fs::write(&empty, b"").unwrap();
    for (query, status, says) in [
        ("?stage=1&reboot=1", 400, "not both"),
        ("?staged=1.3.0&stage=1", 400, "not with ?stage"),
        ("?staged=1.0.0&reboot=1", 409, "staged release is 1.3.0, not 1.0.0"),
        ("?staged=1.3.0%2F..", 400, "not a release version"),
    ] {
        let (code_, body) = post("admin", &empty, query);
        assert_eq!(code_, status, "{query}: {body}");
        assert!(body["message"].as_str().unwrap_or_default().contains(says), "{query}: {body}");
    }
    let (code_, body) = post("admin", &good3, "?staged=1.3.0");
    assert_eq!(code_, 400, "a body with ?staged=: {body}");
    let (code_, body) = post("ro", &empty, "?staged=1.3.0&reboot=1");
    assert_eq!(code_, 403, "{body}");
    let (code_, body) = post("admin", &empty, "?staged=1.3.0&reboot=1");
    assert_eq!(code_, 200, "{body}");
    assert_eq!(body, serde_json::json!({"version": v3, "staged": true, "reboot": true, "partitions_only": false}));
    assert!(argv("sysupdate").ends_with(&format!("sysupdate-stage.d update {v3}\nupdate {v3}\n")), "{}", argv("sysupdate"));
    wait_until("systemctl reboot", Duration::from_secs(10), || argv("systemctl") == "reboot\nreboot\n");
    let mut want: Vec<String> = names(v3).to_vec();
    want.extend(["SHA256SUMS".into(), "SHA256SUMS.sig".into()]);
    want.sort();
    assert_eq!(tree(&staged), want, "the held release was installed as it was");

    // The operator's (and CI's) check of a release file or directory.
    let verify = |p: &Path| swarmseal(&["--config", path_str(&cfg), "update", "verify", path_str(p)], &[], None);
    let o = verify(&good);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(code(&verify(&staged)), 0);
    assert_eq!(code(&verify(&other)), 15);
    assert_eq!(code(&verify(&tampered)), 15);

    // Audit: security events for each update, never a byte of a body.
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(agent_log.contains("image_update") && agent_log.contains("image_update_refused"), "{agent_log}");
    assert!(agent_log.contains("security event: image_update (denied)"), "the readonly attempt is a security event");
    assert!(!agent_log.contains(BODY_MARKER), "a release body reached the log");

    // ---- health: proxy down, then locked, then the engine gone.
    stop_agent(agent);
    let o = health(&[]);
    assert_eq!(code(&o), 14, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("proxy does not serve"), "{}", text(&o));

    let mut d = d;
    d.restart();
    assert_eq!(d.swarm_state(), "locked");
    // The agent again in the same boot: the phase lock keeps it from unsealing, so it stays locked.
    let agent = start_agent();
    wait_until("the proxy serves again", Duration::from_secs(60), || get_status()["swarm"]["state"] == "locked");
    let t = Instant::now();
    let o = health(&["--wait", "3"]);
    assert_eq!(code(&o), 13, "{}", text(&o));
    assert!(t.elapsed() >= Duration::from_secs(3), "--wait polls for its whole time");
    assert!(String::from_utf8_lossy(&o.stderr).contains("locked"), "{}", text(&o));
    stop_agent(agent);
    d.stop();
    let o = health(&[]);
    assert_eq!(code(&o), 3, "{}", text(&o));

    let mut keys = String::new();
    std::fs::File::open(work.join("keys/pcr-signing.key")).unwrap().read_to_string(&mut keys).unwrap();
    assert!(!agent_log.contains(keys.lines().nth(1).unwrap()), "a private key reached the log");
}

/// A release server for the HTTPS-source tests: TLS (rustls, ring) on 127.0.0.1 with
/// `cert_pem`/`key_pem`, answering `routes` (path → status, body) and 404 elsewhere; a 302
/// carries a Location with a token that must never be repeated. Records the paths asked for.
struct ReleaseServer {
    port: u16,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl ReleaseServer {
    fn start(cert_pem: &str, key_pem: &str, routes: Vec<(String, u16, Vec<u8>)>) -> ReleaseServer {
        use http_body_util::Full;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let routes = Arc::new(routes);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, routes, seen) = (acceptor.clone(), routes.clone(), seen2.clone());
                tokio::spawn(async move {
                    // A client that refuses our certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let path = req.uri().path().to_string();
                        seen.lock().unwrap().push(path.clone());
                        let (status, body) = routes.iter().find(|(p, _, _)| *p == path).map(|(_, s, b)| (*s, b.clone())).unwrap_or((404, b"no such release\n".to_vec()));
                        let mut r = hyper::Response::builder().status(status);
                        if status == 302 {
                            r = r.header("location", "https://mirror.example/swarmseal_1.3.0.tar?X-Amz-Signature=not-for-logs");
                        }
                        async move { Ok::<_, std::convert::Infallible>(r.body(Full::new(bytes::Bytes::from(body))).unwrap()) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                });
            }
        });
        ReleaseServer { port, seen, _rt: rt }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A CA (PEM cert, issuer) and a server certificate for localhost/127.0.0.1 it signed
/// (PEM cert, PEM key).
fn test_ca(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = sp.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// `POST /swarmseal/v1/update?version=V` with an empty body: the agent fetches
/// `<[update] source>swarmseal_V.tar` over HTTPS (server verified against `source_ca`) and
/// handles it exactly like an upload. `swarmseal proxy` serves the endpoint the same way the
/// agent does, without a TPM or an engine, which keeps this fast.
#[test]
fn a_release_is_fetched_from_the_https_source() {
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new().prefix("ssh").tempdir_in("/tmp").unwrap();
    let work = tmp.path();
    let state = work.join("state");
    let s = path_str(&state).to_string();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for k in ["keys", "other-keys"] {
        let o = Command::new(repo.join("scripts/make-keys")).arg(work.join(k)).output().unwrap();
        assert!(o.status.success(), "scripts/make-keys: {}", text(&o));
    }
    let fleet_key = work.join("keys/pcr-signing.key");
    let o = swarmseal(&["--state-dir", &s, "certs", "init"], &[], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = swarmseal(&["--state-dir", &s, "certs", "issue", "admin", "--role", "admin", "--out", path_str(&work.join("admin"))], &[], None);
    assert!(o.status.success(), "{}", text(&o));
    for tool in ["sysupdate", "systemctl"] {
        let p = work.join(format!("fake-{tool}"));
        std::fs::write(&p, format!("#!/bin/sh\necho \"$*\" >> {work}/{tool}.argv\necho \"fake {tool}: $*\"\n", work = work.display())).unwrap();
        sh(&format!("chmod 0755 {}", p.display()), work);
    }
    let argv = |tool: &str| std::fs::read_to_string(work.join(format!("{tool}.argv"))).unwrap_or_default();

    // The releases the source serves under /rel/.
    let tar = |p: PathBuf| std::fs::read(p).unwrap();
    let good = tar(build_release(work, V1, &fleet_key, 300_000, false));
    let routes = vec![
        (format!("/rel/swarmseal_{V1}.tar"), 200, good.clone()),
        ("/rel/swarmseal_1.1.0.tar".into(), 200, tar(build_release(work, "1.1.0", &work.join("other-keys/pcr-signing.key"), 300_000, false))),
        // Signed by the fleet, but not the version its name says.
        ("/rel/swarmseal_1.2.0.tar".into(), 200, good.clone()),
        ("/rel/swarmseal_1.3.0.tar".into(), 302, Vec::new()),
        ("/rel/swarmseal_1.4.0.tar".into(), 200, tar(build_release(work, "1.4.0", &fleet_key, 1_200_000, false))),
    ];
    let (ca_pem, cert_pem, key_pem) = test_ca("swarmseal test release CA");
    std::fs::write(work.join("source-ca.pem"), &ca_pem).unwrap();
    let source = ReleaseServer::start(&cert_pem, &key_pem, routes.clone());
    // Same names and content, but a certificate from a CA the manager does not trust.
    let (_, rogue_cert, rogue_key) = test_ca("some other CA");
    let rogue = ReleaseServer::start(&rogue_cert, &rogue_key, routes);

    // Three proxies: source configured, source with the wrong certificate, no source.
    let log = work.join("proxy.log");
    let proxy = |name: &str, source_lines: &str| -> (AgentProcess, u16, PathBuf) {
        let port = free_port();
        let cfg = work.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[bench]\nat_boot = false\n\
                 [update]\npublic_key = \"{w}/keys/pcr-signing.pem\"\nsocket = \"{w}/update.sock\"\nsysupdate = \"{w}/fake-sysupdate\"\n\
                 systemctl = \"{w}/fake-systemctl\"\nmax_bytes = {max}\n{source_lines}",
                w = work.display(),
                max = 1 << 20
            ),
        )
        .unwrap();
        let child = cmd(swarmseal_bin())
            .args(["--config", path_str(&cfg), "--state-dir", &s, "proxy"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::options().create(true).append(true).open(&log).unwrap())
            .spawn()
            .map(AgentProcess)
            .unwrap();
        (child, port, cfg)
    };
    let ca_line = format!("source_ca = \"{}/source-ca.pem\"\n", work.display());
    let (_p1, with_source, cfg) = proxy("source", &format!("source = \"https://localhost:{}/rel/\"\n{ca_line}", source.port));
    let (_p2, wrong_cert, _) = proxy("rogue", &format!("source = \"https://localhost:{}/rel\"\n{ca_line}", rogue.port));
    let (_p3, no_source, _) = proxy("none", "");
    let _apply = ApplySocket::start(&work.join("update.sock"), vec!["--config".into(), path_str(&cfg).into(), "--state-dir".into(), s.clone()]);
    for port in [with_source, wrong_cert, no_source] {
        wait_until("the proxy listens", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }
    // POST with curl: no body unless `upload` (then -T FILE); returns (status, JSON body).
    let post = |port: u16, query: &str, upload: Option<&Path>| -> (u16, serde_json::Value) {
        let b = work.join("admin");
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "60", "-X", "POST", "-w", "\n%{http_code}"])
            .arg("--cacert").arg(b.join("ca.pem")).arg("--cert").arg(b.join("cert.pem")).arg("--key").arg(b.join("key.pem"));
        if let Some(f) = upload {
            c.arg("-T").arg(f);
        }
        let o = c.arg(format!("https://127.0.0.1:{port}/swarmseal/v1/update{query}")).output().expect("curl must be installed");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        (status.trim().parse().unwrap_or_else(|_| panic!("curl: {}", text(&o))), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    };
    let msg = |v: &serde_json::Value| v["message"].as_str().unwrap_or_default().to_string();
    let updates = state.join("updates");
    let nothing_staged = |what: &str| assert!(tree(&updates).is_empty(), "{what}: something was written: {:?}", tree(&updates));

    // ---- refusals first: each leaves nothing staged and never reaches the apply service.
    let (c, b) = post(with_source, "?version=1.1.0", None);
    assert_eq!(c, 422, "{b}");
    assert!(msg(&b).starts_with("release not signed by this fleet's key"), "{b}");
    nothing_staged("another key");

    let (c, b) = post(with_source, "?version=1.2.0", None);
    assert_eq!(c, 422, "{b}");
    assert!(msg(&b).contains(&format!("the release is version {V1}, not 1.2.0")), "{b}");
    nothing_staged("another version than asked");

    let (c, b) = post(with_source, "?version=9.9.9", None);
    assert_eq!(c, 502, "{b}");
    assert!(msg(&b).contains("404 Not Found") && msg(&b).contains(&format!("https://localhost:{}/rel/swarmseal_9.9.9.tar", source.port)), "{b}");
    nothing_staged("404");

    let (c, b) = post(with_source, "?version=1.3.0", None);
    assert_eq!(c, 502, "{b}");
    assert!(msg(&b).contains("302 Found") && msg(&b).contains("not followed"), "{b}");
    assert!(!b.to_string().contains("not-for-logs"), "the redirect's Location was repeated: {b}");

    let (c, b) = post(with_source, "?version=1.4.0", None);
    assert_eq!(c, 413, "{b}");
    nothing_staged("too large");

    for bad in ["..%2Fx", "", "1_2", "a%20b", "-1"] {
        let (c, b) = post(with_source, &format!("?version={bad}"), None);
        assert_eq!(c, 400, "{bad}: {b}");
        assert!(msg(&b).contains("is not a release version"), "{b}");
    }
    let (c, b) = post(with_source, &format!("?version={V1}"), Some(&build_release(work, V1, &fleet_key, 300_000, false)));
    assert_eq!(c, 400, "{b}");
    assert!(msg(&b).contains("not both"), "{b}");

    let (c, b) = post(wrong_cert, &format!("?version={V1}"), None);
    assert_eq!(c, 502, "{b}");
    assert!(msg(&b).contains("TLS handshake with localhost:") && msg(&b).contains("UnknownIssuer"), "{b}");
    assert!(rogue.seen().is_empty(), "a request reached a server whose certificate was not trusted");

    let (c, b) = post(no_source, &format!("?version={V1}"), None);
    assert_eq!(c, 400, "{b}");
    assert_eq!(msg(&b), "no [update] source configured: upload the release as the body instead");
    nothing_staged("refusals");
    assert_eq!(argv("sysupdate"), "", "the apply service ran for a refused release");

    // ---- the release, fetched: staged, installed, rebooted, as an upload would be.
    let (c, b) = post(with_source, &format!("?version={V1}&reboot=1"), None);
    assert_eq!(c, 200, "{b}\nlog:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(b, serde_json::json!({"version": V1, "staged": true, "reboot": true, "partitions_only": false}));
    for (n, bytes) in release_files(V1, 300_000) {
        assert_eq!(std::fs::read(updates.join("staged").join(&n)).unwrap(), bytes, "{n} staged as served");
    }
    assert_eq!(argv("sysupdate"), format!("update {V1}\n"));
    wait_until("systemctl reboot", Duration::from_secs(10), || argv("systemctl") == "reboot\n");

    // The source saw exactly the requests above: no URL built from a bad version, no redirect followed.
    let mut want: Vec<String> = ["1.1.0", "1.2.0", "9.9.9", "1.3.0", "1.4.0", V1].iter().map(|v| format!("/rel/swarmseal_{v}.tar")).collect();
    let mut seen = source.seen();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);

    let proxy_log = std::fs::read_to_string(&log).unwrap();
    assert!(proxy_log.contains("image_update_fetch") && proxy_log.contains("image_update_refused"), "{proxy_log}");
    assert!(!proxy_log.contains(BODY_MARKER), "a release body reached the log");
    assert!(!proxy_log.contains("not-for-logs"), "a redirect's Location reached the log");
    eprintln!("a_release_is_fetched_from_the_https_source: {:.1} s", t0.elapsed().as_secs_f64());
}
