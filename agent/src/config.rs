//! Configuration: one TOML file (`--config`, default `/etc/swarmseal/config.toml`
//! if it exists), every key optional, unknown keys rejected.
//!
//! ```toml
//! state_dir = "/var/lib/swarmseal"
//! runtime_dir = "/run/swarmseal"  # tmpfs: this boot's copy of the phase record
//! docker_host = "unix:///run/docker.sock"
//!
//! [tpm]
//! tcti = "device:/dev/tpmrm0"   # else --tcti, TPM2TOOLS_TCTI, TCTI
//! pcr_bank = "sha256"
//! pcrs = [7, 11, 15]
//! phase_pcr = 11
//! policy = "pcr"                # or "authorize": signed PCR policy (below)
//! signed_pcrs = [11]            # authorize: covered by a signature instead of by value
//! pcr_public_key = "/run/systemd/tpm2-pcr-public-key.pem"   # the UKI's .pcrpkey
//! pcr_signature = "/run/systemd/tpm2-pcr-signature.json"    # the UKI's .pcrsig
//!
//! [attest]                    # GET /swarmseal/v1/attest (docs/attestation.md)
//! firmware_log = "/sys/kernel/security/tpm0/binary_bios_measurements"
//! measure_log = "/run/log/systemd/tpm2-measure.log"
//!
//! [swarm]
//! init = true                   # `agent`: init a swarm when the engine has none
//! advertise_addr = "192.0.2.10"
//! listen_addr = "0.0.0.0:2377"
//!
//! [escrow]
//! recipient = "age1…"           # X25519 recipient; key escrowed under state_dir/escrow/
//!
//! [proxy]
//! enabled = true
//! listen = "0.0.0.0:2376"
//! client_ca = "/var/lib/swarmseal/pki/ca.pem"
//! server_cert = "/var/lib/swarmseal/pki/server-cert.pem"
//! server_key = "/var/lib/swarmseal/pki/server-key.pem"
//! htpasswd = "/etc/swarmseal/htpasswd"
//! header_timeout_secs = 10          # a request head must arrive within this
//! body_timeout_secs = 30            # a request body may pause at most this long before its answer
//! idle_timeout_secs = 120           # keep-alive connection with no request in flight
//! handshake_timeout_secs = 5        # TLS handshake (client certificate verified) within this
//! max_handshakes = 64               # TLS handshakes in progress, in all
//! max_handshakes_per_address = 8    # … from one source IP address
//! max_connections = 512             # connections with a verified certificate, in all
//! admin_reserved_connections = 64   # … of which only the admin role may use these
//! max_connections_per_role = 256    # … per role other than admin
//! max_connections_per_identity = 64 # … per certificate (SHA-256 fingerprint)
//! max_streams_per_identity = 32     # events, followed logs, attach, exec, stats per certificate
//!
//! [roles.deploy]                   # built in: admin, readonly, deploy, monitor (docs/proxy.md "Roles")
//! allow_bind_paths = ["/srv/data"]  # host paths bind mounts may use (default: none)
//! allow_sysctls = ["net.core.somaxconn"]
//! [roles.ci]                        # a new role: certificates with Subject OU `ci`
//! base = "deploy"
//!
//! [bench]
//! at_boot = true
//!
//! [console]
//! tty = "/dev/tty1"             # the status screen (crate::console); "" (the default): none
//!
//! [update]
//! public_key = "/etc/swarmseal/pcr-public-key.pem"  # verifies each release's SHA256SUMS.sig
//! staging_dir = "/var/lib/swarmseal/updates"         # default <state_dir>/updates
//! max_bytes = 2147483648                             # largest release tar accepted (413 beyond)
//! socket = "/run/swarmseal-update.sock"              # the privileged apply service
//! sysupdate = "systemd-sysupdate"
//! stage_definitions = "/usr/lib/swarmseal/sysupdate-stage.d"  # ?stage=1: root + verity only
//! systemctl = "systemctl"
//! os_release = "/etc/os-release"                     # IMAGE_ID, IMAGE_VERSION for status
//! sbom = "/usr/share/swarmseal/sbom.cdx.json"        # the image's SBOM: status digest, update verify
//! source = "https://releases.example.org/swarmseal/"  # POST …/update?version=V fetches swarmseal_V.tar here
//! source_ca = "/etc/swarmseal/update-source-ca.pem"  # roots for source (default: system roots)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[proxy]` lives with the proxy (`swarmseal-proxy`), which reads it through [`ProxySettings`].
pub use swarmseal_proxy::config::{ProxyConfig, ProxySettings};

