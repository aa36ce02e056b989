//! JUnit XML, what CI systems read: one `<testsuite>` per section, one
//! `<testcase>` per evaluated check; WARN is a `<failure>` (details, items,
//! remediation), INFO and NOTE are `<skipped>` with their reason, PASS carries
//! its evidence in `<system-out>`. Written with quick-xml's writer (escaping included).

use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use crate::checks::SECTIONS;
use crate::report::{section_of, CheckResult, Report, Status};

impl Report {
    /// The report as a JUnit XML document (`<testsuites>`), UTF-8, final newline.
    pub fn to_junit_text(&self) -> String {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        self.write_junit(&mut w).expect("writing XML to memory does not fail");
        let mut out = String::from_utf8(w.into_inner()).expect("the XML is UTF-8");
        out.push('\n');
        out
    }

    fn write_junit(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let counts = |rs: &[&CheckResult]| {
            let n = |st: Status| rs.iter().filter(|r| r.outcome.status == st).count();
            (rs.len().to_string(), n(Status::Warn).to_string(), (n(Status::Info) + n(Status::Note)).to_string())
        };
        let all: Vec<&CheckResult> = self.results.iter().collect();
        let (tests, failures, skipped) = counts(&all);
        let time = self.end.saturating_sub(self.start).to_string();
        let stamp = super::utc(self.start);
        w.create_element("testsuites")
            .with_attributes([("name", self.benchmark.title().as_str()), ("tests", &tests), ("failures", &failures), ("errors", "0"), ("skipped", &skipped), ("time", &time), ("timestamp", &stamp)])
            .write_inner_content(|w| {
                for (sid, sdesc) in SECTIONS {
                    let rs: Vec<&CheckResult> = self.results.iter().filter(|r| section_of(r.id) == *sid).collect();
                    if rs.is_empty() {
                        continue;
                    }
                    let (tests, failures, skipped) = counts(&rs);
                    let name = format!("{sid} - {sdesc}");
                    w.create_element("testsuite")
                        .with_attributes([("name", name.as_str()), ("tests", &tests), ("failures", &failures), ("errors", "0"), ("skipped", &skipped), ("timestamp", &stamp), ("hostname", &self.hostname)])
                        .write_inner_content(|w| {
                            w.create_element("properties").write_inner_content(|w| {
                                for (k, v) in [("benchmark", self.benchmark.name()), ("engine-version", self.engine_version.as_str())] {
                                    w.create_element("property").with_attributes([("name", k), ("value", v)]).write_empty()?;
                                }
                                Ok(())
                            })?;
                            for r in rs {
                                testcase(w, r)?;
                            }
                            Ok(())
                        })?;
                }
                Ok(())
            })?;
        Ok(())
    }
}

fn testcase(w: &mut Writer<Vec<u8>>, r: &CheckResult) -> io::Result<()> {
    let name = format!("{} - {}", r.id, r.desc);
    let classname = format!("cis.section{}", section_of(r.id));
    let details = xml_safe(&r.details_text().unwrap_or_default());
    w.create_element("testcase").with_attributes([("name", name.as_str()), ("classname", classname.as_str())]).write_inner_content(|w| {
        match r.outcome.status {
            Status::Warn => {
                let mut body = details.clone();
                if !r.remediation.is_empty() {
                    body.push_str(&format!("\nRemediation: {}", xml_safe(&r.remediation)));
                }
                w.create_element("failure").with_attributes([("message", details.as_str()), ("type", "WARN")]).write_text_content(BytesText::new(&body))?;
            }
            st @ (Status::Info | Status::Note) => {
                let message = format!("{}: {}", st.as_str(), if details.is_empty() { "no reason given" } else { details.as_str() });
                w.create_element("skipped").with_attribute(("message", message.as_str())).write_empty()?;
            }
            Status::Pass => {
                if !details.is_empty() {
                    w.create_element("system-out").write_text_content(BytesText::new(&format!("PASS: {details}")))?;
                }
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// XML 1.0 cannot carry most control characters, even escaped: replace them.
fn xml_safe(s: &str) -> String {
    s.chars().map(|c| if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') { '\u{FFFD}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;

    #[test]
    fn warn_fails_info_and_note_skip_with_reason() {
        let rep = Report::fake(vec![
            CheckResult::fake("5.5", true, Outcome::items(Status::Warn, "Privileged <&>", vec!["a".into()])),
            CheckResult::fake("5.4", true, Outcome::pass_with("none privileged")),
            CheckResult::fake("4.5", false, Outcome::note("DOCKER_CONTENT_TRUST unset\u{1b}")),
            CheckResult::fake("2.1", false, Outcome::info("root")),
        ]);
        let x = rep.to_junit_text();
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"), "{x}");
        assert!(x.contains(r#"<testsuites name="CIS Docker Benchmark v1.8.0" tests="4" failures="1" errors="0" skipped="2""#), "{x}");
        assert!(x.contains(r#"<failure message="Privileged &lt;&amp;&gt;: a" type="WARN">"#), "{x}");
        assert!(x.contains(r#"<skipped message="NOTE: DOCKER_CONTENT_TRUST unset�"/>"#), "{x}");
        assert!(x.contains("PASS: none privileged"), "{x}");
    }
}
