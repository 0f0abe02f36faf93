//! What the User-Agent says: browser family, OS family, device type, and whether it is a bot.
//!
//! Families come from uap-core's `regexes.yaml` (vendored in `data/uap/`, Apache-2.0), the rule
//! set most analytics tools share, so "Chrome Mobile" here means what it means elsewhere. Bots are
//! uap-core's `Spider` device family plus the crawler list of monperrus/crawler-user-agents
//! (`data/crawler-user-agents/`, MIT). Both files are compiled into the binary, so the server
//! needs no data folder to parse agents.
//!
//! A full parse runs a few thousand regexes (tens of microseconds); real traffic repeats a small
//! set of agents, so results sit in a bounded concurrent cache ([`CACHE_CAPACITY`] entries,
//! S3-FIFO eviction from `quick_cache`) and a repeated agent costs one hash lookup.

use std::sync::Arc;

use serde::Deserialize;

use super::symbol::Sym;

/// uap-core's rules, embedded.
pub(crate) const REGEXES_YAML: &str = include_str!("../../data/uap/regexes.yaml");

/// The crawler list, embedded.
const CRAWLERS_JSON: &str = include_str!("../../data/crawler-user-agents/crawler-user-agents.json");

/// Distinct User-Agents kept parsed. Each entry costs its text plus ~40 bytes.
pub const CACHE_CAPACITY: usize = 16_384;

/// Agents longer than this are parsed every time and never cached, so a client sending huge
/// random agents cannot fill memory (the HTTP layer caps the header size anyway).
pub const MAX_CACHED_LEN: usize = 1024;

/// Kind of device, for targeting and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    /// Desktop or laptop computer.
    Desktop,
    /// Phone.
    Mobile,
    /// Tablet.
    Tablet,
    /// Crawler, spider, monitoring or other automated client.
    Bot,
    /// Anything else: TVs, consoles, unknown or missing agents.
    Other,
}

impl Device {
    /// Every device type, in index order.
    pub const ALL: [Device; 5] = [
        Device::Desktop,
        Device::Mobile,
        Device::Tablet,
        Device::Bot,
        Device::Other,
    ];

    /// The name used in config, explain output and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Bot => "bot",
            Device::Other => "other",
        }
    }

    /// Parses a device name, case-insensitively.
    pub fn parse(name: &str) -> Option<Device> {
        Device::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(name))
    }

    /// A small index (0..5) for per-device tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

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

/// Why the User-Agent rules could not be built (a broken embedded file: a build defect).
#[derive(Debug, thiserror::Error)]
pub enum UserAgentError {
    /// `regexes.yaml` does not parse.
    #[error("uap-core regexes.yaml: {0}")]
    Rules(String),
    /// The crawler list does not parse or compile.
    #[error("crawler list: {0}")]
    Crawlers(String),
}

