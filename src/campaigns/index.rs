//! The targeting index: for each dimension and value, the set of campaigns that accept it.
//!
//! Sets are bitsets over catalogue positions, and positions are sorted by bid (highest first).
//! A visitor's eligible set is the AND, over the four dimensions, of (campaigns accepting any
//! value | campaigns naming this value); the first set bit is the highest bid. The auction walks
//! the words in order and stops at the first non-zero one, so it touches a few cache lines even
//! with 10,000 campaigns, and it never allocates.

use super::{Campaign, Placement};
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
///
/// Values are small dense keys (a symbol's number, a country's two letters), so finding a
/// value's set is an array index, not a hash lookup: this runs four times per request.
#[derive(Debug)]
struct Dimension {
    any: Bits,
    /// By key: 1 + the position in `sets` of the key's set, 0 when no campaign names it.
    slots: Vec<u32>,
    sets: Vec<Bits>,
}

impl Dimension {
    fn new(words: usize) -> Self {
        Dimension {
            any: Bits::new(words),
            slots: Vec::new(),
            sets: Vec::new(),
        }
    }

    fn add(&mut self, position: usize, keys: &[usize], words: usize) {
        if keys.is_empty() {
            self.any.set(position);
        }
        for &key in keys {
            if self.slots.len() <= key {
                self.slots.resize(key + 1, 0);
            }
            if self.slots[key] == 0 {
                self.sets.push(Bits::new(words));
                self.slots[key] = self.sets.len() as u32;
            }
            let set = self.slots[key] as usize - 1;
            self.sets[set].set(position);
        }
    }

    fn get(&self, key: usize) -> Option<&Bits> {
        match self.slots.get(key) {
            Some(&slot) if slot > 0 => self.sets.get(slot as usize - 1),
            _ => None,
        }
    }
}

/// A country's dense key, `0..26 * 26`.
fn country_key(country: Country) -> usize {
    match country.letters() {
        [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => {
            usize::from(a - b'A') * 26 + usize::from(b - b'A')
        }
        // Never built (a Country holds two letters); a key no campaign can name.
        _ => usize::MAX,
    }
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
    countries: Dimension,
    browsers: Dimension,
    os: Dimension,
    devices: [Bits; Device::ALL.len()],
    /// The empty set, standing in for a value no campaign names.
    none: Bits,
    /// For each position, the end of its run of equal bids (exclusive).
    run_end: Vec<u32>,
    /// By placement position: the campaigns that may fill it (active, targeting it or any
    /// placement, with a creative that fits).
    placements: Vec<Bits>,
}

/// The sets relevant to one visitor, looked up once per auction; all `words` long.
struct Lookup<'a> {
    any_country: &'a [u64],
    country: &'a [u64],
    any_browser: &'a [u64],
    browser: &'a [u64],
    browser_group: &'a [u64],
    any_os: &'a [u64],
    os: &'a [u64],
    device: &'a [u64],
}

impl Lookup<'_> {
    #[inline]
    fn eligible(&self, i: usize) -> u64 {
        (self.any_country[i] | self.country[i])
            & (self.any_browser[i] | self.browser[i] | self.browser_group[i])
            & (self.any_os[i] | self.os[i])
            & self.device[i]
    }
}

impl TargetingIndex {
    /// Indexes the active campaigns of `campaigns` (already sorted by bid, highest first) and
    /// which of them may fill each of `placements`.
    pub fn build(campaigns: &[Campaign], placements: &[Placement]) -> TargetingIndex {
        let words = campaigns.len().div_ceil(64).max(1);
        let mut index = TargetingIndex {
            words,
            countries: Dimension::new(words),
            browsers: Dimension::new(words),
            os: Dimension::new(words),
            devices: Device::ALL.map(|_| Bits::new(words)),
            none: Bits::new(words),
            run_end: run_ends(campaigns),
            placements: placements.iter().map(|_| Bits::new(words)).collect(),
        };
        for (set, placement) in index.placements.iter_mut().zip(placements) {
            for (position, c) in campaigns.iter().enumerate().filter(|(_, c)| c.active) {
                let targeted = c.placements.is_empty() || c.placements.contains(&placement.id);
                if targeted && c.creatives.iter().any(|cr| placement.fits(cr)) {
                    set.set(position);
                }
            }
        }
        for (position, c) in campaigns.iter().enumerate().filter(|(_, c)| c.active) {
            let t = &c.targeting;
            let countries: Vec<usize> = t.countries.iter().map(|c| country_key(*c)).collect();
            index.countries.add(position, &countries, words);
            let browsers: Vec<usize> = t
                .browsers
                .iter()
                .map(|b| Sym::intern_lowercase(b).index())
                .collect();
            index.browsers.add(position, &browsers, words);
            let os: Vec<usize> =
                t.os.iter()
                    .map(|o| Sym::intern_lowercase(o).index())
                    .collect();
            index.os.add(position, &os, words);
            for device in Device::ALL {
                if t.devices.is_empty() || t.devices.contains(&device) {
                    index.devices[device.index()].set(position);
                }
            }
        }
        index
    }

