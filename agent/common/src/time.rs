//! The clock as chronyd keeps it (docs/time.md): `chronyc -c tracking`, `chronyc -c sources`
//! and, where chronyd answers it (its unix socket: root with access to `/run/chrony`),
//! `chronyc -c authdata` — chrony 4's CSV output, parsed here — plus the image's rendered
//! source list (`/run/swarmseal-time/sources/swarmseal.sources`), which says which source is
//! NTS. Read by the status document (`time`), the metrics and check A.7.
//!
//! An NTS source is authenticated or not used at all: chronyd accepts no NTP answer from it
//! without a valid NTS authenticator (RFC 8915 §5.7), so a selected source configured `nts`
//! is an authenticated one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tool::{self, Stdout};

/// The image's rendered source list (`sourcedir` of its chrony.conf).
pub const SOURCES_FILE: &str = "/run/swarmseal-time/sources/swarmseal.sources";

/// The limit check A.7 holds the offset to, in seconds.
pub const MAX_OFFSET_SECONDS: f64 = 1.0;

/// `time` of the status document: whether the clock is synchronised, by what, how far off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSync {
    /// chronyd has set the clock from a selected source (tracking's leap status is not
    /// `Not synchronised`).
    pub synchronised: bool,
    /// Seconds the system clock is behind (positive) or ahead of (negative) NTP time now
    /// (tracking's "System time"); `null` when not synchronised or chronyd did not answer.
    pub offset_seconds: Option<f64>,
    /// The selected source as configured (name or address); `null` when none is selected.
    pub source: Option<String>,
    /// Whether the selected source is authenticated (configured `nts`); `null` when none is selected.
    pub authenticated: Option<bool>,
    /// Why the clock is not (well) kept, one operator sentence per source or problem (the
    /// names escaped); empty when all is well.
    pub problems: Vec<String>,
    /// chronyd could not be asked (not running, chronyc missing); the other fields are then empty.
    pub error: Option<String>,
}

impl TimeSync {
    /// Nothing known: chronyd could not be asked (`error` says why).
    pub fn unknown(error: String) -> TimeSync {
        TimeSync { synchronised: false, offset_seconds: None, source: None, authenticated: None, problems: vec![], error: Some(error) }
    }

    /// Synchronised, |offset| < [`MAX_OFFSET_SECONDS`] and the selected source authenticated.
    pub fn trusted(&self) -> bool {
        self.verdict().is_ok()
    }

    /// Check A.7's sentence: `Ok` (synchronised to an NTS source within the limit: which,
    /// and the offset) or `Err` (why the clock is not to be trusted, chronyd's view of each
    /// source included). Names are escaped.
    pub fn verdict(&self) -> Result<String, String> {
        if let Some(e) = &self.error {
            return Err(format!("The clock is not kept: {e}"));
        }
        let why = if self.problems.is_empty() { String::new() } else { format!(": {}", self.problems.join("; ")) };
        let source = self.source.as_deref().unwrap_or_default().escape_default();
        match self.offset_seconds {
            _ if !self.synchronised => Err(format!("Not synchronised{why}")),
            None => Err(format!("Synchronised to {source}, offset unknown")),
            Some(o) if o.abs() >= MAX_OFFSET_SECONDS => Err(format!("Synchronised to {source}, but the clock is off by {o:.3} s (limit {MAX_OFFSET_SECONDS} s)")),
            _ if self.authenticated != Some(true) => Err(format!("Synchronised to {source}, not authenticated (not NTS){why}")),
            Some(o) => Ok(format!("Synchronised to {source} (NTS), offset {o:.2e} s")),
        }
    }
}

/// `chronyc -c tracking` (14 fields: reference ID, name, stratum, reference time, system
/// time, last offset, RMS offset, frequency, residual frequency, skew, root delay, root
/// dispersion, update interval, leap status): the fields A.7 reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracking {
    /// Reference name or address (`-N`: as configured); empty when none.
    pub reference: String,
    /// Seconds; positive: the system clock is slow (behind NTP time).
    pub system_time: f64,
    /// `Normal`, `Insert second`, `Delete second` or `Not synchronised`.
    pub leap: String,
}

