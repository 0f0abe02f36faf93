//! Which (decision id, event kind) were already counted, so that each is counted once.
//!
//! Invariants:
//! - An entry is in memory from the moment it is counted until its expiry (the token's, or
//!   longer for impressions that clicks still ask about); after that, its token no longer counts,
//!   so forgetting it cannot double-count.
//! - Memory is bounded by `max_entries` (24 to 48 bytes each, about 35 at the default: a
//!   20-byte slot and a control byte in a hash table kept between 7/8 and 7/16 full; each shard
//!   holds `max_entries / 64`). A full shard first drops its expired entries; if still full, a
//!   new event is NOT counted ([`Mark::Full`]; the tracker counts it as `seen_full` and warns):
//!   refusing to count is preferred to counting twice.
//! - Every entry also goes to an append-only journal, written by a background thread every
//!   [`WRITE_INTERVAL`] and at shutdown, then synced. At start the journal is read (entries
//!   already expired dropped, a torn last record after a crash ignored) and rewritten compacted.
//!   A `kill -9` (or power loss) loses the entries of at most the last interval: those events
//!   may be counted once more after the restart. SIGTERM loses nothing.
//!
//! Journal format: the 8 bytes `RTSEEN01`, then 17-byte records: decision id (12), kind (1),
//! expiry (u32 little-endian, Unix seconds). A later record for the same entry wins.
//!
//! Sharded by decision id (random bytes, so shards fill evenly) so parallel requests rarely
//! meet on one lock.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::TrackingError;
use super::token::EventKind;
use crate::atomic_file;

/// How often new entries are appended to the journal (and so what a `kill -9` may lose).
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Shards: enough that 2 × cores request threads rarely meet on one.
const SHARDS: usize = 64;
/// The journal's first bytes.
const MAGIC: &[u8; 8] = b"RTSEEN01";
/// Bytes of one journal record.
const RECORD: usize = 17;
/// Journal size above which it is rewritten with only the live entries (besides at start), as a
/// multiple of the live entries' size.
const COMPACT_FACTOR: u64 = 4;
/// Every how many writer rounds (about seconds) expired entries are dropped from memory.
const PURGE_ROUNDS: u64 = 60;
/// How often a full shard may scan itself for expired entries.
const PURGE_EVERY_SECS: u32 = 1;

/// One remembered event: the decision id and the kind.
type Entry = ([u8; 12], u8);

/// What [`Seen::first`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Not seen before: now remembered; count it.
    First,
    /// Already counted.
    Duplicate,
    /// Not seen, but memory is full: not remembered, do not count.
    Full,
}

struct ShardState {
    /// Entry → expiry, Unix seconds.
    live: HashMap<Entry, u32, foldhash::fast::RandomState>,
    /// Entries not yet written to the journal.
    unwritten: Vec<[u8; RECORD]>,
    /// When this shard last scanned for expired entries.
    purged_at: u32,
}

/// A shard, on its own cache lines.
#[repr(align(128))]
struct Shard(Mutex<ShardState>);

/// The counted-once memory.
pub struct Seen {
    shards: Box<[Shard]>,
    per_shard: usize,
}

/// The journal writer thread; stopping it (or dropping it) writes what is left.
pub type SeenWriter = crate::shutdown::WriterThread;

fn record(entry: Entry, expires: u32) -> [u8; RECORD] {
    let mut r = [0; RECORD];
    r[..12].copy_from_slice(&entry.0);
    r[12] = entry.1;
    r[13..].copy_from_slice(&expires.to_le_bytes());
    r
}

