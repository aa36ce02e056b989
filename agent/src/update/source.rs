//! The HTTPS update source: `POST /swarmseal/v1/update?version=V[&reboot=1]` with an empty
//! body makes the agent `GET <[update] source>swarmseal_V.tar` and stream the answer into the
//! same [`super::receive`] an upload goes through, so signature, size cap, staging, apply and
//! reboot behave exactly as for an upload. Only the transport is new here:
//!
//! - `[update] source` is a base URL `https://HOST[:PORT][/PATH/]` (parsed by
//!   [`SourceUrl::parse`]; plain `http://` is refused when the configuration is loaded).
//! - The server certificate must chain to `[update] source_ca` (PEM roots) or, without it,
//!   the system roots [`SYSTEM_ROOTS`], and name the URL's host (rustls/webpki, TLS 1.2 or
//!   1.3, ring). No client certificate, no proxy, no redirects: the release is `200` at that
//!   URL or the request fails with 502 naming what the source answered.
//! - The release must be the version asked for: a source serving another signed release
//!   under `swarmseal_V.tar` is refused (422) before anything is written.
//!
//! Trust stays with the release signature; HTTPS keeps a network attacker from choosing what
//! the manager is served (withholding a release, or a stale body under a new name).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::{BodyReader, Staged, UpdateError};
use crate::pcrsig::PcrPublicKey;

/// The roots used when `[update] source_ca` is not set (Debian's `ca-certificates`).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Connecting, the TLS handshake and the response head must complete within this; the body
/// then only has to keep moving ([`super::UPLOAD_IDLE`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `[update] source`: `https://HOST[:PORT][/PATH/]`. `Display` gives it back in
/// normal form (lowercase host, no default port, path ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// DNS name (lowercase), IPv4 address, or IPv6 address (without brackets).
    host: String,
    port: u16,
    /// Starts and ends with `/`; only RFC 3986 path characters (percent-escapes kept as is).
    path: String,
}

impl std::fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path)
    }
}

/// Characters of an RFC 3986 path segment besides `%XX` (unreserved, sub-delims, `:` `@`).
fn path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

impl SourceUrl {
    /// Parse a base URL. Errors (one sentence, for `invalid setting update.source: …`): not
    /// `https://`, user info, query or fragment, a bad host, port or path character.
    pub fn parse(s: &str) -> Result<SourceUrl, String> {
        let form = "expected https://HOST[:PORT]/PATH/ (the directory holding swarmseal_V.tar)";
        let (scheme, rest) = s.split_once("://").ok_or_else(|| format!("`{}` is not a URL: {form}", s.escape_debug()))?;
        if scheme.eq_ignore_ascii_case("http") {
            return Err("plain http:// is not accepted: give an https:// URL (the server's certificate is checked against [update] source_ca or the system roots)".into());
        }
        if !scheme.eq_ignore_ascii_case("https") {
            return Err(format!("scheme `{}` is not supported: {form}", scheme.escape_debug()));
        }
        if rest.contains(['?', '#']) {
            return Err(format!("a base URL has no query or fragment: {form}"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("user info (`user:password@`) is not supported in the source URL".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| format!("unclosed `[` in the host: {form}"))?;
            let ip: Ipv6Addr = addr.parse().map_err(|_| format!("`{}` is not an IPv6 address", addr.escape_debug()))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| format!("unexpected `{}` after the IPv6 address", p.escape_debug()))?),
            };
            (ip.to_string(), port)
        } else {
            if authority.matches(':').count() > 1 {
                return Err(format!("an IPv6 address goes in brackets (https://[2001:db8::1]:8443/…): {form}"));
            }
            let (h, p) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if h.is_empty() {
                return Err(format!("no host: {form}"));
            }
            let h = h.to_ascii_lowercase();
            if h.parse::<Ipv4Addr>().is_err() && !matches!(ServerName::try_from(h.as_str()), Ok(ServerName::DnsName(_))) {
                return Err(format!("`{}` is not a DNS name or an IP address (IPv6 goes in brackets)", h.escape_debug()));
            }
            (h, p)
        };
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("`{}` is not a port (1–65535)", p.escape_debug())),
            },
        };
        let b = path.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                    return Err("a `%` in the path must start a %XX escape".into());
                }
                i += 3;
                continue;
            }
            if !path_char(b[i]) {
                return Err(format!("the path holds `{}`, which a URL path cannot hold unescaped", (b[i] as char).escape_debug()));
            }
            i += 1;
        }
        let mut path = path.to_string();
        if !path.ends_with('/') {
            // A directory: `…/swarmseal` and `…/swarmseal/` both mean the releases under it.
            path.push('/');
        }
        Ok(SourceUrl { host, port, path })
    }

    /// `host[:port]` as in the URL and the `Host` header (IPv6 in brackets, no `:443`).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The path of `swarmseal_V.tar` under the source (`version` already validated).
    pub fn release_path(&self, version: &str) -> String {
        format!("{}swarmseal_{version}.tar", self.path)
    }

    /// The full URL of `swarmseal_V.tar`, for messages.
    pub fn release_url(&self, version: &str) -> String {
        format!("https://{}{}", self.authority(), self.release_path(version))
    }

    /// The name the server certificate must hold (the URL's host).
    fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone()).map_err(|e| format!("bad host {:?}: {e}", self.host))
    }
}

