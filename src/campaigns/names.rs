//! The browser and OS names a targeting list can usefully contain: the families the bundled
//! uap-core rules can produce ([`crate::visitor::families::bundled`], the set the parser
//! serves), so that `rotator check` and each reload can warn about a name no visitor will have.
//! Built once per process, on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::visitor::families;
use crate::visitor::user_agent::BROWSER_GROUPS;

/// How many close names a warning suggests.
const MAX_SUGGESTIONS: usize = 3;

/// A set of names, looked up case-insensitively as targeting matches.
#[derive(Debug, Default)]
pub struct Names {
    /// Lower-case name → the name as the rules spell it.
    by_key: HashMap<String, String>,
}

impl Names {
    fn insert(&mut self, name: &str) {
        let name = name.trim();
        if !name.is_empty() {
            self.by_key
                .entry(name.to_lowercase())
                .or_insert_with(|| name.to_string());
        }
    }

    /// Whether `name` is one of the names, ignoring case.
    pub fn contains(&self, name: &str) -> bool {
        self.by_key.contains_key(&name.to_lowercase())
    }

    /// The names closest to `name` by edit distance (ignoring case), nearest first; only those
    /// within a third of the name's length (at least 2 edits), so unrelated names are not offered.
    pub fn closest(&self, name: &str) -> Vec<&str> {
        let key = name.to_lowercase();
        let limit = (key.chars().count() / 3).max(2);
        let mut near: Vec<(usize, &str)> = self
            .by_key
            .iter()
            .map(|(k, v)| (strsim::levenshtein(&key, k), v.as_str()))
            .filter(|(d, _)| *d <= limit)
            .collect();
        near.sort_unstable();
        near.into_iter()
            .take(MAX_SUGGESTIONS)
            .map(|(_, v)| v)
            .collect()
    }
}

/// Browser and OS families of the bundled rules.
#[derive(Debug, Default)]
pub struct KnownNames {
    /// Browser families, plus "Other" (what an unknown agent is called).
    pub browsers: Names,
    /// OS families, plus "Other".
    pub os: Names,
}

/// The families of the bundled rules, built on first use. `None` if the embedded rules do not
/// parse (a build defect that `UserAgentParser::new` reports); then nothing is warned about.
pub fn known() -> Option<&'static KnownNames> {
    static KNOWN: OnceLock<Option<KnownNames>> = OnceLock::new();
    KNOWN.get_or_init(build).as_ref()
}

fn build() -> Option<KnownNames> {
    let names = families::bundled()?;
    let mut known = KnownNames::default();
    for name in &names.browsers {
        known.browsers.insert(name);
    }
    for name in &names.os {
        known.os.insert(name);
    }
    for (base, _) in BROWSER_GROUPS {
        known.browsers.insert(base);
    }
    known.browsers.insert("Other");
    known.os.insert("Other");
    Some(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_rules_name_the_common_families() {
        let known = known().unwrap();
        for b in [
            "Chrome",
            "chrome mobile",
            "Firefox",
            "Safari",
            "Edge",
            "Yandex Browser",
        ] {
            assert!(known.browsers.contains(b), "{b}");
        }
        for os in [
            "Windows",
            "Mac OS X",
            "iOS",
            "Android",
            "Linux",
            "Ubuntu",
            "Chrome OS",
        ] {
            assert!(known.os.contains(os), "{os}");
        }
        assert!(!known.browsers.contains("Chrmoe"));
        assert_eq!(known.browsers.closest("Chrmoe")[0], "Chrome");
        assert!(known.os.closest("Xyzzy plugh quux").is_empty());
    }
}
