//! SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format), what code-scanning
//! systems read: one run of `swarmseal bench`; one rule per evaluated check (ID,
//! title, remediation as `help`); one result per WARN item, located where the item
//! has a place: a host file (`physicalLocation`, `file://` URI) or a container,
//! image or network (`logicalLocations`). A WARN without items is one result
//! without location. PASS, INFO and NOTE produce no result; their rules stay listed.

use serde::Serialize;

use crate::report::{section_of, CheckResult, Report, Status};

const SCHEMA_URI: &str = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json";

#[derive(Serialize)]
struct Log<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    runs: Vec<Run<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Run<'a> {
    tool: Tool<'a>,
    invocations: Vec<Invocation>,
    results: Vec<SarifResult>,
    properties: RunProperties<'a>,
}

#[derive(Serialize)]
struct Tool<'a> {
    driver: Driver<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Driver<'a> {
    name: &'static str,
    full_name: String,
    version: &'static str,
    rules: Vec<Rule<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule<'a> {
    id: &'a str,
    name: String,
    short_description: Text,
    help: Text,
    properties: RuleProperties<'a>,
}

#[derive(Serialize)]
struct RuleProperties<'a> {
    /// The section, and `scored` for Automated checks.
    tags: Vec<String>,
    #[serde(rename = "remediationImpact", skip_serializing_if = "str::is_empty")]
    remediation_impact: &'a str,
}

#[derive(Serialize)]
struct Text {
    text: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Invocation {
    execution_successful: bool,
    start_time_utc: String,
    end_time_utc: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    machine: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunProperties<'a> {
    benchmark: &'static str,
    engine_version: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    rule_id: String,
    rule_index: usize,
    level: &'static str,
    message: Text,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    locations: Vec<Location>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    #[serde(skip_serializing_if = "Option::is_none")]
    physical_location: Option<PhysicalLocation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    logical_locations: Vec<LogicalLocation>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    artifact_location: ArtifactLocation,
}

#[derive(Serialize)]
struct ArtifactLocation {
    uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogicalLocation {
    name: String,
    fully_qualified_name: String,
    kind: &'static str,
}

impl Report {
    /// The report as a SARIF 2.1.0 log (pretty JSON with a final newline).
    pub fn to_sarif_text(&self) -> String {
        let rules = self.results.iter().map(rule).collect();
        let results = self.results.iter().enumerate().filter(|(_, r)| r.outcome.status == Status::Warn).flat_map(|(i, r)| results_of(i, r)).collect();
        let log = Log {
            schema: SCHEMA_URI,
            version: "2.1.0",
            runs: vec![Run {
                tool: Tool { driver: Driver { name: "swarmseal bench", full_name: format!("swarmseal bench ({})", self.benchmark.title()), version: env!("CARGO_PKG_VERSION"), rules } },
                invocations: vec![Invocation { execution_successful: true, start_time_utc: super::utc(self.start), end_time_utc: super::utc(self.end), machine: self.hostname.clone() }],
                results,
                properties: RunProperties { benchmark: self.benchmark.name(), engine_version: &self.engine_version },
            }],
        };
        let mut t = serde_json::to_string_pretty(&log).expect("a SARIF log serialises");
        t.push('\n');
        t
    }
}

fn rule(r: &CheckResult) -> Rule<'_> {
    let mut tags = vec![format!("section-{}", section_of(r.id))];
    if r.scored {
        tags.push("scored".into());
    }
    Rule {
        id: r.id,
        name: format!("CIS {}", r.id),
        short_description: Text { text: r.desc.to_string() },
        help: Text { text: if r.remediation.is_empty() { "No remediation given.".into() } else { r.remediation.clone() } },
        properties: RuleProperties { tags, remediation_impact: r.remediation_impact },
    }
}

/// One result per item of a WARN (one without location when it has none).
fn results_of(rule_index: usize, r: &CheckResult) -> Vec<SarifResult> {
    let o = &r.outcome;
    let detail = o.details.clone().unwrap_or_default();
    let message = |item: Option<&str>| {
        let mut m = format!("{} {}", r.id, r.desc);
        for part in [Some(detail.as_str()), item].into_iter().flatten().filter(|p| !p.is_empty()) {
            m.push_str(": ");
            m.push_str(part);
        }
        Text { text: m }
    };
    let one = |item: Option<&str>| SarifResult { rule_id: r.id.to_string(), rule_index, level: "warning", message: message(item), locations: item.map(|i| location(r.id, i)).into_iter().collect() };
    if o.items.is_empty() {
        vec![one(None)]
    } else {
        o.items.iter().map(|i| one(Some(i))).collect()
    }
}

/// Where an item points: in sections 1 and 3 (host files) an absolute path
/// (`/etc/docker(777)` → `/etc/docker`) is a file; in section 4 an image, in
/// section 5 a container, otherwise an object named by the item (networks of 7.3,
/// listeners of A.3).
fn location(id: &str, item: &str) -> Location {
    let path = item.strip_suffix(')').and_then(|s| s.rsplit_once('(')).map(|(p, _)| p).unwrap_or(item);
    if matches!(section_of(id), "1" | "3") && path.starts_with('/') {
        return Location { physical_location: Some(PhysicalLocation { artifact_location: ArtifactLocation { uri: file_uri(path) } }), logical_locations: vec![] };
    }
    let kind = match section_of(id) {
        "4" => "image",
        "5" => "container",
        _ => "object",
    };
    Location { physical_location: None, logical_locations: vec![LogicalLocation { name: item.to_string(), fully_qualified_name: format!("{kind}/{item}"), kind: "resource" }] }
}

/// `file://` URI of an absolute path, percent-encoding what a URI path may not hold.
fn file_uri(path: &str) -> String {
    let mut u = String::from("file://");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~:@!$&'()*+,;=".contains(&b) {
            u.push(b as char);
        } else {
            u.push_str(&format!("%{b:02X}"));
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;

    #[test]
    fn one_rule_per_check_one_result_per_warn_item() {
        let rep = Report::fake(vec![
            CheckResult::fake("3.6", true, Outcome::items(Status::Warn, "Wrong permissions for", vec!["/etc/docker dir(777)".into()])),
            CheckResult::fake("5.5", true, Outcome::items(Status::Warn, "Privileged", vec!["a".into(), "b".into()])),
            CheckResult::fake("2.2", true, Outcome::warn("icc is not set to false")),
            CheckResult::fake("5.4", true, Outcome::pass_with("read")),
            CheckResult::fake("4.5", false, Outcome::note("x")),
        ]);
        let v: serde_json::Value = serde_json::from_str(&rep.to_sarif_text()).unwrap();
        let run = &v["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"].as_array().unwrap().len(), 5);
        assert_eq!(run["tool"]["driver"]["rules"][0]["help"]["text"], "fix it");
        let res = run["results"].as_array().unwrap();
        assert_eq!(res.len(), 4);
        assert_eq!(res[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], "file:///etc/docker%20dir");
        assert_eq!(res[1]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"], "container/a");
        assert_eq!(res[2]["ruleIndex"], 1);
        assert!(res[3].get("locations").is_none());
        assert_eq!(res[3]["message"]["text"], "2.2 d: icc is not set to false");
        assert_eq!(run["properties"]["benchmark"], "cis-1.8.0");
    }
}
