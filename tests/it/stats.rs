//! Statistics end to end: real server, real traffic, real databases; exact sums.
//!
//! Each test sends a known mix of visitors and checks the per-key sums that arrive in the sink,
//! through outages (the database stopped while traffic flows), shutdown (SIGTERM flushes the last
//! rows) and restarts (a spool written while the database was down is replayed).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::{Server, config, report_json, request, run, seed_campaigns, temp_dir};
use crate::server::{CHROME, CHROME_ANDROID, DE, FIREFOX, GOOGLEBOT, RU, US};
use crate::support::{service_lock, service_url, services};

/// (campaign, country, browser, os, device, placement, creative) → (requests, impressions,
/// viewables, clicks, spend in micro-units), as the report prints them.
pub type Sums = BTreeMap<[String; 7], [u64; 5]>;

/// The known mix: per round, 3 RU Chrome desktop (campaign 1), 2 DE Chrome Mobile (2),
/// 1 US Firefox (3), 1 Googlebot (bot, 0) and 1 US Chrome (no fill, 0).
pub fn send_round(s: &Server) {
    for _ in 0..3 {
        assert_eq!(s.ad(RU, CHROME).status, 303);
    }
    for _ in 0..2 {
        assert_eq!(s.ad(DE, CHROME_ANDROID).status, 303);
    }
    assert_eq!(s.ad(US, FIREFOX).status, 303);
    assert_eq!(s.ad(RU, GOOGLEBOT).status, 303);
    assert_eq!(s.ad(US, CHROME).status, 303);
}

/// A key of [`Sums`] for a `GET /ad` row (no placement, no creative).
pub fn ad_key(k: [&str; 5]) -> [String; 7] {
    let [campaign, country, browser, os, device] = k;
    [campaign, country, browser, os, device, "", "0"].map(String::from)
}

/// What one `GET /ad` impression of the seed campaigns 1, 2 and 3 costs: their CPM bids in
/// `campaigns.toml` (1.5, 2.0, 0.8) / 1000, in micro-units.
const SEED_COSTS: [u64; 3] = [1_500, 2_000, 800];

/// What `rounds` rounds of [`send_round`] count (the redirect is the impression, with its cost).
pub fn expected(rounds: u64) -> Sums {
    let [one, two, three] = SEED_COSTS;
    Sums::from([
        (
            ad_key(["1", "RU", "Chrome", "Windows", "desktop"]),
            [3 * rounds, 3 * rounds, 0, 0, 3 * rounds * one],
        ),
        (
            ad_key(["2", "DE", "Chrome Mobile", "Android", "mobile"]),
            [2 * rounds, 2 * rounds, 0, 0, 2 * rounds * two],
        ),
        (
            ad_key(["3", "US", "Firefox", "Linux", "desktop"]),
            [rounds, rounds, 0, 0, rounds * three],
        ),
        (
            ad_key(["0", "RU", "Googlebot", "Other", "bot"]),
            [rounds, 0, 0, 0, 0],
        ),
        (
            ad_key(["0", "US", "Chrome", "Windows", "desktop"]),
            [rounds, 0, 0, 0, 0],
        ),
    ])
}

/// Reads the sink through `rotator report --format json` (so the report is tested too).
pub fn report(dir: &std::path::Path) -> Sums {
    let v = report_json(dir, Some(&KEY_COLUMNS.join(",")));
    let mut sums = Sums::new();
    for row in v["rows"].as_array().unwrap() {
        let key = KEY_COLUMNS.map(|k| row[k].as_str().unwrap().to_string());
        let entry = sums.entry(key).or_default();
        for (sum, name) in entry
            .iter_mut()
            .zip(COUNT_COLUMNS.iter().chain(&["spend_micros"]))
        {
            *sum += row[name].as_u64().unwrap();
        }
    }
    sums
}

/// Groupings `rotator report --by` is checked with: none, each column alone, and three
/// combinations.
const GROUPINGS: [&[&str]; 11] = [
    &[],
    &["campaign"],
    &["country"],
    &["browser"],
    &["os"],
    &["device"],
    &["placement"],
    &["creative"],
    &["country", "device"],
    &["placement", "creative"],
    &KEY_COLUMNS,
];

