//! Even pacing: in how many of its auctions a campaign takes part, so that its daily budget is
//! spent along the day's expected traffic, neither early nor short.
//!
//! # The controller in plain words
//!
//! The delivery engine asks the [`Pacer`] about once a second ([`Pacer::update`]), telling it the
//! time and what the campaign has spent today. The answer is a probability `p`: until the next
//! update the campaign takes part in each auction with probability `p` and is held back
//! otherwise. The answer comes from three ideas.
//!
//! 1. **A pace, worked out again every second.** What is left of today's budget is spread over
//!    what is left of today's expected traffic (the [`TrafficCurve`]). If 40 % of the budget is
//!    left and 30 % of the day's traffic is still to come, the campaign should spend 40/30 of the
//!    budget per day's worth of traffic from now on. Spend that fell behind (at night, when there
//!    was not enough traffic; during a dip) is made up a little at a time over the rest of the day;
//!    spend that ran ahead is given back the same way. This is the feedback: every second the pace
//!    starts from the actual spend, not from a schedule fixed in the morning.
//! 2. **A measured capacity.** What the campaign would spend if it took part in every auction is
//!    not known in advance: it depends on the traffic right now, on the competition, on how many
//!    decisions become counted impressions. The pacer measures it: the spend that came in, divided
//!    by the probability it had answered times the traffic the curve expected meanwhile, averaged
//!    over the last sixty or so updates that brought spend ([`CAPACITY_WINDOW_SPENDS`]; about a
//!    minute for a busy campaign, longer for rare clicks, so the average always rests on enough
//!    events; an update that brings k times the usual spend counts as k of them). The result is
//!    the campaign's *capacity*: what full participation would spend over a whole day's traffic.
//!    Then `p` = pace / capacity, between 0 and 1. When the traffic follows the curve the
//!    capacity stays put and so does `p`; when traffic surges beyond what the curve predicted,
//!    the measured capacity goes up and `p` down within seconds; when traffic dips, `p` goes up
//!    (at most to 1).
//! 3. **Limits.** Catching up never asks for more than [`MAX_CATCH_UP`] times the day's planned
//!    pace, so a deficit never crowds into one hour; once the daily budget is spent, `p` is 0.
//!    Until the capacity is measured, `p` starts low and doubles every [`RAMP_SECS`]: spend
//!    arrives late, and a campaign taking part in everything until the first bill came in would
//!    overspend for as long as the delay.
//!
//! Several nodes pacing one campaign each run a pacer and pass it the campaign's total spend:
//! each measures the total spend per unit of its own probability, so they settle on the same
//! probability, whatever their share of the traffic.
//!
//! In control terms: a feedforward gain (spend per unit of probability and expected traffic)
//! estimated online, and a proportional correction of the cumulative error whose gain grows as the
//! day runs out (the error is divided by the expected traffic left). The plan for a day starts at
//! the pacer's first update of that day: a campaign whose flight starts at noon spreads its daily
//! budget over the afternoon; a node that restarts at noon carries on from what was spent.
//!
//! The pacer is pure arithmetic: no clock (the caller passes `now`), no I/O, no randomness.

use crate::campaigns::Micros;

use super::curve::TrafficCurve;

/// The measured capacity averages over about this many updates in which spend came in (an
/// exponentially weighted average that moves on with each of them, by k steps for an update that
/// brought k times the usual spend): about a minute when spend comes in every second, longer when
/// it comes in rarely (clicks), so the average always rests on some sixty events. Averaging over
/// a fixed time instead would rest on a handful of clicks at night, and a capacity measured too
/// low (no click lately) means a flood.
pub const CAPACITY_WINDOW_SPENDS: f64 = 60.0;

/// ... but never over more than this many seconds, so old traffic is forgotten even when spend
/// is rare.
pub const MAX_CAPACITY_WINDOW_SECS: f64 = 3600.0;

/// Updates with spend before the measured capacity is trusted.
pub const MIN_SPENDS: u32 = 3;

/// Until the capacity is measured, the pacer starts with this probability and doubles it every
/// [`RAMP_SECS`] (up to 1).
pub const START_PROBABILITY: f64 = 1.0 / 16.0;

/// Doubling time of the start-up probability, seconds.
pub const RAMP_SECS: f64 = 30.0;

