//! The browser and OS names a targeting list can usefully contain: the families the bundled
//! uap-core rules can produce.
//!
//! A rule names its family with a replacement (`family_replacement: "Chrome Mobile"`), with a
//! template over capture groups (`"$1 for ArcGIS"`), or with its first capture group. A group
//! is read off the rule's regex as the finite set of strings it can match (`(Firefox|Minefield)`
//! gives both); a group that can match endlessly many strings (`([A-Za-z]+)`) names families no
//! list can hold, and is skipped. The sets are built once per process, on first use (a few
//! milliseconds), so `rotator check` and each reload can warn about a name no visitor will have.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind};

use crate::visitor::user_agent::{BROWSER_GROUPS, REGEXES_YAML};

/// Most names a template may expand to (the product of its groups' sets); larger ones are
/// skipped rather than enumerated.
const MAX_EXPANSIONS: usize = 256;

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
    let rules: ua_parser::Regexes<'_> = serde_yaml::from_str(REGEXES_YAML).ok()?;
    let mut known = KnownNames::default();
    for rule in &rules.user_agent_parsers {
        // uap-core: a family replacement may only use `$1`; without one, group 1 is the family.
        let template = rule.family_replacement.as_deref().unwrap_or("$1");
        expand(&rule.regex, template, &mut known.browsers);
    }
    for rule in &rules.os_parsers {
        let template = rule.os_replacement.as_deref().unwrap_or("$1");
        expand(&rule.regex, template, &mut known.os);
    }
    for (base, _) in BROWSER_GROUPS {
        known.browsers.insert(base);
    }
    known.browsers.insert("Other");
    known.os.insert("Other");
    Some(known)
}

/// Adds every name `template` can give for a match of `pattern` (`$1`…`$9` stand for groups).
fn expand(pattern: &str, template: &str, out: &mut Names) {
    let mut names = vec![String::new()];
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        let (text, tail) = rest.split_at(at);
        let Some(group) = tail[1..].chars().next().and_then(|c| c.to_digit(10)) else {
            return;
        };
        let Some(values) = group_values(pattern, group) else {
            return;
        };
        if names.len() * values.len() > MAX_EXPANSIONS {
            return;
        }
        names = names
            .iter()
            .flat_map(|n| values.iter().map(move |v| format!("{n}{text}{v}")))
            .collect();
        rest = &tail[2..];
    }
    for name in names {
        out.insert(&format!("{name}{rest}"));
    }
}

/// The strings capture group `index` of `pattern` can match, if they are finitely many.
fn group_values(pattern: &str, index: u32) -> Option<Vec<String>> {
    // ASCII mode: the families are ASCII, and Unicode case folding would add odd variants.
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let group = find_group(&hir, index)?;
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(group);
    seq.literals()?
        .iter()
        .map(|l| {
            l.is_exact()
                .then(|| String::from_utf8(l.as_bytes().to_vec()).ok())
                .flatten()
        })
        .collect()
}

fn find_group(hir: &Hir, index: u32) -> Option<&Hir> {
    match hir.kind() {
        HirKind::Capture(c) if c.index == index => Some(&c.sub),
        HirKind::Capture(c) => find_group(&c.sub, index),
        HirKind::Repetition(r) => find_group(&r.sub, index),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => {
            parts.iter().find_map(|p| find_group(p, index))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pattern: &str, template: &str) -> Vec<String> {
        let mut out = Names::default();
        expand(pattern, template, &mut out);
        let mut v: Vec<String> = out.by_key.into_values().collect();
        v.sort();
        v
    }

    #[test]
    fn groups_and_templates() {
        assert_eq!(
            names(r"(Firefox|Minefield)/(\d+)", "$1"),
            ["Firefox", "Minefield"]
        );
        assert_eq!(
            names(r"(?:Foo)(Bar|Baz)", "$1 for X"),
            ["Bar for X", "Baz for X"]
        );
        assert_eq!(names(r"ArcGIS Client", "ArcMap"), ["ArcMap"]);
        assert!(names(r"([A-Za-z]+)Bot", "$1").is_empty());
        assert_eq!(names(r"(Win)dows (NT|95)", "$1 $2"), ["Win 95", "Win NT"]);
    }

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
