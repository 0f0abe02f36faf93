//! Prometheus metrics, and the listener that serves them with the health endpoints.
//!
//! The `prometheus` crate's counters and histograms are lock-free atomics. Label lookups take a
//! lock and a hash, so every series the request path touches is resolved once here
//! ([`Metrics::new`]) and the request path only increments. Campaign win counters are resolved
//! whenever the campaigns are (re)loaded ([`Metrics::set_campaigns`]).
//!
//! The listener is separate from the ad listener so that it can stay on loopback while ads are
//! public; it serves `/metrics`, `/healthz` (the process answers) and `/readyz` (campaigns loaded
//! and statistics sink reachable or spooling).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::auction::Outcome;
use crate::tracking::{EventKind, Outcome as TrackingOutcome};

mod delivery;
pub use delivery::{Excluded, STATE_BACKENDS, STATE_OPS, StateCall};

/// Latency buckets, seconds: 50 µs to 1 s, roughly ×2 apart.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Flush duration buckets, seconds: 1 ms to 30 s.
const FLUSH_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Win counters by campaign id. foldhash: ids are `u32`s from the operator's file, looked up on
/// every win; SipHash (std's default) cost more than the rest of counting a decision.
type WinCounters = HashMap<u32, IntCounter, foldhash::fast::RandomState>;

/// The route label of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/` and `/ad`.
    Ad,
    /// `/v1/decisions`.
    Decisions,
    /// Tracking URLs: `/v1/i/`, `/v1/v/`, `/v1/c/`.
    Tracking,
    /// Ad tags: `/v1/tag.js`, `/v1/frame/`.
    Tag,
    /// Anything else (404, 405).
    Other,
}

impl Route {
    /// Every route, in label order.
    const ALL: [Route; 5] = [
        Route::Ad,
        Route::Decisions,
        Route::Tracking,
        Route::Tag,
        Route::Other,
    ];

    /// The `route` label.
    fn label(self) -> &'static str {
        match self {
            Route::Ad => "ad",
            Route::Decisions => "decisions",
            Route::Tracking => "tracking",
            Route::Tag => "tag",
            Route::Other => "other",
        }
    }
}

/// Request latency histograms by route and status class, resolved once.
struct LatencyByRoute {
    /// Index: route * 5 + status class (1xx..5xx → 0..4).
    series: Vec<Histogram>,
}

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    latency: LatencyByRoute,
    decisions_won: IntCounter,
    decisions_no_fill: IntCounter,
    decisions_bot: IntCounter,
    decisions_error: IntCounter,
    wins: IntCounterVec,
    /// Win counters of the current campaigns, resolved at load and reload so that a win costs
    /// one hash of a `u32` instead of a label lookup.
    win_counters: ArcSwap<WinCounters>,
    geoip_unknown: IntCounter,
    ua_cache_hits: IntCounter,
    ua_cache_misses: IntCounter,
    /// Rows waiting for the sink (in memory and in the spool).
    pub stats_rows_pending: IntGauge,
    stats_flushes: IntCounterVec,
    stats_flush_duration: HistogramVec,
    /// Bytes in the spool folder.
    pub stats_spool_bytes: IntGauge,
    /// Batches in the spool folder.
    pub stats_spool_batches: IntGauge,
    /// Rows that could be neither written nor spooled.
    pub stats_rows_lost: IntCounter,
    reloads: IntCounterVec,
    /// Active campaigns in the current catalogue.
    pub campaigns_active: IntGauge,
    geoip_reloads: IntCounterVec,
    geoip_build_timestamp: IntGauge,
    /// Whether the statistics pipeline can take rows (sink reachable, or spool writable).
    stats_ready: AtomicBool,
    /// Connection counters by listener (see [`Metrics::connections`]).
    connections: ConnectionVecs,
    /// `rotator_tracking_events_total`, index: kind * outcomes + outcome.
    tracking_events: Vec<IntCounter>,
    /// Spend, budgets, pacing, exclusions and the state backend (issue 11).
    delivery: delivery::DeliveryMetrics,
    /// `rotator_tls_certificate_expiry_timestamp_seconds` by listener.
    tls_expiry: prometheus::IntGaugeVec,
    /// `rotator_tls_reloads_total` by listener and result.
    tls_reloads: IntCounterVec,
}

/// The certificate series of one TLS listener.
#[derive(Clone)]
pub struct TlsMetrics {
    /// When the served certificate expires, seconds since the Unix epoch.
    pub expiry: IntGauge,
    /// Reloads that published a new pair.
    pub reloads_ok: IntCounter,
    /// Reloads refused (the previous pair kept serving).
    pub reloads_error: IntCounter,
}

/// The connection series of every listener, by label `listener` (`ads`, `metrics`).
struct ConnectionVecs {
    open: prometheus::IntGaugeVec,
    refused: IntCounterVec,
    accept_errors: IntCounterVec,
    send_timeouts: IntCounterVec,
}

