//! Statistics: count every decision once, cheaply, and get the counts into a database without
//! losing or doubling any.
//!
//! The pieces, in the order a count travels:
//! [`aggregator`] (per-thread, per-minute counters on the request path) → [`flusher`] (drains
//! them into [`Batch`]es every `flush_interval`, retries, spools) → [`spool`] (batches on disk
//! while the sink is away) → [`sinks`] (SQLite, ClickHouse, MySQL/MariaDB). [`report`] reads the
//! sink back for `rotator report`.

pub mod aggregator;
pub mod batch;
pub mod flusher;
pub mod report;
pub mod sinks;
pub mod spool;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use batch::{Batch, Row};
use tokio::sync::watch;

use crate::config::StatsConfig;
use crate::metrics::Metrics;
use aggregator::Aggregator;
use flusher::{FlushSettings, Flusher};
use sinks::{Sink, SinkError};
use spool::{Spool, SpoolError};

/// Why statistics could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The sink cannot be built or refused its schema.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The spool folder cannot be used.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The flusher thread could not start.
    #[error("cannot start the statistics thread: {0}")]
    Thread(std::io::Error),
}

/// The running statistics pipeline.
pub struct Stats {
    /// Where the request path counts.
    pub aggregator: Arc<Aggregator>,
    flusher: JoinHandle<()>,
}

impl Stats {
    /// Opens the sink and spool, creates the sink's objects (unless `auto_migrate = false`) and
    /// starts the flusher thread. An unreachable database is not fatal (the spool covers it); a
    /// schema it refuses is.
    pub fn start(
        config: &StatsConfig,
        shards: usize,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<Stats, StatsError> {
        let sink = Sink::open(config)?;
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StatsError::Thread)?;
        if config.auto_migrate {
            match runtime.block_on(sink.migrate()) {
                Ok(()) => {}
                Err(e) if e.retryable => {
                    tracing::warn!(
                        "statistics: cannot create the {} schema now ({e}); counts are kept until it answers",
                        sink.name()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !spool.is_empty() {
            tracing::info!(
                batches = spool.len(),
                bytes = spool.bytes(),
                "statistics: replaying the spool"
            );
        }
        let aggregator = Arc::new(Aggregator::new(shards));
        let flusher = Flusher::new(
            aggregator.clone(),
            sink,
            spool,
            FlushSettings::from(config),
            metrics,
        );
        let flusher = std::thread::Builder::new()
            .name("rotator-stats".into())
            .spawn(move || runtime.block_on(flusher.run(shutdown, grace)))
            .map_err(StatsError::Thread)?;
        Ok(Stats {
            aggregator,
            flusher,
        })
    }

    /// Waits for the flusher to finish its final drain (after shutdown was signalled).
    pub fn join(self) {
        if self.flusher.join().is_err() {
            tracing::error!("statistics thread panicked");
        }
    }
}
