//! The campaign list: each campaign's status, today's figures and a chart of today's hourly
//! impressions (inline SVG, drawn on the server).
//!
//! Status comes from what is being served (the catalogue: paused, no creatives) and from the
//! delivery engine's verdict ([`Delivery::reason`], `rotator explain`'s words: scheduled = its
//! flight has not started, ended, out of budget = the daily or total budget spent), else
//! serving. Without an engine (an `Admin` built outside the server), "out of budget" is today's
//! spend in the statistics against the daily budget (UTC day).

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use maud::{Markup, html};
use serde_json::Value as Json;

use super::{Page, csrf, html_response, layout, may_write};
use crate::admin::reports::{self, REPORT_TIMEOUT, ReportLine};
use crate::campaigns::Campaign;
use crate::delivery::Delivery;
use crate::http::Body;
use crate::stats::report::ReportQuery;

/// A campaign's state as the list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Serving,
    Paused,
    Scheduled,
    Ended,
    OutOfBudget,
    NoCreatives,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Serving => "serving",
            Status::Paused => "paused",
            Status::Scheduled => "scheduled",
            Status::Ended => "ended",
            Status::OutOfBudget => "out of budget",
            Status::NoCreatives => "no creatives",
        }
    }
}

/// What the delivery engine says of a campaign it leaves out for everyone now ("flight: starts
/// …", "flight: ended …", "budget: daily … spent", as `rotator explain` says it), if anything.
fn engine_reason(engine: Option<&Delivery>, campaign: &Campaign, now: i64) -> Option<String> {
    engine.and_then(|d| d.reason(campaign, now, None))
}

/// The status of a served campaign (`active`, with creatives or not) from the engine's
/// `reason`; without an engine, "out of budget" is `stats_spent` (today's spend in the statistics
/// reached the daily budget).
pub(super) fn status(
    active: bool,
    creatives: bool,
    reason: Option<&str>,
    stats_spent: bool,
) -> Status {
    let says = |prefix: &str| reason.is_some_and(|r| r.starts_with(prefix));
    if !active {
        Status::Paused
    } else if !creatives {
        Status::NoCreatives
    } else if says("flight: starts") {
        Status::Scheduled
    } else if says("flight: ended") {
        Status::Ended
    } else if says("budget:") || (reason.is_none() && stats_spent) {
        Status::OutOfBudget
    } else {
        Status::Serving
    }
}

/// Today's figures per campaign id, and impressions per hour (index = UTC hour).
struct Today {
    lines: HashMap<String, ReportLine>,
    hourly: HashMap<String, Vec<u64>>,
    /// Hours of today so far (the length of every series).
    hours: usize,
    error: Option<String>,
}

async fn today(page: &Page<'_>, now: u32) -> Today {
    let midnight = now - now % 86_400;
    let hours = ((now - midnight) / 3600 + 1) as usize;
    let mut out = Today {
        lines: HashMap::new(),
        hourly: HashMap::new(),
        hours,
        error: None,
    };
    let q = ReportQuery {
        from: midnight,
        to: now + 60,
        by: vec!["campaign_id"],
    };
    match reports::run(&page.admin.sink, &q).await {
        Ok(doc) => {
            for line in doc.rows {
                if let Some(id) = line.campaign.clone() {
                    out.lines.insert(id, line);
                }
            }
        }
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    }
    for hour in 0..hours {
        let from = midnight + hour as u32 * 3600;
        let q = ReportQuery {
            from,
            to: from + 3600,
            by: vec!["campaign_id"],
        };
        let Ok(Ok(rows)) = tokio::time::timeout(REPORT_TIMEOUT, page.admin.sink.report(&q)).await
        else {
            continue;
        };
        for row in rows {
            if let Some(id) = row.group.first() {
                let series = out
                    .hourly
                    .entry(id.clone())
                    .or_insert_with(|| vec![0; hours]);
                series[hour] = row.impressions;
            }
        }
    }
    out
}

