//! The campaign form (every field of a `[[campaign]]`, its creatives as rows, a blank row to
//! add one), its save, and pause/resume.
//!
//! The form's field names are the API's problem fields (`bid`, `budget.daily`), creatives are
//! rows `cr{N}.…`; the loader's problems (`creatives[701].size`) are shown next to the field
//! they name. The campaign's ETag travels in a hidden field: a page opened before someone
//! else's save gets `412` and the current values, and nothing is overwritten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::{Response, StatusCode};
use serde_json::Value as Json;

mod view;

use super::{Form, Page, message, redirect};
use crate::admin::audit::Target;
use crate::admin::edit::{EditError, etag_of};
use crate::admin::model::{
    BudgetDoc, CampaignDoc, CreativeDoc, FrequencyCapDoc, Problem, TargetingDoc,
};
use crate::http::Body;
use view::{Banner, FormView, render};

/// Lists written as comma-separated text.
const LISTS: [&str; 5] = [
    "targeting.countries",
    "targeting.browsers",
    "targeting.os",
    "targeting.devices",
    "placements",
];

/// A creative row's fields.
const CREATIVE_FIELDS: [&str; 8] = [
    "kind",
    "size",
    "image_url",
    "alt",
    "html",
    "text",
    "click_url",
    "weight",
];

/// The form's values of a campaign as the file holds it (`Json` of a [`CampaignDoc`]).
fn values_of(c: &Json) -> Form {
    let mut v = Form::new();
    let text = |j: &Json| match j {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    };
    for key in ["name", "url", "bid", "pricing", "start", "end"] {
        v.insert(key.into(), text(&c[key]));
    }
    for key in LISTS {
        let j = key.split('.').fold(c, |j, k| &j[k]);
        let items: Vec<String> = j
            .as_array()
            .map_or_else(Vec::new, |a| a.iter().map(text).collect());
        v.insert(key.into(), items.join(", "));
    }
    for key in ["daily", "total", "pacing", "timezone"] {
        v.insert(format!("budget.{key}"), text(&c["budget"][key]));
    }
    for key in ["impressions", "per"] {
        v.insert(
            format!("frequency_cap.{key}"),
            text(&c["frequency_cap"][key]),
        );
    }
    if c["active"].as_bool().unwrap_or(true) {
        v.insert("active".into(), "on".into());
    }
    let creatives = c["creatives"].as_array().cloned().unwrap_or_default();
    for (i, cr) in creatives.iter().enumerate() {
        v.insert(format!("cr{i}.id"), text(&cr["id"]));
        for f in CREATIVE_FIELDS {
            v.insert(format!("cr{i}.{f}"), text(&cr[f]));
        }
    }
    v.insert("creatives".into(), creatives.len().to_string());
    v
}

fn problem(field: &str, message: &str) -> Problem {
    Problem {
        field: field.to_string(),
        message: message.to_string(),
        line: None,
        text: format!("{field}: {message}"),
    }
}

/// A campaign from the form's values, with the form row of each creative; or what cannot be
/// read at all (a bid that is not a number).
fn doc_of(v: &Form, id: u32) -> Result<(CampaignDoc, Vec<usize>), Vec<Problem>> {
    let mut problems = Vec::new();
    let get = |k: &str| v.get(k).map_or("", |s| s.trim());
    let opt = |k: &str| Some(get(k).to_string()).filter(|s| !s.is_empty());
    let mut number = |k: &str| -> Option<f64> {
        let t = get(k);
        if t.is_empty() {
            return None;
        }
        t.parse::<f64>().ok().or_else(|| {
            problems.push(problem(k, &format!("{t:?} is not a number")));
            None
        })
    };
    let list = |k: &str| -> Vec<String> {
        get(k)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let bid = number("bid");
    let daily = number("budget.daily");
    let total = number("budget.total");
    let cap = match get("frequency_cap.impressions") {
        "" => None,
        t => t.parse::<i64>().ok().or_else(|| {
            problems.push(problem(
                "frequency_cap.impressions",
                &format!("{t:?} is not a whole number"),
            ));
            None
        }),
    };
    let budget = BudgetDoc {
        daily,
        total,
        pacing: opt("budget.pacing"),
        timezone: opt("budget.timezone"),
    };
    let frequency_cap = match (cap, opt("frequency_cap.per")) {
        (None, None) => None,
        (impressions, per) => Some(FrequencyCapDoc {
            impressions: impressions.unwrap_or(0),
            per: per.unwrap_or_default(),
        }),
    };
    let rows: usize = get("creatives").parse().unwrap_or(0).min(1000) + 1;
    let mut creatives = Vec::new();
    let mut row_of = Vec::new();
    for i in 0..rows {
        let f = |name: &str| format!("cr{i}.{name}");
        let kind = get(&f("kind"));
        if kind.is_empty() || !get(&f("remove")).is_empty() {
            continue;
        }
        let weight = match get(&f("weight")) {
            "" => None,
            w => match w.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    problems.push(problem(
                        &f("weight"),
                        &format!("{w:?} is not a whole number"),
                    ));
                    None
                }
            },
        };
        creatives.push(CreativeDoc {
            id: get(&f("id")).parse().unwrap_or(0),
            kind: kind.to_string(),
            size: opt(&f("size")),
            image_url: opt(&f("image_url")),
            alt: opt(&f("alt")),
            html: opt(&f("html")),
            text: opt(&f("text")),
            click_url: opt(&f("click_url")),
            weight,
        });
        row_of.push(i);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let doc = CampaignDoc {
        id,
        name: get("name").to_string(),
        url: get("url").to_string(),
        bid: bid.unwrap_or(0.0),
        active: !get("active").is_empty(),
        targeting: TargetingDoc {
            countries: list("targeting.countries"),
            browsers: list("targeting.browsers"),
            os: list("targeting.os"),
            devices: list("targeting.devices"),
        },
        placements: list("placements"),
        start: opt("start"),
        end: opt("end"),
        pricing: opt("pricing"),
        budget: (budget != BudgetDoc::default()).then_some(budget),
        frequency_cap,
        creatives,
    };
    Ok((doc, row_of))
}

