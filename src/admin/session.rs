//! Console sessions: sign in with a token once, then a cookie.
//!
//! A session id is 32 random bytes; the server keeps only its SHA-256 (so a lookup's timing says
//! nothing about stored ids), with the token's digest, a CSRF token and two deadlines: idle
//! ([`IDLE_TIMEOUT`]) and absolute ([`MAX_AGE`]). The token is checked again on every use, so
//! revoking it ends its sessions. At most [`MAX_SESSIONS`] live at once; signing in beyond that
//! ends the session used least recently.
//!
//! The cookie is `HttpOnly; SameSite=Strict; Path=/` (plus `Secure` when the listener serves
//! TLS): scripts cannot read it and other sites cannot send it. Every state-changing form also
//! carries the session's CSRF token ([`SessionStore::csrf_ok`], compared in constant time).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{Gate, Refusal};
use super::tokens::Principal;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "rotator_session";

/// A session unused this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A session ends this long after sign-in, however busy.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most (a few hundred bytes each).
pub const MAX_SESSIONS: usize = 1024;

/// A signed-in user, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who (the token's current name and role).
    pub principal: Principal,
    /// The token forms must carry (hidden field), base64url.
    pub csrf: String,
}

struct Entry {
    token_digest: [u8; 32],
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// The server-side sessions of the console.
pub struct SessionStore {
    sessions: Mutex<HashMap<[u8; 32], Entry>>,
    secure: bool,
}

fn random_b64() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    crate::http::cookie(headers, name).map(str::trim)
}

impl SessionStore {
    /// A store whose cookies carry `Secure` when `secure` (the listener serves TLS).
    pub fn new(secure: bool) -> SessionStore {
        SessionStore {
            sessions: Mutex::new(HashMap::new()),
            secure,
        }
    }

    /// Signs in with `token` from `ip` (failures count against the client like bearer
    /// failures); returns the `Set-Cookie` value and the session.
    pub fn sign_in(
        &self,
        gate: &Gate,
        ip: IpAddr,
        token: &str,
        now: Instant,
    ) -> Result<(HeaderValue, Session), Refusal> {
        let verified = gate.check_token(ip, Some(token))?;
        let (Some(id), Some(csrf)) = (random_b64(), random_b64()) else {
            return Err(Refusal::Unauthorized("no randomness for a session id"));
        };
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| Refusal::Unauthorized("session store unavailable"))?;
        sessions.retain(|_, e| live(e, now));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            key(&id),
            Entry {
                token_digest: verified.digest,
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        let cookie = self.cookie(&id, MAX_AGE.as_secs());
        Ok((
            cookie,
            Session {
                principal: verified.principal,
                csrf,
            },
        ))
    }

    /// The live session of a request's cookie, its token still valid; refreshes its idle time.
    pub fn get(&self, gate: &Gate, headers: &HeaderMap, now: Instant) -> Option<Session> {
        let id = cookie_value(headers, COOKIE_NAME)?;
        let mut sessions = self.sessions.lock().ok()?;
        let k = key(id);
        let entry = sessions.get_mut(&k)?;
        let principal = match gate.tokens.principal_of(&entry.token_digest) {
            Some(p) if live(entry, now) => p,
            _ => {
                sessions.remove(&k);
                return None;
            }
        };
        entry.last_used = now;
        Some(Session {
            principal,
            csrf: entry.csrf.clone(),
        })
    }