/// Default configuration file, read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/swarmseal/config.toml";
/// Default state directory (sealed slots, PKI, bench reports, escrow).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/swarmseal";
/// Default engine socket.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///run/docker.sock";

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the configuration file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for sealed slots, PKI, bench reports and escrow files.
    pub state_dir: PathBuf,
    /// Per-boot files (tmpfs): a copy of the phase-lock record, so a full state dir cannot lose it.
    pub runtime_dir: PathBuf,
    /// Engine API address; only `unix://` is supported (the engine never listens on TCP).
    pub docker_host: String,
    pub tpm: TpmConfig,
    pub swarm: SwarmConfig,
    pub escrow: EscrowConfig,
    pub proxy: ProxyConfig,
    pub bench: BenchConfig,
    pub console: ConsoleConfig,
    pub update: UpdateConfig,
    /// `[attest]`: the event logs `GET /swarmseal/v1/attest` returns.
    pub attest: AttestConfig,
    /// `[roles.NAME]`: the proxy's roles (`swarmseal_proxy::policy`, docs/proxy.md "Roles").
    pub roles: swarmseal_proxy::policy::RolesConfig,
}

/// `[attest]`: where `GET /swarmseal/v1/attest` reads the event logs it returns (docs/attestation.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestConfig {
    /// The firmware's TCG event log (crypto-agile binary), as the kernel exposes it.
    pub firmware_log: PathBuf,
    /// systemd's measurement log (JSON-SEQ, TCG Canonical Event Log records).
    pub measure_log: PathBuf,
}

impl Default for AttestConfig {
    fn default() -> Self {
        AttestConfig { firmware_log: "/sys/kernel/security/tpm0/binary_bios_measurements".into(), measure_log: "/run/log/systemd/tpm2-measure.log".into() }
    }
}

/// `[tpm]`: which TPM and which measurements the unlock key is bound to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TpmConfig {
    /// TCTI string (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`).
    /// Overridden by `--tcti`; when unset, `TPM2TOOLS_TCTI`, then `TCTI`, then
    /// `device:/dev/tpmrm0`.
    pub tcti: Option<String>,
    /// PCR bank; only `sha256` is supported.
    pub pcr_bank: String,
    /// PCR indices for PolicyPCR (TPM 2.0 Part 3, TPM2_PolicyPCR).
    /// Default 7, 11, 15 — see docs/sealing.md, "The policy: which PCRs".
    pub pcrs: Vec<u8>,
    /// The PCR extended after unlocking ("phase lock"); must be in `pcrs`.
    pub phase_pcr: u8,
    /// The policy new seals use; existing slots keep the one they were sealed with.
    pub policy: PolicyKind,
    /// `policy = "authorize"`: PCRs covered by a signature (systemd-measure signs PCR 11)
    /// rather than by their value; the rest of `pcrs` stays literal. Default `[11]`.
    pub signed_pcrs: Vec<u8>,
    /// `policy = "authorize"`: PEM public key that signs PCR policies (the UKI's `.pcrpkey`,
    /// which systemd-stub copies to this default path).
    pub pcr_public_key: PathBuf,
    /// `policy = "authorize"`: systemd's PCR signature JSON (the UKI's `.pcrsig`, which
    /// systemd-stub copies to this default path).
    pub pcr_signature: PathBuf,
}

