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
pub mod simulation;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::campaigns::{Budget, Campaign, CatalogueHandle, Micros, Pacing, Pricing};
use crate::config::{OnOutage, StateConfig, TrackingConfig};
use crate::metrics::Metrics;
use crate::tracking::EventKind;
use curve::TrafficCurve;
use gate::{Candidate, Gate, NoIdentity, Runtime, Status};
use identity::{Identifier, Keys};
use ledger::{Ledger, Reservation};
use state::{CapAsk, CapReply, LeaseAsk, State, StateError};

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
    ledger: Ledger,
    /// (campaign, identity fingerprint) → when the visitor is below the cap again.
    at_cap: quick_cache::sync::Cache<(u32, u64), i64>,
    curve: ArcSwap<TrafficCurve>,
    options: Options,
    /// The last tick's `now` (`i64::MIN` before the first): flights of a reloaded catalogue
    /// are judged at it.
    clock: AtomicI64,
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

/// The campaign's day at `now` in `budget`'s time zone: (day number, first second, first second
/// of the next day).
pub fn day_bounds(budget: &Budget, now: i64) -> (i32, i64, i64) {
    let fallback = {
        let day = now.div_euclid(86_400);
        (day as i32, day * 86_400, (day + 1) * 86_400)
    };
    let Ok(ts) = jiff::Timestamp::from_second(now) else {
        return fallback;
    };
    let zoned = ts.to_zoned_datetime(budget.timezone.clone());
    let (Ok(start), Ok(next)) = (
        zoned.start_of_day(),
        zoned.tomorrow().and_then(|t| t.start_of_day()),
    ) else {
        return fallback;
    };
    let offset = i64::from(start.offset().seconds());
    let start = start.timestamp().as_second();
    (
        (start + offset).div_euclid(86_400) as i32,
        start,
        next.timestamp().as_second(),
    )
}

/// A campaign's unit of spend: what one impression (cpm) or click (cpc) costs.
fn unit_cost(campaign: &Campaign) -> Micros {
    match campaign.delivery().pricing {
        Pricing::Cpm => campaign.impression_cost().max(1),
        Pricing::Cpc => campaign.click_cost().max(1),
    }
}

/// Money for messages: `200.00`.
pub fn money(micros: Micros) -> String {
    format!("{}.{:02}", micros / 1_000_000, micros % 1_000_000 / 10_000)
}

