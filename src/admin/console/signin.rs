//! Sign-in (a token → the session cookie) and sign-out. Failed sign-ins count against the
//! client like failed bearer tokens (the same limiter: `429` over it).

use std::net::SocketAddr;
use std::time::Instant;

use hyper::header::{HeaderValue, RETRY_AFTER, SET_COOKIE};
use hyper::{HeaderMap, Response, StatusCode};
use maud::html;

use super::{Form, document, html_response, redirect};
use crate::admin::Admin;
use crate::admin::auth::Refusal;
use crate::http::Body;

/// The sign-in page, with `error` above the form.
pub(super) fn page(error: Option<&str>, status: StatusCode) -> Response<Body> {
    html_response(
        status,
        document(
            "Sign in",
            html! {
                main id="main" .narrow {
                    h1 { "Sign in to rotator" }
                    @if let Some(e) = error {
                        p.error role="alert" id="sign-in-error" { (e) }
                    }
                    form method="post" action="/sign-in" {
                        label for="token" { "Access token" }
                        input id="token" name="token" type="password" required
                            autocomplete="current-password" autofocus
                            aria-describedby="token-help";
                        p.help id="token-help" {
                            "Made with " code { "rotator token create --role admin" } "."
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            },
        ),
    )
}

/// `POST /sign-in`: a session for a valid token.
pub(super) fn submit(admin: &Admin, form: &Form, peer: SocketAddr) -> Response<Body> {
    let token = form.get("token").map_or("", |t| t.trim());
    match admin
        .sessions
        .sign_in(&admin.gate, peer.ip(), token, Instant::now())
    {
        Ok((cookie, _)) => {
            let mut r = redirect("/campaigns");
            r.headers_mut().insert(SET_COOKIE, cookie);
            r
        }
        Err(Refusal::Unauthorized(_)) => page(
            Some("That token is not valid (or was revoked)."),
            StatusCode::UNAUTHORIZED,
        ),
        Err(Refusal::RateLimited(wait)) => {
            let mut r = page(
                Some(&format!(
                    "Too many failed attempts from this address; try again in {wait} s."
                )),
                StatusCode::TOO_MANY_REQUESTS,
            );
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(wait));
            r
        }
    }
}

/// `POST /sign-out`: ends the session and clears the cookie.
pub(super) fn sign_out(admin: &Admin, headers: &HeaderMap) -> Response<Body> {
    let cookie = admin.sessions.sign_out(headers);
    let mut r = redirect("/sign-in");
    r.headers_mut().insert(SET_COOKIE, cookie);
    r
}
