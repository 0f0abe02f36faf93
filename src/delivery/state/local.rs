//! The local backend: one node, nothing to install. Counters in memory, made durable by two
//! journals under `[state] dir`.
//!
//! `budget` (write-ahead): every lease grant is appended and synced (`fdatasync`) before it is
//! returned, under the same lock that computed it; refunds are appended without a sync. At start
//! the journal is summed back and rewritten compacted (days older than [`KEEP_DAYS`] before the
//! latest one dropped; totals kept). What `kill -9` may cost: nothing granted is forgotten, so
//! a restart never spends again what was granted before it; the leases the node held but had not
//! spent stay counted as spent (under-spend of at most `lease_seconds` of spend per campaign).
//! A power loss may also lose the refunds of the last moments (again under-spend, never over).
//! A journal that is not one refuses to start (forgetting spend would overspend).
//!
//! `caps`: views and releases, appended by a background thread every [`WRITE_INTERVAL`] and at
//! shutdown, then synced; at start the views still counting are loaded and the journal rewritten
//! compacted. What `kill -9` may cost: the views reserved in the last [`WRITE_INTERVAL`] are
//! forgotten, so after the restart a visitor may be shown a capped campaign once more for each
//! such view; a release lost the same way keeps a view counting until its window ends. An
//! unreadable caps journal is set aside with a warning (caps open again; money is not at stake).
//!
//! Formats: at the top of `local/budgets.rs` and `local/caps.rs`.
//!
//! Caps are sharded by visitor key; a reservation under two keys locks both shards in index
//! order (no deadlock), so it is atomic like the Redis script. Memory is bounded by
//! `[state] max_cap_entries` (visitor × campaign pairs with views counting; each shard holds a
//! 64th): a full shard first drops its expired views; if still full, the reservation fails
//! ([`StateError::CapsFull`]) and the caller treats it like an outage (`on_outage`).
//!
//! `dir/lock` is held (`flock`) while the state is open: a second process on the same folder
//! is refused instead of writing over the first one's journals.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{CapAsk, CapReply, LeaseAsk, StateError};
use crate::atomic_file;
use crate::campaigns::budget::Micros;
use crate::metrics::{Metrics, StateCall};
use crate::tracking::Seen;

mod budgets;
mod caps;

use budgets::Budgets;
pub use budgets::{KEEP_DAYS, NO_DAY};
use caps::Caps;
pub use caps::WRITE_INTERVAL;

/// A journal is rewritten with only its live entries when it grows past this multiple of their
/// size (and past [`COMPACT_MIN_BYTES`]).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN_BYTES: u64 = 1 << 20;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The local backend.
pub struct LocalState {
    pub(super) metrics: Arc<Metrics>,
    /// `rotator_state_seconds{backend="local",op="reserve"}` and its errors (every capped
    /// decision observes them).
    pub(super) reserve_metrics: StateCall,
    /// Held for the lifetime of the state (`flock`).
    _lock: File,
    /// Tracking's counted-once memory (journalled by tracking itself).
    pub(super) seen: Arc<Seen>,
    budgets: Mutex<Budgets>,
    caps: Arc<Caps>,
}

/// The caps journal writer thread; stopping it (or dropping it) writes what is left. Does
/// nothing for the Redis backend.
pub type StateWriter = crate::shutdown::WriterThread;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl LocalState {
    /// Loads (or creates) the journals in `dir`, drops views expired at `now`, and starts the
    /// caps journal writer.
    pub fn open(
        dir: &Path,
        max_cap_entries: u64,
        seen: Arc<Seen>,
        metrics: Arc<Metrics>,
        now: i64,
    ) -> Result<(LocalState, StateWriter), StateError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => StateError::Locked(dir.to_path_buf()),
            std::fs::TryLockError::Error(e) => io_error(&lock_path)(e),
        })?;
        let budgets = Budgets::open(&dir.join("budget"))?;
        let caps_path = dir.join("caps");
        let caps = Arc::new(Caps::new(max_cap_entries, now));
        caps.load(&caps_path, now)?;
        let (live, _) = caps.compact(&caps_path).map_err(io_error(&caps_path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&caps_path)
            .map_err(io_error(&caps_path))?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state-caps".into())
            .spawn({
                let caps = caps.clone();
                move || caps.write_loop(file, &caps_path, live, &stopped)
            })
            .map_err(io_error(dir))?;
        Ok((
            LocalState {
                reserve_metrics: metrics.state_call("local", "reserve"),
                metrics,
                _lock: lock,
                seen,
                budgets: Mutex::new(budgets),
                caps,
            },
            StateWriter::new(stop, thread),
        ))
    }

    /// See [`super::State::lease`]. The grants are on disk before they are returned (this
    /// blocks the calling thread for one `fdatasync`, once a tick); when the journal cannot be
    /// written nothing is granted.
    pub fn lease(&self, asks: &[LeaseAsk]) -> Result<Vec<Micros>, StateError> {
        lock(&self.budgets).lease(asks)
    }

    /// See [`super::State::refund`].
    pub fn refund(
        &self,
        campaign: u32,
        day: Option<i32>,
        amount: Micros,
    ) -> Result<(), StateError> {
        lock(&self.budgets).refund(campaign, day, amount)
    }

    /// See [`super::State::spent`].
    pub fn spent(&self, campaign: u32, day: i32) -> (Micros, Micros) {
        lock(&self.budgets).spent(campaign, day)
    }

    /// See [`super::State::spent_many`].
    pub fn spent_many(&self, days: &[(u32, i32)]) -> Vec<(Micros, Micros)> {
        let budgets = lock(&self.budgets);
        days.iter().map(|&(c, d)| budgets.spent(c, d)).collect()
    }

    /// See [`super::State::reserve`]. Fails when `keys` holds no key or more than two, or when
    /// the memory is full ([`StateError::CapsFull`]).
    pub fn reserve(
        &self,
        keys: &[u64],
        asks: &[CapAsk],
        decision: [u8; 12],
        now: i64,
    ) -> Result<CapReply, StateError> {
        self.caps.reserve(keys, asks, decision, now)
    }

    /// See [`super::State::release`].
    pub fn release(&self, keys: &[u64], campaign: u32, decision: [u8; 12]) {
        self.caps.release(keys, campaign, decision)
    }

    /// See [`super::State::views`].
    pub fn views(&self, keys: &[u64], campaign: u32, now: i64) -> u32 {
        self.caps.views(keys, campaign, now)
    }
}

/// Replaces the journal at `path` with `magic` and `records` ([`atomic_file::replace`]); returns
/// it opened for appending.
fn rewrite<R: AsRef<[u8]>>(path: &Path, magic: &[u8], records: &[R]) -> std::io::Result<File> {
    atomic_file::replace(path, None, |out| {
        out.write_all(magic)?;
        records.iter().try_for_each(|r| out.write_all(r.as_ref()))
    })?;
    OpenOptions::new().append(true).open(path)
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
