//! SQLite sink (the default): a file beside the server, no database to install.
//!
//! Guarantee: **exactly once**. Each batch is applied in one transaction that also inserts its id
//! into `rotator_batches` (primary key); replaying a batch finds the id and changes nothing.
//! WAL mode lets `rotator report` read while the server writes. SQLite calls block, so they run
//! on tokio's blocking pool; the connection sits behind a std `Mutex` held only inside those
//! blocking calls.

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

fn err(e: impl std::fmt::Display) -> SinkError {
    // SQLite failures are local (disk full, locked file): worth retrying.
    SinkError::transient(NAME, e.to_string())
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
        conn.pragma_update(None, "synchronous", "NORMAL")
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

    /// Creates the tables if missing.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let path = self.path.display().to_string();
        self.blocking(move |c| {
            c.execute_batch(SCHEMA)
                .map_err(|e| SinkError::permanent(NAME, format!("{path}: {e}")))
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
                        "INSERT INTO stats (ts, country, os, browser, device, campaign_id, requests, impressions, clicks) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (ts, country, os, browser, device, campaign_id) DO UPDATE SET \
                         requests = requests + excluded.requests, impressions = impressions + excluded.impressions, \
                         clicks = clicks + excluded.clicks",
                    )
                    .map_err(err)?;
                for r in &batch.rows {
                    upsert
                        .execute(params![r.ts, r.country, r.os, r.browser, r.device, r.campaign_id, r.requests, r.impressions, r.clicks])
                        .map_err(err)?;
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
            "SELECT {select}COALESCE(SUM(requests), 0), COALESCE(SUM(impressions), 0) FROM stats \
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
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
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
            requests,
            impressions: if campaign_id == 0 { 0 } else { requests },
            clicks: 0,
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
                    impressions: 0
                },
                ReportRow {
                    group: vec!["1".into()],
                    requests: 8,
                    impressions: 8
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

    #[tokio::test]
    async fn expired_batch_ids_are_pruned() {
        let dir = std::env::temp_dir().join(format!("rotator-sqlite-prune-{}", fastrand::u64(..)));
        let sink = SqliteSink::open(&SqliteConfig {
            path: dir.join("stats.db"),
        })
        .unwrap();
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
        let ids: Vec<String> = sink
            .blocking(|c| {
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
            .unwrap();
        assert_eq!(ids, ["new", "recent"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
