//! The ad tags a publisher pastes into a page: the script tag (`GET /v1/tag.js`) and the iframe
//! tag's document (`GET /v1/frame/{placement}`).
//!
//! The script is compiled into the binary (`assets/tag.js`); it is served with a short
//! `Cache-Control` (so a new release reaches pages within minutes) and a strong `ETag` derived
//! from its bytes at compile time (so revalidation is a `304`).
//!
//! The iframe tag's document is built with maud (escaped by default) and sent with a
//! `Content-Security-Policy: sandbox` that gives it the same sandbox as the script tag's frames
//! ([`SANDBOX`]): an opaque origin, so an html creative runs in neither the publisher's origin
//! nor rotator's.

use bytes::Bytes;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue,
    IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Response, StatusCode};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use hyper::Method;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{SET_COOKIE, USER_AGENT};

use super::Body;
use super::decisions::DecisionJson;
use super::server::Reply;
use crate::campaigns::creatives::CreativeKind;
use crate::decision::{Decider, Slots};
use crate::delivery::identity::Who;
use crate::metrics::Route;
use crate::tracking::Tracker;

/// The script tag's code.
pub const TAG_JS: &str = include_str!("../../assets/tag.js");

/// The flags of [`SANDBOX`], as a literal for `concat!`.
macro_rules! sandbox {
    () => {
        "allow-scripts allow-popups allow-popups-to-escape-sandbox \
         allow-top-navigation-by-user-activation"
    };
}

/// The sandbox of every ad frame: scripts may run, open pop-ups (which are not sandboxed
/// themselves, so a landing page works) and navigate the top page on a click, but never
/// `allow-same-origin`: a creative can never read the page it is shown on. `assets/tag.js` sets
/// the same flags on its iframes.
pub const SANDBOX: &str = sandbox!();

/// The iframe tag document's own sandbox (see the module comment).
const FRAME_CSP: &str = concat!("sandbox ", sandbox!());

/// How long browsers and proxies may reuse the script without asking: short, so that a new
/// release reaches pages within minutes; revalidation costs a `304`.
const TAG_CACHE_CONTROL: &str = "public, max-age=300";

/// FNV-1a (64 bits) of `bytes`, at compile time: a stable validator across processes and hosts.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 hex digits + `"`.
const fn quoted_hex(v: u64) -> [u8; 18] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

const TAG_ETAG_BYTES: [u8; 18] = quoted_hex(fnv1a(TAG_JS.as_bytes()));

/// The script's strong entity tag.
pub fn tag_etag() -> &'static str {
    // Hex digits and quotes: always ASCII.
    std::str::from_utf8(&TAG_ETAG_BYTES).unwrap_or("\"0\"")
}

/// Whether `If-None-Match` in `headers` matches `etag` (weak comparison, RFC 9110 §13.1.2).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

static NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
/// Lets pages that require `Cross-Origin-Embedder-Policy` load the tag and the frame.
static CORP: HeaderName = HeaderName::from_static("cross-origin-resource-policy");
static CROSS_ORIGIN: HeaderValue = HeaderValue::from_static("cross-origin");

/// `GET /v1/tag.js`: the script, or `304` when the client's copy is current.
pub fn tag_js(req_headers: &HeaderMap) -> Response<Body> {
    let etag = tag_etag();
    let fresh = none_match(req_headers, etag);
    let mut r = if fresh {
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::new(Bytes::from_static(TAG_JS.as_bytes())))
    };
    let h = r.headers_mut();
    h.insert(ETAG, HeaderValue::from_static(etag));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(TAG_CACHE_CONTROL));
    h.insert(X_CONTENT_TYPE_OPTIONS, NOSNIFF.clone());
    h.insert(CORP.clone(), CROSS_ORIGIN.clone());
    if !fresh {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
    }
    r
}

/// What a creative shows, as the iframe tag's document needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown<'a> {
    /// A picture (`image_url`, `alt`) that links to the click URL.
    Image {
        /// The picture's address.
        src: &'a str,
        /// Its text alternative.
        alt: &'a str,
    },
    /// The creative's own markup (macros already replaced), run inside the sandbox.
    Html(&'a str),
    /// A text link.
    Text(&'a str),
}

/// One served ad, as the iframe tag's document shows it.
#[derive(Debug, Clone, Copy)]
pub struct FrameAd<'a> {
    /// What the creative shows.
    pub shown: Shown<'a>,
    /// Pixel size (0 when the creative has none, text).
    pub width: u32,
    /// Pixel size (0 when the creative has none, text).
    pub height: u32,
    /// rotator's click URL (redirects to the landing page).
    pub click_url: &'a str,
    /// rotator's impression URL, loaded as a 1×1 image after the creative.
    pub impression_url: &'a str,
}

