//! The benchmark versions this crate implements, from one catalogue
//! ([`crate::checks::catalogue`], written in v1.6.0 numbering) and the ID mapping
//! between versions.
//!
//! CIS Docker Benchmark v1.8.0 (mid 2025; v1.7.0, Dec 2024, introduced the same
//! numbering) has 118 checks: one new, 2.7 "Ensure devicemapper storage driver is
//! not used", and v1.6.0's 2.7–2.18 renumbered 2.8–2.19 with their titles unchanged;
//! every other ID and title is v1.6.0's. Titles checked against the public
//! transcription of the v1.7.0/v1.8.0 section 2 list in
//! github.com/SaadatiReza/ansible-docker-cis-hardening,
//! `roles/daemon_configuration/README.md` (2.6 aufs, 2.7 devicemapper, 2.8 TLS
//! authentication, … 2.17 Userland Proxy), and against docker-bench-security issue
//! #573 ("Update for newest Benchmark v1.8.0"). The "(Automated)"/"(Manual)" profile
//! of the renumbered checks is v1.6.0's; the new 2.7 is Automated like 2.6 (aufs),
//! whose audit it mirrors (`docker info --format '{{ .Driver }}'`).

use crate::checks::{self, Check};

/// A CIS Docker Benchmark version: `--benchmark cis-1.8.0|cis-1.6.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Benchmark {
    /// CIS Docker Benchmark v1.6.0 (docker-bench-security v1.6.0's IDs): 117 checks.
    #[serde(rename = "cis-1.6.0")]
    Cis160,
    /// CIS Docker Benchmark v1.8.0: 118 checks (the default).
    #[default]
    #[serde(rename = "cis-1.8.0")]
    Cis180,
}

impl Benchmark {
    pub const ALL: [Benchmark; 2] = [Benchmark::Cis180, Benchmark::Cis160];

    /// The command-line and JSON name: `cis-1.8.0`.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Cis160 => "cis-1.6.0",
            Benchmark::Cis180 => "cis-1.8.0",
        }
    }

    /// The version number: `1.8.0`.
    pub fn version(self) -> &'static str {
        &self.name()[4..]
    }

    /// `CIS Docker Benchmark v1.8.0`
    pub fn title(self) -> String {
        format!("CIS Docker Benchmark v{}", self.version())
    }

    /// Parse `cis-1.8.0` / `cis-1.6.0` (also `1.8.0`, `1.6.0`).
    pub fn parse(s: &str) -> Option<Benchmark> {
        Benchmark::ALL.into_iter().find(|b| s == b.name() || s == b.version())
    }

    /// The ID this benchmark gives the check that v1.6.0 calls `v160_id`
    /// (v1.6.0 IDs are the catalogue's own).
    pub fn id_of(self, v160_id: &'static str) -> &'static str {
        match self {
            Benchmark::Cis160 => v160_id,
            Benchmark::Cis180 => V160_TO_V180.iter().find(|(old, _)| *old == v160_id).map(|(_, new)| *new).unwrap_or(v160_id),
        }
    }
}

/// v1.6.0 ID → v1.8.0 ID for the checks that moved (every other ID is the same;
/// v1.8.0's 2.7 has no v1.6.0 counterpart).
pub const V160_TO_V180: [(&str, &str); 12] = [
    ("2.7", "2.8"),
    ("2.8", "2.9"),
    ("2.9", "2.10"),
    ("2.10", "2.11"),
    ("2.11", "2.12"),
    ("2.12", "2.13"),
    ("2.13", "2.14"),
    ("2.14", "2.15"),
    ("2.15", "2.16"),
    ("2.16", "2.17"),
    ("2.17", "2.18"),
    ("2.18", "2.19"),
];

/// The checks of `b`, in report order, with `b`'s IDs (appliance checks `A.x` included).
pub fn catalogue(b: Benchmark) -> Vec<Check> {
    let mut out = Vec::new();
    for mut c in checks::catalogue() {
        let v160 = c.id;
        c.id = b.id_of(v160);
        out.push(c);
        if b == Benchmark::Cis180 && v160 == "2.6" {
            out.push(checks::devicemapper());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v1.8.0's section 2 as published (titles without the profile suffix).
    const V180_SECTION_2: [(&str, &str); 19] = [
        ("2.1", "Run the Docker daemon as a non-root user, if possible"),
        ("2.2", "Ensure network traffic is restricted between containers on the default bridge"),
        ("2.3", "Ensure the logging level is set to 'info'"),
        ("2.4", "Ensure Docker is allowed to make changes to iptables"),
        ("2.5", "Ensure insecure registries are not used"),
        ("2.6", "Ensure aufs storage driver is not used"),
        ("2.7", "Ensure devicemapper storage driver is not used"),
        ("2.8", "Ensure TLS authentication for Docker daemon is configured"),
        ("2.9", "Ensure the default ulimit is configured appropriately"),
        ("2.10", "Enable user namespace support"),
        ("2.11", "Ensure the default cgroup usage has been confirmed"),
        ("2.12", "Ensure base device size is not changed until needed"),
        ("2.13", "Ensure that authorization for Docker client commands is enabled"),
        ("2.14", "Ensure centralized and remote logging is configured"),
        ("2.15", "Ensure containers are restricted from acquiring new privileges"),
        ("2.16", "Ensure live restore is enabled"),
        ("2.17", "Ensure Userland Proxy is Disabled"),
        ("2.18", "Ensure that a daemon-wide custom seccomp profile is applied if appropriate"),
        ("2.19", "Ensure that experimental features are not implemented in production"),
    ];

    fn cis_only(b: Benchmark) -> Vec<Check> {
        catalogue(b).into_iter().filter(|c| !c.id.starts_with("A.")).collect()
    }

    #[test]
    fn v180_has_118_ids_with_its_titles() {
        let v180 = cis_only(Benchmark::Cis180);
        assert_eq!(v180.len(), 118);
        let mut ids: Vec<&str> = v180.iter().map(|c| c.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 118, "IDs are unique");
        let title = |id: &str| v180.iter().find(|c| c.id == id).map(|c| c.desc.rsplit_once(" (").unwrap().0).unwrap();
        for (id, t) in V180_SECTION_2 {
            assert_eq!(title(id), t, "{id}");
        }
        assert_eq!(v180.iter().filter(|c| c.id.starts_with("2.")).count(), 19);
        // Every other v1.8.0 check is v1.6.0's, same ID, same title.
        let v160 = cis_only(Benchmark::Cis160);
        assert_eq!(v160.len(), 117);
        for c in v160.iter().filter(|c| !c.id.starts_with("2.")) {
            assert_eq!(title(c.id), c.desc.rsplit_once(" (").unwrap().0, "{}", c.id);
        }
        // The mapping: v1.6.0 2.7 (TLS) is v1.8.0 2.8, 2.18 (experimental) is 2.19.
        let t160 = |id: &str| v160.iter().find(|c| c.id == id).unwrap().desc;
        for (old, new) in V160_TO_V180 {
            assert_eq!(v180.iter().find(|c| c.id == new).unwrap().desc, t160(old), "{old} → {new}");
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(Benchmark::default(), Benchmark::Cis180);
        assert_eq!(Benchmark::parse("cis-1.6.0"), Some(Benchmark::Cis160));
        assert_eq!(Benchmark::parse("1.8.0"), Some(Benchmark::Cis180));
        assert_eq!(Benchmark::parse("cis-1.7.0"), None);
        assert_eq!(Benchmark::Cis180.title(), "CIS Docker Benchmark v1.8.0");
    }
}
