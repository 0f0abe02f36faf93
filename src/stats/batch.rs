//! A batch: the rows of one flush, with the id that makes writing it idempotent.
//!
//! Rows are plain data with strings resolved (no interned symbols), so a batch can be spooled to
//! disk, read back by another process after a restart and written to any sink.

use serde::{Deserialize, Serialize};

/// One statistics row: a key and its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Start of the minute, seconds since the Unix epoch (UTC).
    pub ts: u32,
    /// ISO country code, `""` when unknown.
    pub country: String,
    /// OS family.
    pub os: String,
    /// Browser family.
    pub browser: String,
    /// `desktop`, `mobile`, `tablet`, `tv`, `bot` or `other`.
    pub device: String,
    /// The winning campaign, 0 when nothing won.
    pub campaign_id: u32,
    /// Placement id, `""` for `GET /ad`. Defaulted: batches spooled by 0.1.0 lack it.
    #[serde(default)]
    pub placement: String,
    /// The winning creative, 0 for none and for `GET /ad`. Defaulted like `placement`.
    #[serde(default)]
    pub creative_id: u32,
    /// Ad requests (`GET /ad`) or slots asked (decisions).
    pub requests: u64,
    /// Impressions: `GET /ad` requests a campaign won, plus counted impression beacons.
    pub impressions: u64,
    /// Counted viewable beacons. Defaulted like `placement`.
    #[serde(default)]
    pub viewables: u64,
    /// Counted clicks.
    pub clicks: u64,
    /// Spend, micro-units of the currency (1.0 = 1,000,000). Defaulted: batches spooled before
    /// issue 11 lack it.
    #[serde(default)]
    pub spend: u64,
}

impl Row {
    /// The row's key, in the order the sinks' keys list it.
    pub fn key(&self) -> (u32, &str, &str, &str, &str, u32, &str, u32) {
        (
            self.ts,
            &self.country,
            &self.os,
            &self.browser,
            &self.device,
            self.campaign_id,
            &self.placement,
            self.creative_id,
        )
    }
}

/// The rows of one flush.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique and stable across retries, spooling and restarts: the sinks use it to apply a batch
    /// at most once.
    pub id: String,
    /// The rows; each key appears once.
    pub rows: Vec<Row>,
}

impl Batch {
    /// Sum of `requests` over the rows.
    pub fn requests(&self) -> u64 {
        self.rows.iter().map(|r| r.requests).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch as release 0.1.0 spooled it (no placement, creative, viewables or spend) still
    /// loads, with the defaults `GET /ad` rows get.
    #[test]
    fn batches_of_release_0_1_0_load() {
        let old = r#"{"id":"b1","rows":[{"ts":1700000040,"country":"DE","os":"Linux","browser":"Firefox","device":"desktop","campaign_id":3,"requests":5,"impressions":4,"clicks":0}]}"#;
        let batch: Batch = serde_json::from_str(old).unwrap();
        assert_eq!(
            batch.rows,
            [Row {
                ts: 1_700_000_040,
                country: "DE".into(),
                os: "Linux".into(),
                browser: "Firefox".into(),
                device: "desktop".into(),
                campaign_id: 3,
                placement: String::new(),
                creative_id: 0,
                requests: 5,
                impressions: 4,
                viewables: 0,
                clicks: 0,
                spend: 0,
            }]
        );
    }
}
