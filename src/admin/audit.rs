//! The audit log: one JSON object per line for every write through the admin listener.
//!
//! Invariants: a line is appended only after the campaigns file was written (so every line is a
//! change that happened), while the writer's lock is still held (so lines are in the file's
//! order); each line is one `write` to a file opened with `O_APPEND` (lines of concurrent
//! processes do not interleave) and is synced before the answer goes out. The file is created
//! with mode 0600. It is never rotated by rotator: rename it away and the next write creates a
//! new one (logrotate's `create` or `copytruncate` both work).
//!
//! Fields: `time` (RFC 3339, UTC), `token` (the token's name), `role`, `method`, `path`,
//! `campaign` (id) or `placement` (id), `before` and `after` (the entry as the API shows it;
//! `null` when created or deleted).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value as Json;

use super::files::now_rfc3339;
use super::tokens::Principal;

/// What a write touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A campaign (or one of its creatives), by id.
    Campaign(u32),
    /// A placement, by id.
    Placement(String),
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The token's name.
    pub token: &'a str,
    /// The token's role.
    pub role: &'static str,
    /// HTTP method (or the console's action).
    pub method: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The campaign written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<u32>,
    /// The placement written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<&'a str>,
    /// The entry before.
    pub before: &'a Json,
    /// The entry after.
    pub after: &'a Json,
}

impl<'a> Record<'a> {
    /// A record of a write by `who` now.
    pub fn new(
        who: &'a Principal,
        method: &'a str,
        path: &'a str,
        target: &'a Target,
        before: &'a Json,
        after: &'a Json,
    ) -> Record<'a> {
        let (campaign, placement) = match target {
            Target::Campaign(id) => (Some(*id), None),
            Target::Placement(id) => (None, Some(id.as_str())),
        };
        Record {
            time: now_rfc3339(),
            token: &who.name,
            role: who.role.as_str(),
            method,
            path,
            campaign,
            placement,
            before,
            after,
        }
    }
}

/// The audit log file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log at `path` (created, with its folder, at the first write).
    pub fn new(path: PathBuf) -> AuditLog {
        AuditLog { path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it.
    pub fn append(&self, record: &Record<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tokens::Role;

    #[test]
    fn one_json_object_per_line() {
        let dir = std::env::temp_dir().join(format!("rotator-audit-{}", fastrand::u64(..)));
        let log = AuditLog::new(dir.join("logs/audit.log"));
        let who = Principal {
            name: "alice".into(),
            role: Role::Admin,
        };
        let (before, after) = (
            serde_json::json!({"id": 7, "active": true}),
            serde_json::json!({"id": 7, "active": false}),
        );
        let target = Target::Campaign(7);
        log.append(&Record::new(
            &who,
            "POST",
            "/api/v1/campaigns/7/pause",
            &target,
            &before,
            &after,
        ))
        .unwrap();
        let gone = Json::Null;
        let target = Target::Placement("top".into());
        log.append(&Record::new(
            &who,
            "DELETE",
            "/api/v1/placements/top",
            &target,
            &after,
            &gone,
        ))
        .unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<Json> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["token"], "alice");
        assert_eq!(lines[0]["campaign"], 7);
        assert_eq!(lines[0]["after"]["active"], false);
        assert_eq!(lines[1]["placement"], "top");
        assert!(lines[1]["after"].is_null() && lines[1].get("campaign").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