/// The key columns in the order of [`Sums`] keys.
const KEY_COLUMNS: [&str; 7] = [
    "campaign",
    "country",
    "browser",
    "os",
    "device",
    "placement",
    "creative",
];

/// The count columns in the order of [`Sums`] values, then the spend columns (CSV and JSON; the
/// table has `spend` only), then the rates.
const COUNT_COLUMNS: [&str; 4] = ["requests", "impressions", "viewables", "clicks"];
const SPEND_COLUMNS: [&str; 2] = ["spend", "spend_micros"];
const RATE_COLUMNS: [&str; 3] = ["fill_rate", "ctr", "viewable_rate"];

/// One parsed report: group values → counts and spend, and the total line. The table's spend is
/// in cents (it prints currency units with 2 decimals); CSV's and JSON's in micro-units.
type Parsed = (BTreeMap<Vec<String>, [u64; 5]>, [u64; 5]);

/// Spend in micro-units rounded half up to cents, as the table prints it.
fn cents(micros: u64) -> u64 {
    (micros + 5_000) / 10_000
}

/// Checks an exact spend decimal (`12.345678`) against its micro-units.
fn assert_spend_exact(decimal: &str, micros: u64, out: &str) {
    let (units, fraction) = decimal
        .split_once('.')
        .unwrap_or_else(|| panic!("spend {decimal:?}\n{out}"));
    assert_eq!(fraction.len(), 6, "spend {decimal:?}\n{out}");
    let parsed = units.parse::<u64>().unwrap() * 1_000_000 + fraction.parse::<u64>().unwrap();
    assert_eq!(
        parsed, micros,
        "spend {decimal:?} vs spend_micros {micros}\n{out}"
    );
}

/// `part / whole`, 0 without a whole, as the report defines its rates.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Checks the rates printed beside `counts`: fill rate, CTR, viewable rate, each within the
/// rounding of its format (`scale` 1 for JSON and CSV, 100 for the table's percentages).
fn assert_rates(counts: [u64; 5], rates: &[f64], tolerance: f64, scale: f64, out: &str) {
    let [requests, impressions, viewables, clicks, _] = counts;
    let want = [
        ratio(impressions, requests),
        ratio(clicks, impressions),
        ratio(viewables, impressions),
    ];
    for (got, want) in rates.iter().zip(want) {
        assert!(
            (got - scale * want).abs() <= tolerance,
            "rate {got} for {counts:?} (want {})\n{out}",
            scale * want
        );
    }
}

