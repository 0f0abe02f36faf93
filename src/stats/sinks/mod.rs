//! Statistics sinks: where batches are written, behind one dispatching enum.
//!
//! Every sink offers the same operations: `migrate` (create its objects, idempotently; upgrade
//! those of earlier releases in place), `write` (apply one batch at most once; see each sink for
//! its guarantee), `report` (read aggregated rows back for `rotator report`), `traffic_curve`
//! (requests per minute of the day, for pacing) and `ping`. Errors say whether a retry can help
//! ([`SinkError::retryable`]): a refused connection can, a rejected row cannot.

pub mod clickhouse;
pub mod mysql;
pub mod sqlite;

use std::time::Duration;

use super::Batch;
use super::report::{ReportQuery, ReportRow};
use crate::config::{SinkKind, StatsConfig};

/// How long the SQL sinks remember applied batch ids. A batch is replayed within minutes or, after
/// a long outage, days; an id older than this is deleted (about once an hour), so
/// `rotator_batches` stays small. A batch replayed after this long would count again.
pub const BATCH_ID_RETENTION_DAYS: u32 = 30;

/// How often, at most, the SQL sinks delete expired batch ids.
pub const BATCH_ID_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The statements of a schema file (`schema/*.sql`), comment lines removed and each
/// `(placeholder, value)` of `replace` filled in: database HTTP interfaces and drivers take one
/// statement per request.
pub fn statements(schema: &str, replace: &[(&str, &str)]) -> Vec<String> {
    let text: String = schema
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            replace
                .iter()
                .fold(s.to_string(), |s, (from, to)| s.replace(from, to))
        })
        .collect()
}

/// Minutes in a day: the length of a [`Sink::traffic_curve`].
pub const MINUTES_PER_DAY: usize = 1440;

/// Folds `(minute of the day, requests)` pairs into [`MINUTES_PER_DAY`] sums; a minute outside
/// the day (which the queries never return) is folded back into it.
pub fn per_minute_of_day(sums: impl IntoIterator<Item = (u64, u64)>) -> Vec<u64> {
    let mut curve = vec![0u64; MINUTES_PER_DAY];
    for (minute, requests) in sums {
        let slot = &mut curve[(minute % MINUTES_PER_DAY as u64) as usize];
        *slot = slot.saturating_add(requests);
    }
    curve
}

/// Whether it is time to prune again: true at most once per [`BATCH_ID_PRUNE_EVERY`].
pub fn prune_due(last: &std::sync::Mutex<Option<std::time::Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < BATCH_ID_PRUNE_EVERY) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

/// Why a sink operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// The sink's name.
    pub sink: &'static str,
    /// What happened.
    pub message: String,
    /// Whether trying the same operation again may succeed. Data errors (a value the database
    /// refuses) are not retryable: retrying would only fail again and block the batches behind.
    pub retryable: bool,
}

impl SinkError {
    /// A transient failure: connection refused, timeout, server busy.
    pub fn transient(sink: &'static str, message: impl Into<String>) -> SinkError {
        SinkError {
            sink,
            message: message.into(),
            retryable: true,
        }
    }

    /// A permanent failure: the data or the schema is wrong.
    pub fn permanent(sink: &'static str, message: impl Into<String>) -> SinkError {
        SinkError {
            sink,
            message: message.into(),
            retryable: false,
        }
    }
}

/// The configured sink.
pub enum Sink {
    /// Embedded SQLite.
    Sqlite(sqlite::SqliteSink),
    /// ClickHouse over HTTP.
    Clickhouse(clickhouse::ClickhouseSink),
    /// MySQL or MariaDB.
    Mysql(mysql::MysqlSink),
    /// Nothing is stored.
    None,
}

impl Sink {
    /// Builds the sink named in the config (no I/O beyond opening an SQLite file).
    pub fn open(config: &StatsConfig) -> Result<Sink, SinkError> {
        Ok(match config.sink {
            SinkKind::Sqlite => Sink::Sqlite(sqlite::SqliteSink::open(&config.sqlite)?),
            SinkKind::Clickhouse => Sink::Clickhouse(clickhouse::ClickhouseSink::new(
                &config.clickhouse,
                config.write_timeout,
            )),
            SinkKind::Mysql => Sink::Mysql(mysql::MysqlSink::new(&config.mysql)?),
            SinkKind::None => Sink::None,
        })
    }

    /// The sink's name, for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Sqlite(_) => "sqlite",
            Sink::Clickhouse(_) => "clickhouse",
            Sink::Mysql(_) => "mysql",
            Sink::None => "none",
        }
    }

    /// Creates the database objects if missing.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        match self {
            Sink::Sqlite(s) => s.migrate().await,
            Sink::Clickhouse(s) => s.migrate().await,
            Sink::Mysql(s) => s.migrate().await,
            Sink::None => Ok(()),
        }
    }

    /// Writes one batch, at most once per batch id where the sink can promise it.
    pub async fn write(&self, batch: &Batch, timeout: Duration) -> Result<(), SinkError> {
        let name = self.name();
        let write = async {
            match self {
                Sink::Sqlite(s) => s.write(batch).await,
                Sink::Clickhouse(s) => s.write(batch).await,
                Sink::Mysql(s) => s.write(batch).await,
                Sink::None => Ok(()),
            }
        };
        tokio::time::timeout(timeout, write)
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::transient(
                    name,
                    format!("write timed out after {timeout:?}"),
                ))
            })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), SinkError> {
        match self {
            Sink::Sqlite(s) => s.ping().await,
            Sink::Clickhouse(s) => s.ping().await,
            Sink::Mysql(s) => s.ping().await,
            Sink::None => Ok(()),
        }
    }

    /// Aggregated rows for `rotator report`.
    pub async fn report(&self, query: &ReportQuery) -> Result<Vec<ReportRow>, SinkError> {
        match self {
            Sink::Sqlite(s) => s.report(query).await,
            Sink::Clickhouse(s) => s.report(query).await,
            Sink::Mysql(s) => s.report(query).await,
            Sink::None => Err(SinkError::permanent(
                "none",
                "sink = \"none\" stores nothing to report",
            )),
        }
    }

    /// The day's traffic shape for pacing: [`MINUTES_PER_DAY`] values, value `m` = requests
    /// summed over every row (all campaigns, placements, countries...) whose minute falls on UTC
    /// minute-of-day `m`, for rows with `since_minute <= ts / 60 < until_minute` (minutes since
    /// the Unix epoch). `sink = "none"` has no history: all zeros.
    pub async fn traffic_curve(
        &self,
        since_minute: u32,
        until_minute: u32,
    ) -> Result<Vec<u64>, SinkError> {
        match self {
            Sink::Sqlite(s) => s.traffic_curve(since_minute, until_minute).await,
            Sink::Clickhouse(s) => s.traffic_curve(since_minute, until_minute).await,
            Sink::Mysql(s) => s.traffic_curve(since_minute, until_minute).await,
            Sink::None => Ok(vec![0; MINUTES_PER_DAY]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_fold_into_one_day() {
        let curve = per_minute_of_day([(0, 3), (1439, 2), (1440, 4), (5, u64::MAX), (5, 1)]);
        assert_eq!(curve.len(), MINUTES_PER_DAY);
        assert_eq!((curve[0], curve[1439], curve[5]), (7, 2, u64::MAX));
        assert_eq!(curve.iter().filter(|&&n| n != 0).count(), 3);
    }
}
