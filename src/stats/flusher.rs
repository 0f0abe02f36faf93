//! The flusher: moves counts from the aggregator to the sink, through the spool when needed.
//!
//! Every `flush_interval` the aggregator is drained into a [`Batch`] with a fresh id, appended to
//! an in-memory queue, and the queue is written oldest first (spool first: it only holds batches
//! older than the queue). A failed write keeps its batch and retries with exponential backoff
//! while new batches keep arriving. When the queue holds more than `max_pending_rows`, or the sink
//! has failed for longer than `spool_after`, the queue goes to the spool, so memory stays bounded
//! through a long outage; the spool replays when the sink answers, and at the next start.
//!
//! The sink is retried on its own schedule whatever the spool does. A batch the spool refuses
//! (full, or its disk full or broken) stays in memory; rows are lost only when the sink is failing,
//! the spool refuses and memory already holds `max_pending_rows` (the oldest batches go, the newest
//! stays for the next retry), or at shutdown when neither the sink nor the spool takes them. Lost
//! rows are counted (`rotator_stats_rows_lost_total`) and logged as `statistics LOST`.
//!
//! Retry decisions are data ([`SinkError::retryable`]): a batch the sink refuses as bad data is
//! not retried (it would block everything behind it) but set aside in the spool's `rejected/`.
//! A spool file that no longer parses is quarantined as `.corrupt` and its rows count as lost.
//!
//! The flusher runs on its own thread with its own single-threaded runtime, so SQLite calls and
//! spool fsyncs never stall a request worker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Batch;
use super::aggregator::Aggregator;
use super::sinks::{Sink, SinkError};
use super::spool::{Spool, SpoolError};
use crate::config::StatsConfig;
use crate::metrics::Metrics;

/// First retry delay after a failed write.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// Longest delay between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// At most one error log line per this period on the statistics path (a down database must not
/// flood the log); suppressed lines are counted in the next one.
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(30);

/// The flusher's settings, from `[stats]`.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    /// Drain interval.
    pub interval: Duration,
    /// Queue size that sends batches to the spool.
    pub max_pending_rows: u64,
    /// Failure duration that sends batches to the spool.
    pub spool_after: Duration,
    /// Timeout of one write.
    pub write_timeout: Duration,
}

impl From<&StatsConfig> for FlushSettings {
    fn from(c: &StatsConfig) -> Self {
        FlushSettings {
            interval: c.flush_interval,
            max_pending_rows: c.max_pending_rows,
            spool_after: c.spool_after,
            write_timeout: c.write_timeout,
        }
    }
}

