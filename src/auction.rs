//! Choosing the winner: the eligible campaign with the highest bid; equal top bids rotate
//! uniformly at random (the Go server picked the cheapest campaign, which is what nobody pays for).
//!
//! [`run`] is the request path and reads the [`TargetingIndex`](crate::campaigns::index); [`explain`]
//! re-derives the same answer campaign by campaign, with the reason for each exclusion, for
//! `rotator explain` and for tests that check the index against the plain rules.

use serde::Serialize;

use crate::campaigns::{Campaign, Catalogue};
use crate::visitor::Visitor;
use crate::visitor::user_agent::browser_group;

/// What the auction decided for one visitor.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// A campaign won.
    Won(&'a Campaign),
    /// No campaign targets this visitor.
    NoFill,
    /// The visitor is a bot and bots do not take part.
    Bot,
}

/// Runs the auction for `visitor` over `catalogue`.
#[inline]
pub fn run<'a>(catalogue: &'a Catalogue, visitor: &Visitor, bots_win: bool) -> Outcome<'a> {
    if visitor.agent.is_bot() && !bots_win {
        return Outcome::Bot;
    }
    match catalogue.index().best(visitor, |n| fastrand::usize(..n)) {
        Some(position) => catalogue
            .get(position)
            .map_or(Outcome::NoFill, Outcome::Won),
        None => Outcome::NoFill,
    }
}

/// One campaign left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exclusion {
    /// Campaign id.
    pub id: u32,
    /// Why, e.g. `country: visitor is DE, campaign wants RU`.
    pub reason: String,
}

/// The auction, explained.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Ids of the campaigns that target the visitor, highest bid first.
    pub eligible: Vec<u32>,
    /// Campaigns left out, in id order.
    pub excluded: Vec<Exclusion>,
}

/// Why `campaign` does not target `visitor`, or `None` when it does.
pub fn exclusion_reason(campaign: &Campaign, visitor: &Visitor, bots_win: bool) -> Option<String> {
    let t = &campaign.targeting;
    let agent = &visitor.agent;
    if !campaign.active {
        return Some("inactive".into());
    }
    if agent.is_bot() && !bots_win {
        return Some("visitor is a bot; bots never win (server.bots_win = false)".into());
    }
    if !t.countries.is_empty() {
        let wanted = t
            .countries
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match visitor.country {
            None => return Some(format!("country: unknown, campaign wants {wanted}")),
            Some(c) if !t.countries.contains(&c) => {
                return Some(format!("country: visitor is {c}, campaign wants {wanted}"));
            }
            Some(_) => {}
        }
    }
    let browser = agent.browser.name();
    let group = browser_group(&browser);
    if !t.browsers.is_empty()
        && !t.browsers.iter().any(|b| {
            b.eq_ignore_ascii_case(&browser) || group.is_some_and(|g| b.eq_ignore_ascii_case(g))
        })
    {
        return Some(format!(
            "browser: visitor has {browser}, campaign wants {}",
            t.browsers.join(", ")
        ));
    }
    let os = agent.os.name();
    if !t.os.is_empty() && !t.os.iter().any(|o| o.eq_ignore_ascii_case(&os)) {
        return Some(format!(
            "os: visitor has {os}, campaign wants {}",
            t.os.join(", ")
        ));
    }
    if !t.devices.is_empty() && !t.devices.contains(&agent.device) {
        let wanted = t
            .devices
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Some(format!(
            "device: visitor is {}, campaign wants {wanted}",
            agent.device.as_str()
        ));
    }
    None
}

