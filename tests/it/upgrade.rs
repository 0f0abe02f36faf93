//! Issue 10 item 5 and issue 11: databases created by release 0.1.0 and by the schema of issue 10
//! (no `spend`) are upgraded, not recreated.
//!
//! For each sink (SQLite; MariaDB and ClickHouse from `scripts/services`) and each old schema
//! (`tests/data/schema-0.1.0/`, `tests/data/schema-issue10/`): create it with rows and an applied
//! batch id, run the real `rotator migrate` twice, compare every stored row (placement `''`,
//! creative 0, viewables 0 added to 0.1.0's; spend 0 to both), then let the real server write rows
//! with placements, creatives and spend (a spooled batch it replays, and `GET /ad` traffic) and
//! check them in the table and in the report (every grouping and format after the 0.1.0 upgrade,
//! once after the other, to keep the run short). The already-applied batch id, replayed from the
//! spool after the upgrade, counts nothing (SQL sinks; ClickHouse 18.16 has no batch ids).

use std::future::Future;
use std::path::Path;

use mysql_async::prelude::Queryable;

use crate::harness::{Server, config, repo, run, seed_campaigns, temp_dir};
use crate::stats::{assert_every_report, expected, report, send_round};
use crate::support::service_url;

/// One stored row of the upgraded table: key (ts, country, os, browser, device, campaign,
/// placement, creative) and counts (requests, impressions, viewables, clicks, spend).
type Stored = (
    u32,
    String,
    String,
    String,
    String,
    u32,
    String,
    u32,
    [u64; 5],
);

/// The schema a test database starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Release 0.1.0: no placement, creative, viewables, spend.
    Release010,
    /// Issue 10: no spend.
    Issue10,
}

impl Source {
    /// Its folder under tests/data.
    fn folder(self) -> &'static str {
        match self {
            Source::Release010 => "schema-0.1.0",
            Source::Issue10 => "schema-issue10",
        }
    }

    /// The columns its rows are inserted with ([`old_values`]).
    fn columns(self) -> &'static str {
        match self {
            Source::Release010 => {
                "(ts, country, os, browser, device, campaign_id, requests, impressions, clicks)"
            }
            Source::Issue10 => {
                "(ts, country, os, browser, device, campaign_id, placement, creative_id, requests, \
                 impressions, viewables, clicks)"
            }
        }
    }

    /// The placement, creative and viewables an old row of campaign `campaign` with `impressions`
    /// has (0.1.0 had none of them).
    fn extra(self, campaign: u32, impressions: u64) -> (&'static str, u32, u64) {
        match self {
            Source::Release010 => ("", 0, 0),
            Source::Issue10 if campaign == 0 => ("sidebar", 0, 0),
            Source::Issue10 => ("sidebar", 800 + campaign, impressions / 2),
        }
    }
}

/// The start of the minute `minutes` before this process first asked, Unix seconds (fixed, so
/// that rows written and rows expected agree when a minute passes during the test).
fn minute_ago(minutes: u32) -> u32 {
    static NOW: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let now = *NOW.get_or_init(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (secs / 60 * 60) as u32
    });
    now - minutes * 60
}

/// A row of release 0.1.0: key and (requests, impressions, clicks).
type OldRow = (
    u32,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    u32,
    [u64; 3],
);

/// The rows release 0.1.0 stored: (ts, country, os, browser, device, campaign, requests,
/// impressions, clicks). Distinct keys, so ClickHouse merges cannot fold two into one.
fn old_rows() -> Vec<OldRow> {
    let (t1, t2) = (minute_ago(120), minute_ago(119));
    vec![
        (t1, "DE", "Windows", "Chrome", "desktop", 1, [10, 10, 0]),
        (t1, "", "Android", "Chrome Mobile", "mobile", 0, [4, 0, 0]),
        (t1, "US", "Other", "Googlebot", "bot", 0, [2, 0, 0]),
        (t2, "DE", "Windows", "Chrome", "desktop", 1, [7, 7, 3]),
        (
            t2,
            "FR",
            "iOS",
            "Mobile Safari",
            "mobile",
            2,
            [1 << 40, 5, 1],
        ),
    ]
}

