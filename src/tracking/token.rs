//! What a tracking token says, and its bytes.
//!
//! A token is URL-safe base64 (no padding) of:
//!
//! ```text
//! offset  size  field
//!  0       1    version (1)
//!  1       4    key id (first bytes of SHA-256 of the key; see keys.rs)
//!  5       1    kind: 0 impression, 1 viewable, 2 click
//!  6      12    decision id (random, from the OS)
//! 18       4    campaign id        (all integers big-endian)
//! 22       4    creative id
//! 26       4    issued, Unix seconds
//! 30       4    expires, Unix seconds
//! 34       2    country: two ASCII letters, or 0 0 when unknown
//! 36       1    device index (`Device::ALL`)
//! 37     1+n    placement: length byte, then UTF-8
//!  …     1+n    OS family
//!  …     1+n    browser family
//!  …      16    HMAC-SHA256 of every byte before it, under the key named by the key id,
//!               truncated to its first 16 bytes (128 bits)
//! ```
//!
//! Names travel as text, not as interned [`Sym`] numbers: symbol numbers depend on the order
//! names were interned in one process, and a token outlives the process that signed it.
//! Only the version and key id are read before the MAC is checked (they say which key checks
//! it); every other field is parsed only from bytes whose MAC matched (see `keys.rs`).

use crate::visitor::geoip::Country;
use crate::visitor::symbol::Sym;
use crate::visitor::user_agent::Device;

/// The token format written by this release.
pub const VERSION: u8 = 1;
/// Bytes of the key id.
pub const KEY_ID_LEN: usize = 4;
/// Bytes of the truncated MAC.
pub const MAC_LEN: usize = 16;
/// Bytes before the names.
const FIXED_LEN: usize = 37;
/// Where the kind byte sits (after the version and the key id).
pub(crate) const KIND_AT: usize = 1 + KEY_ID_LEN;
/// Where the expiry sits (after the kind, the id, the campaign, the creative and the issue time).
pub(crate) const EXPIRES_AT: usize = KIND_AT + 1 + 12 + 4 + 4 + 4;
/// The longest name a token carries; a longer one (none of uap-core's families, no placement
/// slug) is signed as `Other`.
const MAX_NAME: usize = 255;
/// The longest token in bytes: fixed fields, three length-prefixed names, MAC.
pub const MAX_TOKEN_BYTES: usize = FIXED_LEN + 3 * (1 + MAX_NAME) + MAC_LEN;
/// The longest token as text; longer input is refused before it is decoded.
pub const MAX_TOKEN_CHARS: usize = MAX_TOKEN_BYTES.div_ceil(3) * 4;
/// The shortest token in bytes: fixed fields, three empty names, MAC.
pub const MIN_TOKEN_BYTES: usize = FIXED_LEN + 3 + MAC_LEN;

/// What happened to an ad, as the tracking URLs report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The ad was rendered.
    Impression,
    /// At least half of the ad was on screen for a second (the MRC display standard).
    Viewable,
    /// The visitor clicked the ad.
    Click,
}

impl EventKind {
    /// Every kind, in index order.
    pub const ALL: [EventKind; 3] = [EventKind::Impression, EventKind::Viewable, EventKind::Click];

    /// The byte in the token (and in the seen-ids journal).
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The kind of byte `b`.
    pub fn from_index(b: u8) -> Option<EventKind> {
        EventKind::ALL.get(usize::from(b)).copied()
    }

    /// The name in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Viewable => "viewable",
            EventKind::Click => "click",
        }
    }
}

/// What a token says about one decision and one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The decision's random id (96 bits).
    pub id: [u8; 12],
    /// Which event the token reports.
    pub kind: EventKind,
    /// The winning campaign.
    pub campaign_id: u32,
    /// The creative shown.
    pub creative_id: u32,
    /// The placement (ad slot).
    pub placement: Sym,
    /// When the decision was made, Unix seconds.
    pub issued: u32,
    /// When the token stops being counted, Unix seconds.
    pub expires: u32,
    /// The visitor's country, if known.
    pub country: Option<Country>,
    /// OS family.
    pub os: Sym,
    /// Browser family.
    pub browser: Sym,
    /// Device type (`bot` for bots).
    pub device: Device,
}

