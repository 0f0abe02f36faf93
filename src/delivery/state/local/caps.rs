//! The frequency-cap views of the local backend and their journal (invariants and what
//! `kill -9` costs: see [`super`]).
//!
//! Format (little-endian): the 8 bytes `RTCAPS01`, then 33-byte records: kind (1 view, 2
//! release), visitor key (u64), campaign (u32), until (i64, Unix seconds; 0 for releases),
//! decision id (12). A torn last record (a crash while writing) is ignored.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use smallvec::SmallVec;

use super::{COMPACT_FACTOR, COMPACT_MIN_BYTES, Map, io_error, lock, read_full, rewrite};
use crate::delivery::state::{CapAsk, CapReply, StateError};

/// How often new cap views are appended to the journal (and so what a `kill -9` may lose).
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Shards: enough that 2 × cores request threads rarely meet on one.
const SHARDS: usize = 64;
const MAGIC: &[u8; 8] = b"RTCAPS01";
const RECORD: usize = 33;
const VIEW: u8 = 1;
const RELEASE: u8 = 2;
/// Every how many writer rounds (about seconds) expired views are dropped from memory.
const PURGE_ROUNDS: u64 = 60;
/// How often a full shard may scan itself for expired views (a scan costs its whole size).
const PURGE_EVERY_SECS: i64 = 1;

/// One reserved view: counts until `until`.
#[derive(Debug, Clone, Copy)]
struct View {
    until: i64,
    decision: [u8; 12],
}

/// The views of one visitor and campaign, sorted by `until`: the expired ones are a prefix, and
/// the view whose expiry makes room under a limit is found by its place.
type Views = SmallVec<[View; 2]>;

/// Adds `view` in `until` order (at the end, unless a reload shortened the cap's window).
fn insert_sorted(views: &mut Views, view: View) {
    // The usual case first: a binary search of a long list costs a cache miss per probe.
    if views.last().is_none_or(|last| last.until <= view.until) {
        views.push(view);
    } else {
        let at = views.partition_point(|v| v.until <= view.until);
        views.insert(at, view);
    }
}

/// Drops the views expired at `now`.
fn drop_expired(views: &mut Views, now: i64) {
    if views.first().is_some_and(|first| first.until <= now) {
        let expired = views.partition_point(|v| v.until <= now);
        views.drain(..expired);
    }
}

struct CapShardState {
    /// (visitor key, campaign) → views, sorted by expiry (most pairs hold one or two: inline,
    /// no allocation of their own).
    views: Map<(u64, u32), Views>,
    /// Records not yet journalled.
    unwritten: Vec<[u8; RECORD]>,
    /// When this shard last dropped its expired views (Unix seconds).
    purged_at: i64,
}

/// A shard, on its own cache lines.
#[repr(align(128))]
struct CapShard(Mutex<CapShardState>);

pub(super) struct Caps {
    shards: Box<[CapShard]>,
    /// Visitor × campaign pairs each shard may hold.
    per_shard: usize,
    /// The latest `now` a call passed (the writer purges with it: no clock of its own).
    latest_now: AtomicI64,
}

/// `keys` (1 or 2: [`MAX_KEYS`](crate::delivery::state::MAX_KEYS)) without a repeated second
/// key.
fn distinct(keys: &[u64]) -> Result<&[u64], StateError> {
    match keys {
        [a, b] if a == b => Ok(&keys[..1]),
        [_] | [_, _] => Ok(keys),
        _ => Err(StateError::Keys(keys.len())),
    }
}

fn caps_record(kind: u8, key: u64, campaign: u32, view: View) -> [u8; RECORD] {
    let mut r = [0; RECORD];
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
        self.purged_at = now;
        self.views.retain(|_, views| {
            drop_expired(views, now);
            !views.is_empty()
        });
    }
}