/// `[tpm] policy`: how new seals bind the key to the boot measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// TPM2_PolicyPCR over the literal values of `pcrs`: any image change needs a reseal.
    Pcr,
    /// TPM2_PolicyAuthorize with `pcr_public_key` over signed `signed_pcrs`, plus
    /// TPM2_PolicyPCR over the other `pcrs`: a new image signed with that key unseals as is.
    Authorize,
}

/// Default PCR public key path (systemd-stub writes the UKI's `.pcrpkey` there).
pub const DEFAULT_PCR_PUBLIC_KEY: &str = "/run/systemd/tpm2-pcr-public-key.pem";
/// Default PCR signature path (systemd-stub writes the UKI's `.pcrsig` there).
pub const DEFAULT_PCR_SIGNATURE: &str = "/run/systemd/tpm2-pcr-signature.json";

impl TpmConfig {
    /// Every PCR the policy of a new seal covers, ascending: `pcrs`, plus `signed_pcrs` when
    /// `policy = "authorize"`. The phase record and `status` read these.
    pub fn policy_pcrs(&self) -> Vec<u8> {
        let mut all = self.pcrs.clone();
        if self.policy == PolicyKind::Authorize {
            all.extend(&self.signed_pcrs);
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The signed PCRs of a new seal, ascending (none for `policy = "pcr"`).
    pub fn signed(&self) -> Vec<u8> {
        if self.policy != PolicyKind::Authorize {
            return Vec::new();
        }
        let mut s = self.signed_pcrs.clone();
        s.sort_unstable();
        s.dedup();
        s
    }
}

/// `[swarm]`: what `agent` and `init` do with an engine that has no swarm.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// `agent`: initialize a swarm with autolock when the engine has none.
    pub init: bool,
    /// `AdvertiseAddr` of `POST /swarm/init`.
    pub advertise_addr: Option<String>,
    /// `ListenAddr` of `POST /swarm/init` (default `0.0.0.0:2377`).
    pub listen_addr: Option<String>,
}

/// `[escrow]`: where the operator's copy of the key goes on headless managers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscrowConfig {
    /// An age X25519 recipient (`age1…`).
    pub recipient: Option<String>,
}

/// `[bench]`: the CIS checks at boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchConfig {
    pub at_boot: bool,
}

/// `[console]`: the status screen on the local console ([`crate::console`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// The terminal device the agent draws the screen on (`/dev/tty1` in the image; the
    /// credential `swarmseal.console-tty` may name another); `""` (the default): no screen.
    pub tty: String,
}

/// `[update]`: image updates received through the proxy (`POST /swarmseal/v1/update`) and
/// installed by `swarmseal update apply` (see [`crate::update`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// PEM public key (SubjectPublicKeyInfo, RSA 2048–4096 or ECC P-256) that must have signed a
    /// release's `SHA256SUMS` (`SHA256SUMS.sig`). The image pins the fleet's PCR-signing key here.
    pub public_key: PathBuf,
    /// Where releases are received (`V.partial/`) and staged (`staged/`); default `<state_dir>/updates`.
    pub staging_dir: Option<PathBuf>,
    /// Largest release tar accepted, in bytes (default 2 GiB); larger uploads get 413.
    pub max_bytes: u64,
    /// The root-only socket of `swarmseal-update.socket` (runs `swarmseal update apply`).
    pub socket: PathBuf,
    /// The systemd-sysupdate binary `update apply` runs (`sysupdate update V`).
    pub sysupdate: String,
    /// The sysupdate definitions that write only a release's root and root-verity partitions
    /// (no UKI, so no boot entry): what `POST /swarmseal/v1/update?stage=1` installs, so that
    /// `fleet update` can write the next manager's slot while the previous one reboots
    /// (`sysupdate --definitions=DIR update V`). Default `/usr/lib/swarmseal/sysupdate-stage.d`.
    pub stage_definitions: PathBuf,
    /// The systemctl binary `update apply --reboot` runs (`systemctl reboot`).
    pub systemctl: String,
    /// os-release file whose `IMAGE_ID` and `IMAGE_VERSION` `status` reports.
    pub os_release: PathBuf,
    /// The running image's SBOM (CycloneDX 1.5 JSON, docs/sbom.md): its SHA-256 in `status`,
    /// and what `update verify` compares a release with.
    pub sbom: PathBuf,
    /// Base URL of the releases, `https://HOST[:PORT]/PATH/` (https only): with it,
    /// `POST /swarmseal/v1/update?version=V` and an empty body fetches
    /// `<source>swarmseal_V.tar` (see [`crate::update::source`]). Unset: uploads only.
    pub source: Option<String>,
    /// PEM CA certificates the source's server certificate must chain to; default the system
    /// roots (`/etc/ssl/certs/ca-certificates.crt`, package ca-certificates).
    pub source_ca: Option<PathBuf>,
}

