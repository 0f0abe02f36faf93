//! What the User-Agent says: browser family, OS family, device type, and whether it is a bot.
//!
//! Families come from uap-core's `regexes.yaml` (vendored in `data/uap/`, Apache-2.0), the rule
//! set most analytics tools share, so "Chrome Mobile" here means what it means elsewhere. Bots
//! are decided in [`super::bots`], device types in [`super::device`]. The rules are compiled into
//! the binary, so the server needs no data folder to parse agents.
//!
//! A full parse runs a few thousand regexes (tens of microseconds); real traffic repeats a small
//! set of agents, so results sit in a bounded concurrent cache ([`CACHE_CAPACITY`] entries,
//! S3-FIFO eviction from `quick_cache`) and a repeated agent costs one hash lookup.
//!
//! What a client can make us do is bounded (issue 9): only the first [`MAX_PARSED_LEN`] bytes of
//! an agent are read, so an unseen 16 KB agent costs what an unseen ordinary one does; and family
//! names come from a closed set fixed when the rules load ([`super::families`]), so invented
//! names cannot fill the symbol table or change how later visitors are classified.

use std::sync::Arc;

use super::bots::{Bots, BotsError};
pub use super::device::Device;
use super::device::{DeviceRules, Facts};
use super::families;
use super::symbol::Sym;
use crate::config::BotsConfig;

/// uap-core's rules, embedded.
pub(crate) const REGEXES_YAML: &str = include_str!("../../data/uap/regexes.yaml");

/// Distinct User-Agents kept parsed. Each entry costs its text (at most [`MAX_PARSED_LEN`]
/// bytes) plus ~40 bytes.
pub const CACHE_CAPACITY: usize = 16_384;

/// Bytes of an agent that are parsed (and are its cache key); the rest is ignored. Real agents
/// are far shorter (the longest of the ~30,000 in `tests/data/ua/` is 681 bytes, the next 439),
/// and every regex runs over at most this much, whatever a client sends.
pub const MAX_PARSED_LEN: usize = 512;

/// Browser families that targeting treats as variants of a base family: an entry naming the base
/// family matches all of them. Matching is case-insensitive. Documented in the README.
pub const BROWSER_GROUPS: &[(&str, &[&str])] = &[
    (
        "Chrome",
        &[
            "Chrome Mobile",
            "Chrome Mobile iOS",
            "Chrome Mobile WebView",
            "Chrome Frame",
            "HeadlessChrome",
        ],
    ),
    (
        "Firefox",
        &[
            "Firefox Mobile",
            "Firefox iOS",
            "Firefox Beta",
            "Firefox Alpha",
        ],
    ),
    ("Safari", &["Mobile Safari", "Mobile Safari UI/WKWebView"]),
    ("Edge", &["Edge Mobile"]),
    (
        "Opera",
        &[
            "Opera Mobile",
            "Opera Mini",
            "Opera Coast",
            "Opera Neon",
            "Opera Tablet",
        ],
    ),
    ("IE", &["IE Mobile", "IE Large Screen"]),
];

/// The base family of `family` per [`BROWSER_GROUPS`], if it is a variant.
pub fn browser_group(family: &str) -> Option<&'static str> {
    BROWSER_GROUPS
        .iter()
        .find(|(_, variants)| variants.iter().any(|v| v.eq_ignore_ascii_case(family)))
        .map(|(base, _)| *base)
}

/// What one User-Agent says. `Copy` and small: it is what the cache stores and hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserAgent {
    /// uap-core browser family, e.g. "Chrome Mobile"; "Other" when unknown.
    pub browser: Sym,
    /// Lower-case browser family: the key an exact targeting entry matches.
    pub browser_key: Sym,
    /// Lower-case base family from [`BROWSER_GROUPS`], or `browser_key` when not a variant.
    pub browser_group: Sym,
    /// uap-core OS family, e.g. "Windows", "iOS"; "Other" when unknown.
    pub os: Sym,
    /// Lower-case OS family.
    pub os_key: Sym,
    /// Device type.
    pub device: Device,
}

impl UserAgent {
    /// What a missing or unreadable User-Agent gets.
    pub const UNKNOWN: UserAgent = UserAgent {
        browser: Sym::OTHER,
        browser_key: Sym::OTHER_KEY,
        browser_group: Sym::OTHER_KEY,
        os: Sym::OTHER,
        os_key: Sym::OTHER_KEY,
        device: Device::Other,
    };

    /// Whether this is an automated client.
    pub fn is_bot(&self) -> bool {
        self.device == Device::Bot
    }
}

/// Why the User-Agent rules could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UserAgentError {
    /// `regexes.yaml` or a device rule does not parse (a build defect).
    #[error("uap-core regexes.yaml: {0}")]
    Rules(String),
    /// The crawler list or an operator's `[bots]` pattern does not compile.
    #[error(transparent)]
    Bots(#[from] BotsError),
}

