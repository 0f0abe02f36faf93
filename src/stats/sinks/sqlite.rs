//! SQLite sink (the default): a file beside the server, no database to install.
//!
//! Guarantee: **exactly once**. Each batch is applied in one transaction that also inserts its id
//! into `rotator_batches` (primary key); replaying a batch finds the id and changes nothing.
//! WAL mode lets `rotator report` read while the server writes. `synchronous = FULL`: the WAL is
//! fsynced at every commit, so a batch the sink acknowledged (and the flusher then forgot or
//! deleted from the spool) survives a power loss; `NORMAL` would only sync at checkpoints and
//! could undo many flush intervals. The cost is one fsync per flush interval.
//!
//! Data errors (never retried): a count above `i64::MAX` (SQLite integers are signed), a sum that
//! would leave `i64` (SQLite would silently store it as a float; each upsert reports the types it
//! stored, and a non-integer rolls the batch back), constraint and type violations. Everything else
//! (a full disk, a locked or unreadable file) is worth retrying.
//!
//! Upgrade: a `stats` table of release 0.1.0 (no `placement`, `creative_id`, `viewables`; found
//! with `PRAGMA table_info`) is rebuilt by `migrate` in one transaction: renamed, the new table
//! created from the schema, every row copied, the old one dropped. A table of issue 10 (no
//! `spend`) gets the column with `ALTER TABLE ... ADD COLUMN` (old rows read 0). A crash rolls
//! the whole upgrade back; `rotator_batches` is not touched, so batch ids stay exactly-once
//! across it.
//!
//! SQLite calls block, so they run on tokio's blocking pool; the connection sits behind a std
//! `Mutex` held only inside those blocking calls.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::SinkError;
use crate::config::SqliteConfig;
use crate::stats::Batch;
use crate::stats::report::{ReportQuery, ReportRow};

const NAME: &str = "sqlite";

/// The DDL, also readable in `schema/sqlite.sql`.
pub const SCHEMA: &str = include_str!("../../../schema/sqlite.sql");

/// Writes statistics to an SQLite file.
pub struct SqliteSink {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// When expired batch ids were last deleted.
    pruned: Mutex<Option<std::time::Instant>>,
}

/// Whether a retry can help: not for values SQLite cannot store (module doc), yes for everything
/// else (a full disk, a locked file, an I/O error).
fn err(e: rusqlite::Error) -> SinkError {
    use rusqlite::ffi::ErrorCode;
    let data = match &e {
        rusqlite::Error::ToSqlConversionFailure(_)
        | rusqlite::Error::IntegralValueOutOfRange(..) => true,
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig
        ),
        _ => false,
    };
    if data {
        SinkError::permanent(NAME, e.to_string())
    } else {
        SinkError::transient(NAME, e.to_string())
    }
}

/// Creates the schema, rebuilding a 0.1.0 `stats` table first or adding `spend` to one of issue
/// 10, all in one transaction (taken for writing at once, so two processes migrating at the same
/// time take turns).
fn upgrade(c: &mut Connection) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let columns: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('stats')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let old = !columns.is_empty() && !columns.iter().any(|c| c == "placement");
    if !columns.is_empty() && !old && !columns.iter().any(|c| c == "spend") {
        tx.execute_batch("ALTER TABLE stats ADD COLUMN spend INTEGER NOT NULL DEFAULT 0")?;
        tracing::info!("sqlite: statistics table upgraded: spend column added");
    }
    if old {
        tx.execute_batch("ALTER TABLE stats RENAME TO stats_0_1_0")?;
    }
    tx.execute_batch(SCHEMA)?;
    if old {
        let copied = tx.execute(
            "INSERT INTO stats (ts, country, os, browser, device, campaign_id, placement, creative_id, \
             requests, impressions, viewables, clicks) \
             SELECT ts, country, os, browser, device, campaign_id, '', 0, requests, impressions, 0, clicks \
             FROM stats_0_1_0",
            [],
        )?;
        tx.execute_batch("DROP TABLE stats_0_1_0")?;
        tracing::info!(
            rows = copied,
            "sqlite: statistics table upgraded to placements and creatives"
        );
    }
    tx.commit()
}

