//! The campaign form's markup: every field labelled, its problems next to it
//! (`aria-describedby`, `aria-invalid`), a summary linking to them, the conflict message, the
//! creative rows with their sandboxed previews. Viewers get it read-only, without buttons.

use hyper::{Response, StatusCode};
use maud::{Markup, html};

use super::super::{Form, Page, csrf, html_response, layout, may_write};
use super::LISTS;
use crate::admin::model::Problem;
use crate::http::Body;

/// What the form says above its fields.
pub(super) enum Banner {
    None,
    Saved,
    Stale,
    Invalid,
}

pub(super) struct FormView<'a> {
    pub(super) id: Option<u32>,
    pub(super) values: &'a Form,
    pub(super) problems: &'a [Problem],
    pub(super) etag: &'a str,
    pub(super) banner: Banner,
}

fn field_id(key: &str) -> String {
    format!("f-{}", key.replace(['.', '[', ']'], "-"))
}

/// One labelled input with its problems (`aria-describedby`, `aria-invalid`).
fn input(v: &FormView<'_>, key: &str, label: &str, kind: &str, help: &str) -> Markup {
    let id = field_id(key);
    let errors: Vec<&Problem> = v.problems.iter().filter(|p| p.field == key).collect();
    let value = v.values.get(key).map_or("", String::as_str);
    let described = match (errors.is_empty(), help.is_empty()) {
        (true, true) => None,
        (true, false) => Some(format!("{id}-help")),
        (false, true) => Some(format!("{id}-err")),
        (false, false) => Some(format!("{id}-err {id}-help")),
    };
    html! {
        div.field {
            label for=(id) { (label) }
            @if kind == "textarea" {
                textarea id=(id) name=(key) rows="4" aria-describedby=[described.as_ref()]
                    aria-invalid=[(!errors.is_empty()).then_some("true")] { (value) }
            } @else if let Some(options) = kind.strip_prefix("select:") {
                select id=(id) name=(key) aria-describedby=[described.as_ref()]
                    aria-invalid=[(!errors.is_empty()).then_some("true")] {
                    @for o in options.split('|') {
                        option value=(o) selected[o == value] { @if o.is_empty() { "(default)" } @else { (o) } }
                    }
                }
            } @else {
                input id=(id) name=(key) type=(kind) value=(value) aria-describedby=[described.as_ref()]
                    aria-invalid=[(!errors.is_empty()).then_some("true")];
            }
            @if !errors.is_empty() {
                p.error id={ (id) "-err" } { @for e in &errors { (e.message) " " } }
            }
            @if !help.is_empty() { p.help id={ (id) "-help" } { (help) } }
        }
    }
}

