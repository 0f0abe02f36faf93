//! MySQL / MariaDB sink: `mysql_async` with a connection pool.
//!
//! Guarantee: **exactly once**. Each batch is applied in one InnoDB transaction that first inserts
//! its id into `rotator_batches` (primary key), then upserts its rows (`ON DUPLICATE KEY UPDATE`
//! adds the counts). A replayed batch hits the duplicate key (error 1062) and is rolled back
//! without touching the counts; a batch whose `COMMIT` answer was lost is either committed (its
//! retry is a no-op) or not (its retry applies it). Two writers of the same batch serialise on the
//! id's row lock, and the second one finds the duplicate.
//!
//! `ts` is a `DATETIME`, which has no time zone: values go through `FROM_UNIXTIME`, which uses the
//! session time zone, so every connection sets `time_zone = '+00:00'` (as a setup statement, run
//! again after the pool resets a connection) and the column holds UTC whatever the server's zone.
//! Strings longer than their columns (`os`, `browser`, `placement` 64, `device` 16, `country` 2 characters)
//! are cut at a character boundary, so a strict `sql_mode` never rejects a whole batch for them.

//!
//! Upgrade: a table of release 0.1.0 (no `placement` column in `information_schema.COLUMNS`) gets
//! the new columns and primary key from `migrate` in **one** `ALTER TABLE` (`UPGRADE_0_1_0`), which
//! InnoDB applies whole or not at all; old rows get placement `''`, creative 0, viewables 0.
//! A table without `spend` (release 0.1.0 and issue 10) then gets it from `UPGRADE_SPEND`, one
//! more `ALTER TABLE` (old rows read 0). `rotator_batches` is not touched, so batch ids stay exactly-once across the upgrade.

use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Opts, OptsBuilder, Params, Pool, TxOpts, Value};

use super::SinkError;
use crate::config::MysqlConfig;
use crate::stats::Batch;
use crate::stats::report::{ReportQuery, ReportRow};

const NAME: &str = "mysql";

/// The DDL, also readable in `schema/mysql.sql` (`{table}` is replaced).
pub const SCHEMA: &str = include_str!("../../../schema/mysql.sql");

/// Turns a table of release 0.1.0 into the one of [`SCHEMA`] (`{table}` is replaced).
const UPGRADE_0_1_0: &str = "ALTER TABLE {table} \
    ADD COLUMN placement VARCHAR(64) NOT NULL DEFAULT '' AFTER campaign_id, \
    ADD COLUMN creative_id INT UNSIGNED NOT NULL DEFAULT 0 AFTER placement, \
    ADD COLUMN viewables BIGINT UNSIGNED NOT NULL DEFAULT 0 AFTER impressions, \
    DROP PRIMARY KEY, \
    ADD PRIMARY KEY (ts, country, os, browser, device, campaign_id, placement, creative_id)";

/// Adds the spend column (issue 11) to a table of release 0.1.0 or issue 10.
const UPGRADE_SPEND: &str = "ALTER TABLE {table} \
    ADD COLUMN spend BIGINT UNSIGNED NOT NULL DEFAULT 0 AFTER clicks";

/// Duplicate column name: another process upgraded the table at the same time.
const ER_DUP_FIELDNAME: u16 = 1060;

/// Rows per `INSERT` statement (13 placeholders each, far below the 65,535 limit).
const CHUNK_ROWS: usize = 500;

/// Run on every new connection and after every reset, so `FROM_UNIXTIME` works in UTC.
const SESSION_SETUP: &str = "SET time_zone = '+00:00'";

/// Duplicate key: the batch id is already in `rotator_batches`.
const ER_DUP_ENTRY: u16 = 1062;

