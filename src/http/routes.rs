//! What each path answers.
//!
//! Ad listener: `GET`/`HEAD` on `/` and `/ad` → 303 to the winner (or `default_url`) with
//! `Cache-Control: no-store`; `/v1/decisions` → the decisions API ([`super::decisions`]);
//! `/v1/i/`, `/v1/v/`, `/v1/c/` → tracking; `/v1/tag.js`, `/v1/frame/` → ad tags; a method a
//! route does not take → 405 with `Allow`; another path → 404.
//! Metrics listener: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};

use super::Body;
use super::server::{Handler, Reply};
use super::tags;
use crate::campaigns::CatalogueHandle;
use crate::decision::{AdAnswer, Answer, Decider};
use crate::metrics::{Metrics, Route};

static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static GET_HEAD: HeaderValue = HeaderValue::from_static("GET, HEAD");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, TEXT.clone());
    r
}

/// `405` with `Allow` for any method but `GET` and `HEAD`.
fn only_get_or_head(req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: use GET or HEAD\n",
    );
    r.headers_mut().insert(ALLOW, GET_HEAD.clone());
    Some(r)
}

/// The ad listener.
pub struct AdRoutes {
    /// Makes the decisions.
    pub decider: Arc<Decider>,
    /// Counts the tracking URLs' events.
    pub tracker: Arc<crate::tracking::Tracker>,
}

/// The route of a path on the ad listener.
fn route(path: &str) -> Route {
    match path {
        "/" | "/ad" => Route::Ad,
        "/v1/decisions" => Route::Decisions,
        "/v1/tag.js" => Route::Tag,
        p if p.starts_with("/v1/frame/") => Route::Tag,
        p if p.starts_with("/v1/i/") || p.starts_with("/v1/v/") || p.starts_with("/v1/c/") => {
            Route::Tracking
        }
        _ => Route::Other,
    }
}

impl Handler for AdRoutes {
    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let started = Instant::now();
        let route = route(req.uri().path());
        if route == Route::Decisions {
            return super::decisions::answer(
                self.decider.clone(),
                self.tracker.clone(),
                req,
                peer,
                started,
            );
        }
        if route == Route::Tracking && self.tracker.is_shared() && only_get_or_head(&req).is_none()
        {
            return super::tracking::answer_shared(
                self.tracker.clone(),
                self.decider.clone(),
                &req,
                started,
            );
        }
        // The method first: `CONNECT host:port`, `OPTIONS *` and `TRACE /x` have no route to
        // find, and the answer to them is that this server takes only GET and HEAD.
        let refused = only_get_or_head(&req);
        match route {
            Route::Ad if refused.is_none() => return self.ad(&req, peer, started),
            Route::Tag if refused.is_none() && req.uri().path() != "/v1/tag.js" => {
                return tags::frame(
                    self.decider.clone(),
                    self.tracker.clone(),
                    req,
                    peer,
                    started,
                );
            }
            _ => {}
        }
        let response = match (refused, route) {
            (Some(refused), _) => refused,
            (None, Route::Tag) => tags::tag_js(req.headers()),
            (None, Route::Tracking) => super::tracking::answer(&self.tracker, &self.decider, &req)
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
            (None, Route::Ad | Route::Decisions | Route::Other) => {
                text(StatusCode::NOT_FOUND, "not found\n")
            }
        };
        self.decider
            .metrics
            .observe_request(route, response.status().as_u16(), started.elapsed());
        Reply::Now(response)
    }
}

impl AdRoutes {
    fn ad(&self, req: &Request<Incoming>, peer: SocketAddr, started: Instant) -> Reply {
        match self.decider.decide(peer.ip(), req.headers()) {
            Answer::Now(answer) => {
                let r = redirect(answer);
                self.decider.metrics.observe_request(
                    Route::Ad,
                    r.status().as_u16(),
                    started.elapsed(),
                );
                Reply::Now(r)
            }
            Answer::Later(deciding) => {
                let metrics = self.decider.metrics.clone();
                Reply::Later(Box::pin(async move {
                    let r = redirect(deciding.await);
                    metrics.observe_request(Route::Ad, r.status().as_u16(), started.elapsed());
                    r
                }))
            }
        }
    }
}

/// `303` to the decision's `Location`, never cached.
fn redirect(answer: AdAnswer) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SEE_OTHER;
    let headers = r.headers_mut();
    headers.insert(LOCATION, answer.location);
    headers.insert(CACHE_CONTROL, NO_STORE.clone());
    if let Some(cookie) = answer.set_cookie {
        headers.insert(SET_COOKIE, cookie);
    }
    r
}

/// The metrics and health listener.
pub struct AdminRoutes {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Current campaigns (readiness).
    pub catalogue: CatalogueHandle,
}

impl Handler for AdminRoutes {
    fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Reply {
        Reply::Now(self.answer(&req))
    }
}

impl AdminRoutes {
    fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        if let Some(refused) = only_get_or_head(req) {
            return refused;
        }
        match req.uri().path() {
            "/metrics" => {
                let mut r = Response::new(Body::new(Bytes::from(self.metrics.render())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                // Campaigns are always loaded once serving: start-up refuses to serve without a
                // valid file, and a bad reload keeps the previous set. An empty set still serves
                // default_url, so it counts as ready.
                if self.metrics.stats_ready() {
                    let active = self.catalogue.load().active();
                    let mut r = Response::new(Body::new(Bytes::from(format!(
                        "ready: {active} active campaigns\n"
                    ))));
                    r.headers_mut().insert(CONTENT_TYPE, TEXT.clone());
                    r
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: statistics sink unreachable and spool refusing writes\n",
                    )
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
