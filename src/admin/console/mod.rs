//! The web console on the admin listener: server-rendered HTML (`maud`, compiled into the
//! binary), one stylesheet and one small script (`assets/console/`, also compiled in), no inline
//! script, so the page's `Content-Security-Policy` allows only `'self'`.
//!
//! Authentication is the API's (tokens, [`super::session`]): sign in with a token once, then the
//! session cookie. Every form that changes something carries the session's CSRF token
//! ([`SessionStore::csrf_ok`]); a viewer sees no write controls and gets `403` on a write.
//! Writes go through [`Admin::write`] (audit line, ETag check, the loader's validation).
//!
//! Pages, one file each: [`signin`], [`campaigns`] (list, status, chart), [`form`] (campaign and
//! creative forms, pause/resume), [`placements`] (tags, creative preview), [`report`].

mod campaigns;
mod form;
mod placements;
mod report;
mod signin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, HeaderValue, LOCATION, ORIGIN, REFERRER_POLICY,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use maud::{DOCTYPE, Markup, html};

use super::Admin;
use super::session::{Session, SessionStore};
use crate::http::Body;

/// The console's pages' policy: nothing but this origin's stylesheet, script, forms and
/// preview frames; images from anywhere (creatives' pictures in previews are in frames, but the
/// sparkline is inline SVG); never framed.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                        frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const CSS: &str = include_str!("../../../assets/console/console.css");
const JS: &str = include_str!("../../../assets/console/console.js");

/// Whether `path` belongs to the console (everything but the API).
pub fn owns(path: &str) -> bool {
    !path.starts_with(super::api::PREFIX)
}

/// A request as the pages see it.
pub(crate) struct Page<'a> {
    admin: &'a Admin,
    session: Session,
    query: HashMap<String, String>,
}

impl Page<'_> {
    /// A query parameter, empty when absent.
    fn param(&self, key: &str) -> &str {
        self.query.get(key).map_or("", String::as_str)
    }
}

/// A submitted form: its fields, and the CSRF check already passed.
pub(crate) type Form = HashMap<String, String>;

