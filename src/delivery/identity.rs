//! Who the visitor is, for frequency caps: the publisher's `user.key`, else the first-party
//! cookie rotator sets, else the configured fallback (`[identity]`).
//!
//! Identities leave this module only as keyed 64-bit hashes ([`Keys`]): no user key, cookie or
//! IP address is stored, in memory or in Redis. The hash is SipHash-2-4, a keyed function made
//! for short inputs (a few hundred instructions, against thousands for an HMAC); its 128-bit key
//! is derived from the tracking key with HMAC-SHA256 (so every node sharing it agrees), and the
//! fallback's key is derived again every UTC day, so its hashes cannot be linked from one day to
//! the next.

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use sha2::Sha256;
use siphasher::sip::SipHasher24;
use smallvec::{SmallVec, smallvec};

use crate::config::{IdentityConfig, IdentityFallback};
use crate::delivery::state::MAX_KEYS;
use crate::tracking::Signer;

/// Global Privacy Control (a static name: no parsing of the name per request).
static SEC_GPC: HeaderName = HeaderName::from_static("sec-gpc");

/// The identity hashes a visitor's views are counted under (a view must fit under each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys(pub SmallVec<[u64; MAX_KEYS]>);

impl Keys {
    /// No identity at all: the fallback said so.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one request tells about its visitor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    /// `user.key` of the decisions API.
    pub user_key: Option<&'a str>,
    /// The request's headers (cookie, `Sec-GPC`); `None` when rotator did not see the
    /// visitor's own request (a server-side decisions call).
    pub headers: Option<&'a HeaderMap>,
    /// The visitor's address (for the daily hash only).
    pub ip: Option<IpAddr>,
    /// The visitor's User-Agent (for the daily hash only).
    pub ua: Option<&'a str>,
}

/// A request's identity: the keys, and the cookie to set when the visitor has none yet.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Keys to count views under.
    pub keys: Keys,
    /// `Set-Cookie` for the response, when a new id was made.
    pub set_cookie: Option<HeaderValue>,
}

/// A request's identity, worked out only if a capped campaign is considered for the visitor
/// (hashing costs, and no cookie is set for nothing).
pub struct LazyIdentity<'a> {
    cell: OnceLock<Identity>,
    make: &'a (dyn Fn() -> Identity + Sync),
}

