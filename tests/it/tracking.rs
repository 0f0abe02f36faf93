//! Issue 10, item 4: tracking URLs against the real server. Tokens are signed here with the
//! library's `Signer` over the key file the server created in its data folder.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rotator::config::TrackingConfig;
use rotator::tracking::{Claims, EventKind, Signer, new_id, now};
use rotator::visitor::geoip::Country;
use rotator::visitor::symbol::Sym;
use rotator::visitor::user_agent::Device;

use crate::harness::{Server, config, report_json, request, run, seed_campaigns, temp_dir};

/// Creative 201's `click_url` in the test's campaigns.
const LANDING: &str = "https://google.com/landing";

/// The value of `rotator_tracking_events_total{kind, outcome}`.
fn events(s: &Server, kind: &str, outcome: &str) -> u64 {
    let text = request(s.metrics.unwrap(), "GET", "/metrics", &[]).body;
    let series = format!("rotator_tracking_events_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no series {series}in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn signer(dir: &Path) -> Signer {
    Signer::load(&TrackingConfig {
        secret_file: dir.join("data/tracking.key"),
        ..TrackingConfig::default()
    })
    .unwrap()
}

/// A token of `kind` for campaign 2, creative 201, placement `top-banner`.
fn token(signer: &Signer, id: [u8; 12], kind: EventKind, issued: u32, expires: u32) -> String {
    token_for(signer, 201, id, kind, issued, expires)
}

fn token_for(
    signer: &Signer,
    creative_id: u32,
    id: [u8; 12],
    kind: EventKind,
    issued: u32,
    expires: u32,
) -> String {
    signer.sign(&Claims {
        id,
        kind,
        campaign_id: 2,
        creative_id,
        placement: Sym::intern("top-banner"),
        issued,
        expires,
        country: Country::parse("DE"),
        os: Sym::intern("Windows"),
        browser: Sym::intern("Chrome"),
        device: Device::Desktop,
    })
}

#[test]
fn issue10_tracking_urls_count_once_across_restarts() {
    let dir = temp_dir("tracking");
    let cfg = config("", "[stats]\nflush_interval = \"200ms\"\n");
    // The landing page is the creative's own, not the campaign's URL.
    let campaigns = seed_campaigns().replace(
        "id = 201\n",
        "id = 201\nclick_url = \"https://google.com/landing\"\n",
    );
    assert!(campaigns.contains("/landing"));
    let s = Server::start_in(&dir, &cfg, &campaigns);
    let key = dir.join("data/tracking.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key created private");
    let signer = signer(&dir);
    let now = now();
    let id = new_id();
    let impression = token(&signer, id, EventKind::Impression, now, now + 3600);
    let click = token(&signer, id, EventKind::Click, now, now + 86_400);
    let get = |s: &Server, method: &str, path: &str| request(s.addr, method, path, &[]);

    // Forged: one character changed in the signed part: no redirect anywhere.
    let mut forged = click.clone().into_bytes();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let r = get(&s, "GET", &format!("/v1/c/{forged}"));
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.header("location"), None);
    assert!(r.body.contains("not valid"), "{}", r.body);
    assert_eq!(get(&s, "GET", &format!("/v1/i/{forged}")).status, 400);
    assert_eq!(get(&s, "GET", "/v1/c/").status, 400);

    // A click before its impression: redirected, not counted.
    let r = get(&s, "GET", &format!("/v1/c/{click}"));
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(LANDING));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // HEAD counts nothing.
    let r = get(&s, "HEAD", &format!("/v1/i/{impression}"));
    assert_eq!(r.status, 204);

    // Replayed 100 times: counted once.
    for _ in 0..100 {
        let r = get(&s, "GET", &format!("/v1/i/{impression}"));
        assert_eq!(r.status, 204);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }
    let r = get(&s, "GET", &format!("/v1/c/{click}"));
    assert_eq!((r.status, r.header("location")), (302, Some(LANDING)));
    assert_eq!(get(&s, "GET", &format!("/v1/c/{click}")).status, 302);

    // Expired: not counted; the click still goes to the landing page.
    let old = new_id();
    let expired = token(&signer, old, EventKind::Impression, now - 7200, now - 3600);
    assert_eq!(get(&s, "GET", &format!("/v1/i/{expired}")).status, 204);
    let expired = token(&signer, old, EventKind::Click, now - 7200, now - 3600);
    let r = get(&s, "GET", &format!("/v1/c/{expired}"));
    assert_eq!((r.status, r.header("location")), (302, Some(LANDING)));

    // A creative no longer in the campaigns: default_url, never a URL from the request.
    let gone = token_for(&signer, 999, old, EventKind::Click, now, now + 60);
    let r = get(&s, "GET", &format!("/v1/c/{gone}"));
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("https://default.example"))
    );

    // An impression token is not a click token.
    assert_eq!(get(&s, "GET", &format!("/v1/c/{impression}")).status, 400);

    for (kind, outcome, n) in [
        ("impression", "counted", 1),
        ("impression", "duplicate", 99),
        ("impression", "head", 1),
        ("impression", "expired", 1),
        ("impression", "bad_signature", 1),
        ("click", "no_impression", 2),
        ("click", "counted", 1),
        ("click", "duplicate", 1),
        ("click", "expired", 1),
        ("click", "bad_signature", 1),
        ("click", "malformed", 2),
        ("viewable", "counted", 0),
    ] {
        assert_eq!(events(&s, kind, outcome), n, "{kind} {outcome}");
    }
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");

    // After SIGTERM and a restart: the same key, and the replays still count nothing.
    let s = Server::spawn(&dir);
    for _ in 0..3 {
        assert_eq!(get(&s, "GET", &format!("/v1/i/{impression}")).status, 204);
    }
    assert_eq!(get(&s, "GET", &format!("/v1/c/{click}")).status, 302);
    assert_eq!(events(&s, "impression", "duplicate"), 3);
    assert_eq!(events(&s, "impression", "counted"), 0);
    assert_eq!(events(&s, "click", "duplicate"), 1);
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");

    let v = report_json(&dir, Some("placement,creative"));
    let rows = v["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["placement"] == "top-banner")
        .unwrap_or_else(|| panic!("no top-banner row in {v}"));
    assert_eq!(row["creative"], "201");
    assert_eq!(row["impressions"], 1, "{v}");
    assert_eq!(row["clicks"], 1, "{v}");
    assert_eq!(row["requests"], 0, "{v}");

    // `check` reads the key; a key file too short to be a key is refused, saying why.
    let cfg = dir.join("rotator.toml");
    let (status, out, err) = run(&["check", "--config", cfg.to_str().unwrap()], None);
    assert!(
        status.success() && out.contains("tracking.key\n"),
        "{out}{err}"
    );
    std::fs::write(&key, "secret\n").unwrap();
    let (status, _, err) = run(&["check", "--config", cfg.to_str().unwrap()], None);
    assert!(!status.success() && err.contains("holds 7 bytes"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
