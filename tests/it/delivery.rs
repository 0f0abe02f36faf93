//! Issue 11 on one node with the local state backend, through the real server over HTTP: a
//! daily budget spent exactly (leases charged at decision time), frequency caps by `user.key`
//! and by the identity cookie, `Sec-GPC`, a flight that has not started, a restart that forgets
//! neither spend nor caps, and `rotator explain` naming each reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Response, Server, config, report_json, request, run, temp_dir};
use crate::server::{CHROME, DE, FIREFOX, US};

/// The budgeted campaign: 10.0 per 1,000 impressions = 10,000 micros each; 2.0 a day = 200.
pub const BUDGETED: u32 = 11;
/// How long the budgeted campaign must not win to count as spent: more than two of the
/// engine's ticks (leases come once a tick) with margin for a loaded machine.
pub const QUIET: Duration = Duration::from_millis(2500);
/// Impressions the daily budget pays for.
pub const BUDGETED_WINS: u64 = 200;
/// Cheaper, unlimited, same visitors.
pub const CHEAP: u32 = 12;
/// Highest bid, flight not started.
pub const LATER: u32 = 13;
/// Capped at 3 per 24 h (slots, US visitors).
pub const CAPPED: u32 = 14;
/// Unlimited filler of the same slots.
pub const FILLER: u32 = 15;

/// The campaigns of these tests; `start` is the not-started flight's start (RFC 3339).
pub fn campaigns(start: &str) -> String {
    format!(
        r#"
[[campaign]]
id = {BUDGETED}
name = "budgeted"
url = "https://c{BUDGETED}.example/"
bid = 10.0
[campaign.targeting]
countries = ["DE"]
[campaign.budget]
daily = 2.0
pacing = "asap"

[[campaign]]
id = {CHEAP}
name = "cheap"
url = "https://c{CHEAP}.example/"
bid = 1.0
[campaign.targeting]
countries = ["DE"]

[[campaign]]
id = {LATER}
name = "later"
url = "https://c{LATER}.example/"
bid = 50.0
start = {start}
[campaign.targeting]
countries = ["DE"]

[[campaign]]
id = {CAPPED}
name = "capped"
url = "https://c{CAPPED}.example/"
bid = 5.0
[campaign.targeting]
countries = ["US"]
[campaign.frequency_cap]
impressions = 3
per = "24h"
[[campaign.creative]]
id = {CAPPED}01
kind = "text"
text = "capped"

[[campaign]]
id = {FILLER}
name = "filler"
url = "https://c{FILLER}.example/"
bid = 0.5
[campaign.targeting]
countries = ["US"]
[[campaign.creative]]
id = {FILLER}01
kind = "text"
text = "filler"

[[placement]]
id = "text-link"
kinds = ["text"]
"#
    )
}

