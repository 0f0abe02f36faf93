//! What the request path reads: per campaign of one catalogue, whether it is blocked and what
//! it takes to admit it into an auction, all in atomics written by the ticker.
//!
//! A campaign without limits costs nothing here: its bit is never blocked nor gated. A gated
//! campaign is admitted by [`Gate::candidates`] one check at a time, cheapest first: the cache of
//! visitors known to be at its cap, pacing's coin, this node's lease (the cost is charged now; a
//! refusal later refunds it), then, where the state backend answers at once (local), the
//! reservation of one of the visitor's views under its cap ([`CapCheck`]).

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::identity::{Keys, LazyIdentity};
use super::pacing::Pacer;
use crate::campaigns::budget::Flight;
use crate::campaigns::{Campaign, Catalogue, Micros, Pricing};
use crate::metrics::Excluded;
use crate::visitor::Visitor;

/// Most capped candidates asked about in one reservation (then the auction settles for the
/// best uncapped one found, or none).
pub const MAX_CAPPED: usize = super::state::MAX_ASKS;

/// Why a campaign is blocked for everyone (the ticker's verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// May serve.
    Open = 0,
    /// Its flight has not started.
    NotStarted = 1,
    /// Its flight has ended.
    Ended = 2,
    /// Today's budget is spent.
    DailySpent = 3,
    /// The total budget is spent.
    TotalSpent = 4,
}

impl Status {
    /// What `flight` says at Unix second `now`.
    pub fn of_flight(flight: &Flight, now: i64) -> Status {
        match (flight.start, flight.end) {
            (Some(s), _) if now < s => Status::NotStarted,
            (_, Some(e)) if now > e => Status::Ended,
            _ => Status::Open,
        }
    }

    fn from_u8(v: u8) -> Status {
        match v {
            1 => Status::NotStarted,
            2 => Status::Ended,
            3 => Status::DailySpent,
            4 => Status::TotalSpent,
            _ => Status::Open,
        }
    }
}

/// The ticker's bookkeeping of one campaign (never touched by requests).
#[derive(Default)]
pub struct Book {
    /// The controller of even pacing.
    pub pacer: Pacer,
    /// The campaign's current day (days since 1970-01-01 in its time zone); `i32::MIN` before
    /// the first tick.
    pub day: i32,
    /// Spend granted today and in total, all nodes (from the state backend).
    pub spent_day: Micros,
    /// Spend granted over the campaign's life.
    pub spent_total: Micros,
    /// This node's spend rate, micro-units per second (moving average; sizes leases).
    pub rate: f64,
    /// The pacing target at the last tick.
    pub target: Micros,
}

/// This node's live state of one campaign with limits; kept across reloads by campaign id.
pub struct Runtime {
    /// Campaign id.
    pub id: u32,
    /// Micro-units this node may still charge; negative when clicks cost more than it held.
    pub balance: AtomicI64,
    /// Pacing: a request takes part when a random `u32` is below this; `u32::MAX` = always.
    pub admit: AtomicU32,
    /// Auctions this campaign reached / was held back from by pacing, since the last tick.
    pub asked: AtomicU64,
    /// See `asked`.
    pub held: AtomicU64,
    /// Charged since the last tick (micro-units).
    pub charged: AtomicU64,
    /// [`Status`] as a `u8`.
    pub status: AtomicU8,
    /// The ticker's side.
    pub book: Mutex<Book>,
}

impl Runtime {
    /// A fresh runtime: no lease, always admitted.
    pub fn new(id: u32) -> Runtime {
        Runtime {
            id,
            balance: AtomicI64::new(0),
            admit: AtomicU32::new(u32::MAX),
            asked: AtomicU64::new(0),
            held: AtomicU64::new(0),
            charged: AtomicU64::new(0),
            status: AtomicU8::new(Status::Open as u8),
            book: Mutex::new(Book {
                day: i32::MIN,
                ..Book::default()
            }),
        }
    }

