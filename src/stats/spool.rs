//! The on-disk spool: batches the sink has not acknowledged, kept across outages and restarts.
//!
//! Format: one file per batch in the spool folder, named `<seq>-<rows>.batch`: a 20-digit,
//! zero-padded sequence number, so name order is write order, and the batch's row count, so the
//! rows of a file that no longer parses can still be counted as lost. A file holds two lines: a
//! header `{"format":"rotator-spool","version":1}` and the batch as JSON (id and rows). Files
//! named `<seq>.batch` (earlier releases) are read too; their row count is only in the body.
//!
//! Invariants:
//! - A file is complete or absent: it is written as `<seq>.tmp`, fsynced, renamed, and the folder
//!   fsynced. A `.tmp` file left by a failed write is deleted at once, one left by a crash at the
//!   next open; their batch was still in memory (the flusher keeps a batch the spool refused, and
//!   a crash loses memory, which the README states).
//! - A file is deleted only after the sink acknowledged its batch.
//! - Batches are replayed oldest first. The flusher spools its in-memory queue oldest first and
//!   stops at the first batch the spool refuses, so the spool only ever holds batches older than
//!   those in memory. Sequence numbers only grow while the process runs.
//! - When full (`spool_max_bytes`) or unwritable (a full disk, a read-only folder),
//!   [`Spool::push`] refuses the batch and the caller keeps it. A file that cannot be parsed is
//!   renamed `<seq>-<rows>.corrupt` and left for an operator; the caller counts its rows as lost.
//! - Batches the sink rejects as bad data are moved to `rejected/` for an operator.
//! - A file that cannot be deleted or moved is forgotten for the rest of the run (so it cannot
//!   block the batches behind it) and found again at the next open.

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

/// Reads and parses one spool file.
fn read(path: &Path) -> Result<Batch, SpoolError> {
    let text = fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::InvalidData => SpoolError::Corrupt {
            path: path.to_path_buf(),
            message: "not UTF-8".into(),
        },
        _ => io(path)(source),
    })?;
    let corrupt = |message: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
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

/// One spooled batch, as the index knows it.
#[derive(Debug, Clone)]
struct Entry {
    /// File name without the extension: `<seq>-<rows>`, or `<seq>` for older files.
    stem: String,
    /// File size.
    size: u64,
    /// Row count from the name; `None` for older files.
    rows: Option<u64>,
}

/// `<seq>-<rows>` or `<seq>` → (seq, rows).
fn parse_stem(stem: &str) -> Option<(u64, Option<u64>)> {
    match stem.split_once('-') {
        Some((seq, rows)) => Some((seq.parse().ok()?, Some(rows.parse().ok()?))),
        None => Some((stem.parse().ok()?, None)),
    }
}

/// The spool folder and what is in it.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Sequence number → file.
    files: BTreeMap<u64, Entry>,
    bytes: u64,
    /// The next sequence number: above every one seen, never reused while the process runs.
    next_seq: u64,
}