    /// The words of `set`, or of the empty set.
    fn or_none<'a>(&'a self, set: Option<&'a Bits>) -> &'a [u64] {
        &set.unwrap_or(&self.none).0
    }

    #[inline]
    fn lookup(&self, visitor: &Visitor) -> Lookup<'_> {
        let a = &visitor.agent;
        Lookup {
            any_country: &self.countries.any.0,
            country: self.or_none(
                visitor
                    .country
                    .and_then(|c| self.countries.get(country_key(c))),
            ),
            any_browser: &self.browsers.any.0,
            browser: self.or_none(self.browsers.get(a.browser_key.index())),
            browser_group: self.or_none(if a.browser_group == a.browser_key {
                None
            } else {
                self.browsers.get(a.browser_group.index())
            }),
            any_os: &self.os.any.0,
            os: self.or_none(self.os.get(a.os_key.index())),
            device: &self.devices[a.device.index()].0,
        }
    }

    /// The position of the highest-bidding campaign that targets `visitor`, equal top bids
    /// chosen uniformly at random with `pick(n)` returning a number in `0..n`.
    #[inline]
    pub fn best(&self, visitor: &Visitor, pick: impl FnOnce(usize) -> usize) -> Option<usize> {
        let lookup = self.lookup(visitor);
        self.best_of(|i| lookup.eligible(i), pick)
    }

    /// Like [`TargetingIndex::best`], among the campaigns that may fill the placement at
    /// position `placement` and are not at a position in `taken`.
    pub fn best_in_placement(
        &self,
        visitor: &Visitor,
        placement: usize,
        taken: &[usize],
        pick: impl FnOnce(usize) -> usize,
    ) -> Option<usize> {
        let lookup = self.lookup(visitor);
        let fills = &self.placements.get(placement)?.0;
        self.best_of(
            |i| {
                let mut w = lookup.eligible(i) & fills[i];
                for &p in taken.iter().filter(|p| *p / 64 == i) {
                    w &= !(1 << (p % 64));
                }
                w
            },
            pick,
        )
    }

    /// Like [`TargetingIndex::best`] (`placement` `None`) or
    /// [`TargetingIndex::best_in_placement`], among the positions whose bit is set in word `i`
    /// of `allowed(i)`: delivery limits and campaigns already taken or refused.
    #[inline]
    pub fn best_allowed(
        &self,
        visitor: &Visitor,
        placement: Option<usize>,
        allowed: impl Fn(usize) -> u64,
        pick: impl FnOnce(usize) -> usize,
    ) -> Option<usize> {
        let lookup = self.lookup(visitor);
        match placement {
            None => self.best_of(|i| lookup.eligible(i) & allowed(i), pick),
            Some(p) => {
                let fills = &self.placements.get(p)?.0;
                self.best_of(|i| lookup.eligible(i) & fills[i] & allowed(i), pick)
            }
        }
    }

    /// Words of the bit sets over positions (for masks passed to
    /// [`TargetingIndex::best_allowed`]).
    pub fn words(&self) -> usize {
        self.words
    }

    /// The highest set position of the set whose word `i` is `eligible(i)`, equal bids picked
    /// at random.
    #[inline]
    fn best_of(
        &self,
        eligible: impl Fn(usize) -> u64,
        pick: impl FnOnce(usize) -> usize,
    ) -> Option<usize> {
        let (first_word, bits) = (0..self.words)
            .map(|i| (i, eligible(i)))
            .find(|(_, w)| *w != 0)?;
        let first = first_word * 64 + bits.trailing_zeros() as usize;
        let run_end = self.run_end[first] as usize;
        if run_end == first + 1 {
            return Some(first);
        }
        // Equal top bids are adjacent: count the eligible ones in [first, run_end), then pick.
        let masked = |i: usize| {
            let (lo, mut w) = (i * 64, eligible(i));
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