fn parse_pairs(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// Answers one console request.
pub async fn answer(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let method = if parts.method == Method::HEAD {
        Method::GET
    } else {
        parts.method.clone()
    };
    if method == Method::POST && !same_origin(&parts.headers) {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form was sent from another site.",
        );
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/assets/console.css") => return asset(CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/assets/console.js") => {
            return asset(JS, "text/javascript; charset=utf-8");
        }
        (&Method::GET, "/sign-in") => return signin::page(None, StatusCode::OK),
        (&Method::POST, "/sign-in") => {
            let form = match read_form(body, &parts.headers).await {
                Ok(f) => f,
                Err(r) => return r,
            };
            return signin::submit(admin, &form, peer);
        }
        _ => {}
    }
    if method != Method::GET && method != Method::POST {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "The console takes GET and POST only.",
        );
    }
    let Some(session) = admin
        .sessions
        .get(&admin.gate, &parts.headers, Instant::now())
    else {
        if method == Method::GET {
            return redirect("/sign-in");
        }
        return signin::page(
            Some("Your session has ended: sign in again."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let page = Page {
        admin,
        session,
        query: parse_pairs(parts.uri.query().unwrap_or("").as_bytes()),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::GET {
        return match segments.as_slice() {
            [] => redirect("/campaigns"),
            ["campaigns"] => campaigns::list(&page).await,
            ["campaigns", "new"] => form::new(&page).await,
            ["campaigns", id] => match id.parse() {
                Ok(id) => form::edit(&page, id).await,
                Err(_) => not_found(&page),
            },
            ["placements"] => placements::list(&page).await,
            ["preview", campaign, creative] => match (campaign.parse(), creative.parse()) {
                (Ok(c), Ok(k)) => placements::preview(&page, c, k).await,
                _ => not_found(&page),
            },
            ["report"] => report::page(&page).await,
            ["report.csv"] => report::csv(&page).await,
            _ => not_found(&page),
        };
    }
    // A write: the form, its CSRF token, then the role.
    let form = match read_form(body, &parts.headers).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let presented = form.get("csrf").map_or("", String::as_str);
    if !SessionStore::csrf_ok(&page.session, presented) {
        return message(
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form's security token is missing or does not match your session. \
             Reload the page and submit it again.",
        );
    }
    if segments.as_slice() == ["sign-out"] {
        return signin::sign_out(admin, &parts.headers);
    }
    if !page.session.principal.role.may_write() {
        return message(
            StatusCode::FORBIDDEN,
            "Read-only",
            &format!(
                "Token {:?} is a viewer: it can look at campaigns and reports, not change them.",
                page.session.principal.name
            ),
        );
    }
    match segments.as_slice() {
        ["campaigns", "new"] => form::create(&page, &form).await,
        ["campaigns", id, action] if matches!(*action, "pause" | "resume") => match id.parse() {
            Ok(id) => form::pause_resume(&page, id, *action == "pause").await,
            Err(_) => not_found(&page),
        },
        ["campaigns", id] => match id.parse() {
            Ok(id) => form::save(&page, id, &form).await,
            Err(_) => not_found(&page),
        },
        _ => not_found(&page),
    }
}

/// Whether a form comes from the console's own pages: browsers send `Origin` with every
/// `POST`; it must name this host. (This covers the sign-in form too, which has no session, so
/// no CSRF token, yet: another site cannot sign a visitor in with its own token.)
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && bare == Some(host)
}

async fn read_form(body: Incoming, headers: &HeaderMap) -> Result<Form, Response<Body>> {
    let bytes = super::api::read_body(body, headers).await?;
    Ok(parse_pairs(&bytes))
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An HTML response with the console's policy.
pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(markup.into_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    // Nothing leaves for other sites; the console's own forms keep their `Origin`
    // (under `no-referrer` a browser sends `Origin: null`).
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    r
}

/// `303 See Other` to `to` (after a form, or to the sign-in page).
pub(crate) fn redirect(to: &str) -> Response<Body> {
    let mut r = html_response(StatusCode::SEE_OTHER, html! { a href=(to) { "Continue" } });
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// A page with only a heading and a sentence (errors).
pub(crate) fn message(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    html_response(
        status,
        document(
            title,
            html! {
                main id="main" {
                    h1 { (title) }
                    p role="alert" { (text) }
                    p { a href="/campaigns" { "Back to the campaigns" } }
                }
            },
        ),
    )
}

fn not_found(page: &Page<'_>) -> Response<Body> {
    html_response(
        StatusCode::NOT_FOUND,
        layout(page, "Not found", html! { p { "There is no such page." } }),
    )
}

/// The HTML document around a page's body.
fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · rotator" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body { (body) }
        }
    }
}

/// A signed-in page: navigation, who is signed in, sign-out, the page's content.
pub(crate) fn layout(page: &Page<'_>, title: &str, content: Markup) -> Markup {
    let who = &page.session.principal;
    document(
        title,
        html! {
            a.skip href="#main" { "Skip to content" }
            header {
                nav aria-label="Console" {
                    span.brand { "rotator" }
                    a href="/campaigns" { "Campaigns" }
                    a href="/placements" { "Placements" }
                    a href="/report" { "Report" }
                }
                div.who {
                    span { (who.name) " (" (who.role.as_str()) ")" }
                    form method="post" action="/sign-out" {
                        (csrf(page))
                        button type="submit" { "Sign out" }
                    }
                }
            }
            main id="main" tabindex="-1" {
                h1 { (title) }
                (content)
            }
        },
    )
}

/// The hidden CSRF field of every form that changes something.
pub(crate) fn csrf(page: &Page<'_>) -> Markup {
    html! { input type="hidden" name="csrf" value=(page.session.csrf); }
}

/// Whether the signed-in user may write (write controls are shown only then).
pub(crate) fn may_write(page: &Page<'_>) -> bool {
    page.session.principal.role.may_write()
}
