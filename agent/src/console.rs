//! The console status screen (issue #20): the few facts a person at the rack needs, on the
//! local console (`[console] tty`, `/dev/tty1` on the appliance), redrawn when they change.
//!
//! - [`render`] is pure: the status document ([`Status`], what `GET /swarmseal/v1/status`
//!   answers) and the [`Facts`] the document does not hold (the boot decision, addresses, the
//!   proxy certificate's fingerprint, the leader flag, the bench's WARN count) become at most
//!   [`ROWS`] lines of at most [`COLS`] printable ASCII characters. Every value from outside
//!   (engine errors, reasons, versions, addresses) passes [`clean`]: no control character,
//!   escape sequence or non-ASCII character reaches the terminal (a wide character would
//!   break the column count; a bidi override could reorder what the operator reads).
//! - [`run`] is the agent's task: every [`REFRESH`] it gathers the status and the facts,
//!   renders, and writes to the device only when the text changed (ANSI clear + home, then
//!   the text). The device is opened write-only with `O_NOCTTY` (the agent never gets a
//!   controlling terminal from it: the operator's copy of a key goes only to a real one) and
//!   `O_NONBLOCK` (a stopped terminal cannot stall the agent). A missing or unwritable device
//!   is logged once (and once more when it works again); it never stops the agent.
//!   The agent only writes: no login, no input.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use swarmseal_common::status::{Slot, Status, Swarm};

/// Columns of the screen: every line has at most this many characters.
pub const COLS: usize = 80;
/// Lines of the screen: the text has at most this many.
pub const ROWS: usize = 24;
/// How often the task gathers the status and renders it again.
pub const REFRESH: Duration = Duration::from_secs(3);
/// ANSI (ECMA-48) cursor home (CUP) and erase display (ED 2), written before each screen.
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// What the screen shows besides the status document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The last boot decision as the agent said it (`swarm unlocked with …`, `locked: …`).
    pub decision: String,
    /// The host's non-loopback addresses, with their interface (see [`addresses`]).
    pub addresses: Vec<(String, IpAddr)>,
    /// `ManagerStatus.Leader` of `GET /nodes/{id}` (Engine API v1.24+); `None`: not asked or no answer.
    pub leader: Option<bool>,
    /// SHA-256 of the proxy's server certificate (DER), colon hex ([`fingerprint`]), or why
    /// it could not be read.
    pub fingerprint: Option<Result<String, String>>,
    /// WARN results in the last bench report (`tests[].results[].result`).
    pub bench_warn: Option<usize>,
}

/// `s` as the screen may show it: printable ASCII kept, everything else (control characters,
/// ESC, DEL, C1, any non-ASCII character) as its Rust escape (`\u{1b}`, `\n`).
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// Cut `s` (already [`clean`]) to `n` characters, marking a cut with `...`.
fn cut(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        format!("{}...", &s[..n.saturating_sub(3)])
    }
}

/// `text` (already [`clean`]) in lines of at most `width` characters, broken at spaces where
/// it can; at most `max` lines, the last one cut with `...` when text is left over.
fn wrap(text: &str, width: usize, max: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if lines.len() + 1 == max || rest.len() <= width {
            lines.push(cut(rest, width));
            break;
        }
        let at = rest[..=width].rfind(' ').filter(|&i| i > 0).unwrap_or(width);
        lines.push(rest[..at].trim_end().to_string());
        rest = rest[at..].trim_start();
    }
    lines
}

