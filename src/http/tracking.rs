//! The tracking URLs (on the ad listener, `GET` or `HEAD`):
//!
//! - `/v1/i/{token}` impression and `/v1/v/{token}` viewable → `204`, or `400` when the token is
//!   not genuine;
//! - `/v1/c/{token}` click → `302` to the landing page of the creative the token names, looked up
//!   in the current catalogue (never a URL from the request: no open redirect), also when the
//!   click is expired or not counted; `400` and a short page when the token is not genuine.
//!
//! Every answer is `Cache-Control: no-store` (a cached beacon is a lost count) and carries
//! `Access-Control-Allow-Origin: *` so the tag may send beacons with `fetch`. What is counted is
//! decided by [`Tracker::event`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION,
};
use hyper::{Method, Request, Response, StatusCode};

use super::Body;
use super::server::Reply;
use crate::campaigns::Catalogue;
use crate::decision::Decider;
use crate::metrics::Route;
use crate::tracking::{Claims, Event, EventKind, Tracker, now};

static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The event kind and token of a tracking path, or `None` when `path` is not one.
fn parse(path: &str) -> Option<(EventKind, &str)> {
    [
        ("/v1/i/", EventKind::Impression),
        ("/v1/v/", EventKind::Viewable),
        ("/v1/c/", EventKind::Click),
    ]
    .into_iter()
    .find_map(|(prefix, kind)| Some((kind, path.strip_prefix(prefix)?)))
}

/// The answer to a tracking URL, or `None` when `req`'s path is not one.
pub fn answer(
    tracker: &Tracker,
    decider: &Decider,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    let (kind, token) = parse(req.uri().path())?;
    let event = tracker.event(kind, token, req.method() == Method::HEAD, now());
    Some(respond(decider, kind, event))
}

/// [`answer`] for a tracker whose counted-once memory is shared ([`Tracker::is_shared`]): the
/// response once the shared memory has answered (a `404` when `req`'s path is not a tracking
/// one). Observes the request's metrics itself.
pub fn answer_shared(
    tracker: Arc<Tracker>,
    decider: Arc<Decider>,
    req: &Request<Incoming>,
    started: Instant,
) -> Reply {
    let head = req.method() == Method::HEAD;
    let parsed = parse(req.uri().path()).map(|(kind, token)| (kind, token.to_string()));
    Reply::Later(Box::pin(async move {
        let response = match parsed {
            Some((kind, token)) => {
                let event = tracker.event_shared(kind, &token, head, now()).await;
                respond(&decider, kind, event)
            }
            None => status(StatusCode::NOT_FOUND, "not found\n"),
        };
        decider.metrics.observe_request(
            Route::Tracking,
            response.status().as_u16(),
            started.elapsed(),
        );
        response
    }))
}

fn respond(decider: &Decider, kind: EventKind, event: Event) -> Response<Body> {
    match (event.claims, kind) {
        (None, EventKind::Click) => status(
            StatusCode::BAD_REQUEST,
            "This link is not valid: it was altered or is not a link of this ad server.\n",
        ),
        (None, _) => status(StatusCode::BAD_REQUEST, "invalid tracking token\n"),
        (Some(claims), EventKind::Click) => {
            let location = landing(&decider.catalogue.load(), &claims)
                .unwrap_or_else(|| decider.default_location.clone());
            let mut r = status(StatusCode::FOUND, "");
            r.headers_mut().insert(LOCATION, location);
            r
        }
        (Some(_), _) => status(StatusCode::NO_CONTENT, ""),
    }
}

/// Where a click on the ad `claims` names goes: its creative's landing page in the current
/// catalogue; `None` when the creative is gone (the caller sends `default_url`).
fn landing(catalogue: &Catalogue, claims: &Claims) -> Option<HeaderValue> {
    let (_, creative) = catalogue.creative(claims.creative_id)?;
    Some(creative.click_location.clone())
}

fn status(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    let headers = r.headers_mut();
    headers.insert(CACHE_CONTROL, NO_STORE.clone());
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN.clone());
    if !body.is_empty() {
        headers.insert(CONTENT_TYPE, TEXT.clone());
    }
    r
}
