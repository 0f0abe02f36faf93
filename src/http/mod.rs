//! HTTP: the connection loop ([`server`]) and what each path answers ([`routes`]; the decisions
//! API in [`decisions`], tracking URLs in [`tracking`]).

pub mod decisions;
pub mod guarded;
pub mod routes;
pub mod server;
pub mod tags;
pub mod tls;
pub mod tracking;

/// The body type of every response: small and complete.
pub type Body = http_body_util::Full<bytes::Bytes>;

/// The value of cookie `name` in `headers`' `Cookie` lines (the first one so named), as sent.
pub fn cookie<'h>(headers: &'h hyper::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}
