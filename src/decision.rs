//! One request becomes one decision: visitor → auction → where to send them, counted once.
//!
//! [`Decider`] holds everything a decision reads (all immutable or lock-free) and is shared by
//! every connection. [`Decider::decide`] is the redirect's request path; it calls
//! [`Decider::record`], the one seam where a decision is counted (statistics row and metrics).
//! [`Decider::decide_slots`] is the same path for ad slots (the decisions API and the iframe
//! tag): one auction per placement among the campaigns with a creative that fits, then a
//! creative of the winner by weight. `explain` and the benchmarks use the same pieces without HTTP.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::{HeaderValue, USER_AGENT};
use serde::Serialize;

use crate::auction::{self, Exclusion, Outcome};
use crate::campaigns::{Campaign, Catalogue, CatalogueHandle, Creative, Placement};
use crate::config::{Config, ConfigError, check_url};
use crate::delivery::gate::{Candidate, Gate};
use crate::delivery::identity::{Keys, LazyIdentity, Who};
use crate::delivery::{Delivery, Settle};
use crate::metrics::Metrics;
use crate::stats::aggregator::{Aggregator, Counts, RowKey, current_minute};
use crate::visitor::Visitor;
use crate::visitor::client_ip::{ClientIpRule, IpSource};
use crate::visitor::geoip::GeoIpHandle;
use crate::visitor::symbol::Sym;
use crate::visitor::user_agent::{CacheOutcome, UserAgentParser};

/// Everything a decision needs.
pub struct Decider {
    /// Current country database.
    pub geoip: GeoIpHandle,
    /// User-Agent parser and cache.
    pub agents: Arc<UserAgentParser>,
    /// Current campaigns.
    pub catalogue: CatalogueHandle,
    /// Which peers' forwarding header is believed, and which header.
    pub client_ip: ClientIpRule,
    /// `Location` when nothing wins.
    pub default_location: HeaderValue,
    /// Whether bots take part in auctions.
    pub bots_win: bool,
    /// Statistics counters; `None` when statistics are off (explain, benchmarks).
    pub stats: Option<Arc<Aggregator>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Flights, budgets, pacing and caps; `None` ignores them (explain without state, benches).
    pub delivery: Option<Arc<Delivery>>,
    /// For `rotator explain --user`: the visitor's views counting now, by capped campaign id.
    pub explain_views: std::collections::HashMap<u32, u32>,
}

/// What filled one ad slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotWin<'c> {
    /// The campaign that won the slot's auction.
    pub campaign: &'c Campaign,
    /// Its creative chosen for the slot.
    pub creative: &'c Creative,
    /// The slot's placement.
    pub placement: &'c Placement,
    /// The decision id its tracking URLs carry.
    pub decision: [u8; 12],
}

/// What the redirect answers.
#[derive(Debug, Clone)]
pub struct AdAnswer {
    /// Where the visitor is sent.
    pub location: HeaderValue,
    /// The identity cookie to set, on a first visit.
    pub set_cookie: Option<HeaderValue>,
}

/// An answer now, or once the state backend replied (a capped campaign on Redis).
pub enum Answer<T> {
    /// Decided.
    Now(T),
    /// Deciding.
    Later(Pin<Box<dyn Future<Output = T> + Send>>),
}

/// The slots of one request, decided.
pub struct Slots<'c> {
    /// One entry per slot asked, `None` when nothing filled it.
    pub wins: Vec<Option<SlotWin<'c>>>,
    /// The identity cookie to set, on a first visit.
    pub set_cookie: Option<HeaderValue>,
}

/// A request's view of the campaigns: the catalogue, and the delivery gate over it when any
/// campaign has a limit.
pub struct View {
    /// The campaigns.
    pub catalogue: Arc<Catalogue>,
    gate: Option<Arc<Gate>>,
}

