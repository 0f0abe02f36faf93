//! `POST /v1/decisions`: several ad slots decided in one call, JSON in and out.
//!
//! The body is read with a size cap and a deadline, parsed strictly (unknown fields, unknown
//! placements, more than [`MAX_PLACEMENTS`] slots or a repeated `div` are a `400` naming the
//! problem), and every slot is decided by [`Decider::decide_slots`]. Each filled slot carries
//! signed tracking URLs ([`crate::tracking`]); nothing is counted as an impression here, only
//! the request for the slot. CORS: any origin may call (the ad tag runs on publishers' pages);
//! `OPTIONS` answers the preflight.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ALLOW, CACHE_CONTROL, CONTENT_LENGTH,
    CONTENT_TYPE, HeaderValue, ORIGIN, SET_COOKIE, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::Body;
use super::server::Reply;
use crate::campaigns::CreativeKind;
use crate::decision::{Decider, SlotWin, Slots};
use crate::delivery::identity::Who;
use crate::metrics::Route;
use crate::visitor::Visitor;

/// Largest request body, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Most slots one request may ask for.
pub const MAX_PLACEMENTS: usize = 20;

/// How long a client may take to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest `div`, `user.key`, `ua`; longest `url` and `referrer`.
const MAX_NAME: usize = 256;
const MAX_URL: usize = 4096;

static ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");
static JSON: HeaderValue = HeaderValue::from_static("application/json");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static POST_OPTIONS: HeaderValue = HeaderValue::from_static("POST, OPTIONS");

/// One slot asked for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRequest {
    /// The caller's name for the slot; the response is keyed by it.
    pub div: String,
    /// A placement id of the campaigns file.
    pub placement: String,
}

/// Who the visitor is, as the caller knows them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// A stable, pseudonymous key (frequency caps use it).
    pub key: String,
}

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// The slots, at most [`MAX_PLACEMENTS`].
    pub placements: Vec<SlotRequest>,
    /// The visitor.
    pub user: Option<User>,
    /// The page's address.
    pub url: Option<String>,
    /// The page's referrer.
    pub referrer: Option<String>,
    /// The visitor's address, honoured from trusted proxies only.
    pub ip: Option<String>,
    /// The visitor's User-Agent, honoured from trusted proxies only.
    pub ua: Option<String>,
}

/// One filled slot, as the API returns it (written by `write_response`).
#[derive(Debug)]
pub struct DecisionJson {
    /// Winning campaign.
    pub campaign_id: u32,
    /// Its creative.
    pub creative_id: u32,
    /// `image`, `html` or `text`.
    pub kind: CreativeKind,
    /// Width in CSS pixels (null for text).
    pub width: Option<u32>,
    /// Height in CSS pixels (null for text).
    pub height: Option<u32>,
    /// Image creatives: the banner.
    pub image_url: Option<String>,
    /// Image creatives: alternative text.
    pub alt: Option<String>,
    /// HTML creatives: the snippet with its macros filled in.
    pub html: Option<String>,
    /// Text creatives: the link text.
    pub text: Option<String>,
    /// Rotator's click URL (redirects to the landing page).
    pub click_url: String,
    /// Fire once when the ad has rendered.
    pub impression_url: String,
    /// Fire once when ≥ 50 % of the ad was visible for ≥ 1 s.
    pub viewable_url: String,
}

/// A problem with a request, answered as `{"error": "..."}`.
#[derive(Debug)]
struct Refusal(StatusCode, String);

/// CORS: any page may ask. A page's own origin is named (not `*`) and credentials allowed, so
/// the tag can send the identity cookie of frequency caps; a caller without `Origin` gets `*`.
fn cors(headers: &mut hyper::HeaderMap, origin: Option<&HeaderValue>) {
    match origin {
        Some(origin) => {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.insert(VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN.clone());
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>, origin: Option<&HeaderValue>) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(body)));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, JSON.clone());
    headers.insert(CACHE_CONTROL, NO_STORE.clone());
    cors(headers, origin);
    r
}

fn refused(Refusal(status, error): Refusal, origin: Option<&HeaderValue>) -> Response<Body> {
    let body = serde_json::json!({ "error": error }).to_string();
    let mut r = json(status, body.into_bytes(), origin);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut().insert(ALLOW, POST_OPTIONS.clone());
    }
    r
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, message.into())
}

