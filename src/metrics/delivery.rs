//! Delivery metrics (issue 11): spend and budgets per campaign, pacing, decisions excluded by
//! reason, and the latency and errors of the state backend.
//!
//! Per-campaign series exist only for campaigns that spent or have a budget: spend counters
//! appear on a campaign's first spend; budget gauges are set by the delivery ticker and dropped
//! together by [`Metrics::forget_budgets`] before a reload sets them again. The exclusion counters
//! and the state series of the known backends and operations exist from the start (at zero), so
//! dashboards and alerts see them before the first event, and the hot paths only increment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::{LATENCY_BUCKETS, Metrics, counter_vec};

/// Why a campaign was left out of an auction (`reason` label of
/// `rotator_decisions_excluded_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    /// Before its start or after its end.
    Flight,
    /// Its daily or total budget is spent (or no lease is left on this node).
    Budget,
    /// Held back by even pacing.
    Pacing,
    /// The visitor saw it as often as its frequency cap allows.
    FrequencyCap,
}

impl Excluded {
    /// Every reason, in label order.
    pub const ALL: [Excluded; 4] = [
        Excluded::Flight,
        Excluded::Budget,
        Excluded::Pacing,
        Excluded::FrequencyCap,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Excluded::Flight => "flight",
            Excluded::Budget => "budget",
            Excluded::Pacing => "pacing",
            Excluded::FrequencyCap => "frequency_cap",
        }
    }
}

/// State backends whose series are resolved up front (`State::backend`).
pub const STATE_BACKENDS: [&str; 2] = ["local", "redis"];

/// State operations whose series are resolved up front (the methods of `State`).
pub const STATE_OPS: [&str; 8] = [
    "lease",
    "refund",
    "spent",
    "reserve",
    "release",
    "views",
    "seen_first",
    "seen_has",
];

/// Spend counters by campaign id (see `WinCounters` for the hasher).
type SpendCounters = HashMap<u32, IntCounter, foldhash::fast::RandomState>;

/// The series of one (backend, op).
struct StateSeries {
    backend: &'static str,
    op: &'static str,
    call: StateCall,
}

/// The time and error series of one (backend, op), resolved once for a hot path (see
/// [`Metrics::state_call`]).
#[derive(Clone)]
pub struct StateCall {
    seconds: Histogram,
    errors: IntCounter,
}

impl StateCall {
    /// Counts one call that took `elapsed` and succeeded or not.
    #[inline]
    pub fn observe(&self, elapsed: Duration, ok: bool) {
        self.seconds.observe(elapsed.as_secs_f64());
        if !ok {
            self.errors.inc();
        }
    }

    /// Counts one call that failed without being sent (no time to observe).
    pub fn refused(&self) {
        self.errors.inc();
    }
}

/// The delivery metrics of one server (a field of [`Metrics`]).
pub(super) struct DeliveryMetrics {
    spend: IntCounterVec,
    /// Resolved spend counters: one hash of a `u32` per counted event after the first.
    spend_counters: ArcSwap<SpendCounters>,
    spent_today: IntGaugeVec,
    target: IntGaugeVec,
    holdback: GaugeVec,
    /// Index: [`Excluded`] as usize.
    excluded: Vec<IntCounter>,
    state_seconds: HistogramVec,
    state_errors: IntCounterVec,
    state: Vec<StateSeries>,
    /// `rotator_state_circuit_open`.
    circuit_open: IntGauge,
}

