//! Upgrade of a table of an earlier schema, told apart by its columns in `system.columns`:
//! release 0.1.0 (no `placement`) or issue 10 (no `spend`). The `ORDER BY` and the summed columns
//! of a (Summing)MergeTree cannot be changed on old servers, so `migrate` creates the current table
//! as `<table>_upgrade`, copies every old row into it (`INSERT ... SELECT`; from 0.1.0 placement
//! `''`, creative 0, viewables 0; spend 0), checks that the sums match, swaps the two with `RENAME
//! TABLE` (the old one becomes `<table>_0_1_0` or `<table>_before_spend`) and drops the old one once
//! its sums are still those copied. Restartable: a crash before the swap leaves the old table in
//! place (the partial copy is dropped and redone); a crash between the two renames leaves no
//! `<table>`, which the next `migrate` completes (and, when the completed copy is itself of issue
//! 10, upgrades further); a backup whose sums cannot be checked any more is kept and named in a
//! warning. Stop other writers of the table while `rotator migrate` upgrades it: rows they write
//! to the old table during the copy are not moved (the backup is then kept, with a warning).

use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;

use super::{
    ClickhouseSink, NAME, SCHEMA, ServerVersion, classify_ddl, literal, quote, statements,
};
use crate::stats::sinks::SinkError;

/// How long the upgrade's `INSERT ... SELECT` of the old rows may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The columns of the current table, in the order of the copy's `SELECT` lists.
const COLUMNS: &str = "ts, country, os, browser, device, campaign_id, placement, creative_id, \
                       requests, impressions, viewables, clicks, spend";

/// The suffixes of the old table kept during a swap, one per schema upgraded from.
const BACKUP_SUFFIXES: [&str; 2] = ["_0_1_0", "_before_spend"];

/// Which schema a table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No such table.
    Missing,
    /// Release 0.1.0: no placement, creative, viewables, spend.
    Release010,
    /// Issue 10: no spend.
    Issue10,
    /// The schema of `schema/clickhouse.sql`.
    Current,
}

impl Shape {
    fn of(columns: &[String]) -> Shape {
        let has = |name: &str| columns.iter().any(|c| c == name);
        if columns.is_empty() {
            Shape::Missing
        } else if has("spend") {
            Shape::Current
        } else if has("placement") {
            Shape::Issue10
        } else {
            Shape::Release010
        }
    }

    /// The `SELECT` list that copies a table of this shape into the current one.
    fn copy_select(self) -> &'static str {
        match self {
            Shape::Release010 => {
                "ts, country, os, browser, device, campaign_id, '', 0, requests, impressions, 0, clicks, 0"
            }
            _ => {
                "ts, country, os, browser, device, campaign_id, placement, creative_id, requests, \
                 impressions, viewables, clicks, 0"
            }
        }
    }

    /// The suffix the old table gets during the swap.
    fn backup_suffix(self) -> &'static str {
        match self {
            Shape::Release010 => BACKUP_SUFFIXES[0],
            _ => BACKUP_SUFFIXES[1],
        }
    }
}

/// Sums compared before and after the upgrade's copy.
#[derive(Row, Deserialize, Debug, PartialEq, Eq)]
struct Sums {
    requests: u64,
    impressions: u64,
    clicks: u64,
}

impl ClickhouseSink {
    /// The column names of `table` in the configured database (none when it does not exist).
    async fn columns(&self, table: &str) -> Result<Vec<String>, SinkError> {
        let sql = format!(
            "SELECT name FROM system.columns WHERE database = {} AND table = {}",
            literal(&self.database),
            literal(table)
        );
        self.run(
            "reading system.columns",
            classify_ddl,
            self.client.query_raw(&sql).fetch_all(),
        )
        .await
    }

    /// The sums of `table` (a name in the configured database).
    async fn sums(&self, table: &str) -> Result<Sums, SinkError> {
        let sql = format!(
            "SELECT sum(requests), sum(impressions), sum(clicks) FROM {}.{}",
            quote(&self.database),
            quote(table)
        );
        self.run_within(
            COPY_TIMEOUT,
            &format!("summing {table}"),
            classify_ddl,
            self.client.query_raw(&sql).fetch_one(),
        )
        .await
    }

