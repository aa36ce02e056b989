//! Which checks run: CIS Docker Benchmark v1.6.0 IDs (`2.2`, `5.12`), section or
//! group prefixes (`5`, `1.1`) and the appliance section (`A`, `A.3`).

use crate::catalogue;

/// Which checks to run: `only` empty means all; entries are IDs or section prefixes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
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
        let cat = catalogue();
        self.only.iter().chain(&self.exclude).filter(|s| !s.trim().is_empty() && !cat.iter().any(|c| Self::matches(s, c.id))).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_id_and_section() {
        let s = Selection { only: vec!["5".into(), "1.1".into(), "A.3".into()], exclude: vec!["5.12".into()] };
        assert!(s.includes("5.1"));
        assert!(s.includes("5.32"));
        assert!(!s.includes("5.12"));
        assert!(s.includes("1.1.3"));
        assert!(!s.includes("1.2.1"));
        assert!(!s.includes("1.10"));
        assert!(s.includes("A.3"));
        assert!(!s.includes("A.1"));
        assert!(!s.includes("2.2"));
        assert_eq!(Selection { only: vec!["9.9".into()], exclude: vec![] }.unknown(), vec!["9.9"]);
        assert!(Selection { only: vec!["2".into()], exclude: vec!["A".into()] }.unknown().is_empty());
    }
}