/// One row of `chronyc -c sources` (10 fields: mode, state, name, stratum, poll, reach,
/// last rx, adjusted offset, measured offset, error).
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// `^` server, `=` peer, `#` reference clock.
    pub mode: char,
    /// `*` selected, `+` combined, `-` not combined, `?` unreachable, `x` falseticker, `~` too variable.
    pub state: char,
    pub name: String,
    /// The reach register (octal in chronyc's output): 0 means no answer in the last 8 polls.
    pub reach: u32,
}

/// One row of `chronyc -c authdata` (10 fields: name, mode, key ID, type, key length, last,
/// attempts, NAKs, cookies, cookie length).
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub name: String,
    /// `NTS`, `SK` (symmetric key) or `-`.
    pub mode: String,
    /// NTS-KE attempts since the last success.
    pub attempts: u32,
    /// NTS cookies held (0: no key established).
    pub cookies: u32,
}

fn fields(line: &str, n: usize, what: &str) -> Result<Vec<String>, String> {
    let f: Vec<String> = line.trim_end().split(',').map(str::to_string).collect();
    if f.len() == n {
        Ok(f)
    } else {
        Err(format!("chronyc {what}: {} fields where {n} were expected: {:?}", f.len(), line.escape_default().to_string()))
    }
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("chronyc {what}: {:?} is not a number", s.escape_default().to_string()))
}

/// Parse `chronyc -c tracking`. Errors: not exactly one line of 14 fields, or a number that is not one.
pub fn parse_tracking(out: &str) -> Result<Tracking, String> {
    let line = out.lines().find(|l| !l.trim().is_empty()).ok_or("chronyc tracking: no output")?;
    let f = fields(line, 14, "tracking")?;
    Ok(Tracking { reference: f[1].clone(), system_time: num(&f[4], "tracking")?, leap: f[13].clone() })
}

/// Parse `chronyc -c sources`. Errors: a row that is not 10 fields, or a reach that is not octal.
pub fn parse_sources(out: &str) -> Result<Vec<Source>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f = fields(l, 10, "sources")?;
            let ch = |s: &str| s.chars().next().unwrap_or(' ');
            let reach = u32::from_str_radix(f[5].trim(), 8).map_err(|_| format!("chronyc sources: reach {:?} is not octal", f[5].escape_default().to_string()))?;
            Ok(Source { mode: ch(&f[0]), state: ch(&f[1]), name: f[2].clone(), reach })
        })
        .collect()
}

/// Parse `chronyc -c authdata`. Errors: a row that is not 10 fields, or counts that are not numbers.
pub fn parse_authdata(out: &str) -> Result<Vec<Auth>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f = fields(l, 10, "authdata")?;
            Ok(Auth { name: f[0].clone(), mode: f[1].clone(), attempts: num(&f[6], "authdata")?, cookies: num(&f[8], "authdata")? })
        })
        .collect()
}

/// The hosts configured `nts` in a chrony sources file (`server HOST … nts …` lines).
pub fn nts_hosts(sources_file: &str) -> Vec<String> {
    sources_file
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&"server") && w.len() > 1 && w[2..].contains(&"nts")).then(|| w[1].to_string())
        })
        .collect()
}

