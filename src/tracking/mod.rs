//! Tracking URLs: signed tokens for a decision's impression, viewable and click events, each
//! counted at most once.
//!
//! [`Tracker::tokens`] signs the three tokens of a decision ([`keys::Signer`], format in
//! [`token`]); [`Tracker::event`] is what the routes in `http/tracking.rs` call for each beacon or
//! click, top-down:
//! verify (MAC first) → `HEAD` counts nothing → a click needs its impression counted →
//! remember once ([`seen::Seen`]) → count (statistics row and metrics).
//! With `[state] backend = "redis"` the memory is shared by every node
//! ([`Tracker::event_shared`], through the delivery state), so a beacon counts once across nodes;
//! while Redis cannot answer, each node falls back to its own memory (an event replayed to another
//! node then may count twice) and counts clicks whose impression it cannot check.
//! Bots are counted like anyone else, under the device `bot` their token carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use hyper::header::HOST;
use hyper::http::uri::Authority;

use crate::campaigns::CatalogueHandle;
use crate::config::TrackingConfig;
use crate::decision::SlotWin;
use crate::delivery::Delivery;
use crate::delivery::state::State;
use crate::metrics::Metrics;
use crate::stats::aggregator::{Aggregator, Counts, RowKey, current_minute};
use crate::visitor::Visitor;
use crate::visitor::symbol::Sym;

pub mod keys;
pub mod seen;
pub mod token;

pub use keys::Signer;
pub use seen::{Mark, Seen, SeenWriter};
pub use token::{Claims, EventKind, TokenError};

/// Why tracking could not start.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// A key file is unusable.
    #[error("[tracking] {path}: {reason}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key or journal file cannot be read or written.
    #[error("[tracking] {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What became of one tracking request (the `outcome` label of
/// `rotator_tracking_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted now.
    Counted,
    /// Already counted before.
    Duplicate,
    /// Genuine but expired: not counted (a click still redirects).
    Expired,
    /// Forged, altered, or signed by a key no longer known.
    BadSignature,
    /// Not a token, or a token for another kind of event.
    Malformed,
    /// A click whose impression was never counted: not counted, still redirected.
    NoImpression,
    /// A `HEAD` request: nothing counted.
    Head,
    /// The counted-once memory is full: not counted rather than perhaps counted twice.
    SeenFull,
}

impl Outcome {
    /// Every outcome, in index order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Counted,
        Outcome::Duplicate,
        Outcome::Expired,
        Outcome::BadSignature,
        Outcome::Malformed,
        Outcome::NoImpression,
        Outcome::Head,
        Outcome::SeenFull,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Counted => "counted",
            Outcome::Duplicate => "duplicate",
            Outcome::Expired => "expired",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
            Outcome::NoImpression => "no_impression",
            Outcome::Head => "head",
            Outcome::SeenFull => "seen_full",
        }
    }
}

/// One tracking request's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub outcome: Outcome,
    /// The token's claims when it is genuine (also when expired or not counted); `None` when
    /// forged or malformed: then nothing may be trusted, not even where to redirect.
    pub claims: Option<Claims>,
}

/// The three tokens of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// For `/v1/i/{token}`.
    pub impression: String,
    /// For `/v1/v/{token}`.
    pub viewable: String,
    /// For `/v1/c/{token}`.
    pub click: String,
}

/// The absolute tracking URLs of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    /// `{base}/v1/i/{token}`.
    pub impression: String,
    /// `{base}/v1/v/{token}`.
    pub viewable: String,
    /// `{base}/v1/c/{token}`.
    pub click: String,
}

impl Claims {
    /// The claims of a new decision made now (Unix seconds `now`) for `visitor`: a fresh random
    /// id; [`Tracker::tokens`] sets each token's kind and expiry.
    pub fn for_decision(
        visitor: &Visitor,
        campaign_id: u32,
        creative_id: u32,
        placement: Sym,
        now: u32,
    ) -> Claims {
        Claims {
            id: new_id(),
            kind: EventKind::Impression,
            campaign_id,
            creative_id,
            placement,
            issued: now,
            expires: now,
            country: visitor.country,
            os: visitor.agent.os,
            browser: visitor.agent.browser,
            device: visitor.agent.device,
        }
    }
}