/// The iframe tag's document: the creative, then its impression pixel; links open in the top
/// page. An empty document when nothing won.
pub fn frame_markup(ad: Option<&FrameAd<'_>>) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                base target="_top";
                title { "Advertisement" }
                style { (PreEscaped(
                    "html,body{margin:0;padding:0;overflow:hidden}img{display:block;border:0}\
                     a.t{display:block;padding:4px;font:14px/1.3 sans-serif}\
                     .px{position:absolute;left:0;top:0;width:1px;height:1px;opacity:0}"
                )) }
            }
            body {
                @if let Some(ad) = ad {
                    @match ad.shown {
                        Shown::Image { src, alt } => {
                            a href=(ad.click_url) target="_top" rel="noopener" {
                                img src=(src) alt=(alt) width=(ad.width) height=(ad.height);
                            }
                        }
                        Shown::Html(markup) => (PreEscaped(markup)),
                        Shown::Text(text) => {
                            a.t href=(ad.click_url) target="_top" rel="noopener" { (text) }
                        }
                    }
                    img.px src=(ad.impression_url) alt="" width="1" height="1";
                }
            }
        }
    }
}

/// `GET /v1/frame/{placement}` answered with `ad` (or nothing): an HTML document that anyone may
/// frame (it is an ad), never stored (each load is a new decision), sandboxed by its own
/// `Content-Security-Policy`.
pub fn frame_response(ad: Option<&FrameAd<'_>>) -> Response<Body> {
    let page = frame_markup(ad).into_string();
    let mut r = Response::new(Body::new(Bytes::from(page)));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, NOSNIFF.clone());
    h.insert(CORP.clone(), CROSS_ORIGIN.clone());
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(FRAME_CSP));
    r
}

/// `GET /v1/frame/{placement}`: one decision for the placement, for the visitor of the
/// connection (through the client-IP rule, as `GET /ad`); `HEAD` decides nothing.
pub fn frame(
    decider: Arc<Decider>,
    tracker: Arc<Tracker>,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
) -> Reply {
    let metrics = decider.metrics.clone();
    let done = move |r: Response<Body>| {
        metrics.observe_request(Route::Tag, r.status().as_u16(), started.elapsed());
        r
    };
    // Boxed only for frames: answered at once unless a capped campaign waits for Redis.
    let mut answering = Box::pin(async move { frame_answer(&decider, &tracker, &req, peer).await });
    match crate::delivery::poll_once(answering.as_mut()) {
        Poll::Ready(r) => Reply::Now(done(r)),
        Poll::Pending => Reply::Later(Box::pin(async move { done(answering.await) })),
    }
}