/// Default release-signing public key (the image's copy of the fleet's PCR-signing key).
pub const DEFAULT_UPDATE_PUBLIC_KEY: &str = "/etc/swarmseal/pcr-public-key.pem";
/// Default largest release: 2 GiB.
pub const DEFAULT_UPDATE_MAX_BYTES: u64 = 2 << 30;

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            public_key: DEFAULT_UPDATE_PUBLIC_KEY.into(),
            staging_dir: None,
            max_bytes: DEFAULT_UPDATE_MAX_BYTES,
            socket: "/run/swarmseal-update.sock".into(),
            sysupdate: "systemd-sysupdate".into(),
            stage_definitions: "/usr/lib/swarmseal/sysupdate-stage.d".into(),
            systemctl: "systemctl".into(),
            os_release: "/etc/os-release".into(),
            sbom: format!("/{}", swarmseal_release::sbom::IMAGE_PATH).into(),
            source: None,
            source_ca: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: DEFAULT_STATE_DIR.into(),
            runtime_dir: "/run/swarmseal".into(),
            docker_host: DEFAULT_DOCKER_HOST.into(),
            tpm: TpmConfig::default(),
            swarm: SwarmConfig::default(),
            escrow: EscrowConfig::default(),
            proxy: ProxyConfig::default(),
            bench: BenchConfig::default(),
            console: ConsoleConfig::default(),
            update: UpdateConfig::default(),
            attest: AttestConfig::default(),
            roles: Default::default(),
        }
    }
}

impl Default for TpmConfig {
    fn default() -> Self {
        TpmConfig {
            tcti: None,
            pcr_bank: "sha256".into(),
            pcrs: vec![7, 11, 15],
            phase_pcr: 11,
            policy: PolicyKind::Pcr,
            signed_pcrs: vec![11],
            pcr_public_key: DEFAULT_PCR_PUBLIC_KEY.into(),
            pcr_signature: DEFAULT_PCR_SIGNATURE.into(),
        }
    }
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig { init: true, advertise_addr: None, listen_addr: None }
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig { at_boot: true }
    }
}