/// Long hex runs (PCR values, 64 digits) cut to their first 12 digits and `...`, so a PCR
/// difference fits on one line; the full values are in `swarmseal status`.
fn short_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() > 16 {
            out.push_str(&run[..12]);
            out.push_str("...");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

const LABEL: usize = 11;

/// One `label: value` line; the value cleaned and cut to the screen.
fn row(label: &str, value: &str) -> String {
    cut(&format!("{label:<LABEL$}{}", clean(value)), COLS)
}

/// A value continued on more lines under the label column.
fn rows(out: &mut Vec<String>, label: &str, value: &str, max: usize) {
    for (i, l) in wrap(&clean(value), COLS - LABEL, max).into_iter().enumerate() {
        out.push(format!("{:<LABEL$}{l}", if i == 0 { label } else { "" }));
    }
}

/// The screen for `st` and `f`: at most [`ROWS`] lines of at most [`COLS`] printable ASCII
/// characters each, joined with `\n` (a final newline included). Pure.
pub fn render(st: &Status, f: &Facts) -> String {
    let mut out = Vec::new();
    let version = match (&st.image.id, &st.image.version) {
        (Some(id), Some(v)) => format!("{id} {v}"),
        (None, Some(v)) => v.clone(),
        (Some(id), None) => format!("{id} (version unknown)"),
        (None, None) => "version unknown (no IMAGE_VERSION in os-release)".into(),
    };
    out.push(cut(&format!("swarmseal manager  image {}", clean(&version)), COLS));
    out.push(String::new());

    let addrs: Vec<String> = f.addresses.iter().map(|(i, a)| format!("{a} ({i})")).collect();
    rows(&mut out, "addresses", &if addrs.is_empty() { "none found".into() } else { addrs.join("  ") }, 2);

    let locked = st.swarm.state() == Some("locked");
    match &st.swarm {
        Swarm::Reached { state, manager, node_id, error, autolock, .. } => {
            let role = match (state == "active", *manager, f.leader) {
                (false, ..) => "",
                (true, true, Some(true)) => ", manager, leader",
                (true, true, _) => ", manager",
                (true, false, _) => ", worker",
            };
            let node = node_id.as_deref().map(|n| format!(", node {}", n.chars().take(12).collect::<String>())).unwrap_or_default();
            let err = error.as_deref().filter(|e| !e.is_empty()).map(|e| format!(" ({e})")).unwrap_or_default();
            out.push(row("swarm", &format!("{state}{role}{node}{err}")));
            let al = match autolock {
                Some(true) => "on",
                Some(false) => "OFF",
                None => "unknown (readable on an active manager)",
            };
            out.push(row("autolock", al));
        }
        Swarm::Unreachable { error } => {
            out.push(row("swarm", &format!("engine not answering: {error}")));
            out.push(row("autolock", "unknown"));
        }
    }
    let seal = match &st.sealed.current {
        None => "no sealed key".to_string(),
        Some(Slot::Unreadable { error }) => format!("current slot unreadable: {error}"),
        Some(Slot::Sealed { created, differs, .. }) => {
            let fits = match differs.as_deref() {
                Some([]) => "matches this boot",
                Some(_) => "does NOT match this boot",
                None => "match unknown (TPM)",
            };
            let stale = if st.sealed_key_stale == Some(true) { ", STALE (not the engine's key)" } else { "" };
            format!("sealed {created}, {fits}{stale}")
        }
    };
    out.push(row("seal", &seal));
    let phase = match st.phase_locked {
        Some(true) => format!("PCR {} extended (no second unseal this boot)", st.phase_pcr),
        Some(false) => format!("PCR {} not extended yet", st.phase_pcr),
        None => format!("unknown: TPM not answering ({})", st.tpm.error.as_deref().unwrap_or("")),
    };
    out.push(row("phase", &phase));
    rows(&mut out, "boot", &if f.decision.is_empty() { "no decision yet".into() } else { short_hex(&f.decision) }, 3);

    let bench = match &st.bench {
        None => "no report yet".to_string(),
        Some(b) => {
            let n = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            let warn = f.bench_warn.map(|w| w.to_string()).unwrap_or_else(|| "?".into());
            format!("score {}, {warn} WARN, {} checks", n(&b.score), n(&b.checks))
        }
    };
    out.push(row("bench", &bench));
    rows(&mut out, "time", &time_text(st.time.as_ref()), 2);

    let proxy = if st.proxy.enabled { st.proxy.listen.clone() } else { "off".into() };
    out.push(row("proxy", &proxy));
    match &f.fingerprint {
        Some(Ok(fp)) => {
            // 32 bytes are 95 characters: two lines of 16 bytes, as openssl prints them joined.
            let (a, b) = fp.split_at(fp.len().min(48));
            out.push(cut(&format!("{:<LABEL$}{}", "sha256", clean(a)), COLS));
            out.push(cut(&format!("{:<LABEL$}{}", "", clean(b)), COLS));
        }
        Some(Err(e)) => out.push(row("sha256", &format!("unknown: {e}"))),
        None => out.push(row("sha256", "no server certificate")),
    }

    if locked {
        out.push(String::new());
        match &st.sealed.current {
            Some(Slot::Sealed { differs: Some(d), .. }) if !d.is_empty() => {
                let max = 3usize;
                for (i, x) in d.iter().take(max).enumerate() {
                    out.push(row(if i == 0 { "differs" } else { "" }, &short_hex(x)));
                }
                if d.len() > max {
                    out.push(row("", &format!("and {} more: swarmseal status", d.len() - max)));
                }
            }
            _ => out.push(row("differs", "see GET /swarmseal/v1/status, journalctl -u swarmseal")),
        }
        if st.escrow.is_some() {
            out.push("LOCKED. Unlock through the proxy with an admin bundle and the escrowed key:".into());
            out.push("  GET /swarmseal/v1/escrow > k.age; age -d -i ID k.age".into());
        } else {
            out.push("LOCKED. Unlock through the proxy with an admin bundle and your copy of the key:".into());
        }
        out.push("  docker --context M swarm unlock; then POST /swarmseal/v1/reseal".into());
    }
    out.truncate(ROWS);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The status's time sync as A.7 judges it ([`TimeSync::verdict`]): the source and offset when
/// trusted, `NOT TRUSTED:` and why otherwise, `unknown` when the status has none.
fn time_text(t: Option<&swarmseal_common::time::TimeSync>) -> String {
    match t.map(|t| t.verdict()) {
        None => "unknown".into(),
        Some(Ok(v)) => v,
        Some(Err(why)) => format!("NOT TRUSTED: {why}"),
    }
}

/// SHA-256 of `der` as `openssl x509 -fingerprint -sha256` prints it: upper-case hex bytes
/// joined with `:` (95 characters).
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The fingerprint of the first certificate of the PEM file `path` (the server's, before its chain).
pub fn cert_file_fingerprint(path: &Path) -> Result<String, String> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let first = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?.next();
    match first {
        Some(Ok(c)) => Ok(fingerprint(&c)),
        Some(Err(e)) => Err(format!("{}: {e}", path.display())),
        None => Err(format!("{}: no certificate in it", path.display())),
    }
}

/// Interfaces whose addresses an operator does not reach the manager by: the engine's bridges
/// and the containers' ends of them.
fn internal_interface(name: &str) -> bool {
    name.starts_with("docker") || name.starts_with("br-") || name.starts_with("veth")
}

/// The host's non-loopback IPv4 addresses from `/proc/net/fib_trie` (`/32 host LOCAL`
/// entries), each with its interface from `/proc/net/route` (the longest prefix holding it).
/// Pure: the two files' texts in, the addresses out (sorted, deduplicated).
pub fn ipv4_addresses(fib_trie: &str, route: &str) -> Vec<(String, Ipv4Addr)> {
    let mut local = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(a) = t.parse::<Ipv4Addr>() {
            last = Some(a);
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = last.filter(|a| !a.is_loopback()) {
                local.push(a);
            }
        }
    }
    // /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask …, addresses
    // as the host's u32 in hex (little-endian on x86).
    let routes: Vec<(String, u32, u32)> = route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| u32::from_be_bytes(v.to_le_bytes()));
            Some((f.first()?.to_string(), hex(f.get(1)?)?, hex(f.get(7)?)?))
        })
        .collect();
    let mut out: Vec<(String, Ipv4Addr)> = local
        .into_iter()
        .filter_map(|a| {
            let n = u32::from(a);
            let iface = routes.iter().filter(|(_, d, m)| *m != 0 && n & m == *d).max_by_key(|(_, _, m)| m.count_ones()).map(|(i, _, _)| i.clone()).unwrap_or_else(|| "?".into());
            (!internal_interface(&iface)).then_some((iface, a))
        })
        .collect();
    out.sort_by(|x, y| x.1.cmp(&y.1));
    out.dedup();
    out
}

