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
//! Formats (little-endian): `budget` = the 8 bytes `RTBUDG01`, then 16-byte records: campaign
//! (u32), day (i32; [`NO_DAY`] = total only), delta (i64: + grant, − refund; applied to the day
//! and the total). `caps` = `RTCAPS01`, then 33-byte records: kind (1 view, 2 release), visitor
//! key (u64), campaign (u32), until (i64, Unix seconds; 0 for releases), decision id (12).
//! A torn last record (a crash while writing) is ignored.
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
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{CapAsk, CapReply, LeaseAsk, StateError};
use crate::campaigns::budget::Micros;
use crate::metrics::Metrics;
use crate::tracking::Seen;

/// How often new cap views are appended to the journal (and so what a `kill -9` may lose).
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Days of per-day spend kept before the latest day seen (older days are never asked about).
pub const KEEP_DAYS: i32 = 7;
/// The day of a budget record that changes the total only.
pub const NO_DAY: i32 = i32::MIN;
/// Cap shards: enough that 2 × cores request threads rarely meet on one.
const SHARDS: usize = 64;
const BUDGET_MAGIC: &[u8; 8] = b"RTBUDG01";
const BUDGET_RECORD: usize = 16;
const CAPS_MAGIC: &[u8; 8] = b"RTCAPS01";
const CAPS_RECORD: usize = 33;
const VIEW: u8 = 1;
const RELEASE: u8 = 2;
/// A journal is rewritten with only its live entries when it grows past this multiple of their
/// size (and past [`COMPACT_MIN_BYTES`]).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// Every how many writer rounds (about seconds) expired views are dropped from memory.
const PURGE_ROUNDS: u64 = 60;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The local backend.
pub struct LocalState {
    pub(super) metrics: Arc<Metrics>,
    /// Held for the lifetime of the state (`flock`).
    _lock: File,
    /// Tracking's counted-once memory (journalled by tracking itself).
    pub(super) seen: Arc<Seen>,
    budgets: Mutex<Budgets>,
    caps: Arc<Caps>,
}

/// Spend granted, by (campaign, day) and by campaign, and the journal that makes it durable.
struct Budgets {
    days: Map<(u32, i32), Micros>,
    totals: Map<u32, Micros>,
    file: File,
    path: PathBuf,
    /// Bytes in the journal.
    bytes: u64,
}

/// One reserved view: counts until `until`.
#[derive(Debug, Clone, Copy)]
struct View {
    until: i64,
    decision: [u8; 12],
}

struct CapShardState {
    /// (visitor key, campaign) → views, in reservation order.
    views: Map<(u64, u32), Vec<View>>,
    /// Records not yet journalled.
    unwritten: Vec<[u8; CAPS_RECORD]>,
}

/// A shard, on its own cache lines.
#[repr(align(128))]
struct CapShard(Mutex<CapShardState>);

struct Caps {
    shards: Box<[CapShard]>,
    /// Visitor × campaign pairs each shard may hold.
    per_shard: usize,
    /// The latest `now` a call passed (the writer purges with it: no clock of its own).
    latest_now: AtomicI64,
}