impl Config {
    /// Read `path`, or [`DEFAULT_CONFIG`] when `path` is `None` and that file
    /// exists, else the defaults. Errors name the file and the bad key.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tpm.pcr_bank != "sha256" {
            return Err(ConfigError::Invalid { key: "tpm.pcr_bank", message: format!("`{}` is not supported; use \"sha256\"", self.tpm.pcr_bank) });
        }
        if self.tpm.pcrs.is_empty() || self.tpm.pcrs.iter().any(|&p| p > 15) {
            // 16 (debug) and 23 (application) can be reset by anyone with TPM access at
            // locality 0, 17–22 by dynamic-root events: none holds a boot measurement,
            // and a resettable phase PCR would undo the phase lock.
            return Err(ConfigError::Invalid { key: "tpm.pcrs", message: "give one or more PCR indices from 0 to 15 (PCRs 16–23 are resettable or dynamic-root PCRs and cannot hold a boot measurement)".into() });
        }
        if self.tpm.policy == PolicyKind::Authorize && (self.tpm.signed_pcrs.is_empty() || self.tpm.signed_pcrs.iter().any(|&p| p > 15)) {
            return Err(ConfigError::Invalid { key: "tpm.signed_pcrs", message: "give one or more PCR indices from 0 to 15 for the signed policy (systemd-measure signs PCR 11)".into() });
        }
        if !self.tpm.policy_pcrs().contains(&self.tpm.phase_pcr) {
            return Err(ConfigError::Invalid { key: "tpm.phase_pcr", message: format!("PCR {} is not in tpm.pcrs; the phase lock only works on a PCR the policy covers", self.tpm.phase_pcr) });
        }
        if !self.docker_host.strip_prefix("unix://").is_some_and(|p| p.starts_with('/')) {
            return Err(ConfigError::Invalid { key: "docker_host", message: format!("`{}`: only unix:///PATH is supported (the engine API never listens on TCP)", self.docker_host) });
        }
        if let Some(r) = &self.escrow.recipient {
            if !r.starts_with("age1") {
                return Err(ConfigError::Invalid { key: "escrow.recipient", message: "expected an age X25519 recipient (`age1…`, from `age-keygen`)".into() });
            }
        }
        if self.update.max_bytes == 0 {
            return Err(ConfigError::Invalid { key: "update.max_bytes", message: "must be more than 0 (the largest release tar accepted, in bytes)".into() });
        }
        if let Some(s) = &self.update.source {
            swarmseal_release::SourceUrl::parse(s).map_err(|message| ConfigError::Invalid { key: "update.source", message })?;
        }
        swarmseal_proxy::policy::Roles::from_config(&self.roles).map_err(|e| ConfigError::Invalid { key: "roles", message: e.to_string() })?;
        Ok(())
    }

    /// Path of the engine's unix socket.
    pub fn docker_socket(&self) -> PathBuf {
        PathBuf::from(self.docker_host.trim_start_matches("unix://"))
    }

    /// Where releases are received and staged: `[update] staging_dir`, else `<state_dir>/updates`.
    pub fn update_dir(&self) -> PathBuf {
        self.update.staging_dir.clone().unwrap_or_else(|| self.state_dir.join("updates"))
    }

    /// The PKI directory under the state dir.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
}

