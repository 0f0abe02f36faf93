//! What a campaign may spend and how often it may be shown: pricing, flight, budget, pacing and
//! frequency cap, as validated from the campaigns file. Enforcing them is `crate::delivery`'s job.

use jiff::tz::TimeZone;
use toml::Spanned;
use toml::value::Datetime;

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

/// `[campaign.budget]` as written in the file.
#[derive(serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [campaign.budget] table with daily, total, pacing, timezone"
)]
pub(super) struct RawBudget {
    daily: Option<Spanned<f64>>,
    total: Option<Spanned<f64>>,
    pacing: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
}

/// `[campaign.frequency_cap]` as written in the file.
#[derive(serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [campaign.frequency_cap] table with impressions and per"
)]
pub(super) struct RawFrequencyCap {
    impressions: Spanned<i64>,
    per: Spanned<String>,
}

/// A campaign's delivery fields as written in the file.
pub(super) struct RawDelivery {
    pub start: Option<Spanned<Datetime>>,
    pub end: Option<Spanned<Datetime>>,
    pub pricing: Option<Spanned<String>>,
    pub budget: Option<Spanned<RawBudget>>,
    pub frequency_cap: Option<Spanned<RawFrequencyCap>>,
}

/// The longest frequency-cap window: a year.
const MAX_CAP_WINDOW_SECS: u64 = 366 * 86_400;

/// A problem: (offset in the entry, field, message), as the campaigns file reports them.
type Problem = (usize, &'static str, String);

/// Validates a campaign's delivery fields; every problem is returned, not only the first.
pub(super) fn check(raw: RawDelivery) -> Result<Delivery, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    let pricing = match raw
        .pricing
        .as_ref()
        .map(|p| (p.span().start, p.get_ref().as_str()))
    {
        None | Some((_, "cpm")) => Pricing::Cpm,
        Some((_, "cpc")) => Pricing::Cpc,
        Some((offset, other)) => {
            problems.push((
                offset,
                "pricing",
                format!("{other:?} is not one of cpm, cpc"),
            ));
            Pricing::Cpm
        }
    };
    let budget = raw.budget.map(|b| {
        let offset = b.span().start;
        check_budget(b.into_inner(), offset, &mut problems)
    });
    // Dates without an offset are read in the budget's time zone (UTC without a budget).
    let zone = budget
        .as_ref()
        .and_then(|b| b.as_ref())
        .map_or(TimeZone::UTC, |b| b.timezone.clone());
    let mut instant = |field: &'static str, value: Option<Spanned<Datetime>>, end: bool| {
        let value = value?;
        match to_unix(value.get_ref(), &zone, end) {
            Ok(t) => Some(t),
            Err(message) => {
                problems.push((value.span().start, field, message));
                None
            }
        }
    };
    let start_offset = raw.start.as_ref().map_or(0, |s| s.span().start);
    let flight = Flight {
        start: instant("start", raw.start, false),
        end: instant("end", raw.end, true),
    };
    if let (Some(s), Some(e)) = (flight.start, flight.end)
        && e < s
    {
        problems.push((start_offset, "end", "is before start".into()));
    }
    let frequency_cap = raw.frequency_cap.and_then(|cap| {
        let cap = cap.into_inner();
        let impressions = *cap.impressions.get_ref();
        let limit = u32::try_from(impressions).ok().filter(|n| *n >= 1);
        if limit.is_none() {
            problems.push((
                cap.impressions.span().start,
                "frequency_cap.impressions",
                format!(
                    "{impressions} must be a whole number from 1 to {}",
                    u32::MAX
                ),
            ));
        }
        let per = match humantime::parse_duration(cap.per.get_ref()) {
            Ok(d) if d.as_secs() >= 1 && d.as_secs() <= MAX_CAP_WINDOW_SECS => {
                Some(d.as_secs() as u32)
            }
            Ok(_) => {
                problems.push((
                    cap.per.span().start,
                    "frequency_cap.per",
                    format!("{:?} must be from 1s to 366days", cap.per.get_ref()),
                ));
                None
            }
            Err(e) => {
                problems.push((
                    cap.per.span().start,
                    "frequency_cap.per",
                    format!(
                        "{:?} is not a duration such as \"24h\" or \"7days\": {e}",
                        cap.per.get_ref()
                    ),
                ));
                None
            }
        };
        Some(FrequencyCap {
            impressions: limit?,
            per_secs: per?,
        })
    });
    match (problems.is_empty(), budget) {
        (true, Some(Some(budget))) => Ok(Delivery {
            pricing,
            flight,
            budget: Some(budget),
            frequency_cap,
        }),
        (true, None) => Ok(Delivery {
            pricing,
            flight,
            budget: None,
            frequency_cap,
        }),
        _ => Err(problems),
    }
}

