//! Per-minute aggregation on the request path.
//!
//! Every decision adds 1 to a row keyed by (minute, country, os, browser, device, campaign,
//! placement, creative); tracking events add impressions, viewables and clicks to the same keys. The
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
    /// Placement id, [`Sym::EMPTY`] for `GET /ad`.
    pub placement: Sym,
    /// Winning creative, 0 for none and for `GET /ad`.
    pub creative_id: u32,
}

impl Hash for RowKey {
    /// Three words instead of one write per field: this hashes on every request. Equal keys
    /// write equal words, as `Eq` requires; the creative is folded into the campaign's half-word
    /// (a creative belongs to one campaign, so this rarely makes two keys collide).
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let country = self.country.map_or(0, |c| {
            let [a, b] = c.letters();
            1 << 16 | u32::from(a) << 8 | u32::from(b)
        });
        let campaign = self.campaign_id ^ self.creative_id.rotate_left(16);
        state.write_u64(u64::from(self.minute) << 32 | u64::from(campaign));
        state.write_u64((self.os.index() as u64) << 32 | self.browser.index() as u64);
        state.write_u64(
            u64::from(country << 8 | self.device.index() as u32) << 32
                | u64::from(self.placement.index() as u32),
        );
    }
}

/// Counts of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Ad requests (`GET /ad`) or slots asked (decisions).
    pub requests: u64,
    /// Impressions: `GET /ad` requests a campaign won, or counted impression beacons.
    pub impressions: u64,
    /// Counted viewable beacons.
    pub viewables: u64,
    /// Counted clicks.
    pub clicks: u64,
    /// Spend of the counted impressions and clicks, micro-units of the currency.
    pub spend: u64,
}

impl Counts {
    /// Adds `other` to these counts (wrapping is impossible in practice: 2^64 events).
    #[inline]
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.impressions += other.impressions;
        self.viewables += other.viewables;
        self.clicks += other.clicks;
        self.spend += other.spend;
    }
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

    /// Adds `counts` to the row of `key` (decisions: one request per slot asked; tracking: one
    /// impression, viewable or click).
    #[inline]
    pub fn add(&self, key: RowKey, counts: Counts) {
        let mut map = self.shard().live.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().add(counts);
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
                merged.entry(key).or_default().add(counts);
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
                placement: k.placement.name().to_string(),
                creative_id: k.creative_id,
                requests: c.requests,
                impressions: c.impressions,
                viewables: c.viewables,
                clicks: c.clicks,
                spend: c.spend,
            })
            .collect();
        rows.sort_by(|a, b| a.key().cmp(&b.key()));
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
            placement: Sym::EMPTY,
            creative_id: 0,
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

    #[test]
    fn add_keeps_placements_and_creatives_apart() {
        let agg = Aggregator::new(2);
        let slot = |placement: &str, creative_id| RowKey {
            placement: Sym::intern(placement),
            creative_id,
            ..key(7)
        };
        agg.record(key(7));
        agg.add(
            slot("top", 701),
            Counts {
                requests: 1,
                ..Counts::default()
            },
        );
        agg.add(
            slot("top", 701),
            Counts {
                impressions: 1,
                viewables: 1,
                ..Counts::default()
            },
        );
        agg.add(
            slot("top", 702),
            Counts {
                clicks: 2,
                spend: 1_500_000,
                ..Counts::default()
            },
        );
        agg.add(
            slot("side", 701),
            Counts {
                requests: 3,
                ..Counts::default()
            },
        );
        let got: Vec<_> = agg
            .drain()
            .into_iter()
            .map(|r| {
                (
                    r.placement,
                    r.creative_id,
                    [r.requests, r.impressions, r.viewables, r.clicks, r.spend],
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (String::new(), 0, [1, 1, 0, 0, 0]),
                ("side".to_string(), 701, [3, 0, 0, 0, 0]),
                ("top".to_string(), 701, [1, 1, 1, 0, 0]),
                ("top".to_string(), 702, [0, 0, 0, 2, 1_500_000]),
            ]
        );
    }
}