/// Answers `/v1/decisions`: the preflight and refusals at once, a `POST` once its body is read.
pub fn answer(
    decider: Arc<Decider>,
    tracker: Arc<crate::tracking::Tracker>,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
) -> Reply {
    let origin = req.headers().get(ORIGIN).cloned();
    let now = |response: Response<Body>| {
        decider.metrics.observe_request(
            Route::Decisions,
            response.status().as_u16(),
            started.elapsed(),
        );
        Reply::Now(response)
    };
    match *req.method() {
        Method::POST => {}
        Method::OPTIONS => return now(preflight(origin.as_ref())),
        _ => {
            return now(refused(
                Refusal(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: use POST (OPTIONS for a CORS preflight)".into(),
                ),
                origin.as_ref(),
            ));
        }
    }
    if let Err(refusal) = check_head(&req) {
        return now(refused(refusal, origin.as_ref()));
    }
    Reply::Later(Box::pin(async move {
        let origin = origin.as_ref();
        let response = match read_body(req).await {
            Ok((head, body)) => match decide(&decider, &tracker, &head, &body, peer).await {
                Ok((body, set_cookie)) => {
                    let mut r = json(StatusCode::OK, body, origin);
                    if let Some(cookie) = set_cookie {
                        r.headers_mut().insert(SET_COOKIE, cookie);
                    }
                    r
                }
                Err(refusal) => refused(refusal, origin),
            },
            Err(refusal) => refused(refusal, origin),
        };
        decider.metrics.observe_request(
            Route::Decisions,
            response.status().as_u16(),
            started.elapsed(),
        );
        response
    }))
}

fn preflight(origin: Option<&HeaderValue>) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let headers = r.headers_mut();
    cors(headers, origin);
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, POST_OPTIONS.clone());
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    r
}

/// Refuses what the head already shows: a body type other than JSON, a declared length over
/// the cap.
fn check_head(req: &Request<Incoming>) -> Result<(), Refusal> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, not {content_type:?}"),
        ));
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> Refusal {
    Refusal(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body over {MAX_BODY_BYTES} bytes"),
    )
}