/// At most this many times the day's planned pace when catching up on a deficit (the issue allows
/// an hour 1.5× its share; the rest of the margin absorbs noise and reaction time).
pub const MAX_CATCH_UP: f64 = 1.3;

/// The plan of one day: made at the pacer's first update of that day.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The day it is for (Unix seconds of its start).
    day_start: i64,
    /// When the plan began (the first update of the day).
    start: i64,
    /// What had been spent by then.
    base: Micros,
}

impl Plan {
    /// The plan's spend by now: `base` plus the rest of the budget times the share of the plan's
    /// expected traffic (`planned`) that has passed (all but `rest`).
    fn target(&self, planned: f64, rest: f64, daily: Micros) -> Micros {
        if planned <= 0.0 {
            return daily.max(self.base);
        }
        let done = ((planned - rest) / planned).clamp(0.0, 1.0);
        self.base + (daily.saturating_sub(self.base) as f64 * done).round() as Micros
    }
}

/// The pacing controller of one campaign with a daily budget and even pacing (see the module
/// documentation for how it works).
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Today's plan; `None` before the first update.
    plan: Option<Plan>,
    /// The first update ever (the start-up ramp counts from it).
    first_update: Option<i64>,
    /// `now` of the last update that observed spend.
    last_now: i64,
    /// `spent` at that update.
    last_spent: Micros,
    /// The last answer.
    probability: f64,
    /// Updates so far in which spend came in (counted up to [`MIN_SPENDS`]).
    spends: u32,
    /// Average spend of an update that brought spend (micros), once one did.
    usual_spend: Option<f64>,
    /// Weighted sum of the spend that came in (micros; refunds count negative).
    spend_sum: f64,
    /// Weighted sum of probability × expected traffic (shares of a day), same weights.
    participation_sum: f64,
    /// Measured spend of full participation over a day's expected traffic (micros).
    capacity: Option<f64>,
    /// What the plan says should be spent by the last update's `now`.
    target: Micros,
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer::new()
    }
}

impl Pacer {
    /// A pacer that knows nothing yet: it takes part in a growing share of the auctions
    /// ([`START_PROBABILITY`], [`RAMP_SECS`]) until it has measured the campaign's capacity.
    pub fn new() -> Pacer {
        Pacer {
            plan: None,
            first_update: None,
            last_now: 0,
            last_spent: 0,
            probability: START_PROBABILITY,
            spends: 0,
            usual_spend: None,
            spend_sum: 0.0,
            participation_sum: 0.0,
            capacity: None,
            target: 0,
        }
    }

    /// Called about once a second per even-paced campaign with a daily budget. `now` is Unix
    /// seconds, `day_start..day_end` the campaign's current day in its budget's timezone,
    /// `daily` its daily budget and `spent` its committed spend today (micros). Returns the
    /// probability in [0, 1] with which the campaign takes part in an auction until the next
    /// update.
    pub fn update(
        &mut self,
        curve: &TrafficCurve,
        now: i64,
        day_start: i64,
        day_end: i64,
        daily: Micros,
        spent: Micros,
    ) -> f64 {
        self.first_update.get_or_insert(now);
        let plan = match self.plan {
            Some(plan) if plan.day_start == day_start => {
                if now > self.last_now {
                    let traffic = curve.share(self.last_now, now);
                    let spend = spent as f64 - self.last_spent as f64;
                    self.observe(now - self.last_now, spend, traffic);
                    self.last_now = now;
                    self.last_spent = spent;
                }
                plan
            }
            // A new day (or the first update): today's spend starts afresh, the capacity carries
            // over (the traffic at 23:59 says much about the traffic at 00:00).
            _ => {
                let plan = Plan {
                    day_start,
                    start: now.clamp(day_start, day_end),
                    base: spent.min(daily),
                };
                self.plan = Some(plan);
                self.last_now = now;
                self.last_spent = spent;
                plan
            }
        };
        // Shares of a day's expected traffic: planned for the day, and still to come.
        let planned = curve.share(plan.start, day_end);
        let rest = curve.share(now.max(plan.start), day_end);
        self.target = plan.target(planned, rest, daily);
        self.probability = self.decide(&plan, planned, rest, now, daily, spent);
        self.probability
    }

