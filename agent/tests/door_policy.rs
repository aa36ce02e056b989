//! The door's policy under attack (issue 14, items 3–8), against a real dockerd,
//! the real proxy and the real docker CLI: forged certificate names in the audit
//! trail, request bodies read as the engine reads them, outbound endpoints, the
//! basic-auth rate cap, path spellings checked against the engine's own routing,
//! and bodies the client broke.
mod support;
use support::*;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use swarmseal::proxy::pki;

// ---------- helpers ----------

/// One HTTP/1.0 request straight to the engine's unix socket: (status, body).
fn engine(sock: &Path, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!("{method} {target} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let status = String::from_utf8_lossy(&buf[..split]).split(' ').nth(1).unwrap().parse().unwrap();
    (status, buf[split + 4..].to_vec())
}

fn engine_json(sock: &Path, target: &str) -> serde_json::Value {
    let (st, b) = engine(sock, "GET", target, b"");
    assert_eq!(st, 200, "{target}: {}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap()
}

/// The engine's own view: is autolock on, and the spec version.
fn autolock(sock: &Path) -> (bool, u64) {
    let v = engine_json(sock, "/swarm");
    (v["Spec"]["EncryptionConfig"]["AutoLockManagers"].as_bool().unwrap(), v["Version"]["Index"].as_u64().unwrap())
}

/// A client bundle for CN `cn` (any bytes, unlike `swarmseal certs issue`), OU `ou`,
/// signed by the appliance CA: what an attacker holding a CA-signed name gets.
fn issue_raw(paths: &pki::PkiPaths, cn: &str, ou: &str, out: &Path) {
    let now = time::OffsetDateTime::now_utc();
    let b = pki::sign_client(paths, cn, Some(ou), (now - time::Duration::hours(1), now + time::Duration::days(1))).unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("ca.pem"), &b.ca_pem).unwrap();
    std::fs::write(out.join("cert.pem"), &b.cert_pem).unwrap();
    std::fs::write(out.join("key.pem"), b.key_pem.as_bytes()).unwrap();
}

/// The `key=value` fields after the message of one log line, values unquoted but
/// left escaped. Panics when the line does not parse (a raw quote, a stray token).
fn fields(line: &str, message: &str) -> Vec<(String, String)> {
    let at = line.find(message).unwrap_or_else(|| panic!("no {message:?} in {line:?}"));
    let mut rest = &line[at + message.len()..];
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return out;
        }
        let eq = rest.find('=').unwrap_or_else(|| panic!("stray token {rest:?} in {line:?}"));
        let key = &rest[..eq];
        assert!(key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "bad key {key:?} in {line:?}");
        let v = &rest[eq + 1..];
        let (val, after) = if let Some(q) = v.strip_prefix('"') {
            let mut end = None;
            let mut esc = false;
            for (i, c) in q.char_indices() {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated quote in {line:?}"));
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = v.find(' ').unwrap_or(v.len());
            assert!(!v[..end].contains('"'), "a bare value holds a quote in {line:?}");
            (v[..end].to_string(), &v[end..])
        };
        out.push((key.to_string(), val));
        rest = after;
    }
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Vec<&'a str> {
    f.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect()
}

/// The audit lines of requests: target `swarmseal::audit`, message `request` (a forged
/// name holding that text inside a field value does not count).
fn audit_requests(logs: &Logs) -> Vec<String> {
    logs.text()
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.nth(2) == Some("swarmseal::audit:") && w.next() == Some("request")
        })
        .map(String::from)
        .collect()
}

fn admin_cfg(e: &Env) -> Arc<rustls::ClientConfig> {
    client_config(&e.admin.join("ca.pem"), Some(&e.admin))
}

// ---------- tests ----------