/// Parses User-Agents, with a cache.
pub struct UserAgentParser {
    extractor: ua_parser::Extractor<'static>,
    bots: Bots,
    devices: DeviceRules,
    cache: quick_cache::sync::Cache<Box<str>, UserAgent>,
}

/// Whether a lookup was answered from the cache (for the hit/miss metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Found parsed.
    Hit,
    /// Parsed now.
    Miss,
}

impl UserAgentParser {
    /// Builds the parser from the embedded rules and no operator `[bots]` patterns.
    pub fn new() -> Result<Arc<UserAgentParser>, UserAgentError> {
        Self::with_bots(&BotsConfig::default())
    }

    /// Builds the parser from the embedded rules and the operator's `[bots]` section (about a
    /// second of CPU, once at start).
    pub fn with_bots(bots: &BotsConfig) -> Result<Arc<UserAgentParser>, UserAgentError> {
        let regexes: ua_parser::Regexes<'static> = serde_norway::from_str(REGEXES_YAML)
            .map_err(|e| UserAgentError::Rules(e.to_string()))?;
        seed_families()?;
        let extractor = ua_parser::Extractor::try_from(regexes)
            .map_err(|e| UserAgentError::Rules(e.to_string()))?;
        Ok(Arc::new(UserAgentParser {
            extractor,
            bots: Bots::new(bots)?,
            devices: DeviceRules::new().map_err(|e| UserAgentError::Rules(e.to_string()))?,
            cache: quick_cache::sync::Cache::new(CACHE_CAPACITY),
        }))
    }

    /// What `ua` says, from the cache when possible. `None` (header missing or not UTF-8) is
    /// [`UserAgent::UNKNOWN`].
    pub fn lookup(&self, ua: Option<&str>) -> (UserAgent, CacheOutcome) {
        let Some(ua) = ua.filter(|u| !u.is_empty()) else {
            return (UserAgent::UNKNOWN, CacheOutcome::Hit);
        };
        let ua = parsed_part(ua);
        if let Some(found) = self.cache.get(ua) {
            return (found, CacheOutcome::Hit);
        }
        let parsed = self.parse(ua);
        self.cache.insert(ua.into(), parsed);
        (parsed, CacheOutcome::Miss)
    }

    /// A full parse of the first [`MAX_PARSED_LEN`] bytes of `ua`, bypassing the cache.
    pub fn parse(&self, ua: &str) -> UserAgent {
        let ua = parsed_part(ua);
        let (browser, os, device) = self.extractor.extract(ua);
        let browser_name = browser.as_ref().map_or("Other", |b| &b.family);
        let os_name = os.as_ref().map_or("Other", |o| &o.os);
        let facts = Facts {
            os: os_name,
            family: device.as_ref().map_or("Other", |d| &d.device),
            brand: device.as_ref().and_then(|d| d.brand.as_deref()),
            model: device.as_ref().and_then(|d| d.model.as_deref()),
        };
        let device = if self.bots.is_bot(ua, facts.family == "Spider") {
            Device::Bot
        } else {
            self.devices.classify(ua, facts)
        };
        let browser = known(browser_name);
        let browser_key = known_lowercase(browser_name);
        UserAgent {
            browser,
            browser_key,
            browser_group: browser_group(browser_name).map_or(browser_key, known_lowercase),
            os: known(os_name),
            os_key: known_lowercase(os_name),
            device,
        }
    }

    /// Whether `ua` is a bot: [`UserAgentParser::parse`]'s verdict for less work (no browser
    /// or OS family).
    pub fn is_bot(&self, ua: &str) -> bool {
        let ua = parsed_part(ua);
        let spider = self
            .extractor
            .dev
            .extract(ua)
            .is_some_and(|d| d.device == "Spider");
        self.bots.is_bot(ua, spider)
    }

    /// The bot rules in use.
    pub fn bots(&self) -> &Bots {
        &self.bots
    }
}

/// The first [`MAX_PARSED_LEN`] bytes of `ua`, cut at a character boundary.
fn parsed_part(ua: &str) -> &str {
    let mut end = ua.len().min(MAX_PARSED_LEN);
    while !ua.is_char_boundary(end) {
        end -= 1;
    }
    &ua[..end]
}

/// Interns every family name the bundled rules can produce (and its lower-case key), so parsing
/// only looks names up: see [`super::families`].
fn seed_families() -> Result<(), UserAgentError> {
    let names = families::bundled()
        .ok_or_else(|| UserAgentError::Rules("the bundled rules do not parse".into()))?;
    let groups = BROWSER_GROUPS.iter().map(|(base, _)| *base);
    for name in names.all().map(String::as_str).chain(groups) {
        Sym::intern(name);
        Sym::intern_lowercase(name);
    }
    Ok(())
}

