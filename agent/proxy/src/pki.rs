//! Appliance PKI: the client CA, the proxy's server certificate, client bundles.
//!
//! Layout under `<state_dir>/pki/` (`certs init`):
//! - `ca.pem`, `ca-key.pem` (0600): the CA that signs client certificates
//!   (and the server certificate, so one `ca.pem` verifies both directions);
//! - `server-cert.pem` (chain: server, CA), `server-key.pem` (0600): SANs
//!   `localhost`, `127.0.0.1`, `::1`, the hostname and every `--san`.
//!
//! A client bundle (`certs issue NAME --role ROLE --out DIR`, any configured role) is
//! `ca.pem`, `cert.pem`, `key.pem` (all 0600), the names the docker CLI
//! expects in `DOCKER_CERT_PATH` or `--tlscacert/--tlscert/--tlskey`.
//!
//! **Role convention**: the client certificate's Subject OU
//! (organizationalUnitName) is the role (`admin`, `readonly`, `deploy`, `monitor`, or a
//! `[roles.NAME]` of the configuration) — the field
//! Docker's own swarm node certificates use for the node role. The Subject CN
//! is the identity written to the audit log. All keys are ECDSA P-256.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use zeroize::Zeroizing;

use super::tls::{self, Role};
use super::ProxyError;
use crate::config::ProxySettings;

/// `swarmseal certs …`
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create the client CA and the proxy's server certificate under `<state_dir>/pki/`.
    /// An existing CA is kept (client bundles stay valid) unless --force.
    Init {
        /// Extra subject alternative name for the server certificate (DNS name or IP), repeatable.
        #[arg(long = "san", value_name = "NAME|IP")]
        san: Vec<String>,
        /// Replace an existing CA (every issued client certificate stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a client bundle (ca.pem, cert.pem, key.pem) for the docker CLI.
    Issue {
        /// Identity (certificate Subject CN), shown in the audit log.
        name: String,
        /// Role (certificate Subject OU): admin (everything), readonly (GET/HEAD), deploy (stacks
        /// and services, nothing that reaches the host), monitor (state without secrets), or a
        /// `[roles.NAME]` of the configuration.
        #[arg(long)]
        role: String,
        /// Output directory (default ./NAME).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite an existing bundle in DIR.
        #[arg(long)]
        force: bool,
    },
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

/// Paths of the appliance PKI for `cfg` (config overrides, else `<state_dir>/pki/`).
pub struct PkiPaths {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl PkiPaths {
    pub fn of(cfg: &impl ProxySettings) -> PkiPaths {
        let dir = cfg.pki_dir();
        let p = cfg.proxy();
        PkiPaths {
            ca_cert: p.client_ca.clone().unwrap_or_else(|| dir.join(CA_CERT)),
            ca_key: dir.join(CA_KEY),
            server_cert: p.server_cert.clone().unwrap_or_else(|| dir.join("server-cert.pem")),
            server_key: p.server_key.clone().unwrap_or_else(|| dir.join("server-key.pem")),
            dir,
        }
    }
}

fn usage(msg: impl Into<String>) -> ProxyError {
    ProxyError::Usage(msg.into())
}

fn crypto(msg: String) -> ProxyError {
    ProxyError::Crypto(msg)
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> ProxyError {
    ProxyError::Invalid { path: path.to_path_buf(), message: message.to_string() }
}

fn create_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProxyError + '_ {
    move |source| ProxyError::Write { action: "create", path: path.to_path_buf(), source }
}

/// `swarmseal certs …`
pub fn run(cfg: &impl ProxySettings, c: CertsCommand) -> Result<(), ProxyError> {
    let paths = PkiPaths::of(cfg);
    match c {
        CertsCommand::Init { san, force } => {
            let created = init(&paths, &san, force)?;
            if created {
                println!("created the CA {} and the server certificate {}", paths.ca_cert.display(), paths.server_cert.display());
            } else {
                println!("kept the existing CA {}; server certificate {}", paths.ca_cert.display(), paths.server_cert.display());
            }
            Ok(())
        }
        CertsCommand::Issue { name, role, out, days, force } => {
            let roles = crate::policy::Roles::from_config(&cfg.roles()).map_err(|e| usage(e.to_string()))?;
            if roles.get(&role).is_none() {
                return Err(usage(format!("unknown role `{role}`: use one of {} (or add a [roles.{role}] table with a base)", roles.names().join(", "))));
            }
            let out = match out {
                Some(o) => o,
                None => {
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c)) || name.starts_with('.') {
                        return Err(usage(format!("`{name}` cannot be used as a directory name; give --out DIR")));
                    }
                    PathBuf::from(&name)
                }
            };
            let now = time::OffsetDateTime::now_utc();
            let validity = (now - time::Duration::hours(1), now + time::Duration::days(days.max(1) as i64));
            issue_with_ou(&paths, &name, Some(&role), validity, &out, force)?;
            println!(
                "issued {} certificate for `{name}` in {} (ca.pem, cert.pem, key.pem)\nuse: docker --tlsverify -H tcp://HOST:{} --tlscacert {d}/ca.pem --tlscert {d}/cert.pem --tlskey {d}/key.pem info\n  or: DOCKER_CERT_PATH={d} DOCKER_TLS_VERIFY=1 DOCKER_HOST=tcp://HOST:{} docker info",
                role,
                out.display(),
                cfg.proxy().listen.port(),
                cfg.proxy().listen.port(),
                d = out.display(),
            );
            Ok(())
        }
    }
}