    /// Whether `presented` is the session's CSRF token (constant time).
    pub fn csrf_ok(session: &Session, presented: &str) -> bool {
        session.csrf.len() == presented.len()
            && bool::from(session.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// Ends the session of a request's cookie; returns the `Set-Cookie` value that clears it.
    pub fn sign_out(&self, headers: &HeaderMap) -> HeaderValue {
        if let (Some(id), Ok(mut sessions)) =
            (cookie_value(headers, COOKIE_NAME), self.sessions.lock())
        {
            sessions.remove(&key(id));
        }
        self.cookie("", 0)
    }

    /// Live sessions (tests, status).
    pub fn len(&self, now: Instant) -> usize {
        self.sessions
            .lock()
            .map_or(0, |s| s.values().filter(|e| live(e, now)).count())
    }

    fn cookie(&self, id: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        // The id is base64url: always a valid header value.
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("rotator_session=; Max-Age=0"))
    }
}

fn live(e: &Entry, now: Instant) -> bool {
    now.saturating_duration_since(e.last_used) < IDLE_TIMEOUT
        && now.saturating_duration_since(e.created) < MAX_AGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tokens::{self, Role, TokenStore};
    use hyper::header::COOKIE;

    fn request_with(cookie: &HeaderValue) -> HeaderMap {
        let pair = cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, format!("other=1; {pair}").parse().unwrap());
        h
    }

    #[test]
    fn sign_in_use_csrf_expire_revoke_sign_out() {
        let dir = std::env::temp_dir().join(format!("rotator-session-{}", fastrand::u64(..)));
        let path = dir.join("tokens.toml");
        let (token, _) = tokens::create(&path, Role::Viewer, Some("v")).unwrap();
        let gate = Gate::new(TokenStore::open(path.clone()));
        let store = SessionStore::new(false);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();

        assert!(matches!(
            store.sign_in(&gate, ip, "rotator_nope", t0),
            Err(Refusal::Unauthorized(_))
        ));
        let (cookie, session) = store.sign_in(&gate, ip, &token, t0).unwrap();
        let text = cookie.to_str().unwrap();
        for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(text.contains(part), "{text}");
        }
        assert!(!text.contains("Secure"), "{text}");
        let secure = SessionStore::new(true)
            .sign_in(&gate, ip, &token, t0)
            .unwrap()
            .0;
        assert!(secure.to_str().unwrap().ends_with("; Secure"));

        let headers = request_with(&cookie);
        let got = store
            .get(&gate, &headers, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(got.principal.role, Role::Viewer);
        assert!(SessionStore::csrf_ok(&got, &session.csrf));
        assert!(!SessionStore::csrf_ok(&got, "x"));
        assert!(!SessionStore::csrf_ok(
            &got,
            &session.csrf.replace(&session.csrf[..1], "#")
        ));
        assert!(store.get(&gate, &HeaderMap::new(), t0).is_none());
        // Idle time refreshes on use; an idle session ends.
        let later = t0 + IDLE_TIMEOUT - Duration::from_secs(1);
        assert!(store.get(&gate, &headers, later).is_some());
        assert!(store.get(&gate, &headers, later + IDLE_TIMEOUT).is_none());

        // Revoking the token ends its sessions.
        let (cookie, _) = store.sign_in(&gate, ip, &token, t0).unwrap();
        let headers = request_with(&cookie);
        assert!(store.get(&gate, &headers, t0).is_some());
        tokens::revoke(&path, "v").unwrap();
        assert!(store.get(&gate, &headers, t0).is_none());

        let (token, _) = tokens::create(&path, Role::Admin, Some("a")).unwrap();
        let (cookie, _) = store.sign_in(&gate, ip, &token, t0).unwrap();
        let headers = request_with(&cookie);
        let cleared = store.sign_out(&headers);
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
        assert!(store.get(&gate, &headers, t0).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sessions_are_bounded() {
        let dir = std::env::temp_dir().join(format!("rotator-sessions-{}", fastrand::u64(..)));
        let path = dir.join("tokens.toml");
        let (token, _) = tokens::create(&path, Role::Admin, Some("a")).unwrap();
        let gate = Gate::new(TokenStore::open(path));
        let store = SessionStore::new(false);
        let t0 = Instant::now();
        for i in 0..(MAX_SESSIONS + 10) {
            let now = t0 + Duration::from_millis(i as u64);
            store
                .sign_in(&gate, "127.0.0.1".parse().unwrap(), &token, now)
                .unwrap();
        }
        assert_eq!(store.len(t0 + Duration::from_secs(5)), MAX_SESSIONS);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
