//! ClickHouse sink: the official `clickhouse` crate over the HTTP interface.
//!
//! The client runs with validation off (plain `RowBinary`: Debian's ClickHouse 18.16 does not know
//! `RowBinaryWithNamesAndTypes`) and without compression (18.16 answers compressed queries with
//! empty bodies). Each batch is **one** `INSERT` of all its rows; a batch is far smaller than
//! `max_insert_block_size` (1,048,576 rows), so the server parses it as one block before writing
//! anything, and a rejected batch leaves nothing behind.
//!
//! Guarantee: it depends on the server version, read once with `SELECT version()`.
//! - **22.2 and later: exactly once** per batch id, within the table's deduplication window.
//!   `migrate` creates the table with `non_replicated_deduplication_window = 1000` and every
//!   `INSERT` carries `insert_deduplication_token = <batch id>`, so the server drops a replayed
//!   batch instead of adding it again. Limits: the server remembers the last 1000 inserted blocks
//!   (one block per monthly partition per `INSERT`), so a batch replayed after about 1000 newer
//!   batches counts again; and a table created before the server was upgraded to 22.2 lacks the
//!   setting (`migrate` logs a warning; fix with
//!   `ALTER TABLE ... MODIFY SETTING non_replicated_deduplication_window = 1000`).
//! - **Before 22.2 (e.g. 18.16): at least once.** A non-replicated MergeTree has no insert
//!   deduplication at all. When the server applies a batch but its answer is lost (the connection
//!   drops, or the write timeout fires after the server has committed), the flusher retries and
//!   the batch is counted twice. An error answer means nothing was written (the rows are parsed
//!   before any part is written), except for a batch spanning two months: its monthly partitions
//!   are written one after the other, and a failure between them leaves the first one counted.
//!
//! Upgrade from release 0.1.0 and from issue 10's schema: `upgrade.rs` (a copy and a `RENAME` swap). Dimension columns are
//! `LowCardinality(String)` on servers from 20.1 on (only 18.16 was tested here), `String` before.
//!
//! The table is a `SummingMergeTree`: rows with the same key are summed when parts merge, which
//! may happen much later, so every read aggregates with `sum()` / `GROUP BY`.

use std::future::Future;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::SinkError;
use crate::config::ClickhouseConfig;
use crate::stats::Batch;
use crate::stats::report::{ReportQuery, ReportRow};

mod upgrade;

const NAME: &str = "clickhouse";

/// The DDL, also readable in `schema/clickhouse.sql` (`{db}` and `{table}` are replaced).
pub const SCHEMA: &str = include_str!("../../../schema/clickhouse.sql");

/// The first release whose non-replicated MergeTree tables honour `insert_deduplication_token`.
const DEDUP_SINCE: ServerVersion = ServerVersion {
    major: 22,
    minor: 2,
};

/// The first release this sink uses `LowCardinality(String)` on (experimental before 19.x; 20.1
/// is a safe floor).
const LOW_CARDINALITY_SINCE: ServerVersion = ServerVersion {
    major: 20,
    minor: 1,
};

/// Appended to `CREATE TABLE` on servers from [`DEDUP_SINCE`] on.
const DEDUP_TABLE_SETTING: &str = "SETTINGS non_replicated_deduplication_window = 1000";

/// Writes statistics to a ClickHouse table.
pub struct ClickhouseSink {
    /// No default database: `migrate` must be able to run before the database exists, so every
    /// statement names `database.table` in full. Boxed: a `Client` is several hundred bytes, which
    /// would make every `Sink` that large.
    client: Box<Client>,
    /// The configured database and table names, for `system.tables` and messages.
    database: String,
    table: String,
    /// `` `database`.`table` ``, quoted for SQL.
    qualified: String,
    /// Limit on every request (an `INSERT`'s upload and answer each get this long).
    timeout: Duration,
    /// Read on first use, so `write` knows it even when `migrate` ran in another process.
    version: OnceCell<ServerVersion>,
}

/// `major.minor` of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ServerVersion {
    major: u32,
    minor: u32,
}

impl ServerVersion {
    /// Parses `SELECT version()`, e.g. `18.16.1` or `24.8.4.13`.
    fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    fn deduplicates(self) -> bool {
        self >= DEDUP_SINCE
    }

    /// The type of the dimension columns (country, os, browser, device, placement).
    fn dimension(self) -> &'static str {
        if self >= LOW_CARDINALITY_SINCE {
            "LowCardinality(String)"
        } else {
            "String"
        }
    }
}