/// The connection series of one listener, resolved once when it starts serving.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections closed at once because `max_connections` were open.
    pub refused: IntCounter,
    /// Failed `accept` calls (out of file descriptors, and the like).
    pub accept_errors: IntCounter,
    /// Connections closed because the peer did not read for `send_timeout`.
    pub send_timeouts: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

/// A counter by `result` (`ok`, `error`) whose two series exist from the start, so that an
/// alert on their increase sees the first event.
fn result_counter(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    let c = counter_vec(registry, name, help, &["result"]);
    for result in ["ok", "error"] {
        c.with_label_values(&[result]);
    }
    c
}

impl Metrics {
    /// Registers every metric. Names are constants, so registration cannot fail at run time;
    /// the `expect`s document that.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let latency_vec = HistogramVec::new(
            HistogramOpts::new(
                "rotator_http_request_duration_seconds",
                "Time to answer an HTTP request.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency_vec.clone()))
            .expect("unique metric");
        let mut series = Vec::new();
        for route in Route::ALL {
            for status in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                series.push(latency_vec.with_label_values(&[route.label(), status]));
            }
        }
        let decisions = counter_vec(
            &registry,
            "rotator_decisions_total",
            "Ad decisions by outcome.",
            &["outcome"],
        );
        let stats_flush_duration = HistogramVec::new(
            HistogramOpts::new(
                "rotator_stats_flush_duration_seconds",
                "Time to write one batch to the sink.",
            )
            .buckets(FLUSH_BUCKETS.to_vec()),
            &["sink"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(stats_flush_duration.clone()))
            .expect("unique metric");
        let build_gauge = prometheus::IntGaugeVec::new(
            Opts::new("rotator_build_info", "Always 1; the version is a label."),
            &["version"],
        )
        .expect("valid metric");
        build_gauge
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_gauge))
            .expect("unique metric");
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Arc::new(Metrics {
            latency: LatencyByRoute { series },
            decisions_won: decisions.with_label_values(&["won"]),
            decisions_no_fill: decisions.with_label_values(&["no_fill"]),
            decisions_bot: decisions.with_label_values(&["bot"]),
            decisions_error: decisions.with_label_values(&["error"]),
            wins: counter_vec(
                &registry,
                "rotator_campaign_wins_total",
                "Auctions won, by campaign.",
                &["campaign_id"],
            ),
            geoip_unknown: counter(
                &registry,
                "rotator_geoip_unknown_country_total",
                "Visitors whose country is unknown.",
            ),
            ua_cache_hits: counter(
                &registry,
                "rotator_ua_cache_hits_total",
                "User-Agents found parsed in the cache.",
            ),
            ua_cache_misses: counter(
                &registry,
                "rotator_ua_cache_misses_total",
                "User-Agents parsed in full.",
            ),
            stats_rows_pending: gauge(
                &registry,
                "rotator_stats_rows_pending",
                "Statistics rows not yet written to the sink.",
            ),
            stats_flushes: counter_vec(
                &registry,
                "rotator_stats_flushes_total",
                "Batch writes by sink and result (ok, error, spooled, rejected).",
                &["sink", "result"],
            ),
            stats_flush_duration,
            stats_spool_bytes: gauge(
                &registry,
                "rotator_stats_spool_bytes",
                "Bytes in the statistics spool.",
            ),
            stats_spool_batches: gauge(
                &registry,
                "rotator_stats_spool_batches",
                "Batches in the statistics spool.",
            ),
            stats_rows_lost: counter(
                &registry,
                "rotator_stats_rows_lost_total",
                "Statistics rows that could be neither written nor spooled.",
            ),
            reloads: result_counter(
                &registry,
                "rotator_campaign_reloads_total",
                "Campaign file reloads by result.",
            ),
            campaigns_active: gauge(
                &registry,
                "rotator_campaigns_active",
                "Active campaigns in the current catalogue.",
            ),
            geoip_reloads: result_counter(
                &registry,
                "rotator_geoip_reloads_total",
                "GeoIP database reloads by result.",
            ),
            geoip_build_timestamp: gauge(
                &registry,
                "rotator_geoip_build_timestamp_seconds",
                "Build time of the loaded GeoIP database, Unix seconds.",
            ),
            tls_expiry: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "rotator_tls_certificate_expiry_timestamp_seconds",
                        "When the served TLS certificate expires (not after), Unix seconds.",
                    ),
                    &["listener"],
                )
                .expect("valid metric name");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            tls_reloads: counter_vec(
                &registry,
                "rotator_tls_reloads_total",
                "TLS certificate reloads by listener and result.",
                &["listener", "result"],
            ),
            stats_ready: AtomicBool::new(true),
            connections: ConnectionVecs {
                open: {
                    let g = prometheus::IntGaugeVec::new(
                        Opts::new("rotator_connections_open", "Open connections, by listener."),
                        &["listener"],
                    )
                    .expect("valid metric name");
                    registry
                        .register(Box::new(g.clone()))
                        .expect("unique metric");
                    g
                },
                refused: counter_vec(
                    &registry,
                    "rotator_connections_refused_total",
                    "Connections closed at once because max_connections were open.",
                    &["listener"],
                ),
                accept_errors: counter_vec(
                    &registry,
                    "rotator_accept_errors_total",
                    "Failed accepts (e.g. out of file descriptors), by listener.",
                    &["listener"],
                ),
                send_timeouts: counter_vec(
                    &registry,
                    "rotator_send_timeouts_total",
                    "Connections closed because the peer did not read for send_timeout.",
                    &["listener"],
                ),
            },
            win_counters: ArcSwap::default(),
            tracking_events: {
                let events = counter_vec(
                    &registry,
                    "rotator_tracking_events_total",
                    "Tracking requests (impression, viewable, click) by outcome.",
                    &["kind", "outcome"],
                );
                EventKind::ALL
                    .iter()
                    .flat_map(|k| TrackingOutcome::ALL.map(|o| (k.as_str(), o.as_str())))
                    .map(|(k, o)| events.with_label_values(&[k, o]))
                    .collect()
            },
            delivery: delivery::DeliveryMetrics::new(&registry),
            registry,
        })
    }

    /// Counts one answered request.
    #[inline]
    pub fn observe_request(&self, route: Route, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let index = route as usize * 5 + class;
        if let Some(h) = self.latency.series.get(index) {
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts one decision. `error` marks a decision made despite a failure (a broken GeoIP
    /// record): it counts as outcome `error`, whatever the auction said.
    #[inline]
    pub fn observe_decision(
        &self,
        outcome: &Outcome<'_>,
        error: bool,
        country_known: bool,
        ua_cache_hit: bool,
    ) {
        if let Outcome::Won(c) = outcome {
            match self.win_counters.load().get(&c.id) {
                Some(counter) => counter.inc(),
                None => {
                    let mut id = itoa::Buffer::new();
                    self.wins.with_label_values(&[id.format(c.id)]).inc();
                }
            }
        }
        match outcome {
            _ if error => self.decisions_error.inc(),
            Outcome::Won(_) => self.decisions_won.inc(),
            Outcome::NoFill => self.decisions_no_fill.inc(),
            Outcome::Bot => self.decisions_bot.inc(),
        }
        if !country_known {
            self.geoip_unknown.inc();
        }
        if ua_cache_hit {
            self.ua_cache_hits.inc()
        } else {
            self.ua_cache_misses.inc()
        }
    }

    /// Counts one tracking request.
    #[inline]
    pub fn observe_tracking(&self, kind: EventKind, outcome: TrackingOutcome) {
        let index = usize::from(kind.index()) * TrackingOutcome::ALL.len() + outcome as usize;
        if let Some(c) = self.tracking_events.get(index) {
            c.inc();
        }
    }

    /// Counts one batch write.
    pub fn observe_flush(&self, sink: &str, result: &str, elapsed: Option<Duration>) {
        self.stats_flushes.with_label_values(&[sink, result]).inc();
        if let Some(e) = elapsed {
            self.stats_flush_duration
                .with_label_values(&[sink])
                .observe(e.as_secs_f64());
        }
    }

    /// Counts a campaign reload.
    pub fn observe_reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Counts a GeoIP database reload.
    pub fn observe_geoip_reload(&self, ok: bool) {
        self.geoip_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Sets the build time of the loaded GeoIP database.
    pub fn set_geoip_build_epoch(&self, epoch: u64) {
        self.geoip_build_timestamp
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// Sets the campaigns whose wins are counted: resolves their counters and removes the series
    /// of campaigns no longer in the catalogue (keeps the label set bounded).
    pub fn set_campaigns(&self, ids: &[u32]) {
        let mut id = itoa::Buffer::new();
        let counters: WinCounters = ids
            .iter()
            .map(|i| (*i, self.wins.with_label_values(&[id.format(*i)])))
            .collect();
        for old in self
            .win_counters
            .load()
            .keys()
            .filter(|old| !counters.contains_key(old))
        {
            let _ = self.wins.remove_label_values(&[id.format(*old)]);
        }
        self.win_counters.store(Arc::new(counters));
    }

    /// The connection series of `listener` (`ads`, `metrics`).
    pub fn connections(&self, listener: &str) -> ConnectionMetrics {
        let c = &self.connections;
        ConnectionMetrics {
            open: c.open.with_label_values(&[listener]),
            refused: c.refused.with_label_values(&[listener]),
            accept_errors: c.accept_errors.with_label_values(&[listener]),
            send_timeouts: c.send_timeouts.with_label_values(&[listener]),
        }
    }

    /// The certificate series of TLS `listener` (`ads`), both reload results from the start.
    pub fn tls(&self, listener: &str) -> TlsMetrics {
        TlsMetrics {
            expiry: self.tls_expiry.with_label_values(&[listener]),
            reloads_ok: self.tls_reloads.with_label_values(&[listener, "ok"]),
            reloads_error: self.tls_reloads.with_label_values(&[listener, "error"]),
        }
    }

    /// Marks the statistics pipeline ready or not (for `/readyz`).
    pub fn set_stats_ready(&self, ready: bool) {
        self.stats_ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the statistics pipeline can take rows.
    pub fn stats_ready(&self) -> bool {
        self.stats_ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}
