//! Delivery control: which campaigns may take part in an auction right now (flight, budget,
//! pacing, frequency cap), and the bookkeeping of what they spend and show.
//!
//! The request path reads only atomics ([`gate::Gate`]) and, for a capped campaign, asks the
//! state backend to reserve one of the visitor's views (in memory locally: answered at once;
//! one Lua script in Redis). Everything that waits runs in [`Delivery::tick`], once a
//! second: leases of budget from the [`state::State`] (so a request never waits for a budget,
//! and no node spends beyond what it was granted), pacing updates, flights, and the
//! reservations whose impression never came ([`ledger`]).
//!
//! Time is always a parameter (`now`, Unix seconds): the simulation and the tests drive a day
//! in seconds.

pub mod curve;
pub mod explain;
pub mod gate;
pub mod identity;
pub mod learn;
pub mod ledger;
pub mod pacing;
pub mod reasons;
pub mod simulation;
pub mod state;
pub mod ticker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::campaigns::{Campaign, CatalogueHandle, Micros};
use crate::config::{OnOutage, StateConfig, TrackingConfig};
use crate::metrics::{Excluded, Metrics};
use curve::TrafficCurve;
use gate::{Candidate, CapCheck, Gate, NoIdentity, Reserve, Runtime};
use identity::{Identifier, Keys};
use ledger::{Ledger, Reservation};
use smallvec::SmallVec;
use state::{CapAsk, CapReply, MAX_ASKS, State, StateError};
pub use ticker::day_bounds;

/// How often [`Delivery::tick`] runs.
pub const TICK: Duration = Duration::from_secs(1);

/// Entries of the cache of visitors known to be at a campaign's cap.
const CAP_CACHE_ENTRIES: usize = 200_000;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// A lease is about this many seconds of this node's recent spend.
    pub lease_seconds: u32,
    /// Capped campaigns during an outage.
    pub on_outage: OnOutage,
    /// Lifetime of impression URLs: when an unconfirmed reservation is given back.
    pub impression_ttl: u32,
}

/// A capped decision's outcome, now or after the state backend answered.
pub enum Settle {
    /// Decided.
    Done(Option<Candidate>),
    /// Waiting for the state backend.
    Pending(Pin<Box<dyn Future<Output = Option<Candidate>> + Send>>),
}

/// The node's delivery engine.
pub struct Delivery {
    state: Arc<State>,
    identifier: Identifier,
    metrics: Arc<Metrics>,
    catalogue: CatalogueHandle,
    gate: ArcSwap<Gate>,
    build: Mutex<()>,
    runtimes: Mutex<HashMap<u32, Arc<Runtime>>>,
    /// Runtimes of campaigns a reload removed (or stripped of limits): the ticker gives their
    /// unspent leases back.
    retired: Mutex<Vec<Arc<Runtime>>>,
    ledger: Ledger,
    /// (campaign, identity fingerprint) → when the visitor is below the cap again.
    at_cap: quick_cache::sync::Cache<(u32, u64), i64>,
    curve: ArcSwap<TrafficCurve>,
    options: Options,
    /// The last tick's `now` (`i64::MIN` before the first): flights of a reloaded catalogue
    /// are judged at it.
    clock: AtomicI64,
}

/// The frequency-cap side of one decision (id `decision`, at Unix second `now`), as
/// [`Gate::candidates`] asks it: on the local backend each capped candidate's view is reserved
/// on the spot (no cache to consult, nothing left for [`Delivery::settle`]); on Redis the cache
/// of visitors known to be at their cap filters, and one script reserves once the auction is over.
pub struct DecisionCaps<'a> {
    delivery: &'a Delivery,
    decision: [u8; 12],
    now: i64,
}

impl CapCheck for DecisionCaps<'_> {
    fn no_identity(&self) -> NoIdentity {
        self.delivery.no_identity()
    }

    fn known_full(&self, campaign: u32, keys: &Keys) -> bool {
        !self.delivery.state.answers_at_once() && self.delivery.at_cap(campaign, keys, self.now)
    }

    fn reserve_now(&self, campaign: &Campaign, keys: &Keys) -> Reserve {
        let Some(ask) = cap_ask(campaign) else {
            return Reserve::Unreserved;
        };
        let reply = self
            .delivery
            .state
            .reserve_now(&keys.0, &[ask], self.decision, self.now);
        match reply {
            None => Reserve::Later,
            Some(Ok(reply)) if reply.granted.is_some() => Reserve::Reserved,
            Some(Ok(_)) => Reserve::Refused,
            Some(Err(e)) => match self.delivery.cap_unchecked(&e) {
                OnOutage::Serve => Reserve::Unreserved,
                OnOutage::Hold => Reserve::Refused,
            },
        }
    }
}