/// What the clock's state comes to (pure): `nts` are the sources configured NTS, `auth`
/// chronyd's authdata when it answered it.
pub fn assess(tracking: &Tracking, sources: &[Source], nts: &[String], auth: Option<&[Auth]>) -> TimeSync {
    let synchronised = tracking.leap != "Not synchronised";
    let selected = sources.iter().find(|s| s.state == '*').map(|s| s.name.clone()).filter(|_| synchronised);
    let is_nts = |name: &str| nts.iter().any(|n| n == name) || auth.is_some_and(|a| a.iter().any(|x| x.name == name && x.mode == "NTS"));
    let authenticated = selected.as_deref().map(is_nts);
    let mut problems = Vec::new();
    if sources.is_empty() {
        problems.push("no time source is configured (credential swarmseal.ntp-servers)".to_string());
    }
    for s in sources.iter().filter(|s| s.state != '*' && s.state != '+') {
        let name = s.name.escape_default().to_string();
        let kind = if is_nts(&s.name) { "NTS source" } else { "source" };
        let why = match s.state {
            '?' if is_nts(&s.name) => {
                let ke = auth.and_then(|a| a.iter().find(|x| x.name == s.name)).map(|a| format!(", NTS-KE attempts {}, cookies {}", a.attempts, a.cookies)).unwrap_or_default();
                format!("no authenticated answer (reach {:o}{ke}): its NTS key establishment (TLS: certificate, CA credential swarmseal.ntp-ca) or NTP failed; the console's swarmseal-time lines name chronyd's reason", s.reach)
            }
            '?' => format!("no answer (reach {:o})", s.reach),
            'x' => "a falseticker (disagrees with the other sources)".to_string(),
            '~' => "too variable to be used".to_string(),
            _ => "not combined (too far from the selected source)".to_string(),
        };
        problems.push(format!("{kind} {name}: {why}"));
    }
    if let Some(name) = selected.as_deref().filter(|n| !is_nts(n)) {
        problems.push(format!("the selected source {} is plain NTP, not authenticated: anyone on the path can steer this clock", name.escape_default()));
    }
    TimeSync {
        synchronised,
        offset_seconds: synchronised.then_some(tracking.system_time),
        source: selected,
        authenticated,
        problems,
        error: None,
    }
}