/// A small line chart of `series` (inline SVG; its label says what it shows).
pub(super) fn sparkline(series: &[u64]) -> Markup {
    const W: f64 = 96.0;
    const H: f64 = 24.0;
    let max = series.iter().copied().max().unwrap_or(0);
    let total: u64 = series.iter().sum();
    let step = if series.len() > 1 {
        W / (series.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if max == 0 {
                H - 1.0
            } else {
                H - 1.0 - (*v as f64 / max as f64) * (H - 2.0)
            };
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect();
    let label = format!("Impressions per hour today: {total} in all, at most {max} in an hour");
    html! {
        svg.spark width="96" height="24" viewBox="0 0 96 24" role="img" aria-label=(label) {
            title { (label) }
            polyline points=(points.join(" ")) fill="none" stroke="currentColor" stroke-width="1.5" {}
        }
    }
}

/// `GET /campaigns`
pub(super) async fn list(page: &Page<'_>) -> Response<Body> {
    let admin = page.admin;
    let snapshot = match admin.campaigns.read().await {
        Ok(s) => s,
        Err(e) => {
            return html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                layout(
                    page,
                    "Campaigns",
                    html! { p.error role="alert" { (e.to_string()) } },
                ),
            );
        }
    };
    let now = reports::unix_now();
    let today = today(page, now).await;
    let catalogue = admin.campaigns.catalogue().load();
    let served: HashMap<u32, &Campaign> = catalogue.campaigns().iter().map(|c| (c.id, c)).collect();
    let writer = may_write(page);
    let notice = page.param("notice");
    let content = html! {
        @if !notice.is_empty() { p.notice role="status" { (notice) } }
        @if writer { p { a.button href="/campaigns/new" { "New campaign" } } }
        @if let Some(e) = &today.error {
            p.error role="alert" { "Today's figures are unavailable: " (e) }
        }
        div.scroll {
        table {
            caption { "Campaigns with today's figures (UTC day)" }
            thead { tr {
                th scope="col" { "ID" } th scope="col" { "Name" } th scope="col" { "Status" }
                th scope="col" .num { "Requests" } th scope="col" .num { "Impressions" }
                th scope="col" .num { "Clicks" } th scope="col" .num { "CTR" }
                th scope="col" .num { "Spend" } th scope="col" { "Today" }
                th scope="col" { "Actions" }
            } }
            tbody {
                @for c in snapshot.campaigns() {
                    (row(page, &c, &served, &today, now, writer))
                }
            }
        }
        }
    };
    html_response(StatusCode::OK, layout(page, "Campaigns", content))
}

fn row(
    page: &Page<'_>,
    c: &Json,
    served: &HashMap<u32, &Campaign>,
    today: &Today,
    now: u32,
    writer: bool,
) -> Markup {
    let id = c["id"].as_u64().unwrap_or(0);
    let key = id.to_string();
    let line = today.lines.get(&key);
    let spent: f64 = line.and_then(|l| l.spend.parse().ok()).unwrap_or(0.0);
    let daily = c["budget"]["daily"].as_f64();
    let engine = page.admin.delivery.as_deref();
    let state = served.get(&(id as u32)).map(|s| {
        let reason = engine_reason(engine, s, i64::from(now));
        let stats_spent = engine.is_none() && daily.is_some_and(|d| spent >= d);
        status(
            s.active,
            !s.creatives.is_empty(),
            reason.as_deref(),
            stats_spent,
        )
    });
    let name = c["name"].as_str().unwrap_or("");
    let active = c["active"].as_bool().unwrap_or(true);
    let n = |f: fn(&ReportLine) -> u64| line.map_or(0, f);
    let series = today
        .hourly
        .get(&key)
        .cloned()
        .unwrap_or_else(|| vec![0; today.hours]);
    html! {
        tr {
            td { (id) }
            th scope="row" { a href={ "/campaigns/" (id) } { @if name.is_empty() { "campaign " (id) } @else { (name) } } }
            td { @match state {
                Some(s) => span class={ "status s-" (s.label().replace(' ', "-")) } { (s.label()) },
                None => span.status { "not loaded" },
            } }
            td.num { (n(|l| l.requests)) }
            td.num { (n(|l| l.impressions)) }
            td.num { (n(|l| l.clicks)) }
            td.num { (format!("{:.2} %", line.map_or(0.0, |l| l.ctr * 100.0))) }
            td.num { (line.map_or("0.000000", |l| l.spend.as_str())) }
            td { (sparkline(&series)) }
            td.actions {
                a href={ "/campaigns/" (id) } { @if writer { "Edit" } @else { "View" } }
                @if writer {
                    form method="post" action={ "/campaigns/" (id) "/" (if active { "pause" } else { "resume" }) } {
                        (csrf(page))
                        button type="submit" { @if active { "Pause" } @else { "Resume" } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status() {
        use Status::*;
        let cases = [
            (true, true, None, false, Serving),
            (
                true,
                true,
                Some("pacing: held back (takes part in 40 % of auctions)"),
                false,
                Serving,
            ),
            (
                false,
                true,
                Some("budget: daily 5.00 of 5.00 spent"),
                false,
                Paused,
            ),
            (true, false, None, false, NoCreatives),
            (
                true,
                true,
                Some("flight: starts 2030-01-01 00:00:00 UTC"),
                false,
                Scheduled,
            ),
            (
                true,
                true,
                Some("flight: ended 2020-01-01 23:59:59 UTC"),
                false,
                Ended,
            ),
            (
                true,
                true,
                Some("budget: daily 5.00 of 5.00 spent"),
                false,
                OutOfBudget,
            ),
            (
                true,
                true,
                Some("budget: total 9.00 of 9.00 spent"),
                false,
                OutOfBudget,
            ),
            (true, true, None, true, OutOfBudget),
        ];
        for (active, creatives, reason, stats_spent, want) in cases {
            assert_eq!(
                status(active, creatives, reason, stats_spent),
                want,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn sparkline_scales_to_the_busiest_hour() {
        let svg = sparkline(&[0, 5, 10]).into_string();
        assert!(
            svg.contains("points=\"0.0,23.0 48.0,12.0 96.0,1.0\""),
            "{svg}"
        );
        assert!(svg.contains("15 in all, at most 10 in an hour"), "{svg}");
        let flat = sparkline(&[]).into_string();
        assert!(flat.contains("0 in all"), "{flat}");
    }
}