    /// The ticker's verdict.
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// The probability of taking part in an auction (pacing).
    pub fn admit_probability(&self) -> f64 {
        let a = self.admit.load(Ordering::Relaxed);
        if a == u32::MAX {
            1.0
        } else {
            f64::from(a) / 4_294_967_296.0
        }
    }

    /// Charges `cost` to this node's lease if it holds that much.
    fn charge(&self, cost: Micros) -> bool {
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        let taken = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= cost && b > 0).then(|| b - cost)
            })
            .is_ok();
        if taken {
            self.charged.fetch_add(cost as u64, Ordering::Relaxed);
        }
        taken
    }

    /// Gives back a charge of a candidate that did not win.
    pub fn refund(&self, cost: Micros) {
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        self.balance.fetch_add(cost, Ordering::AcqRel);
        self.charged.fetch_sub(cost as u64, Ordering::Relaxed);
    }

    /// Charges a click's cost whatever the balance (the click happened): may go negative.
    pub fn charge_click(&self, cost: Micros) {
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        self.balance.fetch_sub(cost, Ordering::AcqRel);
        self.charged.fetch_add(cost as u64, Ordering::Relaxed);
    }
}

/// A campaign the auction admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its position in the catalogue.
    pub position: usize,
    /// What was charged to this node's lease for it (refunded unless it wins).
    pub charged: Micros,
    /// Whether it is shown under the visitor's cap: a view is (or must be) reserved for it.
    pub capped: bool,
    /// Whether that view is reserved already ([`Reserve::Reserved`]): it wins.
    pub reserved: bool,
}

/// What [`CapCheck::reserve_now`] did for a capped candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// One of the visitor's views is reserved for it: it wins.
    Reserved,
    /// Not shown: the visitor is at its cap, or the backend failed and `on_outage` holds.
    Refused,
    /// The backend failed and `on_outage` serves: shown without a view counted.
    Unreserved,
    /// The backend needs a round trip: asked once the auction settles, for every capped
    /// candidate found.
    Later,
}

/// The frequency-cap side of one auction, asked about each capped candidate.
pub trait CapCheck {
    /// How a capped candidate is treated for a visitor without identity keys.
    fn no_identity(&self) -> NoIdentity;
    /// Whether the visitor (`keys`) is known to be at `campaign`'s cap (no backend call).
    fn known_full(&self, campaign: u32, keys: &Keys) -> bool;
    /// Reserves one of the visitor's views of `campaign`, if the backend answers at once.
    fn reserve_now(&self, campaign: &Campaign, keys: &Keys) -> Reserve;
}

/// The delivery view of one catalogue.
pub struct Gate {
    /// The catalogue this gate was built for.
    /// (Released through `file_watch::retire_soon` when the gate goes: see `Drop`.)
    pub catalogue: ManuallyDrop<Arc<Catalogue>>,
    /// By position: the runtime of a campaign with limits.
    runtimes: Vec<Option<Arc<Runtime>>>,
    /// Positions blocked for everyone (flight, spent budget).
    blocked: Box<[AtomicU64]>,
    /// Positions that need a check per request (pacing, lease, cap).
    gated: Box<[u64]>,
    /// Whether any campaign has a limit (else the auction runs as if there were none).
    limited: bool,
    /// Whether any campaign has a frequency cap (else no identity is needed).
    capped: bool,
}

/// How a capped candidate is treated when the visitor has no identity keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoIdentity {
    /// Shown without a cap.
    Uncapped,
    /// Not shown.
    Exclude,
}

