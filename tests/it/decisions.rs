//! `POST /v1/decisions` over real HTTP: slots, auctions per placement, refusals, CORS, and the
//! visitor taken from the body only from trusted proxies.

use serde_json::Value;

use crate::harness::{Server, config, parse, post, post_bytes, request, send_raw_from, temp_dir};
use crate::server::{CHROME, GOOGLEBOT, RU, US};

/// Campaign 1 (bid 9, RU only) and 2 (bid 5) fit both placements; 3 (bid 1) fits only `top`
/// and is the only one with a text creative; 4 has no creative (GET /ad only, highest bid).
pub const PLACED_CAMPAIGNS: &str = r#"
[[placement]]
id = "top"
sizes = ["728x90"]
[[placement]]
id = "side"
sizes = ["728x90", "300x250"]
kinds = ["image", "html"]
[[placement]]
id = "text"
kinds = ["text"]

[[campaign]]
id = 1
url = "https://one.example/"
bid = 9
targeting = { countries = ["RU"] }
[[campaign.creative]]
id = 101
kind = "image"
size = "728x90"
image_url = "https://cdn.example/101.png"
alt = "One <sale>"

[[campaign]]
id = 2
url = "https://two.example/"
bid = 5
[[campaign.creative]]
id = 201
kind = "html"
size = "728x90"
html = "<a href='{{click_url}}' target='_top'>Two {{cachebuster}}</a>"
click_url = "https://two.example/landing"

[[campaign]]
id = 3
url = "https://three.example/"
bid = 1
placements = ["top", "text"]
[[campaign.creative]]
id = 301
kind = "image"
size = "728x90"
image_url = "https://cdn.example/301.png"
[[campaign.creative]]
id = 302
kind = "text"
text = "Three"

[[campaign]]
id = 4
url = "https://four.example/"
bid = 20
"#;