/// What a reservation asks for `campaign`'s cap; `None` for an uncapped campaign.
fn cap_ask(campaign: &Campaign) -> Option<CapAsk> {
    let cap = campaign.delivery().frequency_cap?;
    Some(CapAsk {
        campaign: campaign.id,
        limit: cap.impressions,
        per_secs: cap.per_secs,
    })
}

/// A fingerprint of a visitor's identity keys (the cap cache's key).
fn fingerprint(keys: &Keys) -> u64 {
    keys.0.iter().fold(0x9e37_79b9_7f4a_7c15, |h, k| {
        (h ^ k).wrapping_mul(0x100_0000_01b3).rotate_left(17)
    })
}

/// Polls a future once: its output if it is ready (the local backend never waits), so a
/// decision that needs no round trip is answered without a task or an allocation.
pub fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

impl Options {
    /// The options of `[state]` and `[tracking]`.
    pub fn from_config(state: &StateConfig, tracking: &TrackingConfig) -> Options {
        Options {
            lease_seconds: state.lease_seconds.max(1),
            on_outage: state.on_outage,
            impression_ttl: u32::try_from(tracking.impression_ttl.as_secs()).unwrap_or(u32::MAX),
        }
    }
}

impl Delivery {
    /// An engine over `state` for the campaigns of `catalogue`.
    pub fn new(
        state: Arc<State>,
        identifier: Identifier,
        catalogue: CatalogueHandle,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> Delivery {
        let mut runtimes = HashMap::new();
        let gate = Gate::build(catalogue.load_full(), None, |c| {
            runtimes
                .entry(c.id)
                .or_insert_with(|| Arc::new(Runtime::new(c.id)))
                .clone()
        });
        Delivery {
            state,
            identifier,
            metrics,
            catalogue,
            gate: ArcSwap::from_pointee(gate),
            build: Mutex::new(()),
            runtimes: Mutex::new(runtimes),
            retired: Mutex::new(Vec::new()),
            ledger: Ledger::default(),
            at_cap: quick_cache::sync::Cache::new(CAP_CACHE_ENTRIES),
            curve: ArcSwap::from_pointee(TrafficCurve::flat()),
            options,
            clock: AtomicI64::new(i64::MIN),
        }
    }

    /// The state backend.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Who visitors are.
    pub fn identifier(&self) -> &Identifier {
        &self.identifier
    }

    /// Replaces the expected traffic curve (learned from the statistics sink).
    pub fn set_curve(&self, curve: TrafficCurve) {
        self.curve.store(Arc::new(curve));
    }

    /// The gate of the current catalogue (built on first use after a reload).
    #[inline]
    pub fn gate(&self) -> Arc<Gate> {
        let catalogue = self.catalogue.load();
        let gate = self.gate.load_full();
        if Arc::ptr_eq(&gate.catalogue, &catalogue) {
            return gate;
        }
        let _building = self.build.lock().unwrap_or_else(|e| e.into_inner());
        let gate = self.gate.load_full();
        if Arc::ptr_eq(&gate.catalogue, &catalogue) {
            return gate;
        }
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        let catalogue = self.catalogue.load_full();
        let now = self.clock.load(Ordering::Relaxed);
        let now = (now != i64::MIN).then_some(now);
        // Runtimes of campaigns still there are kept (their leases, pacing); the others dropped.
        let mut kept = HashMap::new();
        let fresh = Arc::new(Gate::build(catalogue, now, |c| {
            let runtime = runtimes
                .remove(&c.id)
                .unwrap_or_else(|| Arc::new(Runtime::new(c.id)));
            kept.insert(c.id, runtime.clone());
            runtime
        }));
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(runtimes.drain().map(|(_, runtime)| runtime));
        *runtimes = kept;
        self.metrics.forget_budgets();
        // The old gate retires its catalogue when it goes (see `Gate`'s `Drop`).
        self.gate.store(fresh.clone());
        fresh
    }

    /// What a decision does with capped campaigns when a reservation failed with `e`.
    fn cap_unchecked(&self, e: &StateError) -> OnOutage {
        tracing::debug!("frequency cap not checked: {e}");
        self.options.on_outage
    }

    /// How one decision's auction checks frequency caps ([`Gate::candidates`]).
    pub fn caps(&self, decision: [u8; 12], now: i64) -> DecisionCaps<'_> {
        DecisionCaps {
            delivery: self,
            decision,
            now,
        }
    }