/// Rate-limited error logging.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn error(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_PERIOD)
        {
            self.suppressed += 1;
            return;
        }
        tracing::error!(suppressed = self.suppressed, "statistics: {message}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Moves batches from the aggregator to the sink.
pub struct Flusher {
    aggregator: Arc<Aggregator>,
    sink: Sink,
    spool: Spool,
    settings: FlushSettings,
    metrics: Arc<Metrics>,
    /// Random per process, so batch ids never repeat across restarts.
    run_id: String,
    next_seq: u64,
    queue: VecDeque<Batch>,
    failing_since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Sink errors, rate-limited.
    errors: ErrorLog,
    /// Spool errors, rate-limited apart from the sink's so that neither hides the other.
    spool_errors: ErrorLog,
    /// Whether the last spool write succeeded: `/readyz` is ready while the sink answers or the
    /// spool takes batches.
    spool_ok: bool,
}

impl Flusher {
    /// A flusher over an opened sink and spool.
    pub fn new(
        aggregator: Arc<Aggregator>,
        sink: Sink,
        spool: Spool,
        settings: FlushSettings,
        metrics: Arc<Metrics>,
    ) -> Flusher {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let flusher = Flusher {
            aggregator,
            sink,
            spool,
            settings,
            metrics,
            run_id: format!("{started:x}-{:016x}", fastrand::u64(..)),
            next_seq: 0,
            queue: VecDeque::new(),
            failing_since: None,
            retry_at: None,
            backoff: MIN_BACKOFF,
            errors: ErrorLog::default(),
            spool_errors: ErrorLog::default(),
            spool_ok: true,
        };
        flusher.update_gauges();
        flusher
    }

    /// Runs until `shutdown` turns true, then drains everything to the sink or the spool within
    /// `grace`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // Replay what a previous run spooled before waiting for the first interval.
        self.deliver().await;
        loop {
            let retry = self.retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = tick.tick() => self.collect(),
                _ = async { tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)).await }, if retry.is_some() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
            self.deliver().await;
            if self.must_spool() {
                self.spool_queue();
            }
            self.shed();
        }
        self.finish(grace).await;
    }

    /// Drains the aggregator into a new batch at the end of the queue.
    fn collect(&mut self) {
        let rows = self.aggregator.drain();
        if !rows.is_empty() {
            self.next_seq += 1;
            self.queue.push_back(Batch {
                id: format!("{}-{}", self.run_id, self.next_seq),
                rows,
            });
        }
        self.update_gauges();
    }

    fn queued_rows(&self) -> u64 {
        self.queue.iter().map(|b| b.rows.len() as u64).sum()
    }

    fn must_spool(&self) -> bool {
        !self.queue.is_empty()
            && (self.queued_rows() > self.settings.max_pending_rows
                || self
                    .failing_since
                    .is_some_and(|t| t.elapsed() >= self.settings.spool_after))
    }

    /// Moves the queue, oldest first, to the spool, up to the first batch the spool refuses:
    /// that one and those behind it stay in memory (so the spool still only holds older batches).
    fn spool_queue(&mut self) {
        while let Some(batch) = self.queue.front() {
            match self.spool.push(batch) {
                Ok(()) => {
                    self.spool_ok = true;
                    self.queue.pop_front();
                    self.metrics
                        .observe_flush(self.sink.name(), "spooled", None);
                }
                Err(e) => {
                    self.spool_ok = false;
                    let rows = self.queued_rows();
                    self.spool_errors.error(&format!(
                        "the spool refused batch {}; {rows} rows stay in memory: {e}",
                        batch.id
                    ));
                    break;
                }
            }
        }
        self.update_gauges();
    }

    /// When the sink is failing and the spool refused, drops the oldest batches until memory
    /// holds at most `max_pending_rows` rows (always keeping the newest batch for the next
    /// retry).
    fn shed(&mut self) {
        while self.queue.len() > 1 && self.queued_rows() > self.settings.max_pending_rows {
            if let Some(batch) = self.queue.pop_front() {
                self.lose(
                    &batch,
                    "the sink is failing, the spool refused it and max_pending_rows rows are already in memory",
                );
            }
        }
        self.update_gauges();
    }

    fn lose(&mut self, batch: &Batch, why: &str) {
        self.metrics.stats_rows_lost.inc_by(batch.rows.len() as u64);
        tracing::error!(
            batch = %batch.id,
            rows = batch.rows.len(),
            requests = batch.requests(),
            "statistics LOST: {why}"
        );
    }

    /// Writes batches, oldest first, until one fails or none is left.
    async fn deliver(&mut self) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.retry_at = None;
        // Set when a spool file cannot be read: the queue in memory is delivered anyway.
        let mut skip_spool = false;
        loop {
            let next = if skip_spool {
                None
            } else {
                self.spool.oldest()
            };
            let (batch, seq) = if let Some((seq, read)) = next {
                match read {
                    Ok(batch) => (batch, Some(seq)),
                    Err(e @ SpoolError::Corrupt { .. }) => {
                        self.quarantine(seq, &e);
                        continue;
                    }
                    Err(e) => {
                        self.spool_errors
                            .error(&format!("cannot read the spool, trying later: {e}"));
                        skip_spool = true;
                        continue;
                    }
                }
            } else if let Some(batch) = self.queue.front() {
                (batch.clone(), None)
            } else {
                break;
            };
            let started = Instant::now();
            let result = self.sink.write(&batch, self.settings.write_timeout).await;
            let elapsed = started.elapsed();
            match result {
                Ok(()) => {
                    self.metrics
                        .observe_flush(self.sink.name(), "ok", Some(elapsed));
                    self.acknowledge(seq);
                    if self.failing_since.take().is_some() {
                        tracing::info!("statistics: {} answers again", self.sink.name());
                    }
                    self.backoff = MIN_BACKOFF;
                }
                Err(e) if !e.retryable => {
                    self.metrics
                        .observe_flush(self.sink.name(), "rejected", Some(elapsed));
                    self.reject(&batch, seq, &e);
                }
                Err(e) => {
                    self.metrics
                        .observe_flush(self.sink.name(), "error", Some(elapsed));
                    self.failing_since.get_or_insert(started);
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.errors.error(&format!(
                        "write of batch {} failed, retrying in {:?}: {e}",
                        batch.id, self.backoff
                    ));
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
        self.update_gauges();
    }

    /// Sets a spool file that does not parse aside as `.corrupt`; its rows are lost.
    fn quarantine(&mut self, seq: u64, error: &SpoolError) {
        let rows = self.spool.rows(seq);
        self.metrics.stats_rows_lost.inc_by(rows.unwrap_or(0));
        let rows = rows.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string());
        match self.spool.set_aside(seq, true) {
            Ok(path) => tracing::error!(
                "statistics LOST: {rows} rows: {error}; moved to {}",
                path.display()
            ),
            Err(e) => tracing::error!(
                "statistics LOST: {rows} rows: {error}; cannot move it aside ({e}), skipped until the next start"
            ),
        }
    }

    fn acknowledge(&mut self, seq: Option<u64>) {
        match seq {
            Some(seq) => {
                if let Err(e) = self.spool.remove(seq) {
                    // Replayed at the next start; the sinks' batch ids make that harmless.
                    tracing::error!("statistics: written batch stays in the spool: {e}");
                }
            }
            None => {
                self.queue.pop_front();
            }
        }
    }

    fn reject(&mut self, batch: &Batch, seq: Option<u64>, error: &SinkError) {
        let moved = match seq {
            Some(seq) => self.spool.set_aside(seq, false),
            None => {
                self.queue.pop_front();
                self.spool.reject(batch)
            }
        };
        match moved {
            Ok(path) => tracing::error!(
                batch = %batch.id,
                "statistics: the sink refused the batch as bad data; kept in {} for an operator: {error}",
                path.display()
            ),
            Err(e) if seq.is_some() => tracing::error!(
                batch = %batch.id,
                "statistics: the sink refused the batch as bad data ({error}) and it cannot be moved to rejected/ ({e}); \
                 it stays in the spool and is skipped until the next start"
            ),
            Err(e) => self.lose(
                batch,
                &format!("the sink refused it as bad data ({error}) and rejected/ refused it: {e}"),
            ),
        }
    }

    /// Final drain at shutdown: write what is in memory (if the sink is healthy), spool the
    /// rest; if the spool refuses, one last try at the sink (if it was not tried), then what is
    /// left is lost.
    async fn finish(&mut self, grace: Duration) {
        self.collect();
        let deadline = Instant::now() + grace;
        let healthy = self.failing_since.is_none();
        if healthy {
            self.write_queue(deadline).await;
        }
        self.spool_queue();
        if !healthy {
            self.write_queue(deadline).await;
        }
        let spooled = self.spool.len();
        while let Some(batch) = self.queue.pop_front() {
            self.lose(
                &batch,
                "shutting down, and neither the sink nor the spool took it",
            );
        }
        self.update_gauges();
        if spooled > 0 {
            tracing::info!(
                batches = spooled,
                "statistics: batches wait in the spool; they are written at the next start"
            );
        }
    }

    /// Writes the queue, oldest first, until it is empty, a write fails or `deadline` passes.
    async fn write_queue(&mut self, deadline: Instant) {
        while let Some(batch) = self.queue.front().cloned() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self
                .sink
                .write(&batch, left.min(self.settings.write_timeout))
                .await
            {
                Ok(()) => {
                    self.metrics.observe_flush(self.sink.name(), "ok", None);
                    self.queue.pop_front();
                }
                Err(e) if !e.retryable => self.reject(&batch, None, &e),
                Err(e) => {
                    tracing::warn!("statistics: final write failed: {e}");
                    break;
                }
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics
            .stats_rows_pending
            .set(self.queued_rows() as i64);
        self.metrics
            .stats_spool_bytes
            .set(self.spool.bytes() as i64);
        self.metrics
            .stats_spool_batches
            .set(self.spool.len() as i64);
        self.metrics
            .set_stats_ready(self.failing_since.is_none() || self.spool_ok);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::ClickhouseConfig;
    use crate::stats::Row;
    use crate::stats::sinks::clickhouse::ClickhouseSink;

    fn batch(id: &str) -> Batch {
        Batch {
            id: id.into(),
            rows: vec![Row {
                ts: 60,
                country: "DE".into(),
                os: "Linux".into(),
                browser: "Firefox".into(),
                device: "desktop".into(),
                campaign_id: 1,
                requests: 3,
                impressions: 3,
                placement: String::new(),
                creative_id: 0,
                viewables: 0,
                clicks: 0,
                spend: 0,
            }],
        }
    }

    /// A sink that always refuses the connection (transient), and a spool that refuses every
    /// batch (`spool_max_bytes = 0`), as a full disk would.
    fn both_refuse(max_pending_rows: u64) -> (Flusher, PathBuf) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let sink = Sink::Clickhouse(ClickhouseSink::new(
            &ClickhouseConfig {
                url: format!("http://127.0.0.1:{port}"),
                ..ClickhouseConfig::default()
            },
            Duration::from_secs(2),
        ));
        let dir = std::env::temp_dir().join(format!("rotator-flusher-{}", fastrand::u64(..)));
        let spool = Spool::open(&dir, 0).unwrap();
        let settings = FlushSettings {
            interval: Duration::from_secs(1),
            max_pending_rows,
            spool_after: Duration::ZERO,
            write_timeout: Duration::from_secs(2),
        };
        let flusher = Flusher::new(
            Arc::new(Aggregator::new(1)),
            sink,
            spool,
            settings,
            Metrics::new(),
        );
        (flusher, dir)
    }

    fn ids(f: &Flusher) -> Vec<String> {
        f.queue.iter().map(|b| b.id.clone()).collect()
    }

    /// One turn of the run loop, with the retry due at once.
    async fn turn(f: &mut Flusher, id: &str) {
        f.queue.push_back(batch(id));
        f.retry_at = None;
        f.deliver().await;
        if f.must_spool() {
            f.spool_queue();
        }
        f.shed();
    }

    #[tokio::test]
    async fn issue9_rows_are_lost_only_past_the_memory_bound_and_at_shutdown() {
        let (mut f, dir) = both_refuse(2);
        for id in ["a", "b", "c", "d"] {
            turn(&mut f, id).await;
        }
        assert!(f.failing_since.is_some() && !f.spool_ok);
        assert!(!f.metrics.stats_ready());
        assert_eq!(ids(&f), ["c", "d"], "the newest wait in memory");
        assert_eq!(f.metrics.stats_rows_lost.get(), 2);
        // Shutdown: the sink is tried once more, the spool refuses, the rest is lost.
        f.finish(Duration::from_secs(5)).await;
        assert!(f.queue.is_empty());
        assert_eq!(f.metrics.stats_rows_lost.get(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_recovered_sink_gets_what_the_spool_refuses() {
        let (mut f, dir) = both_refuse(10);
        turn(&mut f, "a").await;
        assert_eq!(ids(&f), ["a"]);
        assert!(!f.metrics.stats_ready());
        // The sink answers again; the spool still refuses. Readiness follows the sink.
        f.sink = Sink::None;
        turn(&mut f, "b").await;
        assert!(f.queue.is_empty() && f.failing_since.is_none());
        assert!(f.metrics.stats_ready());
        // At shutdown a sink marked failing is tried once more before anything is lost.
        f.queue.push_back(batch("c"));
        f.failing_since = Some(Instant::now());
        f.finish(Duration::from_secs(5)).await;
        assert!(f.queue.is_empty());
        assert_eq!(f.metrics.stats_rows_lost.get(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
