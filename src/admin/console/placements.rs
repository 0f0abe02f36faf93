//! Placements with the tags to paste (README "Ad tags"), and the creative preview: the iframe
//! tag's own document ([`crate::http::tags::frame_markup`]) for one creative, framed by the
//! console in a sandbox without `allow-same-origin`.

use bytes::Bytes;
use hyper::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use maud::html;

use super::{Page, html_response, layout, message};
use crate::admin::model::CreativeDoc;
use crate::http::Body;
use crate::http::tags::{FrameAd, Shown, frame_markup};

/// The preview document's policy: the creative's own markup and pictures may load, it runs
/// sandboxed (opaque origin, no forms, no navigation), and only the console may frame it.
const PREVIEW_CSP: &str = "sandbox allow-scripts; default-src * data: 'unsafe-inline'; \
                           frame-ancestors 'self'";

/// `GET /placements`
pub(super) async fn list(page: &Page<'_>) -> Response<Body> {
    let snapshot = match page.admin.campaigns.read().await {
        Ok(s) => s,
        Err(e) => {
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Campaigns file",
                &e.to_string(),
            );
        }
    };
    let ads = page.admin.ads_url.trim_end_matches('/');
    let content = html! {
        p { "Paste a tag into the page where the ad should appear. Ads are served from " code { (ads) } "." }
        @let placements = snapshot.placements();
        @if placements.is_empty() { p { "No placements yet (" code { "[[placement]]" } " in the campaigns file)." } }
        div.scroll {
        table {
            caption { "Placements and their tags" }
            thead { tr { th scope="col" { "Placement" } th scope="col" { "Sizes" } th scope="col" { "Kinds" } th scope="col" { "Tags" } } }
            tbody {
                @for p in &placements {
                    @let id = p["id"].as_str().unwrap_or("");
                    @let sizes: Vec<&str> = p["sizes"].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(|s| s.as_str()).collect());
                    @let kinds: Vec<&str> = p["kinds"].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(|s| s.as_str()).collect());
                    @let (w, h) = sizes.first().and_then(|s| s.split_once('x')).unwrap_or(("300", "250"));
                    @let script = format!("<script async src=\"{ads}/v1/tag.js\"></script>\n<div data-rotator-placement=\"{id}\"></div>");
                    @let iframe = format!("<iframe src=\"{ads}/v1/frame/{id}\" width=\"{w}\" height=\"{h}\"\n        frameborder=\"0\" scrolling=\"no\" title=\"Advertisement\"></iframe>");
                    tr {
                        th scope="row" { code { (id) } }
                        td { @if sizes.is_empty() { "any" } @else { (sizes.join(", ")) } }
                        td { @if kinds.is_empty() { "any" } @else { (kinds.join(", ")) } }
                        td.tags {
                            label for={ "script-" (id) } { "Script tag" }
                            textarea.tag id={ "script-" (id) } readonly rows="2" { (script) }
                            button type="button" data-copy={ "script-" (id) } { "Copy script tag" }
                            label for={ "iframe-" (id) } { "Iframe tag (no script)" }
                            textarea.tag id={ "iframe-" (id) } readonly rows="2" { (iframe) }
                            button type="button" data-copy={ "iframe-" (id) } { "Copy iframe tag" }
                        }
                    }
                }
            }
        }
        }
    };
    html_response(StatusCode::OK, layout(page, "Placements", content))
}

/// `GET /preview/{campaign}/{creative}`: the creative as the iframe tag shows it, its links
/// going nowhere and no impression counted.
pub(super) async fn preview(page: &Page<'_>, campaign: u32, creative: u32) -> Response<Body> {
    let found = page
        .admin
        .campaigns
        .read()
        .await
        .ok()
        .and_then(|s| s.campaign(campaign))
        .and_then(|c| {
            c["creatives"]
                .as_array()?
                .iter()
                .find(|k| k["id"] == creative)
                .cloned()
        })
        .and_then(|k| serde_json::from_value::<CreativeDoc>(k).ok());
    let Some(c) = found else {
        return message(StatusCode::NOT_FOUND, "Not found", "No such creative.");
    };
    let (width, height) = c
        .size
        .as_deref()
        .and_then(|s| s.split_once('x'))
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .unwrap_or((0, 0));
    let html = c
        .html
        .as_deref()
        .unwrap_or("")
        .replace("{{click_url}}", "#")
        .replace("{{cachebuster}}", "0");
    let shown = match c.kind.as_str() {
        "image" => Shown::Image {
            src: c.image_url.as_deref().unwrap_or(""),
            alt: c.alt.as_deref().unwrap_or(""),
        },
        "html" => Shown::Html(&html),
        _ => Shown::Text(c.text.as_deref().unwrap_or("")),
    };
    let ad = FrameAd {
        shown,
        width,
        height,
        click_url: "#",
        impression_url: "data:,",
    };
    let mut r = Response::new(Body::new(Bytes::from(
        frame_markup(Some(&ad)).into_string(),
    )));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PREVIEW_CSP),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("SAMEORIGIN"),
    );
    r
}
