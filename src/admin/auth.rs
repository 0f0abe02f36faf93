//! Who may use the admin listener: bearer tokens for the API, sign-in for the console (sessions
//! in [`super::session`]), and a per-client limit on failed attempts.
//!
//! Every failed authentication (a missing, unknown or revoked token; a wrong sign-in) counts
//! against the client's address ([`FailureLimiter`]): after [`MAX_FAILURES`] in a
//! [`FAILURE_WINDOW`] the client gets `429` with `Retry-After` until the window ends, whatever it
//! sends, so a token cannot be guessed by trying. The address is the connection's peer: the
//! admin listener trusts no forwarding header. IPv6 clients are counted per /64 (one host
//! usually has a whole /64 to rotate through).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

use super::tokens::{Principal, TokenStore, Verified};

/// Failed attempts a client may make per window.
pub const MAX_FAILURES: u32 = 10;

/// The window failed attempts are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Clients whose failures are remembered at most (about 64 bytes each): a flood of addresses
/// evicts the oldest windows first, and memory stays bounded.
pub const MAX_CLIENTS: usize = 4096;

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or unknown ones: `401`.
    Unauthorized(&'static str),
    /// Too many failures from this client: `429`, retry after this many seconds.
    RateLimited(u64),
}

/// Failed attempts per client address, bounded.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The key failures are counted under: the address, or its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl FailureLimiter {
    /// `Some(seconds to wait)` when `ip` used up its failures in the current window.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let clients = self.clients.lock().ok()?;
        let &(start, failures) = clients.get(&client_key(ip))?;
        let elapsed = now.saturating_duration_since(start);
        (failures >= MAX_FAILURES && elapsed < FAILURE_WINDOW)
            .then(|| (FAILURE_WINDOW - elapsed).as_secs().max(1))
    }

    /// Counts one failure of `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        let key = client_key(ip);
        if !clients.contains_key(&key) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, (start, _)| now.saturating_duration_since(*start) < FAILURE_WINDOW);
            if clients.len() >= MAX_CLIENTS
                && let Some(oldest) = clients.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k)
            {
                clients.remove(&oldest);
            }
        }
        let entry = clients.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// Clients remembered now (tests).
    pub fn len(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bearer token of `Authorization: Bearer TOKEN` (scheme case-insensitive, RFC 6750).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Tokens plus the failure limiter: the one gate of the admin listener.
pub struct Gate {
    /// The tokens file.
    pub tokens: TokenStore,
    /// Failed attempts per client.
    pub failures: FailureLimiter,
}

impl Gate {
    /// A gate over `tokens`.
    pub fn new(tokens: TokenStore) -> Gate {
        Gate {
            tokens,
            failures: FailureLimiter::default(),
        }
    }

    /// Checks a presented token from `ip` (`None`: nothing presented). A client over its
    /// failures is refused before its token is looked at.
    pub fn check_token(&self, ip: IpAddr, token: Option<&str>) -> Result<Verified, Refusal> {
        let now = Instant::now();
        if let Some(wait) = self.failures.blocked(ip, now) {
            return Err(Refusal::RateLimited(wait));
        }
        let verified = token.and_then(|t| self.tokens.verify(t));
        verified.ok_or_else(|| {
            self.failures.failed(ip, now);
            Refusal::Unauthorized(if token.is_some() {
                "the token is not valid (unknown or revoked)"
            } else {
                "send Authorization: Bearer TOKEN (rotator token create)"
            })
        })
    }

    /// Checks the `Authorization: Bearer` header of a request from `ip`.
    pub fn check_bearer(&self, ip: IpAddr, headers: &HeaderMap) -> Result<Principal, Refusal> {
        self.check_token(ip, bearer(headers)).map(|v| v.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_client_and_forgotten_after_the_window() {
        let limiter = FailureLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(limiter.blocked(a, t0), None);
            limiter.failed(a, t0);
        }
        assert_eq!(limiter.blocked(a, t0), Some(60));
        assert_eq!(limiter.blocked(a, t0 + Duration::from_secs(45)), Some(15));
        assert_eq!(limiter.blocked(b, t0), None);
        assert_eq!(limiter.blocked(a, t0 + FAILURE_WINDOW), None);
        limiter.failed(a, t0 + FAILURE_WINDOW);
        assert_eq!(
            limiter.blocked(a, t0 + FAILURE_WINDOW),
            None,
            "a new window"
        );
        // One IPv6 /64 is one client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..MAX_FAILURES {
            limiter.failed(v6(&format!("2001:db8::{i:x}")), t0);
        }
        assert!(limiter.blocked(v6("2001:db8::ffff"), t0).is_some());
        assert!(limiter.blocked(v6("2001:db8:0:1::1"), t0).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = FailureLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 500) {
            limiter.failed(
                IpAddr::V4(i.into()),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(limiter.len(), MAX_CLIENTS);
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
