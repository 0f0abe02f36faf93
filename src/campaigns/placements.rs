//! Placements: the ad slots of a publisher's pages, and which creatives fit each.

use super::creatives::{Creative, CreativeKind, Size};
use crate::visitor::symbol::Sym;

/// Longest placement id.
pub const MAX_ID_LEN: usize = 64;

/// One placement, validated.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Slug `[a-z0-9_-]{1,64}`, unique.
    pub id: String,
    /// `id` interned, for statistics keys.
    pub sym: Sym,
    /// Sizes that fit; empty means any size.
    pub sizes: Vec<Size>,
    /// Kinds that fit; empty means any kind.
    pub kinds: Vec<CreativeKind>,
}

impl Placement {
    /// Whether `creative` can be shown here: its kind is accepted, and its size when the
    /// placement names sizes (a text creative has no size and fits only a placement without any).
    pub fn fits(&self, creative: &Creative) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&creative.kind))
            && (self.sizes.is_empty() || creative.size.is_some_and(|s| self.sizes.contains(&s)))
    }
}

/// Why `id` is not a valid placement id, or `None`.
pub fn id_problem(id: &str) -> Option<String> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    (!valid).then(|| {
        format!("{id:?} is not a slug: 1 to {MAX_ID_LEN} characters of a-z, 0-9, \"-\" and \"_\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(id_problem("top-banner_2").is_none());
        for bad in ["", "Top", "a b", "é", &"a".repeat(65)] {
            assert!(id_problem(bad).is_some(), "{bad:?}");
        }
        assert!(id_problem(&"a".repeat(64)).is_none());
    }

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(
            Size::parse("728x90").unwrap(),
            Size {
                width: 728,
                height: 90
            }
        );
        for bad in [
            "728", "x90", "728X90", "0x90", "728x", "10001x1", "+7x9", "07x9", " 7x9",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad:?}");
        }
    }
}