/// The symbol of a family name the rules can produce; `Other` for a name captured from the agent.
fn known(name: &str) -> Sym {
    Sym::lookup(name).unwrap_or(Sym::OTHER)
}

/// The symbol of the lower-case key of a known family name; `other` otherwise.
fn known_lowercase(name: &str) -> Sym {
    Sym::lookup_lowercase(name).unwrap_or(Sym::OTHER_KEY)
}

/// One parser shared by the unit tests of `visitor` (building one takes a while).
#[cfg(test)]
pub(crate) static TEST_PARSER: std::sync::LazyLock<Arc<UserAgentParser>> =
    std::sync::LazyLock::new(|| UserAgentParser::new().unwrap());

/// The lines of a test corpus in `tests/data/ua/`, without comments.
#[cfg(test)]
pub(crate) fn test_corpus(name: &str) -> Vec<String> {
    let path = format!("{}/tests/data/ua/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static PARSER: &std::sync::LazyLock<Arc<UserAgentParser>> = &TEST_PARSER;

    fn parse(ua: &str) -> (String, String, Device) {
        let p = PARSER.parse(ua);
        (p.browser.to_string(), p.os.to_string(), p.device)
    }

    /// Issue 13: the rules read by serde_norway (which replaced the archived serde_yaml; the two
    /// gave the same 433 + 204 + 633 rules when switching) are the ones an independent YAML
    /// reader, Python's PyYAML, reads from the same file.
    #[test]
    fn issue13_rules_read_as_pyyaml_reads_them() {
        let ours: serde_json::Value = serde_norway::from_str(REGEXES_YAML).unwrap();
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
            ])
            .stdin(
                std::fs::File::open(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/data/uap/regexes.yaml"
                ))
                .unwrap(),
            )
            .output();
        let Some(out) = out.ok().filter(|o| o.status.success()) else {
            assert!(
                std::env::var("ROTATOR_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "python3 with PyYAML is needed (scripts/services install installs python3-yaml)"
            );
            eprintln!("SKIPPED: python3 with PyYAML is not installed");
            return;
        };
        let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ours, theirs);
        assert!(ours["user_agent_parsers"].as_array().unwrap().len() > 400);
    }

    #[test]
    fn common_browsers() {
        let chrome_win = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(
            parse(chrome_win),
            ("Chrome".into(), "Windows".into(), Device::Desktop)
        );
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
        assert_eq!(
            parse(iphone),
            ("Mobile Safari".into(), "iOS".into(), Device::Mobile)
        );
        let ipad = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
        assert_eq!(parse(ipad).2, Device::Tablet);
        let android = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
        assert_eq!(
            parse(android),
            ("Chrome Mobile".into(), "Android".into(), Device::Mobile)
        );
        let tab = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(parse(tab).2, Device::Tablet);
        let ff = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
        assert_eq!(
            parse(ff),
            ("Firefox".into(), "Ubuntu".into(), Device::Desktop)
        );
        let mac = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15";
        assert_eq!(
            parse(mac),
            ("Safari".into(), "Mac OS X".into(), Device::Desktop)
        );
    }

    #[test]
    fn bots_from_uap_and_from_the_crawler_list() {
        assert_eq!(
            parse("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").2,
            Device::Bot
        );
        assert_eq!(
            parse("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)").2,
            Device::Bot
        );
        // In the crawler list; check that the list is what catches it when uap does not.
        let ua = "python-requests/2.31.0";
        assert_eq!(parse(ua).2, Device::Bot);
        assert!(PARSER.bots().crawler_list_matches(ua));
    }

    #[test]
    fn synthetic_requests_match_expected_families() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/traffic/synthetic-requests.tsv"
        );
        let text =
            std::fs::read_to_string(path).expect("tests/data/traffic/synthetic-requests.tsv");
        let names = families::bundled().unwrap();
        let closed: std::collections::BTreeSet<&str> = names.all().map(String::as_str).collect();
        let (mut checked, mut mismatched, mut bots, mut open) = (0, Vec::new(), 0, 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split('\t').collect();
            let parsed = PARSER.parse(f[1]);
            for (want, got) in [(f[6], parsed.browser), (f[7], parsed.os)] {
                if !want.is_empty() {
                    checked += 1;
                    // A name captured from the agent is not in the closed set: `Other`.
                    let want = if closed.contains(want) {
                        want
                    } else {
                        open += 1;
                        "Other"
                    };
                    if *got.name() != *want {
                        mismatched.push(format!("{want} != {got}: {}", f[1]));
                    }
                }
            }
            // The column is the published list's verdict; the fixed patterns judge differently
            // (checked in `bots::tests`).
            let fixed = crate::visitor::bots::PATTERN_FIXES
                .iter()
                .any(|(p, _, _)| regex::Regex::new(p).unwrap().is_match(f[1]));
            if f[8] == "1" && !fixed {
                assert!(parsed.is_bot(), "crawler-list agent not a bot: {}", f[1]);
                bots += 1;
            }
        }
        assert!(checked > 300 && bots > 100, "{checked} {bots}");
        println!("{open} of {checked} expected families are open-ended captures");
        assert!(
            mismatched.is_empty(),
            "{} of {checked} differ:\n{}",
            mismatched.len(),
            mismatched.join("\n")
        );
    }

    #[test]
    fn missing_agent_is_unknown_and_cache_hits() {
        assert_eq!(PARSER.lookup(None).0, UserAgent::UNKNOWN);
        assert_eq!(PARSER.lookup(Some("")).0, UserAgent::UNKNOWN);
        let ua =
            "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0 cache-test";
        let (first, outcome) = PARSER.lookup(Some(ua));
        assert_eq!(outcome, CacheOutcome::Miss);
        let (second, outcome) = PARSER.lookup(Some(ua));
        assert_eq!(outcome, CacheOutcome::Hit);
        assert_eq!(first, second);
    }

    /// Issue 9 item 2: only the first `MAX_PARSED_LEN` bytes are read, and they are the cache
    /// key, so a huge unique agent costs one bounded parse and is cached like any other.
    #[test]
    fn issue9_long_agents_are_parsed_and_cached_by_their_first_bytes() {
        let chrome = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36 long-agent-test ";
        let long = |tail: char| {
            let mut ua = chrome.repeat(1 + MAX_PARSED_LEN / chrome.len());
            ua.extend(std::iter::repeat_n(tail, 16 * 1024));
            ua
        };
        let (a, b) = (long('a'), long('b'));
        let (first, outcome) = PARSER.lookup(Some(&a));
        assert_eq!(outcome, CacheOutcome::Miss);
        assert_eq!(first.device, Device::Mobile);
        assert_eq!(first.browser, Sym::intern("Chrome Mobile"));
        assert_eq!(PARSER.lookup(Some(&b)), (first, CacheOutcome::Hit));
        assert_eq!(PARSER.parse(&b), PARSER.parse(&a[..MAX_PARSED_LEN]));
        // A multi-byte character across the limit is cut before it.
        let wide = format!("{}é{}", "x".repeat(MAX_PARSED_LEN - 1), "y".repeat(100));
        assert_eq!(parsed_part(&wide).len(), MAX_PARSED_LEN - 1);
    }

    /// Issue 9 item 5: names captured from agents are not added to the symbol table, so invented
    /// names cannot fill it, and a real Vivaldi visitor stays `Vivaldi`.
    #[test]
    fn issue9_invented_names_add_nothing() {
        for i in 0..2_000 {
            let ua = format!("Fl{i}Bot/1.0");
            let parsed = PARSER.parse(&ua);
            assert!(parsed.is_bot(), "{ua}");
            assert_eq!(Sym::lookup(&format!("Fl{i}Bot")), None, "{ua} was interned");
        }
        let vivaldi = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Vivaldi/6.8.3381.48";
        let parsed = PARSER.parse(vivaldi);
        assert_eq!(parsed.browser.to_string(), "Vivaldi");
        assert_eq!(parsed.browser_key, Sym::intern("vivaldi"));
    }

    /// The closed set holds the families people target; names copied from agents are not in it.
    #[test]
    fn closed_family_names_cover_real_browsers() {
        let names = families::bundled().unwrap();
        let closed: std::collections::BTreeSet<&str> = names.all().map(String::as_str).collect();
        for name in [
            "Chrome",
            "Chrome Mobile",
            "Chrome Mobile iOS",
            "Firefox",
            "Safari",
            "Mobile Safari",
            "Edge",
            "Opera",
            "Opera Mini",
            "Samsung Internet",
            "Vivaldi",
            "Yandex Browser",
            "UC Browser",
            "Facebook",
            "Instagram",
            "Windows",
            "Android",
            "iOS",
            "Mac OS X",
            "Linux",
            "Chrome OS",
        ] {
            assert!(closed.contains(name), "{name}");
        }
        assert!(!closed.iter().any(|n| n.contains("Fl1Bot")));
        println!("{} closed family names", closed.len());
    }

    #[test]
    fn groups() {
        assert_eq!(browser_group("Chrome Mobile iOS"), Some("Chrome"));
        assert_eq!(browser_group("mobile safari"), Some("Safari"));
        assert_eq!(browser_group("Firefox Mobile"), Some("Firefox"));
        assert_eq!(browser_group("Chrome"), None);
        let p = PARSER.parse("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36");
        assert_eq!(p.browser_group, Sym::intern("chrome"));
        assert_eq!(p.browser_key, Sym::intern("chrome mobile"));
    }
}