impl Spool {
    /// Opens (creating) the folder, deletes half-written files and indexes the batches.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut files = BTreeMap::new();
        let mut next_seq = 1;
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".batch") {
                let Some((seq, rows)) = parse_stem(stem) else {
                    continue;
                };
                let size = entry.metadata().map_err(io(&path))?.len();
                next_seq = next_seq.max(seq.saturating_add(1));
                files.insert(
                    seq,
                    Entry {
                        stem: stem.to_string(),
                        size,
                        rows,
                    },
                );
            } else if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io(&path))?;
            } else if let Some((seq, _)) = name.strip_suffix(".corrupt").and_then(parse_stem) {
                next_seq = next_seq.max(seq.saturating_add(1));
            }
        }
        let bytes = files.values().map(|e| e.size).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            files,
            bytes,
            next_seq,
        })
    }

    /// The file of a spooled batch, with extension `ext`.
    fn path(&self, seq: u64, ext: &str) -> Option<PathBuf> {
        let entry = self.files.get(&seq)?;
        Some(self.dir.join(format!("{}.{ext}", entry.stem)))
    }

    /// Appends a batch after every batch already spooled. On error nothing is left behind.
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
        let seq = self.next_seq;
        let rows = batch.rows.len() as u64;
        let stem = format!("{seq:020}-{rows}");
        let tmp = self.dir.join(format!("{stem}.tmp"));
        let path = self.dir.join(format!("{stem}.batch"));
        if let Err(e) = write_durably(&self.dir, &tmp, &path, &body) {
            // The batch stays with the caller: leave no half-written file, and no complete one
            // either (its directory entry may not be durable, and it would be replayed twice).
            for leftover in [&tmp, &path] {
                if let Err(e) = fs::remove_file(leftover)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("statistics: cannot delete {}: {e}", leftover.display());
                }
            }
            return Err(e);
        }
        self.next_seq += 1;
        self.files.insert(
            seq,
            Entry {
                stem,
                size,
                rows: Some(rows),
            },
        );
        self.bytes += size;
        Ok(())
    }

    /// The oldest spooled batch and its sequence number. A file that does not parse is
    /// [`SpoolError::Corrupt`]; one that cannot be read is [`SpoolError::Io`].
    pub fn oldest(&mut self) -> Option<(u64, Result<Batch, SpoolError>)> {
        let (&seq, entry) = self.files.first_key_value()?;
        Some((seq, read(&self.dir.join(format!("{}.batch", entry.stem)))))
    }

    /// The row count of a spooled batch, from its file name (`None` for older files).
    pub fn rows(&self, seq: u64) -> Option<u64> {
        self.files.get(&seq).and_then(|e| e.rows)
    }

    /// Deletes an acknowledged batch. On error the file stays, but the batch leaves the replay
    /// queue until the next start.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        let Some(path) = self.path(seq, "batch") else {
            return Ok(());
        };
        self.forget(seq);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Moves a batch aside: `corrupt` renames it `<seq>-<rows>.corrupt`; otherwise it goes to
    /// `rejected/` (the sink refused its data). Either way it leaves the replay queue (on error
    /// until the next start).
    pub fn set_aside(&mut self, seq: u64, corrupt: bool) -> Result<PathBuf, SpoolError> {
        let (Some(from), Some(aside)) = (self.path(seq, "batch"), self.path(seq, "corrupt")) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no batch {seq}"),
                ),
            });
        };
        self.forget(seq);
        let to = if corrupt {
            aside
        } else {
            self.rejected_path(seq)?
        };
        fs::rename(&from, &to).map_err(io(&from))?;
        Ok(to)
    }

    /// Writes a batch that never was in the spool straight to `rejected/` (the spool's size
    /// limit does not apply: these are kept for an operator, not replayed).
    pub fn reject(&mut self, batch: &Batch) -> Result<PathBuf, SpoolError> {
        let body = encode(batch, &self.dir)?;
        let to = self.rejected_path(0)?;
        let tmp = to.with_extension("tmp");
        let written = write_durably(&self.dir.join("rejected"), &tmp, &to, &body);
        if written.is_err() {
            // Best effort: the caller reports the error; a leftover only wastes space.
            let _ = fs::remove_file(&tmp);
        }
        written.map(|()| to)
    }

    /// A fresh name in `rejected/`; the time keeps names unique across runs.
    fn rejected_path(&self, seq: u64) -> Result<PathBuf, SpoolError> {
        let dir = self.dir.join("rejected");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(dir.join(format!("{now}-{seq:020}.batch")))
    }

    fn forget(&mut self, seq: u64) {
        if let Some(entry) = self.files.remove(&seq) {
            self.bytes -= entry.size;
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
                placement: String::new(),
                creative_id: 0,
                viewables: 0,
                clicks: 0,
                spend: requests * 1_000,
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
        assert_eq!(spool.rows(seq), Some(1));
        fs::write(spool.path(seq, "batch").unwrap(), "garbage").unwrap();
        let (seq, read) = spool.oldest().unwrap();
        assert!(matches!(read, Err(SpoolError::Corrupt { .. })));
        let aside = spool.set_aside(seq, true).unwrap();
        assert!(aside.exists() && spool.is_empty());
        assert!(aside.to_string_lossy().ends_with("-1.corrupt"), "{aside:?}");
        let rejected = spool.reject(&batch("r", 1)).unwrap();
        assert!(rejected.starts_with(dir.join("rejected")) && spool.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_carry_row_counts_and_older_names_are_read() {
        let dir = temp();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        let mut two = batch("two", 1);
        two.rows.push(two.rows[0].clone());
        spool.push(&two).unwrap();
        assert!(dir.join("00000000000000000001-2.batch").exists());
        // An earlier release's name: no row count, still replayed, after the newer file's seq.
        fs::copy(
            dir.join("00000000000000000001-2.batch"),
            dir.join("00000000000000000007.batch"),
        )
        .unwrap();
        fs::write(dir.join("00000000000000000009-5.corrupt"), "x").unwrap();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.rows(1), Some(2));
        assert_eq!(spool.rows(7), None);
        // Sequence numbers continue after every file seen, quarantined ones included.
        spool.push(&batch("next", 1)).unwrap();
        assert!(dir.join("00000000000000000010-1.batch").exists());
        let (seq, b) = spool.oldest().unwrap();
        assert_eq!((seq, b.unwrap()), (1, two.clone()));
        spool.remove(1).unwrap();
        let (seq, b) = spool.oldest().unwrap();
        assert_eq!((seq, b.unwrap()), (7, two));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_refused_push_leaves_nothing_behind() {
        let dir = temp();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        // The folder disappears under the spool (as a full or broken disk would refuse writes).
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            spool.push(&batch("a", 1)),
            Err(SpoolError::Io { .. })
        ));
        assert!(spool.is_empty() && spool.bytes() == 0);
        fs::create_dir_all(&dir).unwrap();
        spool.push(&batch("b", 1)).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