pub(super) fn render(page: &Page<'_>, status: StatusCode, v: &FormView<'_>) -> Response<Body> {
    let writer = may_write(page);
    let title = match v.id {
        Some(id) => format!("Campaign {id}"),
        None => "New campaign".to_string(),
    };
    let action = v.id.map_or_else(
        || "/campaigns/new".to_string(),
        |id| format!("/campaigns/{id}"),
    );
    let rows: usize = v
        .values
        .get("creatives")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let known: Vec<&str> = LISTS
        .iter()
        .copied()
        .chain(["name", "url", "bid", "pricing", "start", "end", "active"])
        .chain([
            "budget.daily",
            "budget.total",
            "budget.pacing",
            "budget.timezone",
        ])
        .chain(["frequency_cap.impressions", "frequency_cap.per"])
        .collect();
    let elsewhere: Vec<&Problem> = v
        .problems
        .iter()
        .filter(|p| !known.contains(&p.field.as_str()) && !p.field.starts_with("cr"))
        .collect();
    let active = v.values.contains_key("active");
    let content = html! {
        @match v.banner {
            Banner::Saved => p.notice role="status" { "Saved. The campaign is served as shown." },
            Banner::Stale => p.error.conflict role="alert" id="conflict" {
                "Someone changed this campaign after you opened this page, so your changes were not saved. "
                "The current values are shown below: make your changes again and save."
            },
            Banner::Invalid => div.error role="alert" id="problems" {
                p { "Not saved: the campaign would not load. " (v.problems.len()) " problem(s):" }
                ul { @for p in v.problems { li {
                    @if p.field.is_empty() { (p.message) }
                    @else { a href={ "#" (field_id(&p.field)) } { (p.field) } ": " (p.message) }
                } } }
            },
            Banner::None => {},
        }
        @for p in &elsewhere { p.error { (p.text) } }
        @if !writer { p.notice { "You are signed in as a viewer: this form is read-only." } }
        form method="post" action=(action) novalidate {
            (csrf(page))
            input type="hidden" name="etag" value=(v.etag);
            input type="hidden" name="creatives" value=(rows);
            fieldset disabled[!writer] {
                legend { "Campaign" }
                (input(v, "name", "Name", "text", ""))
                (input(v, "url", "Landing page URL", "url", "Where a click goes (creatives may set their own)."))
                (input(v, "bid", "Bid", "text", "Per 1,000 impressions (CPM) or per click (CPC)."))
                (input(v, "pricing", "Pricing", "select:|cpm|cpc", ""))
                div.field.check {
                    input id="f-active" name="active" type="checkbox" checked[active];
                    label for="f-active" { "Active (may serve)" }
                }
                (input(v, "start", "Start", "text", "A date (2026-12-01) or date-time (2026-12-01T08:00:00Z); empty: now."))
                (input(v, "end", "End", "text", "A date (the whole day) or date-time; empty: no end."))
                (input(v, "placements", "Placements", "text", "Placement ids, comma-separated; empty: any."))
            }
            fieldset disabled[!writer] {
                legend { "Targeting (comma-separated; empty: anyone)" }
                (input(v, "targeting.countries", "Countries", "text", "ISO codes, e.g. de, fr."))
                (input(v, "targeting.browsers", "Browsers", "text", ""))
                (input(v, "targeting.os", "Operating systems", "text", ""))
                (input(v, "targeting.devices", "Devices", "text", "desktop, mobile, tablet, tv, bot, other."))
            }
            fieldset disabled[!writer] {
                legend { "Budget and frequency" }
                (input(v, "budget.daily", "Daily budget", "text", ""))
                (input(v, "budget.total", "Total budget", "text", ""))
                (input(v, "budget.pacing", "Pacing", "select:|even|asap", ""))
                (input(v, "budget.timezone", "Budget time zone", "text", "IANA name, e.g. Europe/Berlin; empty: UTC."))
                (input(v, "frequency_cap.impressions", "Frequency cap: impressions", "text", ""))
                (input(v, "frequency_cap.per", "Frequency cap: per", "text", "A duration, e.g. 24h."))
            }
            @for i in 0..=rows {
                (creative_row(page, v, i, i == rows))
            }
            @if writer {
                div.actions { button type="submit" id="save" { @if v.id.is_some() { "Save" } @else { "Create campaign" } } }
            }
        }
        @if let (Some(id), true) = (v.id, writer) {
            form method="post" action={ "/campaigns/" (id) "/" (if active { "pause" } else { "resume" }) } {
                (csrf(page))
                button type="submit" id="pause-resume" { @if active { "Pause campaign" } @else { "Resume campaign" } }
            }
        }
    };
    html_response(status, layout(page, &title, content))
}

fn creative_row(page: &Page<'_>, v: &FormView<'_>, i: usize, blank: bool) -> Markup {
    let key = |f: &str| format!("cr{i}.{f}");
    let id = v.values.get(&key("id")).map_or("", String::as_str);
    let size = v.values.get(&key("size")).map_or("", String::as_str);
    let (w, h) = size.split_once('x').unwrap_or(("300", "60"));
    html! {
        fieldset.creative disabled[!may_write(page)] {
            legend { @if blank { "Add a creative (leave Kind empty to add none)" } @else { "Creative " (id) } }
            input type="hidden" name=(key("id")) value=(id);
            (input(v, &key("kind"), "Kind", "select:|image|html|text", ""))
            (input(v, &key("size"), "Size", "text", "WIDTHxHEIGHT, e.g. 728x90 (image and html)."))
            (input(v, &key("image_url"), "Image URL", "url", ""))
            (input(v, &key("alt"), "Alternative text", "text", ""))
            (input(v, &key("html"), "HTML", "textarea", "Runs sandboxed; {{click_url}} and {{cachebuster}} are replaced."))
            (input(v, &key("text"), "Text", "text", ""))
            (input(v, &key("click_url"), "Click URL", "url", "Empty: the campaign's landing page."))
            (input(v, &key("weight"), "Weight", "text", "Rotation weight (default 1)."))
            @if !blank {
                div.field.check {
                    input id={ "f-cr" (i) "-remove" } name=(key("remove")) type="checkbox";
                    label for={ "f-cr" (i) "-remove" } { "Remove this creative" }
                }
                @if let (Some(campaign), false) = (v.id, id.is_empty()) {
                    div.preview {
                        p { "Preview" }
                        iframe src={ "/preview/" (campaign) "/" (id) } sandbox="allow-scripts"
                            width=(w) height=(h) title={ "Preview of creative " (id) } loading="lazy" {}
                    }
                }
            }
        }
    }
}
