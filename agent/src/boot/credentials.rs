//! First-boot settings from systemd credentials.

use zeroize::Zeroizing;

use crate::config::Config;

/// First-boot settings from systemd credentials (`$CREDENTIALS_DIRECTORY`):
/// `swarmseal.advertise-addr`, `swarmseal.swarm-init` (`yes`/`no`),
/// `swarmseal.escrow-recipient` (age1…), `swarmseal.client-ca` (PEM: the CA that
/// signs client certificates), `swarmseal.server-cert` and `swarmseal.server-key`
/// (PEM: the proxy's certificate, signed by a CA the operator's clients trust).
/// A malformed credential is reported and ignored; the safe default stays
/// (no swarm init without a valid advertise address).
pub fn apply_credentials(cfg: &mut Config, dir: &std::path::Path) -> Vec<String> {
    let mut problems = Vec::new();
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).ok().map(|s| s.trim().to_string());
    if let Some(a) = read("swarmseal.advertise-addr") {
        let host = a.rsplit_once(':').map(|(h, _)| h).unwrap_or(&a);
        if a.parse::<std::net::IpAddr>().is_ok() || a.parse::<std::net::SocketAddr>().is_ok() || (!host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')) {
            cfg.swarm.advertise_addr = Some(a);
        } else {
            problems.push(format!("credential swarmseal.advertise-addr {a:?} is not an IP address, interface name or host[:port]; the swarm is not initialized until it is fixed"));
            cfg.swarm.init = false;
        }
    }
    if let Some(v) = read("swarmseal.swarm-init") {
        match v.as_str() {
            "yes" | "true" | "1" => cfg.swarm.init = cfg.swarm.init || problems.is_empty(),
            "no" | "false" | "0" => cfg.swarm.init = false,
            other => {
                problems.push(format!("credential swarmseal.swarm-init {other:?} is not yes/no; not initializing a swarm"));
                cfg.swarm.init = false;
            }
        }
    }
    if let Some(r) = read("swarmseal.escrow-recipient") {
        match crate::escrow::parse_recipient(&r) {
            Ok(_) => cfg.escrow.recipient = Some(r),
            Err(e) => problems.push(format!("credential swarmseal.escrow-recipient: {e}; no escrow copy is written")),
        }
    }
    let pki = cfg.pki_dir();
    let pem_creds = [
        ("swarmseal.client-ca", cfg.proxy.client_ca.clone().unwrap_or_else(|| pki.join("ca.pem")), "-----BEGIN CERTIFICATE-----", 0o644),
        ("swarmseal.server-cert", cfg.proxy.server_cert.clone().unwrap_or_else(|| pki.join("server-cert.pem")), "-----BEGIN CERTIFICATE-----", 0o644),
        ("swarmseal.server-key", cfg.proxy.server_key.clone().unwrap_or_else(|| pki.join("server-key.pem")), "PRIVATE KEY-----", 0o600),
    ];
    for (name, target, marker, mode) in pem_creds {
        let Ok(pem) = std::fs::read(dir.join(name)).map(Zeroizing::new) else { continue };
        if !String::from_utf8_lossy(&pem).contains(marker) {
            problems.push(format!("credential {name} is not PEM ({marker}); the proxy will not start until it is fixed"));
        } else if std::fs::read(&target).ok().map(Zeroizing::new).as_deref().map(|v| &v[..]) != Some(&pem[..]) {
            let r = std::fs::create_dir_all(target.parent().expect("parent")).map_err(|e| e.to_string()).and_then(|_| crate::keystore::write_atomic(&target, &pem, mode).map_err(|e| e.to_string()));
            if let Err(e) = r {
                problems.push(format!("cannot install credential {name} as {}: {e}", target.display()));
            }
        }
    }
    problems
}