/// The caps journal writer thread; stopping it (or dropping it) writes what is left. Does
/// nothing for the Redis backend.
pub struct StateWriter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

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
                metrics,
                _lock: lock,
                seen,
                budgets: Mutex::new(budgets),
                caps,
            },
            StateWriter {
                stop: Some(stop),
                thread: Some(thread),
            },
        ))
    }

    /// See [`super::State::lease`]. The grants are on disk before they are returned; when the
    /// journal cannot be written nothing is granted.
    pub fn lease(&self, asks: &[LeaseAsk]) -> Result<Vec<Micros>, StateError> {
        let mut b = lock(&self.budgets);
        let mut grants = Vec::with_capacity(asks.len());
        let mut records = Vec::new();
        for ask in asks {
            let day = b.days.get(&(ask.campaign, ask.day)).copied().unwrap_or(0);
            let total = b.totals.get(&ask.campaign).copied().unwrap_or(0);
            let grant = ask
                .want
                .min(ask.daily.map_or(Micros::MAX, |d| d.saturating_sub(day)))
                .min(ask.total.map_or(Micros::MAX, |t| t.saturating_sub(total)));
            let delta = i64::try_from(grant).unwrap_or(i64::MAX);
            let grant = delta.unsigned_abs();
            if grant > 0 {
                b.apply(ask.campaign, ask.day, delta);
                records.push(budget_record(ask.campaign, ask.day, delta));
            }
            grants.push(grant);
        }
        if let Err(e) = b.append(&records, true) {
            for r in &records {
                let (campaign, day, delta) = parse_budget_record(r);
                b.apply(campaign, day, -delta);
            }
            return Err(e);
        }
        b.compact_if_large();
        Ok(grants)
    }

    /// See [`super::State::refund`].
    pub fn refund(
        &self,
        campaign: u32,
        day: Option<i32>,
        amount: Micros,
    ) -> Result<(), StateError> {
        let delta = -i64::try_from(amount).unwrap_or(i64::MAX);
        let day = day.unwrap_or(NO_DAY);
        let mut b = lock(&self.budgets);
        b.append(&[budget_record(campaign, day, delta)], false)?;
        b.apply(campaign, day, delta);
        Ok(())
    }

    /// See [`super::State::spent`].
    pub fn spent(&self, campaign: u32, day: i32) -> (Micros, Micros) {
        let b = lock(&self.budgets);
        (
            b.days.get(&(campaign, day)).copied().unwrap_or(0),
            b.totals.get(&campaign).copied().unwrap_or(0),
        )
    }

    /// See [`super::State::reserve`]; `keys` holds 1 or 2 keys (checked by the caller). Fails
    /// only when the memory is full ([`StateError::CapsFull`]).
    pub fn reserve(
        &self,
        keys: &[u64],
        asks: &[CapAsk],
        decision: [u8; 12],
        now: i64,
    ) -> Result<CapReply, StateError> {
        self.caps.latest_now.fetch_max(now, Ordering::Relaxed);
        let keys = distinct(keys);
        let mut locked = self.caps.lock(keys);
        let mut reply = CapReply {
            granted: None,
            full_until: vec![None; asks.len()],
        };
        for (i, ask) in asks.iter().enumerate() {
            let mut frees: Option<Option<i64>> = None;
            for &key in keys {
                let shard = locked.get(key);
                let Some(views) = shard.views.get_mut(&(key, ask.campaign)) else {
                    continue;
                };
                views.retain(|v| v.until > now);
                let count = views.len();
                if count >= ask.limit as usize {
                    let mut untils: Vec<i64> = views.iter().map(|v| v.until).collect();
                    let at = count
                        .checked_sub(ask.limit as usize)
                        .filter(|_| ask.limit > 0);
                    let t = at.map(|at| *untils.select_nth_unstable(at).1);
                    frees = Some(frees.flatten().max(t));
                } else if views.is_empty() {
                    shard.views.remove(&(key, ask.campaign));
                }
            }
            match frees {
                Some(until) => reply.full_until[i] = until,
                None => {
                    for &key in keys {
                        let shard = locked.get(key);
                        if !shard.views.contains_key(&(key, ask.campaign))
                            && shard.views.len() >= self.caps.per_shard
                        {
                            shard.purge(now);
                            if shard.views.len() >= self.caps.per_shard {
                                return Err(StateError::CapsFull);
                            }
                        }
                    }
                    let view = View {
                        until: now.saturating_add(i64::from(ask.per_secs)),
                        decision,
                    };
                    for &key in keys {
                        let shard = locked.get(key);
                        shard
                            .views
                            .entry((key, ask.campaign))
                            .or_default()
                            .push(view);
                        shard
                            .unwritten
                            .push(caps_record(VIEW, key, ask.campaign, view));
                    }
                    reply.granted = Some(i);
                    break;
                }
            }
        }
        Ok(reply)
    }

    /// See [`super::State::release`].
    pub fn release(&self, keys: &[u64], campaign: u32, decision: [u8; 12]) {
        let keys = distinct(keys);
        let mut locked = self.caps.lock(keys);
        for &key in keys {
            let shard = locked.get(key);
            if let Some(views) = shard.views.get_mut(&(key, campaign)) {
                views.retain(|v| v.decision != decision);
                if views.is_empty() {
                    shard.views.remove(&(key, campaign));
                }
                let gone = View { until: 0, decision };
                shard
                    .unwritten
                    .push(caps_record(RELEASE, key, campaign, gone));
            }
        }
    }

    /// See [`super::State::views`].
    pub fn views(&self, keys: &[u64], campaign: u32, now: i64) -> u32 {
        distinct(keys)
            .iter()
            .map(|&key| {
                let shard = lock(&self.caps.shard(key).0);
                shard.views.get(&(key, campaign)).map_or(0, |views| {
                    views.iter().filter(|v| v.until > now).count() as u32
                })
            })
            .max()
            .unwrap_or(0)
    }
}

