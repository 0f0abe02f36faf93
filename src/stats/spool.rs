//! The on-disk spool: batches the sink has not acknowledged, kept across outages and restarts.
//!
//! Format: one file per batch in the spool folder, named `<seq>.batch` with a 20-digit,
//! zero-padded sequence number, so name order is write order. A file holds two lines: a header
//! `{"format":"rotator-spool","version":1}` and the batch as JSON (id and rows).
//!
//! Invariants:
//! - A file is complete or absent: it is written as `<seq>.tmp`, fsynced, renamed, and the folder
//!   fsynced. Leftover `.tmp` files (a crash mid-write) are deleted at open; their batch was
//!   still in memory and is counted as lost by that crash, which the README states.
//! - A file is deleted only after the sink acknowledged its batch.
//! - Batches are replayed oldest first. The flusher spools its whole in-memory queue at once, so
//!   the spool only ever holds batches older than those in memory.
//! - When full (`spool_max_bytes`), [`Spool::push`] refuses the batch; the caller counts and logs
//!   its rows as lost. A file that cannot be parsed is renamed `<seq>.corrupt` and left for an
//!   operator.
//! - Batches the sink rejects as bad data are moved to `rejected/` for an operator.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::Batch;

const HEADER: &str = r#"{"format":"rotator-spool","version":1}"#;

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The folder or a file cannot be read or written.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Adding the batch would pass `spool_max_bytes`.
    #[error("spool {path} is full ({bytes} of {max} bytes)")]
    Full {
        /// The spool folder.
        path: PathBuf,
        /// Bytes in use.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A file does not hold a batch.
    #[error("spool file {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A batch as file contents: the header line and the batch as JSON.
fn encode(batch: &Batch, dir: &Path) -> Result<String, SpoolError> {
    let json = serde_json::to_string(batch).map_err(|e| SpoolError::Corrupt {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(format!("{HEADER}\n{json}\n"))
}

/// Writes `body` so that `path` is complete or absent: to `tmp`, fsync, rename, fsync `dir`.
fn write_durably(dir: &Path, tmp: &Path, path: &Path, body: &str) -> Result<(), SpoolError> {
    let mut file = File::create(tmp).map_err(io(tmp))?;
    file.write_all(body.as_bytes()).map_err(io(tmp))?;
    file.sync_all().map_err(io(tmp))?;
    fs::rename(tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The spool folder and what is in it.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Sequence number → file size.
    files: BTreeMap<u64, u64>,
    bytes: u64,
}

impl Spool {
    /// Opens (creating) the folder, deletes half-written files and indexes the batches.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name
                .strip_suffix(".batch")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let len = entry.metadata().map_err(io(&path))?.len();
                files.insert(seq, len);
            } else if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        let bytes = files.values().sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            files,
            bytes,
        })
    }

    fn path(&self, seq: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{seq:020}.{ext}"))
    }

    /// Appends a batch after every batch already spooled.
    pub fn push(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        let body = encode(batch, &self.dir)?;
        let size = body.len() as u64;
        if self.bytes + size > self.max_bytes {
            return Err(SpoolError::Full {
                path: self.dir.clone(),
                bytes: self.bytes,
                max: self.max_bytes,
            });
        }
        let seq = self.files.last_key_value().map_or(1, |(s, _)| s + 1);
        write_durably(
            &self.dir,
            &self.path(seq, "tmp"),
            &self.path(seq, "batch"),
            &body,
        )?;
        self.files.insert(seq, size);
        self.bytes += size;
        Ok(())
    }

    /// The oldest spooled batch and its sequence number.
    pub fn oldest(&mut self) -> Option<(u64, Result<Batch, SpoolError>)> {
        let (&seq, _) = self.files.first_key_value()?;
        Some((seq, self.read(seq)))
    }

    fn read(&self, seq: u64) -> Result<Batch, SpoolError> {
        let path = self.path(seq, "batch");
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let corrupt = |message: String| SpoolError::Corrupt {
            path: path.clone(),
            message,
        };
        let (header, body) = text
            .split_once('\n')
            .ok_or_else(|| corrupt("no header line".into()))?;
        if header != HEADER {
            return Err(corrupt(format!("unknown header {header:?}")));
        }
        serde_json::from_str(body.trim_end()).map_err(|e| corrupt(e.to_string()))
    }

    /// Deletes an acknowledged batch.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        let path = self.path(seq, "batch");
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        self.forget(seq);
        Ok(())
    }

    /// Moves a batch aside: `corrupt` renames it `<seq>.corrupt`; otherwise it goes to
    /// `rejected/` (the sink refused its data). Either way it leaves the replay queue.
    pub fn set_aside(&mut self, seq: u64, corrupt: bool) -> Result<PathBuf, SpoolError> {
        let from = self.path(seq, "batch");
        let to = if corrupt {
            self.path(seq, "corrupt")
        } else {
            self.rejected_path(seq)?
        };
        fs::rename(&from, &to).map_err(io(&from))?;
        self.forget(seq);
        Ok(to)
    }

    /// Writes a batch that never was in the spool straight to `rejected/` (the spool's size
    /// limit does not apply: these are kept for an operator, not replayed).
    pub fn reject(&mut self, batch: &Batch) -> Result<PathBuf, SpoolError> {
        let body = encode(batch, &self.dir)?;
        let to = self.rejected_path(0)?;
        write_durably(
            &self.dir.join("rejected"),
            &to.with_extension("tmp"),
            &to,
            &body,
        )?;
        Ok(to)
    }

    /// A fresh name in `rejected/`. Sequence numbers restart when the spool empties; the time
    /// keeps names unique.
    fn rejected_path(&self, seq: u64) -> Result<PathBuf, SpoolError> {
        let dir = self.dir.join("rejected");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(dir.join(format!("{now}-{seq:020}.batch")))
    }

    fn forget(&mut self, seq: u64) {
        if let Some(size) = self.files.remove(&seq) {
            self.bytes -= size;
        }
    }

    /// Number of batches waiting.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Bytes used by waiting batches.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Row;

    fn batch(id: &str, requests: u64) -> Batch {
        Batch {
            id: id.into(),
            rows: vec![Row {
                ts: 60,
                country: String::new(),
                os: "iOS".into(),
                browser: "Mobile Safari".into(),
                device: "mobile".into(),
                campaign_id: 0,
                requests,
                impressions: 0,
                clicks: 0,
            }],
        }
    }

    fn temp() -> PathBuf {
        std::env::temp_dir().join(format!("rotator-spool-{}", fastrand::u64(..)))
    }

    #[test]
    fn order_survives_reopen_and_ack_deletes() {
        let dir = temp();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..3 {
            spool.push(&batch(&format!("b{i}"), i)).unwrap();
        }
        fs::write(dir.join("00000000000000000009.tmp"), "half").unwrap();
        drop(spool);
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert!(!dir.join("00000000000000000009.tmp").exists());
        assert_eq!(spool.len(), 3);
        let mut seen = Vec::new();
        while let Some((seq, b)) = spool.oldest() {
            seen.push(b.unwrap().id);
            spool.remove(seq).unwrap();
        }
        assert_eq!(seen, ["b0", "b1", "b2"]);
        assert_eq!(spool.bytes(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn full_spool_refuses_and_corrupt_files_are_set_aside() {
        let dir = temp();
        let mut spool = Spool::open(&dir, 300).unwrap();
        spool.push(&batch("a", 1)).unwrap();
        assert!(matches!(
            spool.push(&batch("b", 1)),
            Err(SpoolError::Full { .. })
        ));
        let (seq, _) = spool.oldest().unwrap();
        fs::write(spool.path(seq, "batch"), "garbage").unwrap();
        let (seq, read) = spool.oldest().unwrap();
        assert!(matches!(read, Err(SpoolError::Corrupt { .. })));
        let aside = spool.set_aside(seq, true).unwrap();
        assert!(aside.exists() && spool.is_empty());
        let rejected = spool.reject(&batch("r", 1)).unwrap();
        assert!(rejected.starts_with(dir.join("rejected")) && spool.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