/// A window for messages: `24h`, `7d`, `90s`.
fn window(secs: u32) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
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
        let fresh = Arc::new(Gate::build(catalogue.clone(), now, |c| {
            runtimes
                .entry(c.id)
                .or_insert_with(|| Arc::new(Runtime::new(c.id)))
                .clone()
        }));
        runtimes.retain(|id, _| catalogue.campaigns().iter().any(|c| c.id == *id));
        self.metrics.forget_budgets();
        self.gate.store(fresh.clone());
        fresh
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
    /// without capped ones the last candidate wins at once. The charges of the losers are
    /// refunded.
    pub fn settle(
        self: &Arc<Self>,
        gate: &Arc<Gate>,
        candidates: Vec<Candidate>,
        keys: &Keys,
        decision: [u8; 12],
        now: i64,
    ) -> Settle {
        let capped: Vec<CapAsk> = candidates
            .iter()
            .take_while(|c| c.capped)
            .filter_map(|c| {
                let campaign = gate.catalogue.get(c.position)?;
                let cap = campaign.delivery().frequency_cap?;
                Some(CapAsk {
                    campaign: campaign.id,
                    limit: cap.impressions,
                    per_secs: cap.per_secs,
                })
            })
            .collect();
        if capped.is_empty() {
            let winner = candidates.last().copied();
            gate.refund(candidates.into_iter().rev().skip(1));
            return Settle::Done(winner);
        }
        let state = self.state.clone();
        let owned_keys = keys.clone();
        let mut reserve = Box::pin(async move {
            let reply = state.reserve(&owned_keys.0, &capped, decision, now).await;
            (reply, capped, owned_keys)
        });
        if let Poll::Ready((reply, asks, keys)) = poll_once(reserve.as_mut()) {
            return Settle::Done(self.settled(gate, candidates, &asks, reply, &keys));
        }
        let this = self.clone();
        let gate = gate.clone();
        Settle::Pending(Box::pin(async move {
            let (reply, asks, keys) = reserve.await;
            this.settled(&gate, candidates, &asks, reply, &keys)
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
                    }
                }
                match reply.granted {
                    Some(i) => candidates.get(i).copied(),
                    None => uncapped_last,
                }
            }
            Err(e) => {
                tracing::debug!("frequency cap not checked: {e}");
                match self.options.on_outage {
                    OnOutage::Serve => candidates.first().copied(),
                    OnOutage::Hold => uncapped_last,
                }
            }
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

    /// Why `campaign` (at `position` of the current gate's catalogue) is left out for everyone
    /// at `now`, in `rotator explain`'s words; `views` = the visitor's views counting now
    /// against its cap, when known.
    pub fn reason(&self, campaign: &Campaign, now: i64, views: Option<u32>) -> Option<String> {
        let d = &campaign.delivery();
        let date = |t: i64| {
            jiff::Timestamp::from_second(t)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default()
        };
        if let Some(start) = d.flight.start.filter(|s| now < *s) {
            return Some(format!("flight: starts {}", date(start)));
        }
        if let Some(end) = d.flight.end.filter(|e| now > *e) {
            return Some(format!("flight: ended {}", date(end)));
        }
        let runtime = self
            .runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&campaign.id)
            .cloned();
        if let (Some(budget), Some(r)) = (&d.budget, runtime) {
            let book = r.book.lock().unwrap_or_else(|e| e.into_inner());
            match r.status() {
                Status::TotalSpent => {
                    return Some(format!(
                        "budget: total {} of {} spent",
                        money(book.spent_total),
                        money(budget.total.unwrap_or(0))
                    ));
                }
                Status::DailySpent => {
                    return Some(format!(
                        "budget: daily {} of {} spent",
                        money(book.spent_day),
                        money(budget.daily.unwrap_or(0))
                    ));
                }
                _ => {}
            }
            let p = r.admit_probability();
            if p < 1.0 {
                return Some(format!(
                    "pacing: held back (takes part in {:.0} % of auctions; {} of {} target spent)",
                    p * 100.0,
                    money(book.spent_day),
                    money(book.target)
                ));
            }
        }
        if let (Some(cap), Some(views)) = (d.frequency_cap, views)
            && views >= cap.impressions
        {
            return Some(format!(
                "frequency cap: {views} of {} in {}",
                cap.impressions,
                window(cap.per_secs)
            ));
        }
        None
    }

    /// Runs [`Delivery::tick`] every [`TICK`] until `stop` resolves; then gives back the
    /// unused leases.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = interval.tick() => self.tick(crate::tracking::now().into()).await,
            }
        }
        self.give_back().await;
    }

    /// Gives the unused leases back to the state backend (at shutdown).
    pub async fn give_back(&self) {
        let gate = self.gate();
        for (_, campaign, runtime) in gate.limited_campaigns() {
            let left = runtime.balance.swap(0, Ordering::AcqRel);
            let day = runtime.book.lock().unwrap_or_else(|e| e.into_inner()).day;
            if left > 0 && campaign.delivery().budget.is_some() && day != i32::MIN {
                let _ = self
                    .state
                    .refund(campaign.id, Some(day), left as Micros)
                    .await;
            }
        }
    }

    /// One round of bookkeeping at `now`: flights, days, spend, pacing, leases, expired
    /// reservations.
    pub async fn tick(&self, now: i64) {
        self.round(now, true).await;
    }

    /// What a tick at `now` would block (flights, spent budgets) for `rotator explain`, without
    /// taking leases, giving anything back or pacing (pacing lives in the serving nodes). Fails
    /// when the state backend could not say what was spent.
    pub async fn look(&self, now: i64) -> Result<(), StateError> {
        let gate = self.gate();
        for (_, campaign, _) in gate.limited_campaigns() {
            if let Some(budget) = &campaign.delivery().budget {
                self.state
                    .spent(campaign.id, day_bounds(budget, now).0)
                    .await?;
            }
        }
        self.round(now, false).await;
        Ok(())
    }

    async fn round(&self, now: i64, serving: bool) {
        self.clock.store(now, Ordering::Relaxed);
        let gate = self.gate();
        let curve = self.curve.load_full();
        let mut asks = Vec::new();
        let mut askers = Vec::new();
        for (_, campaign, runtime) in gate.limited_campaigns() {
            let mut status = Status::of_flight(&campaign.delivery().flight, now);
            if let Some(budget) = &campaign.delivery().budget
                && status == Status::Open
            {
                status = self
                    .budget_tick(
                        campaign,
                        budget,
                        runtime,
                        (&curve, serving),
                        now,
                        &mut asks,
                        &mut askers,
                    )
                    .await;
            }
            runtime.status.store(status as u8, Ordering::Relaxed);
        }
        gate.refresh_blocked();
        if !serving {
            return;
        }
        if !asks.is_empty() {
            match self.state.lease(&asks).await {
                Ok(grants) => {
                    for (runtime, grant) in askers.iter().zip(grants) {
                        let grant = i64::try_from(grant).unwrap_or(i64::MAX);
                        runtime.balance.fetch_add(grant, Ordering::AcqRel);
                    }
                }
                Err(e) => tracing::debug!("budget leases not renewed: {e}"),
            }
        }
        self.expire(now).await;
    }

    /// One budgeted campaign's tick; returns its status and adds its lease ask. Paces only
    /// when `serving` (not for `rotator explain`).
    #[allow(clippy::too_many_arguments)]
    async fn budget_tick(
        &self,
        campaign: &Campaign,
        budget: &Budget,
        runtime: &Arc<Runtime>,
        (curve, serving): (&TrafficCurve, bool),
        now: i64,
        asks: &mut Vec<LeaseAsk>,
        askers: &mut Vec<Arc<Runtime>>,
    ) -> Status {
        let (day, start, end) = day_bounds(budget, now);
        let old_day = runtime.book.lock().unwrap_or_else(|e| e.into_inner()).day;
        if old_day != day {
            // A new day: the lease left from yesterday goes back to yesterday (and the total).
            let left = runtime.balance.swap(0, Ordering::AcqRel);
            if left > 0 && old_day != i32::MIN {
                let _ = self
                    .state
                    .refund(campaign.id, Some(old_day), left as Micros)
                    .await;
            }
        }
        let spent = self.state.spent(campaign.id, day).await;
        let unit = unit_cost(campaign);
        let balance = runtime.balance.load(Ordering::Acquire);
        let charged = runtime.charged.swap(0, Ordering::Relaxed);
        let (asked, held) = (
            runtime.asked.swap(0, Ordering::Relaxed),
            runtime.held.swap(0, Ordering::Relaxed),
        );
        let mut book = runtime.book.lock().unwrap_or_else(|e| e.into_inner());
        book.day = day;
        if let Ok((spent_day, spent_total)) = spent {
            book.spent_day = spent_day;
            book.spent_total = spent_total;
        }
        let tick = TICK.as_secs_f64();
        book.rate = 0.8 * book.rate + 0.2 * (charged as f64 / tick);
        // What is granted but not yet charged on this node is not spent.
        let committed = book
            .spent_day
            .saturating_sub(Micros::try_from(balance.max(0)).unwrap_or(0));
        let probability = match (budget.pacing, budget.daily) {
            // Spend unknown (the backend did not answer): the last probability stands, rather
            // than reading the node's shrinking lease as a refund.
            (Pacing::Even, Some(_)) if serving && spent.is_err() => runtime.admit_probability(),
            (Pacing::Even, Some(daily)) if serving => {
                let p = book
                    .pacer
                    .update(curve, now, start, end, daily, committed)
                    .clamp(0.0, 1.0);
                book.target = book.pacer.target();
                p
            }
            _ => 1.0,
        };
        runtime.admit.store(
            if probability >= 1.0 {
                u32::MAX
            } else {
                (probability * 4_294_967_296.0) as u32
            },
            Ordering::Relaxed,
        );
        let holdback = if asked == 0 {
            1.0 - probability
        } else {
            held as f64 / asked as f64
        };
        self.metrics
            .set_budget(campaign.id, committed, book.target, holdback);
        let spent_out = |limit: Option<Micros>, spent: Micros| {
            limit.is_some_and(|l| spent.saturating_add(unit) > l) && balance < unit as i64
        };
        if spent_out(budget.total, book.spent_total) {
            return Status::TotalSpent;
        }
        if spent_out(budget.daily, book.spent_day) {
            return Status::DailySpent;
        }
        // A lease is about `lease_seconds` of recent spend, at least ten units; it doubles
        // while the node ran dry, so a busy campaign reaches its pace in a few ticks.
        let starved = balance < unit as i64 && charged > 0;
        let recent = book.rate * f64::from(self.options.lease_seconds);
        let want = (recent as Micros).max(unit * 10);
        let want = if starved { want.max(charged * 2) } else { want };
        // Whole units: a lease with a remainder smaller than one unit could never be spent, so
        // several nodes together would fall short of the budget by up to a unit each.
        let want = want.div_ceil(unit).saturating_mul(unit);
        if balance < (want / 2) as i64 {
            asks.push(LeaseAsk {
                campaign: campaign.id,
                day,
                want: want.saturating_sub(balance.max(0) as Micros),
                daily: budget.daily,
                total: budget.total,
            });
            askers.push(runtime.clone());
        }
        Status::Open
    }

    /// Gives back the charges and views of reservations whose impression never came.
    async fn expire(&self, now: i64) {
        for r in self.ledger.due(now) {
            match self.state.seen_has(&r.id, EventKind::Impression).await {
                Ok(true) => continue,
                Ok(false) => {}
                // Unknown: keep it charged (under-spend rather than overspend).
                Err(_) => continue,
            }
            if r.cost > 0 {
                let _ = self.state.refund(r.campaign, Some(r.day), r.cost).await;
            }
            if let Some(keys) = &r.keys {
                let _ = self.state.release(&keys.0, r.campaign, r.id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
