//! First-boot settings from systemd credentials.

use zeroize::Zeroizing;

use crate::config::Config;

/// First-boot settings from systemd credentials (`$CREDENTIALS_DIRECTORY`):
/// `swarmseal.advertise-addr`, `swarmseal.swarm-init` (`yes`/`no`),
/// `swarmseal.escrow-recipient` (age1…), `swarmseal.client-ca` (PEM: the CA that
/// signs client certificates), `swarmseal.server-cert` and `swarmseal.server-key`
/// (PEM: the proxy's certificate, signed by a CA the operator's clients trust),
/// `swarmseal.roles` (TOML: `[roles.NAME]` tables, see [`roles_credential`]),
/// `swarmseal.console-tty` (`/dev/ttyNAME` or empty: where the status screen goes, [`crate::console`]).
/// A malformed credential is reported and ignored; the safe default stays
/// (no swarm init without a valid advertise address; no proxy with a bad role policy).
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
    if let Some(t) = read("swarmseal.console-tty") {
        // Display only, but the agent truncates what it writes to: a terminal device, nothing else.
        let name = t.strip_prefix("/dev/tty").unwrap_or("");
        if t.is_empty() || (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric())) {
            cfg.console.tty = t;
        } else {
            problems.push(format!("credential swarmseal.console-tty {t:?} is not /dev/ttyNAME (or empty: no screen); the screen stays on {:?}", cfg.console.tty));
        }
    }
    if let Some(text) = read("swarmseal.roles") {
        match roles_credential(&cfg.roles, &text) {
            Ok(roles) => cfg.roles = roles,
            Err(e) => {
                // A role table left out could be a redaction or a restriction the operator
                // meant: the proxy does not run on the rest of the policy.
                cfg.proxy.enabled = false;
                problems.push(format!("credential swarmseal.roles: {e}; the proxy is not started until it is fixed (it never runs on part of a role policy)"));
            }
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


/// The roles of the credential `swarmseal.roles` (TOML, only `[roles.NAME]` tables, the keys of
/// the configuration's `[roles.NAME]`) over the configuration's `roles`: a table of the
/// credential replaces the configuration's table of that name, the others stay. Errors name
/// the role and the rule (key): a table that does not parse, or the merged roles that
/// [`swarmseal_proxy::policy::Roles::from_config`] refuses.
pub fn roles_credential(config: &swarmseal_proxy::policy::RolesConfig, text: &str) -> Result<swarmseal_proxy::policy::RolesConfig, String> {
    use serde::Deserialize;
    let top: toml::Table = text.parse().map_err(|e: toml::de::Error| format!("not TOML ({})", e.message()))?;
    let mut merged = config.clone();
    for (k, v) in top {
        if k != "roles" {
            return Err(format!("[{k}] is not allowed here; only [roles.NAME] tables"));
        }
        let toml::Value::Table(roles) = v else { return Err("`roles` is not a table of [roles.NAME] tables".into()) };
        for (name, t) in roles {
            let rc = swarmseal_proxy::policy::RoleConfig::deserialize(t).map_err(|e| format!("[roles.{name}] {}", e.message()))?;
            merged.insert(name, rc);
        }
    }
    swarmseal_proxy::policy::Roles::from_config(&merged).map_err(|e| e.to_string())?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_credential_replaces_tables_by_name_and_names_role_and_rule() {
        let cfg: Config = toml::from_str("[roles.deploy]\nallow_sysctls = [\"net.core.somaxconn\"]\n[roles.ops]\nbase = \"monitor\"\n").unwrap();
        let r = roles_credential(&cfg.roles, "[roles.deploy]\nallow_bind_paths = [\"/srv/b\"]\n[roles.ci]\nbase = \"deploy\"\n").unwrap();
        assert_eq!(r["deploy"].allow_bind_paths, ["/srv/b"]);
        assert!(r["deploy"].allow_sysctls.is_empty(), "the credential's table replaces the config's");
        assert_eq!(r["ops"].base.as_deref(), Some("monitor"));
        assert_eq!(r["ci"].base.as_deref(), Some("deploy"));
        let e = roles_credential(&cfg.roles, "[roles.ci]\nbase = \"deploy\"\nallow_bind_path = [\"/srv\"]\n").unwrap_err();
        assert!(e.starts_with("[roles.ci] unknown field `allow_bind_path`"), "{e}");
        assert_eq!(roles_credential(&cfg.roles, "[roles.ci]\n").unwrap_err(), "[roles.ci] base: a new role needs `base = \"deploy\"` (or admin, readonly, monitor): the built-in role whose rules it takes");
        assert!(roles_credential(&cfg.roles, "[proxy]\nenabled = false\n").unwrap_err().contains("[proxy] is not allowed"));
        assert!(roles_credential(&cfg.roles, "[roles.ci\n").unwrap_err().starts_with("not TOML"));
    }

    #[test]
    fn console_tty_credential_names_a_terminal_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config { state_dir: dir.path().join("state"), ..Default::default() };
        cfg.console.tty = "/dev/tty1".into();
        for (given, want, problems) in [("/dev/ttyS0\n", "/dev/ttyS0", 0), ("", "", 0), ("/var/lib/swarmseal/keys/current.json", "", 1), ("/dev/tty", "", 1), ("/dev/tty1/../sda", "", 1)] {
            std::fs::write(dir.path().join("swarmseal.console-tty"), given).unwrap();
            let p = apply_credentials(&mut cfg, dir.path());
            assert_eq!((cfg.console.tty.as_str(), p.len()), (want, problems), "{given:?}: {p:?}");
        }
    }

    #[test]
    fn a_bad_roles_credential_keeps_the_proxy_off() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("swarmseal.roles"), "[roles.ops]\nbase = \"monitor\"\nallow_sysctls = [\"kernel.x\"]\n").unwrap();
        let mut cfg = Config { state_dir: dir.path().join("state"), ..Default::default() };
        let problems = apply_credentials(&mut cfg, dir.path());
        assert!(!cfg.proxy.enabled);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("credential swarmseal.roles: [roles.ops] allow_*:"), "{problems:?}");
    }
}
