//! `swarmseal health`: is this manager good? The boot-assessment gate of an image update
//! (`swarmseal-boot-health.service`, before `boot-complete.target`): a new version is good
//! only when the agent unlocked the swarm and the proxy serves.
//!
//! Two checks, in this order; the first failure decides the exit code:
//! 1. the engine (`GET /info` on the engine socket): `Swarm.LocalNodeState == "active"` and
//!    `Swarm.ControlAvailable` (a manager). Unreachable → exit 3; `locked` → exit 13; any
//!    other state (inactive, pending, error, a worker) → exit 7.
//! 2. the proxy (`[proxy] listen`; `0.0.0.0`/`::` probed on loopback): a TLS 1.3 handshake,
//!    no client certificate. When the configured server certificate (`[proxy] server_cert`,
//!    default `<state_dir>/pki/server-cert.pem`) is readable, the server must present exactly
//!    that certificate and prove its key (CertificateVerify checked): "pinned". When it is not
//!    readable, the probe only checks that a TLS 1.3 server answers with a ServerHello and a
//!    certificate (it reaches certificate verification, then aborts; no certificate is ever
//!    accepted unverified): "hello". Failure → exit 14. A disabled proxy is not checked.
//!
//! `--wait SECS` checks again every 2 s while the manager may still come up (engine starting,
//! agent restarting, proxy not bound yet). With `--agent-unit UNIT` (the appliance:
//! `swarmseal.service`, a `Type=notify` unit) it stops waiting as soon as the outcome is final,
//! so a failing update falls back in one boot's time instead of `SECS`:
//! - the unit is `active` (the agent sent READY=1 after its boot decision and phase lock) and
//!   the swarm is locked: the agent will not unseal again in this boot → exit 13 at once;
//! - the unit is `failed` or `inactive` (e.g. it refused its configuration, exit 2, which
//!   `RestartPreventExitStatus=2` does not retry) → exit 18 at once.
//! The unit's state comes from `systemctl show` (`ActiveState`, `SubState`, `Result`,
//! `ExecMainStatus`); `activating` (including `auto-restart`) keeps waiting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use swarmseal_common::tls;

use crate::config::Config;
use crate::swarm::{Engine, NodeState, SwarmError};

/// How long one probe of the proxy may take (TCP connect and handshake each).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two checks of `--wait`.
const POLL: Duration = Duration::from_secs(2);

/// Why the manager is not healthy. `Display` is the operator sentence (stderr).
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error(transparent)]
    Engine(#[from] SwarmError),
    #[error("the swarm is locked: the agent did not unlock it in this boot (journalctl -u swarmseal says why)")]
    Locked,
    #[error("the swarm is {state}{}: a manager is healthy when its swarm is active", if *.manager { "" } else { " and this node is not a manager" })]
    State { state: NodeState, manager: bool },
    #[error("the proxy does not serve on {addr}: {reason}")]
    Proxy { addr: SocketAddr, reason: String },
    #[error("the swarm is locked and the agent ({unit}) has made its boot decision: it will not unlock by itself in this boot (journalctl -u {unit} says why)")]
    Decided { unit: String },
    #[error("the agent is not running: {unit} is {state} (journalctl -u {unit} says why); the swarm stays locked in this boot")]
    AgentDown { unit: String, state: String },
}

/// How the proxy probe judged the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// The configured server certificate, presented and its key proven.
    Pinned,
    /// A TLS 1.3 ServerHello and a certificate; the certificate not checked (none configured readable).
    Hello,
}

/// One check of the engine, then the proxy. Ok: a one-line summary.
pub async fn check(cfg: &Config) -> Result<String, Unhealthy> {
    let engine = Engine::connect(&cfg.docker_socket()).await?;
    let st = engine.status().await?;
    match st.state {
        NodeState::Active if st.manager => {}
        NodeState::Locked => return Err(Unhealthy::Locked),
        state => return Err(Unhealthy::State { state, manager: st.manager }),
    }
    if !cfg.proxy.enabled {
        return Ok("swarm active (manager); proxy disabled in the configuration, not checked".into());
    }
    let addr = probe_addr(cfg.proxy.listen);
    let paths = crate::proxy::pki::PkiPaths::of(cfg);
    let pinned = std::fs::read(&paths.server_cert).ok().and_then(|pem| crate::proxy::tls::pem_certs(&pem).ok()).and_then(|c| c.into_iter().next());
    let mode = probe_proxy(addr, pinned).await.map_err(|reason| Unhealthy::Proxy { addr, reason })?;
    let how = match mode {
        ProbeMode::Pinned => "it presented the configured server certificate and proved its key",
        ProbeMode::Hello => "it answered a TLS 1.3 ServerHello (server certificate not readable here, not checked)",
    };
    Ok(format!("swarm active (manager); proxy serving on {addr}: {how}"))
}

