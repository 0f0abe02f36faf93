//! Whether an agent is automated: uap-core's `Spider` device, the crawler list, the operator's
//! `[bots]` lists.
//!
//! Bots never win, so a false bot verdict is a visitor no campaign can reach. A verdict therefore
//! needs evidence real browsers do not carry. The crawler list of monperrus/crawler-user-agents
//! (`data/crawler-user-agents/`, MIT) is used as published except for the patterns in
//! [`PATTERN_FIXES`], which also match real browsers (a phone's build id, a phone model, an app
//! token): each is anchored to what its crawler sends, or dropped. The test
//! `no_human_agent_is_a_bot` checks every pattern against the human corpora in `tests/data/ua/`;
//! `every_crawler_list_instance_is_a_bot` checks every crawler example is still caught.
//!
//! Operators add `[bots] deny` patterns (these agents are bots) and `[bots] allow` patterns
//! (these are never bots, whatever the lists say); `deny` wins when both match.

use regex::{Regex, RegexBuilder, RegexSet};
use serde::Deserialize;

use crate::config::BotsConfig;

/// The crawler list, embedded.
pub const CRAWLERS_JSON: &str =
    include_str!("../../data/crawler-user-agents/crawler-user-agents.json");

/// Crawler-list patterns replaced by a narrower one (or dropped, `None`), with the human agent
/// that the published pattern matches.
pub const PATTERN_FIXES: &[(&str, Option<&str>, &str)] = &[
    // Android 15's build id: Chrome on a Galaxy S24, Facebook's and Instagram's in-app browsers.
    // The list's only example is such an in-app browser; nothing tells a crawler apart.
    (r"AP3A\.240617\.008", None, "SM-S921B Build/AP3A.240617.008"),
    (
        "Butterfly",
        Some(r"compatible; Butterfly/"),
        "HTC Butterfly Build/JDQ39",
    ),
    (
        "Sonic",
        Some(r"RankSonic|compatible; Sonic/"),
        "Sonic Build/",
    ),
    ("speedy", Some(r"(?i:speedy[ _]?spider)"), "speedy Build/"),
    (r"008\/", Some(r"^008/"), "Opera Mini/4.4.39008/37.8625"),
    (r"RED\/", Some(r"^RED/"), "Mobile Safari/537.36 RED/"),
    (
        "Blackboard",
        Some("Blackboard Safeassign"),
        "Mobile/15D100 Blackboard/3.6.0",
    ),
    (
        "Sogou",
        Some(r"Sogou[ A-Za-z]*[Ss]pider"),
        "SogouMSE,SogouMobileBrowser/4.1.0",
    ),
];

/// Agents uap-core's catch-all `Spider` rule matches (it looks for `silk`, `bot`, `speedy`…
/// anywhere, ignoring case, when no device rule matched) that are real browsers.
const UAP_SPIDER_EXCEPTIONS: &[&str] = &[
    // Amazon's Silk browser on LG and Fire TVs: `… SmartTV/6.0 Silk`.
    r"\bSilk$|\bSilk/\d",
];

/// Why bot rules could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BotsError {
    /// The embedded crawler list does not parse or compile (a build defect).
    #[error("crawler list: {0}")]
    Crawlers(String),
    /// An operator pattern does not compile.
    #[error("[bots] {key}: {message}")]
    Pattern {
        /// `allow` or `deny`.
        key: &'static str,
        /// The regex error.
        message: String,
    },
}

/// The compiled bot rules.
pub struct Bots {
    crawlers: Regex,
    uap_exceptions: RegexSet,
    allow: RegexSet,
    deny: RegexSet,
}

#[derive(Deserialize)]
struct Crawler {
    pattern: String,
}

/// The crawler-list patterns in use: the published list with [`PATTERN_FIXES`] applied.
pub fn crawler_patterns() -> Result<Vec<String>, BotsError> {
    let list: Vec<Crawler> =
        serde_json::from_str(CRAWLERS_JSON).map_err(|e| BotsError::Crawlers(e.to_string()))?;
    Ok(list
        .into_iter()
        .filter_map(
            |c| match PATTERN_FIXES.iter().find(|(p, _, _)| *p == c.pattern) {
                Some((_, fixed, _)) => fixed.map(str::to_string),
                None => Some(c.pattern),
            },
        )
        .collect())
}

/// Compiles operator patterns; the error names the first bad one.
pub fn operator_set(key: &'static str, patterns: &[String]) -> Result<RegexSet, BotsError> {
    RegexSet::new(patterns).map_err(|e| BotsError::Pattern {
        key,
        message: e.to_string(),
    })
}