/// Explains the auction for `visitor`: who is eligible and why the others are not.
pub fn explain(catalogue: &Catalogue, visitor: &Visitor, bots_win: bool) -> Explanation {
    let mut eligible = Vec::new();
    let mut excluded = Vec::new();
    for c in catalogue.campaigns() {
        match exclusion_reason(c, visitor, bots_win) {
            None => eligible.push(c.id),
            Some(reason) => excluded.push(Exclusion { id: c.id, reason }),
        }
    }
    excluded.sort_by_key(|e| e.id);
    Explanation { eligible, excluded }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::{Arc, LazyLock};

    use super::*;
    use crate::campaigns::file;
    use crate::visitor::geoip::Country;
    use crate::visitor::user_agent::UserAgentParser;

    static UA: LazyLock<Arc<UserAgentParser>> = LazyLock::new(|| UserAgentParser::new().unwrap());

    const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
    const FIREFOX_LINUX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    fn catalogue(text: &str) -> Catalogue {
        Catalogue::new(file::parse(text).unwrap(), "test.toml".into())
    }

    fn visitor(country: Option<&str>, ua: &str) -> Visitor {
        Visitor {
            ip: IpAddr::from([1, 2, 3, 4]),
            country: country.and_then(Country::parse),
            agent: UA.parse(ua),
        }
    }

    fn winner(c: &Catalogue, v: &Visitor) -> Option<u32> {
        match run(c, v, false) {
            Outcome::Won(c) => Some(c.id),
            _ => None,
        }
    }

    const SEED: &str = r#"
[[campaign]]
id = 1
url = "https://yandex.ru"
bid = 1.5
targeting = { countries = ["RU"], browsers = ["Chrome"] }
[[campaign]]
id = 2
url = "https://google.com"
bid = 2.0
targeting = { countries = ["DE"], browsers = ["Chrome"] }
[[campaign]]
id = 3
url = "https://duckduckgo.com"
bid = 0.5
targeting = { browsers = ["Firefox"] }
"#;

    #[test]
    fn seed_campaigns() {
        let c = catalogue(SEED);
        assert_eq!(winner(&c, &visitor(Some("RU"), CHROME_WIN)), Some(1));
        assert_eq!(
            winner(&c, &visitor(Some("DE"), CHROME_ANDROID)),
            Some(2),
            "Chrome matches Chrome Mobile"
        );
        assert_eq!(winner(&c, &visitor(Some("US"), FIREFOX_LINUX)), Some(3));
        assert_eq!(
            winner(&c, &visitor(None, FIREFOX_LINUX)),
            Some(3),
            "unknown country still runs"
        );
        assert_eq!(winner(&c, &visitor(None, CHROME_WIN)), None);
        assert_eq!(winner(&c, &visitor(Some("US"), IPHONE)), None);
        assert!(matches!(
            run(&c, &visitor(Some("RU"), GOOGLEBOT), false),
            Outcome::Bot
        ));
    }

    #[test]
    fn highest_bid_wins_not_cheapest() {
        let c = catalogue(
            "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\n[[campaign]]\nid = 2\nurl = \"https://a.b\"\nbid = 3\n[[campaign]]\nid = 3\nurl = \"https://a.b\"\nbid = 2\n",
        );
        for _ in 0..100 {
            assert_eq!(winner(&c, &visitor(Some("US"), CHROME_WIN)), Some(2));
        }
    }

    #[test]
    fn inactive_never_wins_and_bots_only_when_allowed() {
        let c = catalogue(
            "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 9\nactive = false\n[[campaign]]\nid = 2\nurl = \"https://a.b\"\nbid = 1\n",
        );
        assert_eq!(winner(&c, &visitor(None, CHROME_WIN)), Some(2));
        let bot = visitor(None, GOOGLEBOT);
        assert!(matches!(run(&c, &bot, false), Outcome::Bot));
        assert!(matches!(run(&c, &bot, true), Outcome::Won(w) if w.id == 2));
    }

    #[test]
    fn equal_top_bids_rotate_uniformly() {
        let mut text = String::new();
        for id in 1..=70 {
            // Ids 1..=3 share the top bid and sit in different words of the bitset (positions
            // 0..3 after sorting); 10 targets only Firefox so it is tied but not eligible.
            let bid = if id <= 3 || id == 10 { 5.0 } else { 1.0 };
            let targeting = if id == 10 {
                "targeting = { browsers = [\"Firefox\"] }\n"
            } else {
                ""
            };
            text.push_str(&format!(
                "[[campaign]]\nid = {id}\nurl = \"https://a.b\"\nbid = {bid}\n{targeting}"
            ));
        }
        let c = catalogue(&text);
        let v = visitor(None, CHROME_WIN);
        let mut counts = [0u32; 4];
        let runs = 30_000;
        for _ in 0..runs {
            let id = winner(&c, &v).unwrap();
            assert!(id <= 3, "{id}");
            counts[id as usize] += 1;
        }
        // Each of 3 should get 1/3: 10,000 expected, sd ~82; allow 6 sd.
        for id in 1..=3 {
            assert!((counts[id] as i64 - 10_000).abs() < 500, "{counts:?}");
        }
    }

    #[test]
    fn groups_and_case_in_targeting() {
        let c = catalogue(
            "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = 1\ntargeting = { browsers = [\"safari\"], os = [\"ios\"], devices = [\"mobile\"] }\n[[campaign]]\nid = 2\nurl = \"https://a.b\"\nbid = 2\ntargeting = { browsers = [\"Chrome Mobile\"] }\n",
        );
        assert_eq!(
            winner(&c, &visitor(None, IPHONE)),
            Some(1),
            "Safari matches Mobile Safari"
        );
        assert_eq!(
            winner(&c, &visitor(None, CHROME_ANDROID)),
            Some(2),
            "exact variant"
        );
        assert_eq!(
            winner(&c, &visitor(None, CHROME_WIN)),
            None,
            "variant does not match base"
        );
    }

    /// The index must agree with the plain rules for every visitor: a pseudo-random catalogue of
    /// 2,000 campaigns against the synthetic visitors.
    #[test]
    fn index_agrees_with_explain() {
        let countries = ["RU", "DE", "US", "GB", "FR", "JP", "BR", "IN"];
        let browsers = [
            "Chrome",
            "Firefox",
            "Safari",
            "Chrome Mobile",
            "Edge",
            "Opera",
            "Samsung Internet",
        ];
        let oses = ["Windows", "Android", "iOS", "Mac OS X", "Linux"];
        let devices = ["desktop", "mobile", "tablet", "tv", "other", "bot"];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut text = String::new();
        let pick = |rng: &mut fastrand::Rng, list: &[&str]| -> String {
            let n = rng.usize(0..3);
            let items: Vec<String> = (0..n)
                .map(|_| format!("{:?}", list[rng.usize(..list.len())]))
                .collect();
            format!("[{}]", items.join(", "))
        };
        for id in 1..=2000 {
            text.push_str(&format!(
                "[[campaign]]\nid = {id}\nurl = \"https://a.b/{id}\"\nbid = {}\nactive = {}\ntargeting = {{ countries = {}, browsers = {}, os = {}, devices = {} }}\n",
                rng.u32(1..50) as f64 / 10.0,
                rng.u8(..10) != 0,
                pick(&mut rng, &countries),
                pick(&mut rng, &browsers),
                pick(&mut rng, &oses),
                pick(&mut rng, &devices),
            ));
        }
        let c = catalogue(&text);
        let uas = [
            CHROME_WIN,
            CHROME_ANDROID,
            FIREFOX_LINUX,
            IPHONE,
            GOOGLEBOT,
            "",
            "curl/8.0",
        ];
        for country in countries.iter().map(|c| Some(*c)).chain([None, Some("NZ")]) {
            for ua in uas {
                let v = visitor(country, ua);
                for bots_win in [false, true] {
                    let explained = explain(&c, &v, bots_win).eligible;
                    let indexed: Vec<u32> = if v.agent.is_bot() && !bots_win {
                        Vec::new()
                    } else {
                        c.index()
                            .eligible(&v)
                            .into_iter()
                            .map(|p| c.campaigns()[p].id)
                            .collect()
                    };
                    assert_eq!(indexed, explained, "{country:?} {ua}");
                    if let Some(first) = explained.first() {
                        let top = c.campaigns().iter().find(|x| x.id == *first).unwrap().bid;
                        match run(&c, &v, bots_win) {
                            Outcome::Won(w) => assert_eq!(w.bid, top),
                            other => panic!("{other:?}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn explain_gives_reasons() {
        let c = catalogue(SEED);
        let e = explain(&c, &visitor(Some("DE"), FIREFOX_LINUX), false);
        assert_eq!(e.eligible, [3]);
        assert_eq!(
            e.excluded[0],
            Exclusion {
                id: 1,
                reason: "country: visitor is DE, campaign wants RU".into()
            }
        );
        assert!(
            e.excluded[1]
                .reason
                .starts_with("browser: visitor has Firefox"),
            "{:?}",
            e.excluded
        );
    }

    /// Issue 10: a slot's auction is among the campaigns with a creative that fits the placement
    /// and that target it (or any placement); a campaign already holding a slot of the request
    /// is skipped while another is eligible.
    #[test]
    fn placement_auctions() {
        let c = catalogue(
            r#"
[[placement]]
id = "top"
sizes = ["728x90"]
[[placement]]
id = "side"
[[campaign]]
id = 1
url = "https://a.b"
bid = 9
[[campaign]]
id = 2
url = "https://a.b"
bid = 5
placements = ["side"]
[[campaign.creative]]
id = 21
kind = "image"
size = "728x90"
image_url = "https://a.b/21.png"
[[campaign]]
id = 3
url = "https://a.b"
bid = 3
[[campaign.creative]]
id = 31
kind = "html"
size = "728x90"
html = "<b>3</b>"
[[campaign]]
id = 4
url = "https://a.b"
bid = 2
targeting = { browsers = ["Firefox"] }
[[campaign.creative]]
id = 41
kind = "text"
text = "four"
"#,
        );
        let v = visitor(None, CHROME_WIN);
        let top = c.placement("top").unwrap();
        let side = c.placement("side").unwrap();
        let id = |p: Option<usize>| p.and_then(|p| c.get(p)).map(|c| c.id);
        let index = c.index();
        // 1 has no creative; 2 targets only "side"; 4 wants Firefox.
        assert_eq!(id(index.best_in_placement(&v, top, &[], |_| 0)), Some(3));
        assert_eq!(id(index.best_in_placement(&v, side, &[], |_| 0)), Some(2));
        let two = index.best_in_placement(&v, side, &[], |_| 0).unwrap();
        let three = index.best_in_placement(&v, top, &[], |_| 0).unwrap();
        assert_eq!(
            id(index.best_in_placement(&v, side, &[two], |_| 0)),
            Some(3)
        );
        assert_eq!(
            id(index.best_in_placement(&v, side, &[two, three], |_| 0)),
            None
        );
        assert_eq!(id(index.best_in_placement(&v, 7, &[], |_| 0)), None);
        assert_eq!(c.placement("nope"), None);
        let (campaign, creative) = c.creative(31).unwrap();
        assert_eq!((campaign.id, creative.id), (3, 31));
        assert!(c.creative(1).is_none());
        // GET /ad is unchanged: the highest bid wins, creatives or not.
        assert_eq!(winner(&c, &v), Some(1));
    }
}