fn slots(placements: &[(&str, &str)], extra: &str) -> String {
    let list: Vec<String> = placements
        .iter()
        .map(|(div, p)| format!(r#"{{"div":"{div}","placement":"{p}"}}"#))
        .collect();
    format!(r#"{{"placements":[{}]{extra}}}"#, list.join(","))
}

fn decisions(s: &Server, body: &str) -> Value {
    let r = s.post_json("/v1/decisions", body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    serde_json::from_str::<Value>(&r.body).unwrap()["decisions"].clone()
}

fn winner(d: &Value) -> Option<u64> {
    d["campaign_id"].as_u64()
}

#[test]
fn issue10_decisions_api() {
    let dir = temp_dir("decisions");
    let s = Server::start_in(
        &dir,
        &config("", "[stats]\nsink = \"none\"\n"),
        PLACED_CAMPAIGNS,
    );
    let visitor = |ip: &str, ua: &str| format!(r#","ip":"{ip}","ua":"{ua}""#);

    // RU: 1 wins the first slot; the second goes to 2, not 1 again; only 3 has text.
    let d = decisions(
        &s,
        &slots(
            &[("a", "top"), ("b", "side"), ("c", "text")],
            &visitor(RU, CHROME),
        ),
    );
    let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3);
    assert_eq!(
        (winner(&d["a"]), winner(&d["b"]), winner(&d["c"])),
        (Some(1), Some(2), Some(3))
    );
    let a = &d["a"];
    assert_eq!(a["creative_id"], 101);
    assert_eq!(a["kind"], "image");
    assert_eq!(
        (a["width"].as_u64(), a["height"].as_u64()),
        (Some(728), Some(90))
    );
    assert_eq!(a["image_url"], "https://cdn.example/101.png");
    assert_eq!(a["alt"], "One <sale>");
    assert!(a["html"].is_null() && a["text"].is_null());
    for (field, path) in [
        ("click_url", "/v1/c/"),
        ("impression_url", "/v1/i/"),
        ("viewable_url", "/v1/v/"),
    ] {
        let url = a[field].as_str().unwrap();
        assert!(
            url.starts_with(&format!("http://test{path}")),
            "{field}: {url}"
        );
        assert!(url.len() < 300, "{field}: compact: {url}");
    }
    let b = &d["b"];
    assert_eq!(
        (b["kind"].as_str(), b["creative_id"].as_u64()),
        (Some("html"), Some(201))
    );
    let html = b["html"].as_str().unwrap();
    let click = b["click_url"].as_str().unwrap();
    assert!(
        html.starts_with(&format!("<a href='{click}' target='_top'>Two ")),
        "{html}"
    );
    assert!(!html.contains("{{"), "{html}");
    let c = &d["c"];
    assert_eq!(
        (c["kind"].as_str(), c["text"].as_str()),
        (Some("text"), Some("Three"))
    );
    assert!(c["width"].is_null() && c["height"].is_null());

    // US: 1 is out (RU only); 2 takes the first slot, 3 the second; with a third slot and
    // nobody else eligible, a campaign may win twice.
    let d = decisions(
        &s,
        &slots(
            &[("a", "top"), ("b", "top"), ("c", "side")],
            &visitor(US, CHROME),
        ),
    );
    assert_eq!(
        (winner(&d["a"]), winner(&d["b"]), winner(&d["c"])),
        (Some(2), Some(3), Some(2))
    );
    // A bot fills nothing; the redirect endpoint is unchanged (4, without creatives, wins it).
    let d = decisions(&s, &slots(&[("a", "top")], &visitor(US, GOOGLEBOT)));
    assert!(d["a"].is_null(), "{d}");
    assert_eq!(
        s.ad(US, CHROME).header("location"),
        Some("https://four.example/")
    );

    // Refusals: each a JSON error naming the problem, with CORS.
    let refused = |body: &str, status: u16, needle: &str| {
        let r = s.post_json("/v1/decisions", body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let error = serde_json::from_str::<Value>(&r.body).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(error.contains(needle), "{body}: {error}");
    };
    refused("{", 400, "malformed JSON");
    refused(r#"{"placements":[],"x":1}"#, 400, "unknown field `x`");
    refused(&slots(&[], ""), 400, "at least one");
    refused(
        &slots(&[("a", "top"), ("b", "nope")], ""),
        400,
        "placements[1].placement: \"nope\"",
    );
    refused(
        &slots(&[("a", "top"), ("a", "side")], ""),
        400,
        "placements[1].div: \"a\"",
    );
    let many: Vec<(String, &str)> = (0..21).map(|i| (format!("d{i}"), "top")).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(d, p)| (d.as_str(), *p)).collect();
    refused(&slots(&many, ""), 400, "21 slots, at most 20");
    refused(&slots(&[("a", "top")], r#","ip":"999.1.1.1""#), 400, "ip:");
    let big = slots(
        &[("a", "top")],
        &format!(r#","url":"{}""#, "x".repeat(70_000)),
    );
    refused(&big, 413, "65536");
    let r = post(
        s.addr,
        "/v1/decisions",
        "text/plain",
        slots(&[("a", "top")], "").as_bytes(),
    );
    assert_eq!(r.status, 415, "{}", r.body);
    let r = request(s.addr, "GET", "/v1/decisions", &[]);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, OPTIONS")));
    let r = request(
        s.addr,
        "OPTIONS",
        "/v1/decisions",
        &[
            ("Origin", b"https://publisher.example"),
            ("Access-Control-Request-Method", b"POST"),
            ("Access-Control-Request-Headers", b"content-type"),
        ],
    );
    assert_eq!(r.status, 204);
    // The page's origin is named and credentials allowed (the tag sends the identity cookie);
    // a caller without Origin gets `*`.
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://publisher.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = request(s.addr, "OPTIONS", "/v1/decisions", &[]);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    let r = request(
        s.addr,
        "OPTIONS",
        "/v1/decisions",
        &[("Origin", b"https://publisher.example")],
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type")
    );
    // The server kept serving through all of it.
    assert_eq!(s.ad(US, CHROME).status, 303);
}

/// `ip` and `ua` in the body are believed only from trusted proxies.
#[test]
fn issue10_body_visitor_only_from_trusted_proxies() {
    let dir = temp_dir("decisions-trust");
    let s = Server::start_in(
        &dir,
        &config(
            "trusted_proxies = [\"127.0.0.1/32\"]",
            "[stats]\nsink = \"none\"\n",
        ),
        PLACED_CAMPAIGNS,
    );
    let body = slots(&[("a", "top")], &format!(r#","ip":"{RU}","ua":"{CHROME}""#));
    let trusted = decisions(&s, &body);
    assert_eq!(winner(&trusted["a"]), Some(1), "RU from the trusted proxy");
    // From a visitor's own address (not a trusted proxy): the body's ip and ua are ignored,
    // the connection's address (no country) and agent (none) decide: 1 (RU only) cannot win.
    let raw = post_bytes("/v1/decisions", "application/json", body.as_bytes());
    let r = parse(&send_raw_from("127.0.0.2".parse().unwrap(), s.addr, &raw));
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &serde_json::from_str::<Value>(&r.body).unwrap()["decisions"];
    assert_eq!(winner(&d["a"]), Some(2), "{d}");
}