/// `keys` without a repeated second key.
fn distinct(keys: &[u64]) -> &[u64] {
    match keys {
        [a, b] if a == b => &keys[..1],
        _ => keys,
    }
}

fn budget_record(campaign: u32, day: i32, delta: i64) -> [u8; BUDGET_RECORD] {
    let mut r = [0; BUDGET_RECORD];
    r[..4].copy_from_slice(&campaign.to_le_bytes());
    r[4..8].copy_from_slice(&day.to_le_bytes());
    r[8..].copy_from_slice(&delta.to_le_bytes());
    r
}

fn parse_budget_record(r: &[u8; BUDGET_RECORD]) -> (u32, i32, i64) {
    let mut c = [0; 4];
    let mut d = [0; 4];
    let mut x = [0; 8];
    c.copy_from_slice(&r[..4]);
    d.copy_from_slice(&r[4..8]);
    x.copy_from_slice(&r[8..]);
    (
        u32::from_le_bytes(c),
        i32::from_le_bytes(d),
        i64::from_le_bytes(x),
    )
}

fn add(value: &mut Micros, delta: i64) {
    *value = if delta >= 0 {
        value.saturating_add(delta.unsigned_abs())
    } else {
        value.saturating_sub(delta.unsigned_abs())
    };
}

impl Budgets {
    fn open(path: &Path) -> Result<Budgets, StateError> {
        let io = io_error(path);
        let (mut days, mut totals) = (Map::default(), Map::default());
        match File::open(path) {
            Ok(f) => {
                let mut reader = BufReader::with_capacity(1 << 16, f);
                let mut magic = [0; 8];
                let got = read_full(&mut reader, &mut magic).map_err(&io)?;
                if got > 0 && (got < magic.len() || &magic != BUDGET_MAGIC) {
                    return Err(io(std::io::Error::other(
                        "not a budget journal; move it away to start with no spend remembered \
                         (campaigns may then spend their budgets again)",
                    )));
                }
                let mut r = [0; BUDGET_RECORD];
                while read_full(&mut reader, &mut r).map_err(&io)? == BUDGET_RECORD {
                    let (campaign, day, delta) = parse_budget_record(&r);
                    apply(&mut days, &mut totals, campaign, day, delta);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let records = compacted(&mut days, &totals);
        let file = rewrite(path, BUDGET_MAGIC, &records).map_err(&io)?;
        Ok(Budgets {
            days,
            totals,
            file,
            path: path.to_path_buf(),
            bytes: (BUDGET_MAGIC.len() + records.len() * BUDGET_RECORD) as u64,
        })
    }

    fn apply(&mut self, campaign: u32, day: i32, delta: i64) {
        apply(&mut self.days, &mut self.totals, campaign, day, delta);
    }

    /// Appends `records`; `sync`: and waits until they are on disk.
    fn append(&mut self, records: &[[u8; BUDGET_RECORD]], sync: bool) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let bytes = records.concat();
        self.file
            .write_all(&bytes)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) })
            .map_err(io_error(&self.path))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn live_bytes(&self) -> u64 {
        (self.days.len() + self.totals.len()) as u64 * BUDGET_RECORD as u64
    }

    fn compact_if_large(&mut self) {
        if self.bytes > (COMPACT_FACTOR * self.live_bytes()).max(COMPACT_MIN_BYTES)
            && let Err(e) = self.compact()
        {
            tracing::warn!("{e}: cannot compact; the journal keeps growing");
        }
    }

    /// Drops old days and rewrites the journal with the sums.
    fn compact(&mut self) -> Result<(), StateError> {
        let records = compacted(&mut self.days, &self.totals);
        self.file = rewrite(&self.path, BUDGET_MAGIC, &records).map_err(io_error(&self.path))?;
        self.bytes = (BUDGET_MAGIC.len() + records.len() * BUDGET_RECORD) as u64;
        Ok(())
    }
}

fn apply(
    days: &mut Map<(u32, i32), Micros>,
    totals: &mut Map<u32, Micros>,
    campaign: u32,
    day: i32,
    delta: i64,
) {
    if day != NO_DAY {
        add(days.entry((campaign, day)).or_default(), delta);
    }
    add(totals.entry(campaign).or_default(), delta);
}

