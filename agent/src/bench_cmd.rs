//! `swarmseal bench`: the command-line glue around [`swarmseal_cis`] (the CIS Docker
//! Benchmark v1.8.0 or v1.6.0 checks; see `docs/cis.md`): flags, the appliance facts
//! the agent knows, where the report goes, and `--fail-on warn`. Exit codes are
//! chosen in [`crate::cli`].

use std::io::Write;
use std::path::PathBuf;

use swarmseal_cis::{Benchmark, BenchError, HostOptions, Selection};

use crate::cli::{Error, Exit};
use crate::config::Config;

/// `swarmseal bench`: run the CIS Docker Benchmark checks and the appliance checks.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// CIS Docker Benchmark version whose IDs and titles the checks follow.
    #[arg(long, value_enum, default_value_t = BenchmarkArg::Cis180)]
    pub benchmark: BenchmarkArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Run only these checks: IDs or sections, comma separated (`5`, `2.2`, `1.1`, `A`).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub check: Vec<String>,
    /// Skip these checks: IDs or sections, comma separated.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Exit with code 10 when a check reports WARN.
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub fail_on: Option<FailOn>,
    /// Root of the host file system for configuration files, audit rules,
    /// the mount table, /sys and EFI variables (tests point it at a fixture tree).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// `--format`: one value per output format of [`swarmseal_cis::output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable text with a header line (benchmark, engine, host, time).
    Text,
    /// docker-bench-security's log JSON layout.
    Json,
    /// SARIF 2.1.0 (code scanning).
    Sarif,
    /// JUnit XML (CI test reports).
    Junit,
}

/// `--benchmark`: the versions of [`swarmseal_cis::Benchmark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchmarkArg {
    /// CIS Docker Benchmark v1.8.0 (118 checks).
    #[value(name = "cis-1.8.0")]
    Cis180,
    /// CIS Docker Benchmark v1.6.0 (117 checks; docker-bench-security's IDs).
    #[value(name = "cis-1.6.0")]
    Cis160,
}

