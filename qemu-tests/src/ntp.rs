//! An NTS server on this host for the time scenario: `chronyd -x` (it NEVER steers this host's
//! clock) serving NTS-KE on one free port and NTP on another, with a certificate for
//! 10.0.2.2 (the host as QEMU's user network shows it to a guest) signed by a test CA made
//! here with `openssl`. Stopped (by its pid) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ensure, free_port, run, Check};

/// The address a guest reaches this host at (QEMU user network).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

pub struct NtsServer {
    dir: PathBuf,
    /// The NTS-KE port (TCP); the NTP port is told to the client by NTS-KE.
    pub ke_port: u16,
    pub ntp_port: u16,
}

/// A self-signed CA (P-256): `DIR/NAME.pem` and `DIR/NAME.key`.
pub fn make_ca(dir: &Path, name: &str) -> Check<PathBuf> {
    let (key, pem) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pem")));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN=swarmseal test {name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&pem))?;
    Ok(pem)
}

impl NtsServer {
    /// Start the server in `dir` with a certificate the CA `dir/ca.{pem,key}` (made here) signs.
    pub fn start(dir: &Path) -> Check<NtsServer> {
        std::fs::create_dir_all(dir.join("dump")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ca = make_ca(dir, "ca")?;
        let (key, csr, cert) = (dir.join("server.key"), dir.join("server.csr"), dir.join("server.pem"));
        run(Command::new("openssl")
            .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=swarmseal test NTS server", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        let ext = dir.join("server.ext");
        std::fs::write(&ext, format!("subjectAltName=IP:{HOST_FROM_GUEST}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")).map_err(|e| e.to_string())?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "30", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert))?;
        let (ke_port, ntp_port) = (free_port()?, free_port()?);
        let conf = dir.join("chrony.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "# The time scenario's NTS server: serves this host's clock, never sets it (chronyd -x).\n\
                 port {ntp_port}\nntsport {ke_port}\nntsserverkey {d}/server.key\nntsservercert {d}/server.pem\n\
                 ntsdumpdir {d}/dump\nallow all\nlocal stratum 3\ncmdport 0\nbindcmdaddress {d}/chronyd.sock\n\
                 pidfile {d}/chronyd.pid\ndriftfile {d}/drift\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        // -x: never touch the host clock. -u root: the host has no _chrony user (install-deps takes
        // only the binaries out of Debian's package).
        run(Command::new("chronyd").arg("-x").arg("-u").arg("root").arg("-f").arg(&conf).arg("-l").arg(dir.join("chronyd.log")))?;
        let srv = NtsServer { dir: dir.to_path_buf(), ke_port, ntp_port };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", ke_port)).is_err() {
            ensure!(t.elapsed() < Duration::from_secs(10), "the NTS server does not listen on 127.0.0.1:{ke_port} after 10 s; its log:\n{}", srv.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(srv)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The guest's `swarmseal.ntp-servers` credential for this server.
    pub fn credential(&self) -> String {
        format!("nts {HOST_FROM_GUEST}:{}\n", self.ke_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chronyd.log")).unwrap_or_default()
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("chronyd.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for NtsServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}
