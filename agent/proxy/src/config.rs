//! `[proxy]`: the listener's section of swarmseal's configuration file (the whole file is the
//! agent's `config` module; its keys and errors are documented there and in `docs/proxy.md`),
//! and [`ProxySettings`]: what the proxy reads of the rest of it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// What the proxy needs of the whole configuration: its section, the engine socket and the
/// PKI directory. Implemented by the agent's `Config`.
pub trait ProxySettings {
    /// The `[proxy]` section.
    fn proxy(&self) -> &ProxyConfig;
    /// The engine's unix socket (`docker_host` without `unix://`).
    fn docker_socket(&self) -> PathBuf;
    /// `<state_dir>/pki`: the default place of the CA, server certificate and key.
    fn pki_dir(&self) -> PathBuf;
    /// The `[roles.NAME]` tables (none: the built-in roles as they are).
    fn roles(&self) -> crate::policy::RolesConfig {
        crate::policy::RolesConfig::new()
    }
}

/// `[proxy]`: the mutual-TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// `agent` starts the proxy.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// CA that signs client certificates; default `<state_dir>/pki/ca.pem`.
    pub client_ca: Option<PathBuf>,
    /// Server certificate chain (PEM); default `<state_dir>/pki/server-cert.pem`.
    pub server_cert: Option<PathBuf>,
    /// Server private key (PEM); default `<state_dir>/pki/server-key.pem`.
    pub server_key: Option<PathBuf>,
    /// Optional htpasswd file (bcrypt) for HTTP basic auth on top of the certificate.
    pub htpasswd: Option<PathBuf>,
    /// Connections with a verified client certificate, in all (see [`crate::slots`]).
    pub max_connections: usize,
    /// Of `max_connections`, how many only the `admin` role may use.
    pub admin_reserved_connections: usize,
    /// Connections of one role other than `admin` (readonly, or no known role).
    pub max_connections_per_role: usize,
    /// Connections of one certificate (identity = SHA-256 fingerprint of the certificate).
    pub max_connections_per_identity: usize,
    /// Long streams (events, followed logs, attach, exec, stats, upgrades) of one certificate.
    pub max_streams_per_identity: usize,
    /// TLS handshakes in progress, in all; further TCP connections are closed at once.
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one source IP address.
    pub max_handshakes_per_address: usize,
    /// Seconds a TLS handshake (with the client certificate) may take.
    pub handshake_timeout_secs: u64,
    /// Seconds a client may take to send a request head.
    pub header_timeout_secs: u64,
    /// Seconds a request body may pause (no byte from the client) while its answer has not
    /// started; then the connection is closed.
    pub body_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept.
    pub idle_timeout_secs: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: true,
            listen: "0.0.0.0:2376".parse().expect("static address"),
            client_ca: None,
            server_cert: None,
            server_key: None,
            htpasswd: None,
            max_connections: 512,
            admin_reserved_connections: 64,
            max_connections_per_role: 256,
            max_connections_per_identity: 64,
            max_streams_per_identity: 32,
            max_handshakes: 64,
            max_handshakes_per_address: 8,
            handshake_timeout_secs: 5,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 120,
        }
    }
}