/// Why a token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token: wrong length, not base64, unknown version, fields that do not parse.
    #[error("malformed token")]
    Malformed,
    /// Signed by no key this server knows (forged, or its key was retired).
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The MAC does not match: forged or altered.
    #[error("bad token signature")]
    BadSignature,
    /// Genuine, but for another kind of event (an impression token on the click URL).
    #[error("token for another kind of event")]
    WrongKind,
    /// Genuine but past its expiry; the claims are still good for a redirect.
    #[error("expired token")]
    Expired(Claims),
}

/// Appends the signed part of `claims` (everything but the MAC) to `out`.
pub(crate) fn write_fields(claims: &Claims, key_id: [u8; KEY_ID_LEN], out: &mut Vec<u8>) {
    out.push(VERSION);
    out.extend_from_slice(&key_id);
    out.push(claims.kind.index());
    out.extend_from_slice(&claims.id);
    for n in [
        claims.campaign_id,
        claims.creative_id,
        claims.issued,
        claims.expires,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&claims.country.map_or([0, 0], Country::letters));
    out.push(claims.device.index() as u8);
    for sym in [claims.placement, claims.os, claims.browser] {
        let name = sym.name();
        let name = if name.len() > MAX_NAME {
            Sym::OTHER.name()
        } else {
            name
        };
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
}

/// The version byte and key id of raw token bytes, before anything is trusted.
pub(crate) fn header(bytes: &[u8]) -> Result<[u8; KEY_ID_LEN], TokenError> {
    if bytes.len() < MIN_TOKEN_BYTES || bytes.len() > MAX_TOKEN_BYTES || bytes[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let mut id = [0; KEY_ID_LEN];
    id.copy_from_slice(&bytes[1..1 + KEY_ID_LEN]);
    Ok(id)
}

/// Parses the signed part of a token whose MAC has been checked.
pub(crate) fn parse_fields(signed: &[u8]) -> Result<Claims, TokenError> {
    let (fixed, mut names) = signed
        .split_at_checked(FIXED_LEN)
        .ok_or(TokenError::Malformed)?;
    let kind = EventKind::from_index(fixed[5]).ok_or(TokenError::Malformed)?;
    let mut id = [0; 12];
    id.copy_from_slice(&fixed[6..18]);
    let word =
        |at: usize| u32::from_be_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]);
    let country = match [fixed[34], fixed[35]] {
        [0, 0] => None,
        letters => Some(
            std::str::from_utf8(&letters)
                .ok()
                .and_then(Country::parse)
                .ok_or(TokenError::Malformed)?,
        ),
    };
    let device = *Device::ALL
        .get(usize::from(fixed[36]))
        .ok_or(TokenError::Malformed)?;
    let mut syms = [Sym::EMPTY; 3];
    for sym in &mut syms {
        let (&len, rest) = names.split_first().ok_or(TokenError::Malformed)?;
        let (name, rest) = rest
            .split_at_checked(usize::from(len))
            .ok_or(TokenError::Malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| TokenError::Malformed)?;
        // Signed by this server, so the name is one it interned itself: bounded, trusted text.
        *sym = Sym::intern(name);
        names = rest;
    }
    if !names.is_empty() {
        return Err(TokenError::Malformed);
    }
    let [placement, os, browser] = syms;
    Ok(Claims {
        id,
        kind,
        campaign_id: word(18),
        creative_id: word(22),
        placement,
        issued: word(26),
        expires: word(30),
        country,
        os,
        browser,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_add_up() {
        assert_eq!(MIN_TOKEN_BYTES, 56);
        assert_eq!(MAX_TOKEN_BYTES, 821);
        assert_eq!(MAX_TOKEN_CHARS, 1096);
        assert_eq!(EventKind::from_index(3), None);
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_index(kind.index()), Some(kind));
        }
    }
}