impl SqliteSink {
    /// Opens (creating if needed) the database file and its folder.
    pub fn open(config: &SqliteConfig) -> Result<SqliteSink, SinkError> {
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                SinkError::permanent(
                    NAME,
                    format!("{}: cannot create folder: {e}", dir.display()),
                )
            })?;
        }
        let conn = Connection::open(&path)
            .map_err(|e| SinkError::permanent(NAME, format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        Ok(SqliteSink {
            path,
            conn: Arc::new(Mutex::new(conn)),
            pruned: Mutex::new(None),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| SinkError::transient(NAME, format!("blocking task failed: {e}")))?
    }

    /// Creates the tables if missing and upgrades a table of release 0.1.0 (module doc).
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let path = self.path.display().to_string();
        self.blocking(move |c| {
            upgrade(c).map_err(|e| SinkError::permanent(NAME, format!("{path}: {e}")))
        })
        .await
    }

    /// Applies `batch` once: a replay of an applied batch is a no-op.
    pub async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let batch = batch.clone();
        let prune = super::prune_due(&self.pruned);
        self.blocking(move |c| {
            let tx = c.transaction().map_err(err)?;
            if prune {
                let cutoff = i64::from(super::BATCH_ID_RETENTION_DAYS) * 86_400;
                tx.execute("DELETE FROM rotator_batches WHERE applied_at < strftime('%s', 'now') - ?1", params![cutoff])
                    .map_err(err)?;
            }
            let fresh = tx
                .execute("INSERT OR IGNORE INTO rotator_batches (batch_id, rows) VALUES (?1, ?2)", params![batch.id, batch.rows.len()])
                .map_err(err)?;
            if fresh == 1 {
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO stats (ts, country, os, browser, device, campaign_id, placement, creative_id, \
                         requests, impressions, viewables, clicks, spend) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                         ON CONFLICT (ts, country, os, browser, device, campaign_id, placement, creative_id) DO UPDATE SET \
                         requests = requests + excluded.requests, impressions = impressions + excluded.impressions, \
                         viewables = viewables + excluded.viewables, clicks = clicks + excluded.clicks, \
                         spend = spend + excluded.spend \
                         RETURNING typeof(requests) = 'integer' AND typeof(impressions) = 'integer' \
                         AND typeof(viewables) = 'integer' AND typeof(clicks) = 'integer' \
                         AND typeof(spend) = 'integer'",
                    )
                    .map_err(err)?;
                for r in &batch.rows {
                    let integers: bool = upsert
                        .query_row(params![r.ts, r.country, r.os, r.browser, r.device, r.campaign_id, r.placement, r.creative_id, r.requests, r.impressions, r.viewables, r.clicks, r.spend], |row| row.get(0))
                        .map_err(err)?;
                    if !integers {
                        // Dropping the transaction rolls the whole batch back.
                        return Err(SinkError::permanent(NAME, format!(
                            "batch {}: adding requests {}, impressions {}, viewables {}, clicks {}, spend {} to ({}, {:?}, {:?}, {:?}, {:?}, {}, {:?}, {}) leaves the 64-bit integer range",
                            batch.id, r.requests, r.impressions, r.viewables, r.clicks, r.spend, r.ts, r.country, r.os, r.browser, r.device, r.campaign_id, r.placement, r.creative_id
                        )));
                    }
                }
            }
            tx.commit().map_err(err)
        })
        .await
    }

    /// Whether the file answers a query.
    pub async fn ping(&self) -> Result<(), SinkError> {
        self.blocking(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .optional()
                .map(|_| ())
                .map_err(err)
        })
        .await
    }

    /// Aggregated rows for a report.
    pub async fn report(&self, query: &ReportQuery) -> Result<Vec<ReportRow>, SinkError> {
        let (select, group_by) = query.group_sql(|c| format!("CAST({c} AS TEXT)"));
        let sql = format!(
            "SELECT {select}COALESCE(SUM(requests), 0), COALESCE(SUM(impressions), 0), \
             COALESCE(SUM(viewables), 0), COALESCE(SUM(clicks), 0), COALESCE(SUM(spend), 0) FROM stats \
             WHERE ts >= ?1 AND ts < ?2{group_by}"
        );
        let (from, to, n) = (query.from, query.to, query.by.len());
        self.blocking(move |c| {
            let mut stmt = c
                .prepare(&sql)
                .map_err(|e| SinkError::permanent(NAME, e.to_string()))?;
            let rows = stmt
                .query_map(params![from, to], |row| {
                    let group = (0..n)
                        .map(|i| row.get::<_, String>(i))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(ReportRow {
                        group,
                        requests: row.get::<_, i64>(n)? as u64,
                        impressions: row.get::<_, i64>(n + 1)? as u64,
                        viewables: row.get::<_, i64>(n + 2)? as u64,
                        clicks: row.get::<_, i64>(n + 3)? as u64,
                        spend: row.get::<_, i64>(n + 4)? as u64,
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    /// Requests per UTC minute of the day over `[since_minute, until_minute)` (minutes since the
    /// epoch); see [`Sink::traffic_curve`](super::Sink::traffic_curve).
    pub async fn traffic_curve(
        &self,
        since_minute: u32,
        until_minute: u32,
    ) -> Result<Vec<u64>, SinkError> {
        let (from, to) = (i64::from(since_minute) * 60, i64::from(until_minute) * 60);
        self.blocking(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT (ts / 60) % 1440, SUM(requests) FROM stats \
                     WHERE ts >= ?1 AND ts < ?2 GROUP BY 1",
                )
                .map_err(|e| SinkError::permanent(NAME, e.to_string()))?;
            let sums = stmt
                .query_map(params![from, to], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            Ok(super::per_minute_of_day(
                sums.into_iter().map(|(m, n)| (m as u64, n as u64)),
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Row;

    fn row(ts: u32, campaign_id: u32, requests: u64) -> Row {
        Row {
            ts,
            country: "DE".into(),
            os: "Windows".into(),
            browser: "Chrome".into(),
            device: "desktop".into(),
            campaign_id,
            placement: String::new(),
            creative_id: 0,
            requests,
            impressions: if campaign_id == 0 { 0 } else { requests },
            viewables: 0,
            clicks: 0,
            // Far below the i64 limit that the range tests probe with `requests`.
            spend: if campaign_id == 0 {
                0
            } else {
                requests % 1_000_000 * 2_500
            },
        }
    }

    #[tokio::test]
    async fn upsert_adds_and_replay_is_a_no_op() {
        let dir = std::env::temp_dir().join(format!("rotator-sqlite-{}", fastrand::u64(..)));
        let sink = SqliteSink::open(&SqliteConfig {
            path: dir.join("stats.db"),
        })
        .unwrap();
        sink.migrate().await.unwrap();
        sink.migrate().await.unwrap();
        let a = Batch {
            id: "a".into(),
            rows: vec![row(60, 1, 3), row(60, 0, 2)],
        };
        let b = Batch {
            id: "b".into(),
            rows: vec![row(60, 1, 4), row(120, 1, 1)],
        };
        sink.write(&a).await.unwrap();
        sink.write(&b).await.unwrap();
        sink.write(&a).await.unwrap();
        let q = ReportQuery {
            from: 0,
            to: 180,
            by: vec!["campaign_id"],
        };
        let mut rows = sink.report(&q).await.unwrap();
        rows.sort_by(|x, y| x.group.cmp(&y.group));
        assert_eq!(
            rows,
            [
                ReportRow {
                    group: vec!["0".into()],
                    requests: 2,
                    impressions: 0,
                    viewables: 0,
                    clicks: 0,
                    spend: 0,
                },
                ReportRow {
                    group: vec!["1".into()],
                    requests: 8,
                    impressions: 8,
                    viewables: 0,
                    clicks: 0,
                    spend: 20_000,
                },
            ]
        );
        let q = ReportQuery {
            from: 100,
            to: 180,
            by: vec![],
        };
        assert_eq!(sink.report(&q).await.unwrap()[0].requests, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 11: requests summed per UTC minute of the day, all campaigns, within the half-open
    /// range of minutes since the epoch.
    #[tokio::test]
    async fn issue11_traffic_curve() {
        let (dir, sink) = temp_sink("curve");
        sink.migrate().await.unwrap();
        let day = 20_000 * 86_400;
        sink.write(&Batch {
            id: "days".into(),
            rows: vec![
                row(day - 60, 1, 100),
                row(day, 1, 3),
                row(day, 0, 2),
                row(day + 61 * 60, 2, 5),
                row(day + 86_400, 1, 7),
                row(day + 86_400 + 1439 * 60, 1, 11),
                row(day + 2 * 86_400, 1, 1000),
            ],
        })
        .await
        .unwrap();
        let first = day / 60;
        let curve = sink.traffic_curve(first, first + 2 * 1440).await.unwrap();
        assert_eq!(curve.len(), 1440);
        assert_eq!((curve[0], curve[61], curve[1439]), (12, 5, 11));
        assert_eq!(curve.iter().sum::<u64>(), 28);
        assert_eq!(
            sink.traffic_curve(first + 1, first + 61).await.unwrap(),
            vec![0; 1440]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 11: a table of issue 10 (no spend) gets the column, every row kept, and sums spend
    /// afterwards.
    #[tokio::test]
    async fn issue11_table_without_spend_is_upgraded() {
        let (dir, sink) = temp_sink("spend");
        let issue10 = SCHEMA.replace(
            "    spend       INTEGER NOT NULL DEFAULT 0, -- micro-units of the currency (1.0 = 1000000)\n",
            "",
        );
        assert_ne!(issue10, SCHEMA);
        sink.blocking(move |c| {
            c.execute_batch(&issue10).map_err(err)?;
            c.execute_batch("INSERT INTO stats (ts, country, os, browser, device, campaign_id, placement, creative_id, requests, impressions, viewables, clicks) VALUES (60, 'DE', 'Windows', 'Chrome', 'desktop', 1, 'top', 7, 5, 4, 3, 2)")
                .map_err(err)
        })
        .await
        .unwrap();
        sink.migrate().await.unwrap();
        sink.migrate().await.unwrap();
        let mut r = row(60, 1, 1);
        (r.placement, r.creative_id) = ("top".into(), 7);
        sink.write(&Batch {
            id: "after".into(),
            rows: vec![r],
        })
        .await
        .unwrap();
        let q = ReportQuery {
            from: 0,
            to: 120,
            by: vec!["placement"],
        };
        assert_eq!(
            sink.report(&q).await.unwrap(),
            [ReportRow {
                group: vec!["top".into()],
                requests: 6,
                impressions: 5,
                viewables: 3,
                clicks: 2,
                spend: 2_500,
            }]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn temp_sink(tag: &str) -> (PathBuf, SqliteSink) {
        let dir = std::env::temp_dir().join(format!("rotator-sqlite-{tag}-{}", fastrand::u64(..)));
        let sink = SqliteSink::open(&SqliteConfig {
            path: dir.join("stats.db"),
        })
        .unwrap();
        (dir, sink)
    }

    async fn batch_ids(sink: &SqliteSink) -> Vec<String> {
        sink.blocking(|c| {
            let mut st = c
                .prepare("SELECT batch_id FROM rotator_batches ORDER BY batch_id")
                .map_err(err)?;
            let ids = st
                .query_map([], |r| r.get(0))
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            Ok(ids)
        })
        .await
        .unwrap()
    }

    /// Issue 9 item 12: WAL with `synchronous = NORMAL` can undo acknowledged batches on power
    /// loss; every commit must be fsynced.
    #[tokio::test]
    async fn commits_are_fsynced() {
        let (dir, sink) = temp_sink("sync");
        let (mode, sync): (String, i64) = sink
            .blocking(|c| {
                let mode = c
                    .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .map_err(err)?;
                let sync = c
                    .query_row("PRAGMA synchronous", [], |r| r.get(0))
                    .map_err(err)?;
                Ok((mode, sync))
            })
            .await
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2), "2 is FULL");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 9 item 7: values SQLite cannot store are data errors (not retried), and nothing of
    /// the refused batch stays behind.
    #[tokio::test]
    async fn issue9_values_out_of_range_are_data_errors() {
        let (dir, sink) = temp_sink("range");
        sink.migrate().await.unwrap();
        let mut big = row(60, 1, 1);
        big.requests = 9_223_372_036_854_775_808;
        let err = sink
            .write(&Batch {
                id: "big".into(),
                rows: vec![row(60, 2, 5), big],
            })
            .await
            .unwrap_err();
        assert!(!err.retryable, "{err}");

        sink.write(&Batch {
            id: "max".into(),
            rows: vec![row(120, 1, i64::MAX as u64)],
        })
        .await
        .unwrap();
        let err = sink
            .write(&Batch {
                id: "over".into(),
                rows: vec![row(180, 3, 7), row(120, 1, 1)],
            })
            .await
            .unwrap_err();
        assert!(!err.retryable, "{err}");
        assert!(err.message.contains("64-bit"), "{err}");

        // Issue 11: spend is summed under the same check.
        let mut spent = row(300, 5, 0);
        spent.spend = i64::MAX as u64;
        sink.write(&Batch {
            id: "spend-max".into(),
            rows: vec![spent.clone()],
        })
        .await
        .unwrap();
        spent.spend = 1;
        let err = sink
            .write(&Batch {
                id: "spend".into(),
                rows: vec![spent.clone()],
            })
            .await
            .unwrap_err();
        assert!(err.message.contains("spend 1"), "{err}");
        spent.spend = 9_223_372_036_854_775_808;
        assert!(
            !sink
                .write(&Batch {
                    id: "spend-big".into(),
                    rows: vec![spent],
                })
                .await
                .unwrap_err()
                .retryable
        );

        // The refused batches were rolled back whole; later batches go through.
        sink.write(&Batch {
            id: "after".into(),
            rows: vec![row(60, 2, 1)],
        })
        .await
        .unwrap();
        assert_eq!(batch_ids(&sink).await, ["after", "max", "spend-max"]);
        let q = ReportQuery {
            from: 0,
            to: 240,
            by: vec!["campaign_id"],
        };
        let mut rows = sink.report(&q).await.unwrap();
        rows.sort_by(|x, y| x.group.cmp(&y.group));
        let requests: Vec<(String, u64)> = rows
            .into_iter()
            .map(|r| (r.group[0].clone(), r.requests))
            .collect();
        assert_eq!(
            requests,
            [("1".to_string(), i64::MAX as u64), ("2".to_string(), 1)]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_disk_is_worth_retrying() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        assert!(err(full).retryable);
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(err(busy).retryable);
        let check = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_CHECK),
            None,
        );
        assert!(!err(check).retryable);
    }

    #[tokio::test]
    async fn expired_batch_ids_are_pruned() {
        let (dir, sink) = temp_sink("prune");
        sink.migrate().await.unwrap();
        let old = (super::super::BATCH_ID_RETENTION_DAYS as i64 + 1) * 86_400;
        sink.blocking(move |c| {
            c.execute("INSERT INTO rotator_batches (batch_id, rows, applied_at) VALUES ('old', 1, strftime('%s', 'now') - ?1)", params![old])
                .map_err(err)?;
            c.execute("INSERT INTO rotator_batches (batch_id, rows) VALUES ('recent', 1)", []).map_err(err)?;
            Ok(())
        })
        .await
        .unwrap();
        sink.write(&Batch {
            id: "new".into(),
            rows: vec![row(60, 1, 1)],
        })
        .await
        .unwrap();
        assert_eq!(batch_ids(&sink).await, ["new", "recent"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