impl DeliveryMetrics {
    /// Registers the delivery metrics in `registry`.
    pub(super) fn new(registry: &Registry) -> DeliveryMetrics {
        let gauge_vec = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["campaign"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let holdback = GaugeVec::new(
            Opts::new(
                "rotator_pacing_holdback_ratio",
                "Share of auctions an even-paced campaign is held back from (0 never, 1 always).",
            ),
            &["campaign"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(holdback.clone()))
            .expect("unique metric");
        let excluded = counter_vec(
            registry,
            "rotator_decisions_excluded_total",
            "Campaigns left out of an auction, by reason (flight, budget, pacing, frequency_cap).",
            &["reason"],
        );
        let state_seconds = HistogramVec::new(
            HistogramOpts::new(
                "rotator_state_seconds",
                "Time of a call to the state backend, by backend and operation.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend", "op"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(state_seconds.clone()))
            .expect("unique metric");
        let state_errors = counter_vec(
            registry,
            "rotator_state_errors_total",
            "Failed calls to the state backend, by backend and operation.",
            &["backend", "op"],
        );
        let state = STATE_BACKENDS
            .iter()
            .flat_map(|b| STATE_OPS.iter().map(move |o| (*b, *o)))
            .map(|(backend, op)| StateSeries {
                backend,
                op,
                call: StateCall {
                    seconds: state_seconds.with_label_values(&[backend, op]),
                    errors: state_errors.with_label_values(&[backend, op]),
                },
            })
            .collect();
        DeliveryMetrics {
            spend: counter_vec(
                registry,
                "rotator_spend_micros_total",
                "Spend of counted impressions and clicks, micro-units of the currency, by campaign.",
                &["campaign"],
            ),
            spend_counters: ArcSwap::default(),
            spent_today: gauge_vec(
                "rotator_budget_spent_today_micros",
                "Spend of the campaign's current budget day, micro-units, by campaign.",
            ),
            target: gauge_vec(
                "rotator_pacing_target_micros",
                "What pacing says a campaign should have spent by now today, micro-units.",
            ),
            holdback,
            excluded: Excluded::ALL
                .iter()
                .map(|r| excluded.with_label_values(&[r.as_str()]))
                .collect(),
            state_seconds,
            state_errors,
            state,
            circuit_open: {
                let g = IntGauge::new(
                    "rotator_state_circuit_open",
                    "1 while the Redis backend's circuit breaker is open (request-path calls fail \
                     at once after calls in a row could not reach Redis), else 0.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
        }
    }
}

/// A micro-unit amount as a gauge value (saturating: an `i64` holds 9.2 trillion currency units).
fn gauge_value(micros: u64) -> i64 {
    i64::try_from(micros).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Adds `micros` to the spend of `campaign_id` (`rotator_spend_micros_total{campaign}`).
    pub fn observe_spend(&self, campaign_id: u32, micros: u64) {
        let d = &self.delivery;
        if let Some(counter) = d.spend_counters.load().get(&campaign_id) {
            counter.inc_by(micros);
            return;
        }
        let mut id = itoa::Buffer::new();
        let counter = d.spend.with_label_values(&[id.format(campaign_id)]);
        counter.inc_by(micros);
        d.spend_counters.rcu(|counters| {
            let mut counters = SpendCounters::clone(counters);
            counters.insert(campaign_id, counter.clone());
            Arc::new(counters)
        });
    }

    /// Sets the budget gauges of `campaign_id`: spend of its current day and the pacing target
    /// for now (micro-units), and the share of auctions pacing holds it back from (0 to 1).
    pub fn set_budget(&self, campaign_id: u32, spent_today: u64, target_now: u64, holdback: f64) {
        let d = &self.delivery;
        let mut id = itoa::Buffer::new();
        let labels = [id.format(campaign_id)];
        d.spent_today
            .with_label_values(&labels)
            .set(gauge_value(spent_today));
        d.target
            .with_label_values(&labels)
            .set(gauge_value(target_now));
        d.holdback
            .with_label_values(&labels)
            .set(holdback.clamp(0.0, 1.0));
    }

    /// Drops every per-campaign budget gauge (before a reload sets those of the campaigns that
    /// still have a budget, so removed campaigns disappear).
    pub fn forget_budgets(&self) {
        let d = &self.delivery;
        d.spent_today.reset();
        d.target.reset();
        d.holdback.reset();
    }

    /// Sets `rotator_state_circuit_open`.
    pub fn set_state_circuit_open(&self, open: bool) {
        self.delivery.circuit_open.set(i64::from(open));
    }

    /// Counts one campaign left out of an auction for `reason`.
    #[inline]
    pub fn observe_excluded(&self, reason: Excluded) {
        if let Some(c) = self.delivery.excluded.get(reason as usize) {
            c.inc();
        }
    }

    /// Counts one call to the state backend (`backend`: `local`, `redis`; `op`: the method).
    pub fn observe_state(
        &self,
        backend: &'static str,
        op: &'static str,
        elapsed: Duration,
        ok: bool,
    ) {
        match self
            .delivery
            .state
            .iter()
            .find(|s| s.backend == backend && s.op == op)
        {
            Some(s) => s.call.observe(elapsed, ok),
            None => self.state_call(backend, op).observe(elapsed, ok),
        }
    }

    /// The series of (`backend`, `op`), for a caller that observes many calls (no search of
    /// the series per call).
    pub fn state_call(&self, backend: &'static str, op: &'static str) -> StateCall {
        let d = &self.delivery;
        match d.state.iter().find(|s| s.backend == backend && s.op == op) {
            Some(s) => s.call.clone(),
            None => StateCall {
                seconds: d.state_seconds.with_label_values(&[backend, op]),
                errors: d.state_errors.with_label_values(&[backend, op]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name{labels}` in `text`, if exposed.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn issue11_delivery_metrics_render() {
        let m = Metrics::new();
        let text = m.render();
        for reason in Excluded::ALL {
            let series = format!(
                "rotator_decisions_excluded_total{{reason=\"{}\"}}",
                reason.as_str()
            );
            assert_eq!(value(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        assert_eq!(
            value(
                &text,
                "rotator_state_errors_total{backend=\"redis\",op=\"reserve\"}"
            ),
            Some(0.0)
        );
        assert!(!text.contains("rotator_spend_micros_total{"), "{text}");

        m.observe_spend(7, 2_500);
        m.observe_spend(7, 1_000_000);
        m.observe_spend(8, 1);
        m.set_budget(7, 1_002_500, 1_500_000, 0.25);
        m.set_budget(9, u64::MAX, 0, 7.0);
        m.observe_excluded(Excluded::Pacing);
        m.observe_excluded(Excluded::Pacing);
        m.observe_excluded(Excluded::FrequencyCap);
        m.observe_state("local", "lease", Duration::from_micros(30), true);
        m.observe_state("redis", "reserve", Duration::from_millis(3), false);
        m.observe_state("other", "op", Duration::from_millis(1), false);
        let text = m.render();
        for (series, want) in [
            ("rotator_spend_micros_total{campaign=\"7\"}", 1_002_500.0),
            ("rotator_spend_micros_total{campaign=\"8\"}", 1.0),
            (
                "rotator_budget_spent_today_micros{campaign=\"7\"}",
                1_002_500.0,
            ),
            ("rotator_pacing_target_micros{campaign=\"7\"}", 1_500_000.0),
            ("rotator_pacing_holdback_ratio{campaign=\"7\"}", 0.25),
            (
                "rotator_budget_spent_today_micros{campaign=\"9\"}",
                i64::MAX as f64,
            ),
            ("rotator_pacing_holdback_ratio{campaign=\"9\"}", 1.0),
            ("rotator_decisions_excluded_total{reason=\"pacing\"}", 2.0),
            (
                "rotator_decisions_excluded_total{reason=\"frequency_cap\"}",
                1.0,
            ),
            ("rotator_decisions_excluded_total{reason=\"budget\"}", 0.0),
            (
                "rotator_state_seconds_count{backend=\"local\",op=\"lease\"}",
                1.0,
            ),
            (
                "rotator_state_seconds_bucket{backend=\"local\",op=\"lease\",le=\"0.00005\"}",
                1.0,
            ),
            (
                "rotator_state_errors_total{backend=\"local\",op=\"lease\"}",
                0.0,
            ),
            (
                "rotator_state_seconds_count{backend=\"redis\",op=\"reserve\"}",
                1.0,
            ),
            (
                "rotator_state_errors_total{backend=\"redis\",op=\"reserve\"}",
                1.0,
            ),
            (
                "rotator_state_errors_total{backend=\"other\",op=\"op\"}",
                1.0,
            ),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }

        // A reload: budget gauges go, until the ticker sets those that still have a budget.
        m.forget_budgets();
        m.set_budget(9, 5, 6, 0.0);
        let text = m.render();
        assert_eq!(
            value(&text, "rotator_pacing_target_micros{campaign=\"7\"}"),
            None
        );
        assert_eq!(
            value(&text, "rotator_budget_spent_today_micros{campaign=\"9\"}"),
            Some(5.0)
        );
        assert_eq!(
            value(&text, "rotator_spend_micros_total{campaign=\"7\"}"),
            Some(1_002_500.0),
            "spend is a counter: it stays"
        );
    }

    /// Every metric a dashboard query names is one this server exports (once each kind of event
    /// happened): a renamed metric fails here, not silently in Grafana.
    #[test]
    fn issue11_dashboards_name_only_exported_metrics() {
        let m = Metrics::new();
        m.observe_spend(1, 1);
        m.set_budget(1, 1, 1, 0.5);
        m.set_campaigns(&[1]);
        m.observe_flush("sqlite", "ok", Some(Duration::from_millis(1)));
        let _ = m.connections("ads");
        let text = m.render();
        let dashboards = concat!(
            include_str!("../../deploy/grafana/dashboards/service.json"),
            include_str!("../../deploy/grafana/dashboards/business.json")
        );
        let mut checked = 0;
        for word in dashboards.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("rotator_") || word == "rotator_" {
                continue;
            }
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            let family = format!("# TYPE {base} ");
            assert!(text.contains(&family), "{word} is not exported:\n{text}");
            checked += 1;
        }
        assert!(checked > 20, "few metric names found: {checked}");
    }
}
