//! The REST API under `/api/v1` (JSON). Described by [`super::openapi`]; every handler here
//! carries its `#[utoipa::path]`, so the document is generated from the code it describes.
//!
//! Order of checks: route (`404`), method (`405` with `Allow`), then, for everything but
//! `openapi.json`, the bearer token (`429` over the failure limit, `401`), the role (`403` for a
//! viewer's write), `If-Match` on writes to an existing entry (`428` without it), the body
//! (`400` not JSON, `413` too large, `422` wrong shape), and the edit itself (`404`, `409`,
//! `412` stale tag, `422` the loader's problems).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MATCH, LOCATION, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::Admin;
use super::audit::Target;
use super::auth::Refusal;
use super::edit::{EditError, Edited};
use super::model::{CampaignDoc, ErrorDoc, Problem, Problems};
use super::reports::{self, ReportDoc};

mod campaigns;
mod creatives;
mod placements;

use super::tokens::Principal;
use crate::http::Body;
pub(super) use campaigns::*;
pub(super) use creatives::*;
pub(super) use placements::*;

/// Where the API lives.
pub const PREFIX: &str = "/api/v1";

/// The largest request body (a campaign with HTML creatives).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the status's sink check may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A path of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    OpenApi,
    Status,
    Reports,
    Campaigns,
    Campaign(u32),
    Pause(u32),
    Resume(u32),
    Creatives(u32),
    Creative(u32, u32),
    Placements,
    Placement(String),
}

impl Route {
    fn parse(rest: &str) -> Option<Route> {
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let id = |s: &String| s.parse::<u32>().ok();
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        Some(match s.as_slice() {
            ["openapi.json"] => Route::OpenApi,
            ["status"] => Route::Status,
            ["reports"] => Route::Reports,
            ["campaigns"] => Route::Campaigns,
            ["campaigns", _] => Route::Campaign(id(&segments[1])?),
            ["campaigns", _, "pause"] => Route::Pause(id(&segments[1])?),
            ["campaigns", _, "resume"] => Route::Resume(id(&segments[1])?),
            ["campaigns", _, "creatives"] => Route::Creatives(id(&segments[1])?),
            ["campaigns", _, "creatives", _] => {
                Route::Creative(id(&segments[1])?, id(&segments[3])?)
            }
            ["placements"] => Route::Placements,
            ["placements", p] => Route::Placement(p.to_string()),
            _ => return None,
        })
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::OpenApi | Route::Status | Route::Reports => &[Method::GET],
            Route::Campaigns | Route::Creatives(_) | Route::Placements => {
                &[Method::GET, Method::POST]
            }
            Route::Pause(_) | Route::Resume(_) => &[Method::POST],
            Route::Campaign(_) | Route::Creative(..) | Route::Placement(_) => {
                &[Method::GET, Method::PUT, Method::DELETE]
            }
        }
    }
}

/// A handler's answer; the error is an answer too (refusals found on the way, boxed: they
/// are the rare path).
type Answer = Result<Response<Body>, Box<Response<Body>>>;

/// One authenticated request.
struct Call<'a> {
    admin: &'a Admin,
    who: Principal,
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Call<'_> {
    /// The `If-Match` value a write to an existing entry needs.
    fn if_match(&self) -> Result<String, Box<Response<Body>>> {
        match self.headers.get(IF_MATCH).and_then(|v| v.to_str().ok()) {
            Some(v) if !v.trim().is_empty() => Ok(v.to_string()),
            _ => Err(Box::new(error(
                StatusCode::PRECONDITION_REQUIRED,
                "send If-Match with the ETag of a GET (or `*` to overwrite whatever is there)",
            ))),
        }
    }

    /// The body as `T`.
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Box<Response<Body>>> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Box::new(match e.classify() {
                serde_json::error::Category::Data => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &Problems {
                        problems: vec![Problem {
                            field: body_field(&e.to_string()),
                            message: e.to_string(),
                            line: None,
                            text: e.to_string(),
                        }],
                    },
                ),
                _ => error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body is not JSON: {e}"),
                ),
            })
        })
    }

    /// Edits campaign `id`'s document with `change` under the ETag `tag` (the request's
    /// `If-Match`) and answers `status` with `answer` of the edit.
    async fn update_campaign(
        &self,
        id: u32,
        tag: String,
        status: StatusCode,
        change: impl FnOnce(&mut CampaignDoc) -> Result<(), EditError> + Send + 'static,
        answer: impl FnOnce(&Edited) -> Json,
    ) -> Response<Body> {
        self.write(
            Target::Campaign(id),
            status,
            move |s| s.update_campaign(id, &tag, change),
            answer,
        )
        .await
    }

    /// Runs a write and answers `ok` with its result (and the entry's new ETag).
    async fn write<F>(
        &self,
        target: Target,
        status: StatusCode,
        change: F,
        answer: impl FnOnce(&Edited) -> Json,
    ) -> Response<Body>
    where
        F: FnOnce(&mut super::edit::Snapshot) -> Result<Edited, EditError> + Send + 'static,
    {
        let method = self.method.as_str();
        match self
            .admin
            .write(&self.who, method, &self.path, target, change)
            .await
        {
            Ok(edited) => {
                if status == StatusCode::NO_CONTENT {
                    let mut r = Response::new(Body::default());
                    *r.status_mut() = status;
                    return r;
                }
                let body = answer(&edited);
                let mut r = json(status, &body);
                // A POST creates under its collection: the new entry is the collection's path
                // and the entry's id.
                let id = match &body["id"] {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if status == StatusCode::CREATED
                    && let Ok(v) = HeaderValue::from_str(&format!("{}/{id}", self.path))
                {
                    r.headers_mut().insert(LOCATION, v);
                }
                if let Some(tag) = edited
                    .etag
                    .as_deref()
                    .and_then(|t| HeaderValue::from_str(t).ok())
                {
                    r.headers_mut().insert(ETAG, tag);
                }
                r
            }
            Err(e) => edit_error(e),
        }
    }
}

