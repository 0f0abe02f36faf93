//! The budget journal of the local backend (invariants and what `kill -9` costs: see
//! [`super`]).
//!
//! Format (little-endian): the 8 bytes `RTBUDG01`, then 16-byte records: campaign (u32), day
//! (i32; [`NO_DAY`] = total only), delta (i64: + grant, − refund; applied to the day and the
//! total). A torn last record (a crash while writing) is ignored.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use super::{COMPACT_FACTOR, COMPACT_MIN_BYTES, Map, io_error, read_full, rewrite};
use crate::campaigns::budget::Micros;
use crate::delivery::state::{LeaseAsk, StateError};

/// Days of per-day spend kept before the latest day seen (older days are never asked about).
pub const KEEP_DAYS: i32 = 7;
/// The day of a budget record that changes the total only.
pub const NO_DAY: i32 = i32::MIN;
const MAGIC: &[u8; 8] = b"RTBUDG01";
const RECORD: usize = 16;

/// Spend granted, by (campaign, day) and by campaign, and the journal that makes it durable.
pub(super) struct Budgets {
    days: Map<(u32, i32), Micros>,
    totals: Map<u32, Micros>,
    file: File,
    path: PathBuf,
    /// Bytes in the journal.
    bytes: u64,
}

fn budget_record(campaign: u32, day: i32, delta: i64) -> [u8; RECORD] {
    let mut r = [0; RECORD];
    r[..4].copy_from_slice(&campaign.to_le_bytes());
    r[4..8].copy_from_slice(&day.to_le_bytes());
    r[8..].copy_from_slice(&delta.to_le_bytes());
    r
}

fn parse_budget_record(r: &[u8; RECORD]) -> (u32, i32, i64) {
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
    /// See [`State::lease`](crate::delivery::state::State::lease). The grants are on disk before they are returned; when the
    /// journal cannot be written nothing is granted.
    pub(super) fn lease(&mut self, asks: &[LeaseAsk]) -> Result<Vec<Micros>, StateError> {
        let mut grants = Vec::with_capacity(asks.len());
        let mut records = Vec::new();
        for ask in asks {
            let day = self
                .days
                .get(&(ask.campaign, ask.day))
                .copied()
                .unwrap_or(0);
            let total = self.totals.get(&ask.campaign).copied().unwrap_or(0);
            let grant = ask
                .want
                .min(ask.daily.map_or(Micros::MAX, |d| d.saturating_sub(day)))
                .min(ask.total.map_or(Micros::MAX, |t| t.saturating_sub(total)));
            let delta = i64::try_from(grant).unwrap_or(i64::MAX);
            let grant = delta.unsigned_abs();
            if grant > 0 {
                self.apply(ask.campaign, ask.day, delta);
                records.push(budget_record(ask.campaign, ask.day, delta));
            }
            grants.push(grant);
        }
        if let Err(e) = self.append(&records, true) {
            for r in &records {
                let (campaign, day, delta) = parse_budget_record(r);
                self.apply(campaign, day, -delta);
            }
            return Err(e);
        }
        self.compact_if_large();
        Ok(grants)
    }

    /// See [`State::refund`](crate::delivery::state::State::refund).
    pub(super) fn refund(
        &mut self,
        campaign: u32,
        day: Option<i32>,
        amount: Micros,
    ) -> Result<(), StateError> {
        let delta = -i64::try_from(amount).unwrap_or(i64::MAX);
        let day = day.unwrap_or(NO_DAY);
        self.append(&[budget_record(campaign, day, delta)], false)?;
        self.apply(campaign, day, delta);
        Ok(())
    }

    /// See [`State::spent`](crate::delivery::state::State::spent).
    pub(super) fn spent(&self, campaign: u32, day: i32) -> (Micros, Micros) {
        (
            self.days.get(&(campaign, day)).copied().unwrap_or(0),
            self.totals.get(&campaign).copied().unwrap_or(0),
        )
    }

    pub(super) fn open(path: &Path) -> Result<Budgets, StateError> {
        let io = io_error(path);
        let (mut days, mut totals) = (Map::default(), Map::default());
        match File::open(path) {
            Ok(f) => {
                let mut reader = BufReader::with_capacity(1 << 16, f);
                let mut magic = [0; 8];
                let got = read_full(&mut reader, &mut magic).map_err(&io)?;
                if got > 0 && (got < magic.len() || &magic != MAGIC) {
                    return Err(io(std::io::Error::other(
                        "not a budget journal; move it away to start with no spend remembered \
                         (campaigns may then spend their budgets again)",
                    )));
                }
                let mut r = [0; RECORD];
                while read_full(&mut reader, &mut r).map_err(&io)? == RECORD {
                    let (campaign, day, delta) = parse_budget_record(&r);
                    apply(&mut days, &mut totals, campaign, day, delta);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let records = compacted(&mut days, &totals);
        let file = rewrite(path, MAGIC, &records).map_err(&io)?;
        Ok(Budgets {
            days,
            totals,
            file,
            path: path.to_path_buf(),
            bytes: (MAGIC.len() + records.len() * RECORD) as u64,
        })
    }

    fn apply(&mut self, campaign: u32, day: i32, delta: i64) {
        apply(&mut self.days, &mut self.totals, campaign, day, delta);
    }

    /// Appends `records`; `sync`: and waits until they are on disk.
    fn append(&mut self, records: &[[u8; RECORD]], sync: bool) -> Result<(), StateError> {
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
        (self.days.len() + self.totals.len()) as u64 * RECORD as u64
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
        self.file = rewrite(&self.path, MAGIC, &records).map_err(io_error(&self.path))?;
        self.bytes = (MAGIC.len() + records.len() * RECORD) as u64;
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
fn compacted(days: &mut Map<(u32, i32), Micros>, totals: &Map<u32, Micros>) -> Vec<[u8; RECORD]> {
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
