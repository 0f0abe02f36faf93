//! The expected shape of a day's traffic: which share of a day's requests falls in each UTC
//! minute of the day. Even pacing spends a daily budget along this curve.
//!
//! The curve is learned from the statistics sink's requests per minute of the previous days
//! (`Sink::traffic_curve`): summed by UTC minute-of-day, smoothed (a minute's count is noisy, the
//! time of day is not) and mixed with a little of the flat curve, so that no minute is ever
//! expected to be completely dead. With no or too little history the curve is flat: every minute
//! gets the same share, 1/1440.
//!
//! Minutes are UTC minutes of the day, not the campaign's local ones: a budget's day (which starts
//! at midnight in its timezone and may last 23 or 25 hours) is just a span of Unix seconds, and
//! [`TrafficCurve::share`] answers for any span.

/// Minutes in a day: the curve's resolution.
pub const MINUTES: usize = 1440;

/// Seconds in a (UTC) day.
const DAY_SECS: i64 = 86_400;

/// Less history than this many requests in total gives the flat curve: an average of 10 requests a
/// minute, about 300 per smoothing window, or ±6 % noise on a smoothed minute.
pub const MIN_REQUESTS: u64 = 10 * MINUTES as u64;

/// Half-width of the moving average that smooths the per-minute counts (applied twice, which
/// makes a triangular window of about ±30 minutes): wide enough to wash out minute-to-minute
/// noise, narrow enough to keep a lunch-time dip.
pub const SMOOTH_MINUTES: usize = 15;

/// Share of the flat curve mixed into a learned one: a minute that was dead in the history still
/// expects a little traffic, so the plan never divides by an empty rest of day.
pub const FLAT_MIX: f64 = 0.05;

/// Share of a day's requests per UTC minute-of-day; the shares are positive and sum to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficCurve {
    /// `weights[m]`: share of the day's requests in minute `m` (00:00 UTC = 0).
    weights: Box<[f64]>,
    /// `cumulative[m]`: sum of `weights[..m]`; `cumulative[MINUTES]` = 1.
    cumulative: Box<[f64]>,
}

impl TrafficCurve {
    /// The curve of a site with the same traffic all day (what pacing uses with no history).
    pub fn flat() -> TrafficCurve {
        TrafficCurve::from_weights(vec![1.0; MINUTES])
    }

    /// Learns the curve from 1440 per-minute request sums indexed by UTC minute-of-day (as
    /// `Sink::traffic_curve` returns them): smoothed and mixed with [`FLAT_MIX`] of the flat curve.
    /// Flat when the slice is not 1440 long or holds fewer than [`MIN_REQUESTS`] requests.
    pub fn from_requests(per_minute: &[u64]) -> TrafficCurve {
        let total: u64 = per_minute.iter().sum();
        if per_minute.len() != MINUTES || total < MIN_REQUESTS {
            return TrafficCurve::flat();
        }
        let counts: Vec<f64> = per_minute.iter().map(|&n| n as f64).collect();
        let smoothed = moving_average(&moving_average(&counts, SMOOTH_MINUTES), SMOOTH_MINUTES);
        let sum: f64 = smoothed.iter().sum();
        let flat = 1.0 / MINUTES as f64;
        TrafficCurve::from_weights(
            smoothed
                .iter()
                .map(|w| (1.0 - FLAT_MIX) * w / sum + FLAT_MIX * flat)
                .collect(),
        )
    }

    /// Expected fraction of one day's traffic between Unix seconds `from` and `to` (0 when
    /// `to <= from`; a whole day is 1, a span of two days 2). Exact for any span; the pacer asks
    /// for at most a day.
    pub fn share(&self, from: i64, to: i64) -> f64 {
        if to <= from {
            return 0.0;
        }
        let base_day = from.div_euclid(DAY_SECS);
        (self.position(to, base_day) - self.position(from, base_day)).max(0.0)
    }

    /// Share of a day's traffic in UTC minute-of-day `minute` (0..1440).
    pub fn minute_share(&self, minute: usize) -> f64 {
        self.weights.get(minute).copied().unwrap_or(0.0)
    }

    /// Builds the curve from positive weights of any scale (normalised here).
    fn from_weights(weights: Vec<f64>) -> TrafficCurve {
        let sum: f64 = weights.iter().sum();
        let weights: Box<[f64]> = weights.iter().map(|w| w / sum).collect();
        let mut cumulative = Vec::with_capacity(MINUTES + 1);
        let mut acc = 0.0;
        cumulative.push(acc);
        for w in weights.iter() {
            acc += w;
            cumulative.push(acc);
        }
        // Exactly 1 at the end of the day, so consecutive days join without a seam.
        cumulative[MINUTES] = 1.0;
        TrafficCurve {
            weights,
            cumulative: cumulative.into(),
        }
    }