/// The roots of `path` (PEM certificates; unparsable ones in a system bundle are skipped).
/// Errors: [`UpdateError::SourceSetup`] when unreadable or holding no usable certificate.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, UpdateError> {
    let bad = |m: String| UpdateError::SourceSetup(format!("[update] source_ca {}: {m}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("invalid PEM: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad("no usable CA certificate in it".into()));
    }
    Ok(roots)
}

/// The answer of the source, status 200: the body as an [`tokio::io::AsyncRead`] (idle
/// timeout [`super::UPLOAD_IDLE`]) and its `Content-Length` when it sent one.
pub struct Fetched {
    pub body: BodyReader<Incoming>,
    pub content_length: Option<u64>,
}

/// `GET <src>swarmseal_<version>.tar` over HTTPS, the server verified against `roots`.
/// Errors: [`UpdateError::Source`] (502: connect, TLS, no answer within [`CONNECT_TIMEOUT`],
/// any status but 200 — redirects included — named in the message).
pub async fn fetch(src: &SourceUrl, roots: rustls::RootCertStore, version: &str) -> Result<Fetched, UpdateError> {
    let url = src.release_url(version);
    let fail = |message: String| UpdateError::Source { url: url.clone(), message };
    let name = src.server_name().map_err(fail)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let authority = src.authority();
    let head = async {
        let tcp = tokio::net::TcpStream::connect((src.host.as_str(), src.port)).await.map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.map_err(|e| {
            format!("TLS handshake with {authority} failed: {e} (the server's certificate must chain to [update] source_ca, or the system roots without it, and name {})", src.host)
        })?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP/1.1 with {authority}: {e}"))?;
        tokio::spawn(async move {
            // Ends when the body is read or dropped; its errors reach the body reader.
            let _ = conn.await;
        });
        let req = Request::get(src.release_path(version))
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::USER_AGENT, concat!("swarmseal/", env!("CARGO_PKG_VERSION")))
            .header(hyper::header::ACCEPT, "application/x-tar, */*")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        tx.send_request(req).await.map_err(|e| format!("no answer from {authority}: {e}"))
    };
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, head)
        .await
        .map_err(|_| fail(format!("no answer from {authority} within {} s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(fail)?;
    let status = resp.status();
    if status != StatusCode::OK {
        let named = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
        let named = named.trim_end();
        // The Location is not repeated: it may carry a token (pre-signed URLs).
        return Err(fail(if status.is_redirection() {
            format!("answered HTTP {named}, a redirect, which is not followed: set [update] source to where the releases are")
        } else {
            format!("answered HTTP {named} (expected 200 and the release tar)")
        }));
    }
    let content_length = resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    Ok(Fetched { body: BodyReader::new(resp.into_body()), content_length })
}

/// The source-based form of `POST /swarmseal/v1/update?version=V`: check `version`, fetch
/// `swarmseal_V.tar` from `[update] source`, and [`super::receive_fetched`] it (which refuses
/// any other version than `version`) with the same key, staging dir and cap as an upload.
///
/// Errors: [`UpdateError::Request`] (400: `version` is not a valid version),
/// [`UpdateError::NoSource`] (400), [`UpdateError::SourceSetup`] (500: `source_ca` unusable),
/// [`UpdateError::Source`] (502: the fetch failed, or the download broke off), then all of
/// [`super::receive`]'s ([`UpdateError::TooLarge`] also from the `Content-Length`).
pub async fn fetch_and_receive(cfg: &crate::config::Config, key: &PcrPublicKey, version: &str) -> Result<Staged, UpdateError> {
    if !super::valid_version(version) {
        let shown: String = version.chars().take(72).collect();
        return Err(UpdateError::Request(format!(
            "`{}{}` is not a release version (1–64 of A-Z a-z 0-9 . ~ ^ -, starting with a letter or digit)",
            shown.escape_debug(),
            if shown.len() < version.len() { "…" } else { "" }
        )));
    }
    let Some(source) = cfg.update.source.as_deref() else {
        return Err(UpdateError::NoSource);
    };
    let src = SourceUrl::parse(source).map_err(|e| UpdateError::SourceSetup(format!("[update] source: {e}")))?;
    let roots = load_roots(cfg.update.source_ca.as_deref().unwrap_or(Path::new(SYSTEM_ROOTS)))?;
    let max = cfg.update.max_bytes;
    tracing::info!(event = "image_update_fetch", url = %src.release_url(version), "fetching the release from the update source");
    let f = fetch(&src, roots, version).await?;
    if f.content_length.is_some_and(|n| n > max) {
        return Err(UpdateError::TooLarge { max });
    }
    super::receive_fetched(key, &cfg.update_dir(), max, f.body, version).await.map_err(|e| match e {
        UpdateError::Body(m) => UpdateError::Source { url: src.release_url(version), message: format!("the download broke off: {m}") },
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> SourceUrl {
        SourceUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn base_urls_are_https_with_a_host_and_a_directory() {
        let u = ok("https://releases.example.org/swarmseal/");
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("releases.example.org", 443, "/swarmseal/"));
        assert_eq!(u.release_url("1.2.3"), "https://releases.example.org/swarmseal/swarmseal_1.2.3.tar");
        assert_eq!(u.to_string(), "https://releases.example.org/swarmseal/");
        // No path, no trailing slash, upper case: the same directory in normal form.
        assert_eq!(ok("HTTPS://Releases.Example.ORG").to_string(), "https://releases.example.org/");
        assert_eq!(ok("https://releases.example.org/swarmseal").release_path("1"), "/swarmseal/swarmseal_1.tar");
        let u = ok("https://10.0.0.5:8443/r%20x/");
        assert_eq!((u.host.as_str(), u.port, u.authority()), ("10.0.0.5", 8443, "10.0.0.5:8443".to_string()));
        assert_eq!(u.release_path("2"), "/r%20x/swarmseal_2.tar");
        let u = ok("https://[::1]:9443/a/");
        assert_eq!((u.host.as_str(), u.authority()), ("::1", "[::1]:9443".to_string()));
        assert_eq!(ok("https://[2001:db8::1]/").authority(), "[2001:db8::1]");
        assert_eq!(ok("https://h.example:443/").authority(), "h.example");
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (bad, why) in [
            ("http://releases.example.org/", "plain http:// is not accepted"),
            ("HTTP://releases.example.org/", "plain http:// is not accepted"),
            ("ftp://releases.example.org/", "scheme `ftp`"),
            ("releases.example.org/swarmseal/", "not a URL"),
            ("https:///swarmseal/", "no host"),
            ("https://user:pw@releases.example.org/", "user info"),
            ("https://releases.example.org/?token=x", "no query or fragment"),
            ("https://releases.example.org/#x", "no query or fragment"),
            ("https://releases.example.org:0/", "not a port"),
            ("https://releases.example.org:65536/", "not a port"),
            ("https://releases.example.org:/", "not a port"),
            ("https://releases.example.org:+1/", "not a port"),
            ("https://bad_host!.example/", "not a DNS name"),
            ("https://::1/", "goes in brackets"),
            ("https://2001:db8::1:8443/", "goes in brackets"),
            ("https://[::1/", "unclosed"),
            ("https://[nope]/", "not an IPv6 address"),
            ("https://[::1]x/", "after the IPv6 address"),
            ("https://h.example/a b/", "cannot hold unescaped"),
            ("https://h.example/a\r\nX: y/", "cannot hold unescaped"),
            ("https://h.example/caf\u{e9}/", "cannot hold unescaped"),
            ("https://h.example/%zz/", "%XX"),
            ("https://h.example/%4", "%XX"),
        ] {
            let e = SourceUrl::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn roots_come_from_a_pem_file() {
        let d = tempfile::tempdir().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, ca.pem()).unwrap();
        assert_eq!(load_roots(&p).unwrap().len(), 1);
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = load_roots(&p).err().unwrap();
        assert!(e.to_string().contains("no usable CA certificate"), "{e}");
        assert_eq!(crate::proxy::ApiError::from(&e).status(), 500);
        assert!(load_roots(&d.path().join("none.pem")).is_err());
    }
}
