//! Results, scoring and output: the docker-bench-security log format
//! (`docker-bench-security.log.json`) and a readable text report.

use serde_json::{json, Map, Value};

use super::checks::{Check, SECTIONS};

/// Version string written as `dockerbenchsecurity`: the docker-bench-security
/// release whose IDs, titles and JSON layout this report follows.
pub const DOCKER_BENCH_VERSION: &str = "1.6.0";

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
}

impl Outcome {
    pub fn pass() -> Outcome {
        Outcome { status: Status::Pass, details: None, items: vec![] }
    }
    pub fn status(status: Status, details: impl Into<String>) -> Outcome {
        Outcome { status, details: Some(details.into()), items: vec![] }
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
        Outcome { status, details: Some(details.into()), items }
    }
    /// WARN listing `items` when there are any, else PASS.
    pub fn warn_if_any(details: impl Into<String>, items: Vec<String>) -> Outcome {
        if items.is_empty() {
            Outcome::pass()
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
    pub scored: bool,
    pub remediation: &'static str,
    pub remediation_impact: &'static str,
    pub outcome: Outcome,
}

impl CheckResult {
    pub fn new(c: &Check, outcome: Outcome) -> CheckResult {
        CheckResult { id: c.id, desc: c.desc, scored: c.scored(), remediation: c.remediation, remediation_impact: c.impact, outcome }
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

/// A whole run: start/end (unix seconds) and the results in catalogue order.
#[derive(Debug, Clone)]
pub struct Report {
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
    /// Counts and score, computed as docker-bench-security does
    /// (`functions/output_lib.sh`): every result counts as a check; a scored
    /// (Automated) check adds 1 on PASS and subtracts 1 on WARN.
    pub fn summary(&self) -> Summary {
        let mut s = Summary { checks: self.results.len(), pass: 0, warn: 0, info: 0, note: 0, score: 0 };
        for r in &self.results {
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

    /// Any WARN (for `--fail-on warn`).
    pub fn has_warn(&self) -> bool {
        self.results.iter().any(|r| r.outcome.status == Status::Warn)
    }

    /// The report in docker-bench-security's `docker-bench-security.log.json`
    /// layout: `dockerbenchsecurity`, `start`, `tests[{id, desc, results[…]}]`,
    /// `checks`, `score`, `end`. Sections without results are left out.
    pub fn to_json(&self) -> Value {
        let mut tests = Vec::new();
        for (sid, sdesc) in SECTIONS {
            let results: Vec<Value> = self.results.iter().filter(|r| section_of(r.id) == *sid).map(result_json).collect();
            if !results.is_empty() {
                tests.push(json!({ "id": sid, "desc": sdesc, "results": results }));
            }
        }
        let s = self.summary();
        json!({
            "dockerbenchsecurity": DOCKER_BENCH_VERSION,
            "start": self.start,
            "tests": tests,
            "checks": s.checks,
            "score": s.score,
            "end": self.end,
        })
    }

    /// Readable text, one line per check plus detail lines; ANSI colour when `colour`.
    pub fn to_text(&self, colour: bool) -> String {
        let paint = |st: Status| -> String {
            let tag = format!("[{}]", st.as_str());
            if !colour {
                return tag;
            }
            let code = match st {
                Status::Pass => "1;32",
                Status::Warn => "1;31",
                Status::Info => "1;34",
                Status::Note => "1;33",
            };
            format!("\x1b[{code}m{tag}\x1b[0m")
        };
        let mut out = String::new();
        for (sid, sdesc) in SECTIONS {
            let rs: Vec<&CheckResult> = self.results.iter().filter(|r| section_of(r.id) == *sid).collect();
            if rs.is_empty() {
                continue;
            }
            out.push_str(&format!("{} {sid} - {sdesc}\n", paint(Status::Info)));
            for r in rs {
                let st = r.outcome.status;
                out.push_str(&format!("{} {} - {}\n", paint(st), r.id, r.desc));
                if let Some(d) = &r.outcome.details {
                    out.push_str(&format!("{}      * {d}\n", paint(st)));
                }
                for it in &r.outcome.items {
                    out.push_str(&format!("{}      * {it}\n", paint(st)));
                }
                if st == Status::Warn && !r.remediation.is_empty() {
                    out.push_str(&format!("         Remediation: {}\n", r.remediation));
                }
            }
            out.push('\n');
        }
        let s = self.summary();
        out.push_str(&format!(
            "{} Checks: {}  PASS: {}  WARN: {}  INFO: {}  NOTE: {}\n{} Score: {}\n",
            paint(Status::Info),
            s.checks,
            s.pass,
            s.warn,
            s.info,
            s.note,
            paint(Status::Info),
            s.score
        ));
        out
    }
}

fn result_json(r: &CheckResult) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), r.id.into());
    m.insert("desc".into(), r.desc.into());
    m.insert("result".into(), r.outcome.status.as_str().into());
    if let Some(d) = r.details_text() {
        m.insert("details".into(), d.into());
    }
    if !r.outcome.items.is_empty() {
        m.insert("items".into(), r.outcome.items.clone().into());
    }
    if r.outcome.status != Status::Pass && !r.remediation.is_empty() {
        m.insert("remediation".into(), r.remediation.into());
        if !r.remediation_impact.is_empty() {
            m.insert("remediation-impact".into(), r.remediation_impact.into());
        }
    }
    Value::Object(m)
}

/// The section of a check ID: `"5.12"` → `"5"`, `"1.1.3"` → `"1"`, `"A.2"` → `"A"`.
pub fn section_of(id: &str) -> &str {
    id.split('.').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &'static str, scored: bool, o: Outcome) -> CheckResult {
        CheckResult { id, desc: "d", scored, remediation: "fix it", remediation_impact: "none", outcome: o }
    }

    #[test]
    fn score_counts_like_docker_bench() {
        let rep = Report {
            start: 1,
            end: 2,
            results: vec![
                r("1.1.1", true, Outcome::pass()),
                r("2.2", true, Outcome::warn("x")),
                r("2.3", true, Outcome::warn("x")),
                r("2.8", false, Outcome::pass()),
                r("2.1", false, Outcome::info("x")),
                r("4.2", false, Outcome::note("x")),
            ],
        };
        let s = rep.summary();
        assert_eq!((s.checks, s.pass, s.warn, s.info, s.note, s.score), (6, 2, 2, 1, 1, -1));
    }

    #[test]
    fn json_items_and_remediation_only_when_not_pass() {
        let rep = Report {
            start: 1,
            end: 2,
            results: vec![r("5.5", true, Outcome::items(Status::Warn, "Privileged", vec!["a".into(), "b".into()])), r("5.4", true, Outcome::pass())],
        };
        let j = rep.to_json();
        let res = &j["tests"][0]["results"];
        assert_eq!(j["tests"][0]["id"], "5");
        assert_eq!(res[0]["details"], "Privileged: a b");
        assert_eq!(res[0]["items"], json!(["a", "b"]));
        assert_eq!(res[0]["remediation"], "fix it");
        assert!(res[1].get("remediation").is_none());
        assert_eq!(j["checks"], 2);
        assert_eq!(j["score"], 0);
    }
}