/// The host's global IPv6 addresses from `/proc/net/if_inet6` (address, index, prefix length,
/// scope, flags, interface; scope 0 = global). Pure.
pub fn ipv6_addresses(if_inet6: &str) -> Vec<(String, Ipv6Addr)> {
    if_inet6
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (hex, scope, iface) = (f.first()?, f.get(3)?, f.get(5)?);
            let a = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            (*scope == "00" && !a.is_loopback() && !internal_interface(iface)).then(|| (iface.to_string(), a))
        })
        .collect()
}

/// The host's addresses ([`ipv4_addresses`], then [`ipv6_addresses`]) as the network
/// namespace of this process sees them; an unreadable file adds none.
pub fn addresses() -> Vec<(String, IpAddr)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let v4 = ipv4_addresses(&read("/proc/net/fib_trie"), &read("/proc/net/route")).into_iter().map(|(i, a)| (i, IpAddr::V4(a)));
    let v6 = ipv6_addresses(&read("/proc/net/if_inet6")).into_iter().map(|(i, a)| (i, IpAddr::V6(a)));
    v4.chain(v6).collect()
}

/// The console device and what was last written to it.
pub struct Screen {
    path: PathBuf,
    last: Option<String>,
    /// The last write's error, so each distinct failure is logged once.
    failing: Option<String>,
}

