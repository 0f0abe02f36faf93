//! Upgrade of a table of release 0.1.0 (a table without `placement`, found in `system.columns`): the
//! `ORDER BY` of a MergeTree cannot take new columns on old servers, so `migrate` creates the new
//! table as `<table>_upgrade`, copies every old row into it (`INSERT ... SELECT`, placement `''`,
//! creative 0, viewables 0), checks that the sums match, swaps the two with `RENAME TABLE`
//! (the old one becomes `<table>_0_1_0`) and drops the old one once its sums are still those
//! copied. Restartable: a crash before the swap leaves the old table in place (the partial copy is
//! dropped and redone); a crash between the two renames leaves no `<table>`, which the next
//! `migrate` completes; a backup whose sums cannot be checked any more is kept and named in a
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

    /// Upgrades a table of release 0.1.0, or finishes an interrupted upgrade (module doc).
    pub(super) async fn upgrade(&self, version: ServerVersion) -> Result<(), SinkError> {
        let db = quote(&self.database);
        let staged = format!("{}_upgrade", self.table);
        let backup = format!("{}_0_1_0", self.table);
        let (q_staged, q_backup) = (
            format!("{db}.{}", quote(&staged)),
            format!("{db}.{}", quote(&backup)),
        );
        let is_new = |columns: &[String]| columns.iter().any(|c| c == "placement");
        let current = self.columns(&self.table).await?;
        if is_new(&current) {
            if !self.columns(&backup).await?.is_empty() {
                tracing::warn!(
                    backup = %q_backup,
                    "clickhouse: a table left by an interrupted upgrade, kept because its rows \
                     could not be checked against {}; compare and drop it", self.qualified
                );
            }
            return Ok(());
        }
        if current.is_empty() {
            // Stopped between the two renames: the complete copy waits under its staging name.
            if is_new(&self.columns(&staged).await?) && !self.columns(&backup).await?.is_empty() {
                let copied = self.sums(&staged).await?;
                self.ddl(&format!("RENAME TABLE {q_staged} TO {}", self.qualified))
                    .await?;
                self.drop_backup_if(&backup, &copied).await?;
            }
            return Ok(());
        }
        self.ddl(&format!("DROP TABLE IF EXISTS {q_staged}"))
            .await?;
        let create = statements(SCHEMA, &db, &quote(&staged), version.dimension())
            .into_iter()
            .nth(1)
            .unwrap_or_default();
        self.ddl(&self.with_settings(version, create)).await?;
        let copy = format!(
            "INSERT INTO {q_staged} (ts, country, os, browser, device, campaign_id, placement, \
             creative_id, requests, impressions, viewables, clicks) \
             SELECT ts, country, os, browser, device, campaign_id, '', 0, requests, impressions, 0, clicks \
             FROM {}",
            self.qualified
        );
        self.run_within(
            COPY_TIMEOUT,
            "copying the rows of release 0.1.0",
            classify_ddl,
            self.client.query_raw(&copy).execute(),
        )
        .await?;
        let (old, copied) = (self.sums(&self.table).await?, self.sums(&staged).await?);
        if old != copied {
            return Err(SinkError::transient(
                NAME,
                format!(
                    "upgrading {}: the copy sums {copied:?}, the table {old:?} (written to during \
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
        tracing::info!(table = %self.qualified, "clickhouse: statistics table upgraded to placements and creatives");
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
