//! The docker-bench-security log format (`docker-bench-security.log.json`, as
//! docker-bench-security v1.6.0 writes it for the CIS Docker Benchmark v1.6.0):
//! the layout `swarmseal bench --format json`, the boot report and
//! `GET /swarmseal/v1/bench` serve, byte for byte.

use serde_json::{json, Map, Value};

use crate::checks::SECTIONS;
use crate::report::{section_of, CheckResult, Report, Status};

/// Version string written as `dockerbenchsecurity`: the docker-bench-security
/// release whose IDs, titles and JSON layout this report follows.
pub const DOCKER_BENCH_VERSION: &str = "1.6.0";

impl Report {
    /// The report in docker-bench-security's `docker-bench-security.log.json`
    /// layout: `dockerbenchsecurity`, `start`, `tests[{id, desc, results[…]}]`,
    /// `checks`, `score`, `end`, plus `benchmark` (`cis-1.8.0` or `cis-1.6.0`: the
    /// CIS version whose IDs and titles the results carry). Sections without results are left out.
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
            "benchmark": self.benchmark.name(),
            "start": self.start,
            "tests": tests,
            "checks": s.checks,
            "score": s.score,
            "end": self.end,
        })
    }

    /// [`Report::to_json`] pretty-printed with a final newline: the bytes of a
    /// JSON report file and of `--format json` on standard output.
    pub fn to_json_text(&self) -> String {
        let mut t = serde_json::to_string_pretty(&self.to_json()).expect("a report serialises");
        t.push('\n');
        t
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
        m.insert("remediation".into(), r.remediation.clone().into());
        if !r.remediation_impact.is_empty() {
            m.insert("remediation-impact".into(), r.remediation_impact.into());
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;

    #[test]
    fn json_items_and_remediation_only_when_not_pass() {
        let rep = Report::fake(vec![CheckResult::fake("5.5", true, Outcome::items(Status::Warn, "Privileged", vec!["a".into(), "b".into()])), CheckResult::fake("5.4", true, Outcome::pass())]);
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