impl Screen {
    pub fn new(path: PathBuf) -> Screen {
        Screen { path, last: None, failing: None }
    }

    /// Write `text` (clear + home first) unless it is what the device already shows.
    /// Returns whether it was written; a failure is logged once, and the next call tries again.
    pub fn show(&mut self, text: &str) -> bool {
        if self.last.as_deref() == Some(text) {
            return false;
        }
        let r = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags((rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK).bits() as i32)
            .open(&self.path)
            .and_then(|mut f| f.write_all(format!("{CLEAR}{text}").as_bytes()));
        match r {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::info!(event = "console_ok", tty = %self.path.display(), "the console status screen is written again");
                }
                self.last = Some(text.to_string());
                true
            }
            Err(e) => {
                let e = e.to_string();
                if self.failing.as_deref() != Some(&e) {
                    tracing::warn!(event = "console_unwritable", tty = %self.path.display(), error = %e, "cannot write the console status screen; the agent carries on without it ([console] tty)");
                    self.failing = Some(e);
                }
                false
            }
        }
    }
}

/// The agent's console task: until the process ends, every [`REFRESH`] gather the status and
/// the facts, render, and [`Screen::show`]. `decision` carries the boot decision line.
#[cfg(feature = "appliance")]
pub async fn run(ctx: crate::boot::Ctx, tty: PathBuf, decision: tokio::sync::watch::Receiver<String>) {
    let mut screen = Screen::new(tty);
    loop {
        let line = decision.borrow().clone();
        let text = render_now(&ctx, &line).await;
        // Opening and writing a device may block (a slow serial line): not on a runtime worker.
        screen = crate::boot::blocking(move || {
            screen.show(&text);
            screen
        })
        .await;
        tokio::time::sleep(REFRESH).await;
    }
}