/// The loader's problem fields renamed to the form's (`creatives[701].size` → `cr0.size`).
fn to_form_fields(problems: Vec<Problem>, rows: &HashMap<u32, usize>) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|mut p| {
            if let Some(rest) = p.field.strip_prefix("creatives[")
                && let Some((id, field)) = rest.split_once("].")
                && let Some(row) = id.parse().ok().and_then(|id: u32| rows.get(&id))
            {
                p.field = format!("cr{row}.{field}");
            }
            p
        })
        .collect()
}

/// `GET /campaigns/new`
pub(super) async fn new(page: &Page<'_>) -> Response<Body> {
    let mut values = Form::new();
    values.insert("active".into(), "on".into());
    values.insert("creatives".into(), "0".into());
    values.insert("cr0.kind".into(), "image".into());
    render(
        page,
        StatusCode::OK,
        &FormView {
            id: None,
            values: &values,
            problems: &[],
            etag: "",
            banner: Banner::None,
        },
    )
}

/// `GET /campaigns/{id}`
pub(super) async fn edit(page: &Page<'_>, id: u32) -> Response<Body> {
    match page.admin.campaigns.read().await.map(|s| s.campaign(id)) {
        Ok(Some(c)) => {
            let banner = if page.param("done") == "saved" {
                Banner::Saved
            } else {
                Banner::None
            };
            render(
                page,
                StatusCode::OK,
                &FormView {
                    id: Some(id),
                    values: &values_of(&c),
                    problems: &[],
                    etag: &etag_of(&c),
                    banner,
                },
            )
        }
        Ok(None) => message(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("There is no campaign {id}."),
        ),
        Err(e) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Campaigns file",
            &e.to_string(),
        ),
    }
}

/// `POST /campaigns/new`
pub(super) async fn create(page: &Page<'_>, form: &Form) -> Response<Body> {
    write(page, None, form).await
}

/// `POST /campaigns/{id}`
pub(super) async fn save(page: &Page<'_>, id: u32, form: &Form) -> Response<Body> {
    write(page, Some(id), form).await
}