impl View {
    /// A view of `catalogue` without delivery limits (benchmarks, tests).
    pub fn plain(catalogue: Arc<Catalogue>) -> View {
        View {
            catalogue,
            gate: None,
        }
    }
}

/// What `rotator explain` prints for one visitor.
#[derive(Debug, Serialize)]
pub struct Explained {
    /// The address used.
    pub ip: IpAddr,
    /// The connection's peer (`--ip`).
    pub peer: IpAddr,
    /// Where `ip` came from: the configured header, or the peer and why.
    pub ip_source: String,
    /// ISO code, or null.
    pub country: Option<String>,
    /// Browser family.
    pub browser: String,
    /// OS family.
    pub os: String,
    /// Device type.
    pub device: &'static str,
    /// Whether the agent is a bot.
    pub bot: bool,
    /// Eligible campaign ids, highest bid first.
    pub eligible: Vec<u32>,
    /// Campaigns left out, with the reason.
    pub excluded: Vec<Exclusion>,
    /// The winner, or null.
    pub winner: Option<u32>,
    /// Where the visitor is sent.
    pub url: String,
}

/// One of `campaign`'s creatives that fit `placement`, chosen by weight.
fn pick_creative<'c>(campaign: &'c Campaign, placement: &Placement) -> Option<&'c Creative> {
    let fitting = || campaign.creatives.iter().filter(|c| placement.fits(c));
    let total: u64 = fitting().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = fastrand::u64(..total);
    fitting().find(|c| {
        let weight = u64::from(c.weight);
        if ticket < weight {
            return true;
        }
        ticket -= weight;
        false
    })
}

impl Decider {
    /// A decider serving `config`'s request-path settings over the given parts; also resolves
    /// the win counters of the current campaigns.
    pub fn new(
        config: &Config,
        geoip: GeoIpHandle,
        agents: Arc<UserAgentParser>,
        catalogue: CatalogueHandle,
        stats: Option<Arc<Aggregator>>,
        metrics: Arc<Metrics>,
    ) -> Result<Decider, ConfigError> {
        let ids: Vec<u32> = catalogue.load().campaigns().iter().map(|c| c.id).collect();
        metrics.set_campaigns(&ids);
        // Both were validated when the config was loaded; these only fail on a hand-built Config.
        let default_location =
            check_url(&config.server.default_url).map_err(|message| ConfigError::Invalid {
                source_name: config.source_name.clone(),
                section: "server",
                key: "default_url",
                message,
            })?;
        Ok(Decider {
            geoip,
            agents,
            catalogue,
            client_ip: config.client_ip_rule()?,
            default_location,
            bots_win: config.server.bots_win,
            stats,
            metrics,
            delivery: None,
            explain_views: std::collections::HashMap::new(),
        })
    }

    /// The same decider enforcing `delivery`'s limits.
    pub fn with_delivery(self, delivery: Arc<Delivery>) -> Decider {
        Decider {
            delivery: Some(delivery),
            ..self
        }
    }

    /// The campaigns a request decides over.
    #[inline]
    pub fn view(&self) -> View {
        match &self.delivery {
            Some(d) => {
                let gate = d.gate();
                View {
                    catalogue: Arc::clone(&gate.catalogue),
                    gate: gate.limited().then_some(gate),
                }
            }
            None => View {
                catalogue: self.catalogue.load_full(),
                gate: None,
            },
        }
    }

    /// What is known about a visitor at `ip` with User-Agent `ua`.
    #[inline]
    pub fn visitor(&self, ip: IpAddr, ua: Option<&str>) -> (Visitor, CacheOutcome, bool) {
        let (agent, cache) = self.agents.lookup(ua);
        let (country, geo_ok) = match self.geoip.load().country(ip) {
            Ok(c) => (c, true),
            Err(_) => (None, false),
        };
        (Visitor { ip, country, agent }, cache, geo_ok)
    }

