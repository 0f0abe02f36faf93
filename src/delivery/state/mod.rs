//! Delivery state: what the nodes (or one node across restarts) must agree on: the spend granted
//! against each campaign's budgets, the views counted against each visitor's frequency caps and,
//! with Redis, tracking's counted-once memory.
//!
//! [`State`] has two backends with the same semantics, held to one contract test suite
//! (`tests/it/state.rs`) run against both:
//! - [`LocalState`] (`[state] backend = "local"`): in memory, journalled under `[state] dir`
//!   (what `kill -9` may cost is written at the top of [`local`]);
//! - [`RedisState`] (`"redis"`): one Redis server shared by every node, every compound operation
//!   one Lua script, so atomic across nodes (key layout at the top of [`redis`]).
//!
//! Invariants both keep:
//! - Budgets: a lease grant never takes a campaign's day or total spend past its budget, under
//!   any number of concurrent callers; what is granted counts as spent until refunded.
//! - Caps: a view reserved at `now` counts until `now + per_secs` (a sliding window: any window
//!   of that length holds at most `limit` views); a view is recorded under every visitor key or
//!   under none.
//! - Seen-ids: `seen_first` answers [`Mark::First`] once per (id, kind) until it expires.
//!
//! Every call is observed with `Metrics::observe_state(backend, op, elapsed, ok)`, except a call
//! the Redis backend's circuit breaker refused at once, which counts as an error only.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::campaigns::budget::Micros;
use crate::config::{StateBackend, StateConfig};
use crate::metrics::Metrics;
use crate::tracking::{EventKind, Mark, Seen};

pub mod breaker;
pub mod local;
pub mod redis;

pub use local::{LocalState, StateWriter};
pub use redis::RedisState;

/// Visitor keys a cap reservation may name: the visitor's key and, during an identity
/// change, a second one.
pub const MAX_KEYS: usize = 2;

/// Most asks in one reservation ([`gate::MAX_CAPPED`](super::gate::MAX_CAPPED)); more are
/// served, on the heap.
pub const MAX_ASKS: usize = 4;

/// One campaign's request for budget, in [`State::lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAsk {
    /// The campaign.
    pub campaign: u32,
    /// The campaign's day (days since 1970-01-01 of the civil date in its budget's timezone).
    pub day: i32,
    /// How much spend the node would like to hold.
    pub want: Micros,
    /// The daily budget, if any.
    pub daily: Option<Micros>,
    /// The total budget, if any.
    pub total: Option<Micros>,
}

/// One capped campaign a visitor could be shown, in [`State::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapAsk {
    /// The campaign.
    pub campaign: u32,
    /// Views allowed per window (≥ 1).
    pub limit: u32,
    /// The window, seconds.
    pub per_secs: u32,
}

/// What [`State::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapReply {
    /// The index of the ask a view was reserved in; `None` when every ask was full.
    pub granted: Option<usize>,
    /// For each ask: when it was found full, the Unix second at which it has room again; `None`
    /// for asks with room and asks not looked at (after the granted one).
    pub full_until: SmallVec<[Option<i64>; MAX_ASKS]>,
}

/// Why a state call failed. The caller fails closed: no lease, no view (or `on_outage`).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A local journal cannot be read or written.
    #[error("[state] {path}: {source}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Redis answered with an error or the connection failed.
    #[error("[state] redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis did not answer in time.
    #[error("[state] redis: no answer within {0:?}")]
    Timeout(Duration),
    /// Not sent: the last calls could not reach Redis, so request-path calls fail at once for
    /// a while (see [`breaker`]).
    #[error(
        "[state] redis: not called, it was unreachable for the last calls (circuit open, \
         probed again every {:?})",
        breaker::OPEN_FOR
    )]
    CircuitOpen,
    /// Redis answered something the script cannot have returned.
    #[error("[state] redis: unexpected reply: {0}")]
    Reply(String),
    /// The local caps memory is full (`[state] max_cap_entries`).
    #[error(
        "[state] max_cap_entries reached: no more visitors can be capped until older views \
         expire"
    )]
    CapsFull,
    /// Another process holds the local state folder.
    #[error("[state] {0}: in use by another rotator process (give each its own dir)")]
    Locked(PathBuf),
    /// More visitor keys than [`MAX_KEYS`] (a caller's bug).
    #[error("[state] {0} visitor keys given; at most {MAX_KEYS}")]
    Keys(usize),
}

