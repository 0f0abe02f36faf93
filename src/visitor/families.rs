//! The closed set of browser and OS family names, derived from uap-core's rules.
//!
//! A rule names its family either with a fixed replacement (`family_replacement: 'Chrome
//! Mobile'`) or with text captured from the agent (`$1`). When the captured group can only match
//! a finite set of strings (`(Vivaldi)`, `(Firefox|Minefield)`), those strings are the family
//! names it can produce, and they are listed here. When it can match anything (`([A-Za-z]+Bot)`),
//! the family is whatever the visitor sent: such names are *not* listed, and the parser reports
//! them as `Other`. So the names a visitor can be given are fixed when the rules are loaded, and
//! nothing a visitor sends changes how a later visitor is classified (issue 9 item 5).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind};

use super::user_agent::REGEXES_YAML;

/// The family names a set of rules can produce whatever the agent says.
#[derive(Debug, Default)]
pub struct FamilyNames {
    /// Browser families.
    pub browsers: BTreeSet<String>,
    /// OS families.
    pub os: BTreeSet<String>,
}

impl FamilyNames {
    /// Works the names out of `regexes` (a regex-syntax walk over every rule).
    pub fn of(regexes: &ua_parser::Regexes<'_>) -> FamilyNames {
        fn names<'a>(rules: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> BTreeSet<String> {
            rules
                .filter_map(|(regex, template)| rule_names(regex, template))
                .flatten()
                .filter(|n| !n.is_empty())
                .collect()
        }
        FamilyNames {
            browsers: names(
                regexes
                    .user_agent_parsers
                    .iter()
                    .map(|p| (&*p.regex, p.family_replacement.as_deref())),
            ),
            os: names(
                regexes
                    .os_parsers
                    .iter()
                    .map(|p| (&*p.regex, p.os_replacement.as_deref())),
            ),
        }
    }

    /// Browser and OS names together.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.browsers.iter().chain(&self.os)
    }
}

/// The names of the bundled rules (`data/uap/regexes.yaml`), worked out once per process and
/// shared by the parser (which interns them) and the campaigns file check (which warns about
/// names outside them). `None` if the embedded rules do not parse, a build defect that
/// `UserAgentParser::new` reports.
pub fn bundled() -> Option<&'static FamilyNames> {
    static BUNDLED: OnceLock<Option<FamilyNames>> = OnceLock::new();
    BUNDLED
        .get_or_init(|| {
            let regexes: ua_parser::Regexes<'_> = serde_norway::from_str(REGEXES_YAML).ok()?;
            Some(FamilyNames::of(&regexes))
        })
        .as_ref()
}

/// Most strings one captured group may expand to before it counts as open-ended.
const MAX_GROUP_NAMES: usize = 64;

/// Every name a rule can produce: `template` (or `$1` when there is none) with each `$n`
/// replaced by each string group `n` of `regex` can match. `None` when some group it uses is
/// open-ended (or the regex does not parse here), so the names depend on the agent.
pub fn rule_names(regex: &str, template: Option<&str>) -> Option<Vec<String>> {
    let template = template.filter(|t| !t.is_empty()).unwrap_or("$1");
    let mut names = vec![String::new()];
    let mut rest = template;
    let mut hir: Option<Hir> = None;
    while let Some(at) = rest.find('$') {
        let digit = rest[at + 1..].chars().next().and_then(|c| c.to_digit(10));
        let Some(group) = digit else {
            names.iter_mut().for_each(|n| n.push_str(&rest[..=at]));
            rest = &rest[at + 1..];
            continue;
        };
        names.iter_mut().for_each(|n| n.push_str(&rest[..at]));
        rest = &rest[at + 2..];
        if hir.is_none() {
            hir = Some(regex_syntax::parse(regex).ok()?);
        }
        let values = group_strings(hir.as_ref()?, group)?;
        names = names
            .iter()
            .flat_map(|n| values.iter().map(move |v| format!("{n}{v}")))
            .collect();
        if names.len() > MAX_GROUP_NAMES {
            return None;
        }
    }
    names.iter_mut().for_each(|n| n.push_str(rest));
    Some(names.into_iter().map(|n| n.trim().to_string()).collect())
}

/// The strings capture group `index` can match, if they are few; `None` if open-ended.
fn group_strings(hir: &Hir, index: u32) -> Option<Vec<String>> {
    let Some(group) = find_group(hir, index) else {
        // A group that does not exist resolves to the empty string.
        return Some(vec![String::new()]);
    };
    let mut extractor = Extractor::new();
    extractor
        .kind(ExtractKind::Prefix)
        .limit_total(MAX_GROUP_NAMES);
    let seq = extractor.extract(group);
    if !seq.is_exact() {
        return None;
    }
    let literals = seq.literals()?;
    let mut out = BTreeSet::new();
    for literal in literals {
        out.insert(String::from_utf8(literal.as_bytes().to_vec()).ok()?);
    }
    // An optional group (`(Foo)?`) may also not take part: it then resolves to "".
    if hir_may_skip(hir, index) {
        out.insert(String::new());
    }
    Some(out.into_iter().collect())
}

fn find_group(hir: &Hir, index: u32) -> Option<&Hir> {
    match hir.kind() {
        HirKind::Capture(c) if c.index == index => Some(&c.sub),
        HirKind::Capture(c) => find_group(&c.sub, index),
        HirKind::Repetition(r) => find_group(&r.sub, index),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().find_map(|s| find_group(s, index))
        }
        _ => None,
    }
}

/// Whether group `index` sits under an alternation or a repetition that can skip it.
fn hir_may_skip(hir: &Hir, index: u32) -> bool {
    match hir.kind() {
        HirKind::Capture(c) if c.index == index => false,
        HirKind::Capture(c) => hir_may_skip(&c.sub, index),
        HirKind::Repetition(r) => {
            find_group(&r.sub, index).is_some() && (r.min == 0 || hir_may_skip(&r.sub, index))
        }
        HirKind::Alternation(subs) => find_group(hir, index).is_some() && subs.len() > 1,
        HirKind::Concat(subs) => subs.iter().any(|s| hir_may_skip(s, index)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(regex: &str, template: Option<&str>) -> Option<Vec<String>> {
        rule_names(regex, template)
    }

    #[test]
    fn fixed_and_finite_captures_are_listed() {
        assert_eq!(
            names(r"(Vivaldi)/(\d+)", None),
            Some(vec!["Vivaldi".into()])
        );
        assert_eq!(
            names(r"(Firefox|Minefield)/(\d+)", Some("$1 Beta")),
            Some(vec!["Firefox Beta".into(), "Minefield Beta".into()])
        );
        assert_eq!(names(r"Edg/(\d+)", Some("Edge")), Some(vec!["Edge".into()]));
        assert_eq!(
            names(r"(Windows) (?:NT )?(\d+)", Some("$1 $2")),
            None,
            "a version group is open-ended"
        );
    }

    #[test]
    fn open_captures_are_not() {
        assert_eq!(names(r"([A-Za-z0-9]+Bot)/(\d+)", None), None);
        assert_eq!(names(r"(\w+) Browser", Some("$1")), None);
    }
}
