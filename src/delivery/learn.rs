//! Learning the day's traffic curve for even pacing from the statistics sink: requests per
//! minute of day over the last [`DAYS`] full UTC days, re-read every [`EVERY`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Delivery;
use super::curve::TrafficCurve;
use crate::stats::sinks::Sink;

/// Full days of history read.
pub const DAYS: u32 = 7;

/// How often the curve is re-read.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Reads the curve now and every [`EVERY`] until `stop`; a sink that does not answer keeps the
/// previous curve (flat at first).
pub async fn learn(sink: Sink, delivery: Arc<Delivery>, mut stop: watch::Receiver<bool>) {
    loop {
        let today = crate::tracking::now() / 86_400 * 1_440;
        match sink
            .traffic_curve(today.saturating_sub(DAYS * 1_440), today)
            .await
        {
            Ok(per_minute) => delivery.set_curve(TrafficCurve::from_requests(&per_minute)),
            Err(e) => tracing::warn!("pacing: traffic history not read ({e}); the curve is kept"),
        }
        tokio::select! {
            _ = crate::shutdown::wait(&mut stop) => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
