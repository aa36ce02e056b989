//! Which checks run: the benchmark version, its IDs (`2.2`, `5.12`), section or
//! group prefixes (`5`, `1.1`) and the appliance section (`A`, `A.3`).

use crate::{catalogue, Benchmark};

/// Which checks to run: `only` empty means all; entries are IDs or section prefixes
/// in the IDs of `benchmark` (v1.8.0 by default).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub benchmark: Benchmark,
    pub only: Vec<String>,
    pub exclude: Vec<String>,
}

impl Selection {
    /// `id` matches a selector equal to it or a section/group prefix of it (`5` → `5.12`).
    pub fn matches(sel: &str, id: &str) -> bool {
        let sel = sel.trim();
        !sel.is_empty() && (id == sel || id.strip_prefix(sel).is_some_and(|rest| rest.starts_with('.')))
    }

    pub fn includes(&self, id: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|s| Self::matches(s, id))) && !self.exclude.iter().any(|s| Self::matches(s, id))
    }

    /// Selectors that match no check (typos), for a usage error.
    pub fn unknown(&self) -> Vec<String> {
        let cat = catalogue(self.benchmark);
        self.only.iter().chain(&self.exclude).filter(|s| !s.trim().is_empty() && !cat.iter().any(|c| Self::matches(s, c.id))).cloned().collect()
    }

    /// No check of the benchmark is selected (`--check 2.2 --exclude 2`), for a usage error.
    pub fn is_empty(&self) -> bool {
        !catalogue(self.benchmark).iter().any(|c| self.includes(c.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_id_and_section() {
        let s = Selection { only: vec!["5".into(), "1.1".into(), "A.3".into()], exclude: vec!["5.12".into()], ..Default::default() };
        assert!(s.includes("5.1"));
        assert!(s.includes("5.32"));
        assert!(!s.includes("5.12"));
        assert!(s.includes("1.1.3"));
        assert!(!s.includes("1.2.1"));
        assert!(!s.includes("1.10"));
        assert!(s.includes("A.3"));
        assert!(!s.includes("A.1"));
        assert!(!s.includes("2.2"));
        assert_eq!(Selection { only: vec!["9.9".into()], ..Default::default() }.unknown(), vec!["9.9"]);
        assert!(Selection { only: vec!["2".into()], exclude: vec!["A".into()], ..Default::default() }.unknown().is_empty());
        // 2.19 exists only in v1.8.0.
        assert!(Selection { only: vec!["2.19".into()], ..Default::default() }.unknown().is_empty());
        assert_eq!(Selection { benchmark: Benchmark::Cis160, only: vec!["2.19".into()], exclude: vec![] }.unknown(), vec!["2.19"]);
        assert!(Selection { only: vec!["2.2".into()], exclude: vec!["2".into()], ..Default::default() }.is_empty());
        assert!(!s.is_empty());
    }
}