/// One row as sent in `RowBinary`: field order and types must match the table exactly, because
/// with validation off nothing checks them (`DateTime` is a `UInt32` of Unix seconds).
#[derive(Row, Serialize)]
struct InsertRow<'a> {
    ts: u32,
    country: &'a str,
    os: &'a str,
    browser: &'a str,
    device: &'a str,
    campaign_id: u32,
    placement: &'a str,
    creative_id: u32,
    requests: u64,
    impressions: u64,
    viewables: u64,
    clicks: u64,
    spend: u64,
}

/// One report line as read in `RowBinary`: `g` is `Array(String)` (the group values, however many
/// there are), the sums are `UInt64` (what `sum(UInt64)` returns).
#[derive(Row, Deserialize)]
struct ReportLine {
    g: Vec<String>,
    req: u64,
    imp: u64,
    vie: u64,
    clk: u64,
    spe: u64,
}

/// Requests of one UTC minute of the day, for [`ClickhouseSink::traffic_curve`].
#[derive(Row, Deserialize)]
struct MinuteLine {
    m: u16,
    req: u64,
}

/// Quotes an identifier with backticks (ClickHouse escapes with backslashes).
fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if matches!(c, '`' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// Quotes a string literal.
fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\'' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The schema's statements with their placeholders replaced (`dim` is the type of the dimension
/// columns): the HTTP interface takes one statement per request.
fn statements(schema: &str, db: &str, table: &str, dim: &str) -> Vec<String> {
    super::statements(schema, &[("{db}", db), ("{table}", table), ("{dim}", dim)])
}

/// The ClickHouse error code in a server answer: `Code: 27, e.displayText() = ...` (18.16),
/// `Code: 27. DB::Exception: ...` (current releases) or `Code: 27` (from the exception header).
fn server_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Server error codes that mean "these rows (or this query) can never be accepted": retrying
/// would fail the same way and hold up the batches behind.
const DATA_ERRORS: [u32; 16] = [
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    33,  // CANNOT_READ_ALL_DATA (RowBinary rows that do not match the table's types)
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    469, // VIOLATED_CONSTRAINT (a CHECK an operator added to the table)
];

/// Whether a retry can help.
///
/// Permanent: data errors ([`DATA_ERRORS`]) and answers that do not decode into the expected
/// types. Transient: everything else, including server errors this sink does not know. That covers
/// network failures, timeouts and 5xx answers, but also an unknown database or table (60, 81),
/// bad credentials or missing grants (192, 193, 497, 516) and a malformed URL: an operator can fix
/// those (run `rotator migrate`, grant, correct the config and restart), and until then the
/// batches wait in the spool instead of being dropped.
fn classify(e: &clickhouse::error::Error) -> SinkError {
    use clickhouse::error::Error as E;
    let message = e.to_string();
    match e {
        E::BadResponse(text) => match server_code(text) {
            Some(code) if DATA_ERRORS.contains(&code) => SinkError::permanent(NAME, message),
            _ => SinkError::transient(NAME, message),
        },
        E::Custom(_)
        | E::NotEnoughData
        | E::SchemaMismatch(_)
        | E::InvalidUtf8Encoding(_)
        | E::InvalidTagEncoding(_)
        | E::SequenceMustHaveLength
        | E::DeserializeAnyNotSupported
        | E::RowNotFound => SinkError::permanent(NAME, message),
        _ => SinkError::transient(NAME, message),
    }
}

/// Server answers that mean "busy, try later", even to DDL.
const BUSY_ERRORS: [u32; 5] = [
    159, // TIMEOUT_EXCEEDED
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
];

/// Like [`classify`], for `migrate`: when the server answers our DDL (or `SELECT version()`) with
/// an error other than "busy", it refuses the schema (bad credentials, missing grants, syntax it
/// does not know) and no retry helps, so the error is permanent and the start fails loudly. An
/// unreachable or busy server stays transient: the start goes on and counts wait in the spool.
fn classify_ddl(e: &clickhouse::error::Error) -> SinkError {
    let err = classify(e);
    match e {
        clickhouse::error::Error::BadResponse(text) => match server_code(text) {
            Some(code) if !BUSY_ERRORS.contains(&code) => SinkError::permanent(NAME, err.message),
            _ => err,
        },
        _ => err,
    }
}

impl ClickhouseSink {
    /// Builds the client (no I/O: the first request connects).
    pub fn new(config: &ClickhouseConfig, timeout: Duration) -> ClickhouseSink {
        let client = Client::default()
            .with_url(config.url.clone())
            .with_user(config.user.clone())
            .with_password(config.password.clone())
            .with_validation(false);
        ClickhouseSink {
            client: Box::new(client),
            database: config.database.clone(),
            table: config.table.clone(),
            qualified: format!("{}.{}", quote(&config.database), quote(&config.table)),
            timeout,
            version: OnceCell::new(),
        }
    }

    /// Runs one request under the sink's timeout; `what` names it in errors, `classify` says
    /// whether they are retryable.
    async fn run<T>(
        &self,
        what: &str,
        classify: fn(&clickhouse::error::Error) -> SinkError,
        request: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, SinkError> {
        self.run_within(self.timeout, what, classify, request).await
    }

    /// [`run`](Self::run) with another time limit.
    async fn run_within<T>(
        &self,
        timeout: Duration,
        what: &str,
        classify: fn(&clickhouse::error::Error) -> SinkError,
        request: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let mut err = classify(&e);
                err.message = format!("{what}: {}", err.message);
                Err(err)
            }
            Err(_) => Err(SinkError::transient(
                NAME,
                format!("{what}: timed out after {timeout:?}"),
            )),
        }
    }

    /// The server's version, asked once.
    async fn server_version(
        &self,
        classify: fn(&clickhouse::error::Error) -> SinkError,
    ) -> Result<ServerVersion, SinkError> {
        let ask = async {
            let sql = "SELECT version()";
            let text: String = self
                .run(sql, classify, self.client.query_raw(sql).fetch_one())
                .await?;
            Ok(ServerVersion::parse(&text).unwrap_or_else(|| {
                // Unknown format: assume an old server (no deduplication token) rather than send
                // a setting the server may not know.
                tracing::warn!(version = %text, "clickhouse: unknown server version; writes are at-least-once");
                ServerVersion { major: 0, minor: 0 }
            }))
        };
        self.version.get_or_try_init(|| ask).await.copied()
    }

    /// Creates the database and the table if missing, upgrading a table of release 0.1.0 (module
    /// doc). An unreachable server is a transient error; a server that refuses the statements is
    /// a permanent one.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let version = self.server_version(classify_ddl).await?;
        let mut statements = statements(
            SCHEMA,
            &quote(&self.database),
            &quote(&self.table),
            version.dimension(),
        )
        .into_iter();
        let (Some(create_db), Some(create_table)) = (statements.next(), statements.next()) else {
            return Err(SinkError::permanent(
                NAME,
                "schema/clickhouse.sql lacks its two statements",
            ));
        };
        self.ddl(&create_db).await?;
        self.upgrade(version).await?;
        self.ddl(&self.with_settings(version, create_table)).await?;
        if version.deduplicates() {
            // CREATE TABLE IF NOT EXISTS leaves a table made by an older server as it is.
            let sql = format!(
                "SELECT engine_full FROM system.tables WHERE database = {} AND name = {}",
                literal(&self.database),
                literal(&self.table)
            );
            let engine: String = self
                .run(
                    "reading the table engine",
                    classify_ddl,
                    self.client.query_raw(&sql).fetch_one(),
                )
                .await?;
            if !engine.contains("non_replicated_deduplication_window") {
                tracing::warn!(
                    table = %self.qualified,
                    "clickhouse: the table has no non_replicated_deduplication_window, so replayed batches count twice; \
                     run ALTER TABLE ... MODIFY SETTING {}",
                    DEDUP_TABLE_SETTING.trim_start_matches("SETTINGS ")
                );
            }
        }
        Ok(())
    }

    /// `CREATE TABLE` with the table settings this server needs.
    fn with_settings(&self, version: ServerVersion, mut create_table: String) -> String {
        if version.deduplicates() {
            create_table.push('\n');
            create_table.push_str(DEDUP_TABLE_SETTING);
        }
        create_table
    }

    /// Runs one DDL statement, named in errors by its first line.
    async fn ddl(&self, sql: &str) -> Result<(), SinkError> {
        let what = sql
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end_matches(" (")
            .to_string();
        self.run(&what, classify_ddl, self.client.query_raw(sql).execute())
            .await
    }

    /// Writes `batch` in one `INSERT`. Exactly once on 22.2+, at least once before (module doc).
    pub async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.rows.is_empty() {
            return Ok(());
        }
        let version = self.server_version(classify).await?;
        let what = format!("INSERT INTO {} (batch {})", self.qualified, batch.id);
        let insert = async {
            // With validation off this does no I/O: the request starts with the first row.
            let mut insert = self
                .client
                .insert_unescaped::<InsertRow<'_>>(&self.qualified)
                .await?
                .with_timeouts(Some(self.timeout), Some(self.timeout));
            if version.deduplicates() {
                insert = insert.with_setting("insert_deduplication_token", batch.id.clone());
            }
            for r in &batch.rows {
                insert
                    .write(&InsertRow {
                        ts: r.ts,
                        country: &r.country,
                        os: &r.os,
                        browser: &r.browser,
                        device: &r.device,
                        campaign_id: r.campaign_id,
                        placement: &r.placement,
                        creative_id: r.creative_id,
                        requests: r.requests,
                        impressions: r.impressions,
                        viewables: r.viewables,
                        clicks: r.clicks,
                        spend: r.spend,
                    })
                    .await?;
            }
            insert.end().await
        };
        self.run(&what, classify, insert).await
    }

    /// Whether the server answers a query.
    pub async fn ping(&self) -> Result<(), SinkError> {
        self.run(
            "SELECT 1",
            classify,
            self.client.query_raw("SELECT 1").execute(),
        )
        .await
    }

    /// Aggregated rows for a report.
    pub async fn report(&self, query: &ReportQuery) -> Result<Vec<ReportRow>, SinkError> {
        let (select, group_by) = query.group_sql(|c| format!("toString({c})"));
        // The group values travel as one Array(String), so the row type is the same whatever the
        // grouping, and RowBinary needs no text escaping.
        let group = if query.by.is_empty() {
            "emptyArrayString()".to_string()
        } else {
            format!("[{}]", query.by.join(", "))
        };
        let sql = format!(
            "SELECT {group} AS g, req, imp, vie, clk, spe FROM (SELECT {select}sum(requests) AS req, \
             sum(impressions) AS imp, sum(viewables) AS vie, sum(clicks) AS clk, sum(spend) AS spe \
             FROM {table} WHERE ts >= toDateTime({from}) AND ts < toDateTime({to}){group_by})",
            table = self.qualified,
            from = query.from,
            to = query.to,
        );
        let lines: Vec<ReportLine> = self
            .run("report", classify, self.client.query_raw(&sql).fetch_all())
            .await?;
        Ok(lines
            .into_iter()
            .map(|l| ReportRow {
                group: l.g,
                requests: l.req,
                impressions: l.imp,
                viewables: l.vie,
                clicks: l.clk,
                spend: l.spe,
            })
            .collect())
    }

    /// Requests per UTC minute of the day over `[since_minute, until_minute)` (minutes since the
    /// epoch); see [`Sink::traffic_curve`](super::Sink::traffic_curve). Computed from the Unix
    /// seconds, so the server's time zone does not matter.
    pub async fn traffic_curve(
        &self,
        since_minute: u32,
        until_minute: u32,
    ) -> Result<Vec<u64>, SinkError> {
        // A DateTime is a UInt32 of seconds: clamp to its range.
        let seconds = |minute: u32| (u64::from(minute) * 60).min(u64::from(u32::MAX));
        let sql = format!(
            "SELECT toUInt16(intDiv(toUInt32(ts), 60) % 1440) AS m, sum(requests) AS req \
             FROM {table} WHERE ts >= toDateTime({from}) AND ts < toDateTime({to}) GROUP BY m",
            table = self.qualified,
            from = seconds(since_minute),
            to = seconds(until_minute),
        );
        let lines: Vec<MinuteLine> = self
            .run(
                "traffic curve",
                classify,
                self.client.query_raw(&sql).fetch_all(),
            )
            .await?;
        Ok(super::per_minute_of_day(
            lines.into_iter().map(|l| (u64::from(l.m), l.req)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            ServerVersion::parse("18.16.1"),
            Some(ServerVersion {
                major: 18,
                minor: 16
            })
        );
        assert_eq!(
            ServerVersion::parse("24.8.4.13\n"),
            Some(ServerVersion {
                major: 24,
                minor: 8
            })
        );
        assert_eq!(ServerVersion::parse("nonsense"), None);
        assert!(
            !ServerVersion {
                major: 18,
                minor: 16
            }
            .deduplicates()
        );
        assert!(
            !ServerVersion {
                major: 22,
                minor: 1
            }
            .deduplicates()
        );
        assert!(
            ServerVersion {
                major: 22,
                minor: 2
            }
            .deduplicates()
        );
        assert!(
            ServerVersion {
                major: 23,
                minor: 1
            }
            .deduplicates()
        );
    }

    #[test]
    fn schema_statements_are_split_and_filled() {
        let s = statements(SCHEMA, &quote("db"), &quote("t`x"), "String");
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0], "CREATE DATABASE IF NOT EXISTS `db`");
        assert!(
            s[1].starts_with("CREATE TABLE IF NOT EXISTS `db`.`t\\`x` ("),
            "{}",
            s[1]
        );
        assert!(
            s[1].ends_with(
                "ORDER BY (ts, country, os, browser, device, campaign_id, placement, creative_id)"
            ),
            "{}",
            s[1]
        );
        assert!(
            !s.iter().any(|s| s.contains("--") || s.contains('{')),
            "{s:?}"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a`b\\c"), "`a\\`b\\\\c`");
        assert_eq!(literal("it's"), "'it\\'s'");
    }

    #[test]
    fn classify_sample_errors() {
        use clickhouse::error::Error as E;
        let bad = |text: &str| classify(&E::BadResponse(text.into())).retryable;
        // Data errors, in 18.16's and in current releases' wording: never retried.
        assert!(!bad(
            "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \\t before: ..., e.what() = DB::Exception"
        ));
        assert!(!bad(
            "Code: 33, e.displayText() = DB::Exception: Cannot read all data. Bytes read: 3. Bytes expected: 83., e.what() = DB::Exception"
        ));
        assert!(!bad(
            "Code: 53. DB::Exception: Type mismatch in IN or VALUES section. (TYPE_MISMATCH) (version 24.8.4.13 (official build))"
        ));
        assert!(!bad(
            "Code: 117. DB::Exception: Incorrect data: ... (INCORRECT_DATA) (version 23.3.1.1)"
        ));
        assert!(!bad("Code: 53"));
        assert!(!bad(
            "Code: 321. DB::Exception: Value 300 is out of range of UInt8. (VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE)"
        ));
        assert!(!bad(
            "Code: 469. DB::Exception: Constraint `c` for table t is violated. (VIOLATED_CONSTRAINT)"
        ));
        // Fixable by an operator or by waiting: retried.
        assert!(bad(
            "Code: 60, e.displayText() = DB::Exception: Table rotator.stats doesn't exist., e.what() = DB::Exception"
        ));
        assert!(bad(
            "Code: 81, e.displayText() = DB::Exception: Database nope doesn't exist, e.what() = DB::Exception"
        ));
        assert!(bad(
            "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)"
        ));
        assert!(bad(
            "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)"
        ));
        assert!(bad("Code: 1170"), "a longer code is not a prefix match");
        assert!(bad("503 Service Unavailable"));
        assert!(bad(""));
        assert!(classify(&E::TimedOut).retryable);
        assert!(classify(&E::Network("connection refused".into())).retryable);
        assert!(!classify(&E::NotEnoughData).retryable);
        let err = classify(&E::BadResponse("Code: 27".into()));
        assert_eq!(
            (err.sink, err.message.as_str()),
            (NAME, "bad response: Code: 27")
        );
    }

    #[test]
    fn ddl_refused_by_the_server_is_permanent() {
        use clickhouse::error::Error as E;
        let ddl = |e: E| classify_ddl(&e).retryable;
        assert!(!ddl(E::BadResponse(
            "Code: 516. DB::Exception: default: Authentication failed".into()
        )));
        assert!(!ddl(E::BadResponse(
            "Code: 62, e.displayText() = DB::Exception: Syntax error".into()
        )));
        assert!(ddl(E::BadResponse(
            "Code: 241. DB::Exception: Memory limit exceeded".into()
        )));
        assert!(ddl(E::BadResponse("502 Bad Gateway".into())));
        assert!(ddl(E::Network("connection refused".into())));
        assert!(ddl(E::TimedOut));
    }

    #[test]
    fn codes() {
        assert_eq!(server_code("Code: 27, e.displayText() = x"), Some(27));
        assert_eq!(server_code("Code: 117. DB::Exception"), Some(117));
        assert_eq!(server_code("Code: 53"), Some(53));
        assert_eq!(server_code("no code"), None);
    }
}