/// A flight start 30 days from now (midnight UTC), as written in the campaigns file and as
/// `explain` prints it.
pub fn later_start() -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = now / 86_400 + 30;
    let (y, m, d) = civil(day as i64);
    (
        format!("{y:04}-{m:02}-{d:02}T00:00:00Z"),
        format!("flight: starts {y:04}-{m:02}-{d:02} 00:00:00 UTC"),
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The campaign a `GET /ad` answer sends the visitor to (0: the default URL).
pub fn ad_winner(r: &Response) -> u32 {
    assert_eq!(r.status, 303, "{r:?}");
    let location = r.header("location").unwrap_or_default();
    location
        .strip_prefix("https://c")
        .and_then(|rest| rest.strip_suffix(".example/"))
        .map_or(0, |id| id.parse().unwrap())
}

/// The campaign that filled the one slot of a decisions answer (0: none).
pub fn slot_winner(r: &Response) -> u32 {
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["decisions"]["a"]["campaign_id"]
        .as_u64()
        .map_or(0, |id| id as u32)
}

/// A decisions body asking one text slot for a US Chrome visitor with `user.key` = `key`.
pub fn keyed_body(key: &str) -> String {
    format!(
        r#"{{"placements":[{{"div":"a","placement":"text-link"}}],"user":{{"key":"{key}"}},"ip":"{US}","ua":"{CHROME}"}}"#
    )
}

/// The sum of the samples of `name` whose labels contain `labels` (e.g. `reason="budget"`).
pub fn metric_sum(metrics: std::net::SocketAddr, name: &str, labels: &str) -> f64 {
    let text = request(metrics, "GET", "/metrics", &[]).body;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(labels))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Drives `GET /ad` for a Chrome visitor at `ip` from `clients` threads (round-robin over
/// `addrs`) until `budgeted` has not won for `quiet` (at most `limit`); returns the wins by
/// campaign.
pub fn drive_until_quiet(
    addrs: &[std::net::SocketAddr],
    (ip, budgeted): (&'static str, u32),
    clients: usize,
    quiet: Duration,
    limit: Duration,
) -> HashMap<u32, u64> {
    let started = Instant::now();
    let last_win = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let addrs = addrs.to_vec();
            let last_win = last_win.clone();
            std::thread::spawn(move || {
                let mut wins = HashMap::<u32, u64>::new();
                for n in 0.. {
                    let elapsed = started.elapsed();
                    let last = Duration::from_millis(last_win.load(Ordering::Relaxed));
                    if elapsed > limit || elapsed.saturating_sub(last) > quiet {
                        break;
                    }
                    let addr = addrs[(t + n) % addrs.len()];
                    let r = request(
                        addr,
                        "GET",
                        "/ad",
                        &[
                            ("X-Forwarded-For", ip.as_bytes()),
                            ("User-Agent", CHROME.as_bytes()),
                        ],
                    );
                    let winner = ad_winner(&r);
                    if winner == budgeted {
                        last_win.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    *wins.entry(winner).or_default() += 1;
                }
                wins
            })
        })
        .collect();
    let mut all = HashMap::new();
    for t in threads {
        for (campaign, n) in t.join().unwrap() {
            *all.entry(campaign).or_default() += n;
        }
    }
    assert!(
        started.elapsed() < limit,
        "the budgeted campaign kept winning for {limit:?}: {all:?}"
    );
    all
}

/// Decisions for `keys` × `asks` from `clients` threads, each key's asks on `addrs`
/// round-robin; returns the fills of `capped` per key and the fills of every campaign.
pub fn capped_fills(
    addrs: &[std::net::SocketAddr],
    keys: &[String],
    (asks, clients): (usize, usize),
    capped: u32,
) -> (HashMap<String, u64>, HashMap<u32, u64>) {
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let addrs = addrs.to_vec();
            let keys: Vec<(usize, String)> = keys
                .iter()
                .cloned()
                .enumerate()
                .skip(t)
                .step_by(clients)
                .collect();
            std::thread::spawn(move || {
                let (mut per_key, mut all) = (HashMap::new(), HashMap::<u32, u64>::new());
                for (k, key) in keys {
                    let body = keyed_body(&key);
                    let mut fills = 0;
                    for n in 0..asks {
                        let r = crate::harness::post(
                            addrs[(k + n) % addrs.len()],
                            "/v1/decisions",
                            "application/json",
                            body.as_bytes(),
                        );
                        let winner = slot_winner(&r);
                        fills += u64::from(winner == capped);
                        *all.entry(winner).or_default() += 1;
                    }
                    per_key.insert(key, fills);
                }
                (per_key, all)
            })
        })
        .collect();
    let (mut per_key, mut all) = (HashMap::new(), HashMap::<u32, u64>::new());
    for t in threads {
        let (keys, by_campaign) = t.join().unwrap();
        per_key.extend(keys);
        for (c, n) in by_campaign {
            *all.entry(c).or_default() += n;
        }
    }
    (per_key, all)
}