/// `swarmseal health [--wait SECS] [--agent-unit UNIT]`: check; with `wait`, check again every
/// 2 s until healthy, `wait` seconds passed, or (with `agent_unit`) the outcome is final (see the
/// module doc). Prints the summary on success; the last reason is the error.
pub async fn run(cfg: &Config, wait: Option<u64>, agent_unit: Option<&str>) -> Result<(), Unhealthy> {
    let deadline = Instant::now() + Duration::from_secs(wait.unwrap_or(0));
    loop {
        let e = match check(cfg).await {
            Ok(s) => {
                println!("healthy: {s}");
                return Ok(());
            }
            Err(e) => e,
        };
        if let Some(unit) = agent_unit {
            match unit_state(unit).await {
                Ok(u) => {
                    if let Some(fin) = final_outcome(&e, unit, &u) {
                        return Err(fin);
                    }
                }
                Err(err) => eprintln!("swarmseal: health: cannot read the state of {unit} ({err}); waiting as if it were starting"),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(e);
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// A systemd unit's state as `systemctl show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `LoadState`: loaded, not-found, masked, …
    pub load: String,
    /// `ActiveState`: active, activating, deactivating, inactive, failed, reloading.
    pub active: String,
    /// `SubState`, e.g. running, auto-restart, dead.
    pub sub: String,
    /// `Result`: success, exit-code, signal, timeout, start-limit-hit, …
    pub result: String,
    /// `ExecMainStatus`: the main process's exit status.
    pub status: String,
}

impl UnitState {
    /// Parse `systemctl show --property=…` output (`Key=Value` lines).
    pub fn parse(out: &str) -> UnitState {
        let mut u = UnitState::default();
        for line in out.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            let slot = match k {
                "LoadState" => &mut u.load,
                "ActiveState" => &mut u.active,
                "SubState" => &mut u.sub,
                "Result" => &mut u.result,
                "ExecMainStatus" => &mut u.status,
                _ => continue,
            };
            *slot = v.trim().to_string();
        }
        u
    }
}

async fn unit_state(unit: &str) -> Result<UnitState, String> {
    let out = tokio::process::Command::new("systemctl")
        .args(["show", "--property=LoadState", "--property=ActiveState", "--property=SubState", "--property=Result", "--property=ExecMainStatus", "--", unit])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!("systemctl show: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let u = UnitState::parse(&String::from_utf8_lossy(&out.stdout));
    if u.load == "not-found" {
        // `systemctl show` reports a unit that does not exist as inactive: not "the agent stopped".
        return Err(format!("no unit {unit} is loaded (LoadState=not-found): check --agent-unit"));
    }
    Ok(u)
}

/// Is this failed check final, given the agent unit's state? `None`: keep waiting.
pub fn final_outcome(e: &Unhealthy, unit: &str, u: &UnitState) -> Option<Unhealthy> {
    match u.active.as_str() {
        "failed" | "inactive" => Some(Unhealthy::AgentDown { unit: unit.to_string(), state: format!("{} ({}, result {}, exit status {})", u.active, u.sub, u.result, u.status) }),
        "active" if matches!(e, Unhealthy::Locked) => Some(Unhealthy::Decided { unit: unit.to_string() }),
        _ => None,
    }
}

/// The address to probe for a listen address: a wildcard becomes loopback of its family.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// What the probe's verifier saw (it never accepts a certificate it was not given).
#[derive(Debug)]
struct Probe {
    pinned: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    hello: AtomicBool,
    proven: AtomicBool,
}

impl ServerCertVerifier for Probe {
    fn verify_server_cert(&self, end_entity: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        // Reaching this point means a TLS 1.3 ServerHello was processed.
        self.hello.store(true, Ordering::SeqCst);
        match &self.pinned {
            Some(p) if p.as_ref() == end_entity.as_ref() => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::General("the server presented another certificate than the configured server_cert".into())),
            None => Err(rustls::Error::General("probe ends here (ServerHello seen, certificate not checked)".into())),
        }
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not the proxy's protocol".into()))
    }
    fn verify_tls13_signature(&self, msg: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        let r = rustls::crypto::verify_tls13_signature(msg, cert, dss, &self.provider.signature_verification_algorithms);
        if r.is_ok() {
            self.proven.store(true, Ordering::SeqCst);
        }
        r
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A verifier that accepts only `cert` as the server's certificate and checks that the
/// server proves its key (TLS 1.3 CertificateVerify): `bench`'s A.4 probe uses it too.
pub(crate) fn pinned_verifier(cert: CertificateDer<'static>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(Probe { pinned: Some(cert), provider: Arc::new(rustls::crypto::ring::default_provider()), hello: AtomicBool::new(false), proven: AtomicBool::new(false) })
}

/// Handshake with the proxy at `addr` without a client certificate (see the module doc).
/// Ok: how it was judged. Err: why it is not serving.
pub async fn probe_proxy(addr: SocketAddr, pinned: Option<CertificateDer<'static>>) -> Result<ProbeMode, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let probe = Arc::new(Probe { pinned: pinned.clone(), provider, hello: AtomicBool::new(false), proven: AtomicBool::new(false) });
    let cfg = tls::client_config(tls::Versions::Tls13, tls::Verify::Custom(probe.clone()), None).map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no TCP connection within {} s", PROBE_TIMEOUT.as_secs()))?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let name = ServerName::IpAddress(addr.ip().into());
    let r = tokio::time::timeout(PROBE_TIMEOUT, tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp)).await;
    let outcome = match &r {
        Err(_) => format!("no TLS handshake within {} s", PROBE_TIMEOUT.as_secs()),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => String::new(),
    };
    match pinned {
        // The server proved the configured certificate's key; it then refuses us (no client
        // certificate), which is expected.
        Some(_) if probe.proven.load(Ordering::SeqCst) => Ok(ProbeMode::Pinned),
        Some(_) if probe.hello.load(Ordering::SeqCst) => Err(format!("TLS handshake: {outcome}")),
        None if probe.hello.load(Ordering::SeqCst) => Ok(ProbeMode::Hello),
        _ => Err(format!("no TLS 1.3 ServerHello: {outcome}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Exit;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        assert_eq!(probe_addr("0.0.0.0:2376".parse().unwrap()), "127.0.0.1:2376".parse().unwrap());
        assert_eq!(probe_addr("[::]:2376".parse().unwrap()), "[::1]:2376".parse().unwrap());
        assert_eq!(probe_addr("192.0.2.10:2376".parse().unwrap()), "192.0.2.10:2376".parse().unwrap());
    }

    #[test]
    fn nothing_listening_is_proxy_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let e = rt.block_on(probe_proxy(SocketAddr::from(([127, 0, 0, 1], port)), None)).unwrap_err();
        assert!(e.contains("TCP connect"), "{e}");
        let u = Unhealthy::Proxy { addr: SocketAddr::from(([127, 0, 0, 1], port)), reason: e };
        assert_eq!(Exit::from(&u), Exit::ProxyDown);
        assert_eq!(Exit::from(&Unhealthy::Locked) as u8, 13);
    }

    #[test]
    fn the_agent_units_state_decides_when_waiting_is_over() {
        let failed = UnitState::parse("Result=exit-code\nActiveState=failed\nSubState=failed\nExecMainStatus=2\n");
        assert_eq!(failed, UnitState { load: String::new(), active: "failed".into(), sub: "failed".into(), result: "exit-code".into(), status: "2".into() });
        let down = final_outcome(&Unhealthy::Locked, "swarmseal.service", &failed).expect("a failed agent is final");
        assert_eq!(Exit::from(&down) as u8, 18);
        assert!(down.to_string().contains("failed (failed, result exit-code, exit status 2)"), "{down}");
        // READY=1 sent (decision made, phase lock done) and locked: final.
        let active = UnitState::parse("ActiveState=active\nSubState=running\nResult=success\nExecMainStatus=0");
        let decided = final_outcome(&Unhealthy::Locked, "swarmseal.service", &active).expect("locked after the decision is final");
        assert_eq!(Exit::from(&decided), Exit::Locked);
        // Still deciding, or restarting: wait.
        let starting = UnitState::parse("ActiveState=activating\nSubState=start\nResult=success\nExecMainStatus=0");
        assert!(final_outcome(&Unhealthy::Locked, "swarmseal.service", &starting).is_none());
        let restarting = UnitState::parse("ActiveState=activating\nSubState=auto-restart\nResult=exit-code\nExecMainStatus=1");
        assert!(final_outcome(&Unhealthy::Locked, "swarmseal.service", &restarting).is_none());
        // An active agent whose proxy is not up yet: wait for it.
        let proxy = Unhealthy::Proxy { addr: "127.0.0.1:2376".parse().unwrap(), reason: "TCP connect: refused".into() };
        assert!(final_outcome(&proxy, "swarmseal.service", &active).is_none());
    }
}
