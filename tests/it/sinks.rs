//! The ClickHouse and MySQL sinks against the real servers started by `scripts/services`.
//!
//! Each test works in a database of its own (random suffix) and drops it at the end, even when an
//! assertion fails, so reruns and parallel runs do not collide.

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rotator::config::{ClickhouseConfig, MysqlConfig};
use rotator::stats::report::{ReportQuery, ReportRow};
use rotator::stats::sinks::Sink;
use rotator::stats::sinks::clickhouse::ClickhouseSink;
use rotator::stats::sinks::mysql::MysqlSink;
use rotator::stats::{Batch, Row};

use crate::support::service_url;

/// 2023-11-14 22:14:00 UTC, the start of a minute.
const T0: u32 = 1_700_000_040;
const MINUTE: u32 = 60;
const TIMEOUT: Duration = Duration::from_secs(20);

/// An OS name with every character that text formats escape.
const AWKWARD_OS: &str = "Tab\tNew\nBack\\slash 'quote' \"dq\" ż";

/// The spend the test gives a row: distinct from every count, and a linear function of them,
/// so the expected sums of any rows follow from their requests and impressions.
fn spend(requests: u64, impressions: u64) -> u64 {
    impressions.saturating_mul(1_500).saturating_add(requests)
}

fn row(
    ts: u32,
    country: &str,
    os: &str,
    device: &str,
    campaign_id: u32,
    requests: u64,
    impressions: u64,
) -> Row {
    Row {
        ts,
        country: country.into(),
        os: os.into(),
        browser: "Chrome".into(),
        device: device.into(),
        campaign_id,
        placement: String::new(),
        creative_id: 0,
        requests,
        impressions,
        viewables: 0,
        clicks: 0,
        spend: spend(requests, impressions),
    }
}

/// Two batches in the minutes T0 and T0 + 1; `b` adds to one of `a`'s keys.
fn batches(run: &str) -> (Batch, Batch) {
    let a = Batch {
        id: format!("{run}-a"),
        rows: vec![
            row(T0, "DE", "Windows", "desktop", 1, 10, 10),
            row(T0, "DE", "Android", "mobile", 0, 5, 0),
            row(T0, "", AWKWARD_OS, "other", 2, 3, 3),
        ],
    };
    let b = Batch {
        id: format!("{run}-b"),
        rows: vec![
            row(T0, "DE", "Windows", "desktop", 1, 7, 7),
            row(T0 + MINUTE, "FR", "iOS", "mobile", 2, 4, 4),
            row(T0 + MINUTE, "DE", "Android", "mobile", 1, 6, 6),
        ],
    };
    (a, b)
}

fn line(group: &[&str], requests: u64, impressions: u64) -> ReportRow {
    ReportRow {
        group: group.iter().map(|g| g.to_string()).collect(),
        requests,
        impressions,
        viewables: 0,
        clicks: 0,
        spend: spend(requests, impressions),
    }
}

