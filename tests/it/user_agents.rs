//! User-Agent classification over real HTTP (issues 8 item 7, 9 items 2 and 5): real visitors are
//! not bots and get the right device type, `[bots]` corrections apply, huge agents are parsed
//! by their first bytes, and invented names do not change how later visitors are classified.

use crate::harness::{Server, config, temp_dir};
use crate::server::US;

const CAMPAIGNS: &str = r#"
[[campaign]]
id = 1
name = "Vivaldi"
url = "https://vivaldi.example"
bid = 4.0
[campaign.targeting]
browsers = ["Vivaldi"]

[[campaign]]
id = 2
name = "TV"
url = "https://tv.example"
bid = 3.0
[campaign.targeting]
devices = ["tv"]

[[campaign]]
id = 3
name = "Phones"
url = "https://mobile.example"
bid = 2.0
[campaign.targeting]
devices = ["mobile"]

[[campaign]]
id = 4
name = "Anyone"
url = "https://any.example"
bid = 1.0
"#;

const GALAXY_S24: &str = "Mozilla/5.0 (Linux; Android 15; SM-S921B Build/AP3A.240617.008) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36";
const LG_NETCAST: &str = "Mozilla/5.0 (DirectFB; Linux armv7l) AppleWebKit/534.26+ (KHTML, like Gecko) Version/5.0 Safari/534.26+ LG Browser/5.00.00(+mouse+3D+SCREEN+TUNER; LGE; 42LM6700-UA; 04.41.03; 0x00000001;); LG NetCast.TV-2012 0";
const FEATURE_PHONE: &str = "Nokia6230i/2.0 (03.40) Profile/MIDP-2.0 Configuration/CLDC-1.1";
const VIVALDI: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Vivaldi/6.8.3381.48";

#[test]
fn issue8_issue9_visitors_are_classified_right_whatever_others_send() {
    let dir = temp_dir("agents");
    let rest =
        "[stats]\nsink = \"none\"\n[bots]\nallow = [\"^MyProbe/\"]\ndeny = [\"InHouseFetcher\"]\n";
    let s = Server::start_in(&dir, &config("", rest), CAMPAIGNS);
    let location = |ua: &str| s.ad(US, ua).header("location").map(str::to_string);
    let url = |u: &str| Some(u.to_string());

    // Issue 8: a real Galaxy S24 is a phone, not a bot; a TV is a TV; a feature phone a phone.
    assert_eq!(location(GALAXY_S24), url("https://mobile.example"));
    assert_eq!(location(LG_NETCAST), url("https://tv.example"));
    assert_eq!(location(FEATURE_PHONE), url("https://mobile.example"));
    // The operator's corrections: an allowed probe is a visitor, a denied fetcher a bot.
    assert_eq!(
        location("MyProbe/1.0 (+https://probe.example/bot.html)"),
        url("https://any.example")
    );
    assert_eq!(
        location(&format!("{VIVALDI} InHouseFetcher/2")),
        url("https://default.example")
    );

    // Issue 9 item 2: a 12 KB agent is classified by its first bytes.
    let long = format!("{GALAXY_S24} {}", "x".repeat(12 * 1024));
    assert_eq!(location(&long), url("https://mobile.example"));

    // Issue 9 item 5: invented names, then a real Vivaldi visitor still wins its campaign.
    for i in 0..300 {
        assert_eq!(
            location(&format!("Fl{i}Bot/1.0")),
            url("https://default.example")
        );
    }
    assert_eq!(location(VIVALDI), url("https://vivaldi.example"));
}