impl Gate {
    /// The gate of `catalogue`, reusing `runtime(id)` for campaigns with limits. Flights are
    /// judged at `now` (the last tick's time) so a campaign added or moved by a reload does not
    /// serve outside its flight until the next tick; before any tick (`None`) a campaign with a
    /// flight waits for the first one.
    pub fn build(
        catalogue: Arc<Catalogue>,
        now: Option<i64>,
        mut runtime: impl FnMut(&Campaign) -> Arc<Runtime>,
    ) -> Gate {
        let campaigns = catalogue.campaigns();
        let words = catalogue.index().words();
        let mut gated = vec![0u64; words];
        let mut runtimes = Vec::with_capacity(campaigns.len());
        let (mut limited, mut capped) = (false, false);
        for (position, c) in campaigns.iter().enumerate() {
            if c.delivery().is_unlimited() {
                runtimes.push(None);
                continue;
            }
            limited = true;
            capped |= c.delivery().frequency_cap.is_some();
            if c.delivery().budget.is_some() || c.delivery().frequency_cap.is_some() {
                gated[position / 64] |= 1 << (position % 64);
            }
            let r = runtime(c);
            let flight = &c.delivery().flight;
            if flight.start.is_some() || flight.end.is_some() {
                let verdict = now.map_or(Status::NotStarted, |now| Status::of_flight(flight, now));
                // An open flight keeps the budget's verdict; a closed one overrides it.
                if verdict != Status::Open
                    || matches!(r.status(), Status::NotStarted | Status::Ended)
                {
                    r.status.store(verdict as u8, Ordering::Relaxed);
                }
            }
            runtimes.push(Some(r));
        }
        let gate = Gate {
            blocked: (0..words).map(|_| AtomicU64::new(0)).collect(),
            gated: gated.into_boxed_slice(),
            runtimes,
            limited,
            capped,
            catalogue: ManuallyDrop::new(catalogue),
        };
        gate.refresh_blocked();
        gate
    }

    /// Whether any campaign has a delivery limit.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// Whether any campaign has a frequency cap.
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// The runtime at `position`, for campaigns with limits.
    pub fn runtime(&self, position: usize) -> Option<&Arc<Runtime>> {
        self.runtimes.get(position)?.as_ref()
    }

    /// Every campaign with limits: (position, campaign, runtime).
    pub fn limited_campaigns(&self) -> impl Iterator<Item = (usize, &Campaign, &Arc<Runtime>)> {
        self.runtimes
            .iter()
            .enumerate()
            .filter_map(|(p, r)| Some((p, self.catalogue.get(p)?, r.as_ref()?)))
    }

    /// Copies the runtimes' statuses into the blocked bits.
    pub fn refresh_blocked(&self) {
        for (i, word) in self.blocked.iter().enumerate() {
            let mut bits = 0u64;
            for (j, r) in self.runtimes[i * 64..((i + 1) * 64).min(self.runtimes.len())]
                .iter()
                .enumerate()
            {
                if r.as_ref().is_some_and(|r| r.status() != Status::Open) {
                    bits |= 1 << j;
                }
            }
            word.store(bits, Ordering::Relaxed);
        }
    }

    /// The auction under delivery limits: candidates in bid order, each admitted by `caps`' cache,
    /// pacing, this node's lease (charged now) and, where the backend answers at once, the
    /// reservation of the visitor's view; it ends with the first candidate without a cap or with
    /// its view reserved, or after [`MAX_CAPPED`] capped ones left for
    /// [`Delivery::settle`](super::Delivery::settle) to reserve. `placement` `None` is `GET /ad`; `taken`
    /// are positions that won earlier slots of the request (avoided while another campaign is
    /// eligible); `identity` is worked out at the first capped candidate. `excluded` is told each
    /// refusal.
    pub fn candidates(
        &self,
        visitor: &Visitor,
        placement: Option<usize>,
        taken: &[usize],
        identity: Option<&LazyIdentity<'_>>,
        caps: &impl CapCheck,
        mut excluded: impl FnMut(Excluded),
    ) -> Vec<Candidate> {
        let index = self.catalogue.index();
        let mut refused: Vec<usize> = Vec::new();
        let mut found = Vec::new();
        let mut avoid_taken = true;
        loop {
            let skip = |i: usize| {
                let mut w = !self.blocked[i].load(Ordering::Relaxed);
                let lists = [&refused[..], if avoid_taken { taken } else { &[] }];
                for &p in lists.iter().flat_map(|l| l.iter()).filter(|p| *p / 64 == i) {
                    w &= !(1 << (p % 64));
                }
                for c in found.iter().filter(|c: &&Candidate| c.position / 64 == i) {
                    w &= !(1 << (c.position % 64));
                }
                w
            };
            let Some(position) =
                index.best_allowed(visitor, placement, skip, |n| fastrand::usize(..n))
            else {
                if avoid_taken && !taken.is_empty() && found.is_empty() {
                    avoid_taken = false;
                    continue;
                }
                return found;
            };
            let gated = self.gated[position / 64] & (1 << (position % 64)) != 0;
            let (Some(runtime), Some(campaign), true) =
                (self.runtime(position), self.catalogue.get(position), gated)
            else {
                found.push(Candidate {
                    position,
                    charged: 0,
                    capped: false,
                    reserved: false,
                });
                return found;
            };
            match self.admit(campaign, runtime, identity, caps) {
                Ok(candidate) => {
                    let settled = !candidate.capped || candidate.reserved;
                    found.push(Candidate {
                        position,
                        ..candidate
                    });
                    if settled || found.len() >= MAX_CAPPED {
                        return found;
                    }
                }
                Err(reason) => {
                    excluded(reason);
                    refused.push(position);
                }
            }
        }
    }