async fn frame_answer(
    decider: &Decider,
    tracker: &Tracker,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let view = decider.view();
    let catalogue = &*view.catalogue;
    let found = frame_placement(req.uri().path()).and_then(|id| {
        let index = catalogue.placement(id)?;
        Some((index, catalogue.placements().get(index)?))
    });
    let Some((index, placement)) = found else {
        let mut r = Response::new(Body::new(Bytes::from_static(b"no such placement\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    };
    if req.method() == Method::HEAD {
        return frame_response(None);
    }
    let headers = req.headers();
    let ip = decider.client_ip.client_ip(peer.ip(), headers);
    let ua = headers
        .get(USER_AGENT)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
    let (visitor, _, geo_ok) = decider.visitor(ip, ua);
    let who = Who {
        headers: Some(headers),
        ip: Some(ip),
        ua,
        ..Who::default()
    };
    let Slots {
        mut wins,
        set_cookie,
    } = decider.decide_slots(&view, &visitor, &[index], who).await;
    let win = wins.pop().flatten();
    decider.record_slot(&visitor, placement, win.as_ref(), geo_ok);
    let secure = req.extensions().get::<super::tls::Secure>().is_some();
    let base = tracker.base_url(
        headers,
        decider.client_ip.proxies.contains(peer.ip()),
        secure,
    );
    let served = win
        .as_ref()
        .map(|w| super::decisions::render(tracker, &base, &visitor, w));
    let ad = served.as_ref().map(FrameAd::from);
    let mut r = frame_response(ad.as_ref());
    if let Some(cookie) = set_cookie {
        r.headers_mut().insert(SET_COOKIE, cookie);
    }
    r
}

impl<'a> From<&'a DecisionJson> for FrameAd<'a> {
    fn from(d: &'a DecisionJson) -> FrameAd<'a> {
        let text = |v: &'a Option<String>| v.as_deref().unwrap_or("");
        let shown = match d.kind {
            CreativeKind::Image => Shown::Image {
                src: text(&d.image_url),
                alt: text(&d.alt),
            },
            CreativeKind::Html => Shown::Html(text(&d.html)),
            CreativeKind::Text => Shown::Text(text(&d.text)),
        };
        FrameAd {
            shown,
            width: d.width.unwrap_or(0),
            height: d.height.unwrap_or(0),
            click_url: &d.click_url,
            impression_url: &d.impression_url,
        }
    }
}

/// The placement id in a `/v1/frame/{placement}` path, when it is a valid slug.
pub fn frame_placement(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/v1/frame/")?;
    crate::campaigns::placements::id_problem(id)
        .is_none()
        .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_is_stated_once_and_matches_the_script_and_the_header() {
        assert!(TAG_JS.contains(
            "'allow-scripts allow-popups allow-popups-to-escape-sandbox ' +\n    \
             'allow-top-navigation-by-user-activation'"
        ));
        let r = frame_response(None);
        let csp = r.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert_eq!(csp, format!("sandbox {SANDBOX}"));
        assert!(!SANDBOX.contains("allow-same-origin"));
    }

    #[test]
    fn etag_is_the_scripts_hash_and_revalidates() {
        let etag = tag_etag();
        assert_eq!(etag.len(), 18);
        assert_eq!(
            etag,
            format!("\"{:016x}\"", fnv1a(TAG_JS.as_bytes())),
            "compile-time hex"
        );
        // FNV-1a test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut h = HeaderMap::new();
        assert_eq!(tag_js(&h).status(), StatusCode::OK);
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(tag_js(&h).status(), StatusCode::OK);
        h.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{etag}")).unwrap(),
        );
        let r = tag_js(&h);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[ETAG], etag);
        assert!(r.headers().get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn frame_escapes_every_field_but_html_markup() {
        let evil = "\"><script>alert(1)</script><a x='";
        let ad = FrameAd {
            shown: Shown::Image {
                src: evil,
                alt: evil,
            },
            width: 728,
            height: 90,
            click_url: "https://ads.example/v1/c/t?a=1&b=\"2\"",
            impression_url: evil,
        };
        let page = frame_markup(Some(&ad)).into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert_eq!(
            page.matches("&quot;&gt;&lt;script&gt;").count(),
            3,
            "{page}"
        );
        assert!(page.contains("href=\"https://ads.example/v1/c/t?a=1&amp;b=&quot;2&quot;\""));
        assert!(page.contains("width=\"728\" height=\"90\""), "{page}");
        assert!(page.contains("target=\"_top\""));

        let text = FrameAd {
            shown: Shown::Text("<b>Sale</b> & more"),
            ..ad
        };
        let page = frame_markup(Some(&text)).into_string();
        assert!(
            page.contains("&lt;b&gt;Sale&lt;/b&gt; &amp; more"),
            "{page}"
        );

        let markup = FrameAd {
            shown: Shown::Html("<div id=\"c\">hi</div>"),
            ..ad
        };
        let page = frame_markup(Some(&markup)).into_string();
        assert!(page.contains("<div id=\"c\">hi</div>"), "{page}");
    }

    #[test]
    fn empty_frame_has_no_pixel() {
        let page = frame_markup(None).into_string();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<img"));
        let r = frame_response(None);
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[test]
    fn frame_paths_take_only_slugs() {
        assert_eq!(frame_placement("/v1/frame/top-banner"), Some("top-banner"));
        assert_eq!(frame_placement("/v1/frame/a_1"), Some("a_1"));
        for bad in [
            "/v1/frame/",
            "/v1/frame/Top",
            "/v1/frame/a/b",
            "/v1/frame/a%20b",
        ] {
            assert_eq!(frame_placement(bad), None, "{bad}");
        }
        assert_eq!(
            frame_placement(&format!("/v1/frame/{}", "a".repeat(65))),
            None
        );
    }
}