/// A decisions call without `user.key` from the visitor's own browser (headers as sent).
fn browser_decision(s: &Server, ua: &str, extra: &[(&str, &str)]) -> Response {
    let body = format!(r#"{{"placements":[{{"div":"a","placement":"text-link"}}],"ip":"{US}"}}"#);
    let length = body.len().to_string();
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("Content-Type", b"application/json"),
        ("Content-Length", length.as_bytes()),
        ("User-Agent", ua.as_bytes()),
    ];
    headers.extend(extra.iter().map(|(n, v)| (*n, v.as_bytes())));
    let raw = {
        let mut raw =
            b"POST /v1/decisions HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_vec();
        for (n, v) in &headers {
            raw.extend_from_slice(n.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(v);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body.as_bytes());
        raw
    };
    crate::harness::parse(&crate::harness::send_raw(s.addr, &raw))
}

/// `rotator explain` with the config in `dir`; the parsed JSON, and stderr.
pub fn explain(dir: &std::path::Path, args: &[&str]) -> (Value, String) {
    let cfg = dir.join("rotator.toml");
    let mut all = vec!["explain", "--config", cfg.to_str().unwrap()];
    all.extend(args);
    let (status, out, err) = run(&all, None);
    assert!(status.success(), "{out}{err}");
    (
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}")),
        err,
    )
}

/// The reason `explain` gives for leaving `campaign` out, if it does.
pub fn reason(explained: &Value, campaign: u32) -> Option<String> {
    explained["excluded"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == campaign)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
}