/// Parses `rotator report` output in `format` for a grouping of `n` columns, checking every
/// rate against the counts of its line.
fn parse_report(format: &str, n: usize, out: &str) -> Parsed {
    let mut groups = BTreeMap::new();
    let number = |s: &str| -> u64 { s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}\n{out}")) };
    let spend_width = if format == "table" { 1 } else { 2 };
    let width = n + COUNT_COLUMNS.len() + spend_width + RATE_COLUMNS.len();
    let total = match format {
        "json" => {
            let v: serde_json::Value =
                serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
            let counts = |r: &serde_json::Value| {
                let micros = r["spend_micros"].as_u64().unwrap();
                assert_spend_exact(r["spend"].as_str().unwrap(), micros, out);
                let [requests, impressions, viewables, clicks] =
                    COUNT_COLUMNS.map(|c| r[c].as_u64().unwrap());
                let counts = [requests, impressions, viewables, clicks, micros];
                let rates: Vec<f64> = RATE_COLUMNS
                    .iter()
                    .map(|c| r[c].as_f64().unwrap())
                    .collect();
                assert_rates(counts, &rates, 1e-12, 1.0, out);
                counts
            };
            for row in v["rows"].as_array().unwrap() {
                let obj = row.as_object().unwrap();
                assert_eq!(obj.len(), width, "{row}");
                let group = obj
                    .iter()
                    .filter(|(k, _)| {
                        !COUNT_COLUMNS.contains(&k.as_str())
                            && !SPEND_COLUMNS.contains(&k.as_str())
                            && !RATE_COLUMNS.contains(&k.as_str())
                    })
                    .map(|(k, v)| {
                        (
                            KEY_COLUMNS.iter().position(|c| c == k).unwrap(),
                            v.as_str().unwrap().to_string(),
                        )
                    })
                    .collect::<BTreeMap<_, _>>();
                groups.insert(group.into_values().collect(), counts(row));
            }
            counts(&v["total"])
        }
        "csv" | "table" => {
            let lines: Vec<Vec<String>> = out
                .lines()
                .map(|l| {
                    if format == "csv" {
                        l.split(',').map(String::from).collect()
                    } else {
                        // Cells are separated by two spaces or more; "-" is an empty value.
                        l.split("  ")
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(|c| {
                                if c == "-" {
                                    String::new()
                                } else {
                                    c.to_string()
                                }
                            })
                            .collect()
                    }
                })
                .collect();
            assert!(lines.len() >= 2, "{out}");
            let header: Vec<String> = COUNT_COLUMNS
                .iter()
                .chain(&SPEND_COLUMNS[..spend_width])
                .chain(&RATE_COLUMNS)
                .map(|c| {
                    if format == "csv" {
                        c.to_string()
                    } else {
                        c.replace('_', " ")
                    }
                })
                .collect();
            assert_eq!(lines[0][n..], header, "{out}");
            for l in &lines {
                assert_eq!(l.len(), width, "{l:?} in\n{out}");
            }
            let line = |l: &[String]| {
                let spend = &l[n + 4];
                let spend = if format == "csv" {
                    let micros = number(&l[n + 5]);
                    assert_spend_exact(spend, micros, out);
                    micros
                } else {
                    let (units, cents) = spend.split_once('.').unwrap();
                    assert_eq!(cents.len(), 2, "spend {spend:?}\n{out}");
                    number(units) * 100 + number(cents)
                };
                let counts: [u64; 5] =
                    std::array::from_fn(|i| if i < 4 { number(&l[n + i]) } else { spend });
                let (scale, tolerance) = if format == "csv" {
                    (1.0, 0.00005)
                } else {
                    (100.0, 0.05)
                };
                let rates: Vec<f64> = l[n + 4 + spend_width..]
                    .iter()
                    .map(|r| {
                        r.trim_end_matches('%')
                            .parse()
                            .unwrap_or_else(|e| panic!("{r:?}: {e}\n{out}"))
                    })
                    .collect();
                assert_rates(counts, &rates, tolerance, scale, out);
                counts
            };
            let (total, rows) = lines[1..].split_last().unwrap();
            if n > 0 {
                assert_eq!(total[0], "TOTAL", "{out}");
            }
            for r in rows {
                groups.insert(r[..n].to_vec(), line(r));
            }
            line(total)
        }
        _ => unreachable!("{format}"),
    };
    (groups, total)
}

/// Checks every grouping in every format against `expected` (issue 8 item 3: totals without
/// `--by` used to print 0; issue 10 item 5: placement, creative, viewables, clicks and rates;
/// issue 11: spend, exact in CSV and JSON, in cents in the table).
pub fn assert_every_report(dir: &std::path::Path, expected: &Sums) {
    let cfg = dir.join("rotator.toml");
    let add = |t: &mut [u64; 5], v: &[u64; 5]| {
        for (t, v) in t.iter_mut().zip(v) {
            *t += v;
        }
    };
    let mut total = [0; 5];
    for v in expected.values() {
        add(&mut total, v);
    }
    for by in GROUPINGS {
        let mut want = BTreeMap::<Vec<String>, [u64; 5]>::new();
        for (key, v) in expected {
            let group = by
                .iter()
                .map(|c| key[KEY_COLUMNS.iter().position(|k| k == c).unwrap()].clone())
                .collect();
            add(want.entry(group).or_default(), v);
        }
        if by.is_empty() {
            // The one line is the total; it is not repeated as a row.
            want.clear();
        }
        let joined = by.join(",");
        for format in ["table", "csv", "json"] {
            let mut args = vec!["report", "--config", cfg.to_str().unwrap(), "--since", "1d"];
            if !by.is_empty() {
                args.extend(["--by", &joined]);
            }
            args.extend(["--format", format]);
            let (status, out, err) = run(&args, None);
            assert!(status.success(), "{args:?}: {err}");
            let (groups, got_total) = parse_report(format, by.len(), &out);
            // The table shows spend in cents.
            let shown = |mut v: [u64; 5]| {
                if format == "table" {
                    v[4] = cents(v[4]);
                }
                v
            };
            let want: BTreeMap<_, _> = want.iter().map(|(k, v)| (k.clone(), shown(*v))).collect();
            assert_eq!(got_total, shown(total), "total of {args:?}:\n{out}");
            assert_eq!(groups, want, "rows of {args:?}:\n{out}");
        }
    }
}

