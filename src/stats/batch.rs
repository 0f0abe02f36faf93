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
    /// Ad requests.
    pub requests: u64,
    /// Requests a campaign won.
    pub impressions: u64,
    /// Clicks (filled by click tracking; 0 for now).
    pub clicks: u64,
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