/// Issue 11 on one node (local state): budget exact, caps exact by key and by cookie, a flight
/// not started never wins, spend and caps survive a restart, explain names the reasons.
#[test]
fn issue11_single_node_budget_caps_flight_restart_explain() {
    let started = Instant::now();
    let dir = temp_dir("delivery");
    let (start, starts_reason) = later_start();
    let cfg = config("", "[stats]\nflush_interval = \"200ms\"\n");
    let s = Server::start_in(&dir, &cfg, &campaigns(&start));
    let addrs = [s.addr];

    // (a) The budget: exactly 200 wins, then the cheaper campaign takes over.
    let wins = drive_until_quiet(&addrs, (DE, BUDGETED), 4, QUIET, Duration::from_secs(40));
    assert_eq!(
        wins.get(&BUDGETED).copied(),
        Some(BUDGETED_WINS),
        "{wins:?}"
    );
    assert!(wins.get(&CHEAP).copied().unwrap_or(0) > 0, "{wins:?}");
    assert_eq!(wins.get(&LATER), None, "a flight not started won: {wins:?}");
    for _ in 0..20 {
        assert_eq!(ad_winner(&s.ad(DE, CHROME)), CHEAP);
    }
    let metrics = s.metrics.unwrap();
    assert_eq!(
        metric_sum(
            metrics,
            "rotator_spend_micros_total",
            &format!("campaign=\"{BUDGETED}\"")
        ),
        2_000_000.0
    );
    assert!(
        metric_sum(
            metrics,
            "rotator_decisions_excluded_total",
            "reason=\"budget\""
        ) > 0.0
    );

    // `explain` while the server runs: its state folder is locked; the journals are read.
    let (e, err) = explain(&dir, &["--ip", DE, "--ua", CHROME]);
    assert_eq!(
        reason(&e, BUDGETED).as_deref(),
        Some("budget: daily 2.00 of 2.00 spent"),
        "{e}\n{err}"
    );
    assert_eq!(
        reason(&e, LATER).as_deref(),
        Some(starts_reason.as_str()),
        "{e}"
    );
    assert_eq!(e["winner"], CHEAP, "{e}");

    // (b) A cap of 3 per 24 h by user.key: exactly 3 fills per key, whatever the parallelism.
    let keys: Vec<String> = (0..6).map(|k| format!("user-{k}")).collect();
    let capped_out = || {
        let reason = "reason=\"frequency_cap\"";
        metric_sum(metrics, "rotator_decisions_excluded_total", reason)
    };
    let capped_out_before = capped_out();
    let (per_key, all) = capped_fills(&addrs, &keys, (20, 6), CAPPED);
    for key in &keys {
        assert_eq!(per_key[key], 3, "{key}: {per_key:?}");
    }
    assert_eq!(all.get(&FILLER).copied(), Some(6 * 17), "{all:?}");
    // Every decision the filler won left the capped campaign out once.
    assert_eq!(capped_out() - capped_out_before, (6 * 17) as f64);

    // By cookie: the first answer sets it (and counts the view), the cookie caps the rest.
    let first = browser_decision(&s, CHROME, &[]);
    let cookie = first
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no identity cookie: {first:?}"))
        .to_string();
    assert!(cookie.starts_with("rid="), "{cookie}");
    for attribute in ["HttpOnly", "Secure", "SameSite=None", "Max-Age=31536000"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    let mut fills = u64::from(slot_winner(&first) == CAPPED);
    for _ in 0..10 {
        let r = browser_decision(&s, CHROME, &[("Cookie", &pair)]);
        assert_eq!(r.header("set-cookie"), None, "a known visitor: {r:?}");
        fills += u64::from(slot_winner(&r) == CAPPED);
    }
    assert_eq!(fills, 3, "capped by cookie");

    // Sec-GPC: no cookie set or read; the daily hash of address and agent caps instead.
    let mut fills = 0;
    for _ in 0..10 {
        let r = browser_decision(&s, FIREFOX, &[("Sec-GPC", "1")]);
        assert_eq!(r.header("set-cookie"), None, "Sec-GPC: {r:?}");
        fills += u64::from(slot_winner(&r) == CAPPED);
    }
    assert_eq!(fills, 3, "capped by the daily hash");

    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    let campaigns = report_json(&dir, Some("campaign"));
    let row = campaigns["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["campaign"].as_str().and_then(|c| c.parse().ok()) == Some(BUDGETED))
        .unwrap_or_else(|| panic!("no row of {BUDGETED}: {campaigns}"))
        .clone();
    assert_eq!(row["spend"], "2.000000", "{row}");
    assert_eq!(row["spend_micros"], 2_000_000, "{row}");
    assert_eq!(row["impressions"], BUDGETED_WINS, "{row}");

    // `explain` with the server stopped, and one visitor's views against the cap.
    let (e, err) = explain(&dir, &["--ip", US, "--ua", CHROME, "--user", "user-0"]);
    assert_eq!(
        reason(&e, CAPPED).as_deref(),
        Some("frequency cap: 3 of 3 in 1d"),
        "{e}\n{err}"
    );
    assert_eq!(e["winner"], FILLER, "{e}");
    let (e, _) = explain(&dir, &["--ip", US, "--ua", CHROME, "--user", "someone-new"]);
    assert_eq!(reason(&e, CAPPED), None, "{e}");
    assert_eq!(e["winner"], CAPPED, "{e}");

    // (c) Restarted on the same data: today's spend and the caps are remembered.
    let s = Server::spawn(&dir);
    let addrs = [s.addr];
    let wins = drive_until_quiet(&addrs, (DE, BUDGETED), 2, QUIET, Duration::from_secs(10));
    assert_eq!(
        wins.get(&BUDGETED),
        None,
        "spent again after a restart: {wins:?}"
    );
    assert_eq!(wins.get(&LATER), None, "{wins:?}");
    let (per_key, _) = capped_fills(&addrs, &keys, (4, 6), CAPPED);
    assert!(
        per_key.values().all(|n| *n == 0),
        "caps open again: {per_key:?}"
    );
    let mut fills = 0;
    for _ in 0..4 {
        fills +=
            u64::from(slot_winner(&browser_decision(&s, CHROME, &[("Cookie", &pair)])) == CAPPED);
    }
    assert_eq!(fills, 0, "the cookie's cap opened again");
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    eprintln!("issue11 single node: {:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `rotator explain` with a Redis that does not answer: it still explains, and says on stderr
/// that spent budgets are not shown (rather than failing or pretending nothing was spent).
#[test]
fn issue11_explain_says_when_the_state_backend_does_not_answer() {
    let dir = temp_dir("explain-no-redis");
    let port = crate::support::free_port();
    let state = format!(
        "[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"redis://127.0.0.1:{port}\"\n\
         lease_timeout = \"300ms\"\n"
    );
    std::fs::write(dir.join("rotator.toml"), config("", &state)).unwrap();
    std::fs::write(
        dir.join("campaigns.toml"),
        "[[campaign]]\nid = 1\nurl = \"https://a.example\"\nbid = 5.0\n\
         [campaign.budget]\ndaily = 1.0\n",
    )
    .unwrap();
    let (e, err) = explain(&dir, &["--ip", DE, "--ua", CHROME]);
    assert!(
        err.contains("state backend (redis) did not answer")
            && err.contains("spent budgets are not shown"),
        "{err}"
    );
    assert!(e.is_object(), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
