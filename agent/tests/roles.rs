//! Roles with body policy (issue 16) against a real dockerd in swarm mode, the real proxy and
//! the real docker CLI: a `deploy` certificate ships a stack but cannot take the host, the
//! body parser's bypasses are denied or refused, and `swarmseal policy check` agrees with the
//! proxy on every case.
mod support;
use support::*;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;


fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// An Env in swarm mode with the image `bb:1` and a `deploy` and a `monitor` bundle.
fn swarm_env() -> (Env, PathBuf, PathBuf, PathBuf) {
    let e = Env::new(|_| {});
    e.d.docker_ok(&["swarm", "init", "--advertise-addr", &e.d.addr]);
    e.d.import_busybox("bb:1");
    let s = path_str(e.state.path()).to_string();
    let mut out = Vec::new();
    for (name, role) in [("ci", "deploy"), ("dash", "monitor"), ("ci2", "deploy")] {
        let dir = format!("{s}/bundles/{name}");
        ok(&swarmseal(&["--state-dir", &s, "certs", "issue", name, "--role", role, "--out", &dir], &[], None), "certs issue");
        out.push(PathBuf::from(dir));
    }
    (e, out.remove(0), out.remove(0), out.remove(0))
}

/// `swarmseal policy check` for `role`: (exit code, stdout).
fn policy_check(role: &str, method: &str, path: &str, body: &[u8]) -> (i32, String) {
    let mut c = cmd(swarmseal_bin());
    c.args(["--config", "/dev/null", "policy", "check", "--role", role, "--method", method, "--path", path]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut w = child.stdin.take().unwrap();
    let b = body.to_vec();
    let t = std::thread::spawn(move || {
        let _ = w.write_all(&b);
    });
    let o = child.wait_with_output().unwrap();
    t.join().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// One request with `body` through the proxy (raw TLS): (status, body).
fn send(e: &Env, bundle: &Path, head: &str, body: &[u8]) -> (u16, String) {
    send_to(e.proxy.addr, bundle, head, body, || e.proxy.logs.text())
}

fn send_to(addr: std::net::SocketAddr, bundle: &Path, head: &str, body: &[u8], logs: impl Fn() -> String) -> (u16, String) {
    let mut s = connect(addr, client_config(&bundle.join("ca.pem"), Some(bundle)));
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    let t = String::from_utf8_lossy(&buf).into_owned();
    let status = t.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no HTTP answer: {t:?} ({r:?}); proxy log: {}", logs()));
    (status, t.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
}

fn post(e: &Env, bundle: &Path, path: &str, body: &[u8]) -> (u16, String) {
    let head = format!("POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    send(e, bundle, &head, body)
}

/// `docker stack deploy -c FILE [--detach=true] NAME`: CLI 26+ waits for convergence unless
/// told not to; 20.10 has no such flag (and never waits).
fn stack_deploy<'a>(file: &'a str, name: &'a str) -> Vec<&'a str> {
    let help = std::process::Command::new("docker").args(["stack", "deploy", "--help"]).output().expect("docker CLI");
    let mut v = vec!["stack", "deploy", "-c", file];
    if String::from_utf8_lossy(&help.stdout).contains("--detach") {
        v.push("--detach=true");
    }
    v.push(name);
    v
}

const STACK: &str = r#"version: "3.8"
services:
  web:
    image: bb:1
    command: ["sleep", "600"]
    environment: [PASSWORD=hunter2]
    networks: [front]
    secrets: [s1]
    configs: [c1]
  worker:
    image: bb:1
    command: ["sleep", "600"]
    networks: [front]
networks:
  front:
    driver: overlay
secrets:
  s1:
    file: ./s1.txt
configs:
  c1:
    file: ./c1.txt
"#;

/// `docker stack rm NAME` until it succeeds (60 s at most). The CLI removes the services, then
/// the stack's networks at once; the engine refuses a network whose tasks are still shutting
/// down ("network … is in use by task …": swarmkit removes tasks asynchronously), and the CLI
/// then fails though nothing is wrong. Running it again removes what is left.
fn stack_rm(name: &str, run: impl Fn() -> Output) {
    let t = std::time::Instant::now();
    loop {
        let o = run();
        if o.status.success() {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "docker stack rm {name} still fails after 60 s: {}", text(&o));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn deploy_ships_a_stack_and_cannot_take_the_host() {
    let (e, dep, mon, other) = swarm_env();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s1.txt"), "secret-value").unwrap();
    std::fs::write(dir.path().join("c1.txt"), "config-value").unwrap();
    let compose = dir.path().join("compose.yml");
    std::fs::write(&compose, STACK).unwrap();
    let c = path_str(&compose);

    // The stack ships, scales, updates, and goes.
    let o = e.docker_as(&dep, &stack_deploy(c, "st"), None);
    assert!(o.status.success(), "stack deploy: {}", text(&o));
    let services = e.d.docker_ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert!(services.contains("st_web") && services.contains("st_worker"), "{services}");
    assert!(e.d.docker_ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]).contains("st_front overlay"));
    assert!(e.d.docker_ok(&["secret", "ls", "--format", "{{.Name}}"]).contains("st_s1"));
    assert!(e.d.docker_ok(&["config", "ls", "--format", "{{.Name}}"]).contains("st_c1"));
    ok(&e.docker_as(&dep, &["service", "update", "--detach", "--replicas", "2", "st_web"], None), "service update --replicas");
    assert_eq!(e.d.docker_ok(&["service", "inspect", "st_web", "--format", "{{.Spec.Mode.Replicated.Replicas}}"]), "2");
    ok(&e.docker_as(&dep, &["service", "scale", "--detach", "st_worker=3"], None), "service scale");
    ok(&e.docker_as(&dep, &["service", "logs", "st_web"], None), "service logs");
    // Ownership: what ci created carries its label; another deploy identity cannot touch it.
    assert_eq!(e.d.docker_ok(&["service", "inspect", "st_web", "--format", "{{index .Spec.Labels \"swarmseal.owner\"}}"]), "ci");
    assert_eq!(e.d.docker_ok(&["secret", "inspect", "st_s1", "--format", "{{index .Spec.Labels \"swarmseal.owner\"}}"]), "ci");
    assert_eq!(e.d.docker_ok(&["network", "inspect", "st_front", "--format", "{{index .Labels \"swarmseal.owner\"}}"]), "ci");
    for args in [&["service", "update", "--detach", "--replicas", "1", "st_web"][..], &["service", "rm", "st_web"], &["secret", "rm", "st_s1"], &["config", "rm", "st_c1"], &["network", "rm", "st_front"], &["network", "rm", "ingress"]] {
        let o = e.docker_as(&other, args, Some("y\n"));
        assert!(!o.status.success() && (text(&o).contains("not to `ci2`") || text(&o).contains("has no swarmseal.owner")), "{args:?}: {}", text(&o));
        e.proxy.logs.wait_for(&["identity=ci2", "status=403", "rule=owner"]);
    }
    assert_eq!(e.d.docker_ok(&["service", "inspect", "st_web", "--format", "{{.Spec.Mode.Replicated.Replicas}}"]), "2");
    let (code, out) = policy_check("deploy", "DELETE", "/v1.41/services/st_web", b"");
    assert!(code == 0 && out.contains("carries swarmseal.owner"), "{out}");

    // Monitor: the same state, without env values, config data or command lines.
    let svc = ok(&e.docker_as(&mon, &["service", "inspect", "st_web"], None), "monitor: service inspect");
    assert!(svc.contains("PASSWORD=(redacted)") && !svc.contains("hunter2") && !svc.contains("\"sleep\""), "{svc}");
    let cfg = ok(&e.docker_as(&mon, &["config", "inspect", "st_c1"], None), "monitor: config inspect");
    assert!(cfg.contains("st_c1") && !cfg.contains("Y29uZmlnLXZhbHVl") && !cfg.contains("config-value"), "{cfg}");
    assert!(e.d.docker_ok(&["config", "inspect", "st_c1"]).contains("Y29uZmlnLXZhbHVl"), "the engine holds the data");
    let mut task_container = String::new();
    wait_until("a task container of st_web", Duration::from_secs(60), || {
        task_container = e.d.docker_ok(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=st_web"]).lines().next().unwrap_or("").to_string();
        !task_container.is_empty()
    });
    let c = ok(&e.docker_as(&mon, &["inspect", &task_container], None), "monitor: docker inspect");
    assert!(c.contains("PASSWORD=(redacted)") && !c.contains("hunter2") && !c.contains("\"600\""), "{c}");
    let tasks = ok(&e.docker_as(&mon, &["service", "ps", "--no-trunc", "st_web"], None), "monitor: service ps");
    assert!(tasks.contains("st_web.1"), "{tasks}");
    let ev = ok(&e.docker_as(&mon, &["events", "--since", "0", "--until", "0s", "--format", "{{json .}}"], None), "monitor: events");
    assert!(ev.contains("\"Type\":\"service\""), "{ev}");
    for args in [&["logs", &task_container][..], &["top", &task_container], &["container", "export", &task_container], &["exec", &task_container, "true"]] {
        let o = e.docker_as(&mon, args, None);
        assert!(!o.status.success() && text(&o).contains("monitor: "), "{args:?}: {}", text(&o));
    }
    ok(&e.docker_as(&dep, &["service", "rm", "st_worker"], None), "service rm");
    assert!(!e.d.docker_ok(&["service", "ls", "--format", "{{.Name}}"]).contains("st_worker"));
    stack_rm("st", || e.docker_as(&dep, &["stack", "rm", "st"], None));

    // The same stack with one dangerous setting: refused by the proxy (rule in the audit), or
    // dropped by the CLI itself (it prints "Ignoring unsupported options") so the engine never
    // sees it; either way no service holds it.
    let bad: &[(&str, &str, &str)] = &[
        ("privileged", "    privileged: true\n", "Privileged"),
        ("bind-mount", "    volumes: [\"/:/host\"]\n", "Mounts[0].Source"),
        ("docker-socket", "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n", "Mounts[0].Source"),
        ("host-namespace", "    pid: host\n", "PidMode"),
        ("host-network", "    network_mode: host\n", "Networks"),
        ("cap-add", "    cap_add: [SYS_ADMIN]\n", "CapabilityAdd"),
        ("devices", "    devices: [\"/dev/null:/dev/xnull\"]\n", "Devices"),
        ("security-opt", "    security_opt: [\"seccomp:unconfined\"]\n", "SecurityOpt"),
    ];
    let mut dropped = Vec::new();
    for (i, (rule, yaml, field)) in bad.iter().enumerate() {
        let stack = format!("version: \"3.8\"\nservices:\n  bad:\n    image: bb:1\n    command: [\"sleep\", \"600\"]\n{yaml}");
        let f = dir.path().join(format!("bad{i}.yml"));
        std::fs::write(&f, stack).unwrap();
        let name = format!("b{i}");
        let o = e.docker_as(&dep, &stack_deploy(path_str(&f), &name), None);
        let out = text(&o);
        if o.status.success() {
            assert!(out.contains("Ignoring unsupported options") || out.contains("unsupported"), "{rule}: deployed without a word: {out}");
            let spec = e.d.docker_ok(&["service", "inspect", &format!("{name}_bad"), "--format", "{{json .Spec.TaskTemplate.ContainerSpec}} {{json .Spec.TaskTemplate.Networks}}"]);
            for needle in ["Privileged\":true", "SYS_ADMIN", "unconfined", "\"host\"", "/dev/null", "docker.sock"] {
                assert!(!spec.contains(needle), "{rule}: the service holds {needle}: {spec}");
            }
            dropped.push(*rule);
            stack_rm(&name, || e.d.docker(&["stack", "rm", &name]));
        } else {
            assert!(out.contains(&format!("deploy: TaskTemplate.ContainerSpec.{field}")) || out.contains(&format!("deploy: TaskTemplate.{field}")), "{rule}: {out}");
            e.proxy.logs.wait_for(&["status=403", &format!("rule={rule}")]);
        }
    }
    eprintln!("stack options the docker CLI drops itself (never sent): {dropped:?}");
    for must in ["bind-mount", "docker-socket", "cap-add"] {
        assert!(!dropped.contains(&must), "{must} reaches the proxy and must be refused there");
    }

    // What only the engine can tell: the host network by ID, an image it would pull. The dry
    // run allows both with a note; the proxy asks the engine and refuses.
    let host_id = e.d.docker_ok(&["network", "inspect", "host", "--format", "{{.Id}}"]);
    let spec = |net: &str, image: &str, mount: &str| format!(r#"{{"Name":"x","TaskTemplate":{{"ContainerSpec":{{"Image":"{image}"{mount}}},"Networks":[{{"Target":"{net}"}}]}}}}"#);
    for (body, rule, note) in [
        (spec(&host_id, "bb:1", ""), "host-network", "is not the host network"),
        (spec("ingress", "registry.invalid:5000/x:1", ""), "outbound", "is already there"),
    ] {
        let (st, answer) = post(&e, &dep, "/v1.41/services/create", body.as_bytes());
        assert_eq!(st, 403, "{body}: {answer}");
        e.proxy.logs.wait_for(&["path=/v1.41/services/create", "status=403", &format!("rule={rule}")]);
        let (code, out) = policy_check("deploy", "POST", "/v1.41/services/create", body.as_bytes());
        assert!(code == 0 && out.starts_with("allow") && out.contains(note), "{out}");
    }
    // The stack's refusals, as the CLI sends them, are the dry run's too.
    for (mount, rule) in [(r#","Mounts":[{"Type":"bind","Source":"/","Target":"/host"}]"#, "bind-mount"), (r#","Mounts":[{"Type":"bind","Source":"/var/run/docker.sock","Target":"/s"}]"#, "docker-socket"), (r#","CapabilityAdd":["CAP_SYS_ADMIN"]"#, "cap-add")] {
        let body = spec("ingress", "bb:1", mount);
        let (st, answer) = post(&e, &dep, "/v1.41/services/create", body.as_bytes());
        let (code, out) = policy_check("deploy", "POST", "/v1.41/services/create", body.as_bytes());
        let msg: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!((st, code), (403, 1), "{answer} / {out}");
        assert_eq!(out, format!("deny rule={rule} status=403: {}", msg["message"].as_str().unwrap()));
    }
    assert!(!e.d.docker_ok(&["service", "ls", "--format", "{{.Name}}"]).lines().any(|l| l == "x"));

    // Direct refusals.
    let o = e.docker_as(&dep, &["run", "--privileged", "bb:1", "true"], None);
    assert!(!o.status.success() && text(&o).contains("deploy: HostConfig.Privileged is not allowed"), "{}", text(&o));
    e.proxy.logs.wait_for(&["path=/v", "containers/create", "status=403", "rule=privileged"]);
    for (args, rule, says) in [
        (&["run", "--pid", "host", "bb:1", "true"][..], "host-namespace", "HostConfig.PidMode"),
        (&["run", "--network", "host", "bb:1", "true"], "host-network", "HostConfig.NetworkMode"),
        (&["run", "--cap-add", "SYS_ADMIN", "bb:1", "true"], "cap-add", "HostConfig.CapAdd"),
        (&["run", "--device", "/dev/null:/dev/xnull", "bb:1", "true"], "devices", "HostConfig.Devices"),
        (&["run", "--security-opt", "seccomp=unconfined", "bb:1", "true"], "security-opt", "HostConfig.SecurityOpt"),
        (&["run", "-v", "/:/host", "bb:1", "true"], "bind-mount", "HostConfig.Binds"),
        (&["volume", "create", "--opt", "o=bind", "--opt", "type=none", "--opt", "device=/etc", "v1"], "volume-options", "DriverOpts."),
    ] {
        let o = e.docker_as(&dep, args, None);
        assert!(!o.status.success() && text(&o).contains(says), "{args:?}: {}", text(&o));
        e.proxy.logs.wait_for(&["status=403", &format!("rule={rule}")]);
    }
    let cid = e.d.docker_ok(&["run", "-d", "bb:1", "sleep", "600"]);
    let o = e.docker_as(&dep, &["exec", &cid, "true"], None);
    assert!(!o.status.success() && text(&o).contains("running commands in containers"), "{}", text(&o));
    e.proxy.logs.wait_for(&["status=403", "rule=exec"]);
    let o = e.docker_as(&dep, &["swarm", "unlock-key"], None);
    assert!(!o.status.success() && text(&o).contains("unlock key is admin-only"), "{}", text(&o));
    e.proxy.logs.wait_for(&["status=403", "rule=swarm"]);
    // A safe container runs.
    ok(&e.docker_as(&dep, &["run", "--rm", "-d", "bb:1", "sleep", "5"], None), "docker run -d (safe)");
    // Nothing privileged reached the engine.
    for id in e.d.docker_ok(&["ps", "-aq"]).lines() {
        let hc = e.d.docker_ok(&["inspect", id, "--format", "{{.HostConfig.Privileged}} {{.HostConfig.PidMode}} {{.HostConfig.CapAdd}}"]);
        assert_eq!(hc, "false  []", "{id}");
    }
    assert!(e.d.docker_ok(&["volume", "ls", "-q"]).lines().all(|v| v != "v1"));

    // Monitor: state, and no way to change it.
    ok(&e.docker_as(&mon, &["info"], None), "monitor: docker info");
    ok(&e.docker_as(&mon, &["node", "ls"], None), "monitor: docker node ls");
    let ls = ok(&e.docker_as(&mon, &["container", "ls", "--no-trunc"], None), "monitor: container ls");
    assert!(ls.contains("(redacted)") && !ls.contains("sleep 600"), "{ls}");
    for args in [&["service", "rm", "st_web"][..], &["run", "bb:1", "true"], &["logs", &cid]] {
        let o = e.docker_as(&mon, args, None);
        assert!(!o.status.success() && text(&o).contains("monitor: "), "{args:?}: {}", text(&o));
    }
}

#[test]
fn body_bypasses_are_denied_or_refused_and_policy_check_agrees() {
    let e = Env::new(|_| {});
    e.d.import_busybox("bb:1");
    let s = path_str(e.state.path()).to_string();
    let dep = PathBuf::from(format!("{s}/bundles/ci"));
    ok(&swarmseal(&["--state-dir", &s, "certs", "issue", "ci", "--role", "deploy", "--out", path_str(&dep)], &[], None), "certs issue");
    let path = "/v1.41/containers/create";
    let big = format!("{{\"Image\":\"bb:1\",\"Labels\":{{\"x\":\"{}\"}},\"HostConfig\":{{\"Privileged\":true}}}}", "a".repeat(1 << 20));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("plain", br#"{"Image":"bb:1","HostConfig":{"Privileged":true}}"#.to_vec(), 403),
        ("key case", br#"{"Image":"bb:1","hostconfig":{"PRIVILEGED":true}}"#.to_vec(), 403),
        ("escaped key", br#"{"Image":"bb:1","HostConfig":{"Privil\u0065ged":true}}"#.to_vec(), 403),
        ("long s folds to s", "{\"Image\":\"bb:1\",\"HostConfig\":{\"\u{017F}ysctls\":{\"kernel.msgmax\":\"1\"}}}".as_bytes().to_vec(), 403),
        ("legacy top level", br#"{"Image":"bb:1","Privileged":true}"#.to_vec(), 403),
        ("duplicate false then true", br#"{"Image":"bb:1","HostConfig":{"Privileged":false,"Privileged":true}}"#.to_vec(), 400),
        ("duplicate true then false", br#"{"Image":"bb:1","HostConfig":{"Privileged":true,"Privileged":false}}"#.to_vec(), 400),
        ("duplicate in other case", br#"{"Image":"bb:1","HostConfig":{"privileged":false,"Privileged":true}}"#.to_vec(), 400),
        ("duplicate object", br#"{"Image":"bb:1","HostConfig":{"Privileged":true},"hostConfig":{}}"#.to_vec(), 400),
        ("trailing data", br#"{"Image":"bb:1"} {"HostConfig":{"Privileged":true}}"#.to_vec(), 400),
        ("comment", br#"{"Image":"bb:1",/* x */"HostConfig":{"Privileged":true}}"#.to_vec(), 400),
        ("NaN", br#"{"Image":"bb:1","HostConfig":{"Privileged":true,"CpuShares":NaN}}"#.to_vec(), 400),
        ("empty", Vec::new(), 400),
        ("over the limit", big.into_bytes(), 413),
    ];
    for (what, body, want) in &cases {
        let (st, answer) = if *want == 413 {
            // Refused on its Content-Length before a byte is read: send the head alone (the
            // proxy closes the connection after its answer; a client still writing gets EPIPE).
            let head = format!("POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            send(&e, &dep, &head, b"")
        } else {
            post(&e, &dep, path, body)
        };
        assert_eq!(st, *want, "{what}: {answer}");
        let (code, out) = policy_check("deploy", "POST", path, body);
        assert_eq!(code, 1, "{what}: policy check: {out}");
        assert!(out.starts_with(&format!("deny rule=")) && out.contains(&format!("status={want}")), "{what}: policy check says {out:?}, the proxy {st} {answer}");
        if *want == 403 {
            let msg: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert!(out.ends_with(msg["message"].as_str().unwrap()), "{what}: {out} vs {answer}");
        }
    }
    // Content-Length: 0 with a chunked body: the chunked body is what counts (or the head is refused).
    let body = br#"{"Image":"bb:1","HostConfig":{"Privileged":true}}"#;
    let head = format!("POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n", body.len());
    let mut chunked = body.to_vec();
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (st, answer) = send(&e, &dep, &head, &chunked);
    assert!(st == 403 || st == 400, "CL 0 + chunked: {st} {answer}");
    // Chunked past the limit, no Content-Length: 413 once the limit is read (1 MiB and 100
    // bytes sent, no last chunk: the client has written everything when the answer comes).
    let head = format!("POST {path} HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(format!("10000\r\n{}\r\n", " ".repeat(0x10000)).as_bytes());
    }
    chunked.extend_from_slice(format!("64\r\n{}\r\n", " ".repeat(100)).as_bytes());
    let (st, _) = send(&e, &dep, &head, &chunked);
    assert_eq!(st, 413, "chunked past the limit");
    // An allowed body passes, byte for byte, and both agree.
    let good = br#"{"Image":"bb:1","Cmd":["true"],"HostConfig":{"Binds":["vol1:/data"]}}"#;
    let (st, answer) = post(&e, &dep, path, good);
    assert_eq!(st, 201, "{answer}");
    assert_eq!(policy_check("deploy", "POST", path, good), (0, "allow".to_string()));
    // Nothing refused was forwarded: the engine holds exactly the one allowed container.
    let ids = e.d.docker_ok(&["ps", "-aq"]);
    assert_eq!(ids.lines().count(), 1, "{ids}");
    assert_eq!(e.d.docker_ok(&["inspect", ids.trim(), "--format", "{{.HostConfig.Privileged}}"]), "false");
    // A host configuration at start (API < 1.24): refused for deploy; the engine would apply it
    // (admin's same request makes a privileged container).
    let id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["Id"].as_str().unwrap().to_string();
    let start = format!("/v1.23/containers/{id}/start");
    let (st, answer) = post(&e, &dep, &start, br#"{"Privileged":true}"#);
    assert_eq!(st, 403, "{answer}");
    let (code, out) = policy_check("deploy", "POST", &start, br#"{"Privileged":true}"#);
    assert!(code == 1 && out.starts_with("deny rule=host-config status=403"), "{out}");
    assert_eq!(e.d.docker_ok(&["inspect", &id, "--format", "{{.HostConfig.Privileged}}"]), "false");
    let (st, answer) = post(&e, &dep, &start, b"");
    assert_eq!(st, 204, "an empty start body passes: {answer}");
    let other = e.d.docker_ok(&["create", "bb:1", "true"]);
    // (Starting it may fail here, in a test namespace without every capability; the host
    // configuration is applied before.)
    let (st, answer) = post(&e, &e.admin, &format!("/v1.23/containers/{other}/start"), br#"{"Privileged":true}"#);
    assert!(st == 204 || (st == 500 && answer.contains("caps")), "{st} {answer}");
    assert_eq!(e.d.docker_ok(&["inspect", &other, "--format", "{{.HostConfig.Privileged}}"]), "true", "dockerd applies a host configuration at start");
    // Audit lines carry the rule, escaped like the other fields.
    e.proxy.logs.wait_for(&["status=400", "rule=body"]);
    e.proxy.logs.wait_for(&["status=413", "rule=body"]);
    e.proxy.logs.wait_for(&["status=201", "rule=-"]);
    // Endpoints: policy check and the proxy agree.
    for (m, p, want) in [("POST", "/v1.41/containers/x/exec", 403), ("GET", "/v1.41/swarm/unlockkey", 403), ("POST", "/v1.41/images/create?fromImage=x", 403), ("POST", "/v1.41/plugins/pull?remote=x", 403), ("GET", "/v1.41/containers/json", 200)] {
        let head = format!("{m} {p} HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
        let (st, answer) = send(&e, &dep, &head, b"{}");
        assert_eq!(st, want, "{m} {p}: {answer}");
        let (code, out) = policy_check("deploy", m, p, b"{}");
        assert_eq!(code == 0, want == 200, "{m} {p}: {out}");
    }
}

/// The appliance's `swarmseal.roles` credential, through the agent binary with
/// `$CREDENTIALS_DIRECTORY` as systemd sets it: its tables replace the configuration's of the
/// same name and add new roles; a bad one keeps the proxy from starting (the agent says which
/// role and rule) instead of serving part of a policy.
#[test]
fn roles_credential_on_the_appliance_overrides_the_config_and_a_bad_one_keeps_the_proxy_off() {
    let d = Dockerd::start();
    d.import_busybox("bb:1");
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    let st = path_str(s);
    for sub in ["a", "b/x", "creds"] {
        std::fs::create_dir_all(s.join(sub)).unwrap();
    }
    let ws = s.join("workstation.toml");
    std::fs::write(&ws, "[roles.ci]\nbase = \"deploy\"\n").unwrap();
    ok(&swarmseal(&["--state-dir", st, "certs", "init"], &[], None), "certs init");
    for (name, role) in [("pipe", "ci"), ("dep", "deploy")] {
        ok(&swarmseal(&["--config", path_str(&ws), "--state-dir", st, "certs", "issue", name, "--role", role, "--out", &format!("{st}/{name}")], &[], None), "certs issue");
    }
    let port = free_port();
    let cfg = s.join("agent.toml");
    std::fs::write(&cfg, format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n[bench]\nat_boot = false\n[swarm]\ninit = false\n[roles.deploy]\nallow_bind_paths = [\"{st}/a\"]\n")).unwrap();
    let creds = s.join("creds");
    let log = s.join("agent.log");
    let start = || {
        let _ = std::fs::remove_file(&log);
        AgentProcess(
            cmd(swarmseal_bin())
                .args(["--config", path_str(&cfg), "--docker-host", &d.host(), "--state-dir", st, "--tcti", &tpm.tcti(), "agent"])
                .env("CREDENTIALS_DIRECTORY", &creds)
                .env("SWARMSEAL_LOG_STDERR", "1")
                .env("NO_COLOR", "1")
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::options().append(true).open(&log).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let post = |bundle: &str, body: &str| {
        let head = format!("POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        send_to(addr, &s.join(bundle), &head, body.as_bytes(), logs)
    };

    // Good: a new role `ci`, and deploy's table replaced (its bind path is b, no longer a).
    std::fs::write(creds.join("swarmseal.roles"), format!("[roles.deploy]\nallow_bind_paths = [\"{st}/b\"]\n[roles.ci]\nbase = \"deploy\"\n")).unwrap();
    let agent = start();
    wait_until("the proxy serves", Duration::from_secs(60), || std::net::TcpStream::connect(addr).is_ok());
    let (code, answer) = post("pipe", r#"{"Image":"bb:1","HostConfig":{"Privileged":true}}"#);
    assert_eq!((code, answer.contains("ci: HostConfig.Privileged is not allowed")), (403, true), "{answer}");
    let (code, answer) = post("pipe", r#"{"Image":"bb:1","Cmd":["true"]}"#);
    assert_eq!(code, 201, "a role only the credential defines: {answer}");
    let (code, answer) = post("dep", &format!(r#"{{"Image":"bb:1","Cmd":["true"],"HostConfig":{{"Binds":["{st}/b/x:/x"]}}}}"#));
    assert_eq!(code, 201, "the credential's bind path: {answer}");
    let (code, answer) = post("dep", &format!(r#"{{"Image":"bb:1","Cmd":["true"],"HostConfig":{{"Binds":["{st}/a:/x"]}}}}"#));
    assert!(code == 403 && answer.contains("outside allow_bind_paths"), "the config's table is replaced: {code} {answer}");
    // A symlink inside the allowed directory is not followed out of it (the bind is refused).
    std::os::unix::fs::symlink("/etc", s.join("b/evil")).unwrap();
    let (code, answer) = post("dep", &format!(r#"{{"Image":"bb:1","Cmd":["true"],"HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{st}/b/evil","Target":"/x"}}]}}}}"#));
    assert!(code == 403 && answer.contains(&format!("passes through the symbolic link `{st}/b/evil`")), "{code} {answer}");
    assert!(!logs().contains("bad_credential"), "{}", logs());
    drop(agent);

    // Bad: the agent names the credential, the role and the rule, and serves no proxy.
    std::fs::write(creds.join("swarmseal.roles"), "[roles.ci]\nbase = \"deploy\"\nallow_sysctls = [\"kernel.shm rmid\"]\n").unwrap();
    wait_until("the old proxy is gone", Duration::from_secs(30), || std::net::TcpStream::connect(addr).is_err());
    let _agent = start();
    wait_until("the agent's boot decision", Duration::from_secs(60), || logs().contains("swarm init is off"));
    let l = logs();
    assert!(l.contains("credential swarmseal.roles: [roles.ci] allow_sysctls: `kernel.shm rmid` is not a sysctl name; the proxy is not started until it is fixed"), "{l}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "no proxy on a half-read policy: {l}");
}

/// A rollback makes the engine apply the service's PreviousSpec (or, with `FailureAction:
/// rollback`, its current Spec) instead of the body: for a deploy identity the proxy reads
/// that spec from the engine and applies the body rules to it, at the request's version.
#[test]
fn a_rollback_applies_only_a_spec_the_deploy_role_allows() {
    let (e, dep, _mon, _other) = swarm_env();
    // Admin made the service for ci with a capability deploy may not add.
    e.admin(&["service", "create", "--detach", "--replicas", "0", "--name", "r1", "--label", "swarmseal.owner=ci", "--cap-add", "CAP_SYS_ADMIN", "bb:1", "sleep", "600"]);
    let id = e.d.docker_ok(&["service", "inspect", "r1", "--format", "{{.ID}}"]);
    let version = || e.d.docker_ok(&["service", "inspect", "r1", "--format", "{{.Version.Index}}"]);
    let caps = || e.d.docker_ok(&["service", "inspect", "r1", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.CapabilityAdd}} {{json .Spec.TaskTemplate.ContainerSpec.Env}}"]);
    let spec = |env: &str, extra: &str| format!(r#"{{"Name":"r1","Mode":{{"Replicated":{{"Replicas":0}}}},"TaskTemplate":{{"ContainerSpec":{{"Image":"bb:1","Args":["sleep","600"],"Env":["V={env}"]}}}}{extra}}}"#);
    let update = |q: &str, body: &str| post(&e, &dep, &format!("/v1.41/services/{id}/update?{q}"), body.as_bytes());

    // An update that would roll back to the current (admin's) spec if it failed: refused.
    let (st, answer) = update(&format!("version={}", version()), &spec("1", r#","UpdateConfig":{"FailureAction":"rollback"}"#));
    assert!(st == 403 && answer.contains("deploy: Spec.TaskTemplate.ContainerSpec.CapabilityAdd is not allowed (the spec a rollback applies)"), "{st} {answer}");
    e.proxy.logs.wait_for(&["status=403", "rule=cap-add", "/update"]);
    // ci replaces it with an allowed spec: admin's is now the PreviousSpec.
    let (st, answer) = update(&format!("version={}", version()), &spec("1", ""));
    assert_eq!(st, 200, "{answer}");
    assert_eq!(caps(), r#"null ["V=1"]"#);
    // The CLI's rollback (body: the current, allowed spec) is refused for the spec it would apply.
    let o = e.docker_as(&dep, &["service", "rollback", "--detach", "r1"], None);
    assert!(!o.status.success() && text(&o).contains("deploy: PreviousSpec.TaskTemplate.ContainerSpec.CapabilityAdd is not allowed"), "{}", text(&o));
    assert_eq!(caps(), r#"null ["V=1"]"#, "nothing was rolled back");
    // A rollback whose version is not the service's now: refused (the spec was checked at that one only).
    let (st, answer) = update(&format!("version={}&rollback=previous", version().parse::<u64>().unwrap() + 1), &spec("1", ""));
    assert!(st == 403 && answer.contains("a rollback needs version="), "{st} {answer}");
    e.proxy.logs.wait_for(&["status=403", "rule=rollback"]);
    let (code, out) = policy_check("deploy", "POST", &format!("/v1.41/services/{id}/update?version=1&rollback=previous"), spec("1", "").as_bytes());
    assert!(code == 0 && out.contains("a rollback would apply"), "{out}");
    // Two allowed specs: the rollback goes through, to the previous one.
    let (st, answer) = update(&format!("version={}", version()), &spec("2", ""));
    assert_eq!(st, 200, "{answer}");
    ok(&e.docker_as(&dep, &["service", "rollback", "--detach", "r1"], None), "service rollback to an allowed spec");
    assert_eq!(caps(), r#"null ["V=1"]"#);
    // Admin is not inspected: its rollback restores V=2, then the update to admin's own spec works for it.
    e.admin(&["service", "rollback", "--detach", "r1"]);
    assert_eq!(caps(), r#"null ["V=2"]"#);
}
