//! HTTP: the connection loop ([`server`]) and what each path answers ([`routes`]).

pub mod guarded;
pub mod routes;
pub mod server;
pub mod tags;

/// The body type of every response: small and complete.
pub type Body = http_body_util::Full<bytes::Bytes>;
