//! A readable text report (`swarmseal bench`, the default format): a header line
//! (benchmark version, engine version, host, time), then one line per check as
//! docker-bench-security prints it, detail lines, the remediation of each WARN,
//! then the counts and the score.

use crate::checks::SECTIONS;
use crate::report::{section_of, CheckResult, Report, Status};

impl Report {
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
        let mut out = format!("{}\n\n", self.header());
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

    /// `CIS Docker Benchmark v1.8.0 | Docker Engine 20.10.24 | host node1 | 2026-12-06T18:50:00Z`
    /// (the start time, UTC).
    pub fn header(&self) -> String {
        let or_unknown = |s: &str| if s.is_empty() { "unknown".to_string() } else { s.to_string() };
        format!("{} | Docker Engine {} | host {} | {}", self.benchmark.title(), or_unknown(&self.engine_version), or_unknown(&self.hostname), crate::output::utc(self.start))
    }
}

#[cfg(test)]
mod tests {
    use crate::report::{CheckResult, Outcome, Report};

    #[test]
    fn header_names_benchmark_engine_host_and_time() {
        let t = Report::fake(vec![CheckResult::fake("2.7", true, Outcome::warn("Storage driver is devicemapper"))]).to_text(false);
        let first = t.lines().next().unwrap();
        assert_eq!(first, "CIS Docker Benchmark v1.8.0 | Docker Engine 20.10.24 | host node1 | 1970-01-01T00:00:01Z");
        assert!(t.contains("[WARN] 2.7 - d\n"), "{t}");
    }
}
