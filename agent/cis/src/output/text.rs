//! A readable text report (`swarmseal bench`, the default format): one line per
//! check of the CIS Docker Benchmark v1.6.0 as docker-bench-security prints it,
//! detail lines, the remediation of each WARN, then the counts and the score.

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
