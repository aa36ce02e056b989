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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{BodyReader, Staged, UpdateError};
pub use swarmseal_release::SourceUrl;
use swarmseal_release::ReleaseKey;

/// The roots used when `[update] source_ca` is not set (Debian's `ca-certificates`).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Connecting, the TLS handshake and the response head must complete within this; the body
/// then only has to keep moving ([`super::UPLOAD_IDLE`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

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
    use swarmseal_common::tls::{client_config, Versions, Verify};
    let mut tls = client_config(Versions::SafeDefault, Verify::Roots(roots), None).map_err(|e| fail(format!("TLS setup: {e}")))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let authority = src.authority();
    let head = async {
        let tcp = tokio::net::TcpStream::connect((src.host(), src.port())).await.map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.map_err(|e| {
            format!("TLS handshake with {authority} failed: {e} (the server's certificate must chain to [update] source_ca, or the system roots without it, and name {})", src.host())
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
/// [`super::receive`]'s ([`super::ReleaseError::TooLarge`] also from the `Content-Length`).
pub async fn fetch_and_receive(cfg: &crate::config::Config, key: &ReleaseKey, version: &str) -> Result<Staged, UpdateError> {
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
        return Err(super::ReleaseError::TooLarge { max }.into());
    }
    super::receive_fetched(key, &cfg.update_dir(), max, f.body, version).await.map_err(|e| match e {
        UpdateError::Release(super::ReleaseError::Body(m)) => UpdateError::Source { url: src.release_url(version), message: format!("the download broke off: {m}") },
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