/// What the old rows must look like after the upgrade.
fn old_rows_upgraded(source: Source) -> Vec<Stored> {
    let mut rows: Vec<Stored> = old_rows()
        .into_iter()
        .map(|(ts, c, os, b, d, campaign, [req, imp, clk])| {
            let (placement, creative, viewables) = source.extra(campaign, imp);
            (
                ts,
                c.into(),
                os.into(),
                b.into(),
                d.into(),
                campaign,
                placement.into(),
                creative,
                [req, imp, viewables, clk, 0],
            )
        })
        .collect();
    rows.sort();
    rows
}

/// A batch in the new format with placements, creatives, viewables, clicks and spend.
fn new_rows() -> Vec<Stored> {
    let t = minute_ago(60);
    let row = |placement: &str, creative: u32, campaign: u32, counts: [u64; 5]| -> Stored {
        (
            t,
            "DE".into(),
            "Windows".into(),
            "Chrome".into(),
            "desktop".into(),
            campaign,
            placement.into(),
            creative,
            counts,
        )
    };
    let mut rows = vec![
        row("top-banner", 701, 7, [20, 18, 9, 3, 45_000]),
        row("top-banner", 702, 7, [5, 5, 5, 0, 12_345_678]),
        row("sidebar", 801, 8, [10, 4, 0, 1, 1_500_001]),
        row("sidebar", 0, 0, [6, 0, 0, 0, 0]),
    ];
    rows.sort();
    rows
}

/// A spool file, as the flusher writes them.
fn spool_batch(dir: &Path, seq: u32, id: &str, rows: &[Stored]) {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(
            |(ts, country, os, browser, device, campaign, placement, creative, c)| {
                serde_json::json!({"ts": ts, "country": country, "os": os, "browser": browser,
                "device": device, "campaign_id": campaign, "placement": placement,
                "creative_id": creative, "requests": c[0], "impressions": c[1],
                "viewables": c[2], "clicks": c[3], "spend": c[4]})
            },
        )
        .collect();
    let spool = dir.join("data/spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join(format!("{seq:020}.batch")),
        format!(
            "{{\"format\":\"rotator-spool\",\"version\":1}}\n{}\n",
            serde_json::json!({"id": id, "rows": rows})
        ),
    )
    .unwrap();
}

/// The old DDL of `sink`, comment lines removed, placeholders replaced (ClickHouse's dimension
/// type `{dim}` with `String`, as on 18.16), one statement each.
fn old_schema(source: Source, sink: &str, replace: &[(&str, &str)]) -> Vec<String> {
    let replace: Vec<(&str, &str)> = replace
        .iter()
        .copied()
        .chain([("{dim}", "String")])
        .collect();
    schema(
        &format!("tests/data/{}/{sink}.sql", source.folder()),
        &replace,
    )
}

/// The DDL in the repository file `path`, comment lines removed, placeholders replaced.
fn schema(path: &str, replace: &[(&str, &str)]) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    rotator::stats::sinks::statements(&text, replace)
}

