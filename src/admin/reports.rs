//! Reports for the API and the console: the same query, groupings and figures as
//! `rotator report` (the sink's `report` query, rendered by [`crate::stats::report::render`] as
//! JSON), typed here so the OpenAPI document describes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::stats::report::{self, Format, ReportQuery};
use crate::stats::sinks::{Sink, SinkError};

/// The longest a report query may take before the API answers `503`.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A report: the `rotator report --format json` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportDoc {
    /// Start, Unix seconds (inclusive).
    pub from: u32,
    /// End, Unix seconds (exclusive).
    pub to: u32,
    /// One line per group, most requests first.
    pub rows: Vec<ReportLine>,
    /// All rows summed.
    pub total: ReportLine,
}

/// One line of a report: its group values (those asked for with `by`) and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportLine {
    /// Campaign id (`by=campaign`; 0 = nothing won).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// Country code (`by=country`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Browser family (`by=browser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// OS family (`by=os`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Device type (`by=device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Placement id (`by=placement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Creative id (`by=creative`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creative: Option<String>,
    /// Requests.
    pub requests: u64,
    /// Impressions.
    pub impressions: u64,
    /// Viewable impressions.
    pub viewables: u64,
    /// Clicks.
    pub clicks: u64,
    /// Spend in currency units, exact decimal (6 places).
    pub spend: String,
    /// Spend in micro-units.
    pub spend_micros: u64,
    /// impressions / requests.
    pub fill_rate: f64,
    /// clicks / impressions.
    pub ctr: f64,
    /// viewables / impressions.
    pub viewable_rate: f64,
}

/// Unix seconds now.
pub fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32
}

/// A time as `rotator report` takes it: Unix seconds or RFC 3339.
pub fn parse_time(text: &str) -> Result<u32, String> {
    if let Ok(secs) = text.parse::<u32>() {
        return Ok(secs);
    }
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not a time like 2026-11-24T10:00:00Z: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as u32)
}

/// The query of `by` (comma-separated groupings), and a period: `from`/`to` (default: the
/// last `since`, 1h unless `from` is given, to the next minute), as `rotator report` reads them.
pub fn query(
    by: Option<&str>,
    since: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    now: u32,
) -> Result<ReportQuery, String> {
    let to = to.map(parse_time).transpose()?.unwrap_or(now + 60);
    let from = match (since, from) {
        (Some(_), Some(_)) => return Err("give since or from, not both".into()),
        (_, Some(f)) => parse_time(f)?,
        (s, None) => {
            let span =
                humantime::parse_duration(s.unwrap_or("1h")).map_err(|e| format!("since: {e}"))?;
            now.saturating_sub(span.as_secs() as u32)
        }
    };
    if from >= to {
        return Err("the range is empty: from must be before to".into());
    }
    let by = by
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| {
            report::column(g).ok_or_else(|| {
                format!("by {g:?}: choose from {}", report::GROUP_COLUMNS.join(", "))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReportQuery { from, to, by })
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The sink failed or has nothing (`sink = "none"`).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The sink did not answer in time.
    #[error("the statistics sink did not answer within {0:?}")]
    Timeout(Duration),
    /// The rendered report did not fit its type (a bug).
    #[error("report: {0}")]
    Shape(String),
}

/// Runs `query` on `sink`: the rows `rotator report` would print, as a [`ReportDoc`].
pub async fn run(sink: &Sink, query: &ReportQuery) -> Result<ReportDoc, ReportError> {
    let rows = tokio::time::timeout(REPORT_TIMEOUT, sink.report(query))
        .await
        .map_err(|_| ReportError::Timeout(REPORT_TIMEOUT))??;
    let json = report::render(query, rows, Format::Json);
    serde_json::from_str(&json).map_err(|e| ReportError::Shape(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::report::ReportRow;

    #[test]
    fn queries_and_the_rendered_shape() {
        let q = query(
            Some("campaign, country"),
            None,
            Some("1000"),
            Some("2000"),
            5000,
        )
        .unwrap();
        assert_eq!(
            (q.from, q.to, q.by.clone()),
            (1000, 2000, vec!["campaign_id", "country"])
        );
        let q = query(None, Some("2h"), None, None, 10_000).unwrap();
        assert_eq!((q.from, q.to), (10_000 - 7200, 10_060));
        assert!(
            query(Some("planet"), None, None, None, 10_000)
                .unwrap_err()
                .contains("choose from")
        );
        assert!(query(None, None, Some("2000"), Some("1000"), 10_000).is_err());
        assert!(query(None, None, Some("yesterday"), None, 10_000).is_err());
        let q = query(
            Some("campaign"),
            None,
            Some("2026-11-24T00:00:00Z"),
            None,
            1_800_000_000,
        )
        .unwrap();
        assert_eq!(q.from, 1_795_478_400);
        let rows = vec![ReportRow {
            group: vec!["7".into()],
            requests: 10,
            impressions: 5,
            viewables: 2,
            clicks: 1,
            spend: 1_500_000,
        }];
        let doc: ReportDoc = serde_json::from_str(&report::render(&q, rows, Format::Json)).unwrap();
        assert_eq!(doc.rows[0].campaign.as_deref(), Some("7"));
        assert_eq!(
            (doc.total.requests, doc.total.spend.as_str()),
            (10, "1.500000")
        );
        assert_eq!(doc.rows[0].ctr, 0.2);
    }
}