    /// Whether `keys` are known to be at `campaign`'s cap at `now` (no backend call).
    pub fn at_cap(&self, campaign: u32, keys: &Keys, now: i64) -> bool {
        self.at_cap
            .get(&(campaign, fingerprint(keys)))
            .is_some_and(|until| until > now)
    }

    /// How capped campaigns are treated for a visitor without identity.
    pub fn no_identity(&self) -> NoIdentity {
        match self.identifier.fallback() {
            crate::config::IdentityFallback::Exclude => NoIdentity::Exclude,
            _ => NoIdentity::Uncapped,
        }
    }

    /// Settles an auction's `candidates` (from [`Gate::candidates`]): reserves a view of the
    /// first capped one with room for the visitor (`keys`), under the decision id `decision`;
    /// without capped ones left to reserve (none, or the last one's view reserved by the gate,
    /// as always on the local backend) the last candidate wins at once. Only a backend with a
    /// round trip (Redis) leaves asks, so only it makes the decision wait. The charges of the
    /// losers are refunded.
    pub fn settle(
        self: &Arc<Self>,
        gate: &Arc<Gate>,
        candidates: Vec<Candidate>,
        keys: &Keys,
        decision: [u8; 12],
        now: i64,
    ) -> Settle {
        let capped: SmallVec<[CapAsk; MAX_ASKS]> = candidates
            .iter()
            .take_while(|c| c.capped && !c.reserved)
            .filter_map(|c| cap_ask(gate.catalogue.get(c.position)?))
            .collect();
        if capped.is_empty() {
            let winner = candidates.last().copied();
            gate.refund(candidates.into_iter().rev().skip(1));
            return Settle::Done(winner);
        }
        let this = self.clone();
        let gate = gate.clone();
        let keys = keys.clone();
        Settle::Pending(Box::pin(async move {
            let reply = this.state.reserve(&keys.0, &capped, decision, now).await;
            this.settled(&gate, candidates, &capped, reply, &keys)
        }))
    }

    fn settled(
        &self,
        gate: &Gate,
        candidates: Vec<Candidate>,
        asks: &[CapAsk],
        reply: Result<CapReply, StateError>,
        keys: &Keys,
    ) -> Option<Candidate> {
        let uncapped_last = candidates.last().filter(|c| !c.capped).copied();
        let winner = match reply {
            Ok(reply) => {
                for (ask, until) in asks.iter().zip(&reply.full_until) {
                    if let Some(until) = until {
                        self.at_cap
                            .insert((ask.campaign, fingerprint(keys)), *until);
                        // Counted like the gate's refusals (the cache's, or the local backend's).
                        self.metrics.observe_excluded(Excluded::FrequencyCap);
                    }
                }
                match reply.granted {
                    Some(i) => candidates.get(i).copied(),
                    None => uncapped_last,
                }
            }
            Err(e) => match self.cap_unchecked(&e) {
                OnOutage::Serve => candidates.first().copied(),
                OnOutage::Hold => uncapped_last,
            },
        };
        gate.refund(candidates.into_iter().filter(|c| Some(*c) != winner));
        winner
    }

    /// Keeps a slot decision's charge and reserved view until its impression is counted; given
    /// back by the ticker if it never is.
    pub fn hold(&self, gate: &Gate, won: &Candidate, keys: &Keys, decision: [u8; 12], now: i64) {
        let Some(campaign) = gate.catalogue.get(won.position) else {
            return;
        };
        if won.charged == 0 && !won.capped {
            return;
        }
        let day = campaign
            .delivery()
            .budget
            .as_ref()
            .map_or(0, |b| day_bounds(b, now).0);
        self.ledger.push(Reservation {
            id: decision,
            expires: now + i64::from(self.options.impression_ttl),
            campaign: campaign.id,
            day,
            cost: won.charged,
            keys: won.capped.then(|| keys.clone()),
        });
    }

    /// Charges a counted click of a cpc campaign to this node's lease.
    pub fn charge_click(&self, campaign: u32, cost: Micros) {
        if cost == 0 {
            return;
        }
        let runtime = self
            .runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&campaign)
            .cloned();
        if let Some(r) = runtime {
            r.charge_click(cost);
        }
    }
}

#[cfg(test)]
mod tests;