/// Gather the status and the facts now and render them.
#[cfg(feature = "appliance")]
async fn render_now(ctx: &crate::boot::Ctx, decision: &str) -> String {
    let st = crate::boot::status(ctx).await;
    let leader = match st.swarm.node_id() {
        Some(id) if matches!(st.swarm, Swarm::Reached { manager: true, .. }) => match crate::swarm::Engine::connect(&ctx.cfg.docker_socket()).await {
            Ok(e) => e.docker().inspect_node(id).await.ok().and_then(|n| n.manager_status).and_then(|m| m.leader),
            Err(_) => None,
        },
        _ => None,
    };
    let cert = swarmseal_proxy::pki::PkiPaths::of(&ctx.cfg).server_cert;
    let report = crate::boot::latest_bench_report(&ctx.cfg).await;
    let facts = Facts {
        decision: decision.to_string(),
        addresses: addresses(),
        leader,
        fingerprint: cert.exists().then(|| cert_file_fingerprint(&cert)),
        bench_warn: report.as_deref().and_then(swarmseal_common::metrics::bench_warn_count),
    };
    render(&st, &facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(doc: serde_json::Value) -> Status {
        let mut base = json!({
            "swarm": {"state": "active", "node_id": "n0d3id0123456789", "manager": true, "autolock": true, "error": null, "api_version": "1.41"},
            "sealed": {"current": {"created": "2026-12-07T05:00:00Z", "policy": {"kind": "pcr"}, "differs": []}, "previous": null},
            "sealed_key_stale": false, "change_pending": null,
            "tpm": {"tcti": "device:/dev/tpmrm0", "reachable": true, "pcrs": {}},
            "phase_locked": true, "phase_pcr": 11,
            "proxy": {"enabled": true, "listen": "0.0.0.0:2376"},
            "escrow": null,
            "bench": {"checks": 117, "score": 12, "end": 1},
            "image": {"id": "swarmseal", "version": "1.4.2", "sbom_sha256": null},
        });
        for (k, v) in doc.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn facts() -> Facts {
        Facts {
            decision: "swarm unlocked with the sealed key (current slot)".into(),
            addresses: vec![("eth0".into(), "192.0.2.10".parse().unwrap()), ("eth0".into(), "2001:db8::10".parse().unwrap())],
            leader: Some(true),
            fingerprint: Some(Ok(fingerprint(b"der"))),
            bench_warn: Some(5),
        }
    }

    /// The screen's bounds: at most ROWS lines of at most COLS printable ASCII characters.
    fn assert_fits(text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() <= ROWS, "{} lines:\n{text}", lines.len());
        for l in lines {
            assert!(l.len() <= COLS, "{} columns: {l:?}", l.len());
            assert!(l.bytes().all(|b| (0x20..0x7f).contains(&b)), "not printable ASCII: {l:?}");
        }
    }

    #[test]
    fn unlocked_screen_shows_every_field() {
        let t = render(&status(json!({})), &facts());
        assert_fits(&t);
        let fp = fingerprint(b"der");
        assert_eq!(fp.len(), 95);
        for want in ["swarmseal 1.4.2", "192.0.2.10 (eth0)", "2001:db8::10 (eth0)", "active, manager, leader, node n0d3id012345", "autolock   on", "sealed 2026-12-07T05:00:00Z, matches this boot", "PCR 11 extended", "swarm unlocked with the sealed key (current slot)", "score 12, 5 WARN, 117 checks", "time       unknown", "0.0.0.0:2376", &fp[..47], &fp[48..]] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
        assert!(!t.contains("LOCKED"), "{t}");
    }

    #[test]
    fn fingerprint_is_openssl_colon_hex() {
        // sha256("") as openssl prints it.
        assert!(fingerprint(b"").starts_with("E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4"));
    }

    #[test]
    fn locked_screen_names_the_pcrs_and_the_recovery() {
        let now = "b".repeat(64);
        let st = status(json!({
            "swarm": {"state": "locked", "node_id": null, "manager": false, "autolock": null, "error": null, "api_version": "1.41"},
            "sealed": {"current": {"created": "2026-12-07T05:00:00Z", "policy": {}, "differs": [format!("PCR 11 sealed {} now {now}", "a".repeat(64)), format!("PCR 7 sealed {now} now {now}"), "PCR 12 x".to_string(), "PCR 15 y".to_string()]}, "previous": null},
            "phase_locked": false,
            "escrow": "/var/lib/swarmseal/escrow/unlock-key.age",
        }));
        let f = Facts { decision: format!("locked: the boot measurements changed (PCR 11 sealed {} now {now}): {}", "a".repeat(64), "PCR 11 differs; ".repeat(20)), leader: None, ..facts() };
        let t = render(&st, &f);
        assert_fits(&t);
        for want in ["swarm      locked\n", "does NOT match this boot", "PCR 11 sealed aaaaaaaaaaaa... now bbbbbbbbbbbb...", "and 1 more", "LOCKED", "/swarmseal/v1/escrow", "swarm unlock", "/swarmseal/v1/reseal", "boot       locked: the boot measurements changed"] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
        assert!(!t.contains(&"a".repeat(13)), "PCR values are cut to 12 digits, in the decision too:\n{t}");
        assert_eq!(t.lines().filter(|l| l.contains("PCR 11 differs")).count(), 2, "the decision is wrapped on at most 3 lines:\n{t}");
        // Without differences in the status, the screen says where to look.
        let st = status(json!({"swarm": {"state": "locked", "node_id": null, "manager": false, "autolock": null, "error": null, "api_version": "1.41"}, "sealed": {"current": {"error": "corrupt"}, "previous": null}}));
        let t = render(&st, &facts());
        assert!(t.contains("current slot unreadable: corrupt") && t.contains("journalctl -u swarmseal"), "{t}");
        assert!(t.contains("your copy of the key") && !t.contains("/swarmseal/v1/escrow"), "no escrow configured, none suggested:\n{t}");
    }

    #[test]
    fn hostile_and_long_values_are_escaped_and_cut() {
        let evil = "\x1b[2J\x1b]0;owned\x07\r\nfake: line\u{202e}\u{9b}31m\u{4e2d}";
        let st = status(json!({
            "swarm": {"state": evil, "node_id": evil, "manager": true, "autolock": true, "error": evil.repeat(30), "api_version": "1.41"},
            "image": {"id": evil, "version": "9".repeat(300), "sbom_sha256": null},
            "bench": {"checks": evil, "score": null, "end": null},
        }));
        let mut st = st;
        st.time = Some(serde_json::from_value(json!({"synchronised": false, "offset_seconds": null, "source": evil, "authenticated": null, "problems": [evil], "error": null})).unwrap());
        let f = Facts { decision: evil.repeat(40), fingerprint: Some(Err(evil.into())), ..facts() };
        let t = render(&st, &f);
        assert_fits(&t);
        assert!(t.contains("\\u{1b}[2J") && t.contains("\\r\\n") && t.contains("\\u{202e}") && t.contains("\\u{4e2d}"), "{t}");
        assert!(t.lines().next().unwrap().ends_with("..."), "{t}");
    }

    #[test]
    fn time_field_is_shown_when_present() {
        let with = |time: serde_json::Value| render(&status(json!({ "time": time })), &facts());
        let t = with(json!({"synchronised": true, "offset_seconds": -1.6e-7, "source": "ntp.example", "authenticated": true, "problems": [], "error": null}));
        assert!(t.contains("time       Synchronised to ntp.example (NTS), offset -1.60e-7 s"), "{t}");
        let t = with(json!({"synchronised": false, "offset_seconds": null, "source": null, "authenticated": null, "problems": ["NTS source 10.0.2.2: no authenticated answer (reach 0)"], "error": null}));
        assert!(t.contains("time       NOT TRUSTED: Not synchronised: NTS source 10.0.2.2: no authenticated\n           answer (reach 0)"), "{t}");
    }

    #[test]
    fn addresses_from_proc_net() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n     |-- 192.0.2.10\n        /32 host LOCAL\n     |-- 172.17.0.1\n        /32 host LOCAL\nLocal:\n     |-- 192.0.2.10\n        /32 host LOCAL\n";
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\ndocker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(ipv4_addresses(fib, route), vec![("eth0".to_string(), Ipv4Addr::new(192, 0, 2, 10))]);
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\n20010db8000000000000000000000010 02 40 00 00     eth0\nfe800000000000000000000000000010 02 40 20 80     eth0\n20010db8000000000000000000000099 03 40 00 00  docker0\n";
        assert_eq!(ipv6_addresses(v6), vec![("eth0".to_string(), "2001:db8::10".parse().unwrap())]);
        assert_eq!(ipv4_addresses("", ""), vec![]);
    }

    #[test]
    fn warn_count_of_a_report() {
        let r = json!({"tests": [{"id": "1", "results": [{"result": "WARN"}, {"result": "PASS"}]}, {"id": "2", "results": [{"result": "WARN"}]}]});
        assert_eq!(swarmseal_common::metrics::bench_warn_count(r.to_string().as_bytes()), Some(2));
        assert_eq!(swarmseal_common::metrics::bench_warn_count(b"not json"), None);
    }

    /// Written only when the text changed; a missing device is reported once and retried.
    #[test]
    fn screen_writes_on_change_and_survives_a_missing_device() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tty");
        let mut s = Screen::new(p.clone());
        assert!(!s.show("a\n"), "a missing device is not created");
        assert!(!p.exists());
        assert!(s.failing.is_some());
        std::fs::write(&p, "").unwrap();
        assert!(s.show("a\n"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{CLEAR}a\n"));
        assert!(s.failing.is_none());
        assert!(!s.show("a\n"), "unchanged text is not written again");
        assert!(s.show("b\n"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{CLEAR}b\n"), "the device shows only the last screen");
    }
}