/// Answers one request to the admin listener.
pub async fn answer(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Some(route) = parts.uri.path().strip_prefix(PREFIX).and_then(Route::parse) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let method = if parts.method == Method::HEAD {
        Method::GET
    } else {
        parts.method.clone()
    };
    if !route.methods().contains(&method) {
        let allow: Vec<&str> = route.methods().iter().map(Method::as_str).collect();
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method not allowed: use {}", allow.join(", ")),
        );
        if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
            r.headers_mut().insert(ALLOW, v);
        }
        return r;
    }
    if route == Route::OpenApi {
        return openapi();
    }
    let who = match admin.gate.check_bearer(peer.ip(), &parts.headers) {
        Ok(who) => who,
        Err(refusal) => return refused(refusal, super::auth::bearer(&parts.headers).is_some()),
    };
    let writes = method != Method::GET;
    if writes && !who.role.may_write() {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "token {:?} is a viewer: it reads, it does not write",
                who.name
            ),
        );
    }
    let body = if writes {
        match read_body(body, &parts.headers).await {
            Ok(b) => b,
            Err(r) => return r,
        }
    } else {
        Bytes::new()
    };
    let call = Call {
        admin,
        who,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        method: method.clone(),
        headers: parts.headers,
        body,
    };
    let result = match (route, method) {
        (Route::Status, _) => Ok(status(&call).await),
        (Route::Reports, _) => Ok(report(&call).await),
        (Route::Campaigns, Method::GET) => Ok(list_campaigns(&call).await),
        (Route::Campaigns, _) => create_campaign(&call).await,
        (Route::Campaign(id), Method::GET) => Ok(get_campaign(&call, id).await),
        (Route::Campaign(id), Method::PUT) => replace_campaign(&call, id).await,
        (Route::Campaign(id), _) => delete_campaign(&call, id).await,
        (Route::Pause(id), _) => pause_campaign(&call, id).await,
        (Route::Resume(id), _) => resume_campaign(&call, id).await,
        (Route::Creatives(id), Method::GET) => Ok(list_creatives(&call, id).await),
        (Route::Creatives(id), _) => create_creative(&call, id).await,
        (Route::Creative(id, c), Method::GET) => Ok(get_creative(&call, id, c).await),
        (Route::Creative(id, c), Method::PUT) => replace_creative(&call, id, c).await,
        (Route::Creative(id, c), _) => delete_creative(&call, id, c).await,
        (Route::Placements, Method::GET) => Ok(list_placements(&call).await),
        (Route::Placements, _) => create_placement(&call).await,
        (Route::Placement(p), Method::GET) => Ok(get_placement(&call, &p).await),
        (Route::Placement(p), Method::PUT) => replace_placement(&call, &p).await,
        (Route::Placement(p), _) => delete_placement(&call, &p).await,
        (Route::OpenApi, _) => Ok(openapi()),
    };
    result.unwrap_or_else(|r| *r)
}

/// The field a body's shape error names (`missing field `bid``, `unknown field `x``), else "".
fn body_field(message: &str) -> String {
    ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p)?.split_once('`'))
        .map_or_else(String::new, |(field, _)| field.to_string())
}

pub(super) async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Body::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &ErrorDoc {
            error: message.to_string(),
        },
    )
}

fn refused(refusal: Refusal, presented: bool) -> Response<Body> {
    match refusal {
        Refusal::Unauthorized(why) => {
            let mut r = error(StatusCode::UNAUTHORIZED, why);
            let challenge = if presented {
                "Bearer realm=\"rotator\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"rotator\""
            };
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            r
        }
        Refusal::RateLimited(wait) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("too many failed attempts from this address; retry in {wait} s"),
            );
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(wait));
            r
        }
    }
}