impl Caps {
    /// See [`State::reserve`](crate::delivery::state::State::reserve); `keys` holds 1 or 2 keys (checked by the caller). Fails
    /// only when the memory is full ([`StateError::CapsFull`]).
    pub(super) fn reserve(
        &self,
        keys: &[u64],
        asks: &[CapAsk],
        decision: [u8; 12],
        now: i64,
    ) -> Result<CapReply, StateError> {
        self.latest_now.fetch_max(now, Ordering::Relaxed);
        let keys = distinct(keys)?;
        let mut locked = self.lock(keys);
        let mut reply = CapReply {
            granted: None,
            full_until: smallvec::smallvec![None; asks.len()],
        };
        for (i, ask) in asks.iter().enumerate() {
            let mut frees: Option<Option<i64>> = None;
            for &key in keys {
                let shard = locked.get(key);
                let Some(views) = shard.views.get_mut(&(key, ask.campaign)) else {
                    continue;
                };
                drop_expired(views, now);
                let count = views.len();
                if count >= ask.limit as usize {
                    // Room again when the view `limit` places from the newest expires.
                    let t = count
                        .checked_sub(ask.limit as usize)
                        .filter(|_| ask.limit > 0)
                        .and_then(|at| views.get(at))
                        .map(|v| v.until);
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
                            && shard.views.len() >= self.per_shard
                        {
                            if now >= shard.purged_at.saturating_add(PURGE_EVERY_SECS) {
                                shard.purge(now);
                            }
                            if shard.views.len() >= self.per_shard {
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
                        insert_sorted(shard.views.entry((key, ask.campaign)).or_default(), view);
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

    /// See [`State::release`](crate::delivery::state::State::release).
    pub(super) fn release(&self, keys: &[u64], campaign: u32, decision: [u8; 12]) {
        let Ok(keys) = distinct(keys) else {
            return;
        };
        let mut locked = self.lock(keys);
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

    /// See [`State::views`](crate::delivery::state::State::views).
    pub(super) fn views(&self, keys: &[u64], campaign: u32, now: i64) -> u32 {
        distinct(keys)
            .unwrap_or_default()
            .iter()
            .map(|&key| {
                let shard = lock(&self.shard(key).0);
                shard.views.get(&(key, campaign)).map_or(0, |views| {
                    (views.len() - views.partition_point(|v| v.until <= now)) as u32
                })
            })
            .max()
            .unwrap_or(0)
    }

    pub(super) fn new(max_entries: u64, now: i64) -> Caps {
        Caps {
            per_shard: usize::try_from(max_entries.div_ceil(SHARDS as u64))
                .unwrap_or(usize::MAX)
                .max(1),
            shards: (0..SHARDS)
                .map(|_| {
                    CapShard(Mutex::new(CapShardState {
                        views: Map::default(),
                        unwritten: Vec::new(),
                        purged_at: now,
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
    pub(super) fn load(&self, path: &Path, now: i64) -> Result<(), StateError> {
        let io = io_error(path);
        let mut reader = match File::open(path) {
            Ok(f) => BufReader::with_capacity(1 << 20, f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let mut magic = [0; 8];
        let got = read_full(&mut reader, &mut magic).map_err(&io)?;
        if got < magic.len() || &magic != MAGIC {
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
        let mut r = [0; RECORD];
        while read_full(&mut reader, &mut r).map_err(&io)? == RECORD {
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
                        insert_sorted(views, View { until, decision });
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
    pub(super) fn compact(&self, path: &Path) -> std::io::Result<(u64, File)> {
        let mut records = Vec::new();
        for s in self.shards.iter() {
            let shard = lock(&s.0);
            for (&(key, campaign), views) in &shard.views {
                for view in views {
                    records.push(caps_record(VIEW, key, campaign, *view));
                }
            }
        }
        let file = rewrite(path, MAGIC, &records)?;
        Ok(((records.len() * RECORD) as u64, file))
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
    pub(super) fn write_loop(
        &self,
        mut file: File,
        path: &Path,
        live: u64,
        stopped: &mpsc::Receiver<()>,
    ) {
        let mut bytes = MAGIC.len() as u64 + live;
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
                    .map(|s| lock(&s.0).views.values().map(SmallVec::len).sum::<usize>() as u64)
                    .sum::<u64>()
                    * RECORD as u64;
                if bytes > COMPACT_FACTOR * live {
                    match self.compact(path) {
                        Ok((live, f)) => {
                            file = f;
                            bytes = MAGIC.len() as u64 + live;
                        }
                        Err(e) => tracing::warn!("{}: cannot compact: {e}", path.display()),
                    }
                }
            }
        }
    }
}