async fn report(sink: &Sink, from: u32, to: u32, by: &[&'static str]) -> Vec<ReportRow> {
    let query = ReportQuery {
        from,
        to,
        by: by.to_vec(),
    };
    let mut rows = sink
        .report(&query)
        .await
        .unwrap_or_else(|e| panic!("report {by:?}: {e}"));
    rows.sort_by(|x, y| x.group.cmp(&y.group));
    rows
}

/// The exact sums of `a` + `b`, whatever the storage does (SummingMergeTree may not have merged).
async fn assert_totals_of_a_and_b(sink: &Sink) {
    let (from, to) = (T0, T0 + 2 * MINUTE);
    assert_eq!(
        report(sink, from, to, &["campaign_id"]).await,
        [line(&["0"], 5, 0), line(&["1"], 23, 23), line(&["2"], 7, 7),]
    );
    assert_eq!(
        report(sink, from, to, &["country", "device"]).await,
        [
            line(&["", "other"], 3, 3),
            line(&["DE", "desktop"], 17, 17),
            line(&["DE", "mobile"], 11, 6),
            line(&["FR", "mobile"], 4, 4),
        ]
    );
    assert_eq!(
        report(sink, from, to, &["os"]).await,
        [
            line(&["Android"], 11, 6),
            line(&[AWKWARD_OS], 3, 3),
            line(&["Windows"], 17, 17),
            line(&["iOS"], 4, 4),
        ]
    );
    // The range is half-open: [T0 + 1 min, T0 + 2 min) is the second minute only.
    assert_eq!(
        report(sink, T0 + MINUTE, to, &[]).await,
        [line(&[], 10, 10)]
    );
    assert_eq!(
        report(sink, T0, T0 + MINUTE, &[]).await,
        [line(&[], 25, 20)]
    );
    // Nothing in range: no groups, or one line of zeros without grouping.
    assert_eq!(report(sink, 0, T0, &["campaign_id"]).await, []);
    assert_eq!(report(sink, 0, T0, &[]).await, [line(&[], 0, 0)]);
}

/// What both sinks must do. `replay_is_noop`: whether the sink promises exactly once.
async fn exercise(sink: &Sink, run: &str, replay_is_noop: bool) {
    sink.migrate().await.expect("migrate");
    sink.migrate().await.expect("migrate again (idempotent)");
    sink.ping().await.expect("ping");

    let (a, b) = batches(run);
    sink.write(&a, TIMEOUT).await.expect("write a");
    sink.write(&b, TIMEOUT).await.expect("write b");
    assert_totals_of_a_and_b(sink).await;

    // Issue 11: requests by UTC minute of the day, all keys summed, in a half-open range.
    let (first, minute) = (T0 / 60, (T0 / 60 % 1440) as usize);
    let curve = sink
        .traffic_curve(first - 1440, first + 2)
        .await
        .expect("traffic curve");
    assert_eq!(curve.len(), 1440);
    assert_eq!((curve[minute], curve[minute + 1]), (25, 10));
    assert_eq!(curve.iter().sum::<u64>(), 35);
    let curve = sink
        .traffic_curve(first + 1, first + 1441)
        .await
        .expect("traffic curve");
    assert_eq!((curve[minute], curve[minute + 1]), (0, 10));
    assert_eq!(
        sink.traffic_curve(0, first).await.expect("traffic curve"),
        vec![0; 1440]
    );

    // A batch spanning several statements (MySQL writes 500 rows per INSERT).
    let t = T0 + 4 * MINUTE;
    let many = Batch {
        id: format!("{run}-many"),
        rows: (0..1201)
            .map(|i| row(t, "PL", "Linux", "desktop", 1000 + i, u64::from(i) + 1, 1))
            .collect(),
    };
    sink.write(&many, TIMEOUT).await.expect("write many");
    assert_eq!(
        report(sink, t, t + MINUTE, &[]).await,
        [line(&[], 1201 * 1202 / 2, 1201)]
    );
    assert_eq!(
        report(sink, t, t + MINUTE, &["campaign_id"]).await.len(),
        1201
    );

    // An empty batch is fine.
    sink.write(
        &Batch {
            id: format!("{run}-empty"),
            rows: vec![],
        },
        TIMEOUT,
    )
    .await
    .expect("write empty");

    // Issue 9 item 7: the value SQLite refuses (above i64::MAX) is a valid count here, stored
    // and read back whole.
    let late = T0 + 30 * MINUTE;
    let huge = Batch {
        id: format!("{run}-huge"),
        rows: vec![row(late, "DE", "Linux", "desktop", 4, 1 << 63, 1)],
    };
    sink.write(&huge, TIMEOUT)
        .await
        .expect("write 2^63 requests");
    assert_eq!(
        report(sink, late, late + MINUTE, &[]).await,
        [line(&[], 1 << 63, 1)]
    );

    sink.write(&a, TIMEOUT).await.expect("replay a");
    if replay_is_noop {
        assert_totals_of_a_and_b(sink).await;
        sink.write(&many, TIMEOUT).await.expect("replay many");
        assert_eq!(
            report(sink, t, t + MINUTE, &[]).await,
            [line(&[], 1201 * 1202 / 2, 1201)]
        );
    }
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address").port()
}

/// Runs `body`, then `cleanup` even if `body` panicked, then re-raises the panic.
async fn with_cleanup<C: Future<Output = ()>>(
    body: impl Future<Output = ()> + Send + 'static,
    cleanup: C,
) {
    let outcome = tokio::spawn(body).await;
    cleanup.await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn run_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}

// ---------------------------------------------------------------------------------------------
// ClickHouse
// ---------------------------------------------------------------------------------------------

fn clickhouse_admin(url: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
}

async fn clickhouse_version(url: &str) -> (u32, u32) {
    let text: String = clickhouse_admin(url)
        .query("SELECT version()")
        .fetch_one()
        .await
        .expect("SELECT version()");
    let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn clickhouse_config(url: &str, database: &str, table: &str) -> ClickhouseConfig {
    ClickhouseConfig {
        url: url.into(),
        database: database.into(),
        table: table.into(),
        user: "default".into(),
        password: String::new(),
    }
}

#[test]
fn clickhouse_sink_writes_reports_and_classifies_errors() {
    // Not while an outage test has the server stopped.
    crate::support::exclusive(clickhouse_sink_writes_reports_and_classifies_errors_async());
}

async fn clickhouse_sink_writes_reports_and_classifies_errors_async() {
    let Some(url) = service_url("ROTATOR_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let run = run_id();
    let db = format!("rotator_it_{run}");
    let body = {
        let (url, db, run) = (url.clone(), db.clone(), run.clone());
        async move {
            // insert_deduplication_token exists from 22.2 on; before, a replayed batch is counted
            // again (the sink's documented at-least-once), so nothing is asserted about replays.
            let exactly_once = clickhouse_version(&url).await >= (22, 2);
            let sink = Sink::Clickhouse(ClickhouseSink::new(
                &clickhouse_config(&url, &db, "stats"),
                TIMEOUT,
            ));
            exercise(&sink, &run, exactly_once).await;

            // Rows that do not fit the table (an operator created `ts` as a Date): the server
            // cannot parse them, and no retry would change that.
            clickhouse_admin(&url)
                .query(&format!(
                    "CREATE TABLE {db}.wrong (ts Date, country String, os String, browser String, device String, \
                     campaign_id UInt32, placement String, creative_id UInt32, requests UInt64, impressions UInt64, viewables UInt64, clicks UInt64, \
                     spend UInt64) \
                     ENGINE = MergeTree() ORDER BY ts"
                ))
                .execute()
                .await
                .expect("create the wrong table");
            let wrong = ClickhouseSink::new(&clickhouse_config(&url, &db, "wrong"), TIMEOUT);
            let batch = Batch {
                id: format!("{run}-wrong"),
                rows: vec![row(T0, "DE", "Windows", "desktop", 1, 1, 1)],
            };
            let err = wrong
                .write(&batch)
                .await
                .expect_err("rows that do not match the table");
            assert!(!err.retryable, "a data error must be permanent: {err}");
            assert!(
                err.message.contains("Code: 33"),
                "CANNOT_READ_ALL_DATA expected: {err}"
            );

            // A missing table: an operator can still create it, so it is worth retrying.
            let missing = ClickhouseSink::new(&clickhouse_config(&url, &db, "missing"), TIMEOUT);
            let err = missing.write(&batch).await.expect_err("a missing table");
            assert!(err.retryable, "a missing table must be transient: {err}");
            assert!(
                err.message.contains("Code: 60"),
                "UNKNOWN_TABLE expected: {err}"
            );

            // Nobody listening: transient everywhere, including migrate.
            let down = ClickhouseSink::new(
                &clickhouse_config(&format!("http://127.0.0.1:{}", closed_port()), &db, "stats"),
                TIMEOUT,
            );
            assert!(down.ping().await.expect_err("ping a closed port").retryable);
            assert!(
                down.migrate()
                    .await
                    .expect_err("migrate on a closed port")
                    .retryable
            );
            assert!(
                down.write(&batch)
                    .await
                    .expect_err("write to a closed port")
                    .retryable
            );
        }
    };
    let cleanup = async {
        if let Err(e) = clickhouse_admin(&url)
            .query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await
        {
            eprintln!("cannot drop the test database {db}: {e}");
        }
    };
    with_cleanup(body, cleanup).await;
}

// ---------------------------------------------------------------------------------------------
// MySQL / MariaDB
// ---------------------------------------------------------------------------------------------

/// `url` with its database replaced by `db`.
fn mysql_url_with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    format!("{server}/{db}{query}")
}

async fn mysql_admin(url: &str, sql: &str) -> Result<Vec<mysql_async::Row>, mysql_async::Error> {
    let mut conn = mysql_async::Conn::from_url(url).await?;
    let rows = conn.query(sql).await?;
    conn.disconnect().await?;
    Ok(rows)
}

#[test]
fn mysql_sink_writes_exactly_once_reports_and_classifies_errors() {
    // Not while an outage test has the server stopped.
    crate::support::exclusive(mysql_sink_writes_exactly_once_reports_and_classifies_errors_async());
}

async fn mysql_sink_writes_exactly_once_reports_and_classifies_errors_async() {
    let Some(url) = service_url("ROTATOR_TEST_MYSQL_URL") else {
        return;
    };
    let run = run_id();
    let db = format!("rotator_it_{run}");
    mysql_admin(&url, &format!("CREATE DATABASE {db}"))
        .await
        .expect("create the test database");
    let db_url = mysql_url_with_database(&url, &db);
    let body = {
        let (db_url, run) = (db_url.clone(), run.clone());
        async move {
            let sink = Sink::Mysql(
                MysqlSink::new(&MysqlConfig {
                    url: db_url.clone(),
                    table: "stats".into(),
                })
                .expect("new"),
            );
            exercise(&sink, &run, true).await;

            // DATETIME holds UTC whatever the server's time zone (the sink sets the session's).
            let rows = mysql_admin(
                &db_url,
                "SELECT DATE_FORMAT(MIN(ts), '%Y-%m-%d %H:%i:%s') FROM stats",
            )
            .await
            .expect("read ts");
            assert_eq!(
                rows[0].get::<String, usize>(0).as_deref(),
                Some("2023-11-14 22:14:00")
            );

            // Longer than the columns: cut at character boundaries, not refused.
            let t = T0 + 2 * MINUTE;
            let long = Batch {
                id: format!("{run}-long"),
                rows: vec![row(
                    t,
                    "DE",
                    &"ż".repeat(70),
                    "desktop-but-far-too-long",
                    3,
                    2,
                    2,
                )],
            };
            sink.write(&long, TIMEOUT)
                .await
                .expect("write long strings");
            assert_eq!(
                report(&sink, t, t + MINUTE, &["os", "device"]).await,
                [line(&[&"ż".repeat(64), "desktop-but-far-"], 2, 2)]
            );

            // A data error: the sum leaves BIGINT UNSIGNED. Permanent, and the transaction
            // (batch id included) is rolled back, so nothing of the batch remains.
            let t = T0 + 10 * MINUTE;
            let big = Batch {
                id: format!("{run}-big"),
                rows: vec![row(t, "DE", "Windows", "desktop", 9, u64::MAX, 0)],
            };
            sink.write(&big, TIMEOUT).await.expect("write u64::MAX");
            let over = Batch {
                id: format!("{run}-over"),
                rows: vec![
                    row(t + MINUTE, "DE", "Windows", "desktop", 9, 1, 1),
                    row(t, "DE", "Windows", "desktop", 9, 1, 0),
                ],
            };
            let err = sink.write(&over, TIMEOUT).await.expect_err("overflow");
            assert!(!err.retryable, "a data error must be permanent: {err}");
            assert!(err.message.contains("1690"), "{err}");
            assert_eq!(
                report(&sink, t, t + 2 * MINUTE, &[]).await,
                [line(&[], u64::MAX, 0)]
            );
            let ids = mysql_admin(
                &db_url,
                &format!("SELECT COUNT(*) FROM rotator_batches WHERE batch_id = '{run}-over'"),
            )
            .await
            .expect("read rotator_batches");
            assert_eq!(ids[0].get::<u64, usize>(0), Some(0));

            // A missing table: an operator can still create it, so it is worth retrying.
            let missing = MysqlSink::new(&MysqlConfig {
                url: db_url.clone(),
                table: "missing".into(),
            })
            .expect("new");
            let fresh = Batch {
                id: format!("{run}-missing"),
                rows: big.rows.clone(),
            };
            let err = missing.write(&fresh).await.expect_err("a missing table");
            assert!(err.retryable, "a missing table must be transient: {err}");

            // Nobody listening: transient everywhere, including migrate.
            let down_url = format!("mysql://root@127.0.0.1:{}/rotator_test", closed_port());
            let down = MysqlSink::new(&MysqlConfig {
                url: down_url,
                table: "stats".into(),
            })
            .expect("new");
            assert!(down.ping().await.expect_err("ping a closed port").retryable);
            assert!(
                down.migrate()
                    .await
                    .expect_err("migrate on a closed port")
                    .retryable
            );
            assert!(
                down.write(&big)
                    .await
                    .expect_err("write to a closed port")
                    .retryable
            );

            // A server that refuses the schema: permanent for migrate, so the start fails loudly.
            let denied_url = mysql_url_with_database(&db_url, "no_such_database_for_rotator");
            let denied = MysqlSink::new(&MysqlConfig {
                url: denied_url,
                table: "stats".into(),
            })
            .expect("new");
            assert!(
                !denied
                    .migrate()
                    .await
                    .expect_err("migrate into a missing database")
                    .retryable
            );
        }
    };
    let cleanup = async {
        if let Err(e) = mysql_admin(&url, &format!("DROP DATABASE IF EXISTS {db}")).await {
            eprintln!("cannot drop the test database {db}: {e}");
        }
    };
    with_cleanup(body, cleanup).await;
}

#[test]
fn mysql_urls() {
    assert_eq!(
        mysql_url_with_database("mysql://root@h:1/a", "b"),
        "mysql://root@h:1/b"
    );
    assert_eq!(
        mysql_url_with_database("mysql://root@h:1/a?x=1", "b"),
        "mysql://root@h:1/b?x=1"
    );
    assert_eq!(
        mysql_url_with_database("mysql://root@h:1", "b"),
        "mysql://root@h:1/b"
    );
}
