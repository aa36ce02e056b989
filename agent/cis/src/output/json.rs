//! The docker-bench-security log format (`docker-bench-security.log.json`, as
//! docker-bench-security v1.6.0 writes it for the CIS Docker Benchmark v1.6.0):
//! the layout `swarmseal bench --format json`, the boot report and
//! `GET /swarmseal/v1/bench` serve.
//!
//! Sections 1–7 follow docker-bench-security v1.6.0 (github.com/docker/docker-bench-security,
//! `functions/output_lib.sh` for the layout and score, `tests/*.sh` for the titles):
//! its titles ([`dbs_desc`]: "(Scored)" in section 2, its wording of 1.1.11 and
//! 1.1.12), its score ([`Report::dbs_summary`]), remediation on every result but
//! PASS (as its `-p` run writes it). The appliance checks are a test of their own
//! (`"id": "A"`) outside `checks` and `score`. What still differs: docs/cis.md.

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
    /// CIS version whose IDs the results carry). Sections without results are left
    /// out; `checks` and `score` count sections 1–7 only.
    pub fn to_json(&self) -> Value {
        let mut tests = Vec::new();
        for (sid, sdesc) in SECTIONS {
            let results: Vec<Value> = self.results.iter().filter(|r| section_of(r.id) == *sid).map(result_json).collect();
            if !results.is_empty() {
                tests.push(json!({ "id": sid, "desc": sdesc, "results": results }));
            }
        }
        let s = self.dbs_summary();
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

/// The title as docker-bench-security v1.6.0 writes it (`tests/1_host_configuration.sh`,
/// `tests/2_docker_daemon_configuration.sh`): its section 2 says "(Scored)" where the
/// benchmark says "(Automated)"; 1.1.11 reads "Dockerfiles", and 1.1.12's title
/// starts with its own ID. Under `cis-1.8.0` the same check gets the same title
/// (1.1.x and 2.x keep their section), and the new 2.7 (devicemapper) says
/// "(Scored)" like its neighbour 2.6. Every other title is the benchmark's.
pub fn dbs_desc(r: &CheckResult) -> String {
    const DAEMON_JSON: &str = "Ensure auditing is configured for Dockerfiles and directories - /etc/docker/daemon.json (Automated)";
    const CONTAINERD_TOML: &str = "1.1.12 Ensure auditing is configured for Dockerfiles and directories - /etc/containerd/config.toml (Automated)";
    match r.id {
        "1.1.11" => DAEMON_JSON.to_string(),
        "1.1.12" => CONTAINERD_TOML.to_string(),
        id if section_of(id) == "2" => match r.desc.strip_suffix(" (Automated)") {
            Some(t) => format!("{t} (Scored)"),
            None => r.desc.to_string(),
        },
        _ => r.desc.to_string(),
    }
}

fn result_json(r: &CheckResult) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), r.id.into());
    m.insert("desc".into(), dbs_desc(r).into());
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
        let rep = Report::fake(vec![CheckResult::fake("5.5", true, Outcome::items(Status::Warn, "Privileged", vec!["a".into(), "b".into()])), CheckResult::fake("5.4", true, Outcome::pass_with("read"))]);
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

    #[test]
    fn titles_and_score_as_docker_bench_writes_them_appliance_apart() {
        let mut rs: Vec<CheckResult> = crate::catalogue(crate::Benchmark::Cis160).iter().map(|c| CheckResult::new(c, Outcome::pass_with("read"))).collect();
        let desc = |j: &Value, id: &str| -> String {
            j["tests"].as_array().unwrap().iter().flat_map(|t| t["results"].as_array().unwrap()).find(|r| r["id"] == id).unwrap()["desc"].as_str().unwrap().to_string()
        };
        let j = Report::fake(rs.clone()).to_json();
        assert_eq!(desc(&j, "2.2"), "Ensure network traffic is restricted between containers on the default bridge (Scored)");
        assert_eq!(desc(&j, "2.8"), "Ensure the default ulimit is configured appropriately (Manual)");
        assert_eq!(desc(&j, "1.1.12"), "1.1.12 Ensure auditing is configured for Dockerfiles and directories - /etc/containerd/config.toml (Automated)");
        assert_eq!(desc(&j, "5.9"), "Ensure that only needed ports are open on the container (Manual)");
        // 17 titles differ from the benchmark's: 1.1.11, 1.1.12 and 15 in section 2.
        let changed = rs.iter().filter(|r| dbs_desc(r) != r.desc).count();
        assert_eq!(changed, 17);
        // Appliance checks: their own test, not in checks or score.
        let cis = rs.iter().filter(|r| section_of(r.id) != "A").count();
        let scored = rs.iter().filter(|r| section_of(r.id) != "A" && r.scored).count();
        assert_eq!(j["checks"], cis as u64);
        assert_eq!(j["score"], scored as i64);
        assert_eq!(j["tests"].as_array().unwrap().last().unwrap()["id"], "A");
        // 5.9 is Manual yet scored by docker-bench-security.
        assert!(rs.iter().find(|r| r.id == "5.9").unwrap().scored);
        for r in rs.iter_mut() {
            r.outcome = Outcome::warn("x");
        }
        let j = Report::fake(rs).to_json();
        assert_eq!(j["score"], -(scored as i64));
    }
}
