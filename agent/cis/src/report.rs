//! The result model, shared by every output format ([`crate::output`]): the four
//! statuses of docker-bench-security, one [`CheckResult`] per evaluated check, and
//! the [`Summary`] and score of a [`Report`] (docker-bench-security's scoring:
//! [`crate::Check::scored`]).

use crate::checks::Check;
use crate::Benchmark;

/// The four results of docker-bench-security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Status {
    Pass,
    Warn,
    Info,
    Note,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Info => "INFO",
            Status::Note => "NOTE",
        }
    }
}

/// What one evaluation found: a status, an operator sentence, and the
/// offending containers, images or files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub details: Option<String>,
    pub items: Vec<String>,
    /// The remediation for this host (naming the real path), instead of the check's generic one.
    pub remediation: Option<String>,
}

impl Outcome {
    /// There is no PASS without evidence: [`Outcome::pass_with`] names what was read.
    pub fn status(status: Status, details: impl Into<String>) -> Outcome {
        Outcome { status, details: Some(details.into()), items: vec![], remediation: None }
    }
    pub fn pass_with(details: impl Into<String>) -> Outcome {
        Outcome::status(Status::Pass, details)
    }
    pub fn warn(details: impl Into<String>) -> Outcome {
        Outcome::status(Status::Warn, details)
    }
    pub fn info(details: impl Into<String>) -> Outcome {
        Outcome::status(Status::Info, details)
    }
    pub fn note(details: impl Into<String>) -> Outcome {
        Outcome::status(Status::Note, details)
    }
    /// `status` with `details` and the offending `items`; docker-bench-security
    /// writes them as `details: "<details>: a b c"` plus `items: [a, b, c]`.
    pub fn items(status: Status, details: impl Into<String>, items: Vec<String>) -> Outcome {
        Outcome { status, details: Some(details.into()), items, remediation: None }
    }
    /// This outcome with a host-specific remediation.
    pub fn with_remediation(mut self, r: String) -> Outcome {
        self.remediation = Some(r);
        self
    }

    /// WARN listing `items` when there are any, else PASS with `evidence` (what was read).
    pub fn warn_if_any(details: impl Into<String>, items: Vec<String>, evidence: impl Into<String>) -> Outcome {
        if items.is_empty() {
            Outcome::pass_with(evidence)
        } else {
            Outcome::items(Status::Warn, details, items)
        }
    }
}

/// One evaluated check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub id: &'static str,
    pub desc: &'static str,
    /// Scored as docker-bench-security scores this check ([`Check::scored`]).
    pub scored: bool,
    /// The check's remediation, or the outcome's host-specific one.
    pub remediation: String,
    pub remediation_impact: &'static str,
    pub outcome: Outcome,
}

impl CheckResult {
    pub fn new(c: &Check, outcome: Outcome) -> CheckResult {
        let remediation = outcome.remediation.clone().unwrap_or_else(|| c.remediation.to_string());
        CheckResult { id: c.id, desc: c.desc, scored: c.scored(), remediation, remediation_impact: c.impact, outcome }
    }

    /// A result with placeholder texts, for the output formats' tests.
    #[cfg(test)]
    pub(crate) fn fake(id: &'static str, scored: bool, outcome: Outcome) -> CheckResult {
        CheckResult { id, desc: "d", scored, remediation: "fix it".into(), remediation_impact: "none", outcome }
    }

    /// The `details` string as docker-bench-security writes it.
    pub fn details_text(&self) -> Option<String> {
        let o = &self.outcome;
        match (&o.details, o.items.is_empty()) {
            (Some(d), true) => Some(d.clone()),
            (Some(d), false) => Some(format!("{d}: {}", o.items.join(" "))),
            (None, false) => Some(o.items.join(" ")),
            (None, true) => None,
        }
    }
}

