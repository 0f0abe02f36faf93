//! The campaigns file (`campaigns.toml`): parsing and validation.
//!
//! Every problem found is reported, each naming the file, the line, the campaign and the field,
//! so one run of `rotator check` shows all that needs fixing.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Campaign, Targeting};
use super::{countries, names};
use crate::config::{check_url, one_line};
use crate::visitor::geoip::Country;
use crate::visitor::user_agent::Device;

/// Why a campaigns file was refused.
#[derive(Debug, thiserror::Error)]
pub struct CampaignsError {
    /// The file.
    pub path: PathBuf,
    /// One entry per problem, e.g. `line 7: campaign 3: bid: must be more than 0`.
    pub problems: Vec<String>,
}

impl fmt::Display for CampaignsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "campaigns file {}: {}",
            self.path.display(),
            self.problems.join("; ")
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    campaign: Vec<Spanned<RawCampaign>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    id: Spanned<u32>,
    #[serde(default)]
    name: String,
    url: Spanned<String>,
    bid: Spanned<f64>,
    #[serde(default = "default_active")]
    active: bool,
    #[serde(default)]
    targeting: RawTargeting,
}

fn default_active() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTargeting {
    #[serde(default)]
    countries: Vec<Spanned<String>>,
    #[serde(default)]
    browsers: Vec<Spanned<String>>,
    #[serde(default)]
    os: Vec<Spanned<String>>,
    #[serde(default)]
    devices: Vec<Spanned<String>>,
}

/// Reads and validates a campaigns file.
pub fn load(path: &Path) -> Result<Vec<Campaign>, CampaignsError> {
    let refuse = |problem: String| CampaignsError {
        path: path.to_path_buf(),
        problems: vec![problem],
    };
    let bytes = crate::file_watch::read_capped(path, super::MAX_FILE_BYTES)
        .map_err(|e| refuse(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| refuse(format!("not UTF-8: {e}")))?;
    parse(&text).map_err(|problems| CampaignsError {
        path: path.to_path_buf(),
        problems,
    })
}

/// Parses and validates the text of a campaigns file.
///
/// A valid file is parsed one `[[campaign]]` section at a time (`sections`), so memory grows
/// with the campaigns kept, not with the file's parse tree: `toml` lexes a whole document into
/// tokens and a tree of spanned values first, some 35 bytes per byte of text (over 700 MB for
/// 100,000 campaigns). When a section does not parse on its own, the whole file is parsed, so a
/// syntax error is reported exactly as before, with the line in the file.
pub fn parse(text: &str) -> Result<Vec<Campaign>, Vec<String>> {
    if let Some(starts) = sections(text) {
        let mut checker = Checker::new(text);
        let ends = starts.iter().skip(1).copied().chain([text.len()]);
        let parsed = starts.iter().zip(ends).all(|(&start, end)| {
            match toml::from_str::<RawFile>(&text[start..end]) {
                Ok(raw) => {
                    raw.campaign
                        .into_iter()
                        .for_each(|entry| checker.check(entry, start));
                    true
                }
                Err(_) => false,
            }
        });
        if parsed {
            return checker.finish();
        }
    }
    parse_whole(text)
}

/// Parses the whole file at once.
fn parse_whole(text: &str) -> Result<Vec<Campaign>, Vec<String>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![one_line(&e.to_string())])?;
    let mut checker = Checker::new(text);
    for entry in raw.campaign {
        checker.check(entry, 0);
    }
    checker.finish()
}