/// Reads the body (capped, with a deadline); returns the head's parts and the bytes.
async fn read_body(
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), Refusal> {
    let (head, body) = req.into_parts();
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
            .map_err(|_| {
                Refusal(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("body not received within {BODY_TIMEOUT:?}"),
                )
            })?;
    match collected {
        Ok(c) => Ok((head, c.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(bad(format!("body could not be read: {e}"))),
    }
}

/// Parses and checks the request, decides every slot, counts the requests and builds the body
/// (and the identity cookie to set, if any).
async fn decide(
    decider: &Decider,
    tracker: &crate::tracking::Tracker,
    head: &hyper::http::request::Parts,
    body: &[u8],
    peer: SocketAddr,
) -> Result<(Vec<u8>, Option<HeaderValue>), Refusal> {
    let request: DecisionRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    check_request(&request)?;
    let view = decider.view();
    let catalogue = &*view.catalogue;
    let mut placements = Vec::with_capacity(request.placements.len());
    for (i, slot) in request.placements.iter().enumerate() {
        match catalogue.placement(&slot.placement) {
            Some(p) => placements.push(p),
            None => {
                return Err(bad(format!(
                    "placements[{i}].placement: {:?} is no placement of the campaigns file",
                    slot.placement
                )));
            }
        }
    }
    let (ip, ua) = visitor_identity(decider, head, &request, peer.ip())?;
    let (visitor, _, geo_ok) = decider.visitor(ip, ua.as_deref());
    let who = Who {
        user_key: request.user.as_ref().map(|u| u.key.as_str()),
        // The visitor's own request (cookie, Sec-GPC) unless a server asks on their behalf.
        headers: request.ua.is_none().then_some(&head.headers),
        ip: Some(ip),
        ua: ua.as_deref(),
    };
    let Slots { wins, set_cookie } = decider
        .decide_slots(&view, &visitor, &placements, who)
        .await;
    let secure = head.extensions.get::<super::tls::Secure>().is_some();
    let base = tracker.base_url(
        &head.headers,
        decider.client_ip.proxies.contains(peer.ip()),
        secure,
    );
    let mut decisions = Vec::with_capacity(wins.len());
    for ((slot, &placement), win) in request.placements.iter().zip(&placements).zip(&wins) {
        if let Some(placement) = catalogue.placements().get(placement) {
            decider.record_slot(&visitor, placement, win.as_ref(), geo_ok);
        }
        let decision = win.as_ref().map(|w| render(tracker, &base, &visitor, w));
        decisions.push((slot.div.as_str(), decision));
    }
    // About 700 bytes per filled slot: sized once instead of growing.
    let mut out = Vec::with_capacity(64 + 768 * decisions.len());
    write_response(&mut out, &decisions, !needs_escape(&base));
    Ok((out, set_cookie))
}

/// Whether `s` holds a character a JSON string must escape.
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Writes `s` as a JSON string (RFC 8259: `"`, `\` and control characters escaped).
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[plain..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

/// Writes the response body by hand. `plain_urls`: the tracking URLs need no escaping (their
/// base, checked once per request, has nothing to escape, and a token is URL-safe base64), so
/// they are copied as they are: escaping the nine URLs of a three-slot answer through serde_json
/// cost about 4 % of the request's CPU.
fn write_response(out: &mut Vec<u8>, decisions: &[(&str, Option<DecisionJson>)], plain_urls: bool) {
    let url = |out: &mut Vec<u8>, s: &str| {
        if plain_urls {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        } else {
            json_string(out, s);
        }
    };
    let optional = |out: &mut Vec<u8>, s: Option<&str>| match s {
        Some(s) => json_string(out, s),
        None => out.extend_from_slice(b"null"),
    };
    let number = |out: &mut Vec<u8>, n: Option<u32>| match n {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"decisions\":{");
    for (i, (div, decision)) in decisions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(out, div);
        out.push(b':');
        let Some(d) = decision else {
            out.extend_from_slice(b"null");
            continue;
        };
        out.extend_from_slice(b"{\"campaign_id\":");
        number(out, Some(d.campaign_id));
        out.extend_from_slice(b",\"creative_id\":");
        number(out, Some(d.creative_id));
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(d.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"width\":");
        number(out, d.width);
        out.extend_from_slice(b",\"height\":");
        number(out, d.height);
        out.extend_from_slice(b",\"image_url\":");
        optional(out, d.image_url.as_deref());
        out.extend_from_slice(b",\"alt\":");
        optional(out, d.alt.as_deref());
        out.extend_from_slice(b",\"html\":");
        optional(out, d.html.as_deref());
        out.extend_from_slice(b",\"text\":");
        optional(out, d.text.as_deref());
        out.extend_from_slice(b",\"click_url\":");
        url(out, &d.click_url);
        out.extend_from_slice(b",\"impression_url\":");
        url(out, &d.impression_url);
        out.extend_from_slice(b",\"viewable_url\":");
        url(out, &d.viewable_url);
        out.push(b'}');
    }
    out.extend_from_slice(b"}}");
}

/// Limits and uniqueness the types do not say.
fn check_request(request: &DecisionRequest) -> Result<(), Refusal> {
    let slots = &request.placements;
    if slots.is_empty() {
        return Err(bad("placements: at least one slot is needed"));
    }
    if slots.len() > MAX_PLACEMENTS {
        return Err(bad(format!(
            "placements: {} slots, at most {MAX_PLACEMENTS} per request",
            slots.len()
        )));
    }
    for (i, slot) in slots.iter().enumerate() {
        if slot.div.is_empty() || slot.div.len() > MAX_NAME {
            return Err(bad(format!(
                "placements[{i}].div: 1 to {MAX_NAME} bytes, not {}",
                slot.div.len()
            )));
        }
        if slots[..i].iter().any(|s| s.div == slot.div) {
            return Err(bad(format!(
                "placements[{i}].div: {:?} is used by an earlier slot",
                slot.div
            )));
        }
    }
    let long = [
        ("user.key", request.user.as_ref().map(|u| &u.key), MAX_NAME),
        ("ua", request.ua.as_ref(), MAX_URL),
        ("url", request.url.as_ref(), MAX_URL),
        ("referrer", request.referrer.as_ref(), MAX_URL),
    ];
    for (field, value, max) in long {
        if value.is_some_and(|v| v.len() > max) {
            return Err(bad(format!("{field}: longer than {max} bytes")));
        }
    }
    Ok(())
}

/// The visitor's address and agent: the body's `ip` and `ua` when the peer is a trusted proxy
/// (a server-side integration), otherwise the connection's own, as for `GET /ad`.
fn visitor_identity(
    decider: &Decider,
    head: &hyper::http::request::Parts,
    request: &DecisionRequest,
    peer: IpAddr,
) -> Result<(IpAddr, Option<String>), Refusal> {
    let trusted = decider.client_ip.proxies.contains(peer);
    let ip = match (&request.ip, trusted) {
        (Some(text), true) => text
            .parse()
            .map_err(|_| bad(format!("ip: {text:?} is not an IP address")))?,
        _ => decider.client_ip.client_ip(peer, &head.headers),
    };
    let header_ua = || {
        head.headers
            .get(hyper::header::USER_AGENT)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_string)
    };
    let ua = match (&request.ua, trusted) {
        (Some(ua), true) => Some(ua.clone()),
        _ => header_ua(),
    };
    Ok((ip, ua))
}

/// One filled slot with its tracking URLs; an HTML creative's macros are filled in.
pub(crate) fn render(
    tracker: &crate::tracking::Tracker,
    base: &str,
    visitor: &Visitor,
    win: &SlotWin<'_>,
) -> DecisionJson {
    let urls = tracker.urls(base, visitor, win);
    let creative = win.creative;
    let html = creative.html.as_ref().map(|html| {
        html.replace("{{click_url}}", &urls.click)
            .replace("{{cachebuster}}", &fastrand::u64(..).to_string())
    });
    DecisionJson {
        campaign_id: win.campaign.id,
        creative_id: creative.id,
        kind: creative.kind,
        width: creative.size.map(|s| s.width),
        height: creative.size.map(|s| s.height),
        image_url: creative.image_url.clone(),
        alt: creative.alt.clone(),
        html,
        text: creative.text.clone(),
        click_url: urls.click,
        impression_url: urls.impression,
        viewable_url: urls.viewable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(click: &str) -> DecisionJson {
        DecisionJson {
            campaign_id: 7,
            creative_id: 4_294_967_295,
            kind: CreativeKind::Html,
            width: Some(728),
            height: None,
            image_url: None,
            alt: Some("quote \" back \\ tab \t nul \u{0} bell \u{7} é 😀 </script>".into()),
            html: Some("<a href='x'>\r\n</a>".into()),
            text: Some(String::new()),
            click_url: click.into(),
            impression_url: format!("{click}/i"),
            viewable_url: format!("{click}/v"),
        }
    }

    fn written(decisions: &[(&str, Option<DecisionJson>)], plain: bool) -> serde_json::Value {
        let mut out = Vec::new();
        write_response(&mut out, decisions, plain);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    /// The hand-written answer is valid JSON with every value as written, escapes included.
    #[test]
    fn response_json_round_trips() {
        for click in ["http://h:1/v1/c/AbC-_9", "http://h\"x\\/v1/c/A"] {
            let d = decision(click);
            let plain = !needs_escape(click);
            let v = written(&[("a \"div\"", Some(decision(click))), ("b", None)], plain);
            let a = &v["decisions"]["a \"div\""];
            assert_eq!(a["campaign_id"], 7);
            assert_eq!(a["creative_id"], 4_294_967_295u64);
            assert_eq!(a["kind"], "html");
            assert_eq!(
                (a["width"].as_u64(), a["height"].is_null()),
                (Some(728), true)
            );
            assert!(a["image_url"].is_null());
            assert_eq!(a["alt"].as_str(), d.alt.as_deref());
            assert_eq!(a["html"].as_str(), d.html.as_deref());
            assert_eq!(a["text"], "");
            assert_eq!(a["click_url"], click);
            assert_eq!(
                a["impression_url"].as_str(),
                Some(d.impression_url.as_str())
            );
            assert_eq!(a["viewable_url"].as_str(), Some(d.viewable_url.as_str()));
            assert!(v["decisions"]["b"].is_null());
            assert_eq!(v["decisions"].as_object().map(|o| o.len()), Some(2));
        }
        assert_eq!(written(&[], true), serde_json::json!({ "decisions": {} }));
        for c in 0..0x20u8 {
            let s = format!("x{}y", c as char);
            let mut out = Vec::new();
            json_string(&mut out, &s);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }
}