async fn write(page: &Page<'_>, id: Option<u32>, form: &Form) -> Response<Body> {
    let etag = form.get("etag").cloned().unwrap_or_default();
    let invalid = |problems: &[Problem]| {
        render(
            page,
            StatusCode::UNPROCESSABLE_ENTITY,
            &FormView {
                id,
                values: form,
                problems,
                etag: &etag,
                banner: Banner::Invalid,
            },
        )
    };
    let (doc, row_of) = match doc_of(form, id.unwrap_or(0)) {
        Ok(d) => d,
        Err(problems) => return invalid(&problems),
    };
    let assigned: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = assigned.clone();
    let tag = etag.clone();
    let change = move |s: &mut crate::admin::edit::Snapshot| {
        let mut doc = doc;
        let mut next = s.next_creative_id();
        for c in &mut doc.creatives {
            if c.id == 0 {
                c.id = next;
                next += 1;
            }
        }
        if let Ok(mut ids) = seen.lock() {
            *ids = doc.creatives.iter().map(|c| c.id).collect();
        }
        match id {
            Some(id) => s.update_campaign(id, &tag, |c| {
                *c = doc;
                Ok(())
            }),
            None => s.create_campaign(doc),
        }
    };
    let path = id.map_or_else(
        || "/campaigns/new".to_string(),
        |id| format!("/campaigns/{id}"),
    );
    let admin = page.admin;
    let result = admin
        .write(
            &page.session.principal,
            "POST",
            &path,
            Target::Campaign(id.unwrap_or(0)),
            change,
        )
        .await;
    match result {
        Ok(edited) => {
            let new_id = edited.after["id"].as_u64().unwrap_or(0);
            redirect(&format!("/campaigns/{new_id}?done=saved"))
        }
        Err(EditError::Invalid(problems)) => {
            let ids = assigned.lock().map(|ids| ids.clone()).unwrap_or_default();
            let rows: HashMap<u32, usize> = ids.into_iter().zip(row_of).collect();
            invalid(&to_form_fields(problems, &rows))
        }
        Err(EditError::Stale { .. }) => {
            let Some(id) = id else {
                return message(
                    StatusCode::PRECONDITION_FAILED,
                    "Conflict",
                    "The campaign changed.",
                );
            };
            match admin.campaigns.read().await.map(|s| s.campaign(id)) {
                Ok(Some(c)) => render(
                    page,
                    StatusCode::PRECONDITION_FAILED,
                    &FormView {
                        id: Some(id),
                        values: &values_of(&c),
                        problems: &[],
                        etag: &etag_of(&c),
                        banner: Banner::Stale,
                    },
                ),
                _ => message(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    &format!("Campaign {id} no longer exists."),
                ),
            }
        }
        Err(EditError::NotFound(m)) => message(StatusCode::NOT_FOUND, "Not found", &m),
        Err(EditError::Conflict(m)) => message(StatusCode::CONFLICT, "Conflict", &m),
        Err(EditError::File(m)) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Campaigns file",
            &format!("campaigns file {m}"),
        ),
    }
}

/// `POST /campaigns/{id}/pause` and `/resume`: only the `active` flag changes, applied to the
/// campaign as it is on disk now (so no other edit can be lost: no ETag needed).
pub(super) async fn pause_resume(page: &Page<'_>, id: u32, pause: bool) -> Response<Body> {
    let action = if pause { "pause" } else { "resume" };
    let result = page
        .admin
        .write(
            &page.session.principal,
            "POST",
            &format!("/campaigns/{id}/{action}"),
            Target::Campaign(id),
            move |s| {
                s.update_campaign(id, "*", |c| {
                    c.active = !pause;
                    Ok(())
                })
            },
        )
        .await;
    match result {
        Ok(_) => redirect(&format!("/campaigns?done={action}d&id={id}")),
        Err(EditError::NotFound(m)) => message(StatusCode::NOT_FOUND, "Not found", &m),
        Err(e) => message(StatusCode::CONFLICT, "Not changed", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_round_trip_and_problems_find_their_fields() {
        let doc = serde_json::json!({
            "id": 7, "name": "N", "url": "https://n.example/", "bid": 2.5, "active": false,
            "targeting": {"countries": ["de", "fr"], "browsers": [], "os": [], "devices": ["mobile"]},
            "placements": ["top"], "start": "2026-12-01", "pricing": "cpc",
            "budget": {"daily": 10.0, "pacing": "asap"},
            "frequency_cap": {"impressions": 3, "per": "24h"},
            "creatives": [{"id": 70, "kind": "image", "size": "728x90", "image_url": "https://n.example/a.png"}]
        });
        let mut values = values_of(&doc);
        assert_eq!(values["targeting.countries"], "de, fr");
        let (back, rows) = doc_of(&values, 7).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), doc);
        assert_eq!(rows, vec![0]);

        // A new creative in the blank row, one removed, a bid that is not a number.
        values.insert("cr1.kind".into(), "text".into());
        values.insert("cr1.text".into(), "Hi".into());
        values.insert("cr0.remove".into(), "on".into());
        let (back, rows) = doc_of(&values, 7).unwrap();
        assert_eq!(
            (back.creatives.len(), back.creatives[0].id, rows),
            (1, 0, vec![1])
        );
        values.insert("bid".into(), "lots".into());
        values.insert("frequency_cap.impressions".into(), "3.5".into());
        let problems = doc_of(&values, 7).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["bid", "frequency_cap.impressions"]);

        let mapped = to_form_fields(
            vec![
                problem("creatives[71].size", "required"),
                problem("bid", "x"),
            ],
            &HashMap::from([(71, 1)]),
        );
        assert_eq!(mapped[0].field, "cr1.size");
        assert_eq!(mapped[1].field, "bid");
    }
}