/// Values as SQL literals for the old rows in the columns of `source` (`ts` through `to_ts`).
fn old_values(source: Source, to_ts: impl Fn(u32) -> String) -> String {
    old_rows()
        .into_iter()
        .map(|(ts, c, os, b, d, campaign, [req, imp, clk])| {
            let ts = to_ts(ts);
            match source {
                Source::Release010 => {
                    format!("({ts}, '{c}', '{os}', '{b}', '{d}', {campaign}, {req}, {imp}, {clk})")
                }
                Source::Issue10 => {
                    let (placement, creative, viewables) = source.extra(campaign, imp);
                    format!(
                        "({ts}, '{c}', '{os}', '{b}', '{d}', {campaign}, '{placement}', \
                         {creative}, {req}, {imp}, {viewables}, {clk})"
                    )
                }
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole flow for one sink. `read` returns every row of the statistics table, sorted;
/// `exactly_once`: whether the sink keeps batch ids (an already-applied id was stored in the
/// old database as `applied-<run>`).
/// Returns the folder of the server (its `rotator.toml` names the database).
fn upgrade_flow(
    source: Source,
    tag: &str,
    stats_section: &str,
    exactly_once: bool,
    read: &dyn Fn() -> Vec<Stored>,
) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let cfg = config(
        "",
        &format!("[stats]\nflush_interval = \"200ms\"\nwrite_timeout = \"5s\"\n{stats_section}"),
    );
    std::fs::write(dir.join("rotator.toml"), &cfg).unwrap();
    std::fs::write(dir.join("campaigns.toml"), seed_campaigns()).unwrap();
    let config_path = dir.join("rotator.toml");
    let migrate = || {
        let (status, out, err) = run(
            &["migrate", "--config", config_path.to_str().unwrap()],
            None,
        );
        assert!(status.success(), "rotator migrate: {out}\n{err}");
    };
    migrate();
    assert_eq!(
        read(),
        old_rows_upgraded(source),
        "{tag}: the rows after rotator migrate"
    );
    migrate();
    assert_eq!(
        read(),
        old_rows_upgraded(source),
        "{tag}: a second migrate changes nothing"
    );

    // Through the server: a spooled batch with placements and creatives, the batch the old
    // database already applied (replayed: must count nothing), and live GET /ad traffic.
    let new = new_rows();
    spool_batch(&dir, 1, &format!("{tag}-new"), &new);
    if exactly_once {
        spool_batch(&dir, 2, &format!("applied-{tag}"), &new);
    }
    let s = Server::spawn(&dir);
    send_round(&s);
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    assert!(
        !dir.join("data/spool").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".batch")),
        "{tag}: the spool was not replayed\n{log}"
    );

    let stored = read();
    let (old_ts, new_ts) = (minute_ago(119), minute_ago(60));
    let old: Vec<Stored> = stored.iter().filter(|r| r.0 <= old_ts).cloned().collect();
    let spooled: Vec<Stored> = stored.iter().filter(|r| r.0 == new_ts).cloned().collect();
    assert_eq!(
        old,
        old_rows_upgraded(source),
        "{tag}: old rows after the server ran\n{log}"
    );
    assert_eq!(spooled, new, "{tag}: the spooled rows, each once\n{log}");

    let mut want = expected(1);
    for (_, country, os, browser, device, campaign, placement, creative, counts) in
        old_rows_upgraded(source).into_iter().chain(new)
    {
        let key = [
            campaign.to_string(),
            country,
            browser,
            os,
            device,
            placement,
            creative.to_string(),
        ];
        let e = want.entry(key).or_default();
        for (e, c) in e.iter_mut().zip(counts) {
            *e += c;
        }
    }
    assert_eq!(report(&dir), want, "{tag}: report by every column\n{log}");
    if source == Source::Release010 {
        assert_every_report(&dir, &want);
    }
    dir
}

#[test]
fn issue10_sqlite_of_release_0_1_0_is_upgraded_with_every_row() {
    sqlite_upgrade(Source::Release010);
}

#[test]
fn issue11_sqlite_without_spend_is_upgraded_with_every_row() {
    sqlite_upgrade(Source::Issue10);
}

fn sqlite_upgrade(source: Source) {
    let tag = format!("upgrade-sqlite-{source:?}");
    let dir = temp_dir(&tag);
    let db = dir.join("stats.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(&old_schema(source, "sqlite", &[]).join(";\n"))
            .unwrap();
        c.execute_batch(&format!(
            "INSERT INTO stats {} VALUES {};\
             INSERT INTO rotator_batches (batch_id, rows) VALUES ('applied-{tag}', 4)",
            source.columns(),
            old_values(source, |ts| ts.to_string())
        ))
        .unwrap();
    }
    let read = || -> Vec<Stored> {
        let c = rusqlite::Connection::open(&db).unwrap();
        let mut st = c
            .prepare(
                "SELECT ts, country, os, browser, device, campaign_id, placement, creative_id, \
                 requests, impressions, viewables, clicks, spend FROM stats",
            )
            .unwrap();
        let mut rows: Vec<Stored> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    [r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?],
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        rows
    };
    let dir = upgrade_flow(
        source,
        &tag,
        &format!(
            "sink = \"sqlite\"\n[stats.sqlite]\npath = {:?}\n",
            db.display().to_string()
        ),
        true,
        &read,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs `f` to completion on a fresh current-thread runtime.
fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn issue10_mariadb_of_release_0_1_0_is_upgraded_with_every_row() {
    mariadb_upgrade(Source::Release010);
}

#[test]
fn issue11_mariadb_without_spend_is_upgraded_with_every_row() {
    mariadb_upgrade(Source::Issue10);
}

fn mariadb_upgrade(source: Source) {
    let Some(url) = service_url("ROTATOR_TEST_MYSQL_URL") else {
        return;
    };
    let _exclusive = crate::support::service_lock();
    let tag = format!("upgrade-mysql-{:08x}", fastrand::u32(..));
    let table = format!("stats_upgrade_{:08x}", fastrand::u32(..));
    let conn = || async {
        let mut c = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
        c.query_drop("SET time_zone = '+00:00'").await.unwrap();
        c
    };
    block_on(async {
        let mut c = conn().await;
        for sql in old_schema(source, "mysql", &[("{table}", &format!("`{table}`"))]) {
            c.query_drop(sql).await.unwrap();
        }
        c.query_drop(format!(
            "INSERT INTO `{table}` {} VALUES {}",
            source.columns(),
            old_values(source, |ts| format!("FROM_UNIXTIME({ts})"))
        ))
        .await
        .unwrap();
        c.query_drop(format!(
            "INSERT INTO rotator_batches (batch_id, `rows`) VALUES ('applied-{tag}', 4)"
        ))
        .await
        .unwrap();
    });
    let read = || -> Vec<Stored> {
        block_on(async {
            let mut c = conn().await;
            let rows: Vec<mysql_async::Row> = c
                .query(format!(
                    "SELECT UNIX_TIMESTAMP(ts), country, os, browser, device, campaign_id, placement, \
                     creative_id, requests, impressions, viewables, clicks, spend FROM `{table}`"
                ))
                .await
                .unwrap();
            let mut rows: Vec<Stored> = rows
                .into_iter()
                .map(|r| {
                    let n = |i| r.get::<u64, usize>(i).unwrap();
                    let s = |i| r.get::<String, usize>(i).unwrap();
                    (
                        n(0) as u32,
                        s(1),
                        s(2),
                        s(3),
                        s(4),
                        n(5) as u32,
                        s(6),
                        n(7) as u32,
                        [n(8), n(9), n(10), n(11), n(12)],
                    )
                })
                .collect();
            rows.sort();
            rows
        })
    };
    let section = format!("sink = \"mysql\"\n[stats.mysql]\nurl = {url:?}\ntable = {table:?}\n");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::fs::remove_dir_all(upgrade_flow(source, &tag, &section, true, &read)).unwrap();
    }));
    block_on(async {
        let mut c = conn().await;
        if let Err(e) = c
            .query_drop(format!("DROP TABLE IF EXISTS `{table}`"))
            .await
        {
            eprintln!("cannot drop {table}: {e}");
        }
    });
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

/// One row of the upgraded ClickHouse table in `RowBinary`.
#[derive(clickhouse::Row, serde::Deserialize)]
struct ClickhouseRow {
    ts: u32,
    country: String,
    os: String,
    browser: String,
    device: String,
    campaign_id: u32,
    placement: String,
    creative_id: u32,
    requests: u64,
    impressions: u64,
    viewables: u64,
    clicks: u64,
    spend: u64,
}

#[test]
fn issue10_clickhouse_of_release_0_1_0_is_upgraded_with_every_row() {
    clickhouse_upgrade(Source::Release010);
}

/// Starts where the previous release's upgrade from 0.1.0 stopped between its two renames: no
/// `stats`, the complete copy of issue 10's schema as `stats_upgrade`, the old table as
/// `stats_0_1_0`. `migrate` finishes that swap, then upgrades the issue-10 table to spend.
#[test]
fn issue11_clickhouse_without_spend_is_upgraded_with_every_row() {
    clickhouse_upgrade(Source::Issue10);
}

fn clickhouse_upgrade(source: Source) {
    let Some(url) = service_url("ROTATOR_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let _exclusive = crate::support::service_lock();
    let db = format!("rotator_upgrade_{:08x}", fastrand::u32(..));
    let client = clickhouse::Client::default()
        .with_url(url.as_str())
        .with_validation(false);
    let release010 = Source::Release010;
    block_on(async {
        let old = match source {
            Source::Release010 => "stats",
            Source::Issue10 => "stats_upgrade",
        };
        for sql in old_schema(source, "clickhouse", &[("{db}", &db), ("{table}", old)]) {
            client.query(&sql).execute().await.unwrap();
        }
        client
            .query(&format!(
                "INSERT INTO {db}.{old} {} VALUES {}",
                source.columns(),
                old_values(source, |ts| format!("toDateTime({ts})"))
            ))
            .execute()
            .await
            .unwrap();
        if source == Source::Issue10 {
            let backup = "stats_0_1_0";
            let create = old_schema(
                release010,
                "clickhouse",
                &[("{db}", &db), ("{table}", backup)],
            );
            client.query(&create[1]).execute().await.unwrap();
            client
                .query(&format!(
                    "INSERT INTO {db}.{backup} {} VALUES {}",
                    release010.columns(),
                    old_values(release010, |ts| format!("toDateTime({ts})"))
                ))
                .execute()
                .await
                .unwrap();
            return;
        }
        // Left by an upgrade that stopped during the copy: dropped and redone.
        let staged = schema(
            "schema/clickhouse.sql",
            &[
                ("{db}", &db),
                ("{table}", "stats_upgrade"),
                ("{dim}", "String"),
            ],
        );
        client.query(&staged[1]).execute().await.unwrap();
        client
            .query(&format!(
                "INSERT INTO {db}.stats_upgrade (ts, campaign_id, requests) VALUES (toDateTime({}), 99, 1)",
                minute_ago(120)
            ))
            .execute()
            .await
            .unwrap();
    });
    let tables = || -> Vec<String> {
        block_on(
            client
                .query(&format!(
                    "SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name"
                ))
                .fetch_all(),
        )
        .unwrap()
    };
    let read = || -> Vec<Stored> {
        block_on(async {
            // Grouped: SummingMergeTree merges rows of one key whenever it likes.
            let rows: Vec<ClickhouseRow> = client
                .query(&format!(
                    "SELECT toUInt32(ts), country, os, browser, device, campaign_id, placement, creative_id, \
                     sum(requests), sum(impressions), sum(viewables), sum(clicks), sum(spend) FROM {db}.stats \
                     GROUP BY ts, country, os, browser, device, campaign_id, placement, creative_id"
                ))
                .fetch_all()
                .await
                .unwrap();
            let mut rows: Vec<Stored> = rows
                .into_iter()
                .map(|r| {
                    (
                        r.ts,
                        r.country,
                        r.os,
                        r.browser,
                        r.device,
                        r.campaign_id,
                        r.placement,
                        r.creative_id,
                        [r.requests, r.impressions, r.viewables, r.clicks, r.spend],
                    )
                })
                .collect();
            rows.sort();
            rows
        })
    };
    let section =
        format!("sink = \"clickhouse\"\n[stats.clickhouse]\nurl = {url:?}\ndatabase = {db:?}\n");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let dir = upgrade_flow(
            source,
            &format!("upgrade-clickhouse-{source:?}"),
            &section,
            false,
            &read,
        );
        // Nothing left of the swaps: only the upgraded table.
        assert_eq!(tables(), ["stats"]);
        if source == Source::Issue10 {
            std::fs::remove_dir_all(dir).unwrap();
            return;
        }

        // Stopped between the two renames: no `stats`, the old table already renamed, the
        // complete copy under its staging name. The next migrate finishes the swap.
        let before = read();
        block_on(async {
            for sql in [
                format!("RENAME TABLE {db}.stats TO {db}.stats_upgrade"),
                old_schema(
                    release010,
                    "clickhouse",
                    &[("{db}", &db), ("{table}", "stats_0_1_0")],
                )[1]
                .clone(),
                format!(
                    "INSERT INTO {db}.stats_0_1_0 {} SELECT ts, country, os, browser, device, \
                     campaign_id, requests, impressions, clicks FROM {db}.stats_upgrade",
                    release010.columns()
                ),
            ] {
                client.query(&sql).execute().await.unwrap();
            }
        });
        let config_path = dir.join("rotator.toml");
        let (status, out, err) = run(
            &["migrate", "--config", config_path.to_str().unwrap()],
            None,
        );
        assert!(status.success(), "rotator migrate: {out}\n{err}");
        assert_eq!(tables(), ["stats"], "{err}");
        assert_eq!(read(), before, "after finishing an interrupted swap");
        std::fs::remove_dir_all(dir).unwrap();
    }));
    block_on(async {
        if let Err(e) = client
            .query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await
        {
            eprintln!("cannot drop {db}: {e}");
        }
    });
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
