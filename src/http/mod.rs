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