/// Server errors that mean "these rows can never be accepted": retrying would fail the same way
/// and hold up the batches behind.
const DATA_ERRORS: [u16; 12] = [
    1048, // ER_BAD_NULL_ERROR (e.g. FROM_UNIXTIME out of range gives NULL)
    1264, // ER_WARN_DATA_OUT_OF_RANGE
    1265, // WARN_DATA_TRUNCATED
    1292, // ER_TRUNCATED_WRONG_VALUE (incorrect datetime value)
    1300, // ER_INVALID_CHARACTER_STRING
    1366, // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD (incorrect string value)
    1367, // ER_ILLEGAL_VALUE_FOR_TYPE
    1406, // ER_DATA_TOO_LONG
    1411, // ER_WRONG_VALUE_FOR_TYPE (e.g. an impossible date for a function)
    1690, // ER_DATA_OUT_OF_RANGE (a sum past BIGINT UNSIGNED)
    3819, // ER_CHECK_CONSTRAINT_VIOLATED (MySQL 8)
    4025, // ER_CONSTRAINT_FAILED (MariaDB: a CHECK an operator added)
];

/// Writes statistics to a MySQL or MariaDB table.
pub struct MysqlSink {
    pool: Pool,
    /// The table name, quoted for SQL.
    table: String,
    /// The table name as configured (`table` or `db.table`), for `information_schema`.
    table_name: String,
    /// When expired batch ids were last deleted.
    pruned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Whether a retry can help.
///
/// Permanent: data errors ([`DATA_ERRORS`]) and client-side misuse (a value that does not convert,
/// a parameter count that does not match). Transient: connection and I/O errors, deadlocks (1213)
/// and lock wait timeouts (1205), and every other server error, including a missing table (1146),
/// a missing database (1049) and denied access (1044, 1045, 1142): an operator can fix those (run
/// `rotator migrate`, grant), and until then the batches wait in the spool instead of being
/// dropped.
fn classify(e: &mysql_async::Error) -> SinkError {
    use mysql_async::{DriverError as D, Error as E};
    let message = e.to_string();
    let permanent = match e {
        E::Server(s) => DATA_ERRORS.contains(&s.code),
        E::Driver(
            D::FromValue { .. }
            | D::FromRow { .. }
            | D::Params(_)
            | D::MixedParams
            | D::StmtParamsMismatch { .. }
            | D::StmtParamsNumberExceedsLimit { .. },
        ) => true,
        E::Url(_) => true,
        _ => false,
    };
    if permanent {
        SinkError::permanent(NAME, message)
    } else {
        SinkError::transient(NAME, message)
    }
}

/// Server errors that mean "busy, try later", even to DDL.
const BUSY_ERRORS: [u16; 6] = [
    1040, // ER_CON_COUNT_ERROR (too many connections)
    1053, // ER_SERVER_SHUTDOWN
    1203, // ER_TOO_MANY_USER_CONNECTIONS
    1205, // ER_LOCK_WAIT_TIMEOUT
    1213, // ER_LOCK_DEADLOCK
    1927, // ER_CONNECTION_KILLED (MariaDB)
];

/// Like [`classify`], for `migrate`: when the server answers with an error other than "busy", it
/// refuses the schema (denied access, missing database, syntax it does not know) and no retry
/// helps, so the error is permanent and the start fails loudly. An unreachable or busy server
/// stays transient: the start goes on and counts wait in the spool.
fn classify_ddl(e: &mysql_async::Error) -> SinkError {
    match e {
        mysql_async::Error::Server(s) if !BUSY_ERRORS.contains(&s.code) => {
            SinkError::permanent(NAME, e.to_string())
        }
        _ => classify(e),
    }
}

/// `url` with its password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The last `@` ends the user information (an unencoded `@` or `/` in a password is exactly
    // the kind of mistake this message reports, so do not trust the authority's end).
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let (user_info, host) = rest.split_at(at);
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:***{host}"),
        None => url.to_string(),
    }
}