/// Parses User-Agents, with a cache.
pub struct UserAgentParser {
    extractor: ua_parser::Extractor<'static>,
    crawlers: regex::Regex,
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
    /// Builds the parser from the embedded rules (about a second of CPU, once at start).
    pub fn new() -> Result<Arc<UserAgentParser>, UserAgentError> {
        let regexes: ua_parser::Regexes<'static> =
            serde_yaml::from_str(REGEXES_YAML).map_err(|e| UserAgentError::Rules(e.to_string()))?;
        let extractor = ua_parser::Extractor::try_from(regexes)
            .map_err(|e| UserAgentError::Rules(e.to_string()))?;
        #[derive(Deserialize)]
        struct Crawler {
            pattern: String,
        }
        let list: Vec<Crawler> = serde_json::from_str(CRAWLERS_JSON)
            .map_err(|e| UserAgentError::Crawlers(e.to_string()))?;
        let alternation = list
            .iter()
            .map(|c| format!("(?:{})", c.pattern))
            .collect::<Vec<_>>()
            .join("|");
        let crawlers = regex::RegexBuilder::new(&alternation)
            .size_limit(256 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .map_err(|e| UserAgentError::Crawlers(e.to_string()))?;
        Ok(Arc::new(UserAgentParser {
            extractor,
            crawlers,
            cache: quick_cache::sync::Cache::new(CACHE_CAPACITY),
        }))
    }

    /// What `ua` says, from the cache when possible. `None` (header missing or not UTF-8) is
    /// [`UserAgent::UNKNOWN`].
    pub fn lookup(&self, ua: Option<&str>) -> (UserAgent, CacheOutcome) {
        let Some(ua) = ua.filter(|u| !u.is_empty()) else {
            return (UserAgent::UNKNOWN, CacheOutcome::Hit);
        };
        if let Some(found) = self.cache.get(ua) {
            return (found, CacheOutcome::Hit);
        }
        let parsed = self.parse(ua);
        if ua.len() <= MAX_CACHED_LEN {
            self.cache.insert(ua.into(), parsed);
        }
        (parsed, CacheOutcome::Miss)
    }

    /// A full parse, bypassing the cache.
    pub fn parse(&self, ua: &str) -> UserAgent {
        let (browser, os, device) = self.extractor.extract(ua);
        let browser_name = browser.as_ref().map_or("Other", |b| &b.family);
        let os_name = os.as_ref().map_or("Other", |o| &o.os);
        let device_name = device.as_ref().map_or("Other", |d| &d.device);
        let is_bot = device_name == "Spider" || self.crawlers.is_match(ua);
        let device = if is_bot {
            Device::Bot
        } else {
            classify_device(ua, os_name, device_name)
        };
        let browser_key = Sym::intern_lowercase(browser_name);
        UserAgent {
            browser: Sym::intern(browser_name),
            browser_key,
            browser_group: browser_group(browser_name).map_or(browser_key, Sym::intern_lowercase),
            os: Sym::intern(os_name),
            os_key: Sym::intern_lowercase(os_name),
            device,
        }
    }
}

/// OS families of phones (unless the agent says tablet).
const MOBILE_OS: &[&str] = &[
    "ios",
    "android",
    "windows phone",
    "windows mobile",
    "blackberry os",
    "symbian os",
    "symbian^3",
    "firefox os",
    "kaios",
    "bada",
    "webos",
    "tizen",
    "sailfish",
    "ubuntu touch",
    "meego",
    "maemo",
    "brew",
    "windows ce",
];

/// OS families of desktop computers.
const DESKTOP_OS: &[&str] = &[
    "windows",
    "mac os x",
    "mac os",
    "linux",
    "ubuntu",
    "kubuntu",
    "fedora",
    "debian",
    "red hat",
    "suse",
    "opensuse",
    "linux mint",
    "mint",
    "centos",
    "gentoo",
    "arch linux",
    "slackware",
    "mandriva",
    "chrome os",
    "chromecast os",
    "freebsd",
    "openbsd",
    "netbsd",
    "solaris",
    "sunos",
    "os/2",
    "haiku",
    "beos",
];

/// Markers of TVs, consoles and set-top boxes, which are neither phones nor computers.
const OTHER_MARKERS: &[&str] = &[
    "SmartTV",
    "SMART-TV",
    "Smart-TV",
    "GoogleTV",
    "AppleTV",
    "CrKey",
    "Roku",
    "Xbox",
    "PlayStation",
    "Nintendo",
    "HbbTV",
    "BRAVIA",
];

/// Device type from the agent and uap-core's OS and device families.
fn classify_device(ua: &str, os: &str, device: &str) -> Device {
    if OTHER_MARKERS.iter().any(|m| ua.contains(m)) {
        return Device::Other;
    }
    let os = os.to_ascii_lowercase();
    let is_windows = os.starts_with("windows") && !MOBILE_OS.contains(&os.as_str());
    if device == "iPad"
        || device.contains("Tablet")
        || device.contains("Kindle")
        || ua.contains("iPad")
        || ua.contains("PlayBook")
        || ua.contains("Silk/")
        || (ua.contains("Tablet") && !is_windows)
        || (os == "android" && !ua.contains("Mobile") && device != "Generic Smartphone")
    {
        return Device::Tablet;
    }
    if MOBILE_OS.contains(&os.as_str())
        || device == "iPhone"
        || device == "iPod"
        || device.contains("Smartphone")
        || device.contains("Feature Phone")
        || ua.contains("Mobi")
    {
        return Device::Mobile;
    }
    if DESKTOP_OS.contains(&os.as_str()) || is_windows || device == "Mac" {
        return Device::Desktop;
    }
    Device::Other
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static PARSER: LazyLock<Arc<UserAgentParser>> =
        LazyLock::new(|| UserAgentParser::new().unwrap());

    fn parse(ua: &str) -> (String, String, Device) {
        let p = PARSER.parse(ua);
        (p.browser.to_string(), p.os.to_string(), p.device)
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
        assert!(PARSER.crawlers.is_match(ua));
    }

    #[test]
    fn every_crawler_list_instance_is_a_bot() {
        #[derive(Deserialize)]
        struct Crawler {
            instances: Vec<String>,
        }
        let list: Vec<Crawler> = serde_json::from_str(CRAWLERS_JSON).unwrap();
        let mut checked = 0;
        for instance in list.iter().flat_map(|c| &c.instances) {
            assert_eq!(PARSER.parse(instance).device, Device::Bot, "{instance}");
            checked += 1;
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn synthetic_requests_match_expected_families() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/traffic/synthetic-requests.tsv"
        );
        let text =
            std::fs::read_to_string(path).expect("tests/data/traffic/synthetic-requests.tsv");
        let (mut checked, mut mismatched, mut bots) = (0, Vec::new(), 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split('\t').collect();
            let parsed = PARSER.parse(f[1]);
            for (want, got) in [(f[6], parsed.browser), (f[7], parsed.os)] {
                if !want.is_empty() {
                    checked += 1;
                    if *got.name() != *want {
                        mismatched.push(format!("{want} != {got}: {}", f[1]));
                    }
                }
            }
            if f[8] == "1" {
                assert!(parsed.is_bot(), "crawler-list agent not a bot: {}", f[1]);
                bots += 1;
            }
        }
        assert!(checked > 300 && bots > 100, "{checked} {bots}");
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