fn edit_error(e: EditError) -> Response<Body> {
    match e {
        EditError::NotFound(m) => error(StatusCode::NOT_FOUND, &m),
        EditError::Conflict(m) => error(StatusCode::CONFLICT, &m),
        EditError::Stale { ref current } => {
            let mut r = error(StatusCode::PRECONDITION_FAILED, &e.to_string());
            if let Ok(v) = HeaderValue::from_str(current) {
                r.headers_mut().insert(ETAG, v);
            }
            r
        }
        EditError::Invalid(problems) => {
            json(StatusCode::UNPROCESSABLE_ENTITY, &Problems { problems })
        }
        EditError::File(m) => {
            tracing::error!("admin API: campaigns file {m}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("campaigns file {m}"),
            )
        }
    }
}

/// `200` with `value` and its `ETag`.
fn tagged(value: &Json, etag: &str) -> Response<Body> {
    let mut r = json(StatusCode::OK, value);
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(ETAG, v);
    }
    r
}

fn openapi() -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(super::openapi::document())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// `GET /status`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusDoc {
    /// rotator's version.
    pub version: String,
    /// The campaigns being served.
    pub campaigns: CampaignsStatus,
    /// The statistics sink.
    pub stats: StatsStatus,
    /// The delivery state backend (`local`, `redis`), when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_backend: Option<String>,
}

/// The campaigns part of [`StatusDoc`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignsStatus {
    /// The campaigns file.
    pub file: String,
    /// Campaigns loaded (active or not).
    pub loaded: usize,
    /// Active campaigns.
    pub active: usize,
    /// Placements.
    pub placements: usize,
}

/// The statistics part of [`StatusDoc`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsStatus {
    /// `sqlite`, `clickhouse`, `mysql` or `none`.
    pub sink: String,
    /// Whether statistics are being kept (the sink answers, or the spool takes batches): what
    /// `/readyz` says.
    pub ready: bool,
    /// Whether the sink answered a ping just now.
    pub reachable: bool,
    /// Why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, description = "Version, campaigns, statistics sink, state backend", body = StatusDoc),
        (status = 401, body = ErrorDoc), (status = 429, body = ErrorDoc)))]
async fn status(call: &Call<'_>) -> Response<Body> {
    let admin = call.admin;
    let catalogue = admin.campaigns.catalogue().load();
    let ping = tokio::time::timeout(PING_TIMEOUT, admin.sink.ping()).await;
    let error = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {PING_TIMEOUT:?}")),
    };
    json(
        StatusCode::OK,
        &StatusDoc {
            version: env!("CARGO_PKG_VERSION").to_string(),
            campaigns: CampaignsStatus {
                file: catalogue.source().display().to_string(),
                loaded: catalogue.campaigns().len(),
                active: catalogue.active(),
                placements: catalogue.placements().len(),
            },
            stats: StatsStatus {
                sink: admin.sink.name().to_string(),
                ready: admin.metrics.stats_ready(),
                reachable: error.is_none(),
                error,
            },
            state_backend: admin.state_backend.map(String::from),
        },
    )
}

#[utoipa::path(get, path = "/api/v1/reports", tag = "reports",
    params(
        ("by" = Option<String>, Query, description = "Groupings, comma-separated: campaign, country, browser, os, device, placement, creative"),
        ("from" = Option<String>, Query, description = "Start: RFC 3339 or Unix seconds"),
        ("to" = Option<String>, Query, description = "End (exclusive), default now"),
        ("since" = Option<String>, Query, description = "Instead of from: how far back, e.g. 1h, 7d (default 1h)")),
    responses((status = 200, description = "The figures of `rotator report`", body = ReportDoc),
        (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 503, body = ErrorDoc)))]
async fn report(call: &Call<'_>) -> Response<Body> {
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(call.query.as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let query = match reports::query(
        get("by"),
        get("since"),
        get("from"),
        get("to"),
        reports::unix_now(),
    ) {
        Ok(q) => q,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    match reports::run(&call.admin.sink, &query).await {
        Ok(doc) => json(StatusCode::OK, &doc),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn snapshot(call: &Call<'_>) -> Result<super::edit::Snapshot, Response<Body>> {
    call.admin.campaigns.read().await.map_err(edit_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            Route::parse("/campaigns/7/creatives/701"),
            Some(Route::Creative(7, 701))
        );
        assert_eq!(Route::parse("/campaigns/7/pause"), Some(Route::Pause(7)));
        assert_eq!(
            Route::parse("/placements/top%2Dbanner"),
            Some(Route::Placement("top-banner".into()))
        );
        assert_eq!(Route::parse("/campaigns/x"), None);
        assert_eq!(Route::parse("/campaigns/7/nothing"), None);
        assert_eq!(Route::parse("/"), None);
        assert_eq!(body_field("missing field `bid` at line 1 column 9"), "bid");
        assert_eq!(
            body_field("unknown field `colour`, expected one of"),
            "colour"
        );
        assert_eq!(body_field("invalid type: string"), "");
    }
}