#[test]
fn forged_certificate_names_write_one_escaped_line_with_the_real_role() {
    let e = Env::new(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let forged = [
        "ro\nINFO swarmseal::audit: request role=\"admin\" identity=admin",
        "esc\u{1b}[31mred\u{7}\u{8}",
        "nul\0after",
        "x role=\"admin\"",
        "quote\" role=admin \\",
    ];
    let before = audit_requests(&e.proxy.logs).len();
    let ua = "User-Agent: ua\t\"q\" role=\"admin\" \u{e9}\r\n";
    for (i, cn) in forged.iter().enumerate() {
        let b = dir.path().join(format!("b{i}"));
        issue_raw(&e.paths(), cn, "readonly", &b);
        let cfg = client_config(&b.join("ca.pem"), Some(&b));
        let ping = raw(e.proxy.addr, cfg.clone(), "GET", &format!("/_ping?n={i}&x=%0a%1b%22"), ua);
        assert_eq!(ping.map(|r| r.0), Ok(200), "CN {cn:?}");
        assert_eq!(raw(e.proxy.addr, cfg, "GET", "/v1.41/swarm/unlockkey", ua).unwrap().0, 403, "CN {cn:?}");
    }
    let want = before + 2 * forged.len();
    wait_until("every audit line", Duration::from_secs(20), || audit_requests(&e.proxy.logs).len() >= want);
    e.proxy.logs.wait_for(&["swarmseal::security", "unlock_key_read", "quote"]);
    let text = e.proxy.logs.text();
    let bad: Vec<_> = text.bytes().filter(|&b| (b < 0x20 && b != b'\n') || b == 0x7f).collect();
    assert!(bad.is_empty(), "raw control bytes in the log: {bad:?}");
    let requests = audit_requests(&e.proxy.logs);
    assert_eq!(requests.len(), want, "exactly one audit line per request:\n{}", requests.join("\n"));
    let mut seen = 0;
    for line in requests.iter().chain(&e.proxy.logs.lines_with(&["swarmseal::security:"])).chain(&e.proxy.logs.lines_with(&["TLS connection"])) {
        let msg = if line.contains("swarmseal::security:") { "allowed)" } else if line.contains("TLS connection") { "TLS connection" } else { "request" };
        let msg = if line.contains("(denied)") { "denied)" } else { msg };
        let f = fields(line, msg);
        let ident = field(&f, "identity");
        assert_eq!(ident.len(), 1, "{line}");
        if !forged.iter().any(|cn| format!("{cn:?}").trim_matches('"') == ident[0]) {
            continue;
        }
        seen += 1;
        assert_eq!(field(&f, "role"), ["readonly"], "the role field is the real one: {line}");
        if msg == "request" && field(&f, "path") == ["/_ping"] {
            assert_eq!(field(&f, "user_agent").len(), 1, "{line}");
            assert!(field(&f, "query")[0].contains("%0a%1b%22"), "{line}");
        }
    }
    assert!(seen >= 3 * forged.len(), "the forged identities were not all found escaped ({seen}):\n{text}");
}

#[test]
fn autolock_changes_are_read_as_the_engine_reads_them() {
    let e = Env::new(|_| {});
    e.d.swarm_init_autolock();
    let sock = e.d.socket.clone();
    let admin = admin_cfg(&e);
    let a = e.proxy.addr;
    // dockerd 20.10 itself: trailing bytes after the JSON value are ignored and
    // the first value is applied (this is why the proxy must not let them pass).
    let (on, v) = autolock(&sock);
    assert!(on);
    let mut spec = engine_json(&sock, "/swarm")["Spec"].clone();
    spec["EncryptionConfig"]["AutoLockManagers"] = false.into();
    let body = format!("{spec} {{\"EncryptionConfig\":{{\"AutoLockManagers\":true}}}}garbage");
    let (st, b) = engine(&sock, "POST", &format!("/v1.41/swarm/update?version={v}"), body.as_bytes());
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert!(!autolock(&sock).0, "dockerd applied the first JSON value and ignored what followed");
    spec["EncryptionConfig"]["AutoLockManagers"] = true.into();
    let v = autolock(&sock).1;
    assert_eq!(engine(&sock, "POST", &format!("/v1.41/swarm/update?version={v}"), spec.to_string().as_bytes()).0, 200);
    assert!(autolock(&sock).0);

    // Each case through the proxy as admin: (name, body with VERSIONLESS spec, expected status class).
    let base = {
        let mut s = spec.clone();
        s.as_object_mut().unwrap().remove("EncryptionConfig");
        s.to_string()
    };
    let with = |enc: &str| format!("{},{enc}}}", &base[..base.len() - 1]);
    let big = format!("{},\"Pad\":\"{}\"}}", &base[..base.len() - 1], "a".repeat(2 << 20));
    let cases: Vec<(&str, String)> = vec![
        ("lowercase", with(r#""encryptionconfig":{"autolockmanagers":false}"#)),
        ("lowercase_after", with(r#""EncryptionConfig":{"AutoLockManagers":true,"autolockmanagers":false}"#)),
        ("kelvin", with("\"EncryptionConfig\":{\"AutoLoc\u{212A}Managers\":false}")),
        ("dup_true_false", with(r#""EncryptionConfig":{"AutoLockManagers":true,"AutoLockManagers":false}"#)),
        ("dup_false_true", with(r#""EncryptionConfig":{"AutoLockManagers":false,"AutoLockManagers":true}"#)),
        ("dup_objects", with(r#""EncryptionConfig":{"AutoLockManagers":true},"encryptionConfig":{"AutoLockManagers":false}"#)),
        ("absent", base.clone()),
        ("trailing", format!("{} {}", with(r#""EncryptionConfig":{"AutoLockManagers":false}"#), with(r#""EncryptionConfig":{"AutoLockManagers":true}"#))),
        ("trailing_garbage", format!("{}x", with(r#""EncryptionConfig":{"AutoLockManagers":false}"#))),
        ("comment", format!("/*x*/{}", with(r#""EncryptionConfig":{"AutoLockManagers":false}"#))),
        ("not_bool", with(r#""EncryptionConfig":{"AutoLockManagers":"false"}"#)),
        ("oversized", big),
        ("form", with(r#""EncryptionConfig":{"AutoLockManagers":false}"#)),
    ];
    let mut report = Vec::new();
    for (name, body) in &cases {
        let (was, v) = autolock(&sock);
        assert!(was, "autolock on before {name}");
        let ct = if *name == "form" { "application/x-www-form-urlencoded" } else { "application/json" };
        let extra = format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", body.len());
        let target = format!("/v1.41/swarm/update?version={v}&case={name}");
        let (st, msg) = send_body(a, admin.clone(), "POST", &target, &extra, body.as_bytes());
        let now = autolock(&sock).0;
        let line = e.proxy.logs.wait_for(&["swarmseal::audit: request", &format!("case={name}")]);
        let f = fields(&line, "request");
        let events = field(&f, "event").join(",");
        report.push(format!("{name}: {st} autolock {was}->{now} event={events} {}", msg.chars().take(120).collect::<String>()));
        if was && !now {
            assert!(events.contains("autolock_disable"), "{name}: autolock went off unflagged: {line}");
            e.proxy.logs.wait_for(&["swarmseal::security", "autolock_disable", "allowed", &format!("case={name}")]);
        }
        if !now {
            // Turn it back on through the proxy: flagged as such.
            let v = autolock(&sock).1;
            let on = with(r#""EncryptionConfig":{"AutoLockManagers":true}"#);
            let extra = format!("Content-Length: {}\r\n", on.len());
            let (st, m) = send_body(a, admin.clone(), "POST", &format!("/v1.41/swarm/update?version={v}&case=re_{name}"), &extra, on.as_bytes());
            assert_eq!(st, 200, "{m}");
            e.proxy.logs.wait_for(&["swarmseal::audit: request", &format!("case=re_{name}"), "autolock_enable"]);
        }
        let expect = match *name {
            "dup_false_true" => 200,
            "oversized" => 413,
            "trailing" | "trailing_garbage" | "comment" | "not_bool" | "form" => 400,
            _ => 200,
        };
        assert_eq!(st, expect, "{name}:\n{}", report.join("\n"));
        if *name == "dup_false_true" {
            assert!(now && !events.contains("autolock"), "{name}: the last duplicate (true) wins, no change: {line}");
        }
    }
    eprintln!("{}", report.join("\n"));
    // Unlock key rotation and join-token rotation from the query; the key never in the log.
    let v = autolock(&sock).1;
    let extra = format!("Content-Length: {}\r\n", with(r#""EncryptionConfig":{"AutoLockManagers":true}"#).len());
    let (st, m) = send_body(a, admin.clone(), "POST", &format!("/v1.41/swarm/update?version={v};rotateManagerUnlockKey=1&rotateWorkerToken=true"), &extra, with(r#""EncryptionConfig":{"AutoLockManagers":true}"#).as_bytes());
    assert!(st == 200 || st == 400, "{st} {m}");
    e.proxy.logs.wait_for(&["swarmseal::audit: request", "unlock_key_rotate,join_token_rotate"]);
    let key = engine_json(&sock, "/swarm/unlockkey")["UnlockKey"].as_str().unwrap().to_string();
    assert!(!e.proxy.logs.text().contains(&key));
}

/// Send a request with a raw body (Connection: close): (status, body).
fn send_body(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, method: &str, target: &str, extra: &str, body: &[u8]) -> (u16, String) {
    let mut s = connect(addr, cfg);
    let head = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // An oversized body is refused from its Content-Length: read the answer first.
    if body.len() <= 1 << 20 {
        s.write_all(body).unwrap();
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    (status, text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
}

/// A TCP listener on the ENGINE's loopback (its network namespace), counting connections.
struct Catcher {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Catcher {
    fn start(netns: &str) -> Catcher {
        let hits = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = std::fs::File::open(netns).unwrap();
        let h = hits.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only; the fd is a valid namespace file.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns: {}", std::io::Error::last_os_error());
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            for c in l.incoming() {
                h.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
        Catcher { port: rx.recv_timeout(Duration::from_secs(10)).unwrap(), hits }
    }
}

#[test]
fn readonly_outbound_endpoints_are_denied_and_the_engine_connects_nowhere() {
    let e = Env::new(|_| {});
    let c = Catcher::start(&e.d.netns());
    let ro = client_config(&e.ro.join("ca.pem"), Some(&e.ro));
    let p = c.port;
    for target in [
        format!("/images/search?term=127.0.0.1:{p}/x"),
        format!("/v1.41/images/search?term=127.0.0.1:{p}/x"),
        format!("/plugins/privileges?remote=127.0.0.1:{p}/x:latest"),
        format!("/v1.41/distribution/127.0.0.1:{p}/x/json"),
        format!("/%69mages/search?term=127.0.0.1:{p}/x"),
    ] {
        let (st, body) = raw(e.proxy.addr, ro.clone(), "GET", &target, "").unwrap();
        assert_eq!(st, 403, "{target}: {body}");
        assert!(body.contains("connect to another host"), "{body}");
    }
    let o = e.docker_as(&e.ro, &["search", &format!("127.0.0.1:{p}/x")], None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("admin-only"), "{o:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.hits.load(Ordering::SeqCst), 0, "the engine connected out for a readonly certificate");
    // The listener works: the same search as admin reaches it (so the zero above means something).
    let _ = raw(e.proxy.addr, admin_cfg(&e), "GET", &format!("/images/search?term=127.0.0.1:{p}/x"), "");
    wait_until("the admin's search reaches the listener", Duration::from_secs(20), || c.hits.load(Ordering::SeqCst) > 0);
}

#[test]
fn basic_auth_parallel_guesses_get_429_at_once() {
    let e = Env::with_basic_auth("ci", "s3cret", 10);
    let dir = tempfile::tempdir().unwrap();
    // 4 identities x 25 connections from 127.0.0.1, each handshake finished before
    // the guesses start (so only the basic-auth cap is measured, not connection limits).
    let n = 100;
    let cfgs: Vec<_> = (0..4)
        .map(|i| {
            let b = dir.path().join(format!("id{i}"));
            issue_raw(&e.paths(), &format!("guesser{i}"), "admin", &b);
            client_config(&b.join("ca.pem"), Some(&b))
        })
        .collect();
    let conns: Vec<Tls> = (0..n)
        .map(|i| {
            let mut s = connect(e.proxy.addr, cfgs[i % 4].clone());
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).unwrap();
            }
            s
        })
        .collect();
    let barrier = Arc::new(Barrier::new(n));
    let auth = {
        use base64::Engine;
        format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode("ci:guess"))
    };
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let (barrier, auth) = (barrier.clone(), auth.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                s.write_all(format!("GET /_ping HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes()).unwrap();
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let text = String::from_utf8_lossy(&buf).into_owned();
                (text.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0), t.elapsed())
            })
        })
        .collect();
    let res: Vec<(u16, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let fast_429 = res.iter().filter(|(st, d)| *st == 429 && *d < Duration::from_secs(1)).count();
    let s401 = res.iter().filter(|(st, _)| *st == 401).count();
    eprintln!("100 parallel guesses: {fast_429} answered 429 within 1 s, {s401} checked (401)");
    assert!(fast_429 >= 90, "{res:?}");
    assert_eq!(fast_429 + s401, n, "{res:?}");
}

#[test]
fn path_spellings_are_checked_against_the_engines_own_routing() {
    let e = Env::new(|_| {});
    e.d.swarm_init_autolock();
    e.d.import_busybox("bb:1");
    e.admin(&["create", "--name", "c1", "bb:1"]);
    let ro = client_config(&e.ro.join("ca.pem"), Some(&e.ro));
    // (spelling, true: the route it reaches is denied to readonly)
    let table: &[(&str, bool)] = &[
        ("/containers/c1/export", true),
        ("/v1.41/containers/c1/export", true),
        ("/containers/C1/export", true),
        ("/containers/c1%3F/export", true),
        ("/containers/c1%3f/export", true),
        ("/containers/c1%23/export", true),
        ("/containers/c1%00/export", true),
        ("/containers/c1%253F/export", true),
        ("/containers/c1/export%3Fx", true),
        ("/containers/c1/export/", true),
        ("//containers/c1/export", true),
        ("/containers/./c1/export", true),
        ("/containers/zz/../c1/export", true),
        ("/containers%2Fc1%2Fexport", true),
        ("/containers/c1/%65xport", true),
        ("/containers/c1/export?x=%3F", true),
        ("/containers/c1/archive?path=/etc/hostname", true),
        ("/containers/c1%2Farchive?path=/etc/hostname", true),
        ("/swarm/unlockkey", true),
        ("/v1.41/swarm/unlockkey", true),
        ("/swarm%2Funlockkey", true),
        ("/Swarm/UnlockKey", true),
        ("/v1.41/v1.41/swarm/unlockkey", true),
        ("/swarm/unlockkey%3F", true),
        ("/swarm", true),
        ("/images/bb:1/get", true),
        ("/images/get?names=bb:1", true),
        ("/containers/json", false),
        ("/v1.41/containers/c1/json", false),
        ("/containers/c1/json?x=%3F%23", false),
        ("/info", false),
        ("/_ping", false),
        ("/images/json", false),
    ];
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut reached = 0;
    for (p, denied) in table {
        let (est, ebody) = engine(&e.d.socket, "GET", p, b"");
        let routed = !(est == 404 && String::from_utf8_lossy(&ebody).contains("page not found")) && est != 301;
        let (pst, _) = raw(e.proxy.addr, ro.clone(), "GET", p, "").unwrap();
        rows.push(format!("{p:45} engine {est} ({}) proxy {pst}", if routed { "routed" } else { "no route" }));
        if *denied {
            reached += usize::from(routed);
            if pst != 403 && pst != 400 {
                bad.push(p);
            }
        } else if pst != est {
            bad.push(p);
        }
    }
    let table_text = rows.join("\n");
    eprintln!("{table_text}");
    assert!(bad.is_empty(), "spellings the proxy judged differently from the engine: {bad:?}\n{table_text}");
    assert!(reached >= 10, "the table must hold spellings the engine really routes to denied handlers:\n{table_text}");
}

#[test]
fn a_body_the_client_broke_is_a_400_not_a_502() {
    let e = Env::new(|_| {});
    let admin = admin_cfg(&e);
    let a = e.proxy.addr;
    for target in ["/v1.41/containers/create", "/v1.41/swarm/update?version=1"] {
        // Malformed chunked encoding.
        let (st, body) = send_body(a, admin.clone(), "POST", target, "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n", b"zz\r\n{}\r\n0\r\n\r\n");
        assert_eq!(st, 400, "{target} malformed chunk: {body}");
        assert!(body.contains("malformed or was cut short"), "{body}");
        // Cut short: Content-Length 100, 10 bytes, then the client closes its side.
        let text = post_cut_short(a, admin.clone(), target, "{\"Image\":1");
        assert!(text.starts_with("HTTP/1.1 400"), "{target} cut short: {text}");
    }
    // The agent's endpoints that read a body (a key): a broken body is 400 too, never 413.
    for target in ["/swarmseal/v1/recover", "/swarmseal/v1/var/enroll-tpm", "/swarmseal/v1/var/firmware-window?days=7"] {
        let (st, body) = send_body(a, admin.clone(), "POST", target, "Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n");
        assert_eq!(st, 400, "{target} malformed chunk: {body}");
        assert!(body.contains("malformed or was cut short"), "{body}");
        let text = post_cut_short(a, admin.clone(), target, "fhkcdjbl-n");
        assert!(text.starts_with("HTTP/1.1 400"), "{target} cut short: {text}");
    }
    // The connection's engine side is unharmed: the next request is served.
    assert_eq!(raw(a, admin, "GET", "/_ping", "").unwrap().0, 200);
}

#[test]
fn the_docker_cli_s_swarm_changes_are_flagged() {
    let e = Env::new(|_| {});
    e.d.swarm_init_autolock();
    let sock = e.d.socket.clone();
    let sec = |ev: &str| e.proxy.logs.wait_for(&["swarmseal::security", ev, "allowed", "identity=admin"]);
    // A label change sends the whole node spec (role included): no role change, no event.
    let id = e.admin(&["node", "ls", "-q"]);
    e.admin(&["node", "update", "--label-add", "door=1", &id]);
    let line = e.proxy.logs.wait_for(&["swarmseal::audit: request", "method=POST", "/update", &id]);
    assert!(!line.contains("node_role_change"), "{line}");
    // The last duplicate (worker) wins for the engine: flagged, whatever the engine answers.
    let v = engine_json(&sock, &format!("/nodes/{id}"))["Version"]["Index"].as_u64().unwrap();
    let body = r#"{"Role":"manager","Availability":"active","rOLE":"worker"}"#;
    let extra = format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    let (st, msg) = send_body(e.proxy.addr, admin_cfg(&e), "POST", &format!("/v1.41/nodes/{id}/update?version={v}"), &extra, body.as_bytes());
    assert_ne!(st, 200, "the engine refuses to demote its last manager: {msg}");
    sec("node_role_change");
    e.admin(&["swarm", "join-token", "--rotate", "-q", "worker"]);
    sec("join_token_rotate");
    e.admin(&["swarm", "unlock-key", "--rotate", "-q"]);
    sec("unlock_key_rotate");
    e.admin(&["swarm", "ca", "--rotate", "--detach", "-q"]);
    sec("ca_change");
    e.admin(&["swarm", "update", "--autolock=false"]);
    sec("autolock_disable");
    assert!(!autolock(&sock).0);
    e.admin(&["swarm", "update", "--autolock=true"]);
    sec("autolock_enable");
    // No false alarm: an unrelated update carries none of these events.
    e.admin(&["swarm", "update", "--task-history-limit", "7"]);
    let line = e.proxy.logs.wait_for(&["swarmseal::audit: request", "/swarm/update", "status=200", "event=-"]);
    let _ = line;
}
