//! Per-minute aggregation on the request path.
//!
//! Every decision adds 1 to a row keyed by (minute, country, os, browser, device, campaign). The
//! Go server kept one map behind one mutex; here each worker thread has its own shard (assigned
//! on its first request), so the mutex it takes is practically never contended, and no lock is
//! held across I/O. The key is `Copy` (interned names), so a known key costs no allocation.
//!
//! Draining swaps each shard's map with an empty one that kept its capacity from the previous
//! flush ("spare"), so after the first minutes the request path stops allocating.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Row;
use crate::visitor::geoip::Country;
use crate::visitor::symbol::Sym;
use crate::visitor::user_agent::Device;

/// The key of one statistics row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKey {
    /// Start of the minute, Unix seconds.
    pub minute: u32,
    /// Country, if known.
    pub country: Option<Country>,
    /// OS family.
    pub os: Sym,
    /// Browser family.
    pub browser: Sym,
    /// Device type.
    pub device: Device,
    /// Winning campaign, 0 for none.
    pub campaign_id: u32,
}

impl Hash for RowKey {
    /// Three words instead of one write per field: this hashes on every request. Equal keys
    /// write equal words, as `Eq` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let country = self.country.map_or(0, |c| {
            let [a, b] = c.letters();
            1 << 16 | u32::from(a) << 8 | u32::from(b)
        });
        state.write_u64(u64::from(self.minute) << 32 | u64::from(self.campaign_id));
        state.write_u64((self.os.index() as u64) << 32 | self.browser.index() as u64);
        state.write_u32(country << 8 | self.device.index() as u32);
    }
}

/// Counts of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Ad requests.
    pub requests: u64,
    /// Requests a campaign won.
    pub impressions: u64,
}

/// foldhash: the key is a few small integers, and SipHash (std's default, built against
/// hash-flooding) showed up in profiles; keys come from the bounded symbol table, not from
/// attacker-chosen bytes.
type Map = HashMap<RowKey, Counts, foldhash::fast::RandomState>;

/// One shard, padded to its own cache lines so two threads' shards never share one.
#[repr(align(128))]
struct Shard {
    live: Mutex<Map>,
    spare: Mutex<Map>,
}

/// Sharded per-minute counters.
pub struct Aggregator {
    shards: Box<[Shard]>,
    next: AtomicUsize,
}

thread_local! {
    /// This thread's shard index; `usize::MAX` until its first record.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The current minute, Unix seconds.
pub fn current_minute() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs - secs % 60) as u32
}

impl Aggregator {
    /// An aggregator with `shards` shards (at least 1); use about twice the worker threads.
    pub fn new(shards: usize) -> Aggregator {
        let shards = (0..shards.max(1))
            .map(|_| Shard {
                live: Mutex::new(Map::default()),
                spare: Mutex::new(Map::default()),
            })
            .collect();
        Aggregator {
            shards,
            next: AtomicUsize::new(0),
        }
    }

    fn shard(&self) -> &Shard {
        let index = SHARD.with(|s| {
            if s.get() == usize::MAX {
                s.set(self.next.fetch_add(1, Ordering::Relaxed));
            }
            s.get()
        });
        &self.shards[index % self.shards.len()]
    }

    /// Counts one request (and one impression when a campaign won).
    #[inline]
    pub fn record(&self, key: RowKey) {
        let mut map = self.shard().live.lock().unwrap_or_else(|e| e.into_inner());
        let counts = map.entry(key).or_default();
        counts.requests += 1;
        counts.impressions += u64::from(key.campaign_id != 0);
    }

    /// Takes every row counted so far, merged across shards, as plain rows.
    pub fn drain(&self) -> Vec<Row> {
        let mut merged = Map::default();
        for shard in self.shards.iter() {
            let mut spare = shard.spare.lock().unwrap_or_else(|e| e.into_inner());
            {
                let mut live = shard.live.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut *live, &mut *spare);
            }
            for (key, counts) in spare.drain() {
                let m = merged.entry(key).or_default();
                m.requests += counts.requests;
                m.impressions += counts.impressions;
            }
        }
        let mut rows: Vec<Row> = merged
            .into_iter()
            .map(|(k, c)| Row {
                ts: k.minute,
                country: k
                    .country
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default(),
                os: k.os.name().to_string(),
                browser: k.browser.name().to_string(),
                device: k.device.as_str().to_string(),
                campaign_id: k.campaign_id,
                requests: c.requests,
                impressions: c.impressions,
                clicks: 0,
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                a.ts,
                &a.country,
                &a.os,
                &a.browser,
                &a.device,
                a.campaign_id,
            )
                .cmp(&(
                    b.ts,
                    &b.country,
                    &b.os,
                    &b.browser,
                    &b.device,
                    b.campaign_id,
                ))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(campaign_id: u32) -> RowKey {
        RowKey {
            minute: 120,
            country: Country::parse("DE"),
            os: Sym::intern("Windows"),
            browser: Sym::intern("Chrome"),
            device: Device::Desktop,
            campaign_id,
        }
    }

    #[test]
    fn counts_from_many_threads_add_up_exactly() {
        let agg = Arc::new(Aggregator::new(4));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let agg = agg.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        agg.record(key((i + t) % 3));
                    }
                })
            })
            .collect();
        let mut drained = Vec::new();
        // Drain while threads run: nothing may be lost or counted twice across drains.
        while threads.iter().any(|t| !t.is_finished()) {
            drained.extend(agg.drain());
        }
        for t in threads {
            t.join().unwrap();
        }
        drained.extend(agg.drain());
        let requests: u64 = drained.iter().map(|r| r.requests).sum();
        let impressions: u64 = drained.iter().map(|r| r.impressions).sum();
        assert_eq!(requests, 80_000);
        let none: u64 = drained
            .iter()
            .filter(|r| r.campaign_id == 0)
            .map(|r| r.requests)
            .sum();
        assert_eq!(impressions, 80_000 - none);
        assert!(
            drained
                .iter()
                .all(|r| r.country == "DE" && r.device == "desktop" && r.ts == 120)
        );
        assert!(agg.drain().is_empty());
    }
}