/// Write `data` to `path` with mode 0600, atomically ([`swarmseal_common::fs::write_atomic`]),
/// creating its directory. A leftover temp file is removed first, so the key never goes into a
/// file made earlier with another mode.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), ProxyError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(create_err(dir))?;
    let _ = std::fs::remove_file(swarmseal_common::fs::temp_path(path));
    swarmseal_common::fs::write_atomic(path, data, 0o600).map_err(|source| ProxyError::Write { action: "write", path: path.to_path_buf(), source })
}

/// Create `dir` (0700) if it does not exist; an existing directory is left as it is.
fn private_dir(dir: &Path) -> Result<(), ProxyError> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(create_err(dir))
}

fn new_key() -> Result<KeyPair, ProxyError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| crypto(format!("cannot generate a P-256 key: {e}")))
}

fn ca_dn() -> DistinguishedName {
    let host = hostname();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "swarmseal");
    dn.push(DnType::CommonName, format!("swarmseal CA {host}"));
    dn
}

fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// Create the CA (unless it exists and `!force`) and the server certificate
/// (when the CA is new, when it is missing, or when `extra_sans` are given).
/// Returns whether a new CA was created.
pub fn init(paths: &PkiPaths, extra_sans: &[String], force: bool) -> Result<bool, ProxyError> {
    private_dir(&paths.dir)?;
    let exists = paths.ca_cert.exists() && paths.ca_key.exists();
    let created = force || !exists;
    if created {
        let key = new_key()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = ca_dn();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(3650);
        let cert = p.self_signed(&key).map_err(|e| crypto(format!("cannot create the CA: {e}")))?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        write_private(&paths.ca_key, key_pem.as_bytes())?;
        write_private(&paths.ca_cert, cert.pem().as_bytes())?;
    }
    if created || !extra_sans.is_empty() || !paths.server_cert.exists() || !paths.server_key.exists() {
        issue_server(paths, extra_sans)?;
    }
    Ok(created)
}

/// Load the CA as an rcgen issuer (its subject is read back from `ca.pem`).
fn load_issuer(paths: &PkiPaths) -> Result<(Issuer<'static, KeyPair>, String), ProxyError> {
    let ca_pem = std::fs::read_to_string(&paths.ca_cert)
        .map_err(|source| ProxyError::Read { what: "the CA", path: paths.ca_cert.clone(), source, hint: " (run `swarmseal certs init`)" })?;
    let key_pem = Zeroizing::new(
        std::fs::read_to_string(&paths.ca_key).map_err(|source| ProxyError::Read { what: "the CA key", path: paths.ca_key.clone(), source, hint: "" })?,
    );
    let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&paths.ca_key, format!("invalid key: {e}")))?;
    let der = tls::pem_certs(ca_pem.as_bytes()).map_err(|e| invalid(&paths.ca_cert, e))?;
    let first = der.first().ok_or_else(|| invalid(&paths.ca_cert, "no certificate"))?;
    let subject = tls::subject_attrs(first).ok_or_else(|| invalid(&paths.ca_cert, "cannot parse the CA subject"))?;
    let mut dn = DistinguishedName::new();
    for (oid, value) in subject {
        let ty = match oid.as_slice() {
            tls::OID_CN => DnType::CommonName,
            tls::OID_O => DnType::OrganizationName,
            tls::OID_OU => DnType::OrganizationalUnitName,
            _ => return Err(invalid(&paths.ca_cert, "unsupported attribute in the CA subject")),
        };
        dn.push(ty, value);
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok((Issuer::new(p, key), ca_pem))
}