    /// The backups of interrupted upgrades that exist.
    async fn backups(&self) -> Result<Vec<String>, SinkError> {
        let mut found = Vec::new();
        for suffix in BACKUP_SUFFIXES {
            let backup = format!("{}{suffix}", self.table);
            if !self.columns(&backup).await?.is_empty() {
                found.push(backup);
            }
        }
        Ok(found)
    }

    /// Upgrades a table of an earlier schema, or finishes an interrupted upgrade (module doc).
    pub(super) async fn upgrade(&self, version: ServerVersion) -> Result<(), SinkError> {
        let db = quote(&self.database);
        let staged = format!("{}_upgrade", self.table);
        let q_staged = format!("{db}.{}", quote(&staged));
        loop {
            let current = Shape::of(&self.columns(&self.table).await?);
            match current {
                Shape::Current => {
                    for backup in self.backups().await? {
                        tracing::warn!(
                            backup = %format!("{db}.{}", quote(&backup)),
                            "clickhouse: a table left by an interrupted upgrade, kept because its \
                             rows could not be checked against {}; compare and drop it",
                            self.qualified
                        );
                    }
                    return Ok(());
                }
                Shape::Missing => {
                    // Stopped between the two renames: the complete copy waits under its staging
                    // name. One of issue 10 (left by the previous release) is upgraded further.
                    let copy = Shape::of(&self.columns(&staged).await?);
                    let backups = self.backups().await?;
                    let (Shape::Issue10 | Shape::Current, Some(backup)) = (copy, backups.first())
                    else {
                        return Ok(());
                    };
                    let copied = self.sums(&staged).await?;
                    self.ddl(&format!("RENAME TABLE {q_staged} TO {}", self.qualified))
                        .await?;
                    self.drop_backup_if(backup, &copied).await?;
                    if copy == Shape::Current {
                        return Ok(());
                    }
                }
                old => return self.copy_and_swap(version, old).await,
            }
        }
    }

    /// Copies a table of shape `old` into a staged current one and swaps the two (module doc).
    async fn copy_and_swap(&self, version: ServerVersion, old: Shape) -> Result<(), SinkError> {
        let db = quote(&self.database);
        let staged = format!("{}_upgrade", self.table);
        let backup = format!("{}{}", self.table, old.backup_suffix());
        let (q_staged, q_backup) = (
            format!("{db}.{}", quote(&staged)),
            format!("{db}.{}", quote(&backup)),
        );
        self.ddl(&format!("DROP TABLE IF EXISTS {q_staged}"))
            .await?;
        let create = statements(SCHEMA, &db, &quote(&staged), version.dimension())
            .into_iter()
            .nth(1)
            .unwrap_or_default();
        self.ddl(&self.with_settings(version, create)).await?;
        let copy = format!(
            "INSERT INTO {q_staged} ({COLUMNS}) SELECT {} FROM {}",
            old.copy_select(),
            self.qualified
        );
        self.run_within(
            COPY_TIMEOUT,
            &format!("copying the rows of the {old:?} table"),
            classify_ddl,
            self.client.query_raw(&copy).execute(),
        )
        .await?;
        let (before, copied) = (self.sums(&self.table).await?, self.sums(&staged).await?);
        if before != copied {
            return Err(SinkError::transient(
                NAME,
                format!(
                    "upgrading {}: the copy sums {copied:?}, the table {before:?} (written to during \
                     the copy?); stop its writers and run rotator migrate again",
                    self.qualified
                ),
            ));
        }
        self.ddl(&format!(
            "RENAME TABLE {} TO {q_backup}, {q_staged} TO {}",
            self.qualified, self.qualified
        ))
        .await?;
        self.drop_backup_if(&backup, &copied).await?;
        tracing::info!(table = %self.qualified, from = ?old, "clickhouse: statistics table upgraded");
        Ok(())
    }

    /// Drops the old table once its sums are still `copied`; otherwise keeps it and says so.
    async fn drop_backup_if(&self, backup: &str, copied: &Sums) -> Result<(), SinkError> {
        let q_backup = format!("{}.{}", quote(&self.database), quote(backup));
        let now = self.sums(backup).await?;
        if now == *copied {
            self.ddl(&format!("DROP TABLE {q_backup}")).await
        } else {
            tracing::warn!(
                backup = %q_backup,
                "clickhouse: rows were written to the old table during the upgrade (sums {now:?}, \
                 copied {copied:?}); it is kept: move the difference into {} and drop it", self.qualified
            );
            Ok(())
        }
    }
}