/// Signs and counts tracking events.
pub struct Tracker {
    signer: Signer,
    seen: Arc<Seen>,
    /// The counted-once memory shared by every node (Redis), when there is one.
    shared: Option<Arc<State>>,
    stats: Option<Arc<Aggregator>>,
    metrics: Arc<Metrics>,
    impression_ttl: u32,
    click_ttl: u32,
    /// `[tracking] public_url` without a trailing `/`; empty: from the request's `Host`.
    public_url: String,
    /// When the last "memory full" warning was logged (Unix seconds): one per minute at most.
    warned_full: AtomicU32,
    /// What counted events cost (see [`Tracker::costing`]); without it spend is not counted.
    costs: Option<Costs>,
}

/// Where a counted event's cost comes from.
struct Costs {
    /// The current campaigns (their pricing and bid).
    catalogue: CatalogueHandle,
    /// Charges clicks to this node's budget leases.
    delivery: Option<Arc<Delivery>>,
}

/// Now, Unix seconds.
pub fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Decision ids drawn from one `getrandom` call (64 ids per system call, per thread).
const IDS_PER_FILL: usize = 64;

thread_local! {
    /// This thread's unused random bytes and how many of them were used.
    static ID_POOL: std::cell::RefCell<([u8; 12 * IDS_PER_FILL], usize)> =
        const { std::cell::RefCell::new(([0; 12 * IDS_PER_FILL], 12 * IDS_PER_FILL)) };
}

/// A new decision id: 96 bits from the operating system's random source (a CSPRNG), taken from
/// a per-thread pool refilled 64 ids at a time: one system call per id cost 5 % of a decisions
/// request's CPU. Tokens are signed, so an id is never what makes one unforgeable; it only has
/// to be unique.
pub fn new_id() -> [u8; 12] {
    ID_POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used == bytes.len() {
            if getrandom::fill(bytes).is_err() {
                // The OS source does not fail on Linux once seeded; should it, fastrand ids are
                // unique enough for counting.
                bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
            }
            *used = 0;
        }
        let mut id = [0; 12];
        id.copy_from_slice(&bytes[*used..*used + 12]);
        *used += 12;
        id
    })
}

impl Tracker {
    /// Loads the keys (creating the first one) and the counted-once journal; the returned
    /// writer must be stopped at shutdown, after the listeners, to journal the last events.
    pub fn start(
        config: &TrackingConfig,
        stats: Option<Arc<Aggregator>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Tracker, SeenWriter), TrackingError> {
        let signer = Signer::load(config)?;
        let (seen, writer) = Seen::open(&config.seen_file, config.seen_max_entries, now())?;
        let tracker = Tracker::new(signer, seen, config, stats, metrics);
        Ok((tracker, writer))
    }

    /// This node's counted-once memory (the local state backend wraps it).
    pub fn seen(&self) -> Arc<Seen> {
        self.seen.clone()
    }

    /// Counts events once across every node sharing `state`, when it is shared (Redis); with
    /// the local backend this node's memory is that state already, and the fast path stays.
    pub fn sharing(mut self, state: Arc<State>) -> Tracker {
        self.shared = matches!(*state, State::Redis(_)).then_some(state);
        self
    }

    /// Whether events must go through [`Tracker::event_shared`].
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// A tracker over parts built elsewhere (tests, benchmarks).
    pub fn new(
        signer: Signer,
        seen: Arc<Seen>,
        config: &TrackingConfig,
        stats: Option<Arc<Aggregator>>,
        metrics: Arc<Metrics>,
    ) -> Tracker {
        let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Tracker {
            signer,
            seen,
            shared: None,
            stats,
            metrics,
            impression_ttl: secs(config.impression_ttl),
            click_ttl: secs(config.click_ttl),
            public_url: config.public_url.trim_end_matches('/').to_string(),
            warned_full: AtomicU32::new(0),
            costs: None,
        }
    }

    /// Counts the spend of events (impressions of cpm campaigns, clicks of cpc ones) at the
    /// prices of `catalogue`, charging clicks to `delivery`'s leases.
    pub fn costing(
        mut self,
        catalogue: CatalogueHandle,
        delivery: Option<Arc<Delivery>>,
    ) -> Tracker {
        self.costs = Some(Costs {
            catalogue,
            delivery,
        });
        self
    }