fn check_budget(raw: RawBudget, offset: usize, problems: &mut Vec<Problem>) -> Option<Budget> {
    let before = problems.len();
    let mut amount = |field: &'static str, value: Option<Spanned<f64>>| {
        let value = value?;
        let v = *value.get_ref();
        // 10^12 currency units keeps micro-units far inside u64 (1.8 * 10^13 units).
        if v.is_finite() && v > 0.0 && v <= 1e12 {
            Some(to_micros(v))
        } else {
            problems.push((
                value.span().start,
                field,
                format!("{v} must be a number more than 0 (at most 10^12)"),
            ));
            None
        }
    };
    let daily = amount("budget.daily", raw.daily);
    let total = amount("budget.total", raw.total);
    if daily.is_none() && total.is_none() && problems.len() == before {
        problems.push((offset, "budget", "needs daily, total or both".into()));
    }
    let pacing = match raw
        .pacing
        .as_ref()
        .map(|p| (p.span().start, p.get_ref().as_str()))
    {
        None | Some((_, "even")) => Pacing::Even,
        Some((_, "asap")) => Pacing::Asap,
        Some((offset, other)) => {
            problems.push((
                offset,
                "budget.pacing",
                format!("{other:?} is not one of even, asap"),
            ));
            Pacing::Even
        }
    };
    let timezone_name = raw
        .timezone
        .as_ref()
        .map_or("UTC", |t| t.get_ref().as_str())
        .to_string();
    let timezone = match TimeZone::get(&timezone_name) {
        Ok(tz) => Some(tz),
        Err(_) => {
            problems.push((
                raw.timezone.as_ref().map_or(offset, |t| t.span().start),
                "budget.timezone",
                format!("{timezone_name:?} is not an IANA time zone such as \"UTC\" or \"Europe/Berlin\""),
            ));
            None
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(Budget {
        daily,
        total,
        pacing,
        timezone: timezone?,
        timezone_name,
    })
}

/// A TOML date-time as Unix seconds: with an offset as written; without one in `zone`; a bare
/// date is the day's first second, or its last when `end`.
fn to_unix(value: &Datetime, zone: &TimeZone, end: bool) -> Result<i64, String> {
    let text = value.to_string();
    let bad = |e: jiff::Error| format!("{text} is not a date-time: {e}");
    if value.offset.is_some() {
        let t: jiff::Timestamp = text.parse().map_err(bad)?;
        return Ok(t.as_second());
    }
    let civil: jiff::civil::DateTime = match (value.date, value.time) {
        (Some(_), Some(_)) => text.parse().map_err(bad)?,
        (Some(_), None) => {
            let date: jiff::civil::Date = text.parse().map_err(bad)?;
            if end {
                date.to_datetime(jiff::civil::Time::MAX)
            } else {
                date.to_datetime(jiff::civil::Time::MIN)
            }
        }
        _ => return Err(format!("{text} has no date")),
    };
    Ok(zone.to_timestamp(civil).map_err(bad)?.as_second())
}
