//! The mutual-TLS proxy against a real dockerd, driven by the real docker CLI
//! (the first `docker` on PATH; docker 28 on the dev machine, talking API 1.41
//! to dockerd 20.10) and by a raw TLS client for the spellings the CLI never sends.
//!
//! Each test owns its dockerd, its PKI (made with the `swarmseal certs` binary)
//! and an in-process proxy on 127.0.0.1:0 whose log lines are captured.
mod support;
use support::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use swarmseal::proxy::{pki, tls::Role};

// ---------- tests ----------

#[test]
fn admin_bundle_drives_a_swarm_through_the_proxy() {
    let mut e = Env::new(|_| {});
    let key = e.d.swarm_init_autolock();

    assert_eq!(e.admin(&["info", "--format", "{{.Swarm.LocalNodeState}}"]), "active");
    assert!(!e.admin(&["version", "--format", "{{.Server.Version}}"]).is_empty());

    // The bundle works as DOCKER_CERT_PATH and as a docker context too.
    let mut c = Command::new("docker");
    c.env("DOCKER_CONFIG", e.docker_config.path())
        .env("DOCKER_CERT_PATH", &e.admin)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_HOST", e.host())
        .env_remove("DOCKER_CONTEXT")
        .args(["version", "--format", "{{.Server.Os}}"]);
    assert_eq!(ok(&run_bounded(c, None, Duration::from_secs(60)), "DOCKER_CERT_PATH"), "linux");
    let a = e.admin.display();
    let mut c = Command::new("docker");
    c.env("DOCKER_CONFIG", e.docker_config.path()).env_remove("DOCKER_HOST").args([
        "context",
        "create",
        "mgr",
        "--docker",
        &format!("host={},ca={a}/ca.pem,cert={a}/cert.pem,key={a}/key.pem", e.host()),
    ]);
    ok(&run_bounded(c, None, Duration::from_secs(60)), "context create");
    let mut c = Command::new("docker");
    c.env("DOCKER_CONFIG", e.docker_config.path()).env_remove("DOCKER_HOST").args(["--context", "mgr", "node", "ls", "-q"]);
    assert!(!ok(&run_bounded(c, None, Duration::from_secs(60)), "docker --context").is_empty());

    // Services.
    e.admin(&["service", "create", "--detach", "--no-resolve-image", "--name", "web", "nosuchimage:1", "sleep", "600"]);
    assert!(e.admin(&["service", "ls", "--format", "{{.Name}}"]).lines().any(|l| l == "web"));
    e.admin(&["service", "rm", "web"]);
    assert!(!e.admin(&["service", "ls", "--format", "{{.Name}}"]).lines().any(|l| l == "web"));

    // The unlock key: read, rotate, autolock off and on — each a security event.
    assert_eq!(e.admin(&["swarm", "unlock-key", "-q"]), key);
    let line = e.proxy.logs.wait_for(&["swarmseal::security", "unlock_key_read", "allowed"]);
    assert!(line.contains("identity=admin"), "{line}");
    let rotated = e.admin(&["swarm", "unlock-key", "--rotate", "-q"]);
    assert!(rotated.starts_with("SWMKEY-1-") && rotated != key, "{rotated}");
    e.proxy.logs.wait_for(&["swarmseal::security", "unlock_key_rotate"]);
    e.admin(&["swarm", "update", "--autolock=false"]);
    e.proxy.logs.wait_for(&["swarmseal::security", "autolock_disable"]);
    e.admin(&["swarm", "update", "--autolock=true"]);
    e.proxy.logs.wait_for(&["swarmseal::security", "autolock_enable"]);
    // An update that leaves autolock alone is not a key event.
    let before = e.proxy.logs.lines_with(&["swarmseal::security"]).len();
    e.admin(&["swarm", "update", "--task-history-limit", "3"]);
    e.proxy.logs.wait_for(&["swarmseal::audit", "method=POST", "swarm/update", "status=200"]);
    assert_eq!(e.proxy.logs.lines_with(&["swarmseal::security"]).len(), before, "{}", e.proxy.logs.text());

    // One audit line per request, with identity, role, method, path, status, bytes and duration.
    let l = e.proxy.logs.wait_for(&["swarmseal::audit", "swarm/unlockkey", "status=200"]);
    for f in ["identity=admin", "role=\"admin\"", "method=GET", "bytes_in=0", "bytes_out=", "duration_ms="] {
        assert!(l.contains(f), "{f} missing in {l}");
    }
    assert!(!e.proxy.logs.text().contains(&key), "the key must never be logged");

    // Recovery with no shell: the engine restarts locked; `docker swarm unlock` through the proxy.
    let current = e.admin(&["swarm", "unlock-key", "-q"]);
    e.d.restart();
    assert_eq!(e.d.swarm_state(), "locked");
    let o = e.docker_as(&e.admin, &["swarm", "unlock"], Some(&format!("{current}\n")));
    ok(&o, "swarm unlock through the proxy");
    assert_eq!(e.d.swarm_state(), "active");
    e.proxy.logs.wait_for(&["swarmseal::security", "swarm_unlock", "allowed", "identity=admin"]);
    assert!(!e.proxy.logs.text().contains(&current), "the key must never be logged");
}