/// Quotes a table name with backticks; `db.table` is quoted as two names.
fn quote(name: &str) -> String {
    name.split('.')
        .map(|part| format!("`{}`", part.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(".")
}

/// At most `max` characters of `s`, cut at a character boundary (`VARCHAR(n)` counts characters).
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The schema's statements with `{table}` replaced.
fn statements(schema: &str, table: &str) -> Vec<String> {
    super::statements(schema, &[("{table}", table)])
}

/// Column `i` of a result row, converted without panicking (unlike `Row::get`).
fn column<T: FromValue>(row: &mysql_async::Row, i: usize) -> Result<T, SinkError> {
    match row.get_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(SinkError::permanent(
            NAME,
            format!("result column {i}: {e}"),
        )),
        None => Err(SinkError::permanent(
            NAME,
            format!("result column {i} is missing"),
        )),
    }
}

/// `INSERT ... ON DUPLICATE KEY UPDATE` for `rows` rows.
fn upsert_sql(table: &str, rows: usize) -> String {
    let values = vec!["(FROM_UNIXTIME(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO {table} (ts, country, os, browser, device, campaign_id, placement, creative_id, \
         requests, impressions, viewables, clicks, spend) \
         VALUES {values} ON DUPLICATE KEY UPDATE requests = requests + VALUES(requests), \
         impressions = impressions + VALUES(impressions), viewables = viewables + VALUES(viewables), \
         clicks = clicks + VALUES(clicks), spend = spend + VALUES(spend)"
    )
}

impl MysqlSink {
    /// Parses the URL and builds the pool (no I/O: the first operation connects).
    pub fn new(config: &MysqlConfig) -> Result<MysqlSink, SinkError> {
        let opts = Opts::from_url(&config.url)
            .map_err(|e| SinkError::permanent(NAME, format!("{}: {e}", redact(&config.url))))?;
        let opts = OptsBuilder::from_opts(opts).setup(vec![SESSION_SETUP]);
        Ok(MysqlSink {
            pool: Pool::new(opts),
            table: quote(&config.table),
            table_name: config.table.clone(),
            pruned: std::sync::Mutex::new(None),
        })
    }

    /// Creates the tables if missing and upgrades a table of release 0.1.0 (module doc). An
    /// unreachable server is a transient error; a server that refuses the statements is a
    /// permanent one.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(|e| classify_ddl(&e))?;
        let (schema, table) = match self.table_name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, self.table_name.as_str()),
        };
        let columns: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                (schema, table),
            )
            .await
            .map_err(|e| classify_ddl(&e))?;
        let lacks = |column: &str| !columns.is_empty() && !columns.iter().any(|c| c == column);
        let upgrades = [
            (
                lacks("placement"),
                UPGRADE_0_1_0,
                "placements and creatives",
            ),
            (lacks("spend"), UPGRADE_SPEND, "spend"),
        ];
        for (_, sql, what) in upgrades.into_iter().filter(|u| u.0) {
            match conn.query_drop(sql.replace("{table}", &self.table)).await {
                Ok(()) => tracing::info!(
                    table = %self.table,
                    "mysql: statistics table upgraded to {what}"
                ),
                Err(mysql_async::Error::Server(e)) if e.code == ER_DUP_FIELDNAME => {}
                Err(e) => {
                    let mut err = classify_ddl(&e);
                    err.message = format!("upgrading {}: {}", self.table, err.message);
                    return Err(err);
                }
            }
        }
        for sql in statements(SCHEMA, &self.table) {
            conn.query_drop(&sql).await.map_err(|e| {
                let mut err = classify_ddl(&e);
                err.message = format!(
                    "{}: {}",
                    sql.lines().next().unwrap_or_default(),
                    err.message
                );
                err
            })?;
        }
        Ok(())
    }

    /// Applies `batch` once: a replay of an applied batch is a no-op.
    pub async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let err = |e: mysql_async::Error| classify(&e);
        let mut tx = self
            .pool
            .start_transaction(TxOpts::default())
            .await
            .map_err(err)?;
        let claimed = tx
            .exec_drop(
                "INSERT INTO rotator_batches (batch_id, `rows`) VALUES (?, ?)",
                (batch.id.as_str(), batch.rows.len() as u64),
            )
            .await;
        match claimed {
            Ok(()) => {}
            Err(mysql_async::Error::Server(e)) if e.code == ER_DUP_ENTRY => {
                // Already applied. A failed rollback changes nothing: the server discards the
                // transaction with the connection, and the batch is applied either way.
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(error = %e, "mysql: rollback after a duplicate batch failed");
                }
                return Ok(());
            }
            Err(e) => return Err(err(e)),
        }
        for chunk in batch.rows.chunks(CHUNK_ROWS) {
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 13);
            for r in chunk {
                params.extend([
                    Value::from(r.ts),
                    Value::from(truncate(&r.country, 2)),
                    Value::from(truncate(&r.os, 64)),
                    Value::from(truncate(&r.browser, 64)),
                    Value::from(truncate(&r.device, 16)),
                    Value::from(r.campaign_id),
                    Value::from(truncate(&r.placement, 64)),
                    Value::from(r.creative_id),
                    Value::from(r.requests),
                    Value::from(r.impressions),
                    Value::from(r.viewables),
                    Value::from(r.clicks),
                    Value::from(r.spend),
                ]);
            }
            // On error the dropped transaction is rolled back before the connection is reused.
            tx.exec_drop(
                upsert_sql(&self.table, chunk.len()),
                Params::Positional(params),
            )
            .await
            .map_err(err)?;
        }
        if super::prune_due(&self.pruned) {
            let days = super::BATCH_ID_RETENTION_DAYS;
            tx.query_drop(format!(
                "DELETE FROM rotator_batches WHERE applied_at < NOW() - INTERVAL {days} DAY"
            ))
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    /// Whether the server answers a query.
    pub async fn ping(&self) -> Result<(), SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(|e| classify(&e))?;
        conn.query_drop("SELECT 1").await.map_err(|e| classify(&e))
    }

    /// Aggregated rows for a report.
    pub async fn report(&self, query: &ReportQuery) -> Result<Vec<ReportRow>, SinkError> {
        let (select, group_by) = query.group_sql(|c| format!("CAST({c} AS CHAR)"));
        let sql = format!(
            "SELECT {select}CAST(SUM(requests) AS UNSIGNED), CAST(SUM(impressions) AS UNSIGNED), \
             CAST(SUM(viewables) AS UNSIGNED), CAST(SUM(clicks) AS UNSIGNED), \
             CAST(SUM(spend) AS UNSIGNED) FROM {table} \
             WHERE ts >= FROM_UNIXTIME(?) AND ts < FROM_UNIXTIME(?){group_by}",
            table = self.table
        );
        let mut conn = self.pool.get_conn().await.map_err(|e| classify(&e))?;
        let rows: Vec<mysql_async::Row> = conn
            .exec(sql, (query.from, query.to))
            .await
            .map_err(|e| classify(&e))?;
        let n = query.by.len();
        rows.iter()
            .map(|row| {
                let group = (0..n)
                    .map(|i| column(row, i))
                    .collect::<Result<Vec<String>, _>>()?;
                // SUM over no rows is NULL.
                let requests: Option<u64> = column(row, n)?;
                let impressions: Option<u64> = column(row, n + 1)?;
                let viewables: Option<u64> = column(row, n + 2)?;
                let clicks: Option<u64> = column(row, n + 3)?;
                let spend: Option<u64> = column(row, n + 4)?;
                Ok(ReportRow {
                    group,
                    requests: requests.unwrap_or(0),
                    impressions: impressions.unwrap_or(0),
                    viewables: viewables.unwrap_or(0),
                    clicks: clicks.unwrap_or(0),
                    spend: spend.unwrap_or(0),
                })
            })
            .collect()
    }

    /// Requests per UTC minute of the day over `[since_minute, until_minute)` (minutes since the
    /// epoch); see [`Sink::traffic_curve`](super::Sink::traffic_curve). `ts` holds UTC (module
    /// doc), so its hour and minute are UTC's.
    pub async fn traffic_curve(
        &self,
        since_minute: u32,
        until_minute: u32,
    ) -> Result<Vec<u64>, SinkError> {
        // FROM_UNIXTIME is NULL past 2038 on some servers: clamp to the range `ts` can hold.
        let seconds = |minute: u32| (u64::from(minute) * 60).min(u64::from(i32::MAX as u32));
        let sql = format!(
            "SELECT HOUR(ts) * 60 + MINUTE(ts) AS m, CAST(SUM(requests) AS UNSIGNED) FROM {} \
             WHERE ts >= FROM_UNIXTIME(?) AND ts < FROM_UNIXTIME(?) GROUP BY m",
            self.table
        );
        let mut conn = self.pool.get_conn().await.map_err(|e| classify(&e))?;
        let rows: Vec<mysql_async::Row> = conn
            .exec(sql, (seconds(since_minute), seconds(until_minute)))
            .await
            .map_err(|e| classify(&e))?;
        let sums = rows
            .iter()
            .map(|row| Ok((column::<u64>(row, 0)?, column::<u64>(row, 1)?)))
            .collect::<Result<Vec<_>, SinkError>>()?;
        Ok(super::per_minute_of_day(sums))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_url_is_permanent_and_hides_the_password() {
        let config = MysqlConfig {
            url: "mysql://user:s3cret@host:notaport/db".into(),
            table: "stats".into(),
        };
        let Err(e) = MysqlSink::new(&config) else {
            panic!("accepted a bad port")
        };
        assert!(!e.retryable);
        assert!(!e.message.contains("s3cret"), "{}", e.message);
        assert!(
            e.message.contains("mysql://user:***@host:notaport/db"),
            "{}",
            e.message
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("mysql://u:p@h:3306/db"), "mysql://u:***@h:3306/db");
        assert_eq!(redact("mysql://u:p/w@d@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact("mysql://h/db"), "mysql://h/db");
        assert_eq!(redact("u:p@h"), "u:***@h");
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("ab", 2), "ab");
        assert_eq!(truncate("", 2), "");
        assert_eq!(truncate("żółw", 3), "żół");
        assert_eq!(truncate(&"é".repeat(70), 64).chars().count(), 64);
    }

    #[test]
    fn quoting_and_statements() {
        assert_eq!(quote("stats"), "`stats`");
        assert_eq!(quote("db.st`ats"), "`db`.`st``ats`");
        let s = statements(SCHEMA, "`t`");
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(
            s[0].starts_with("CREATE TABLE IF NOT EXISTS `t` ("),
            "{}",
            s[0]
        );
        assert!(
            s[1].starts_with("CREATE TABLE IF NOT EXISTS rotator_batches ("),
            "{}",
            s[1]
        );
        assert!(
            !s.iter().any(|s| s.contains("--") || s.contains('{')),
            "{s:?}"
        );
    }

    #[test]
    fn upsert_has_one_group_per_row() {
        let sql = upsert_sql("`t`", 3);
        assert_eq!(sql.matches('?').count(), 39);
        assert!(sql.starts_with("INSERT INTO `t` (ts, "), "{sql}");
    }

    #[test]
    fn classify_server_errors() {
        use mysql_async::{Error, ServerError};
        let server = |code: u16| {
            classify(&Error::Server(ServerError {
                code,
                message: "m".into(),
                state: "HY000".into(),
            }))
            .retryable
        };
        for code in [1366, 1406, 1264, 1265, 1690, 1048, 1411, 4025] {
            assert!(!server(code), "{code}");
        }
        for code in [1213, 1205, 1146, 1045, 1040] {
            assert!(server(code), "{code}");
        }
        let ddl = |code: u16| {
            classify_ddl(&Error::Server(ServerError {
                code,
                message: "m".into(),
                state: "HY000".into(),
            }))
            .retryable
        };
        assert!(!ddl(1045) && !ddl(1142) && !ddl(1064));
        assert!(ddl(1040) && ddl(1213));
        let io = Error::Io(mysql_async::IoError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(classify(&io).retryable);
        assert!(classify(&Error::Driver(mysql_async::DriverError::ConnectionClosed)).retryable);
    }
}
