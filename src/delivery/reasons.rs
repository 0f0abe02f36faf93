//! Why a campaign is left out, in `rotator explain`'s words: "flight: starts …",
//! "budget: daily 200.00 of 200.00 spent", "pacing: held back (…)", "frequency cap: 3 of 3 in 1d".

use super::Delivery;
use super::gate::Status;
use crate::campaigns::{Campaign, Micros};

/// Money for messages: `200.00`.
pub fn money(micros: Micros) -> String {
    format!("{}.{:02}", micros / 1_000_000, micros % 1_000_000 / 10_000)
}

/// A window for messages: `24h`, `7d`, `90s`.
fn window(secs: u32) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Delivery {
    /// Why `campaign` (at `position` of the current gate's catalogue) is left out for everyone
    /// at `now`, in `rotator explain`'s words; `views` = the visitor's views counting now
    /// against its cap, when known.
    pub fn reason(&self, campaign: &Campaign, now: i64, views: Option<u32>) -> Option<String> {
        let d = &campaign.delivery();
        let date = |t: i64| {
            jiff::Timestamp::from_second(t)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default()
        };
        if let Some(start) = d.flight.start.filter(|s| now < *s) {
            return Some(format!("flight: starts {}", date(start)));
        }
        if let Some(end) = d.flight.end.filter(|e| now > *e) {
            return Some(format!("flight: ended {}", date(end)));
        }
        let runtime = self
            .runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&campaign.id)
            .cloned();
        if let (Some(budget), Some(r)) = (&d.budget, runtime) {
            let book = r.book.lock().unwrap_or_else(|e| e.into_inner());
            match r.status() {
                Status::TotalSpent => {
                    return Some(format!(
                        "budget: total {} of {} spent",
                        money(book.spent_total),
                        money(budget.total.unwrap_or(0))
                    ));
                }
                Status::DailySpent => {
                    return Some(format!(
                        "budget: daily {} of {} spent",
                        money(book.spent_day),
                        money(budget.daily.unwrap_or(0))
                    ));
                }
                _ => {}
            }
            let p = r.admit_probability();
            if p < 1.0 {
                return Some(format!(
                    "pacing: held back (takes part in {:.0} % of auctions; {} of {} target spent)",
                    p * 100.0,
                    money(book.spent_day),
                    money(book.target)
                ));
            }
        }
        if let (Some(cap), Some(views)) = (d.frequency_cap, views)
            && views >= cap.impressions
        {
            return Some(format!(
                "frequency cap: {views} of {} in {}",
                cap.impressions,
                window(cap.per_secs)
            ));
        }
        None
    }
}