#[test]
fn run_exec_logs_and_events_stream_through_the_proxy() {
    let e = Env::new(|_| {});
    e.d.import_busybox("bb:1");

    // run -i: stdin in, output back, half-close ends the container's stdin.
    let o = e.docker_as(&e.admin, &["run", "--rm", "-i", "bb:1", "sh", "-c", "cat; echo done"], Some("hello through the proxy\n"));
    assert_eq!(ok(&o, "run -i"), "hello through the proxy\ndone");
    e.proxy.logs.wait_for(&["swarmseal::audit", "/attach", "status=101", "upgraded=true"]);

    // exec -i and plain exec.
    e.admin(&["run", "-d", "--name", "box", "bb:1", "sleep", "600"]);
    let o = e.docker_as(&e.admin, &["exec", "-i", "box", "wc", "-c"], Some("12345"));
    assert_eq!(ok(&o, "exec -i"), "5");
    assert_eq!(e.admin(&["exec", "box", "echo", "hi"]), "hi");

    // With a TTY (`script` gives the CLI a pseudo-terminal): exec -it and run -it.
    for args in [&["exec", "-it", "box", "sh"][..], &["run", "--rm", "-it", "bb:1", "sh"][..]] {
        let cli = e.cli(&e.admin.join("ca.pem"), Some(&e.admin), args);
        let line = std::iter::once(cli.get_program())
            .chain(cli.get_args())
            .map(|a| format!("'{}'", a.to_str().unwrap()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"]);
        for (k, v) in cli.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let o = run_bounded(c, Some("echo tty-$((6*7))\nexit\n"), Duration::from_secs(90));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("tty-42"), "docker {args:?} with a TTY: {out:?} {}", String::from_utf8_lossy(&o.stderr));
    }

    // A large request body (chunked upload of a tar) through the proxy.
    let big = e.d.dir.join("big.tar");
    let mut f = std::fs::File::create(e.d.dir.join("blob")).unwrap();
    f.write_all(&vec![b'x'; 8 << 20]).unwrap();
    drop(f);
    assert!(Command::new("tar").arg("-C").arg(&e.d.dir).arg("-cf").arg(&big).arg("blob").status().unwrap().success());
    e.admin(&["cp", path_str(&big), "box:/big.tar"]);
    assert_eq!(e.admin(&["exec", "box", "sh", "-c", "wc -c < /big.tar"]).trim(), std::fs::metadata(&big).unwrap().len().to_string());

    // logs -f streams while the container runs.
    e.admin(&["run", "-d", "--name", "ticker", "bb:1", "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]);
    let mut logs = Streaming::start(e.cli(&e.admin.join("ca.pem"), Some(&e.admin), &["logs", "-f", "ticker"]));
    logs.wait_line(|l| l == "tick 5", "`tick 5`");
    assert!(logs.still_running(), "logs -f ended early");

    // events streams: a container created after the stream opened shows up.
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().saturating_sub(1).to_string();
    let mut ev = Streaming::start(e.cli(
        &e.admin.join("ca.pem"),
        Some(&e.admin),
        &["events", "--since", &since, "--filter", "type=container", "--format", "{{.Action}} {{.Actor.Attributes.name}}"],
    ));
    e.d.docker_ok(&["create", "--name", "evt1", "bb:1"]);
    ev.wait_line(|l| l == "create evt1", "`create evt1`");
    e.d.docker_ok(&["rm", "evt1"]);
    ev.wait_line(|l| l.starts_with("destroy evt1"), "`destroy evt1`");
    assert!(ev.still_running(), "events ended early");
    // Streaming connections are not cut by the idle timeout; nothing left for it here.
    drop(logs);
    drop(ev);
}

#[test]
fn handshake_rejects_and_readonly_is_limited() {
    let e = Env::new(|_| {});
    e.d.swarm_init_autolock();
    let ca = e.admin.join("ca.pem");

    // No client certificate.
    let o = run_bounded(e.cli(&ca, None, &["version"]), None, Duration::from_secs(60));
    assert!(!o.status.success(), "no certificate must fail");
    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let os = path_str(other.path());
    ok(&swarmseal(&["--state-dir", os, "certs", "init"], &[], None), "other certs init");
    let ob = other.path().join("b");
    ok(&swarmseal(&["--state-dir", os, "certs", "issue", "mallory", "--role", "admin", "--out", path_str(&ob)], &[], None), "issue");
    let o = run_bounded(e.cli(&ca, Some(&ob), &["version"]), None, Duration::from_secs(60));
    assert!(!o.status.success(), "a certificate from another CA must fail");
    // An expired certificate from the right CA.
    let exp = e.state.path().join("expired");
    let now = time::OffsetDateTime::now_utc();
    pki::issue(&e.paths(), "old", Role::Admin, (now - time::Duration::days(30), now - time::Duration::days(1)), &exp, false).unwrap();
    let o = run_bounded(e.cli(&ca, Some(&exp), &["version"]), None, Duration::from_secs(60));
    assert!(!o.status.success(), "an expired certificate must fail");
    // All three were refused in the handshake, none reached the engine; refusals from one
    // address are logged once, then counted (one line per address per minute).
    wait_until("a rejected handshake logged", Duration::from_secs(20), || !e.proxy.logs.lines_with(&["TLS handshake rejected"]).is_empty());
    assert!(e.proxy.logs.lines_with(&["swarmseal::audit: request"]).is_empty(), "{}", e.proxy.logs.text());
    // Same with the raw client: the handshake fails, no HTTP answer.
    assert!(raw(e.proxy.addr, client_config(&ca, None), "GET", "/_ping", "").is_err());
    assert!(raw(e.proxy.addr, client_config(&ca, Some(&exp)), "GET", "/_ping", "").is_err());
    assert_eq!(e.proxy.logs.lines_with(&["connection refused"]).len(), 1, "rate-limited: {}", e.proxy.logs.text());

    // readonly: reads work, changes and the key do not.
    assert!(ok(&e.docker_as(&e.ro, &["ps", "-a"], None), "ps (readonly)").starts_with("CONTAINER ID"));
    ok(&e.docker_as(&e.ro, &["service", "ls"], None), "service ls (readonly)");
    let o = e.docker_as(&e.ro, &["service", "create", "--detach", "--no-resolve-image", "--name", "x", "img:1"], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("readonly"), "{err}");
    let o = e.docker_as(&e.ro, &["swarm", "unlock-key"], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unlock key is admin-only"), "{err}");
    e.proxy.logs.wait_for(&["swarmseal::security", "unlock_key_read", "denied", "identity=ro"]);
    e.proxy.logs.wait_for(&["swarmseal::audit", "identity=ro", "status=403"]);
    assert!(e.d.docker_ok(&["service", "ls", "-q"]).is_empty(), "the denied create must not reach the engine");

    // A certificate of our CA without a role (no OU) or with an unknown OU: 403 on everything.
    for (n, ou) in [("norole", None), ("weird", Some("operators"))] {
        let b = e.state.path().join(n);
        pki::issue_with_ou(&e.paths(), n, ou, (now - time::Duration::hours(1), now + time::Duration::days(1)), &b, false).unwrap();
        let o = e.docker_as(&b, &["ps"], None);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("no swarmseal role"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn no_spelling_of_a_denied_path_gets_through() {
    let e = Env::new(|_| {});
    e.d.swarm_init_autolock();
    let ca = e.admin.join("ca.pem");
    let ro = client_config(&ca, Some(&e.ro));
    let admin = client_config(&ca, Some(&e.admin));
    let a = e.proxy.addr;

    let denied: &[(&str, &str, &str)] = &[
        ("GET", "/swarm/unlockkey", ""),
        ("GET", "/v1.41/swarm/unlockkey", ""),
        ("GET", "/v1.24/swarm/unlockkey", ""),
        ("GET", "/V1.41/SWARM/UNLOCKKEY", ""),
        ("GET", "/Swarm/UnlockKey", ""),
        ("GET", "//swarm//unlockkey", ""),
        ("GET", "/v1.41//swarm/unlockkey", ""),
        ("GET", "/swarm/./unlockkey", ""),
        ("GET", "/containers/../swarm/unlockkey", ""),
        ("GET", "/v1.41/containers/json/../../swarm/unlockkey", ""),
        ("GET", "/swarm/unlockkey/", ""),
        ("GET", "/%73warm/unlockkey", ""),
        ("GET", "/swarm%2Funlockkey", ""),
        ("GET", "/swarm%2funlockkey", ""),
        ("GET", "/swarm/%75nlock%6Bey", ""),
        ("GET", "/swarm%252Funlockkey", ""),
        ("GET", "/%2e%2e/swarm/unlockkey", ""),
        ("GET", "/containers/%2E%2E/swarm/unlockkey", ""),
        ("GET", "/swarm/unlockkey%3Fx=1", ""),
        ("GET", "/swarm/unlockkey?x=1", ""),
        ("GET", "/swarm/unlockkey%00", ""),
        ("GET", "/v1.41/v1.41/swarm/unlockkey", ""),
        ("HEAD", "/swarm/unlockkey", ""),
        ("GET", "http://localhost/swarm/unlockkey", ""),
        ("GET", "/swarm", ""),
        ("GET", "/v1.41/swarm/", ""),
        ("get", "/containers/json", ""),
        ("POST", "/containers/create", "Content-Length: 0\r\n"),
        ("POST", "/v1.41/services/create", "Content-Length: 0\r\n"),
        ("DELETE", "/containers/x", ""),
        ("PUT", "/containers/x/archive", "Content-Length: 0\r\n"),
        ("OPTIONS", "/_ping", ""),
        ("POST", "/swarm/unlock", "Content-Length: 0\r\n"),
        ("POST", "/swarm/update?rotateManagerUnlockKey=true", "Content-Length: 0\r\n"),
        ("GET", "/containers/x/archive?path=/run/secrets", ""),
        ("GET", "/containers/x/export", ""),
        ("GET", "/containers/x/attach/ws", "Upgrade: websocket\r\n"),
        ("GET", "/containers/json", "Upgrade: tcp\r\n"),
        ("GET", "/swarmseal/v1/escrow", ""),
        ("POST", "/swarmseal/v1/reseal", "Content-Length: 0\r\n"),
        ("GET", "/SWARMSEAL/v1/escrow", ""),
        ("GET", "/swarmseal/v1/escrow/var-recovery-key", ""),
        ("GET", "/swarmseal/v1/escrow/%76ar-recovery-key", ""),
    ];
    let mut failures = Vec::new();
    for (m, p, h) in denied {
        match raw(a, ro.clone(), m, p, h) {
            Ok((403, body)) if *m == "HEAD" => assert!(body.is_empty()),
            // A path that decodes to ?, # or NUL is refused before any decision (400).
            Ok((400, body)) if p.contains("%3F") || p.contains("%00") => assert!(body.contains("encoded"), "{body}"),
            Ok((403, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("403 body is not JSON: {body}"));
                assert!(v["message"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
            }
            other => failures.push(format!("{m} {p}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "not denied for readonly:\n{}", failures.join("\n"));

    // What readonly may do.
    for (p, want) in [
        ("/_ping", 200),
        ("/v1.41/containers/json", 200),
        ("/info", 200),
        ("/nodes", 200),
        ("/swarmseal/v1/status", 200),
        ("/swarmseal/v1/bench", 200),
    ] {
        assert_eq!(raw(a, ro.clone(), "GET", p, "").unwrap().0, want, "{p}");
    }
    assert_eq!(raw(a, ro.clone(), "HEAD", "/_ping", "").unwrap().0, 200);
    let (_, body) = raw(a, ro.clone(), "GET", "/swarmseal/v1/status", "").unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["stub"], true);

    // Admin: the key under a strange spelling still counts as a key read (security event).
    let (st, body) = raw(a, admin.clone(), "GET", "/v1.41//Swarm/%75nlockkey", "").unwrap();
    e.proxy.logs.wait_for(&["swarmseal::security", "unlock_key_read", "allowed", "%75nlockkey"]);
    let _ = (st, body);
    assert_eq!(
        raw(a, admin.clone(), "POST", "/swarmseal/v1/reseal", "Content-Length: 0\r\n").unwrap(),
        (200, r#"{"resealed":true}"#.to_string())
    );
    assert_eq!(raw(a, admin.clone(), "GET", "/swarmseal/v1/escrow", "").unwrap().0, 404);
    assert_eq!(raw(a, admin.clone(), "GET", "/swarmseal/v1/escrow/var-recovery-key", "").unwrap().0, 404);
    assert_eq!(raw(a, admin.clone(), "POST", "/swarmseal/v1/escrow/var-recovery-key", "Content-Length: 0\r\n").unwrap().0, 405);
    assert_eq!(raw(a, admin.clone(), "GET", "/swarmseal/v1/nope", "").unwrap().0, 404);
    assert_eq!(raw(a, admin.clone(), "DELETE", "/swarmseal/v1/status", "").unwrap().0, 405);
    // A request head over the limit is refused.
    let huge = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    assert_eq!(raw(a, admin, "GET", "/_ping", &huge).map(|r| r.0).unwrap_or(431), 431);
}

#[test]
fn basic_auth_on_top_of_the_certificate() {
    let e = Env::with_basic_auth("ci", "s3cret", 4);
    let cfg = client_config(&e.admin.join("ca.pem"), Some(&e.admin));
    let a = e.proxy.addr;
    let basic = |u: &str, p: &str| {
        use base64::Engine;
        format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
    };
    assert_eq!(raw(a, cfg.clone(), "GET", "/_ping", &basic("ci", "s3cret")).unwrap(), (200, "OK".into()));
    let (st, body) = raw(a, cfg.clone(), "GET", "/_ping", "").unwrap();
    assert_eq!(st, 401);
    assert!(body.contains("\"message\""), "{body}");
    // No header: 401 at once, and it costs no attempt (no bcrypt ran). Ten wrong
    // passwords from this address are answered 401 at once...
    for i in 0..10 {
        let t = Instant::now();
        let user = if i % 2 == 0 { "ci" } else { "nobody" };
        assert_eq!(raw(a, cfg.clone(), "GET", "/_ping", &basic(user, "wrong")).unwrap().0, 401);
        assert!(t.elapsed() < Duration::from_millis(900), "attempt {} took {:?}", i + 1, t.elapsed());
    }
    // ... the 11th gets 429 at once, and so does the right password (the answer reveals nothing).
    for (u, p) in [("ci", "wrong"), ("ci", "s3cret")] {
        let t = Instant::now();
        let (st, body) = raw(a, cfg.clone(), "GET", "/_ping", &basic(u, p)).unwrap();
        assert_eq!(st, 429, "{body}");
        assert!(t.elapsed() < Duration::from_millis(900), "429 not at once: {:?}", t.elapsed());
    }
    e.proxy.logs.wait_for(&["swarmseal::security", "basic_auth_failed"]);
    assert!(!e.proxy.logs.text().contains("s3cret"));
    e.proxy.logs.wait_for(&["swarmseal::audit", "user=ci", "status=200"]);
}

#[test]
fn slowloris_is_dropped_at_the_header_timeout_while_others_are_served() {
    let e = Env::new(|c| {
        c.proxy.header_timeout_secs = 3;
        c.proxy.idle_timeout_secs = 60;
    });
    let cfg = client_config(&e.admin.join("ca.pem"), Some(&e.admin));
    let a = e.proxy.addr;

    // A client with a good certificate that sends its request head a byte per second.
    let slow_cfg = cfg.clone();
    let slow = std::thread::spawn(move || {
        let mut s = connect(a, slow_cfg);
        s.sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let t = Instant::now();
        let head = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head.iter() {
            if s.write_all(&[*b]).and_then(|_| s.flush()).is_err() {
                return (t.elapsed(), false);
            }
            let mut buf = [0u8; 256];
            match s.read(&mut buf) {
                Ok(0) => return (t.elapsed(), false),
                Ok(_) => return (t.elapsed(), true),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return (t.elapsed(), false),
            }
        }
        (t.elapsed(), true)
    });
    // A TCP client that never even starts the TLS handshake.
    let silent = std::thread::spawn(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
        t.elapsed()
    });
    // Meanwhile others are served, promptly.
    let mut served = 0;
    let start = Instant::now();
    while !slow.is_finished() && start.elapsed() < Duration::from_secs(30) {
        let t = Instant::now();
        assert_eq!(raw(a, cfg.clone(), "GET", "/_ping", "").unwrap().0, 200);
        assert!(t.elapsed() < Duration::from_millis(2500), "a normal request took {:?}", t.elapsed());
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (took, answered) = slow.join().unwrap();
    assert!(!answered, "the slow client got an answer");
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(7), "slow client dropped after {took:?}");
    assert!(served >= 5, "only {served} requests served meanwhile");
    let took = silent.join().unwrap();
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(7), "silent client dropped after {took:?}");
    e.proxy.logs.wait_for(&["connection closed: header read timeout"]);
    e.proxy.logs.wait_for(&["TLS handshake timed out"]);

    // A kept-alive connection between requests is not cut by the header timeout.
    let mut s = connect(a, cfg);
    for _ in 0..2 {
        s.write_all(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_secs(4));
    }
}

#[test]
fn idle_connections_close_but_streams_upgrades_stay_and_the_limit_holds() {
    let e = Env::new(|c| {
        c.proxy.idle_timeout_secs = 2;
        c.proxy.header_timeout_secs = 2;
        c.proxy.max_connections = 6;
    });
    e.d.import_busybox("bb:1");
    let cfg = client_config(&e.admin.join("ca.pem"), Some(&e.admin));
    let a = e.proxy.addr;
    let ping = |s: &mut Tls| {
        s.write_all(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    };

    // A streaming response (events) holds one connection, quiet for longer than the idle timeout.
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().saturating_sub(1).to_string();
    e.d.docker_ok(&["create", "--name", "first", "bb:1"]);
    let mut ev = Streaming::start(e.cli(
        &e.admin.join("ca.pem"),
        Some(&e.admin),
        &["events", "--since", &since, "--filter", "type=container", "--format", "{{.Action}} {{.Actor.Attributes.name}}"],
    ));
    ev.wait_line(|l| l == "create first", "`create first`");

    // The limit: five more connections fill it; a seventh is closed at once.
    let mut held: Vec<Tls> = (0..5)
        .map(|_| {
            let mut c = connect(a, cfg.clone());
            ping(&mut c);
            c
        })
        .collect();
    let t = Instant::now();
    let r = raw(a, cfg.clone(), "GET", "/_ping", "");
    assert!(matches!(&r, Ok((503, m)) if m.contains("max_connections")), "a connection over the limit gets 503 naming it: {r:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "refusal took {:?}", t.elapsed());
    e.proxy.logs.wait_for(&["connection refused", "max_connections"]);

    // An idle kept-alive connection is closed after the idle timeout.
    let mut c1 = held.pop().unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let r = c1.read(&mut buf);
    assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(1500) && t.elapsed() < Duration::from_secs(6), "idle close after {:?}", t.elapsed());
    e.proxy.logs.wait_for(&["connection closed: idle timeout"]);
    drop(held);
    wait_until("a free connection slot", Duration::from_secs(10), || matches!(raw(a, cfg.clone(), "GET", "/_ping", ""), Ok((200, _))));

    // An upgraded connection silent for longer than the idle timeout is not cut.
    let o = e.docker_as(&e.admin, &["run", "--rm", "-i", "bb:1", "sh", "-c", "sleep 4; echo late"], Some(""));
    assert_eq!(ok(&o, "run -i with a quiet container"), "late");

    // The events stream lived through all that and still delivers.
    ev.wait_line(|l| l.starts_with("destroy"), "`destroy` of the --rm container");
    assert!(ev.still_running(), "the events stream was cut");
}

#[test]
fn certs_cli_writes_bundles_the_docker_cli_can_use() {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().unwrap();
    let s = path_str(state.path());
    // No CA yet: a PKI error (exit code 11), with the fix in the message.
    let out = state.path().join("alice");
    let o = swarmseal(&["--state-dir", s, "certs", "issue", "alice", "--role", "admin", "--out", path_str(&out)], &[], None);
    assert_eq!(o.status.code(), Some(11), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("certs init"));

    ok(&swarmseal(&["--state-dir", s, "certs", "init", "--san", "manager-1.example", "--san", "192.0.2.7"], &[], None), "certs init");
    let pki = state.path().join("pki");
    for f in ["ca.pem", "ca-key.pem", "server-cert.pem", "server-key.pem"] {
        assert_eq!(std::fs::metadata(pki.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    // Init again keeps the CA (issued bundles stay valid).
    ok(&swarmseal(&["--state-dir", s, "certs", "init"], &[], None), "certs init again");
    assert_eq!(std::fs::read(pki.join("ca.pem")).unwrap(), ca);

    ok(&swarmseal(&["--state-dir", s, "certs", "issue", "alice", "--role", "readonly", "--out", path_str(&out)], &[], None), "issue");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert_eq!(std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), ca);
    // Never overwrite a bundle by accident.
    let o = swarmseal(&["--state-dir", s, "certs", "issue", "alice", "--role", "admin", "--out", path_str(&out)], &[], None);
    assert_eq!(o.status.code(), Some(11));
    // Bad role: a usage error from clap.
    let o = swarmseal(&["--state-dir", s, "certs", "issue", "bob", "--role", "root"], &[], None);
    assert!(!o.status.success());

    // The client certificate: CN = identity, OU = role, P-256, clientAuth; the server's SANs.
    let cert = std::fs::read(out.join("cert.pem")).unwrap();
    let der = swarmseal::proxy::tls::pem_certs(&cert).unwrap();
    let id = swarmseal::proxy::tls::Identity::from_cert(&der[0]);
    assert_eq!((id.name.as_str(), id.role), ("alice", Some(Role::ReadOnly)));
    let text = |p: &Path| {
        let o = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(p).output().expect("openssl");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let t = text(&out.join("cert.pem"));
    assert!(t.contains("TLS Web Client Authentication") && t.contains("prime256v1"), "{t}");
    let t = text(&pki.join("server-cert.pem"));
    for san in ["DNS:localhost", "IP Address:127.0.0.1", "DNS:manager-1.example", "IP Address:192.0.2.7", "TLS Web Server Authentication"] {
        assert!(t.contains(san), "{san} missing in\n{t}");
    }
    let o = Command::new("openssl").args(["verify", "-CAfile"]).arg(out.join("ca.pem")).arg(out.join("cert.pem")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