/// Where each top-level `[[campaign]]` header starts, found with the TOML lexer (so a header
/// inside a string is not one). `None` when something other than whitespace and comments comes
/// before the first header: only the whole file can say what that means.
///
/// Each section holds one array element and every table under it (`[campaign.targeting]`), and
/// TOML cannot refer back to an earlier element, so parsing the sections one by one gives the
/// same campaigns as parsing the file.
fn sections(text: &str) -> Option<Vec<usize>> {
    use toml_parser::lexer::TokenKind::{
        Atom, Comment, Eof, LeftSquareBracket, Newline, RightSquareBracket, Whitespace,
    };
    let source = toml_parser::Source::new(text);
    let mut tokens = source.lex().filter(|t| t.kind() != Whitespace).peekable();
    let mut starts = Vec::new();
    let mut line_start = true;
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        if line_start && kind == LeftSquareBracket {
            let start = token.span().start();
            let rest: Vec<_> = std::iter::from_fn(|| tokens.next_if(|t| t.kind() != Newline))
                .take(5)
                .collect();
            let header = matches!(
                rest.as_slice(),
                [open, name, close1, close2, ..]
                    if open.kind() == LeftSquareBracket
                        && open.span().start() == start + 1
                        && name.kind() == Atom
                        && text.get(name.span().start()..name.span().end()) == Some("campaign")
                        && close1.kind() == RightSquareBracket
                        && close2.kind() == RightSquareBracket
                        && close2.span().start() == close1.span().end()
            );
            if header {
                starts.push(start);
            } else if starts.is_empty() {
                return None;
            }
            line_start = false;
            continue;
        }
        if starts.is_empty() && !matches!(kind, Newline | Comment | Eof) {
            return None;
        }
        line_start = kind == Newline;
    }
    Some(starts)
}

/// Validates entries one at a time and keeps the valid campaigns.
struct Checker {
    /// Offsets of the newlines in the whole file, so a line number is a binary search (not a
    /// scan per field).
    newlines: Vec<usize>,
    problems: Vec<String>,
    campaigns: Vec<Campaign>,
    /// Line of each id's first entry, for duplicate messages.
    seen: HashMap<u32, usize>,
    entries: usize,
}

impl Checker {
    fn new(text: &str) -> Checker {
        Checker {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
            problems: Vec::new(),
            campaigns: Vec::new(),
            seen: HashMap::new(),
            entries: 0,
        }
    }

    /// Checks one entry whose spans count from `base` in the file.
    fn check(&mut self, entry: Spanned<RawCampaign>, base: usize) {
        let Checker {
            newlines,
            problems,
            campaigns,
            seen,
            entries,
        } = self;
        let n = *entries;
        *entries += 1;
        let line = |offset: usize| newlines.partition_point(|n| *n < base + offset) + 1;
        let entry_line = line(entry.span().start);
        let raw = entry.into_inner();
        let id = *raw.id.get_ref();
        let mut problem = |offset: usize, field: &str, message: String| {
            problems.push(format!(
                "line {}: campaign {id} (entry {}): {field}: {message}",
                line(offset),
                n + 1
            ));
        };
        if id == 0 {
            problem(
                raw.id.span().start,
                "id",
                "0 is reserved for \"no campaign\"; use 1 or more".into(),
            );
        }
        if let Some(first) = seen.insert(id, entry_line) {
            problem(
                raw.id.span().start,
                "id",
                format!("duplicate: already used by the campaign at line {first}"),
            );
        }
        let url = raw.url.get_ref().clone();
        let location = match check_url(&url) {
            Ok(location) => Some(location),
            Err(message) => {
                problem(raw.url.span().start, "url", message);
                None
            }
        };
        let bid = *raw.bid.get_ref();
        if !(bid.is_finite() && bid > 0.0) {
            problem(
                raw.bid.span().start,
                "bid",
                format!("{bid} must be a number more than 0"),
            );
        }
        let mut targeting = Targeting::default();
        for code in &raw.targeting.countries {
            match Country::parse(code.get_ref()).filter(|c| countries::is_known(c.as_str())) {
                Some(c) => targeting.countries.push(c),
                None => problem(
                    code.span().start,
                    "targeting.countries",
                    format!(
                        "{:?} is not an ISO 3166-1 alpha-2 country code",
                        code.get_ref()
                    ),
                ),
            }
        }
        for (field, list, out) in [
            (
                "targeting.browsers",
                &raw.targeting.browsers,
                &mut targeting.browsers,
            ),
            ("targeting.os", &raw.targeting.os, &mut targeting.os),
        ] {
            for name in list {
                if name.get_ref().trim().is_empty() {
                    problem(name.span().start, field, "empty name".into());
                } else {
                    out.push(name.get_ref().trim().to_string());
                }
            }
        }
        for device in &raw.targeting.devices {
            match Device::parse(device.get_ref()) {
                Some(d) => targeting.devices.push(d),
                None => problem(
                    device.span().start,
                    "targeting.devices",
                    format!(
                        "{:?} is not one of {}",
                        device.get_ref(),
                        Device::ALL.map(Device::as_str).join(", ")
                    ),
                ),
            }
        }
        if let Some(location) = location {
            // Kept for the catalogue's life: no spare capacity (12 MB at 100,000 campaigns).
            targeting.countries.shrink_to_fit();
            targeting.browsers.shrink_to_fit();
            targeting.os.shrink_to_fit();
            targeting.devices.shrink_to_fit();
            campaigns.push(Campaign {
                id,
                name: raw.name,
                url,
                location,
                bid,
                active: raw.active,
                targeting,
            });
        }
    }

