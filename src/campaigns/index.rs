//! The targeting index: for each dimension and value, the set of campaigns that accept it.
//!
//! Sets are bitsets over catalogue positions, and positions are sorted by bid (highest first).
//! A visitor's eligible set is the AND, over the four dimensions, of (campaigns accepting any
//! value | campaigns naming this value); the first set bit is the highest bid. The auction walks
//! the words in order and stops at the first non-zero one, so it touches a few cache lines even
//! with 10,000 campaigns, and it never allocates.

use std::collections::HashMap;

use super::Campaign;
use crate::visitor::Visitor;
use crate::visitor::geoip::Country;
use crate::visitor::symbol::Sym;
use crate::visitor::user_agent::Device;

/// A set of catalogue positions.
#[derive(Debug, Clone)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(words: usize) -> Bits {
        Bits(vec![0; words].into_boxed_slice())
    }

    fn set(&mut self, position: usize) {
        self.0[position / 64] |= 1 << (position % 64);
    }
}

/// One targeting dimension: who accepts any value, and who accepts each named value.
#[derive(Debug)]
struct Dimension<K> {
    any: Bits,
    /// foldhash: keys are interned ids and country codes, looked up on every request.
    by_value: HashMap<K, Bits, foldhash::fast::RandomState>,
}

impl<K: std::hash::Hash + Eq + Copy> Dimension<K> {
    fn new(words: usize) -> Self {
        Dimension {
            any: Bits::new(words),
            by_value: HashMap::default(),
        }
    }

    fn add(&mut self, position: usize, values: &[K], words: usize) {
        if values.is_empty() {
            self.any.set(position);
        }
        for v in values {
            self.by_value
                .entry(*v)
                .or_insert_with(|| Bits::new(words))
                .set(position);
        }
    }

    fn get(&self, value: K) -> Option<&Bits> {
        self.by_value.get(&value)
    }
}

/// Word `i` of an optional set (absent = empty).
#[inline]
fn word(bits: Option<&Bits>, i: usize) -> u64 {
    bits.map_or(0, |b| b.0[i])
}

/// For each position, where its run of equal bids ends (campaigns are sorted by bid).
fn run_ends(campaigns: &[Campaign]) -> Vec<u32> {
    let mut ends = vec![campaigns.len() as u32; campaigns.len()];
    for p in (0..campaigns.len().saturating_sub(1)).rev() {
        if campaigns[p].bid != campaigns[p + 1].bid {
            ends[p] = (p + 1) as u32;
        } else {
            ends[p] = ends[p + 1];
        }
    }
    ends
}

/// The index over one catalogue.
#[derive(Debug)]
pub struct TargetingIndex {
    words: usize,
    countries: Dimension<Country>,
    browsers: Dimension<Sym>,
    os: Dimension<Sym>,
    devices: [Bits; Device::ALL.len()],
    /// For each position, the end of its run of equal bids (exclusive).
    run_end: Vec<u32>,
}

/// The sets relevant to one visitor, looked up once per auction.
struct Lookup<'a> {
    any_country: &'a Bits,
    country: Option<&'a Bits>,
    any_browser: &'a Bits,
    browser: Option<&'a Bits>,
    browser_group: Option<&'a Bits>,
    any_os: &'a Bits,
    os: Option<&'a Bits>,
    device: &'a Bits,
}

impl Lookup<'_> {
    #[inline]
    fn eligible(&self, i: usize) -> u64 {
        (self.any_country.0[i] | word(self.country, i))
            & (self.any_browser.0[i] | word(self.browser, i) | word(self.browser_group, i))
            & (self.any_os.0[i] | word(self.os, i))
            & self.device.0[i]
    }
}

impl TargetingIndex {
    /// Indexes the active campaigns of `campaigns` (already sorted by bid, highest first).
    pub fn build(campaigns: &[Campaign]) -> TargetingIndex {
        let words = campaigns.len().div_ceil(64).max(1);
        let mut index = TargetingIndex {
            words,
            countries: Dimension::new(words),
            browsers: Dimension::new(words),
            os: Dimension::new(words),
            devices: Device::ALL.map(|_| Bits::new(words)),
            run_end: run_ends(campaigns),
        };
        for (position, c) in campaigns.iter().enumerate().filter(|(_, c)| c.active) {
            let t = &c.targeting;
            index.countries.add(position, &t.countries, words);
            let browsers: Vec<Sym> = t
                .browsers
                .iter()
                .map(|b| Sym::intern_lowercase(b))
                .collect();
            index.browsers.add(position, &browsers, words);
            let os: Vec<Sym> = t.os.iter().map(|o| Sym::intern_lowercase(o)).collect();
            index.os.add(position, &os, words);
            for device in Device::ALL {
                if t.devices.is_empty() || t.devices.contains(&device) {
                    index.devices[device.index()].set(position);
                }
            }
        }
        index
    }

    fn lookup(&self, visitor: &Visitor) -> Lookup<'_> {
        let a = &visitor.agent;
        Lookup {
            any_country: &self.countries.any,
            country: visitor.country.and_then(|c| self.countries.get(c)),
            any_browser: &self.browsers.any,
            browser: self.browsers.get(a.browser_key),
            browser_group: if a.browser_group == a.browser_key {
                None
            } else {
                self.browsers.get(a.browser_group)
            },
            any_os: &self.os.any,
            os: self.os.get(a.os_key),
            device: &self.devices[a.device.index()],
        }
    }

    /// The position of the highest-bidding campaign that targets `visitor`, equal top bids
    /// chosen uniformly at random with `pick(n)` returning a number in `0..n`.
    pub fn best(&self, visitor: &Visitor, pick: impl FnOnce(usize) -> usize) -> Option<usize> {
        let lookup = self.lookup(visitor);
        let (first_word, bits) = (0..self.words)
            .map(|i| (i, lookup.eligible(i)))
            .find(|(_, w)| *w != 0)?;
        let first = first_word * 64 + bits.trailing_zeros() as usize;
        let run_end = self.run_end[first] as usize;
        if run_end == first + 1 {
            return Some(first);
        }
        // Equal top bids are adjacent: count the eligible ones in [first, run_end), then pick.
        let masked = |i: usize| {
            let (lo, mut w) = (i * 64, lookup.eligible(i));
            if lo < first {
                w &= u64::MAX << (first - lo);
            }
            if lo + 64 > run_end {
                w &= (1u64 << (run_end - lo)) - 1;
            }
            w
        };
        let words = first_word..=(run_end - 1) / 64;
        let tied: u32 = words.clone().map(|i| masked(i).count_ones()).sum();
        let mut chosen = pick(tied as usize) as u32;
        for i in words {
            let mut w = masked(i);
            if chosen < w.count_ones() {
                for _ in 0..chosen {
                    w &= w - 1;
                }
                return Some(i * 64 + w.trailing_zeros() as usize);
            }
            chosen -= w.count_ones();
        }
        Some(first)
    }

    /// Every eligible position, highest bid first (tests check it against `auction::explain`).
    pub fn eligible(&self, visitor: &Visitor) -> Vec<usize> {
        let lookup = self.lookup(visitor);
        (0..self.run_end.len())
            .filter(|p| lookup.eligible(p / 64) & (1 << (p % 64)) != 0)
            .collect()
    }
}