/// A whole run: the benchmark version, the engine and host it ran against,
/// start/end (unix seconds) and the results in catalogue order.
#[derive(Debug, Clone)]
pub struct Report {
    pub benchmark: Benchmark,
    /// `GET /version` `Version` (empty when the engine did not say).
    pub engine_version: String,
    /// `GET /info` `Name`: the engine host's name (empty when the engine did not say).
    pub hostname: String,
    pub start: u64,
    pub end: u64,
    pub results: Vec<CheckResult>,
}

/// The numbers the boot flow logs as one journal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub checks: usize,
    pub pass: usize,
    pub warn: usize,
    pub info: usize,
    pub note: usize,
    pub score: i64,
}

impl Report {
    /// A v1.8.0 report with placeholder engine and host, for the output formats' tests.
    #[cfg(test)]
    pub(crate) fn fake(results: Vec<CheckResult>) -> Report {
        Report { benchmark: Benchmark::Cis180, engine_version: "20.10.24".into(), hostname: "node1".into(), start: 1, end: 2, results }
    }

    /// Counts and score of every result (appliance checks included): what the boot
    /// journal event and the text report give. Scored as [`Report::dbs_summary`].
    pub fn summary(&self) -> Summary {
        tally(self.results.iter())
    }

    /// Counts and score as docker-bench-security computes them
    /// (`functions/output_lib.sh`: `pass -s`/`warn -s` add 1/subtract 1 and count,
    /// `pass -c`/`info -c`/`note -c` only count): over sections 1–7 only, the
    /// appliance checks `A.x` are not docker-bench-security's and stay out.
    pub fn dbs_summary(&self) -> Summary {
        tally(self.results.iter().filter(|r| section_of(r.id) != "A"))
    }

    /// Any WARN (for `--fail-on warn`).
    pub fn has_warn(&self) -> bool {
        self.results.iter().any(|r| r.outcome.status == Status::Warn)
    }
}

/// Every result counts as a check; a scored one ([`CheckResult::scored`]) adds 1 on
/// PASS and subtracts 1 on WARN.
fn tally<'a>(results: impl Iterator<Item = &'a CheckResult>) -> Summary {
    let mut s = Summary { checks: 0, pass: 0, warn: 0, info: 0, note: 0, score: 0 };
    for r in results {
        s.checks += 1;
        match r.outcome.status {
            Status::Pass => {
                s.pass += 1;
                if r.scored {
                    s.score += 1;
                }
            }
            Status::Warn => {
                s.warn += 1;
                if r.scored {
                    s.score -= 1;
                }
            }
            Status::Info => s.info += 1,
            Status::Note => s.note += 1,
        }
    }
    s
}

/// The section of a check ID: `"5.12"` → `"5"`, `"1.1.3"` → `"1"`, `"A.2"` → `"A"`.
pub fn section_of(id: &str) -> &str {
    id.split('.').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_counts_like_docker_bench() {
        let rep = Report::fake(vec![
                CheckResult::fake("1.1.1", true, Outcome::pass_with("x")),
                CheckResult::fake("2.2", true, Outcome::warn("x")),
                CheckResult::fake("2.3", true, Outcome::warn("x")),
                CheckResult::fake("2.8", false, Outcome::pass_with("x")),
                CheckResult::fake("2.1", false, Outcome::info("x")),
                CheckResult::fake("4.2", false, Outcome::note("x")),
        ]);
        let s = rep.summary();
        assert_eq!((s.checks, s.pass, s.warn, s.info, s.note, s.score), (6, 2, 2, 1, 1, -1));
        // docker-bench-security's numbers leave the appliance checks out.
        let mut rep = rep;
        rep.results.push(CheckResult::fake("A.1", true, Outcome::warn("x")));
        let (all, dbs) = (rep.summary(), rep.dbs_summary());
        assert_eq!((all.checks, all.score), (7, -2));
        assert_eq!((dbs.checks, dbs.score), (6, -1));
    }
}