impl<'a> LazyIdentity<'a> {
    /// An identity `make` works out on first use.
    pub fn new(make: &'a (dyn Fn() -> Identity + Sync)) -> LazyIdentity<'a> {
        LazyIdentity {
            cell: OnceLock::new(),
            make,
        }
    }

    /// The keys, worked out now if needed.
    pub fn keys(&self) -> &Keys {
        &self.cell.get_or_init(|| (self.make)()).keys
    }

    /// The identity, if it was needed.
    pub fn into_inner(self) -> Option<Identity> {
        self.cell.into_inner()
    }
}

/// A SipHash key.
type SipKey = [u8; 16];

/// Turns requests into identity keys.
pub struct Identifier {
    config: IdentityConfig,
    /// Derives the other keys.
    mac: Hmac<Sha256>,
    /// Hashes user keys and cookies.
    key: SipKey,
    /// The fallback's key of the current UTC day: (day, key).
    daily: Mutex<(i64, SipKey)>,
}

/// The first 16 bytes of HMAC(`mac`'s key, `label`).
fn derive(mac: &Hmac<Sha256>, label: &[u8]) -> SipKey {
    let mut m = mac.clone();
    m.update(label);
    let digest = m.finalize().into_bytes();
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl Identifier {
    /// An identifier for `config` keyed from the tracking `signer`.
    pub fn new(config: &IdentityConfig, signer: &Signer) -> Identifier {
        let secret = signer.derive(b"rotator identity v1");
        let mac = keyed(&secret);
        Identifier {
            config: config.clone(),
            key: derive(&mac, b"keys"),
            daily: Mutex::new((i64::MIN, [0; 16])),
            mac,
        }
    }

    /// The identity of a request at Unix second `now`.
    pub fn identify(&self, who: &Who<'_>, now: i64) -> Identity {
        if let Some(key) = who.user_key {
            return Identity {
                keys: Keys(smallvec![hash(&self.key, b"u", key.as_bytes())]),
                set_cookie: None,
            };
        }
        let gpc = who
            .headers
            .and_then(|h| h.get(&SEC_GPC))
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
        let cookie_on = !self.config.cookie.is_empty() && !gpc && who.headers.is_some();
        if cookie_on && let Some(id) = who.headers.and_then(|h| self.cookie(h)) {
            return Identity {
                keys: Keys(smallvec![hash(&self.key, b"c", id.as_bytes())]),
                set_cookie: None,
            };
        }
        let mut keys = SmallVec::new();
        let mut set_cookie = None;
        if cookie_on {
            // A first visit: the new id counts this view, so a browser keeping cookies never
            // sees more than the cap; the fallback below catches browsers that refuse them.
            let id = new_cookie_id();
            keys.push(hash(&self.key, b"c", &id));
            set_cookie = self.set_cookie(&id);
        }
        match self.config.fallback {
            IdentityFallback::DailyHash => {
                if let (Some(ip), ua) = (who.ip, who.ua.unwrap_or("")) {
                    keys.push(self.daily_hash(ip, ua, now));
                }
            }
            // Uncapped: no key (the caller serves capped campaigns without a cap); Exclude: no
            // key and the caller leaves capped campaigns out. The new cookie alone would hold
            // only for browsers that keep it, so it is not used to cap this first view.
            IdentityFallback::Uncapped | IdentityFallback::Exclude => keys.clear(),
        }
        Identity {
            keys: Keys(keys),
            set_cookie,
        }
    }

    /// `Set-Cookie` for a new `id` (built by hand: this runs for every first visit).
    fn set_cookie(&self, id: &[u8; COOKIE_ID_LEN]) -> Option<HeaderValue> {
        const ATTRIBUTES: &[u8] = b"; Max-Age=31536000; Path=/; HttpOnly; Secure; SameSite=None";
        let name = self.config.cookie.as_bytes();
        let mut value = Vec::with_capacity(name.len() + 1 + id.len() + ATTRIBUTES.len());
        value.extend_from_slice(name);
        value.push(b'=');
        value.extend_from_slice(id);
        value.extend_from_slice(ATTRIBUTES);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
    }

    /// The configured fallback.
    pub fn fallback(&self) -> IdentityFallback {
        self.config.fallback
    }

    /// The value of our cookie in `headers`, if it looks like one we set.
    fn cookie<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        crate::http::cookie(headers, &self.config.cookie)
            .filter(|v| v.len() == COOKIE_ID_LEN && v.bytes().all(is_base64url))
    }

    fn daily_hash(&self, ip: IpAddr, ua: &str, now: i64) -> u64 {
        let day = now.div_euclid(86_400);
        let key = {
            let mut daily = self.daily.lock().unwrap_or_else(|e| e.into_inner());
            if daily.0 != day {
                let mut label = b"daily".to_vec();
                label.extend_from_slice(&day.to_le_bytes());
                *daily = (day, derive(&self.mac, &label));
            }
            daily.1
        };
        let address = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut h = SipHasher24::new_with_key(&key);
        h.write(b"d");
        h.write(&address);
        h.write(ua.as_bytes());
        h.finish()
    }
}

/// SipHash-2-4 of `domain` and `value` under `key`.
fn hash(key: &SipKey, domain: &[u8], value: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_key(key);
    h.write(domain);
    h.write(value);
    h.finish()
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

/// Characters of a cookie id: 16 random bytes in URL-safe base64.
const COOKIE_ID_LEN: usize = 22;

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A new cookie id: 16 random bytes (128 bits) in URL-safe base64.
fn new_cookie_id() -> [u8; COOKIE_ID_LEN] {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    bytes[..12].copy_from_slice(&crate::tracking::new_id());
    bytes[12..].copy_from_slice(&crate::tracking::new_id()[..4]);
    let mut id = [0u8; COOKIE_ID_LEN];
    let written = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(bytes, &mut id)
        .unwrap_or(0);
    debug_assert_eq!(written, COOKIE_ID_LEN);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identifier(fallback: IdentityFallback) -> Identifier {
        let signer = Signer::from_keys(&[7; 32], &[]).unwrap();
        let config = IdentityConfig {
            cookie: "rid".into(),
            fallback,
        };
        Identifier::new(&config, &signer)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn user_key_cookie_and_fallbacks() {
        let id = identifier(IdentityFallback::DailyHash);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let day = 1_796_083_200;
        let none = headers(&[]);
        let first = id.identify(
            &Who {
                headers: Some(&none),
                ip: Some(ip),
                ua: Some("UA"),
                ..Who::default()
            },
            day,
        );
        // A first visit: a new cookie plus the daily hash.
        assert_eq!(first.keys.0.len(), 2);
        let cookie = first.set_cookie.unwrap();
        let cookie = cookie.to_str().unwrap();
        assert!(
            cookie.starts_with("rid=") && cookie.ends_with("; HttpOnly; Secure; SameSite=None")
        );
        let value = &cookie[4..4 + COOKIE_ID_LEN];
        let back = headers(&[("cookie", &format!("a=b; rid={value}"))]);
        let again = id.identify(
            &Who {
                headers: Some(&back),
                ip: Some(ip),
                ua: Some("UA"),
                ..Who::default()
            },
            day + 10,
        );
        assert_eq!(again.keys.0[..], [first.keys.0[0]], "the cookie's key");
        assert!(again.set_cookie.is_none());
        // Sec-GPC: no cookie set or read; the daily hash, the same all day, another the next day.
        let gpc = headers(&[("sec-gpc", "1"), ("cookie", &format!("rid={value}"))]);
        let seen = Who {
            headers: Some(&gpc),
            ip: Some(ip),
            ua: Some("UA"),
            ..Who::default()
        };
        let a = id.identify(&seen, day);
        assert!(a.set_cookie.is_none());
        assert_eq!(a.keys.0[..], [first.keys.0[1]]);
        assert_eq!(id.identify(&seen, day + 86_399).keys, a.keys);
        assert_ne!(id.identify(&seen, day + 86_400).keys, a.keys);
        // A user key wins over everything and is stable.
        let user = Who {
            user_key: Some("u-1"),
            ..seen
        };
        assert_eq!(
            id.identify(&user, day).keys,
            id.identify(&user, day + 1e6 as i64).keys
        );
        // A forged cookie value is not taken.
        let forged = headers(&[("cookie", "rid=../../etc")]);
        assert!(
            id.identify(
                &Who {
                    headers: Some(&forged),
                    ..Who::default()
                },
                day
            )
            .set_cookie
            .is_some()
        );
        // Without a fallback, GPC visitors have no identity.
        let off = identifier(IdentityFallback::Exclude);
        assert!(off.identify(&seen, day).keys.is_empty());
    }
}
