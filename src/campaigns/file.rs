//! The campaigns file (`campaigns.toml`): parsing and validation.
//!
//! Every problem found is reported, each naming the file, the line, the campaign (or placement)
//! and the field, so one run of `rotator check` shows all that needs fixing.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::creatives::{Creative, CreativeKind, Size};
use super::placements::{self, Placement};
use super::{Campaign, Delivery, Targeting};
use super::{budget, countries, names};
use crate::config::{check_url, one_line};
use crate::visitor::geoip::Country;
use crate::visitor::symbol::Sym;
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

/// A valid campaigns file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The campaigns, in file order.
    pub campaigns: Vec<Campaign>,
    /// The placements, in file order.
    pub placements: Vec<Placement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    campaign: Vec<Spanned<RawCampaign>>,
    #[serde(default)]
    placement: Vec<Spanned<RawPlacement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    id: Spanned<String>,
    #[serde(default)]
    sizes: Vec<Spanned<String>>,
    #[serde(default)]
    kinds: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreative {
    id: Spanned<u32>,
    kind: Spanned<String>,
    size: Option<Spanned<String>>,
    image_url: Option<Spanned<String>>,
    alt: Option<Spanned<String>>,
    html: Option<Spanned<String>>,
    text: Option<Spanned<String>>,
    click_url: Option<Spanned<String>>,
    weight: Option<Spanned<u32>>,
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
    #[serde(default)]
    placements: Vec<Spanned<String>>,
    #[serde(default)]
    creative: Vec<Spanned<RawCreative>>,
    start: Option<Spanned<toml::value::Datetime>>,
    end: Option<Spanned<toml::value::Datetime>>,
    pricing: Option<Spanned<String>>,
    budget: Option<Spanned<budget::RawBudget>>,
    frequency_cap: Option<Spanned<budget::RawFrequencyCap>>,
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
pub fn load(path: &Path) -> Result<Parsed, CampaignsError> {
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
/// A valid file is parsed one `[[campaign]]` or `[[placement]]` section at a time (`sections`), so memory grows
/// with the campaigns kept, not with the file's parse tree: `toml` lexes a whole document into
/// tokens and a tree of spanned values first, some 35 bytes per byte of text (over 700 MB for
/// 100,000 campaigns). When a section does not parse on its own, the whole file is parsed, so a
/// syntax error is reported exactly as before, with the line in the file.
pub fn parse(text: &str) -> Result<Parsed, Vec<String>> {
    if let Some(starts) = sections(text) {
        let mut checker = Checker::new(text);
        let ends = starts.iter().skip(1).copied().chain([text.len()]);
        let parsed = starts.iter().zip(ends).all(|(&start, end)| {
            match toml::from_str::<RawFile>(&text[start..end]) {
                Ok(raw) => {
                    checker.take(raw, start);
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
fn parse_whole(text: &str) -> Result<Parsed, Vec<String>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![one_line(&e.to_string())])?;
    let mut checker = Checker::new(text);
    checker.take(raw, 0);
    checker.finish()
}

/// Where each top-level `[[campaign]]` or `[[placement]]` header starts, found with the TOML lexer (so a header
/// inside a string is not one). `None` when something other than whitespace and comments comes
/// before the first header: only the whole file can say what that means.
///
/// Each section holds one array element and every table under it (`[campaign.targeting]`,
/// `[[campaign.creative]]`), and
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
                        && matches!(
                            text.get(name.span().start()..name.span().end()),
                            Some("campaign" | "placement")
                        )
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

/// A campaign's reference to a placement, checked once every placement is known.
struct PlacementRef {
    line: usize,
    campaign: u32,
    entry: usize,
    id: String,
}

/// Validates entries one at a time and keeps the valid campaigns and placements.
struct Checker {
    /// Offsets of the newlines in the whole file, so a line number is a binary search (not a
    /// scan per field).
    newlines: Vec<usize>,
    problems: Vec<String>,
    campaigns: Vec<Campaign>,
    placements: Vec<Placement>,
    /// Line of each id's first entry, for duplicate messages.
    seen: HashMap<u32, usize>,
    /// Line of each creative id's first use.
    creatives_seen: HashMap<u32, usize>,
    /// Line of each placement id's first entry.
    placements_seen: HashMap<String, usize>,
    references: Vec<PlacementRef>,
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
            placements: Vec::new(),
            seen: HashMap::new(),
            creatives_seen: HashMap::new(),
            placements_seen: HashMap::new(),
            references: Vec::new(),
            entries: 0,
        }
    }

    /// The line (1-based) of byte `offset` of a section that starts at `base`.
    fn line(&self, base: usize, offset: usize) -> usize {
        self.newlines.partition_point(|n| *n < base + offset) + 1
    }

    /// Checks every entry of a section whose spans count from `base` in the file.
    fn take(&mut self, raw: RawFile, base: usize) {
        for entry in raw.placement {
            self.check_placement(entry, base);
        }
        for entry in raw.campaign {
            self.check(entry, base);
        }
    }

    fn check_placement(&mut self, entry: Spanned<RawPlacement>, base: usize) {
        let raw = entry.into_inner();
        let id = raw.id.get_ref().clone();
        let mut problems = Vec::new();
        if let Some(message) = placements::id_problem(&id) {
            problems.push((raw.id.span().start, "id", message));
        }
        let line = self.line(base, raw.id.span().start);
        if let Some(first) = self.placements_seen.get(&id) {
            problems.push((
                raw.id.span().start,
                "id",
                format!("duplicate: already used by the placement at line {first}"),
            ));
        } else {
            self.placements_seen.insert(id.clone(), line);
        }
        let mut sizes = Vec::new();
        for size in &raw.sizes {
            match Size::parse(size.get_ref()) {
                Ok(s) => sizes.push(s),
                Err(message) => problems.push((size.span().start, "sizes", message)),
            }
        }
        let mut kinds = Vec::new();
        for kind in &raw.kinds {
            match CreativeKind::parse(kind.get_ref()) {
                Some(k) => kinds.push(k),
                None => problems.push((kind.span().start, "kinds", kind_problem(kind.get_ref()))),
            }
        }
        let valid = problems.is_empty();
        for (offset, field, message) in problems {
            let line = self.line(base, offset);
            self.problems
                .push(format!("line {line}: placement {id:?}: {field}: {message}"));
        }
        if valid {
            self.placements.push(Placement {
                sym: Sym::intern(&id),
                id,
                sizes,
                kinds,
            });
        }
    }

    /// Checks one campaign entry whose spans count from `base` in the file.
    fn check(&mut self, entry: Spanned<RawCampaign>, base: usize) {
        let n = self.entries;
        self.entries += 1;
        let entry_line = self.line(base, entry.span().start);
        let raw = entry.into_inner();
        let id = *raw.id.get_ref();
        let mut found: Vec<(usize, String, String)> = Vec::new();
        let mut problem = |offset: usize, field: &str, message: String| {
            found.push((offset, field.to_string(), message));
        };
        if id == 0 {
            problem(
                raw.id.span().start,
                "id",
                "0 is reserved for \"no campaign\"; use 1 or more".into(),
            );
        }
        if let Some(first) = self.seen.insert(id, entry_line) {
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
        let mut placement_ids = Vec::new();
        for p in &raw.placements {
            match placements::id_problem(p.get_ref()) {
                Some(message) => problem(p.span().start, "placements", message),
                None => {
                    self.references.push(PlacementRef {
                        line: self
                            .newlines
                            .partition_point(|o| *o < base + p.span().start)
                            + 1,
                        campaign: id,
                        entry: n,
                        id: p.get_ref().clone(),
                    });
                    placement_ids.push(p.get_ref().clone());
                }
            }
        }
        let mut creatives = Vec::new();
        for raw_creative in raw.creative {
            let checked = check_creative(
                raw_creative.into_inner(),
                &url,
                location.as_ref(),
                &mut self.creatives_seen,
                |offset| self.newlines.partition_point(|o| *o < base + offset) + 1,
            );
            match checked {
                Ok(c) => creatives.push(c),
                Err(list) => {
                    for (offset, field, message) in list {
                        problem(offset, &field, message);
                    }
                }
            }
        }
        let delivery = budget::check(budget::RawDelivery {
            start: raw.start,
            end: raw.end,
            pricing: raw.pricing,
            budget: raw.budget,
            frequency_cap: raw.frequency_cap,
        });
        let delivery = match delivery {
            Ok(d) => Some(d),
            Err(list) => {
                for (offset, field, message) in list {
                    problem(offset, field, message);
                }
                None
            }
        };
        for (offset, field, message) in found.iter() {
            let line = self.line(base, *offset);
            self.problems.push(format!(
                "line {line}: campaign {id} (entry {}): {field}: {message}",
                n + 1
            ));
        }
        if let (Some(location), Some(delivery), true) = (location, delivery, found.is_empty()) {
            // Kept for the catalogue's life: no spare capacity (12 MB at 100,000 campaigns).
            targeting.countries.shrink_to_fit();
            targeting.browsers.shrink_to_fit();
            targeting.os.shrink_to_fit();
            targeting.devices.shrink_to_fit();
            self.campaigns.push(Campaign {
                id,
                name: raw.name,
                url,
                location,
                bid,
                active: raw.active,
                targeting,
                placements: placement_ids,
                creatives,
                limits: (delivery != Delivery::default()).then(|| Box::new(delivery)),
            });
        }
    }

    fn finish(mut self) -> Result<Parsed, Vec<String>> {
        for r in &self.references {
            if !self.placements_seen.contains_key(&r.id) {
                self.problems.push(format!(
                    "line {}: campaign {} (entry {}): placements: {:?} is no [[placement]] of this file",
                    r.line,
                    r.campaign,
                    r.entry + 1,
                    r.id
                ));
            }
        }
        if self.problems.is_empty() {
            Ok(Parsed {
                campaigns: self.campaigns,
                placements: self.placements,
            })
        } else {
            Err(self.problems)
        }
    }
}

fn kind_problem(kind: &str) -> String {
    format!(
        "{kind:?} is not one of {}",
        CreativeKind::ALL.map(CreativeKind::as_str).join(", ")
    )
}

/// Checks one `[[campaign.creative]]`; problems are (offset, field, message), the field naming
/// the creative (`creative 701: size`).
fn check_creative(
    raw: RawCreative,
    campaign_url: &str,
    campaign_location: Option<&hyper::header::HeaderValue>,
    seen: &mut HashMap<u32, usize>,
    line: impl Fn(usize) -> usize,
) -> Result<Creative, Vec<(usize, String, String)>> {
    let id = *raw.id.get_ref();
    let mut problems = Vec::new();
    let mut problem = |offset: usize, field: &str, message: String| {
        problems.push((offset, format!("creative {id}: {field}"), message));
    };
    if id == 0 {
        problem(
            raw.id.span().start,
            "id",
            "0 is reserved for \"no creative\"; use 1 or more".into(),
        );
    }
    if let Some(first) = seen.get(&id) {
        problem(
            raw.id.span().start,
            "id",
            format!("duplicate: already used by the creative at line {first}"),
        );
    } else {
        seen.insert(id, line(raw.id.span().start));
    }
    let kind = CreativeKind::parse(raw.kind.get_ref());
    if kind.is_none() {
        problem(
            raw.kind.span().start,
            "kind",
            kind_problem(raw.kind.get_ref()),
        );
    }
    let size = match &raw.size {
        Some(s) => match Size::parse(s.get_ref()) {
            Ok(size) => Some(size),
            Err(message) => {
                problem(s.span().start, "size", message);
                None
            }
        },
        None => {
            if matches!(kind, Some(CreativeKind::Image | CreativeKind::Html)) {
                problem(
                    raw.kind.span().start,
                    "size",
                    "required for image and html creatives, e.g. size = \"728x90\"".into(),
                );
            }
            None
        }
    };
    // Each kind has its one content field; the others are refused rather than ignored.
    for (field, value, wanted) in [
        ("image_url", &raw.image_url, CreativeKind::Image),
        ("alt", &raw.alt, CreativeKind::Image),
        ("html", &raw.html, CreativeKind::Html),
        ("text", &raw.text, CreativeKind::Text),
    ] {
        match (value, kind) {
            (Some(v), Some(k)) if k != wanted => problem(
                v.span().start,
                field,
                format!(
                    "only for kind = \"{}\", this one is {:?}",
                    wanted.as_str(),
                    k.as_str()
                ),
            ),
            (None, Some(k)) if k == wanted && field != "alt" => problem(
                raw.kind.span().start,
                field,
                format!("required for kind = \"{}\"", k.as_str()),
            ),
            (Some(v), _) if field != "alt" && v.get_ref().trim().is_empty() => {
                problem(v.span().start, field, "empty".into())
            }
            _ => {}
        }
    }
    if let Some(image_url) = &raw.image_url
        && let Err(message) = check_url(image_url.get_ref())
    {
        problem(image_url.span().start, "image_url", message);
    }
    let click = match &raw.click_url {
        Some(c) => match check_url(c.get_ref()) {
            Ok(location) => Some((c.get_ref().clone(), location)),
            Err(message) => {
                problem(c.span().start, "click_url", message);
                None
            }
        },
        None => campaign_location.map(|l| (campaign_url.to_string(), l.clone())),
    };
    let weight = raw.weight.as_ref().map_or(1, |w| *w.get_ref());
    if let Some(w) = raw.weight.as_ref().filter(|w| *w.get_ref() == 0) {
        problem(w.span().start, "weight", "must be 1 or more".into());
    }
    match (kind, click, problems.is_empty()) {
        (Some(kind), Some((click_url, click_location)), true) => Ok(Creative {
            id,
            kind,
            size,
            image_url: raw.image_url.map(Spanned::into_inner),
            alt: raw.alt.map(Spanned::into_inner),
            html: raw.html.map(Spanned::into_inner),
            text: raw.text.map(Spanned::into_inner),
            click_url,
            click_location,
            weight,
        }),
        // The campaign's own url was refused: that problem is already listed.
        _ => Err(problems),
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
        let c = parse(GOOD).unwrap().campaigns;
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].targeting.countries[0].as_str(), "RU");
        assert_eq!(c[0].targeting.devices, [Device::Desktop, Device::Mobile]);
        assert_eq!(c[1].bid, 2.0);
        assert!(!c[1].active);
        assert!(parse("").unwrap().campaigns.is_empty());
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
        let p = problems("[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\nbudgets = 5\n");
        assert!(p.contains("budgets") && p.contains("line 5"), "{p}");
        let p = problems("[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\nbudget = 5\n");
        assert!(
            p.contains("[campaign.budget] table") && p.contains("line 5"),
            "{p}"
        );
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
        .unwrap()
        .campaigns;
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
        assert!(doubts(&parse(GOOD).unwrap().campaigns).is_empty());
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

    const PLACED: &str = r#"
[[campaign]]
id = 7
url = "https://shop.example/"
bid = 2
placements = ["top-banner"]
[[campaign.creative]]
id = 701
kind = "image"
size = "728x90"
image_url = "https://cdn.example/701.png"
alt = "Winter sale"
click_url = "https://shop.example/winter"
weight = 3
[[campaign.creative]]
id = 702
kind = "text"
text = "Winter sale -50%"

[[placement]]
id = "top-banner"
sizes = ["728x90", "970x90"]
kinds = ["image", "html"]
"#;

    #[test]
    fn placements_and_creatives() {
        let parsed = parse(PLACED).unwrap();
        assert_eq!(sections(PLACED).map(|s| s.len()), Some(2));
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", parse_whole(PLACED).unwrap())
        );
        let [p] = parsed.placements.as_slice() else {
            panic!("{parsed:?}")
        };
        assert_eq!(p.id, "top-banner");
        assert_eq!(
            p.sizes,
            [
                Size {
                    width: 728,
                    height: 90
                },
                Size {
                    width: 970,
                    height: 90
                }
            ]
        );
        let c = &parsed.campaigns[0];
        assert_eq!(c.placements, ["top-banner"]);
        let [image, text] = c.creatives.as_slice() else {
            panic!("{c:?}")
        };
        assert_eq!(
            (image.id, image.kind, image.weight),
            (701, CreativeKind::Image, 3)
        );
        assert_eq!(image.click_url, "https://shop.example/winter");
        assert!(p.fits(image));
        assert_eq!(
            (text.kind, text.weight, text.size),
            (CreativeKind::Text, 1, None)
        );
        assert_eq!(
            text.click_url, "https://shop.example/",
            "defaults to the campaign's url"
        );
        assert!(!p.fits(text), "text is not a kind of this placement");
    }

    #[test]
    fn creative_and_placement_problems_are_named() {
        let text = "[[placement]]\nid = \"Top\"\nsizes = [\"728\"]\nkinds = [\"video\"]\n\
                    [[placement]]\nid = \"side\"\n[[placement]]\nid = \"side\"\n\
                    [[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\nplacements = [\"nowhere\"]\n\
                    [[campaign.creative]]\nid = 5\nkind = \"image\"\nhtml = \"<b>\"\n\
                    [[campaign.creative]]\nid = 5\nkind = \"html\"\nsize = \"1x1\"\nhtml = \"x\"\nclick_url = \"javascript:alert(1)\"\nweight = 0\n";
        let p = problems(text);
        for expected in [
            "line 2: placement \"Top\": id: \"Top\" is not a slug",
            "line 3: placement \"Top\": sizes: \"728\" is not a size",
            "line 4: placement \"Top\": kinds: \"video\" is not one of image, html, text",
            "line 8: placement \"side\": id: duplicate: already used by the placement at line 6",
            "line 13: campaign 1 (entry 1): placements: \"nowhere\" is no [[placement]] of this file",
            "line 16: campaign 1 (entry 1): creative 5: size: required for image and html",
            "line 17: campaign 1 (entry 1): creative 5: html: only for kind = \"html\"",
            "line 16: campaign 1 (entry 1): creative 5: image_url: required for kind = \"image\"",
            "line 19: campaign 1 (entry 1): creative 5: id: duplicate: already used by the creative at line 15",
            "line 23: campaign 1 (entry 1): creative 5: click_url:",
            "line 24: campaign 1 (entry 1): creative 5: weight: must be 1 or more",
        ] {
            assert!(p.contains(expected), "{expected}\n---\n{p}");
        }
    }

    #[test]
    fn issue11_delivery_fields() {
        let text = "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 2.5\n\
                    start = 2026-12-01T00:00:00Z\nend = 2026-12-31\npricing = \"cpc\"\n\
                    [campaign.budget]\ndaily = 200.0\ntotal = 5000\npacing = \"asap\"\n\
                    timezone = \"Europe/Berlin\"\n\
                    [campaign.frequency_cap]\nimpressions = 3\nper = \"24h\"\n\
                    [[campaign]]\nid = 2\nurl = \"https://a.b\"\nbid = 2.5\n";
        let parsed = parse(text).unwrap();
        let c = parsed.campaigns.iter().find(|c| c.id == 1).unwrap();
        let d = &c.delivery();
        assert_eq!(d.pricing, crate::campaigns::Pricing::Cpc);
        assert_eq!(d.flight.start, Some(1_796_083_200));
        // A bare end date is the day's last second in the budget's zone (UTC+1 in December).
        assert_eq!(d.flight.end, Some(1_798_758_000 - 1));
        let b = d.budget.as_ref().unwrap();
        assert_eq!((b.daily, b.total), (Some(200_000_000), Some(5_000_000_000)));
        assert_eq!(b.pacing, crate::campaigns::Pacing::Asap);
        assert_eq!(b.timezone_name, "Europe/Berlin");
        let cap = d.frequency_cap.unwrap();
        assert_eq!((cap.impressions, cap.per_secs), (3, 86_400));
        assert_eq!((c.impression_cost(), c.click_cost()), (0, 2_500_000));
        let plain = parsed.campaigns.iter().find(|c| c.id == 2).unwrap();
        assert!(plain.delivery().is_unlimited());
        assert_eq!(plain.impression_cost(), 2_500);

        let bad = "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\n\
                   start = 2026-12-31T00:00:00Z\nend = 2026-12-01T00:00:00Z\npricing = \"cpa\"\n\
                   [campaign.budget]\ndaily = -1.0\npacing = \"fast\"\ntimezone = \"Mars/Base\"\n\
                   [campaign.frequency_cap]\nimpressions = 0\nper = \"often\"\n\
                   [[campaign]]\nid = 2\nurl = \"https://a.b\"\nbid = 1\n[campaign.budget]\n\
                   pacing = \"even\"\n";
        let p = problems(bad);
        for expected in [
            "line 5: campaign 1 (entry 1): end: is before start",
            "line 7: campaign 1 (entry 1): pricing: \"cpa\" is not one of cpm, cpc",
            "line 9: campaign 1 (entry 1): budget.daily: -1 must be a number more than 0",
            "line 10: campaign 1 (entry 1): budget.pacing: \"fast\" is not one of even, asap",
            "line 11: campaign 1 (entry 1): budget.timezone: \"Mars/Base\" is not an IANA time zone",
            "line 13: campaign 1 (entry 1): frequency_cap.impressions: 0 must be a whole number",
            "line 14: campaign 1 (entry 1): frequency_cap.per: \"often\" is not a duration",
            "campaign 2 (entry 2): budget: needs daily, total or both",
        ] {
            assert!(p.contains(expected), "{expected}\n---\n{p}");
        }
    }

    #[test]
    fn bundled_campaigns_file_is_valid() {
        let c = load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/campaigns.toml"
        )))
        .unwrap()
        .campaigns;
        assert_eq!(c.len(), 3);
    }
}
