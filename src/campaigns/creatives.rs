//! Creatives: what a campaign shows in a placement (an image, an HTML snippet or a text link),
//! and the sizes and kinds that placements accept.

use std::fmt;

use hyper::header::HeaderValue;
use serde::Serialize;

/// What a creative is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CreativeKind {
    /// A banner image with a link.
    Image,
    /// An HTML snippet, rendered in a sandboxed frame.
    Html,
    /// A text link.
    Text,
}

impl CreativeKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [CreativeKind; 3] =
        [CreativeKind::Image, CreativeKind::Html, CreativeKind::Text];

    /// The name used in the campaigns file and the decisions API.
    pub fn as_str(self) -> &'static str {
        match self {
            CreativeKind::Image => "image",
            CreativeKind::Html => "html",
            CreativeKind::Text => "text",
        }
    }

    /// Parses a kind's name (exact, lower case).
    pub fn parse(name: &str) -> Option<CreativeKind> {
        CreativeKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Width × height in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size {
    /// Width, 1..=10000.
    pub width: u32,
    /// Height, 1..=10000.
    pub height: u32,
}

impl Size {
    /// Largest width or height accepted.
    pub const MAX: u32 = 10_000;

    /// Parses `"728x90"`.
    pub fn parse(text: &str) -> Result<Size, String> {
        let invalid = || format!("{text:?} is not a size like \"728x90\"");
        let (w, h) = text.split_once('x').ok_or_else(invalid)?;
        let number = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=Size::MAX).contains(n) && !s.starts_with(['+', '0']))
        };
        match (number(w), number(h)) {
            (Some(width), Some(height)) => Ok(Size { width, height }),
            _ => Err(format!(
                "{text:?} is not a size like \"728x90\" (width and height 1 to {})",
                Size::MAX
            )),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// One creative, validated.
#[derive(Debug, Clone)]
pub struct Creative {
    /// Unique across the campaigns file; 0 is reserved for "no creative" in statistics.
    pub id: u32,
    /// Image, HTML or text.
    pub kind: CreativeKind,
    /// Required for image and HTML creatives.
    pub size: Option<Size>,
    /// The banner's address (image creatives).
    pub image_url: Option<String>,
    /// The image's alternative text.
    pub alt: Option<String>,
    /// The snippet (HTML creatives), with `{{click_url}}` and `{{cachebuster}}` macros.
    pub html: Option<String>,
    /// The link text (text creatives).
    pub text: Option<String>,
    /// Where a click goes: the creative's own `click_url` or the campaign's `url`.
    pub click_url: String,
    /// `click_url` ready for the `Location` header.
    pub click_location: HeaderValue,
    /// Relative share among the campaign's creatives that fit a placement, ≥ 1.
    pub weight: u32,
}