/// The delivery state of this node: local, or shared through Redis.
pub enum State {
    /// In memory, journalled.
    Local(LocalState),
    /// Shared by every node through one Redis server.
    Redis(RedisState),
}

impl State {
    /// Opens the backend `config` names. Local: loads the journals under `[state] dir` (views
    /// expired at `now` dropped) and starts their writer; `seen` is tracking's counted-once
    /// memory. Redis: connects lazily (the server starts while Redis is down; calls fail until
    /// it answers, and the connection is re-established by itself), and warns when the first
    /// ping fails.
    pub async fn open(
        config: &StateConfig,
        seen: Arc<Seen>,
        metrics: Arc<Metrics>,
        now: i64,
    ) -> Result<(State, StateWriter), StateError> {
        match config.backend {
            StateBackend::Local => {
                let (local, writer) =
                    LocalState::open(&config.dir, config.max_cap_entries, seen, metrics, now)?;
                Ok((State::Local(local), writer))
            }
            StateBackend::Redis => {
                let redis = RedisState::connect(&config.redis, metrics)?;
                if let Err(e) = redis.ping().await {
                    tracing::warn!(
                        "[state] redis unreachable at start ({e}); capped and budgeted campaigns \
                         wait until it answers"
                    );
                }
                Ok((State::Redis(redis), StateWriter::none()))
            }
        }
    }

