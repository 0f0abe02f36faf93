//! The report page: `rotator report`'s groupings and period as a form, its table, and the same
//! report as CSV.

use bytes::Bytes;
use hyper::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use maud::html;

use super::{Page, html_response, layout};
use crate::admin::reports::{self, REPORT_TIMEOUT};
use crate::http::Body;
use crate::stats::report::{self as stats_report, Format, GROUP_COLUMNS, ReportQuery};

/// The query of the page's parameters (`by` repeated or comma-separated, `since`, `from`, `to`).
fn query(page: &Page<'_>) -> Result<(ReportQuery, Vec<String>), String> {
    let by: Vec<String> = GROUP_COLUMNS
        .iter()
        .filter(|g| page.query.contains_key(&format!("by.{g}")))
        .map(|g| g.to_string())
        .chain(
            page.param("by")
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from),
        )
        .collect();
    let opt = |k: &str| Some(page.param(k)).filter(|v| !v.is_empty());
    let since = opt("since").or(if opt("from").is_some() {
        None
    } else {
        Some("24h")
    });
    let q = reports::query(
        Some(&by.join(",")),
        since,
        opt("from"),
        opt("to"),
        reports::unix_now(),
    )?;
    Ok((q, by))
}

/// `GET /report`
pub(super) async fn page(page: &Page<'_>) -> Response<Body> {
    let parsed = query(page);
    let by = parsed.as_ref().map(|(_, b)| b.clone()).unwrap_or_default();
    let result = match &parsed {
        Ok((q, _)) => reports::run(&page.admin.sink, q)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let csv_href = format!(
        "/report.csv?by={}&since={}&from={}&to={}",
        enc(&by.join(",")),
        enc(page.param("since")),
        enc(page.param("from")),
        enc(page.param("to"))
    );
    let since = if page.param("since").is_empty() && page.param("from").is_empty() {
        "24h"
    } else {
        page.param("since")
    };
    let content = html! {
        form method="get" action="/report" .report {
            fieldset {
                legend { "Group by" }
                @for g in GROUP_COLUMNS {
                    span.check {
                        input type="checkbox" id={ "by-" (g) } name={ "by." (g) } checked[by.iter().any(|b| b == g)];
                        label for={ "by-" (g) } { (g) }
                    }
                }
            }
            fieldset {
                legend { "Period" }
                div.field { label for="since" { "Last" } input id="since" name="since" value=(since) aria-describedby="since-help";
                    p.help id="since-help" { "e.g. 1h, 24h, 7d; or give From/To instead." } }
                div.field { label for="from" { "From" } input id="from" name="from" value=(page.param("from")) aria-describedby="from-help";
                    p.help id="from-help" { "RFC 3339 (2026-11-24T00:00:00Z) or Unix seconds." } }
                div.field { label for="to" { "To" } input id="to" name="to" value=(page.param("to")); }
            }
            button type="submit" { "Show" }
        }
        @match &result {
            Err(e) => p.error role="alert" { (e) },
            Ok(doc) => {
                p { a href=(csv_href) download="report.csv" { "Download CSV" } }
                div.scroll {
                table {
                    caption { "From " (fmt_time(doc.from)) " to " (fmt_time(doc.to)) " (UTC)" }
                    thead { tr {
                        @for g in &by { th scope="col" { (g) } }
                        th scope="col" .num { "Requests" } th scope="col" .num { "Impressions" }
                        th scope="col" .num { "Viewables" } th scope="col" .num { "Clicks" }
                        th scope="col" .num { "Fill" } th scope="col" .num { "CTR" } th scope="col" .num { "Spend" }
                    } }
                    tbody {
                        @for line in &doc.rows { (line_row(&by, line, false)) }
                    }
                    tfoot { (line_row(&by, &doc.total, true)) }
                }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout(page, "Report", content))
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn fmt_time(t: u32) -> String {
    jiff::Timestamp::from_second(i64::from(t))
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn line_row(by: &[String], l: &reports::ReportLine, total: bool) -> maud::Markup {
    let group = |g: &str| -> String {
        match g {
            "campaign" => l.campaign.clone(),
            "country" => l.country.clone(),
            "browser" => l.browser.clone(),
            "os" => l.os.clone(),
            "device" => l.device.clone(),
            "placement" => l.placement.clone(),
            "creative" => l.creative.clone(),
            _ => None,
        }
        .unwrap_or_default()
    };
    html! {
        tr {
            @for (i, g) in by.iter().enumerate() {
                @if i == 0 { th scope="row" { @if total { "Total" } @else { (group(g)) } } }
                @else { td { @if !total { (group(g)) } } }
            }
            td.num { (l.requests) } td.num { (l.impressions) } td.num { (l.viewables) } td.num { (l.clicks) }
            td.num { (format!("{:.1} %", l.fill_rate * 100.0)) }
            td.num { (format!("{:.2} %", l.ctr * 100.0)) }
            td.num { (l.spend) }
        }
    }
}

/// `GET /report.csv`: the report as `rotator report --format csv` prints it.
pub(super) async fn csv(page: &Page<'_>) -> Response<Body> {
    let q = match query(page) {
        Ok((q, _)) => q,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    match tokio::time::timeout(REPORT_TIMEOUT, page.admin.sink.report(&q)).await {
        Ok(Ok(rows)) => {
            let mut r = plain(StatusCode::OK, stats_report::render(&q, rows, Format::Csv));
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            h.insert(
                CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"report.csv\""),
            );
            r
        }
        Ok(Err(e)) => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no answer within {REPORT_TIMEOUT:?}"),
        ),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