    fn finish(self) -> Result<Vec<Campaign>, Vec<String>> {
        if self.problems.is_empty() {
            Ok(self.campaigns)
        } else {
            Err(self.problems)
        }
    }
}

/// Targeting names no visitor will have: browser or OS families the bundled User-Agent rules
/// never give. They are not refused (a misspelt name does no harm beyond matching nobody, and
/// rules change with updates), but each gets a warning with the closest known names.
pub fn doubts(campaigns: &[Campaign]) -> Vec<String> {
    let Some(known) = names::known() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in campaigns {
        for (field, list, names) in [
            ("targeting.browsers", &c.targeting.browsers, &known.browsers),
            ("targeting.os", &c.targeting.os, &known.os),
        ] {
            for name in list.iter().filter(|n| !names.contains(n)) {
                let near = names.closest(name);
                let hint = if near.is_empty() {
                    "no known name is close; `rotator explain` shows what an agent is called"
                        .to_string()
                } else {
                    let near: Vec<String> = near.iter().map(|n| format!("{n:?}")).collect();
                    format!("closest known: {}", near.join(", "))
                };
                out.push(format!(
                    "campaign {}: {field}: {name:?} is no name the User-Agent rules give, so it \
                     matches no visitor; {hint}",
                    c.id
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[campaign]]
id = 1
name = "Yandex"
url = "https://yandex.ru"
bid = 1.5
[campaign.targeting]
countries = ["ru"]
browsers = ["Chrome"]
devices = ["desktop", "Mobile"]

[[campaign]]
id = 2
url = "http://duckduckgo.com"
bid = 2
active = false
"#;

    #[test]
    fn good_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].targeting.countries[0].as_str(), "RU");
        assert_eq!(c[0].targeting.devices, [Device::Desktop, Device::Mobile]);
        assert_eq!(c[1].bid, 2.0);
        assert!(!c[1].active);
        assert!(parse("").unwrap().is_empty());
    }

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().join("\n")
    }

    #[test]
    fn each_problem_names_line_campaign_and_field() {
        let text = "[[campaign]]\nid = 7\nurl = \"ftp://x\"\nbid = 0\n[campaign.targeting]\ncountries = [\"XX\"]\ndevices = [\"fridge\"]\n\n[[campaign]]\nid = 7\nurl = \"https://a.b\"\nbid = -1\n";
        let p = problems(text);
        assert!(p.contains("line 3: campaign 7 (entry 1): url:"), "{p}");
        assert!(p.contains("line 4: campaign 7 (entry 1): bid:"), "{p}");
        assert!(
            p.contains("line 6: campaign 7 (entry 1): targeting.countries: \"XX\""),
            "{p}"
        );
        assert!(
            p.contains("line 7: campaign 7 (entry 1): targeting.devices: \"fridge\""),
            "{p}"
        );
        assert!(p.contains("line 10: campaign 7 (entry 2): id: duplicate: already used by the campaign at line 1"), "{p}");
        assert!(p.contains("line 12: campaign 7 (entry 2): bid:"), "{p}");
    }

    #[test]
    fn unknown_keys_and_types_are_named() {
        let p = problems("[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\nbudget = 5\n");
        assert!(p.contains("budget") && p.contains("line 5"), "{p}");
        let p = problems(
            "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\n[campaign.targeting]\ncountry = [\"RU\"]\n",
        );
        assert!(p.contains("country"), "{p}");
        let p = problems("[[campaign]]\nid = -1\nurl = \"https://a.b\"\nbid = 1\n");
        assert!(p.contains("line 2"), "{p}");
        let p = problems("[[campaign]]\nid = 1\nbid = 1\n");
        assert!(p.contains("url"), "{p}");
        assert!(!problems("not toml [").contains('\n'));
    }

    #[test]
    fn names_no_rule_gives_are_doubted_with_the_closest() {
        let c = parse(
            "[[campaign]]\nid = 4\nurl = \"https://a.b\"\nbid = 1\n[campaign.targeting]\n\
             browsers = [\"Chrmoe\", \"chrome mobile\", \"Other\"]\nos = [\"Windos\", \"iOS\"]\n",
        )
        .unwrap();
        let d = doubts(&c);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("campaign 4: targeting.browsers: \"Chrmoe\""),
            "{d:?}"
        );
        assert!(d[0].contains("closest known: \"Chrome\""), "{d:?}");
        assert!(
            d[1].starts_with("campaign 4: targeting.os: \"Windos\""),
            "{d:?}"
        );
        assert!(doubts(&parse(GOOD).unwrap()).is_empty());
    }

    #[test]
    fn sections_give_what_the_whole_file_gives() {
        let text = "\u{feff}# comment\n\n[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\n\
                    name = \"\"\"\n[[campaign]]\nnot a header\"\"\"\n\
                    \t[[ campaign ]] # indented, spaced\r\nid = 2\nurl = \"https://a.b/2\"\nbid = 2\n\
                    [campaign.targeting]\nos = [\"iOS\"]\ncountries = [\n  \"DE\",\n]\n\
                    [[campaign]]\nid = 3\nurl = \"https://a.b/3\"\nbid = 3\n";
        assert_eq!(sections(text).map(|s| s.len()), Some(3));
        let sectioned = format!("{:?}", parse(text).unwrap());
        assert_eq!(sectioned, format!("{:?}", parse_whole(text).unwrap()));
        assert!(
            sectioned.contains("[[campaign]]\\nnot a header"),
            "{sectioned}"
        );
        // Anything before the first header: only the whole file can say.
        assert_eq!(sections("x = 1\n[[campaign]]\n"), None);
        assert_eq!(sections("[campaign.targeting]\n[[campaign]]\n"), None);
        assert_eq!(sections("# only a comment\n"), Some(vec![]));
        // Problems and syntax errors in a later section name the line in the file.
        let two = "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\n\n[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 0\n";
        let p = problems(two);
        assert!(p.contains("line 7: campaign 1 (entry 2): id: duplicate: already used by the campaign at line 1"), "{p}");
        assert!(p.contains("line 9: campaign 1 (entry 2): bid:"), "{p}");
        let p = problems(&two.replace("bid = 0", "bid = \"x\""));
        assert!(p.contains("line 9"), "{p}");
    }

    #[test]
    fn bundled_campaigns_file_is_valid() {
        let c = load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/campaigns.toml"
        )))
        .unwrap();
        assert_eq!(c.len(), 3);
    }
}
