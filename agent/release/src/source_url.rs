//! `[update] source`: the base URL `https://HOST[:PORT][/PATH/]` releases are fetched from
//! (`<source>swarmseal_V.tar`), parsed when the configuration is loaded; the agent's
//! `update::source` fetches from it (see `docs/updates.md`).

use std::net::{Ipv4Addr, Ipv6Addr};

use rustls_pki_types::ServerName;

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

    /// The host: DNS name (lowercase), IPv4 address, or IPv6 address (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (443 unless the URL names one).
    pub fn port(&self) -> u16 {
        self.port
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
    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone()).map_err(|e| format!("bad host {:?}: {e}", self.host))
    }
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
}