fn chronyc(what: &str) -> Result<String, String> {
    // -N: names as configured, no DNS lookups (which could hang without a resolver).
    match tool::run("chronyc", &["-N", "-c", what], None, Stdout::Plain) {
        Ok(o) => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Ask chronyd now (blocking: a few chronyc calls, each bounded by chronyc's own timeouts;
/// from async code through `spawn_blocking`). `sources_file`: the rendered source list
/// ([`SOURCES_FILE`] on the image). Never fails: what could not be asked is in `error`.
pub fn query(sources_file: &Path) -> TimeSync {
    let tracking = match chronyc("tracking").and_then(|o| parse_tracking(&o)) {
        Ok(t) => t,
        Err(e) => return TimeSync::unknown(format!("chronyd could not be asked: {e}")),
    };
    let sources = match chronyc("sources").and_then(|o| parse_sources(&o)) {
        Ok(s) => s,
        Err(e) => return TimeSync::unknown(format!("chronyd could not be asked: {e}")),
    };
    let nts = std::fs::read_to_string(sources_file).map(|s| nts_hosts(&s)).unwrap_or_default();
    // Answered on chronyd's unix socket only: absent in the agent's sandbox, present for root.
    let auth = chronyc("authdata").ok().and_then(|o| parse_authdata(&o).ok());
    assess(&tracking, &sources, &nts, auth.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real chronyc 4.3 output (chronyd -x against a local NTS server, then one whose CA is not trusted).
    const TRACKING_OK: &str = "7F000001,10.0.2.2,4,1796621058.788901276,-0.000002014,0.000000155,0.000000155,-0.024,0.000,1.402,0.000007348,0.000004908,2.0,Normal\n";
    const SOURCES_OK: &str = "^,*,10.0.2.2,3,6,17,1,0.000000044,0.000000199,0.000003711\n";
    const TRACKING_NONE: &str = "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,1.000000000,1.000000000,0.0,Not synchronised\n";
    const SOURCES_UNREACHABLE: &str = "^,?,10.0.2.2,0,7,0,4294967295,0.000000000,0.000000000,0.000000000\n";
    const AUTHDATA_FAILED: &str = "10.0.2.2,NTS,0,0,0,-,3,0,0,0\n";
    const RENDERED: &str = "server 10.0.2.2 iburst nts ntsport 23902\nserver ntp.example iburst\n";

    #[test]
    fn chronyc_csv_parses() {
        let t = parse_tracking(TRACKING_OK).unwrap();
        assert_eq!(t, Tracking { reference: "10.0.2.2".into(), system_time: -0.000002014, leap: "Normal".into() });
        assert_eq!(parse_tracking(TRACKING_NONE).unwrap().leap, "Not synchronised");
        assert_eq!(parse_sources(SOURCES_OK).unwrap(), vec![Source { mode: '^', state: '*', name: "10.0.2.2".into(), reach: 0o17 }]);
        assert_eq!(parse_sources("").unwrap(), vec![]);
        assert_eq!(parse_authdata(AUTHDATA_FAILED).unwrap(), vec![Auth { name: "10.0.2.2".into(), mode: "NTS".into(), attempts: 3, cookies: 0 }]);
        assert_eq!(nts_hosts(RENDERED), vec!["10.0.2.2".to_string()]);
        // Another chrony's layout, or an error text, is refused by name, not misread.
        assert!(parse_tracking("506 Cannot talk to daemon\n").unwrap_err().contains("1 fields where 14"));
        assert!(parse_tracking("").is_err());
        assert!(parse_sources("^,*,x,3,6,9z,1,0,0,0\n").unwrap_err().contains("not octal"));
        assert!(parse_tracking(&TRACKING_OK.replace("-0.000002014", "fast")).unwrap_err().contains("not a number"));
    }

    #[test]
    fn an_nts_source_selected_is_trusted() {
        let s = assess(&parse_tracking(TRACKING_OK).unwrap(), &parse_sources(SOURCES_OK).unwrap(), &nts_hosts(RENDERED), None);
        assert_eq!((s.synchronised, s.offset_seconds, s.source.as_deref(), s.authenticated), (true, Some(-0.000002014), Some("10.0.2.2"), Some(true)));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert!(s.trusted());
        // A sub-microsecond offset keeps its sign and magnitude (`{:.6}` printed "-0.000002 s",
        // and -1.6e-7 s as "-0.000000 s").
        assert_eq!(s.verdict().unwrap(), "Synchronised to 10.0.2.2 (NTS), offset -2.01e-6 s");
        // The same clock 2 s off is not.
        let mut t = parse_tracking(TRACKING_OK).unwrap();
        t.system_time = 2.0;
        assert!(!assess(&t, &parse_sources(SOURCES_OK).unwrap(), &nts_hosts(RENDERED), None).trusted());
    }

    #[test]
    fn a_failed_nts_key_establishment_is_named() {
        let s = assess(&parse_tracking(TRACKING_NONE).unwrap(), &parse_sources(SOURCES_UNREACHABLE).unwrap(), &nts_hosts(RENDERED), None);
        assert_eq!((s.synchronised, s.offset_seconds, s.source.clone(), s.authenticated), (false, None, None, None));
        assert_eq!(s.problems.len(), 1);
        assert!(s.problems[0].starts_with("NTS source 10.0.2.2: no authenticated answer (reach 0): its NTS key establishment"), "{:?}", s.problems);
        // With chronyd's authdata (root), its attempts and cookies too.
        let s = assess(&parse_tracking(TRACKING_NONE).unwrap(), &parse_sources(SOURCES_UNREACHABLE).unwrap(), &[], Some(&parse_authdata(AUTHDATA_FAILED).unwrap()));
        assert!(s.problems[0].contains("NTS-KE attempts 3, cookies 0"), "{:?}", s.problems);
        assert!(!s.trusted());
    }

    #[test]
    fn plain_ntp_and_no_source_are_named() {
        let plain = parse_sources(&SOURCES_OK.replace("10.0.2.2", "ntp.example")).unwrap();
        let s = assess(&parse_tracking(TRACKING_OK).unwrap(), &plain, &nts_hosts(RENDERED), None);
        assert_eq!(s.authenticated, Some(false));
        assert!(s.problems[0].contains("ntp.example is plain NTP, not authenticated"), "{:?}", s.problems);
        let s = assess(&parse_tracking(TRACKING_NONE).unwrap(), &[], &[], None);
        assert_eq!(s.problems, vec!["no time source is configured (credential swarmseal.ntp-servers)".to_string()]);
        // A hostile name is escaped.
        let evil = parse_sources("^,?,a\u{1b}[2Jb,0,7,0,4294967295,0,0,0\n").unwrap();
        let s = assess(&parse_tracking(TRACKING_NONE).unwrap(), &evil, &[], None);
        assert!(s.problems[0].contains("a\\u{1b}[2Jb"), "{:?}", s.problems);
    }
}