    /// Decides for one HTTP request and counts it: where to send the visitor. Answered at once
    /// unless a capped campaign's view must be reserved in Redis.
    #[inline]
    pub fn decide(self: &Arc<Self>, peer: IpAddr, headers: &HeaderMap) -> Answer<AdAnswer> {
        let ip = self.client_ip.client_ip(peer, headers);
        // Any UTF-8 agent is accepted (not only visible ASCII); anything else is "unknown".
        let ua = headers
            .get(USER_AGENT)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
        let (visitor, cache, geo_ok) = self.visitor(ip, ua);
        let view = self.view();
        let (Some(gate), Some(delivery)) = (&view.gate, &self.delivery) else {
            let outcome = auction::run(&view.catalogue, &visitor, self.bots_win);
            self.record(&visitor, &outcome, cache, geo_ok);
            return Answer::Now(self.answer(&outcome, None));
        };
        if visitor.agent.is_bot() && !self.bots_win {
            self.record(&visitor, &Outcome::Bot, cache, geo_ok);
            return Answer::Now(self.answer(&Outcome::Bot, None));
        }
        let now = i64::from(crate::tracking::now());
        let who = Who {
            headers: Some(headers),
            ip: Some(ip),
            ua,
            ..Who::default()
        };
        let make = || delivery.identifier().identify(&who, now);
        let lazy = LazyIdentity::new(&make);
        let decision = crate::tracking::new_id();
        let candidates = self.candidates(gate, delivery, &visitor, None, &[], &lazy, decision, now);
        let identity = lazy.into_inner().unwrap_or_default();
        let finish = move |this: &Decider, gate: &Gate, won: Option<Candidate>, cookie| {
            let outcome = won
                .and_then(|w| gate.catalogue.get(w.position))
                .map_or(Outcome::NoFill, Outcome::Won);
            this.record(&visitor, &outcome, cache, geo_ok);
            this.answer(&outcome, cookie)
        };
        match delivery.settle(gate, candidates, &identity.keys, decision, now) {
            Settle::Done(won) => Answer::Now(finish(self, gate, won, identity.set_cookie)),
            Settle::Pending(reserving) => {
                let (this, gate) = (self.clone(), gate.clone());
                Answer::Later(Box::pin(async move {
                    let won = reserving.await;
                    finish(&this, &gate, won, identity.set_cookie)
                }))
            }
        }
    }

    fn answer(&self, outcome: &Outcome<'_>, set_cookie: Option<HeaderValue>) -> AdAnswer {
        let location = match outcome {
            Outcome::Won(c) => c.location.clone(),
            Outcome::NoFill | Outcome::Bot => self.default_location.clone(),
        };
        AdAnswer {
            location,
            set_cookie,
        }
    }

    /// The auction under delivery limits (see [`Gate::candidates`]).
    #[allow(clippy::too_many_arguments)]
    fn candidates(
        &self,
        gate: &Gate,
        delivery: &Delivery,
        visitor: &Visitor,
        placement: Option<usize>,
        taken: &[usize],
        identity: &LazyIdentity<'_>,
        decision: [u8; 12],
        now: i64,
    ) -> Vec<Candidate> {
        gate.candidates(
            visitor,
            placement,
            taken,
            Some(identity),
            &delivery.caps(decision, now),
            |reason| self.metrics.observe_excluded(reason),
        )
    }

