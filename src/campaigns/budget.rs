//! What a campaign may spend and how often it may be shown: pricing, flight, budget, pacing and
//! frequency cap, as validated from the campaigns file. Enforcing them is `crate::delivery`'s job.

use jiff::tz::TimeZone;

/// Money in integer micro-units of the currency (1.0 = 1,000,000): spend never drifts.
pub type Micros = u64;

/// Converts a currency amount from the file to micro-units (rounded; the file checks it is
/// finite and not negative).
pub fn to_micros(amount: f64) -> Micros {
    (amount * 1_000_000.0).round() as Micros
}

/// What an event costs the advertiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pricing {
    /// The bid is per 1,000 impressions: each counted impression costs bid/1000.
    #[default]
    Cpm,
    /// The bid is per click: each counted click costs the bid.
    Cpc,
}

impl Pricing {
    /// The name in the campaigns file.
    pub fn as_str(self) -> &'static str {
        match self {
            Pricing::Cpm => "cpm",
            Pricing::Cpc => "cpc",
        }
    }
}

/// When the campaign may serve, in Unix seconds; `None` is open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flight {
    /// First second it may serve.
    pub start: Option<i64>,
    /// Last second it may serve (inclusive).
    pub end: Option<i64>,
}

impl Flight {
    /// Whether the campaign may serve at Unix second `now`.
    pub fn contains(&self, now: i64) -> bool {
        self.start.is_none_or(|s| now >= s) && self.end.is_none_or(|e| now <= e)
    }
}

/// How a daily budget is spread over the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// Along the expected traffic of the day, corrected from actual spend.
    #[default]
    Even,
    /// As fast as traffic allows.
    Asap,
}

impl Pacing {
    /// The name in the campaigns file.
    pub fn as_str(self) -> &'static str {
        match self {
            Pacing::Even => "even",
            Pacing::Asap => "asap",
        }
    }
}

/// A campaign's budget; at least one of `daily` and `total` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Spend allowed per day, micro-units.
    pub daily: Option<Micros>,
    /// Spend allowed over the campaign's life, micro-units.
    pub total: Option<Micros>,
    /// How the daily budget is spread.
    pub pacing: Pacing,
    /// Where the campaign's day starts.
    pub timezone: TimeZone,
    /// The IANA name `timezone` came from.
    pub timezone_name: String,
}

/// At most `impressions` views per visitor in any window of `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    /// Views allowed per window, ≥ 1.
    pub impressions: u32,
    /// The window, seconds, ≥ 1.
    pub per_secs: u32,
}

/// Everything about a campaign's delivery beyond targeting.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    /// What counts as a cost.
    pub pricing: Pricing,
    /// When it may serve.
    pub flight: Flight,
    /// Its budget, if any.
    pub budget: Option<Budget>,
    /// Its frequency cap, if any.
    pub frequency_cap: Option<FrequencyCap>,
}

impl Delivery {
    /// Whether nothing limits delivery (the request path skips such campaigns entirely).
    pub fn is_unlimited(&self) -> bool {
        self.flight == Flight::default() && self.budget.is_none() && self.frequency_cap.is_none()
    }
}