    /// One gated campaign's checks for one request.
    fn admit(
        &self,
        campaign: &Campaign,
        runtime: &Runtime,
        identity: Option<&LazyIdentity<'_>>,
        caps: &impl CapCheck,
    ) -> Result<Candidate, Excluded> {
        let mut keys = None;
        if campaign.delivery().frequency_cap.is_some() {
            match identity.map(|i| i.keys()).filter(|k| !k.is_empty()) {
                Some(k) if caps.known_full(campaign.id, k) => return Err(Excluded::FrequencyCap),
                Some(k) => keys = Some(k),
                None if caps.no_identity() == NoIdentity::Exclude => {
                    return Err(Excluded::FrequencyCap);
                }
                None => {}
            }
        }
        let mut charged = 0;
        if campaign.delivery().budget.is_some() {
            runtime.asked.fetch_add(1, Ordering::Relaxed);
            let admit = runtime.admit.load(Ordering::Relaxed);
            if admit != u32::MAX && fastrand::u32(..) >= admit {
                runtime.held.fetch_add(1, Ordering::Relaxed);
                return Err(Excluded::Pacing);
            }
            match campaign.delivery().pricing {
                Pricing::Cpm => {
                    let cost = campaign.impression_cost().max(1);
                    if !runtime.charge(cost) {
                        return Err(Excluded::Budget);
                    }
                    charged = cost;
                }
                // A cpc campaign is charged when clicked; it needs some lease left to be shown.
                Pricing::Cpc if runtime.balance.load(Ordering::Acquire) <= 0 => {
                    return Err(Excluded::Budget);
                }
                Pricing::Cpc => {}
            }
        }
        let (capped, reserved) = match keys.map(|k| caps.reserve_now(campaign, k)) {
            None | Some(Reserve::Unreserved) => (false, false),
            Some(Reserve::Later) => (true, false),
            Some(Reserve::Reserved) => (true, true),
            Some(Reserve::Refused) => {
                if charged > 0 {
                    runtime.refund(charged);
                }
                return Err(Excluded::FrequencyCap);
            }
        };
        Ok(Candidate {
            position: 0,
            charged,
            capped,
            reserved,
        })
    }

    /// Gives back the charges of candidates that did not win.
    pub fn refund(&self, losers: impl IntoIterator<Item = Candidate>) {
        for c in losers {
            if c.charged > 0
                && let Some(r) = self.runtime(c.position)
            {
                r.refund(c.charged);
            }
        }
    }
}

/// A gate may hold the last reference to a replaced catalogue (a request or the ticker still
/// held the gate when the reloader retired the catalogue): it is then retired here the same
/// way, dropped off the request path and its memory given back to the system.
impl Drop for Gate {
    fn drop(&mut self) {
        // SAFETY: `catalogue` is taken once, here, and the gate is never used again.
        let catalogue = unsafe { ManuallyDrop::take(&mut self.catalogue) };
        crate::file_watch::retire_soon(catalogue);
    }
}