fn issue_server(paths: &PkiPaths, extra_sans: &[String]) -> Result<(), ProxyError> {
    let (issuer, ca_pem) = load_issuer(paths)?;
    let host = hostname();
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !host.is_empty() && host != "localhost" && host.parse::<std::net::IpAddr>().is_err() {
        names.push(host.clone());
    }
    for s in extra_sans {
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    let mut p = CertificateParams::new(names).map_err(|e| usage(format!("invalid --san: {e}")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "swarmseal");
    dn.push(DnType::CommonName, if host.is_empty() { "swarmseal".to_string() } else { host });
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3 * 365);
    let key = new_key()?;
    let cert = p.signed_by(&key, &issuer).map_err(|e| crypto(format!("cannot sign the server certificate: {e}")))?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_private(&paths.server_key, key_pem.as_bytes())?;
    write_private(&paths.server_cert, format!("{}{}", cert.pem(), ca_pem).as_bytes())?;
    Ok(())
}

/// Issue a client bundle (`ca.pem`, `cert.pem`, `key.pem`, all 0600) in `out`
/// for identity `name` (Subject CN) with `role` (Subject OU), valid over
/// `validity` (not before, not after).
pub fn issue(
    paths: &PkiPaths,
    name: &str,
    role: Role,
    validity: (time::OffsetDateTime, time::OffsetDateTime),
    out: &Path,
    force: bool,
) -> Result<(), ProxyError> {
    issue_with_ou(paths, name, Some(role.as_str()), validity, out, force)
}

/// Like [`issue`] with any Subject OU, or none (such a certificate passes the
/// handshake but gets 403 on every request; kept for tests and migrations).
pub fn issue_with_ou(
    paths: &PkiPaths,
    name: &str,
    ou: Option<&str>,
    validity: (time::OffsetDateTime, time::OffsetDateTime),
    out: &Path,
    force: bool,
) -> Result<(), ProxyError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(usage("the name must be 1 to 64 printable characters"));
    }
    if !force && out.join("key.pem").exists() {
        return Err(usage(format!("{} already holds a bundle (key.pem); use --force to replace it", out.display())));
    }
    let b = sign_client(paths, name, ou, validity)?;
    private_dir(out)?;
    write_private(&out.join("ca.pem"), b.ca_pem.as_bytes())?;
    write_private(&out.join("cert.pem"), b.cert_pem.as_bytes())?;
    write_private(&out.join("key.pem"), b.key_pem.as_bytes())?;
    Ok(())
}

/// A client bundle in memory (PEM): the CA, the certificate, its private key.
pub struct ClientBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// Sign a client certificate for Subject CN `name` (taken as given: [`issue_with_ou`]
/// checks it; tests use this to forge hostile names), Subject OU `ou`, valid over
/// `validity`, with the CA of `paths`.
pub fn sign_client(
    paths: &PkiPaths,
    name: &str,
    ou: Option<&str>,
    validity: (time::OffsetDateTime, time::OffsetDateTime),
) -> Result<ClientBundle, ProxyError> {
    let (issuer, ca_pem) = load_issuer(paths)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "swarmseal");
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = validity.0;
    p.not_after = validity.1;
    let key = new_key()?;
    let cert = p.signed_by(&key, &issuer).map_err(|e| crypto(format!("cannot sign the client certificate: {e}")))?;
    Ok(ClientBundle { ca_pem, cert_pem: cert.pem(), key_pem: Zeroizing::new(key.serialize_pem()) })
}