const FAST_FLUSH: &str = "flush_interval = \"200ms\"\nwrite_timeout = \"2s\"\n";

#[test]
fn sqlite_counts_every_request_exactly_once_and_flushes_at_shutdown() {
    let dir = temp_dir("sqlite");
    // A long interval: only the shutdown flush can deliver these rows.
    let cfg = config("", "[stats]\nsink = \"sqlite\"\nflush_interval = \"1h\"\n");
    let s = Server::start_in(&dir, &cfg, &seed_campaigns());
    for _ in 0..5 {
        send_round(&s);
    }
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    assert_eq!(report(&dir), expected(5));
    // Restart and add more: counts add up.
    let s = Server::spawn(&dir);
    send_round(&s);
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    assert_eq!(report(&dir), expected(6));
    assert_every_report(&dir, &expected(6));
}

#[test]
fn an_unusable_sqlite_path_is_a_start_up_error() {
    let dir = temp_dir("sqlite-bad");
    std::fs::write(dir.join("blocked"), "a file, not a folder").unwrap();
    let cfg = config(
        "",
        "[stats]\nsink = \"sqlite\"\n[stats.sqlite]\npath = \"blocked/stats.db\"\n",
    );
    std::fs::write(dir.join("campaigns.toml"), seed_campaigns()).unwrap();
    std::fs::write(dir.join("rotator.toml"), &cfg).unwrap();
    let (status, _, err) = run(
        &[
            "serve",
            "--config",
            dir.join("rotator.toml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("blocked"), "{err}");
}

/// The value of an unlabelled metric on the server's metrics listener.
pub fn metric(s: &Server, name: &str) -> f64 {
    let text = request(s.metrics.unwrap(), "GET", "/metrics", &[]).body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Issue 9 item 7: a spooled batch the database cannot store (`requests` above SQLite's signed
/// 64-bit range) used to be retried forever, holding up every batch behind it. Now it goes to
/// `rejected/`, a spool file that does not parse is quarantined with its rows counted as lost,
/// and the batches behind both are written. (Two files are named as earlier releases named them,
/// `<seq>.batch`; the corrupt one carries its row count, `<seq>-<rows>.batch`.)
#[test]
fn issue9_bad_spooled_batches_do_not_block_the_rest() {
    let dir = temp_dir("bad-spool");
    let spool = dir.join("data/spool");
    std::fs::create_dir_all(&spool).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts = now / 60 * 60 - 3600;
    let row = |campaign: u32, requests: &str| {
        format!(
            r#"{{"ts":{ts},"country":"DE","os":"Linux","browser":"Firefox","device":"desktop","campaign_id":{campaign},"requests":{requests},"impressions":0,"clicks":0}}"#
        )
    };
    let header = r#"{"format":"rotator-spool","version":1}"#;
    std::fs::write(
        spool.join("00000000000000000001.batch"),
        format!(
            "{header}\n{{\"id\":\"too-big\",\"rows\":[{},{}]}}\n",
            row(7, "1"),
            row(8, "9223372036854775808")
        ),
    )
    .unwrap();
    std::fs::write(
        spool.join("00000000000000000002-3.batch"),
        format!("{header}\n{{\"id\":\"cut-off\",\"rows\":[{}", row(9, "1")),
    )
    .unwrap();
    std::fs::write(
        spool.join("00000000000000000003.batch"),
        format!("{header}\n{{\"id\":\"good\",\"rows\":[{}]}}\n", row(3, "5")),
    )
    .unwrap();
    let cfg = config("", &format!("[stats]\nsink = \"sqlite\"\n{FAST_FLUSH}"));
    let s = Server::start_in(&dir, &cfg, &seed_campaigns());
    send_round(&s);
    s.wait_for_log("kept in", Duration::from_secs(10));
    s.wait_for_log("statistics LOST: 3 rows", Duration::from_secs(10));
    assert_eq!(metric(&s, "rotator_stats_rows_lost_total"), 3.0);
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");

    let rejected: Vec<_> = std::fs::read_dir(spool.join("rejected"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(rejected.len(), 1, "{log}");
    assert!(rejected[0].contains("too-big"), "{}", rejected[0]);
    assert!(
        spool.join("00000000000000000002-3.corrupt").exists(),
        "{log}"
    );
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".batch"))
        .collect();
    assert!(left.is_empty(), "{left:?}\n{log}");
    let mut want = expected(1);
    want.insert(
        ad_key(["3", "DE", "Firefox", "Linux", "desktop"]),
        [5, 0, 0, 0, 0],
    );
    assert_eq!(report(&dir), want, "{log}");
}

/// Outage and restart test shared by the ClickHouse and MariaDB sinks.
/// `spool_after` differs per sink so both paths run: failed batches kept in memory for a while
/// (ClickHouse, "1s") and spooled at once (MariaDB, the default "0s").
fn outage_and_spool(tag: &str, service: &str, spool_after: &str, stats_section: &str) {
    let _exclusive = service_lock();
    let dir = temp_dir(tag);
    let cfg = config(
        "",
        &format!("[stats]\n{FAST_FLUSH}spool_after = {spool_after:?}\n{stats_section}"),
    );
    let s = Server::start_in(&dir, &cfg, &seed_campaigns());
    let mut rounds = 0;
    for _ in 0..5 {
        send_round(&s);
        rounds += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    // The database goes away while traffic flows.
    services("stop", service);
    for _ in 0..5 {
        send_round(&s);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    s.wait_for_log("failed, retrying", Duration::from_secs(10));
    services("start", service);
    for _ in 0..3 {
        send_round(&s);
        rounds += 1;
    }
    s.wait_for_log("answers again", Duration::from_secs(60));
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    assert_eq!(report(&dir), expected(rounds), "after an outage\n{log}");

    // Down at shutdown: the last rows are spooled, then replayed by the next start.
    services("stop", service);
    let s = Server::spawn(&dir);
    send_round(&s);
    rounds += 1;
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    let spooled = std::fs::read_dir(dir.join("data/spool"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".batch"))
        });
    assert!(spooled.count() >= 1, "nothing spooled at shutdown:\n{log}");
    services("start", service);
    let s = Server::spawn(&dir);
    s.wait_for_log("replaying the spool", Duration::from_secs(10));
    send_round(&s);
    rounds += 1;
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    assert_eq!(
        report(&dir),
        expected(rounds),
        "after a spool replay\n{log}"
    );
    assert_every_report(&dir, &expected(rounds));
}

#[test]
fn clickhouse_outage_and_spool_replay_lose_and_double_nothing() {
    let Some(url) = service_url("ROTATOR_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let db = format!("rotator_e2e_{}", fastrand::u32(..));
    outage_and_spool(
        "clickhouse",
        "clickhouse",
        "1s",
        &format!("sink = \"clickhouse\"\n[stats.clickhouse]\nurl = {url:?}\ndatabase = {db:?}\n"),
    );
}

#[test]
fn mysql_outage_and_spool_replay_lose_and_double_nothing() {
    let Some(url) = service_url("ROTATOR_TEST_MYSQL_URL") else {
        return;
    };
    let table = format!("stats_e2e_{}", fastrand::u32(..));
    outage_and_spool(
        "mysql",
        "mariadb",
        "0s",
        &format!("sink = \"mysql\"\n[stats.mysql]\nurl = {url:?}\ntable = {table:?}\n"),
    );
}
