//! One request becomes one decision: visitor → auction → where to send them, counted once.
//!
//! [`Decider`] holds everything a decision reads (all immutable or lock-free) and is shared by
//! every connection. [`Decider::decide`] is the redirect's request path; it calls
//! [`Decider::record`], the one seam where a decision is counted (statistics row and metrics).
//! [`Decider::decide_slots`] is the same path for ad slots (the decisions API and the iframe
//! tag): one auction per placement among the campaigns with a creative that fits, then a
//! creative of the winner by weight. `explain` and the benchmarks use the same pieces without HTTP.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::{HeaderValue, USER_AGENT};
use serde::Serialize;

use crate::auction::{self, Exclusion, Outcome};
use crate::campaigns::{Campaign, Catalogue, CatalogueHandle, Creative, Placement};
use crate::config::{Config, ConfigError, check_url};
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
        })
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

    /// Decides for one HTTP request and counts it; returns the `Location` to send.
    #[inline]
    pub fn decide(&self, peer: IpAddr, headers: &HeaderMap) -> HeaderValue {
        let ip = self.client_ip.client_ip(peer, headers);
        // Any UTF-8 agent is accepted (not only visible ASCII); anything else is "unknown".
        let ua = headers
            .get(USER_AGENT)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
        let (visitor, cache, geo_ok) = self.visitor(ip, ua);
        let catalogue = self.catalogue.load();
        let outcome = auction::run(&catalogue, &visitor, self.bots_win);
        self.record(&visitor, &outcome, cache, geo_ok);
        match outcome {
            Outcome::Won(c) => c.location.clone(),
            Outcome::NoFill | Outcome::Bot => self.default_location.clone(),
        }
    }

    /// Runs one auction per slot (`placements` are positions in `catalogue`'s placements) for
    /// `visitor`. A campaign that won a slot does not win another slot of the same request while
    /// another eligible campaign exists. A bot fills no slot unless `bots_win`.
    pub fn decide_slots<'c>(
        &self,
        catalogue: &'c Catalogue,
        visitor: &Visitor,
        placements: &[usize],
    ) -> Vec<Option<SlotWin<'c>>> {
        let bot_refused = visitor.agent.is_bot() && !self.bots_win;
        let mut taken = Vec::with_capacity(placements.len());
        placements
            .iter()
            .map(|&p| {
                let placement = catalogue.placements().get(p)?;
                if bot_refused {
                    return None;
                }
                let index = catalogue.index();
                let pick = |n| fastrand::usize(..n);
                let position = index
                    .best_in_placement(visitor, p, &taken, pick)
                    .or_else(|| index.best_in_placement(visitor, p, &[], pick))?;
                taken.push(position);
                let campaign = catalogue.get(position)?;
                let creative = pick_creative(campaign, placement)?;
                Some(SlotWin {
                    campaign,
                    creative,
                    placement,
                })
            })
            .collect()
    }

    /// Counts one decision: one statistics row increment and the metrics.
    #[inline]
    pub fn record(
        &self,
        visitor: &Visitor,
        outcome: &Outcome<'_>,
        cache: CacheOutcome,
        geo_ok: bool,
    ) {
        let campaign_id = match outcome {
            Outcome::Won(c) => c.id,
            _ => 0,
        };
        if let Some(stats) = &self.stats {
            stats.record(RowKey {
                minute: current_minute(),
                country: visitor.country,
                os: visitor.agent.os,
                browser: visitor.agent.browser,
                device: visitor.agent.device,
                campaign_id,
                placement: Sym::EMPTY,
                creative_id: 0,
            });
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
        let explanation = auction::explain(&catalogue, &visitor, self.bots_win);
        let (winner, url) = match auction::run(&catalogue, &visitor, self.bots_win) {
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