    /// Share of traffic from the start of UTC day `base_day` to Unix second `t` (the traffic
    /// within a minute is spread evenly over its seconds).
    fn position(&self, t: i64, base_day: i64) -> f64 {
        let day = t.div_euclid(DAY_SECS) - base_day;
        let second = t.rem_euclid(DAY_SECS);
        let minute = (second / 60) as usize;
        let within = (second % 60) as f64 / 60.0;
        day as f64 + self.cumulative[minute] + within * self.weights[minute]
    }
}

/// Circular moving average over `±half` places (the day wraps around midnight).
fn moving_average(values: &[f64], half: usize) -> Vec<f64> {
    let n = values.len();
    let width = (2 * half + 1) as f64;
    let mut sum: f64 = (0..=2 * half).map(|i| values[(n - half + i) % n]).sum();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(sum / width);
        sum += values[(i + half + 1) % n] - values[(n + i - half) % n];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIDNIGHT: i64 = 1_796_083_200; // 2026-12-01T00:00:00Z

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn flat_curve_shares_time_evenly() {
        let flat = TrafficCurve::flat();
        assert!(close(flat.share(MIDNIGHT, MIDNIGHT + DAY_SECS), 1.0));
        assert!(close(
            flat.share(MIDNIGHT + 3600, MIDNIGHT + 7200),
            1.0 / 24.0
        ));
        assert!(close(
            flat.share(MIDNIGHT + 5, MIDNIGHT + 6),
            1.0 / 86_400.0
        ));
        // Across midnight, not aligned to a day, two days, and an empty or reversed span.
        assert!(close(
            flat.share(MIDNIGHT - 1800, MIDNIGHT + 1800),
            1.0 / 24.0
        ));
        assert!(close(
            flat.share(MIDNIGHT + 300, MIDNIGHT + 300 + DAY_SECS),
            1.0
        ));
        assert!(close(flat.share(MIDNIGHT, MIDNIGHT + 2 * DAY_SECS), 2.0));
        assert_eq!(flat.share(MIDNIGHT + 10, MIDNIGHT + 10), 0.0);
        assert_eq!(flat.share(MIDNIGHT + 10, MIDNIGHT), 0.0);
    }

    #[test]
    fn no_or_too_little_history_gives_the_flat_curve() {
        assert_eq!(TrafficCurve::from_requests(&[]), TrafficCurve::flat());
        assert_eq!(
            TrafficCurve::from_requests(&[0; MINUTES]),
            TrafficCurve::flat()
        );
        assert_eq!(
            TrafficCurve::from_requests(&[9; MINUTES]),
            TrafficCurve::flat()
        );
        assert_eq!(
            TrafficCurve::from_requests(&[1000; 60]),
            TrafficCurve::flat()
        );
    }

    #[test]
    fn learned_curve_follows_the_history_smoothly() {
        // Quiet nights (10 a minute), busy evenings from 18:00 to 22:00 UTC (100 a minute),
        // and one odd minute at 03:00 with 5,000.
        let mut history: Vec<u64> = (0..MINUTES)
            .map(|m| {
                if (18 * 60..22 * 60).contains(&m) {
                    100
                } else {
                    10
                }
            })
            .collect();
        history[180] = 5000;
        let curve = TrafficCurve::from_requests(&history);
        let total: f64 = (0..MINUTES).map(|m| curve.minute_share(m)).sum();
        assert!(close(total, 1.0));
        assert!(close(curve.share(MIDNIGHT, MIDNIGHT + DAY_SECS), 1.0));
        let evening = curve.share(MIDNIGHT + 19 * 3600, MIDNIGHT + 21 * 3600);
        let morning = curve.share(MIDNIGHT + 7 * 3600, MIDNIGHT + 9 * 3600);
        assert!(
            evening > 5.0 * morning,
            "evening {evening}, morning {morning}"
        );
        // The lone minute is spread over its neighbours: far below its raw share.
        let raw = 5000.0 / history.iter().sum::<u64>() as f64;
        assert!(curve.minute_share(180) < raw / 10.0);
        assert!(curve.minute_share(180) > curve.minute_share(7 * 60));
        // Every minute keeps at least the flat mix.
        let floor = FLAT_MIX / MINUTES as f64;
        assert!((0..MINUTES).all(|m| curve.minute_share(m) >= floor));
        // The same curve on the next day.
        assert!(close(
            curve.share(
                MIDNIGHT + DAY_SECS + 19 * 3600,
                MIDNIGHT + DAY_SECS + 21 * 3600
            ),
            evening
        ));
    }

    #[test]
    fn moving_average_wraps_around_midnight() {
        let mut values = vec![0.0; 10];
        values[0] = 3.0;
        let out = moving_average(&values, 1);
        assert_eq!(out[9], 1.0);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1], 1.0);
        assert_eq!(out[5], 0.0);
    }
}
