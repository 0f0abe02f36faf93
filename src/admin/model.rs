//! The JSON shapes of the API: a campaign, its creatives and a placement exactly as the campaigns
//! file writes them (same names, same values: `countries = ["ru"]` stays `"ru"`), so what the API
//! returns can be sent back unchanged and what it accepts is checked by the file's own loader.
//!
//! Differences from the file, all forced by JSON: `creatives` is the file's `[[campaign.creative]]`
//! list; `start` and `end` are strings holding the TOML date or date-time (`"2026-12-01"`,
//! `"2026-12-01T00:00:00Z"`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

fn yes() -> bool {
    true
}

/// A campaign (one `[[campaign]]` of the campaigns file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignDoc {
    /// Unique id, 1 or more. On create, 0 or absent picks the next free id; on replace, absent
    /// means the id of the path.
    #[serde(default)]
    pub id: u32,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// Landing page.
    pub url: String,
    /// Bid: per 1,000 impressions (cpm) or per click (cpc).
    pub bid: f64,
    /// Whether it may serve (pause sets false).
    #[serde(default = "yes")]
    pub active: bool,
    /// Who it wants; empty lists mean anyone.
    #[serde(default)]
    pub targeting: TargetingDoc,
    /// Placement ids it may fill; empty means any.
    #[serde(default)]
    pub placements: Vec<String>,
    /// First moment it may serve: a TOML date or date-time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Last moment it may serve: a TOML date (the whole day) or date-time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// `cpm` (default) or `cpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<String>,
    /// Spend limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetDoc>,
    /// Views per visitor limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_cap: Option<FrequencyCapDoc>,
    /// What it shows in placements.
    #[serde(default, alias = "creative")]
    pub creatives: Vec<CreativeDoc>,
}

/// `[campaign.targeting]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetingDoc {
    /// ISO 3166-1 alpha-2 codes.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Browser families.
    #[serde(default)]
    pub browsers: Vec<String>,
    /// OS families.
    #[serde(default)]
    pub os: Vec<String>,
    /// desktop, mobile, tablet, tv, bot, other.
    #[serde(default)]
    pub devices: Vec<String>,
}

/// `[campaign.budget]`: at least one of `daily` and `total`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetDoc {
    /// Spend allowed per day (currency units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<f64>,
    /// Spend allowed over the campaign's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    /// `even` (default) or `asap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<String>,
    /// IANA time zone of the campaign's day (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `[campaign.frequency_cap]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCapDoc {
    /// Views allowed per window.
    pub impressions: i64,
    /// The window, e.g. `24h`.
    pub per: String,
}

/// A creative (one `[[campaign.creative]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreativeDoc {
    /// Unique over the file, 1 or more; on create, 0 or absent picks the next free id.
    #[serde(default)]
    pub id: u32,
    /// `image`, `html` or `text`.
    pub kind: String,
    /// `WIDTHxHEIGHT`, required for image and html.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Image address (kind image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Alternative text (kind image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<String>,
    /// Markup (kind html).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Text (kind text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Landing page (default: the campaign's url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_url: Option<String>,
    /// Rotation weight among the campaign's creatives (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A placement (one `[[placement]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementDoc {
    /// Slug: lower-case letters, digits, `-`, `_`.
    pub id: String,
    /// Sizes it takes, e.g. `728x90`; empty means any.
    #[serde(default)]
    pub sizes: Vec<String>,
    /// Kinds it takes; empty means any.
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// One validation problem, in the campaigns file loader's words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// The field, e.g. `bid`, `budget.daily`, `creatives[701].size` (the creative's id in
    /// brackets); empty when the problem is the file's (a syntax error).
    pub field: String,
    /// What is wrong, as `rotator check` says it.
    pub message: String,
    /// Line in the campaigns file, when the loader names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The loader's whole sentence (file line, campaign or placement, field, message).
    pub text: String,
}

/// `422`: every problem found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problems {
    /// The problems.
    pub problems: Vec<Problem>,
}

/// Any other error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDoc {
    /// What went wrong.
    pub error: String,
}

impl Problem {
    /// Splits a loader message (`line 7: campaign 3 (entry 1): creative 9: size: ...`,
    /// `line 2: placement "top": id: ...`) into line, field and message.
    pub fn from_loader(text: &str) -> Problem {
        let mut rest = text;
        let mut line = None;
        if let Some((head, tail)) = rest.split_once(": ")
            && let Some(n) = head.strip_prefix("line ").and_then(|n| n.parse().ok())
        {
            line = Some(n);
            rest = tail;
        }
        // The entry: `campaign 3 (entry 1)` or `placement "top"`.
        if let Some(tail) = rest.strip_prefix("campaign ")
            && let Some((_, tail)) = tail.split_once("): ")
        {
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix("placement \"")
            && let Some((_, tail)) = tail.split_once("\": ")
        {
            rest = tail;
        } else {
            return Problem {
                field: String::new(),
                message: rest.to_string(),
                line,
                text: text.to_string(),
            };
        }
        let mut prefix = String::new();
        if let Some(tail) = rest.strip_prefix("creative ")
            && let Some((id, tail)) = tail.split_once(": ")
            && id.parse::<u32>().is_ok()
        {
            prefix = format!("creatives[{id}].");
            rest = tail;
        }
        let (field, message) = rest.split_once(": ").unwrap_or(("", rest));
        Problem {
            field: format!("{prefix}{field}"),
            message: message.to_string(),
            line,
            text: text.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_messages_split_into_fields() {
        let p = Problem::from_loader(
            "line 4: campaign 7 (entry 1): bid: 0 must be a number more than 0",
        );
        assert_eq!((p.line, p.field.as_str()), (Some(4), "bid"));
        assert_eq!(p.message, "0 must be a number more than 0");
        let p = Problem::from_loader(
            "line 16: campaign 1 (entry 1): creative 5: size: required for image: x",
        );
        assert_eq!(
            (p.field.as_str(), p.message.as_str()),
            ("creatives[5].size", "required for image: x")
        );
        let p = Problem::from_loader("line 3: placement \"Top\": sizes: \"728\" is not a size");
        assert_eq!(p.field, "sizes");
        let p = Problem::from_loader("campaign 2 (entry 2): budget: needs daily, total or both");
        assert_eq!((p.line, p.field.as_str()), (None, "budget"));
        let p = Problem::from_loader("TOML parse error at line 1, column 5");
        assert_eq!((p.field.as_str(), p.line), ("", None));
    }
}