impl ProxySettings for Config {
    fn proxy(&self) -> &ProxyConfig {
        &self.proxy
    }
    fn docker_socket(&self) -> PathBuf {
        Config::docker_socket(self)
    }
    fn pki_dir(&self) -> PathBuf {
        Config::pki_dir(self)
    }
    fn roles(&self) -> swarmseal_proxy::policy::RolesConfig {
        self.roles.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[tpm]\npcrz = [7]\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("pcrz"), "{e}");
    }

    /// The documented example (this module's doc) parses, and its `[proxy]` capacity numbers
    /// are the defaults: the documentation cannot drift from the code.
    #[test]
    fn documented_example_parses_and_shows_the_proxy_defaults() {
        let src = include_str!("config.rs");
        let doc: String = src.lines().filter_map(|l| l.strip_prefix("//!")).map(|l| l.strip_prefix(' ').unwrap_or(l)).collect::<Vec<_>>().join("\n");
        let example = doc.split("```toml").nth(1).and_then(|s| s.split("```").next()).expect("a toml example");
        let c: Config = toml::from_str(example).expect("the documented example parses");
        let (p, d) = (c.proxy, ProxyConfig::default());
        let caps = |p: &ProxyConfig| {
            (
                [p.max_connections, p.admin_reserved_connections, p.max_connections_per_role, p.max_connections_per_identity],
                [p.max_streams_per_identity, p.max_handshakes, p.max_handshakes_per_address],
                [p.handshake_timeout_secs, p.header_timeout_secs, p.body_timeout_secs, p.idle_timeout_secs],
            )
        };
        assert_eq!(caps(&p), caps(&d));
        assert!(d.max_connections_per_identity < d.max_connections_per_role, "one identity cannot fill its role");
        assert!(d.max_connections_per_role <= d.max_connections - d.admin_reserved_connections, "one role cannot fill the shared part");
    }

    #[test]
    fn phase_pcr_must_be_in_policy_and_not_resettable() {
        let mut c = Config::default();
        c.tpm.phase_pcr = 14;
        assert!(c.validate().is_err());
        c.tpm.pcrs = vec![7, 15, 23];
        c.tpm.phase_pcr = 23;
        assert!(c.validate().unwrap_err().to_string().contains("resettable"));
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn authorize_policy_settings_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[tpm]\npolicy = \"authorize\"\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.tpm.policy, PolicyKind::Authorize);
        assert_eq!(c.tpm.signed(), vec![11]);
        assert_eq!(c.tpm.policy_pcrs(), vec![7, 11, 15]);
        assert_eq!(c.tpm.pcr_public_key, PathBuf::from(DEFAULT_PCR_PUBLIC_KEY));
        assert_eq!(c.tpm.pcr_signature, PathBuf::from(DEFAULT_PCR_SIGNATURE));
        assert_eq!(Config::default().tpm.signed(), Vec::<u8>::new(), "policy = pcr signs nothing");

        std::fs::write(&p, "[tpm]\npolicy = \"signed\"\n").unwrap();
        assert!(Config::load(Some(&p)).unwrap_err().to_string().contains("signed"));
        let mut c = Config::default();
        c.tpm.policy = PolicyKind::Authorize;
        c.tpm.signed_pcrs = vec![23];
        assert!(c.validate().unwrap_err().to_string().contains("tpm.signed_pcrs"));
        // The phase PCR may be a signed one that is not listed in pcrs.
        c.tpm.signed_pcrs = vec![11];
        c.tpm.pcrs = vec![7, 15];
        assert!(c.validate().is_ok());
        assert_eq!(c.tpm.policy_pcrs(), vec![7, 11, 15]);
    }

    #[test]
    fn update_defaults_follow_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "state_dir = \"/srv/ss\"\n[update]\nmax_bytes = 1024\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.update_dir(), PathBuf::from("/srv/ss/updates"));
        assert_eq!(c.update.max_bytes, 1024);
        assert_eq!(c.update.public_key, PathBuf::from(DEFAULT_UPDATE_PUBLIC_KEY));
        assert_eq!(Config::default().update.max_bytes, 2 * 1024 * 1024 * 1024);
        std::fs::write(&p, "[update]\nmax_bytes = 0\n").unwrap();
        assert!(Config::load(Some(&p)).unwrap_err().to_string().contains("update.max_bytes"));
    }

    #[test]
    fn update_source_is_https_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        assert_eq!(Config::default().update.source, None, "uploads only unless a source is set");
        std::fs::write(&p, "[update]\nsource = \"https://releases.example.org/swarmseal/\"\nsource_ca = \"/etc/swarmseal/update-source-ca.pem\"\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.update.source.as_deref(), Some("https://releases.example.org/swarmseal/"));
        assert_eq!(c.update.source_ca, Some(PathBuf::from("/etc/swarmseal/update-source-ca.pem")));
        std::fs::write(&p, "[update]\nsource = \"http://releases.example.org/swarmseal/\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("update.source") && e.contains("plain http:// is not accepted"), "{e}");
        std::fs::write(&p, "[update]\nsource = \"https://releases.example.org/?k=v\"\n").unwrap();
        assert!(Config::load(Some(&p)).unwrap_err().to_string().contains("update.source"));
    }
}
