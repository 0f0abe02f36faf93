//! The engine's bookkeeping, once a second ([`Delivery::tick`]): flights, the campaigns' days,
//! spend from the state backend, pacing, leases asked in one batch, and the reservations whose
//! impression never came. Everything here may wait; nothing here runs on a request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::curve::TrafficCurve;
use super::gate::{Runtime, Status};
use super::state::{LeaseAsk, StateError};
use super::{Delivery, TICK};
use crate::campaigns::{Budget, Campaign, Micros, Pacing, Pricing};
use crate::tracking::EventKind;

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

/// A budgeted campaign in its flight, at this tick.
struct Budgeted<'a> {
    campaign: &'a Campaign,
    budget: &'a Budget,
    runtime: &'a Arc<Runtime>,
    /// Its day at this tick: (number, first second, first second of the next day).
    day: (i32, i64, i64),
}

/// A campaign's unit of spend: what one impression (cpm) or click (cpc) costs.
fn unit_cost(campaign: &Campaign) -> Micros {
    match campaign.delivery().pricing {
        Pricing::Cpm => campaign.impression_cost().max(1),
        Pricing::Cpc => campaign.click_cost().max(1),
    }
}

impl Delivery {
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
            if campaign.delivery().budget.is_some() {
                self.refund_lease(runtime).await;
            }
        }
        self.give_back_retired().await;
    }

    /// Gives back the leases of campaigns a reload removed or stripped of their budget.
    async fn give_back_retired(&self) {
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        for runtime in retired {
            self.refund_lease(&runtime).await;
        }
    }

    /// Returns what is left of `runtime`'s lease to its day's spend (nothing before its first
    /// tick: it holds no lease then).
    async fn refund_lease(&self, runtime: &Runtime) {
        let left = runtime.balance.swap(0, Ordering::AcqRel);
        let day = runtime.book.lock().unwrap_or_else(|e| e.into_inner()).day;
        if left > 0 && day != i32::MIN {
            let _ = self
                .state
                .refund(runtime.id, Some(day), left as Micros)
                .await;
        }
    }

    /// One round of bookkeeping at `now`: flights, days, spend, pacing, leases, expired
    /// reservations.
    pub async fn tick(&self, now: i64) {
        let _ = self.round(now, true).await;
    }

    /// What a tick at `now` would block (flights, spent budgets) for `rotator explain`, without
    /// taking leases, giving anything back or pacing (pacing lives in the serving nodes). Fails
    /// when the state backend could not say what was spent.
    pub async fn look(&self, now: i64) -> Result<(), StateError> {
        match self.round(now, false).await {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Returns the first error met reading the spend (the campaigns concerned keep their last
    /// known spend).
    async fn round(&self, now: i64, serving: bool) -> Option<StateError> {
        self.clock.store(now, Ordering::Relaxed);
        let gate = self.gate();
        let curve = self.curve.load_full();
        // Flights and days first; the budgeted campaigns still open then read their spend in
        // batches (one round trip per batch with Redis, not one per campaign).
        let mut open = Vec::new();
        for (_, campaign, runtime) in gate.limited_campaigns() {
            let status = Status::of_flight(&campaign.delivery().flight, now);
            match &campaign.delivery().budget {
                Some(budget) if status == Status::Open => {
                    let (day, start, end) = day_bounds(budget, now);
                    self.new_day(campaign.id, runtime, day).await;
                    open.push(Budgeted {
                        campaign,
                        budget,
                        runtime,
                        day: (day, start, end),
                    });
                }
                _ => runtime.status.store(status as u8, Ordering::Relaxed),
            }
        }
        let batch = self.state.batch_size();
        let mut asks = Vec::new();
        let mut askers = Vec::new();
        let mut failed = None;
        for chunk in open.chunks(batch) {
            let days: Vec<(u32, i32)> = chunk.iter().map(|b| (b.campaign.id, b.day.0)).collect();
            let spent = match self.state.spent_many(&days).await {
                Ok(spent) => Some(spent),
                Err(e) => {
                    tracing::debug!("budget spend not read: {e}");
                    failed.get_or_insert(e);
                    None
                }
            };
            for (i, b) in chunk.iter().enumerate() {
                let spent = spent.as_ref().and_then(|s| s.get(i).copied());
                let status =
                    self.budget_tick(b, spent, (&curve, serving), now, &mut asks, &mut askers);
                b.runtime.status.store(status as u8, Ordering::Relaxed);
            }
        }
        gate.refresh_blocked();
        if !serving {
            return failed;
        }
        self.give_back_retired().await;
        for (asks, askers) in asks.chunks(batch).zip(askers.chunks(batch)) {
            match self.state.lease(asks).await {
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
        failed
    }

    /// On the first tick of a new budget day, gives the lease left from the previous day back
    /// to that day (and the total).
    async fn new_day(&self, campaign: u32, runtime: &Runtime, day: i32) {
        let old_day = runtime.book.lock().unwrap_or_else(|e| e.into_inner()).day;
        if old_day == day {
            return;
        }
        let left = runtime.balance.swap(0, Ordering::AcqRel);
        if left > 0 && old_day != i32::MIN {
            let _ = self
                .state
                .refund(campaign, Some(old_day), left as Micros)
                .await;
        }
    }

    /// One budgeted campaign's tick, given its spend (day, total; `None` when the backend did
    /// not answer); returns its status and adds its lease ask. Paces only when `serving` (not
    /// for `rotator explain`).
    fn budget_tick(
        &self,
        b: &Budgeted<'_>,
        spent: Option<(Micros, Micros)>,
        (curve, serving): (&TrafficCurve, bool),
        now: i64,
        asks: &mut Vec<LeaseAsk>,
        askers: &mut Vec<Arc<Runtime>>,
    ) -> Status {
        let Budgeted {
            campaign,
            budget,
            runtime,
            day: (day, start, end),
        } = *b;
        let unit = unit_cost(campaign);
        let balance = runtime.balance.load(Ordering::Acquire);
        let charged = runtime.charged.swap(0, Ordering::Relaxed);
        let (asked, held) = (
            runtime.asked.swap(0, Ordering::Relaxed),
            runtime.held.swap(0, Ordering::Relaxed),
        );
        let mut book = runtime.book.lock().unwrap_or_else(|e| e.into_inner());
        book.day = day;
        if let Some((spent_day, spent_total)) = spent {
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
            (Pacing::Even, Some(_)) if serving && spent.is_none() => runtime.admit_probability(),
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