    /// What the curve says should be spent by the last `update`'s `now` (for metrics/explain):
    /// the day's budget (less what was spent before the pacer's first update that day) times the
    /// share of the day's expected traffic that has passed.
    pub fn target(&self) -> Micros {
        self.target
    }

    /// The last probability `update` returned ([`START_PROBABILITY`] before the first).
    pub fn probability(&self) -> f64 {
        self.probability
    }

    /// The measured capacity, once measured: what taking part in every auction would spend over a
    /// whole day of traffic as the curve expects it (micros).
    pub fn capacity(&self) -> Option<f64> {
        self.capacity
    }

    /// Step 2: folds `seconds` of answered probability over `traffic` (the share of a day's
    /// traffic the curve expected meanwhile) and the spend that came in into the capacity.
    fn observe(&mut self, seconds: i64, spend: f64, traffic: f64) {
        // A usual update with spend moves the window on by 1/CAPACITY_WINDOW_SPENDS, one that
        // brought k times the usual spend by k times that (a surge is believed within seconds).
        let forget = if spend > 0.0 {
            let size = *self.usual_spend.get_or_insert(spend);
            self.usual_spend = Some(size + (spend - size) / CAPACITY_WINDOW_SPENDS);
            (spend / size / CAPACITY_WINDOW_SPENDS).min(1.0)
        } else {
            0.0
        };
        let decay = (-forget.max(seconds as f64 / MAX_CAPACITY_WINDOW_SECS)).exp();
        self.spend_sum = self.spend_sum * decay + spend;
        self.participation_sum = self.participation_sum * decay + self.probability * traffic;
        if spend > 0.0 && self.spends < MIN_SPENDS {
            self.spends += 1;
        }
        // The sums shrink together: their ratio stays the measure of the recent past, unless a
        // long hold-back emptied the window.
        if self.spends >= MIN_SPENDS && self.participation_sum > f64::MIN_POSITIVE.sqrt() {
            self.capacity = Some(self.spend_sum.max(0.0) / self.participation_sum);
        }
    }