impl Bots {
    /// Builds the rules from the embedded list and the operator's `[bots]` section.
    pub fn new(config: &BotsConfig) -> Result<Bots, BotsError> {
        let alternation = crawler_patterns()?
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        let crawlers = RegexBuilder::new(&alternation)
            .size_limit(256 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .map_err(|e| BotsError::Crawlers(e.to_string()))?;
        Ok(Bots {
            crawlers,
            uap_exceptions: RegexSet::new(UAP_SPIDER_EXCEPTIONS)
                .map_err(|e| BotsError::Crawlers(e.to_string()))?,
            allow: operator_set("allow", &config.allow)?,
            deny: operator_set("deny", &config.deny)?,
        })
    }

    /// Whether `ua` is automated; `uap_spider` is uap-core's verdict (device family `Spider`).
    pub fn is_bot(&self, ua: &str, uap_spider: bool) -> bool {
        if self.deny.is_match(ua) {
            return true;
        }
        if self.allow.is_match(ua) {
            return false;
        }
        (uap_spider && !self.uap_exceptions.is_match(ua)) || self.crawlers.is_match(ua)
    }

    /// Whether the crawler list alone flags `ua`.
    pub fn crawler_list_matches(&self, ua: &str) -> bool {
        self.crawlers.is_match(ua)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visitor::user_agent::{Device, TEST_PARSER, test_corpus};

    #[derive(Deserialize)]
    struct Entry {
        pattern: String,
        instances: Vec<String>,
    }

    fn list() -> Vec<Entry> {
        serde_json::from_str(CRAWLERS_JSON).unwrap()
    }

    /// Every human agent we have: CrawlerDetect's device list, uap-core's browser lists, the
    /// labelled corpus and the hand-written cases.
    fn human_agents() -> Vec<String> {
        let mut agents = test_corpus("crawlerdetect-devices.txt");
        agents.extend(test_corpus("uap-core-browsers.txt"));
        for name in ["labelled.tsv", "curated.tsv"] {
            for line in test_corpus(name) {
                let f: Vec<&str> = line.split('\t').collect();
                let ua = if name == "labelled.tsv" { f[2] } else { f[1] };
                agents.push(ua.to_string());
            }
        }
        agents
    }

    /// Issue 8 item 7: no human agent of the corpora is a bot, by the crawler list or uap-core.
    #[test]
    fn issue8_no_human_agent_is_a_bot() {
        let agents = human_agents();
        let bots: Vec<String> = std::thread::scope(|s| {
            let halves = agents.split_at(agents.len() / 2);
            let threads: Vec<_> = [halves.0, halves.1]
                .into_iter()
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .filter(|ua| TEST_PARSER.is_bot(ua))
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert!(bots.is_empty(), "{} bots:\n{}", bots.len(), bots.join("\n"));
    }

    /// Every example of the crawler list is still a bot, except the examples of the dropped
    /// patterns, which are human agents.
    #[test]
    fn every_crawler_list_instance_is_a_bot() {
        let mut checked = 0;
        for entry in list() {
            let dropped = PATTERN_FIXES
                .iter()
                .any(|(p, fixed, _)| *p == entry.pattern && fixed.is_none());
            for instance in &entry.instances {
                let bot = TEST_PARSER.parse(instance).device == Device::Bot;
                assert_eq!(bot, !dropped, "{instance}");
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    /// Each fix is still needed: the published pattern is in the list and matches its human
    /// example; the replacement does not.
    #[test]
    fn pattern_fixes_match_the_list() {
        let list = list();
        for (pattern, fixed, human) in PATTERN_FIXES {
            assert!(list.iter().any(|e| e.pattern == *pattern), "{pattern} gone");
            assert!(Regex::new(pattern).unwrap().is_match(human), "{pattern}");
            if let Some(fixed) = fixed {
                assert!(!Regex::new(fixed).unwrap().is_match(human), "{fixed}");
            }
        }
    }

    #[test]
    fn operator_allow_and_deny() {
        let config = BotsConfig {
            allow: vec!["^python-requests/".into(), "HeadlessChrome".into()],
            deny: vec!["InHouseFetcher".into(), "HeadlessChrome/1\\d\\d".into()],
        };
        let bots = Bots::new(&config).unwrap();
        assert!(!bots.is_bot("python-requests/2.31.0", false));
        assert!(
            !bots.is_bot("HeadlessChrome/99.0", true),
            "allow beats uap-core"
        );
        assert!(
            bots.is_bot("HeadlessChrome/120.0", false),
            "deny beats allow"
        );
        assert!(bots.is_bot("Mozilla/5.0 InHouseFetcher/1.0", false));
        assert!(bots.is_bot("curl/8.0", false));
        assert!(!bots.is_bot("Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0", false));
        let bad = BotsConfig {
            deny: vec!["(unclosed".into()],
            ..BotsConfig::default()
        };
        assert!(matches!(
            Bots::new(&bad),
            Err(BotsError::Pattern { key: "deny", .. })
        ));
    }
}