impl From<BenchmarkArg> for Benchmark {
    fn from(b: BenchmarkArg) -> Benchmark {
        match b {
            BenchmarkArg::Cis180 => Benchmark::Cis180,
            BenchmarkArg::Cis160 => Benchmark::Cis160,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Warn,
}

/// `swarmseal bench`: errors are [`BenchError`]s (engine down, report not written,
/// unknown check ID); a finished run with WARN under `--fail-on warn` is [`Exit::BenchWarn`].
pub async fn run(cfg: &Config, a: BenchArgs) -> Result<(), Error> {
    let sel = Selection { benchmark: a.benchmark.into(), only: a.check.clone(), exclude: a.exclude.clone() };
    if let Some(u) = sel.unknown().first() {
        return Err(BenchError::UnknownCheck(u.clone()).into());
    }
    if sel.is_empty() {
        return Err(BenchError::EmptySelection.into());
    }
    // The appliance checks (A.x) read the sealed slots and the TPM; the workstation build
    // (no feature `appliance`) has neither, and its A.x checks say so. A.4 (the proxy's
    // listener) is probed in both.
    #[cfg(feature = "appliance")]
    let facts = crate::boot::appliance_facts(cfg).await;
    #[cfg(not(feature = "appliance"))]
    let facts = crate::bench::ApplianceFacts { proxy: probe_proxy(cfg).await, ..Default::default() };
    let report = swarmseal_cis::run_report_with(facts, &sel, &HostOptions::new(&a.root, cfg.docker_socket())).await?;
    let text = match a.format {
        Format::Json => report.to_json_text(),
        Format::Sarif => report.to_sarif_text(),
        Format::Junit => report.to_junit_text(),
        Format::Text => {
            use std::io::IsTerminal;
            let colour = a.output.is_none() && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            report.to_text(colour)
        }
    };
    match &a.output {
        Some(p) => swarmseal_cis::write_report(p, text.as_bytes())?,
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
    if a.fail_on == Some(FailOn::Warn) && report.has_warn() {
        return Err(Error::Status(Exit::BenchWarn));
    }
    Ok(())
}

/// How long each step of the A.4 probe (TCP connect, TLS handshake, the answer) may take.
const PROBE_STEP: std::time::Duration = std::time::Duration::from_secs(5);

/// A.4's evidence: the proxy's listener (`[proxy] listen`, a wildcard probed on loopback)
/// tried without a client certificate, then with a short-lived one (5 minutes, no
/// role: every request gets 403) that the appliance's own CA signs in memory for
/// this probe; its key is never written. The server must present the configured
/// server certificate and prove its key. `None` when the proxy is disabled.
pub async fn probe_proxy(cfg: &Config) -> Option<swarmseal_cis::ProxyProbe> {
    use swarmseal_cis::Handshake;
    if !cfg.proxy.enabled {
        return None;
    }
    let addr = crate::health::probe_addr(cfg.proxy.listen);
    let paths = crate::proxy::pki::PkiPaths::of(cfg);
    let not_probed = |why: String| Some(swarmseal_cis::ProxyProbe { addr: addr.to_string(), without_cert: Handshake::NotProbed(why.clone()), with_cert: Handshake::NotProbed(why) });
    let pinned = match std::fs::read(&paths.server_cert).map_err(|e| e.to_string()).and_then(|pem| crate::proxy::tls::pem_certs(&pem)) {
        Ok(c) if !c.is_empty() => c.into_iter().next().expect("one certificate"),
        Ok(_) => return not_probed(format!("no certificate in the server certificate file {}", paths.server_cert.display())),
        Err(e) => return not_probed(format!("the server certificate {} cannot be read ({e}), so the server cannot be told from another", paths.server_cert.display())),
    };
    let verifier = crate::health::pinned_verifier(pinned);
    let without_cert = tls_request(addr, verifier.clone(), None).await;
    let with_cert = match own_client_identity(&paths) {
        Ok(id) => tls_request(addr, verifier, Some(id)).await,
        Err(why) => Handshake::NotProbed(why),
    };
    Some(swarmseal_cis::ProxyProbe { addr: addr.to_string(), without_cert, with_cert })
}

/// A client certificate (CN `swarmseal-bench-probe`, no OU) from the appliance CA, in memory.
fn own_client_identity(paths: &crate::proxy::pki::PkiPaths) -> Result<swarmseal_common::tls::Identity, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let now = time::OffsetDateTime::now_utc();
    let b = crate::proxy::pki::sign_client(paths, "swarmseal-bench-probe", None, (now - time::Duration::minutes(1), now + time::Duration::minutes(5)))
        .map_err(|e| format!("no client certificate could be signed with the appliance CA: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(b.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("the probe certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(b.key_pem.as_bytes()).map_err(|e| format!("the probe key: {e}"))?;
    Ok(swarmseal_common::tls::Identity { chain, key })
}

/// One TLS 1.3 connection to `addr` and one `GET /_ping`: accepted (the status line),
/// refused (alert or close), or not probed (no listener, no handshake).
async fn tls_request(addr: std::net::SocketAddr, verifier: std::sync::Arc<dyn rustls::client::danger::ServerCertVerifier>, identity: Option<swarmseal_common::tls::Identity>) -> swarmseal_cis::Handshake {
    use swarmseal_cis::Handshake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;
    let cfg = match swarmseal_common::tls::client_config(swarmseal_common::tls::Versions::Tls13, swarmseal_common::tls::Verify::Custom(verifier), identity) {
        Ok(c) => c,
        Err(e) => return Handshake::NotProbed(e.to_string()),
    };
    let tcp = match timeout(PROBE_STEP, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Handshake::NotProbed(format!("nothing answers on {addr}: {e}")),
        Err(_) => return Handshake::NotProbed(format!("no TCP connection to {addr} within {} s", PROBE_STEP.as_secs())),
    };
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = match timeout(PROBE_STEP, tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp)).await {
        Ok(Ok(t)) => t,
        // Our verifier refused the server (another certificate), or no TLS at all.
        Ok(Err(e)) => return Handshake::NotProbed(format!("TLS handshake with {addr}: {e}")),
        Err(_) => return Handshake::NotProbed(format!("no TLS handshake with {addr} within {} s", PROBE_STEP.as_secs())),
    };
    // TLS 1.3: the server judges the client's certificate after the client's Finished;
    // its verdict arrives with the first read.
    let mut buf = [0u8; 64];
    let r = async {
        tls.write_all(b"GET /_ping HTTP/1.1\r\nHost: swarmseal\r\nConnection: close\r\n\r\n").await?;
        tls.read(&mut buf).await
    };
    match timeout(PROBE_STEP, r).await {
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.") => Handshake::Accepted(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()),
        Ok(Ok(0)) => Handshake::Refused("the connection was closed after the handshake".into()),
        Ok(Ok(_)) => Handshake::Accepted("the server answered, not with HTTP".into()),
        Ok(Err(e)) => Handshake::Refused(e.to_string()),
        Err(_) => Handshake::NotProbed(format!("no answer from {addr} within {} s", PROBE_STEP.as_secs())),
    }
}