    /// The signer (to sign or check tokens directly).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The impression, viewable and click tokens of the decision `decision` (its `id`, `issued`
    /// and dimensions; its `kind` and `expires` are set here from the configured lifetimes).
    pub fn tokens(&self, decision: &Claims) -> Tokens {
        let with = |kind, ttl: u32| Claims {
            kind,
            expires: decision.issued.saturating_add(ttl),
            ..*decision
        };
        Tokens {
            impression: self
                .signer
                .sign(&with(EventKind::Impression, self.impression_ttl)),
            viewable: self
                .signer
                .sign(&with(EventKind::Viewable, self.impression_ttl)),
            click: self.signer.sign(&with(EventKind::Click, self.click_ttl)),
        }
    }

    /// The base of tracking URLs for a request with `headers` (`trusted`: the peer is a trusted
    /// proxy; `secure`: the request came over native TLS): `[tracking] public_url` when set;
    /// else `http://` (`https://` when `secure`) and the `Host` header, where a trusted proxy's
    /// `X-Forwarded-Host` and `X-Forwarded-Proto: https` are believed. A host
    /// that is not a plain `host[:port]` (anything else could inject text into URLs and pages)
    /// gives `""`: URLs relative to this server.
    pub fn base_url(&self, headers: &HeaderMap, trusted: bool, secure: bool) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.clone();
        }
        let forwarded = |name| trusted.then(|| headers.get(name)).flatten();
        let host = forwarded("x-forwarded-host")
            .or_else(|| headers.get(HOST))
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .filter(|a| !a.as_str().contains('@') && !a.host().is_empty());
        let https = secure
            || forwarded("x-forwarded-proto")
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        match host {
            Some(host) if https => format!("https://{host}"),
            Some(host) => format!("http://{host}"),
            None => String::new(),
        }
    }

    /// The absolute tracking URLs of a new decision: `win` shown to `visitor`, under `base` (see
    /// [`Tracker::base_url`]).
    pub fn urls(&self, base: &str, visitor: &Visitor, win: &SlotWin<'_>) -> Urls {
        let decision = Claims {
            id: win.decision,
            ..Claims::for_decision(
                visitor,
                win.campaign.id,
                win.creative.id,
                win.placement.sym,
                now(),
            )
        };
        self.urls_of(base, &decision)
    }

    /// The absolute tracking URLs of `decision` under `base` (the same tokens as
    /// [`Tracker::tokens`]).
    pub fn urls_of(&self, base: &str, decision: &Claims) -> Urls {
        let impression_expires = decision.issued.saturating_add(self.impression_ttl);
        let [impression, viewable, click] = self.signer.sign_urls(
            decision,
            base,
            [
                (EventKind::Impression, impression_expires, "/v1/i/"),
                (EventKind::Viewable, impression_expires, "/v1/v/"),
                (
                    EventKind::Click,
                    decision.issued.saturating_add(self.click_ttl),
                    "/v1/c/",
                ),
            ],
        );
        Urls {
            impression,
            viewable,
            click,
        }
    }

    /// Handles one tracking request of `kind` with `token`; `head` for `HEAD` requests.
    pub fn event(&self, kind: EventKind, token: &str, head: bool, now: u32) -> Event {
        let event = self.judge(kind, token, head, now);
        self.metrics.observe_tracking(kind, event.outcome);
        event
    }

    /// [`Tracker::event`] through the shared memory (see [`Tracker::sharing`]); the same as
    /// [`Tracker::event`] when there is none.
    pub async fn event_shared(&self, kind: EventKind, token: &str, head: bool, now: u32) -> Event {
        let Some(state) = &self.shared else {
            return self.event(kind, token, head, now);
        };
        let event = match self.verify(kind, token, head, now) {
            Err(event) => event,
            Ok(claims) => {
                let id = &claims.id;
                let outcome = if head {
                    Outcome::Head
                } else if kind == EventKind::Click
                    && !state
                        .seen_has(id, EventKind::Impression)
                        .await
                        .unwrap_or(true)
                {
                    Outcome::NoImpression
                } else if self.seen.has(id, kind) {
                    // Counted here while Redis was unreachable.
                    Outcome::Duplicate
                } else {
                    let until = self.remember_until(&claims);
                    let mark = match state.seen_first(id, kind, until, now).await {
                        Ok(mark) => mark,
                        Err(_) => self.seen.first(id, kind, until, now),
                    };
                    self.counted(&claims, mark, now)
                };
                Event {
                    outcome,
                    claims: Some(claims),
                }
            }
        };
        self.metrics.observe_tracking(kind, event.outcome);
        event
    }

    /// The claims of a genuine, unexpired token; otherwise the event to answer at once.
    fn verify(&self, kind: EventKind, token: &str, head: bool, now: u32) -> Result<Claims, Event> {
        match self.signer.verify(kind, token, now) {
            Ok(c) => Ok(c),
            Err(TokenError::Expired(c)) => {
                let outcome = if head {
                    Outcome::Head
                } else {
                    Outcome::Expired
                };
                Err(Event {
                    outcome,
                    claims: Some(c),
                })
            }
            Err(e) => {
                let outcome = match e {
                    TokenError::BadSignature | TokenError::UnknownKey => Outcome::BadSignature,
                    _ => Outcome::Malformed,
                };
                Err(Event {
                    outcome,
                    claims: None,
                })
            }
        }
    }

    /// Until when an event of `claims` is remembered: an impression as long as its click may
    /// come.
    fn remember_until(&self, claims: &Claims) -> u32 {
        match claims.kind {
            EventKind::Impression => claims
                .expires
                .max(claims.issued.saturating_add(self.click_ttl)),
            _ => claims.expires,
        }
    }

    /// Counts `claims` when `mark` says it is new.
    fn counted(&self, claims: &Claims, mark: Mark, now: u32) -> Outcome {
        match mark {
            Mark::First => {
                self.count(claims);
                Outcome::Counted
            }
            Mark::Duplicate => Outcome::Duplicate,
            Mark::Full => {
                self.warn_full(now);
                Outcome::SeenFull
            }
        }
    }

    fn judge(&self, kind: EventKind, token: &str, head: bool, now: u32) -> Event {
        let claims = match self.verify(kind, token, head, now) {
            Ok(c) => c,
            Err(event) => return event,
        };
        let outcome = if head {
            Outcome::Head
        } else if kind == EventKind::Click && !self.seen.has(&claims.id, EventKind::Impression) {
            Outcome::NoImpression
        } else {
            let mark = self
                .seen
                .first(&claims.id, kind, self.remember_until(&claims), now);
            self.counted(&claims, mark, now)
        };
        Event {
            outcome,
            claims: Some(claims),
        }
    }

    fn warn_full(&self, now: u32) {
        let last = self.warned_full.load(Ordering::Relaxed);
        if now >= last.saturating_add(60)
            && self
                .warned_full
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "[tracking] seen_max_entries reached: new tracking events are not counted \
                 (rotator_tracking_events_total{{outcome=\"seen_full\"}}) until older ones \
                 expire; raise seen_max_entries or shorten the lifetimes"
            );
        }
    }

    /// Adds the event to the statistics row of its decision, in the current minute.
    fn count(&self, claims: &Claims) {
        let spend = self.spend(claims);
        let Some(stats) = &self.stats else {
            return;
        };
        let one = |k| u64::from(claims.kind == k);
        stats.add(
            RowKey {
                minute: current_minute(),
                country: claims.country,
                os: claims.os,
                browser: claims.browser,
                device: claims.device,
                campaign_id: claims.campaign_id,
                placement: claims.placement,
                creative_id: claims.creative_id,
            },
            Counts {
                requests: 0,
                impressions: one(EventKind::Impression),
                viewables: one(EventKind::Viewable),
                clicks: one(EventKind::Click),
                spend,
            },
        );
    }

    /// What a counted event costs, at the campaign's current price; a click's cost is charged
    /// to this node's budget lease (an impression's was charged when it was decided).
    fn spend(&self, claims: &Claims) -> u64 {
        let Some(costs) = &self.costs else {
            return 0;
        };
        let catalogue = costs.catalogue.load();
        let Some((campaign, _)) = catalogue.creative(claims.creative_id) else {
            return 0;
        };
        let spend = match claims.kind {
            EventKind::Impression => campaign.impression_cost(),
            EventKind::Click => campaign.click_cost(),
            EventKind::Viewable => 0,
        };
        if spend > 0 && campaign.delivery().budget.is_some() {
            self.metrics.observe_spend(campaign.id, spend);
            if claims.kind == EventKind::Click
                && let Some(delivery) = &costs.delivery
            {
                delivery.charge_click(campaign.id, spend);
            }
        }
        spend
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;
    use crate::visitor::geoip::Country;
    use crate::visitor::symbol::Sym;
    use crate::visitor::user_agent::Device;

    fn decision(now: u32) -> Claims {
        Claims {
            id: new_id(),
            kind: EventKind::Impression,
            campaign_id: 7,
            creative_id: 701,
            placement: Sym::intern("top-banner"),
            issued: now,
            expires: now,
            country: Country::parse("FR"),
            os: Sym::intern("Linux"),
            browser: Sym::intern("Firefox"),
            device: Device::Bot,
        }
    }

    fn tracker(max_entries: u64) -> (Tracker, Arc<Aggregator>) {
        let stats = Arc::new(Aggregator::new(2));
        let config = TrackingConfig::default();
        let tracker = Tracker::new(
            Signer::from_keys(&[3; 32], &[]).unwrap(),
            Arc::new(Seen::new(max_entries)),
            &config,
            Some(stats.clone()),
            Metrics::new(),
        );
        (tracker, stats)
    }

    fn totals(stats: &Aggregator) -> [u64; 4] {
        stats.drain().iter().fold([0; 4], |t, r| {
            assert_eq!((r.campaign_id, r.creative_id), (7, 701));
            assert_eq!(
                (r.placement.as_str(), r.device.as_str()),
                ("top-banner", "bot")
            );
            [
                t[0] + r.requests,
                t[1] + r.impressions,
                t[2] + r.viewables,
                t[3] + r.clicks,
            ]
        })
    }

    #[test]
    fn ids_are_distinct_across_pool_refills() {
        let ids: std::collections::HashSet<[u8; 12]> =
            (0..IDS_PER_FILL * 5 + 3).map(|_| new_id()).collect();
        assert_eq!(ids.len(), IDS_PER_FILL * 5 + 3);
        assert!(!ids.contains(&[0; 12]));
    }

    #[test]
    fn urls_carry_the_tokens_of_each_kind() {
        let (t, _) = tracker(10);
        let d = decision(now());
        let (urls, tokens) = (t.urls_of("http://h:1", &d), t.tokens(&d));
        assert_eq!(
            urls.impression,
            format!("http://h:1/v1/i/{}", tokens.impression)
        );
        assert_eq!(
            urls.viewable,
            format!("http://h:1/v1/v/{}", tokens.viewable)
        );
        assert_eq!(urls.click, format!("http://h:1/v1/c/{}", tokens.click));
        assert_ne!(tokens.impression, tokens.click);
    }

    #[test]
    fn each_event_counted_once_clicks_only_after_impressions() {
        let (t, stats) = tracker(1000);
        let now = now();
        let tokens = t.tokens(&decision(now));
        let ev = |kind, token: &str, head| t.event(kind, token, head, now + 1).outcome;
        assert_eq!(
            ev(EventKind::Click, &tokens.click, false),
            Outcome::NoImpression
        );
        assert_eq!(
            ev(EventKind::Impression, &tokens.impression, true),
            Outcome::Head
        );
        assert_eq!(
            totals(&stats),
            [0; 4],
            "HEAD and clicks without impression count nothing"
        );
        for n in 0..100 {
            let expected = if n == 0 {
                Outcome::Counted
            } else {
                Outcome::Duplicate
            };
            assert_eq!(
                ev(EventKind::Impression, &tokens.impression, false),
                expected
            );
        }
        assert_eq!(ev(EventKind::Click, &tokens.click, true), Outcome::Head);
        assert_eq!(ev(EventKind::Click, &tokens.click, false), Outcome::Counted);
        assert_eq!(
            ev(EventKind::Click, &tokens.click, false),
            Outcome::Duplicate
        );
        assert_eq!(
            ev(EventKind::Viewable, &tokens.viewable, false),
            Outcome::Counted
        );
        assert_eq!(
            ev(EventKind::Viewable, &tokens.viewable, false),
            Outcome::Duplicate
        );
        assert_eq!(totals(&stats), [0, 1, 1, 1]);
    }

    #[test]
    fn forged_wrong_kind_and_expired() {
        let (t, stats) = tracker(1000);
        let now = now();
        let tokens = t.tokens(&decision(now));
        let forged = format!("{}A", &tokens.click[..tokens.click.len() - 1]);
        let e = t.event(EventKind::Click, &forged, false, now);
        assert_eq!((e.outcome, e.claims), (Outcome::BadSignature, None));
        let e = t.event(EventKind::Click, &tokens.impression, false, now);
        assert_eq!((e.outcome, e.claims), (Outcome::Malformed, None));
        let e = t.event(EventKind::Click, "%%%", false, now);
        assert_eq!(e.outcome, Outcome::Malformed);
        // Expired: claims still there (a click redirects), nothing counted.
        let later = now + 3600;
        let e = t.event(EventKind::Impression, &tokens.impression, false, later);
        assert_eq!(e.outcome, Outcome::Expired);
        assert_eq!(e.claims.map(|c| c.creative_id), Some(701));
        let e = t.event(EventKind::Click, &tokens.click, false, now + 86_400);
        assert_eq!(e.outcome, Outcome::Expired);
        assert_eq!(totals(&stats), [0; 4]);
    }

    #[test]
    fn a_click_after_the_impression_token_expired_still_counts() {
        let (t, stats) = tracker(1000);
        let now = now();
        let tokens = t.tokens(&decision(now));
        let ev = |kind, token: &str, at| t.event(kind, token, false, at).outcome;
        assert_eq!(
            ev(EventKind::Impression, &tokens.impression, now),
            Outcome::Counted
        );
        t.seen.purge(now + 7200);
        assert_eq!(
            ev(EventKind::Click, &tokens.click, now + 7200),
            Outcome::Counted
        );
        assert_eq!(totals(&stats), [0, 1, 0, 1]);
    }

    #[test]
    fn outcomes_are_indexed_in_declaration_order() {
        // `Metrics::observe_tracking` indexes its series by `outcome as usize`.
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
    }

    #[test]
    fn base_url_from_config_or_a_valid_host() {
        let (t, _) = tracker(10);
        let base = |pairs: &[(&'static str, &'static str)], trusted| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            t.base_url(&h, trusted, false)
        };
        assert_eq!(
            base(&[("host", "ads.example:8080")], false),
            "http://ads.example:8080"
        );
        assert_eq!(base(&[("host", "[::1]:80")], false), "http://[::1]:80");
        for bad in [
            "evil.example/x",
            "a b",
            "user@evil.example",
            "",
            "\"><script>",
        ] {
            assert_eq!(base(&[("host", bad)], false), "", "{bad:?}");
        }
        assert_eq!(base(&[], false), "");
        let proxied = [
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-host", "ads.example"),
            ("x-forwarded-proto", "HTTPS"),
        ];
        assert_eq!(base(&proxied, true), "https://ads.example");
        assert_eq!(base(&proxied, false), "http://10.0.0.5:8080");

        let config = TrackingConfig {
            public_url: "https://ads.example/".into(),
            ..TrackingConfig::default()
        };
        let t = Tracker::new(
            Signer::from_keys(&[3; 32], &[]).unwrap(),
            Arc::new(Seen::new(10)),
            &config,
            None,
            Metrics::new(),
        );
        assert_eq!(
            t.base_url(&HeaderMap::new(), false, false),
            "https://ads.example"
        );
        let urls = t.urls_of("https://ads.example", &decision(now()));
        let token = urls
            .click
            .strip_prefix("https://ads.example/v1/c/")
            .unwrap();
        assert_eq!(
            t.event(EventKind::Click, token, true, now()).outcome,
            Outcome::Head
        );
        assert!(urls.impression.starts_with("https://ads.example/v1/i/"));
        assert!(urls.viewable.starts_with("https://ads.example/v1/v/"));
    }

    #[test]
    fn a_full_memory_refuses_to_count() {
        let (t, stats) = tracker(1);
        let now = now();
        let mut outcomes = Vec::new();
        for _ in 0..200 {
            let tokens = t.tokens(&decision(now));
            outcomes.push(
                t.event(EventKind::Impression, &tokens.impression, false, now)
                    .outcome,
            );
        }
        let counted = outcomes.iter().filter(|o| **o == Outcome::Counted).count() as u64;
        assert!(counted <= 64, "one per shard at most: {counted}");
        assert!(outcomes.contains(&Outcome::SeenFull));
        assert_eq!(totals(&stats), [0, counted, 0, 0]);
    }
}