/// Drops days older than [`KEEP_DAYS`] before the latest; returns the records that sum to what
/// is left: one per (campaign, day), and one per campaign for the rest of its total.
fn compacted(
    days: &mut Map<(u32, i32), Micros>,
    totals: &Map<u32, Micros>,
) -> Vec<[u8; BUDGET_RECORD]> {
    if let Some(latest) = days.keys().map(|(_, d)| *d).max() {
        days.retain(|(_, d), _| *d >= latest.saturating_sub(KEEP_DAYS));
    }
    let mut in_days: Map<u32, Micros> = Map::default();
    let mut records = Vec::with_capacity(days.len() + totals.len());
    for (&(campaign, day), &spent) in days.iter() {
        let sum = in_days.entry(campaign).or_default();
        *sum = sum.saturating_add(spent);
        records.push(budget_record(campaign, day, clamp(spent)));
    }
    for (&campaign, &total) in totals {
        let rest = total.saturating_sub(in_days.get(&campaign).copied().unwrap_or(0));
        records.push(budget_record(campaign, NO_DAY, clamp(rest)));
    }
    records
}

fn clamp(m: Micros) -> i64 {
    i64::try_from(m).unwrap_or(i64::MAX)
}

/// Writes `magic` and `records` to a temporary file, syncs it, renames it over `path` (and syncs
/// the folder); returns `path` opened for appending.
fn rewrite<R: AsRef<[u8]>>(path: &Path, magic: &[u8], records: &[R]) -> std::io::Result<File> {
    let tmp = path.with_extension("compacting");
    let mut out = BufWriter::new(File::create(&tmp)?);
    out.write_all(magic)?;
    for r in records {
        out.write_all(r.as_ref())?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

fn caps_record(kind: u8, key: u64, campaign: u32, view: View) -> [u8; CAPS_RECORD] {
    let mut r = [0; CAPS_RECORD];
    r[0] = kind;
    r[1..9].copy_from_slice(&key.to_le_bytes());
    r[9..13].copy_from_slice(&campaign.to_le_bytes());
    r[13..21].copy_from_slice(&view.until.to_le_bytes());
    r[21..].copy_from_slice(&view.decision);
    r
}

/// The one or two shards a reservation holds, locked in index order.
struct Locked<'a> {
    first: (usize, MutexGuard<'a, CapShardState>),
    second: Option<(usize, MutexGuard<'a, CapShardState>)>,
}

impl Locked<'_> {
    fn get(&mut self, key: u64) -> &mut CapShardState {
        let index = shard_index(key);
        match &mut self.second {
            Some((i, guard)) if *i == index => guard,
            _ => &mut self.first.1,
        }
    }
}

fn shard_index(key: u64) -> usize {
    // Keys are hashes already; the high bits, as the low ones also pick hash-table slots.
    (key >> 58) as usize % SHARDS
}

impl CapShardState {
    /// Drops views expired at `now`.
    fn purge(&mut self, now: i64) {
        self.views.retain(|_, views| {
            views.retain(|v| v.until > now);
            !views.is_empty()
        });
    }
}

impl Caps {
    fn new(max_entries: u64, now: i64) -> Caps {
        Caps {
            per_shard: usize::try_from(max_entries.div_ceil(SHARDS as u64))
                .unwrap_or(usize::MAX)
                .max(1),
            shards: (0..SHARDS)
                .map(|_| {
                    CapShard(Mutex::new(CapShardState {
                        views: Map::default(),
                        unwritten: Vec::new(),
                    }))
                })
                .collect(),
            latest_now: AtomicI64::new(now),
        }
    }

    fn shard(&self, key: u64) -> &CapShard {
        &self.shards[shard_index(key)]
    }

    /// Locks the shards of `keys` (1 or 2), lower index first.
    fn lock(&self, keys: &[u64]) -> Locked<'_> {
        let a = shard_index(keys[0]);
        let b = keys.get(1).map(|k| shard_index(*k)).filter(|b| *b != a);
        match b {
            None => Locked {
                first: (a, lock(&self.shards[a].0)),
                second: None,
            },
            Some(b) => {
                let (lo, hi) = (a.min(b), a.max(b));
                let first = (lo, lock(&self.shards[lo].0));
                let second = Some((hi, lock(&self.shards[hi].0)));
                Locked { first, second }
            }
        }
    }

    /// Reads the journal into memory (views still counting at `now`, releases applied).
    fn load(&self, path: &Path, now: i64) -> Result<(), StateError> {
        let io = io_error(path);
        let mut reader = match File::open(path) {
            Ok(f) => BufReader::with_capacity(1 << 20, f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let mut magic = [0; 8];
        let got = read_full(&mut reader, &mut magic).map_err(&io)?;
        if got < magic.len() || &magic != CAPS_MAGIC {
            if got > 0 {
                let aside = path.with_extension("unreadable");
                std::fs::rename(path, &aside).map_err(&io)?;
                tracing::warn!(
                    "{}: not a caps journal; moved to {} and starting with no views remembered \
                     (frequency caps start afresh)",
                    path.display(),
                    aside.display()
                );
            }
            return Ok(());
        }
        let mut r = [0; CAPS_RECORD];
        while read_full(&mut reader, &mut r).map_err(&io)? == CAPS_RECORD {
            let mut k = [0; 8];
            let mut c = [0; 4];
            let mut u = [0; 8];
            let mut decision = [0; 12];
            k.copy_from_slice(&r[1..9]);
            c.copy_from_slice(&r[9..13]);
            u.copy_from_slice(&r[13..21]);
            decision.copy_from_slice(&r[21..]);
            let (key, campaign, until) = (
                u64::from_le_bytes(k),
                u32::from_le_bytes(c),
                i64::from_le_bytes(u),
            );
            let mut shard = lock(&self.shard(key).0);
            match r[0] {
                VIEW if until > now => {
                    let views = shard.views.entry((key, campaign)).or_default();
                    if !views.iter().any(|v| v.decision == decision) {
                        views.push(View { until, decision });
                    }
                }
                RELEASE => {
                    if let Some(views) = shard.views.get_mut(&(key, campaign)) {
                        views.retain(|v| v.decision != decision);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Drops views expired at the latest `now` seen.
    fn purge(&self) {
        let now = self.latest_now.load(Ordering::Relaxed);
        for s in self.shards.iter() {
            lock(&s.0).purge(now);
        }
    }

    /// Rewrites the journal with the views in memory; returns (views kept × record size, file).
    fn compact(&self, path: &Path) -> std::io::Result<(u64, File)> {
        let mut records = Vec::new();
        for s in self.shards.iter() {
            let shard = lock(&s.0);
            for (&(key, campaign), views) in &shard.views {
                for view in views {
                    records.push(caps_record(VIEW, key, campaign, *view));
                }
            }
        }
        let file = rewrite(path, CAPS_MAGIC, &records)?;
        Ok(((records.len() * CAPS_RECORD) as u64, file))
    }

    fn take_unwritten(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for s in self.shards.iter() {
            let mut shard = lock(&s.0);
            for r in shard.unwritten.drain(..) {
                all.extend_from_slice(&r);
            }
        }
        all
    }

    /// The writer thread: append and sync, now and then purge and compact; until stopped.
    fn write_loop(&self, mut file: File, path: &Path, live: u64, stopped: &mpsc::Receiver<()>) {
        let mut bytes = CAPS_MAGIC.len() as u64 + live;
        let mut failing = false;
        let mut rounds: u64 = 0;
        loop {
            rounds += 1;
            let stop = !matches!(
                stopped.recv_timeout(WRITE_INTERVAL),
                Err(RecvTimeoutError::Timeout)
            );
            let new = self.take_unwritten();
            if !new.is_empty() {
                match file.write_all(&new).and_then(|()| file.sync_data()) {
                    Ok(()) => {
                        bytes += new.len() as u64;
                        if failing {
                            tracing::info!("{}: journal writes work again", path.display());
                            failing = false;
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(
                            "{}: cannot append cap views: {e}; they count in memory but a \
                             restart forgets them",
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
                self.purge();
            }
            if bytes > COMPACT_MIN_BYTES {
                self.purge();
                let live: u64 = self
                    .shards
                    .iter()
                    .map(|s| lock(&s.0).views.values().map(Vec::len).sum::<usize>() as u64)
                    .sum::<u64>()
                    * CAPS_RECORD as u64;
                if bytes > COMPACT_FACTOR * live {
                    match self.compact(path) {
                        Ok((live, f)) => {
                            file = f;
                            bytes = CAPS_MAGIC.len() as u64 + live;
                        }
                        Err(e) => tracing::warn!("{}: cannot compact: {e}", path.display()),
                    }
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

impl StateWriter {
    /// A writer with nothing to write (the Redis backend).
    pub fn none() -> StateWriter {
        StateWriter {
            stop: None,
            thread: None,
        }
    }

    /// Writes what is left and stops the thread.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.finish();
    }
}