    /// Steps 1 and 3: the probability that keeps the pace, given the shares of a day's expected
    /// traffic `planned` for the day and `rest` still to come (none: the day is over).
    fn decide(
        &self,
        plan: &Plan,
        planned: f64,
        rest: f64,
        now: i64,
        daily: Micros,
        spent: Micros,
    ) -> f64 {
        if spent >= daily || rest <= 0.0 || planned <= 0.0 {
            return 0.0;
        }
        // Budget per day's worth of expected traffic: what is left over the traffic left, at
        // most MAX_CATCH_UP times the day's plan.
        let pace = ((daily - spent) as f64 / rest)
            .min(MAX_CATCH_UP * daily.saturating_sub(plan.base) as f64 / planned);
        match self.capacity {
            _ if pace <= 0.0 => 0.0,
            Some(capacity) if capacity > pace => pace / capacity,
            Some(_) => 1.0, // even full participation spends less than wanted
            None => {
                let since = (now - self.first_update.unwrap_or(now)).max(0) as f64;
                (START_PROBABILITY * (since / RAMP_SECS).exp2()).min(1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 1_796_083_200; // 2026-12-01T00:00:00Z
    const END: i64 = DAY + 86_400;
    const DAILY: Micros = 86_400_000; // 1,000 micros a second when spent evenly

    /// Drives a pacer through `seconds` seconds from `from` against a campaign that spends
    /// `rate(t)` micros a second at full participation, exactly, with no delay. Returns the
    /// spend at the end.
    fn drive(
        pacer: &mut Pacer,
        curve: &TrafficCurve,
        from: i64,
        seconds: i64,
        mut spent: f64,
        rate: impl Fn(i64) -> f64,
    ) -> f64 {
        for t in from..from + seconds {
            let p = pacer.update(curve, t, DAY, END, DAILY, spent as Micros);
            assert!((0.0..=1.0).contains(&p), "p = {p}");
            spent += p * rate(t);
        }
        spent
    }

    #[test]
    fn target_follows_the_curve_from_the_first_update() {
        let flat = TrafficCurve::flat();
        let mut pacer = Pacer::new();
        pacer.update(&flat, DAY + 43_200, DAY, END, DAILY, 0);
        assert_eq!(pacer.target(), 0);
        pacer.update(&flat, DAY + 64_800, DAY, END, DAILY, 0);
        // Started at noon with nothing spent: the whole budget over the afternoon.
        assert_eq!(pacer.target(), DAILY / 2);

        // A node that restarts at noon with half the budget spent carries on from there.
        let mut restarted = Pacer::new();
        restarted.update(&flat, DAY + 43_200, DAY, END, DAILY, DAILY / 2);
        restarted.update(&flat, DAY + 64_800, DAY, END, DAILY, DAILY / 2);
        assert_eq!(restarted.target(), DAILY * 3 / 4);
    }

    #[test]
    fn nothing_once_the_budget_is_spent_or_the_day_is_over() {
        let flat = TrafficCurve::flat();
        let mut pacer = Pacer::new();
        assert!(pacer.update(&flat, DAY + 10, DAY, END, DAILY, 0) > 0.0);
        assert_eq!(pacer.update(&flat, DAY + 11, DAY, END, DAILY, DAILY), 0.0);
        assert_eq!(pacer.update(&flat, END, DAY, END, DAILY, 0), 0.0);
    }

    #[test]
    fn probability_is_planned_spend_over_measured_rate() {
        // The campaign could spend 4,000 a second; the plan wants 1,000: p settles at 1/4 and
        // the spend follows the plan.
        let flat = TrafficCurve::flat();
        let mut pacer = Pacer::new();
        let spent = drive(&mut pacer, &flat, DAY, 3600, 0.0, |_| 4000.0);
        assert!(
            (pacer.probability() - 0.25).abs() < 0.01,
            "{}",
            pacer.probability()
        );
        let capacity = pacer.capacity().unwrap_or_default();
        assert!(
            (capacity - 4000.0 * 86_400.0).abs() < 0.01 * capacity,
            "capacity {capacity}"
        );
        let lead = (spent - pacer.target() as f64) / DAILY as f64;
        assert!(
            lead.abs() < 0.001,
            "spent {spent}, target {}",
            pacer.target()
        );
    }

    #[test]
    fn feedback_follows_traffic_the_curve_did_not_predict() {
        // Full participation spends 3,000 a second, then 12,000 (a spike) from 06:00 to 07:00,
        // then 600 (a dip the pacer cannot fill) from 07:00 to 08:00, then 3,000 again.
        let rate = |t: i64| match (t - DAY) / 3600 {
            6 => 12_000.0,
            7 => 600.0,
            _ => 3000.0,
        };
        let flat = TrafficCurve::flat();
        let mut pacer = Pacer::new();
        let by_six = drive(&mut pacer, &flat, DAY, 6 * 3600, 0.0, rate);
        let by_seven = drive(&mut pacer, &flat, DAY + 6 * 3600, 3600, by_six, rate);
        // The spike hour spends close to its share (3,600,000), not four times it.
        let spike_hour = by_seven - by_six;
        assert!(spike_hour < 1.1 * 3_600_000.0, "spike hour {spike_hour}");
        let by_eight = drive(&mut pacer, &flat, DAY + 7 * 3600, 3600, by_seven, rate);
        assert_eq!(pacer.probability(), 1.0);
        let behind = pacer.target() as f64 - by_eight;
        assert!(behind > 0.01 * DAILY as f64, "behind {behind}");
        // The deficit is made up over the rest of the day, no hour above the catch-up limit.
        let mut spent = by_eight;
        for hour in 8..24 {
            let before = spent;
            spent = drive(&mut pacer, &flat, DAY + hour * 3600, 3600, spent, rate);
            assert!(
                spent - before <= MAX_CATCH_UP * 3_600_000.0 + 3000.0,
                "hour {hour}: {}",
                spent - before
            );
        }
        let ratio = spent / DAILY as f64;
        assert!((0.99..=1.0001).contains(&ratio), "daily ratio {ratio}");
    }

    #[test]
    fn a_new_day_starts_a_new_plan_and_keeps_the_rate() {
        let flat = TrafficCurve::flat();
        let mut pacer = Pacer::new();
        drive(
            &mut pacer,
            &flat,
            END - 600,
            600,
            DAILY as f64 - 600_000.0,
            |_| 2000.0,
        );
        let p = pacer.update(&flat, END, END, END + 86_400, DAILY, 0);
        assert!((p - 0.5).abs() < 0.02, "p {p}");
        assert_eq!(pacer.target(), 0);
    }
}