impl Seen {
    /// An empty memory of at most `max_entries` (at least one per shard), not journalled.
    pub fn new(max_entries: u64) -> Seen {
        let per_shard = usize::try_from(max_entries.div_ceil(SHARDS as u64))
            .unwrap_or(usize::MAX)
            .max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Shard(Mutex::new(ShardState {
                    live: HashMap::default(),
                    unwritten: Vec::new(),
                    purged_at: 0,
                }))
            })
            .collect();
        Seen { shards, per_shard }
    }

    /// Loads `path` (if present), drops entries expired at `now`, rewrites it compacted and
    /// starts the thread that appends new entries every [`WRITE_INTERVAL`].
    pub fn open(
        path: &Path,
        max_entries: u64,
        now: u32,
    ) -> Result<(Arc<Seen>, SeenWriter), TrackingError> {
        let seen = Arc::new(Seen::new(max_entries));
        let io = |source| TrackingError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let loaded = seen.load(path, now)?;
        let kept = seen.compact(path).map_err(io)?;
        if loaded > 0 || kept > 0 {
            tracing::info!(
                "{}: {kept} counted tracking events remembered ({} expired dropped)",
                path.display(),
                loaded.saturating_sub(kept)
            );
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io)?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tracking-seen".into())
            .spawn({
                let seen = seen.clone();
                let path = path.to_path_buf();
                move || seen.write_loop(file, &path, &stopped)
            })
            .map_err(io)?;
        Ok((seen, SeenWriter::new(stop, thread)))
    }

    fn shard(&self, id: &[u8; 12]) -> &Mutex<ShardState> {
        let n = u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]);
        &self.shards[(n % SHARDS as u64) as usize].0
    }

    /// Remembers (`id`, `kind`) until `expires` if it is new. `now` is the current Unix time.
    pub fn first(&self, id: &[u8; 12], kind: EventKind, expires: u32, now: u32) -> Mark {
        let entry = (*id, kind.index());
        let mut shard = self.shard(id).lock().unwrap_or_else(|e| e.into_inner());
        match shard.live.get(&entry) {
            Some(&until) if until > now => return Mark::Duplicate,
            _ => {}
        }
        if shard.live.len() >= self.per_shard && !shard.live.contains_key(&entry) {
            if now >= shard.purged_at.saturating_add(PURGE_EVERY_SECS) {
                shard.purged_at = now;
                shard.live.retain(|_, until| *until > now);
            }
            if shard.live.len() >= self.per_shard {
                return Mark::Full;
            }
        }
        shard.live.insert(entry, expires);
        shard.unwritten.push(record(entry, expires));
        Mark::First
    }

    /// Whether (`id`, `kind`) was counted (and is remembered).
    pub fn has(&self, id: &[u8; 12], kind: EventKind) -> bool {
        let shard = self.shard(id).lock().unwrap_or_else(|e| e.into_inner());
        shard.live.contains_key(&(*id, kind.index()))
    }

    /// Entries in memory.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()).live.len())
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries expired at `now`.
    pub fn purge(&self, now: u32) {
        for s in self.shards.iter() {
            let mut shard = s.0.lock().unwrap_or_else(|e| e.into_inner());
            shard.purged_at = now;
            shard.live.retain(|_, until| *until > now);
        }
    }

    /// Reads the journal at `path` into memory; returns the records read. A missing file is
    /// empty; one that is not a journal is set aside (renamed `.unreadable`) with a warning.
    fn load(&self, path: &Path, now: u32) -> Result<usize, TrackingError> {
        let io = |source| TrackingError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = match File::open(path) {
            Ok(f) => std::io::BufReader::with_capacity(1 << 20, f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        let mut magic = [0; MAGIC.len()];
        let got = read_full(&mut reader, &mut magic).map_err(io)?;
        if got < MAGIC.len() || &magic != MAGIC {
            if got > 0 {
                let aside = path.with_extension("unreadable");
                std::fs::rename(path, &aside).map_err(io)?;
                tracing::warn!(
                    "{}: not a tracking journal; moved to {} and starting with no counted \
                     events remembered (replays of recent events may be counted again)",
                    path.display(),
                    aside.display()
                );
            }
            return Ok(0);
        }
        let mut read = 0;
        let mut full = 0;
        let mut r = [0; RECORD];
        loop {
            match read_full(&mut reader, &mut r).map_err(io)? {
                RECORD => {}
                0 => break,
                _ => {
                    tracing::warn!(
                        "{}: last record incomplete (the process was killed while writing); \
                         ignored",
                        path.display()
                    );
                    break;
                }
            }
            read += 1;
            let Some(kind) = EventKind::from_index(r[12]) else {
                continue;
            };
            let mut id = [0; 12];
            id.copy_from_slice(&r[..12]);
            let expires = u32::from_le_bytes([r[13], r[14], r[15], r[16]]);
            if expires <= now {
                continue;
            }
            let mut shard = self.shard(&id).lock().unwrap_or_else(|e| e.into_inner());
            let entry = (id, kind.index());
            if shard.live.len() >= self.per_shard && !shard.live.contains_key(&entry) {
                full += 1;
                continue;
            }
            shard.live.insert(entry, expires);
        }
        if full > 0 {
            tracing::warn!(
                "{}: {full} entries did not fit [tracking] seen_max_entries; their events may \
                 be counted again",
                path.display()
            );
        }
        Ok(read)
    }

    /// Rewrites the journal at `path` with the entries in memory ([`atomic_file::replace`]);
    /// returns how many.
    fn compact(&self, path: &Path) -> std::io::Result<usize> {
        atomic_file::replace(path, None, |out| {
            out.write_all(MAGIC)?;
            let mut kept = 0;
            for s in self.shards.iter() {
                let entries: Vec<[u8; RECORD]> = {
                    let shard = s.0.lock().unwrap_or_else(|e| e.into_inner());
                    shard.live.iter().map(|(e, x)| record(*e, *x)).collect()
                };
                kept += entries.len();
                for r in entries {
                    out.write_all(&r)?;
                }
            }
            Ok(kept)
        })
    }

    /// Takes the entries not yet journalled.
    fn take_unwritten(&self) -> Vec<[u8; RECORD]> {
        let mut all = Vec::new();
        for s in self.shards.iter() {
            let mut shard = s.0.lock().unwrap_or_else(|e| e.into_inner());
            all.append(&mut shard.unwritten);
        }
        all
    }

    /// The writer thread: append, sync, now and then purge and compact; until stopped.
    fn write_loop(&self, mut file: File, path: &Path, stopped: &mpsc::Receiver<()>) {
        let mut journal_bytes = file.metadata().map_or(0, |m| m.len());
        let mut failing = false;
        let mut rounds: u64 = 0;
        loop {
            rounds += 1;
            let stop = !matches!(
                stopped.recv_timeout(WRITE_INTERVAL),
                Err(RecvTimeoutError::Timeout)
            );
            let records = self.take_unwritten();
            if !records.is_empty() {
                match append(&mut file, &records) {
                    Ok(()) => {
                        journal_bytes += (records.len() * RECORD) as u64;
                        if failing {
                            tracing::info!("{}: journal writes work again", path.display());
                            failing = false;
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(
                            "{}: cannot append counted tracking events: {e}; they stay in \
                             memory but a restart may count them again",
                            path.display()
                        );
                    }
                    Err(_) => {}
                }
            }
            if stop {
                return;
            }
            if rounds.is_multiple_of(PURGE_ROUNDS) {
                self.purge(super::now());
            }
            let live = self.len() as u64 * RECORD as u64;
            if journal_bytes > (COMPACT_FACTOR * live).max(1 << 20) {
                self.purge(super::now());
                match self.compact(path).and_then(|kept| {
                    let f = std::fs::OpenOptions::new().append(true).open(path)?;
                    Ok((kept, f))
                }) {
                    Ok((kept, f)) => {
                        file = f;
                        journal_bytes = MAGIC.len() as u64 + (kept * RECORD) as u64;
                    }
                    Err(e) => tracing::warn!("{}: cannot compact: {e}", path.display()),
                }
            }
        }
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn append(file: &mut File, records: &[[u8; RECORD]]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(records.len() * RECORD);
    for r in records {
        buf.extend_from_slice(r);
    }
    file.write_all(&buf)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const NOW: u32 = 1_800_000_000;

    fn id(n: u32) -> [u8; 12] {
        let mut id = [0; 12];
        id[..4].copy_from_slice(&n.to_le_bytes());
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    #[test]
    fn first_exactly_once_per_id_and_kind() {
        let s = Seen::new(1000);
        assert_eq!(
            s.first(&id(1), EventKind::Impression, NOW + 10, NOW),
            Mark::First
        );
        assert_eq!(
            s.first(&id(1), EventKind::Impression, NOW + 10, NOW),
            Mark::Duplicate
        );
        assert!(s.has(&id(1), EventKind::Impression));
        assert!(!s.has(&id(1), EventKind::Click));
        assert_eq!(
            s.first(&id(1), EventKind::Click, NOW + 10, NOW),
            Mark::First
        );
        assert_eq!(
            s.first(&id(2), EventKind::Impression, NOW + 10, NOW),
            Mark::First
        );
    }

    #[test]
    fn full_refuses_new_entries_until_old_ones_expire() {
        let s = Seen::new(SHARDS as u64);
        // Same shard (first 8 bytes equal modulo SHARDS): the second does not fit.
        let a = [1; 12];
        let mut b = [1; 12];
        b[11] = 2;
        assert_eq!(
            s.first(&a, EventKind::Impression, NOW + 5, NOW),
            Mark::First
        );
        assert_eq!(s.first(&b, EventKind::Impression, NOW + 5, NOW), Mark::Full);
        assert!(!s.has(&b, EventKind::Impression));
        assert_eq!(
            s.first(&a, EventKind::Impression, NOW + 5, NOW),
            Mark::Duplicate
        );
        assert_eq!(
            s.first(&b, EventKind::Impression, NOW + 9, NOW + 5),
            Mark::First
        );
        assert!(!s.has(&a, EventKind::Impression));
    }

    fn path(tag: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("rotator-seen-{tag}-{}", fastrand::u64(..)))
            .join("tracking-seen")
    }

    #[test]
    fn journal_survives_restart_and_drops_expired_and_torn_records() {
        let p = path("restart");
        let (s, writer) = Seen::open(&p, 1000, NOW).unwrap();
        assert_eq!(
            s.first(&id(1), EventKind::Impression, NOW + 100, NOW),
            Mark::First
        );
        assert_eq!(
            s.first(&id(2), EventKind::Click, NOW + 10, NOW),
            Mark::First
        );
        writer.stop();
        // A torn record, as a kill -9 in the middle of a write leaves.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[9; 5]).unwrap();
        drop(f);

        let (s, writer) = Seen::open(&p, 1000, NOW + 50).unwrap();
        assert_eq!(
            s.first(&id(1), EventKind::Impression, NOW + 100, NOW + 50),
            Mark::Duplicate
        );
        assert!(
            !s.has(&id(2), EventKind::Click),
            "expired entries are dropped"
        );
        assert_eq!(s.len(), 1);
        drop(writer);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            (MAGIC.len() + RECORD) as u64,
            "compacted at start"
        );
        let (s, _writer) = Seen::open(&p, 1000, NOW + 50).unwrap();
        assert!(s.has(&id(1), EventKind::Impression));
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn unreadable_journal_is_set_aside() {
        let p = path("bad");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"not a journal").unwrap();
        let (s, _writer) = Seen::open(&p, 1000, NOW).unwrap();
        assert!(s.is_empty());
        assert!(p.with_extension("unreadable").exists());
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}