    /// `local` or `redis` (the `backend` metric label).
    pub fn backend(&self) -> &'static str {
        match self {
            State::Local(_) => "local",
            State::Redis(_) => "redis",
        }
    }

    fn metrics(&self) -> &Metrics {
        match self {
            State::Local(l) => &l.metrics,
            State::Redis(r) => &r.metrics,
        }
    }

    /// Runs `call`, observing its time and result as `op`.
    async fn observed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let result = call.await;
        if let Err(StateError::CircuitOpen) = result {
            self.metrics().state_call(self.backend(), op).refused();
        } else {
            self.metrics()
                .observe_state(self.backend(), op, started.elapsed(), result.is_ok());
        }
        result
    }

    /// For each ask, atomically grants min(want, daily − spent(day), total − spent total) (0 when
    /// exhausted) and adds the grant to the campaign's day and total spend. Batched: one call per
    /// tick.
    pub async fn lease(&self, asks: &[LeaseAsk]) -> Result<Vec<Micros>, StateError> {
        self.observed("lease", async {
            match self {
                State::Local(l) => l.lease(asks),
                State::Redis(r) => r.lease(asks).await,
            }
        })
        .await
    }

    /// Gives back `amount` (unused lease, expired reservation): from `day` when `Some`, and from
    /// the total. Spend never goes below zero.
    pub async fn refund(
        &self,
        campaign: u32,
        day: Option<i32>,
        amount: Micros,
    ) -> Result<(), StateError> {
        self.observed("refund", async {
            match self {
                State::Local(l) => l.refund(campaign, day, amount),
                State::Redis(r) => r.refund(campaign, day, amount).await,
            }
        })
        .await
    }

    /// Spend granted so far: (on `day`, in total).
    pub async fn spent(&self, campaign: u32, day: i32) -> Result<(Micros, Micros), StateError> {
        self.observed("spent", async {
            match self {
                State::Local(l) => Ok(l.spent(campaign, day)),
                State::Redis(r) => r.spent(campaign, day).await,
            }
        })
        .await
    }

    /// [`spent`](Self::spent) of several (campaign, day) pairs in one call, in their order.
    pub async fn spent_many(
        &self,
        days: &[(u32, i32)],
    ) -> Result<Vec<(Micros, Micros)>, StateError> {
        self.observed("spent", async {
            match self {
                State::Local(l) => Ok(l.spent_many(days)),
                State::Redis(r) => r.spent_many(days).await,
            }
        })
        .await
    }

    /// The most campaigns the ticker should put in one batched call ([`lease`](Self::lease),
    /// [`spent_many`](Self::spent_many)): all of them locally (one journal sync per lease
    /// batch); for Redis, which runs one call at a time for every node, a batch small enough
    /// that the decisions waiting behind it are not held up for long.
    pub fn batch_size(&self) -> usize {
        match self {
            State::Local(_) => usize::MAX,
            State::Redis(_) => redis::BATCH,
        }
    }

    /// For the visitor known by `keys` (1 or 2 identity hashes), reserves one view in the first
    /// ask (in order) that has room under every key: a view recorded with member `decision`,
    /// counting until `now + per_secs`. Atomic.
    pub async fn reserve(
        &self,
        keys: &[u64],
        asks: &[CapAsk],
        decision: [u8; 12],
        now: i64,
    ) -> Result<CapReply, StateError> {
        self.observed("reserve", async {
            check_keys(keys)?;
            match self {
                State::Local(l) => l.reserve(keys, asks, decision, now),
                State::Redis(r) => r.reserve(keys, asks, decision, now).await,
            }
        })
        .await
    }

    /// Whether the backend answers without a round trip (local): a capped candidate's view is
    /// then reserved as the auction meets it, and no cache of visitors at their cap is kept.
    pub fn answers_at_once(&self) -> bool {
        matches!(self, State::Local(_))
    }

    /// [`reserve`](Self::reserve) when the backend answers without waiting (local), observed
    /// the same way; `None` for a backend that needs a round trip (Redis). The gate calls it
    /// for each capped candidate (`delivery::DecisionCaps`), so a local decision builds no
    /// future.
    pub fn reserve_now(
        &self,
        keys: &[u64],
        asks: &[CapAsk],
        decision: [u8; 12],
        now: i64,
    ) -> Option<Result<CapReply, StateError>> {
        let State::Local(l) = self else {
            return None;
        };
        let started = Instant::now();
        let result = check_keys(keys).and_then(|()| l.reserve(keys, asks, decision, now));
        l.reserve_metrics.observe(started.elapsed(), result.is_ok());
        Some(result)
    }

    /// Removes the view recorded by `decision` (its impression never came).
    pub async fn release(
        &self,
        keys: &[u64],
        campaign: u32,
        decision: [u8; 12],
    ) -> Result<(), StateError> {
        self.observed("release", async {
            check_keys(keys)?;
            match self {
                State::Local(l) => {
                    l.release(keys, campaign, decision);
                    Ok(())
                }
                State::Redis(r) => r.release(keys, campaign, decision).await,
            }
        })
        .await
    }

    /// Views of `campaign` counting at `now` for the visitor (the most under any of `keys`).
    pub async fn views(&self, keys: &[u64], campaign: u32, now: i64) -> Result<u32, StateError> {
        self.observed("views", async {
            check_keys(keys)?;
            match self {
                State::Local(l) => Ok(l.views(keys, campaign, now)),
                State::Redis(r) => r.views(keys, campaign, now).await,
            }
        })
        .await
    }

    /// Tracking's counted-once memory: remembers (`id`, `kind`) until `expires` (Unix seconds)
    /// if it is new.
    pub async fn seen_first(
        &self,
        id: &[u8; 12],
        kind: EventKind,
        expires: u32,
        now: u32,
    ) -> Result<Mark, StateError> {
        self.observed("seen_first", async {
            match self {
                State::Local(l) => Ok(l.seen.first(id, kind, expires, now)),
                State::Redis(r) => r.seen_first(id, kind, expires, now).await,
            }
        })
        .await
    }

    /// Whether (`id`, `kind`) was counted (and is remembered).
    pub async fn seen_has(&self, id: &[u8; 12], kind: EventKind) -> Result<bool, StateError> {
        self.observed("seen_has", async {
            match self {
                State::Local(l) => Ok(l.seen.has(id, kind)),
                State::Redis(r) => r.seen_has(id, kind).await,
            }
        })
        .await
    }
}

fn check_keys(keys: &[u64]) -> Result<(), StateError> {
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(StateError::Keys(keys.len()));
    }
    Ok(())
}