    /// Runs one auction per slot (`placements` are positions in the view's placements) for
    /// `visitor`. A campaign that won a slot does not win another slot of the same request while
    /// another eligible campaign exists. A bot fills no slot unless `bots_win`. `who` identifies
    /// the visitor for frequency caps.
    pub async fn decide_slots<'c>(
        &self,
        view: &'c View,
        visitor: &Visitor,
        placements: &[usize],
        who: Who<'_>,
    ) -> Slots<'c> {
        let catalogue = &*view.catalogue;
        let bot_refused = visitor.agent.is_bot() && !self.bots_win;
        let now = i64::from(crate::tracking::now());
        let limits = view.gate.as_ref().zip(self.delivery.as_ref());
        let who = Who {
            ip: Some(visitor.ip),
            ..who
        };
        let make = || {
            self.delivery
                .as_ref()
                .map(|d| d.identifier().identify(&who, now))
                .unwrap_or_default()
        };
        let lazy = LazyIdentity::new(&make);
        let mut taken = Vec::with_capacity(placements.len());
        let mut wins = Vec::with_capacity(placements.len());
        for &p in placements {
            let Some(placement) = catalogue.placements().get(p).filter(|_| !bot_refused) else {
                wins.push(None);
                continue;
            };
            let decision = crate::tracking::new_id();
            let position = match limits {
                None => {
                    let index = catalogue.index();
                    let pick = |n| fastrand::usize(..n);
                    index
                        .best_in_placement(visitor, p, &taken, pick)
                        .or_else(|| index.best_in_placement(visitor, p, &[], pick))
                }
                Some((gate, delivery)) => {
                    let candidates = self.candidates(
                        gate,
                        delivery,
                        visitor,
                        Some(p),
                        &taken,
                        &lazy,
                        decision,
                        now,
                    );
                    // Worked out if a capped candidate needed it (then the reservation does).
                    let keys = if candidates.iter().any(|c| c.capped) {
                        lazy.keys().clone()
                    } else {
                        Keys::default()
                    };
                    let won = match delivery.settle(gate, candidates, &keys, decision, now) {
                        Settle::Done(won) => won,
                        Settle::Pending(reserving) => reserving.await,
                    };
                    if let Some(w) = &won {
                        delivery.hold(gate, w, &keys, decision, now);
                    }
                    won.map(|w| w.position)
                }
            };
            let win = position.and_then(|position| {
                taken.push(position);
                let campaign = catalogue.get(position)?;
                let creative = pick_creative(campaign, placement)?;
                Some(SlotWin {
                    campaign,
                    creative,
                    placement,
                    decision,
                })
            });
            wins.push(win);
        }
        Slots {
            wins,
            set_cookie: lazy.into_inner().and_then(|i| i.set_cookie),
        }
    }

    /// Counts one decision: one statistics row increment (the redirect is the winner's
    /// impression, with its cost) and the metrics.
    #[inline]
    pub fn record(
        &self,
        visitor: &Visitor,
        outcome: &Outcome<'_>,
        cache: CacheOutcome,
        geo_ok: bool,
    ) {
        let (campaign_id, spend, budgeted) = match outcome {
            Outcome::Won(c) => (c.id, c.impression_cost(), c.delivery().budget.is_some()),
            _ => (0, 0, false),
        };
        if let Some(stats) = &self.stats {
            let key = RowKey {
                minute: current_minute(),
                country: visitor.country,
                os: visitor.agent.os,
                browser: visitor.agent.browser,
                device: visitor.agent.device,
                campaign_id,
                placement: Sym::EMPTY,
                creative_id: 0,
            };
            if spend == 0 {
                stats.record(key);
            } else {
                let counts = Counts {
                    requests: 1,
                    impressions: 1,
                    spend,
                    ..Counts::default()
                };
                stats.add(key, counts);
            }
        }
        // Per-campaign series only for budgeted campaigns: bounded by what operators budget.
        if budgeted && spend > 0 {
            self.metrics.observe_spend(campaign_id, spend);
        }
        self.metrics.observe_decision(
            outcome,
            !geo_ok,
            visitor.country.is_some(),
            cache == CacheOutcome::Hit,
        );
    }

    /// Counts one slot's decision: a request for `placement` in the statistics row of the
    /// winning campaign and creative (0 and 0 when nothing filled it), and the metrics. The
    /// impression is counted later, when the ad has rendered (`crate::tracking`).
    pub fn record_slot(
        &self,
        visitor: &Visitor,
        placement: &Placement,
        win: Option<&SlotWin<'_>>,
        geo_ok: bool,
    ) {
        if let Some(stats) = &self.stats {
            stats.add(
                RowKey {
                    minute: current_minute(),
                    country: visitor.country,
                    os: visitor.agent.os,
                    browser: visitor.agent.browser,
                    device: visitor.agent.device,
                    campaign_id: win.map_or(0, |w| w.campaign.id),
                    placement: placement.sym,
                    creative_id: win.map_or(0, |w| w.creative.id),
                },
                Counts {
                    requests: 1,
                    ..Counts::default()
                },
            );
        }
        let outcome = match win {
            Some(w) => Outcome::Won(w.campaign),
            None if visitor.agent.is_bot() && !self.bots_win => Outcome::Bot,
            None => Outcome::NoFill,
        };
        self.metrics
            .observe_decision(&outcome, !geo_ok, visitor.country.is_some(), false);
    }

    /// Explains the decision for a request from peer `ip` with User-Agent `ua` and no other
    /// headers, without counting it.
    pub fn explain(&self, ip: IpAddr, ua: &str) -> Explained {
        let (visitor_ip, source) = self.client_ip.resolve(ip, &HeaderMap::new());
        self.explain_visitor(visitor_ip, ip, source, ua)
    }

    /// Explains the decision for a request from `peer` with `headers`, as [`Decider::decide`]
    /// would see it (client-IP rule, User-Agent header), without counting it.
    pub fn explain_request(&self, peer: IpAddr, headers: &HeaderMap) -> Explained {
        let (ip, source) = self.client_ip.resolve(peer, headers);
        let ua = headers
            .get(USER_AGENT)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .unwrap_or("");
        self.explain_visitor(ip, peer, source, ua)
    }

    fn explain_visitor(&self, ip: IpAddr, peer: IpAddr, source: IpSource, ua: &str) -> Explained {
        let (visitor, _, _) = self.visitor(ip, Some(ua));
        let catalogue = self.catalogue.load();
        let mut explanation = auction::explain(&catalogue, &visitor, self.bots_win);
        let outcome = match &self.delivery {
            None => auction::run(&catalogue, &visitor, self.bots_win),
            Some(delivery) => {
                // Flight, budget, pacing and cap, as the ticker and the state backend last saw
                // them; the winner is the highest bid left (the first of equal ones).
                let now = i64::from(crate::tracking::now());
                let by_id = |id: u32| catalogue.campaigns().iter().find(|c| c.id == id);
                let mut kept = Vec::with_capacity(explanation.eligible.len());
                for id in explanation.eligible.drain(..) {
                    let reason = by_id(id).and_then(|c| {
                        delivery.reason(c, now, self.explain_views.get(&id).copied())
                    });
                    match reason {
                        Some(reason) => explanation.excluded.push(Exclusion { id, reason }),
                        None => kept.push(id),
                    }
                }
                explanation.eligible = kept;
                explanation.excluded.sort_by_key(|e| e.id);
                match explanation.eligible.first().and_then(|id| by_id(*id)) {
                    Some(c) => Outcome::Won(c),
                    None if visitor.agent.is_bot() && !self.bots_win => Outcome::Bot,
                    None => Outcome::NoFill,
                }
            }
        };
        let (winner, url) = match outcome {
            Outcome::Won(c) => (
                Some(c.id),
                String::from_utf8_lossy(c.location.as_bytes()).into_owned(),
            ),
            _ => (
                None,
                String::from_utf8_lossy(self.default_location.as_bytes()).into_owned(),
            ),
        };
        Explained {
            ip: visitor.ip,
            peer,
            ip_source: source.to_string(),
            country: visitor.country.map(|c| c.to_string()),
            browser: visitor.agent.browser.to_string(),
            os: visitor.agent.os.to_string(),
            device: visitor.agent.device.as_str(),
            bot: visitor.agent.is_bot(),
            eligible: explanation.eligible,
            excluded: explanation.excluded,
            winner,
            url,
        }
    }
}
